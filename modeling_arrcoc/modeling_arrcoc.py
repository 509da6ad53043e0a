"""ArrCoc: SAM -> allocator -> CLIP -> quality adapter -> Qwen3/Ovis LLM, with a per-sample number of visual tokens.

The model classes. What they return is in `outputs_arrcoc` (the allocation plan and the outputs that carry it), the
splice in `splice_arrcoc`, generation by tier in `generation_arrcoc`, the selection methods in `selection` and the
loss terms in `losses`; the names users import from here are re-exported.
"""

import contextlib
import dataclasses

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.models.clip.modeling_clip import CLIPEncoder
from transformers.models.sam.modeling_sam import SamVisionModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple
from transformers.utils.import_utils import is_tracing

from .adapter_arrcoc import ArrCocQualityAdapter
from .allocator_arrcoc import ArrCocAllocator, Selection
from .configuration_arrcoc import ArrCocConfig, check_budget_cost
from .generation_arrcoc import check_no_assisted_decoding, generate_by_tier, generation_pad_token_id
from .layers_arrcoc import (
    SAM_ATTENTION_CLASSES,
    ArrCocMeanInitLinear,
    ArrCocZeroInitEmbedding,
    ArrCocZeroInitLinear,
    use_sam_attention,
)
from .losses import (  # noqa: F401  (answer_window and the loss functions are re-exported from here)
    LOSS_COMPONENTS,
    LOSS_TERMS,
    LossInputs,
    alignment_loss,
    answer_window,
    efficiency_loss,
    model_losses,
    shifted_cross_entropy,
    vet_kl_loss,
    weighted_loss,
)
from .outputs_arrcoc import (
    ArrCocAllocationPlan,
    ArrCocCausalLMOutputWithPast,
    ArrCocImageFeaturesOutput,
    ArrCocModelOutputWithPast,
    ArrCocMultimodalInputs,
)
from .selection import SELECTION_METHODS, SELECTIONS_TABLE, selection_method
from .splice_arrcoc import check_context_length, check_image_tokens, ones_mask, splice

SELECTIONS = SELECTION_METHODS  # the config's vocabulary (a live view): learned, uniform, hotspot, random, full, ...
# The `*_loss` fields ArrCocCausalLMOutputWithPast declares; a term registered after import becomes an extra key.
_DECLARED_FIELDS = frozenset(field.name for field in dataclasses.fields(ArrCocCausalLMOutputWithPast))


class ArrCocClipEncoder(nn.Module):
    """A CLIP vision transformer fed projected SAM features instead of pixels.

    Its position table keeps CLIP's layout ([CLS] row + square grid) so a pretrained CLIP's table loads as is;
    the grid part is resampled to the SAM grid and each token gets the position(s) it was selected from.
    """

    def __init__(self, config: ArrCocConfig):
        super().__init__()
        clip = config.clip_config
        if clip._attn_implementation is None:
            # The encoder is a bare module, so no PreTrainedModel resolves its attention for it.
            clip._attn_implementation = "sdpa"
        self.config = clip
        self.grid_size = config.grid_size
        self.clip_grid = clip.image_size // clip.patch_size
        self.input_projection = nn.Linear(config.vision_config.output_channels, clip.hidden_size)
        self.position_embedding = nn.Embedding(self.clip_grid**2 + 1, clip.hidden_size)
        self.pre_layrnorm = nn.LayerNorm(clip.hidden_size, eps=clip.layer_norm_eps)
        self.encoder = CLIPEncoder(clip)
        self.post_layernorm = nn.LayerNorm(clip.hidden_size, eps=clip.layer_norm_eps)

    def position_table(self) -> torch.Tensor:
        """[N, D] position embeddings on the SAM grid."""
        grid = self.position_embedding.weight[1:]
        if (self.clip_grid, self.clip_grid) == tuple(self.grid_size):
            return grid
        grid = grid.reshape(1, self.clip_grid, self.clip_grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=self.grid_size, mode="bicubic", align_corners=False)
        return grid.to(self.position_embedding.weight.dtype).flatten(2)[0].T

    def forward(self, selection: Selection) -> torch.Tensor:
        positions = selection.position_weights.to(self.position_embedding.weight.dtype) @ self.position_table()
        hidden_states = self.pre_layrnorm(self.input_projection(selection.tokens) + positions)
        mask = self._attention_mask(selection.token_mask, hidden_states.dtype)
        hidden_states = self.encoder(inputs_embeds=hidden_states, attention_mask=mask).last_hidden_state
        return self.post_layernorm(hidden_states)

    def _attention_mask(self, token_mask, dtype):
        if self.config._attn_implementation == "flash_attention_2":
            return token_mask.long()  # flash attention takes the 2D padding mask and unpads
        # Only keys are masked: padded queries compute garbage that the splice never reads.
        additive = torch.zeros(token_mask.shape, dtype=dtype, device=token_mask.device)
        additive = additive.masked_fill(~token_mask, torch.finfo(dtype).min)
        return additive[:, None, None, :]


class ArrCocPreTrainedModel(PreTrainedModel):
    config: ArrCocConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["SamVisionLayer", "CLIPEncoderLayer", "Qwen3DecoderLayer"]
    _skip_keys_device_placement = "cache"

    def enable_input_require_grads(self):
        """Make the language model's token embeddings require grad (what gradient checkpointing and adapters need),
        and nothing else: transformers' default hooks every sub-model's input embeddings, SAM's patch embedding
        included, which puts the frozen SAM into autograd (about +6 GiB at the base preset, bench/base_scale.py)."""

        def make_inputs_require_grads(module, input, output):
            output.requires_grad_(True)

        hook = self.get_input_embeddings().register_forward_hook(make_inputs_require_grads)
        self._require_grads_hooks = [hook]
        self._require_grads_hook = hook

    def set_attn_implementation(self, attn_implementation, allow_all_kernels: bool = False):
        """As `PreTrainedModel.set_attn_implementation`, and the SAM vision tower follows too: transformers' SAM
        picks its attention class when it is built (it refuses to switch later, warning), so an "eager" model would
        otherwise keep SAM on SDPA, which returns no attention weights. "eager" and "sdpa" are swapped in place
        (the two classes share their weights); any other implementation leaves SAM as it is."""
        super().set_attn_implementation(attn_implementation, allow_all_kernels=allow_all_kernels)
        requested = attn_implementation
        if isinstance(requested, dict):  # {"": top level only, "vision_config": the SAM tree, ...}
            requested = requested.get("vision_config")
            requested = requested.get("") if isinstance(requested, dict) else requested
        if not isinstance(requested, str) or requested not in SAM_ATTENTION_CLASSES:
            return
        for module in self.modules():
            if isinstance(module, SamVisionModel):
                for config in (module.config, self.config.vision_config):
                    config._attn_implementation_internal = requested
        use_sam_attention(self, requested)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, (ArrCocZeroInitLinear, ArrCocZeroInitEmbedding)):
            for parameter in module.parameters(recurse=False):
                init.zeros_(parameter)
        elif isinstance(module, ArrCocQualityAdapter):
            init.normal_(module.prototypes, std=self.config.initializer_range)
        elif isinstance(module, ArrCocMeanInitLinear):
            init.copy_(module.weight, module.mean_weights())


class ArrCocModel(ArrCocPreTrainedModel):
    def __init__(self, config: ArrCocConfig):
        super().__init__(config)
        if config.vision_config._attn_implementation == "flash_attention_2":
            raise ValueError("The SAM vision tower cannot use flash_attention_2; use 'sdpa' or 'eager' for it.")
        if config.clip_config._attn_implementation == "flash_attention_2":
            # The CLIP encoder is a bare module that from_pretrained never checks: check it here, at load.
            self.get_correct_attn_implementation("flash_attention_2", is_init_check=True)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        use_sam_attention(self.vision_tower)  # the same attention, its relative positions built faster
        self.allocator = ArrCocAllocator(config)
        self.clip_encoder = ArrCocClipEncoder(config)
        self.quality_adapter = ArrCocQualityAdapter(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """SAM neck features as a raster-ordered patch sequence [B, N, C], in the language model's dtype whatever
        dtype SAM computed in (`config.vision_autocast_dtype`). Cache these when SAM is frozen."""
        return self._patch_features(self._vision_outputs(pixel_values))

    def _patch_features(self, vision) -> torch.Tensor:
        return _patch_sequence(vision.last_hidden_state).to(self.get_input_embeddings().weight.dtype)

    def _vision_outputs(self, pixel_values, **kwargs):
        """The vision tower's output (its hidden states / attentions too when `kwargs` or its config ask), computed
        under autocast to `config.vision_autocast_dtype` when it is set."""
        _check_pixels(pixel_values)
        with _vision_autocast(pixel_values.device, self.config.vision_autocast_dtype):
            return self.vision_tower(pixel_values=pixel_values, return_dict=True, **kwargs)

    def image_token_mask(self, input_ids=None, inputs_embeds=None) -> torch.Tensor:
        """[B, L] where the `<image>` placeholders are: from `input_ids`, or (without them) the positions of
        `inputs_embeds` that equal the `<image>` token's embedding, as llava's `get_placeholder_mask` finds them."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_id = torch.full((), self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
        return (inputs_embeds == self.get_input_embeddings()(image_id).to(inputs_embeds.dtype)).all(-1)

    def question_inputs(self, input_ids=None, attention_mask=None, labels=None, inputs_embeds=None):
        """Prompt-token embeddings for the allocator (from `inputs_embeds` when given, else embedded `input_ids`).
        Answer tokens (labels != -100) never reach it."""
        embeds = self.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
        attention_mask = ones_mask(embeds) if attention_mask is None else attention_mask
        mask = attention_mask.bool() & ~self.image_token_mask(input_ids, inputs_embeds)
        if labels is not None:
            mask = mask & (labels == -100)
        return embeds, mask

    def _empty_question(self, features):
        """No prompt at all (`get_image_features(pixel_values)` alone): one masked-out token per sample, which the
        allocator's empty-question path reads as "no question" (query-agnostic scores)."""
        embedding = self.get_input_embeddings().weight
        question = embedding.new_zeros(features.shape[0], 1, embedding.shape[-1])
        return question, torch.zeros(features.shape[0], 1, dtype=torch.bool, device=features.device)

    # -- the allocation plan: every decision about visual tokens, made once ----------------------------------

    def plan_allocation(
        self, input_ids=None, attention_mask=None, pixel_values=None, patch_features=None, labels=None, budget="auto",
        selection=None, selection_scores=None, generator=None, inputs_embeds=None, budget_cost=None,
    ) -> ArrCocAllocationPlan:
        """Run SAM (unless `patch_features` are given) and the allocator once, and decide each sample's tier, token
        count and ranking scores. `forward`, `generate`, evaluation, explanation, the trainer and the benchmarks
        all take this plan, so the allocator runs exactly once per batch whatever the tiers.

        budget / selection: as in `ArrCocForConditionalGeneration.forward` (selection None: the model's own,
            `config.selection_method`; "full" keeps every patch whatever the budget).
        selection_scores: [B, N] scores that replace the allocator's in the top-K rule (an external selection rule,
            e.g. the training-free query-similarity baseline, runs through everything else unchanged).
        generator: the random generator of selection="random".
        inputs_embeds: the prompt's embeddings, read instead of embedding `input_ids`. With neither, the allocator
            plans for an empty question (its query-agnostic path).
        budget_cost: the price of tokens under budget "auto" (see `resolve_budget`); None (default): the model's own,
            `config.budget_cost`; 0: the predicted tier.
        """
        selection = self.config.selection_method if selection is None else selection
        method = selection_method(selection)  # ValueError naming the table's selections
        budget = "full" if method.every_patch else budget
        features = self.get_patch_features(pixel_values) if patch_features is None else patch_features
        if input_ids is None and inputs_embeds is None:
            question, question_mask = self._empty_question(features)
        else:
            question, question_mask = self.question_inputs(input_ids, attention_mask, labels, inputs_embeds)
        decision = self.allocator(features, question, question_mask)
        counts, tiers = self.resolve_budget(budget, decision.budget_logits, features.shape[1], budget_cost)
        if selection_scores is None and method.scores is not None:  # uniform pooling ranks nothing
            selection_scores = method.scores(decision=decision, generator=generator)
        return ArrCocAllocationPlan(
            patch_features=features, patch_scores=decision.patch_scores, hotspot_scores=decision.hotspot_scores,
            budget_logits=decision.budget_logits, budget_tiers=tiers, visual_token_counts=counts,
            selection_scores=selection_scores, selection=selection,
            static_tokens=self.static_tokens(budget, features.shape[1]),
        )

    def replan(self, plan: ArrCocAllocationPlan, budget, budget_cost=None) -> ArrCocAllocationPlan:
        """`plan` at another budget: the allocator's scores are reused, only tiers and token counts change (the
        budget calibration runs every tier on one allocator forward). A "full" plan stays full."""
        budget = "full" if SELECTIONS_TABLE[plan.selection].every_patch else budget
        num_patches = plan.patch_features.shape[1]
        counts, tiers = self.resolve_budget(budget, plan.budget_logits, num_patches, budget_cost)
        return dataclasses.replace(plan, budget_tiers=tiers, visual_token_counts=counts,
                                   static_tokens=self.static_tokens(budget, num_patches))

    def resolve_budget(self, budget, budget_logits, num_patches, budget_cost=None):
        """Per-sample (token counts, tier indices) for `budget` (the tier rules live on the config).

        Under "auto", `budget_cost` is the user's price of tokens, chosen at inference without retraining: each
        tier scores its predicted log-probability minus `budget_cost` x log2(its tokens), so 0 keeps the predicted
        tier, a positive cost buys fewer tokens (1.0: a tier must be twice as likely to be worth twice the tokens)
        and a negative one more. Sweeping it traces auto's own accuracy-vs-tokens curve. None: the model's own price,
        `config.budget_cost` (fitted on validation at the end of training; 0 unless fitted)."""
        config = self.config
        batch, device = budget_logits.shape[0], budget_logits.device
        static = self.static_tokens(budget, num_patches)
        if isinstance(budget, str) and budget == "auto":
            tiers = _priced_tiers(budget_logits, config, num_patches, budget_cost)
        elif isinstance(budget, str) and budget == "full":
            tiers = torch.full((batch,), config.full_tier, device=device)
        elif isinstance(budget, (list, tuple, torch.Tensor)):
            values = budget.tolist() if isinstance(budget, torch.Tensor) else list(budget)
            if len(values) != batch:
                raise ValueError(f"A per-sample budget needs {batch} entries, got {len(values)}.")
            tiers = torch.tensor([config.tier_index(v) for v in values], device=device)
        elif isinstance(budget, str):
            raise ValueError(config.budget_error(budget))
        else:
            tiers = torch.full((batch,), config.tier_index(budget), device=device)
        if static is not None:  # one count for the batch: the host already knows it
            return torch.full((batch,), static, device=device), tiers
        counts = torch.tensor(config.budgets, device=device)[tiers].clamp(max=num_patches)
        return counts, tiers

    def static_tokens(self, budget, num_patches) -> int | None:
        """The tokens every sample keeps under `budget` when the host knows it without reading a tensor: "full"
        or one tier for the whole batch, as a Python int (`resolve_budget` fills its counts from it); None under
        "auto" and per-sample budgets, whose counts are data."""
        if isinstance(budget, str):
            return num_patches if budget == "full" else None
        if isinstance(budget, (list, tuple, torch.Tensor)):
            return None
        return min(self.config.tier_value(self.config.tier_index(budget)), num_patches)

    def select(self, plan: ArrCocAllocationPlan) -> Selection:
        """The kept (or pooled) tokens of `plan`: top-K in raster order (dropped patches folded in when
        `config.fold_dropped`), DeepSeek-OCR-style uniform pooling, or the learned compressor over the same windows."""
        method = SELECTIONS_TABLE[plan.selection]
        if method.pools:
            return self._pooled_selection(plan.patch_features, plan.visual_token_counts, plan.static_tokens,
                                          learned=method.learned_pooling)
        return self.allocator.compression_heads(plan.patch_features, plan.selection_scores, plan.visual_token_counts,
                                                static_tokens=plan.static_tokens)

    def _pooled_selection(self, features, counts, static_tokens=None, learned=False):
        """Fixed compression, whatever the question: the grid pooled to K cells, each token the mean of its window's
        features (uniform) or the learned compressor's map of them (`learned`)."""
        if static_tokens is None and counts.unique().numel() != 1:
            raise ValueError("Uniform pooling takes one budget per batch; group the batch by tier.")
        if learned and self.allocator.compressor is None:
            raise ValueError("selection 'compress' needs a checkpoint trained with it (selection_method: compress, "
                             "which builds the allocator's learned compressor); this one has none.")
        count = int(counts[0]) if static_tokens is None else static_tokens
        grid = self.config.grid_size
        rows, cols = self.config.pool_shape(count)
        eye = torch.eye(features.shape[1], dtype=features.dtype, device=features.device).view(-1, 1, *grid)
        weights = F.adaptive_avg_pool2d(eye, (rows, cols)).flatten(1).T.unsqueeze(0)  # [1, K, N]
        weights = weights.expand(features.shape[0], -1, -1)
        mask = torch.ones(weights.shape[:2], dtype=torch.bool, device=features.device)
        # Each token stands at its window's positions (the weights) either way; pooling ignores the question, so its
        # tokens carry no relevance score.
        tokens = self.allocator.compressor(features, count) if learned else weights @ features
        return Selection(tokens, weights, mask, weights.sum(1) > 0, torch.zeros_like(mask, dtype=features.dtype))

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        plan: ArrCocAllocationPlan | None = None,
        *,
        inputs_embeds: torch.FloatTensor | None = None,
        patch_features: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        budget: str | int | list | torch.Tensor = "auto",
        selection: str | None = None,
        selection_scores: torch.FloatTensor | None = None,
        generator: torch.Generator | None = None,
        budget_cost: float | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ArrCocImageFeaturesOutput:
        """Visual embeddings of each image for its question, as a model output: `pooler_output` [B, K_max, D]
        (LLM-space embeddings, padded), `last_hidden_state` (the CLIP encoder's), `visual_token_mask`,
        `visual_probs` and the `plan` they follow; `hidden_states` / `attentions` are the vision tower's, returned
        when asked for (`output_hidden_states` / `output_attentions`, or the vision config's).

        Give a `plan` (from `plan_allocation`) or the inputs to make one: `pixel_values` (or `patch_features`) and
        the prompt (`input_ids` or `inputs_embeds`, with `attention_mask` and `labels`), with `plan_allocation`'s
        keyword arguments. Without a prompt the allocator plans for an empty question (its query-agnostic path)."""
        vision = None
        if plan is None:
            if patch_features is None:
                if pixel_values is None:
                    raise ValueError("get_image_features needs pixel_values, patch_features or a plan.")
                vision = self._vision_outputs(pixel_values, **_vision_kwargs(kwargs))
                patch_features = self._patch_features(vision)
            plan = self.plan_allocation(
                input_ids=input_ids, attention_mask=attention_mask, patch_features=patch_features, labels=labels,
                budget=budget, selection=selection, selection_scores=selection_scores, generator=generator,
                inputs_embeds=inputs_embeds, budget_cost=budget_cost,
            )
        chosen = self.select(plan)
        hidden = self.clip_encoder(chosen)
        # Without the relevance tag (config.relevance_tag False, the baselines) the adapter sees no allocator score.
        token_scores = chosen.token_scores if self.config.relevance_tag else None
        embeds, probs = self.quality_adapter(hidden, plan.budget_tiers, token_scores)
        return ArrCocImageFeaturesOutput(
            last_hidden_state=hidden, pooler_output=embeds,
            hidden_states=getattr(vision, "hidden_states", None), attentions=getattr(vision, "attentions", None),
            visual_token_mask=chosen.token_mask, visual_probs=probs * chosen.token_mask.unsqueeze(-1),
            kept_patch_mask=chosen.kept_patch_mask, token_sources=chosen.position_weights.argmax(-1), plan=plan,
        )

    def _plain_causal_prefill(self, caller_mask, plan, cache) -> bool:
        """Whether the spliced prompt needs no attention mask but causality: the caller passed no `attention_mask`
        (unpadded rows), the tier is fixed (every row keeps the same K, so the splice pads nothing), nothing is
        cached yet, and every layer of the language model is SDPA's full causal attention. transformers finds this
        itself in eager mode by reading the mask; while compiling under torch < 2.14 it never does
        (`masking_utils._ignore_causal_mask_sdpa`) and builds an [L, L] mask, which keeps SDPA off its causal
        kernel: 13.7 s of the base preset's 33 s compiled attention at full tokens (docs/results.md)."""
        text = self.config.text_config
        return (caller_mask is None and plan is not None and plan.static_tokens is not None
                and _cache_known_empty(cache) and text._attn_implementation == "sdpa"
                and set(getattr(text, "layer_types", None) or ["full_attention"]) == {"full_attention"})

    def splice(self, input_ids, attention_mask, image: ArrCocImageFeaturesOutput, labels=None, inputs_embeds=None
               ) -> tuple:
        """(inputs_embeds, attention_mask, position_ids, labels): each sample's text with its K_i visual embeddings
        in place of its `<image>` token, left-padded to the longest row. The text embeddings are `inputs_embeds`
        when given (the placeholder is then found in `input_ids`, or in `inputs_embeds` without them)."""
        text_embeds = self.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
        attention_mask = ones_mask(text_embeds) if attention_mask is None else attention_mask
        return splice(image_mask=self.image_token_mask(input_ids, inputs_embeds), attention_mask=attention_mask,
                      text_embeds=text_embeds, visual_embeds=image.pooler_output,
                      visual_mask=image.visual_token_mask, labels=labels,
                      static_tokens=image.plan.static_tokens if image.plan is not None else None)[:4]

    def prepare_multimodal_inputs(
        self, input_ids=None, attention_mask=None, labels=None, plan=None, inputs_embeds=None, shift_labels=None,
        **plan_kwargs,
    ) -> ArrCocMultimodalInputs:
        """Select visual tokens (following `plan`, made here from `plan_kwargs` when not given) and splice each
        sample's K_i embeddings at its `<image>` token, left-padded.

        The prompt is `input_ids` or `inputs_embeds` (with only `inputs_embeds`, the `<image>` placeholder is the
        position holding the `<image>` token's embedding). `labels` ([B, L], aligned with the prompt) never reach
        the allocator; `shift_labels` (pre-shifted targets: [B, L], or already [B, L_spliced]) are spliced so the
        last visual token predicts the token after the image. `plan_kwargs`: `plan_allocation`'s and
        `get_image_features`' keyword arguments (e.g. `output_hidden_states` for the vision tower)."""
        if input_ids is None and inputs_embeds is None:
            raise ValueError("Images need a prompt: pass input_ids (or inputs_embeds) with one <image> per sample.")
        reference = input_ids if input_ids is not None else inputs_embeds
        attention_mask = ones_mask(reference) if attention_mask is None else attention_mask
        image_mask = self.image_token_mask(input_ids, inputs_embeds)
        images = plan.patch_features if plan is not None else _first_given(plan_kwargs.get("pixel_values"),
                                                                           plan_kwargs.get("patch_features"))
        check_image_tokens(image_mask=image_mask, attention_mask=attention_mask,
                           image_token_id=self.config.image_token_id, images=images,
                           found_in="input_ids" if input_ids is not None else "inputs_embeds")
        splice_shift_labels = shift_labels is not None and shift_labels.shape[1] == reference.shape[1]
        answer_labels = labels
        if labels is None and splice_shift_labels:
            # Only pre-shifted targets (sequence parallelism): the answer positions are still kept from the
            # allocator, read off them (position t is an answer token when shift_labels[t - 1] != -100).
            answer_labels = F.pad(shift_labels, (1, -1), value=-100)
        if plan is None:
            image = self.get_image_features(input_ids=input_ids, attention_mask=attention_mask, labels=answer_labels,
                                            inputs_embeds=inputs_embeds, return_dict=True, **plan_kwargs)
        else:
            vision_kwargs = {k: v for k, v in plan_kwargs.items() if k in ("output_hidden_states", "output_attentions")}
            image = self.get_image_features(plan=plan, return_dict=True, **vision_kwargs)
        plan = image.plan
        text_embeds = self.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
        *spliced, spliced_shift_labels = splice(
            image_mask=image_mask, attention_mask=attention_mask, text_embeds=text_embeds,
            visual_embeds=image.pooler_output, visual_mask=image.visual_token_mask, labels=labels,
            shift_labels=shift_labels if splice_shift_labels else None, static_tokens=plan.static_tokens,
        )
        if shift_labels is not None and not splice_shift_labels:
            if shift_labels.shape[1] != spliced[0].shape[1]:
                raise ValueError(
                    f"shift_labels must be aligned with the prompt ({reference.shape[1]} positions) or with the "
                    f"spliced sequence ({spliced[0].shape[1]}); got {tuple(shift_labels.shape)}."
                )
            spliced_shift_labels = shift_labels
        return ArrCocMultimodalInputs(*spliced, shift_labels=spliced_shift_labels, image=image)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        budget: str | int | list | torch.Tensor = "auto",
        selection: str | None = None,
        patch_features: torch.FloatTensor | None = None,
        plan: ArrCocAllocationPlan | None = None,
        labels: torch.LongTensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        generator: torch.Generator | None = None,
        budget_cost: float | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ArrCocModelOutputWithPast:
        r"""
        The base model: select each image's K_i visual tokens, splice them in place of its `<image>` token and run
        the language model over the spliced, left-padded sequence (no LM head).

        budget / selection / patch_features / plan / generator / budget_cost: as in
            `ArrCocForConditionalGeneration.forward`.
        labels: [B, L] targets aligned with the prompt. The base model computes no loss: they only keep the answer
            from the allocator (positions with labels != -100 never reach it), and come back spliced as
            `labels` (aligned with `last_hidden_state`).
        shift_labels: pre-shifted targets ([B, L] aligned with the prompt, or [B, L_spliced]); they come back
            aligned with `last_hidden_state` as `shift_labels`.
        inputs_embeds: instead of `input_ids`; with images, each sample's `<image>` placeholder is the position
            that holds the `<image>` token's embedding (or is found in `input_ids` when both are given).
        A text-only step (no images; e.g. decoding with a `cache`) runs the language model alone.
        """
        if input_ids is None and inputs_embeds is None:
            raise ValueError("You must specify input_ids or inputs_embeds.")
        multimodal, caller_mask = None, attention_mask
        if pixel_values is not None or patch_features is not None or plan is not None:
            vision_kwargs = _vision_kwargs(kwargs)
            plan_kwargs = vision_kwargs if plan is not None else dict(
                pixel_values=pixel_values, patch_features=patch_features, budget=budget, selection=selection,
                generator=generator, budget_cost=budget_cost, **vision_kwargs,
            )
            multimodal = self.prepare_multimodal_inputs(
                input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                shift_labels=shift_labels, plan=plan, **plan_kwargs,
            )
            inputs_embeds, attention_mask = multimodal.inputs_embeds, multimodal.attention_mask
            position_ids, labels, shift_labels = multimodal.position_ids, multimodal.labels, multimodal.shift_labels
        elif inputs_embeds is None:
            # A decoding step (it has a cache) never holds the <image>; test that first, it costs nothing. Eager only,
            # as the other value checks (under torch.compile / torch.export it would be a graph break).
            if cache is None and not is_tracing(input_ids) and (input_ids == self.config.image_token_id).any():
                raise ValueError("input_ids contain <image> tokens but no pixel_values were given.")
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if not is_tracing(inputs_embeds):
            # Eager only: a static cache's length is a tensor read (a graph break); generate checked the whole
            # context (prompt + max_new_tokens) before its first step.
            past_length = cache.get_seq_length() if cache is not None else 0
            check_context_length(length=past_length + inputs_embeds.shape[1], text_config=self.config.text_config)
        if multimodal is not None and self._plain_causal_prefill(caller_mask, multimodal.image.plan, cache):
            attention_mask = {"full_attention": None}  # per layer type: SDPA then runs with is_causal, no mask
        outputs = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            use_cache=use_cache, return_dict=True, **kwargs,
        )
        return ArrCocModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache if use_cache is not False else None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=multimodal.image if multimodal is not None else None,
            labels=labels,
            shift_labels=shift_labels,
        )


def _patch_sequence(features):
    """[B, C, H, W] feature map -> [B, H*W, C] raster-ordered patch sequence."""
    return features.flatten(2).transpose(1, 2)


def _cache_known_empty(cache) -> bool:
    """Nothing cached yet, known on the host: a static cache's filled length is a tensor once written (unknown)."""
    length = 0 if cache is None else cache.get_seq_length()
    return isinstance(length, int) and length == 0


def _vision_kwargs(kwargs):
    """The keyword arguments the vision tower takes from those a forward receives."""
    return {key: kwargs[key] for key in ("output_hidden_states", "output_attentions") if key in kwargs}


def _first_given(*values):
    return next((value for value in values if value is not None), None)


def _vision_autocast(device, dtype_name):
    """Autocast for the vision tower (`config.vision_autocast_dtype`), or nothing when it is None."""
    if dtype_name is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype_name))


def _check_pixels(pixel_values):
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be [batch, channels, height, width], got shape {tuple(pixel_values.shape)}.")
    # Value checks run in eager mode only: under torch.compile / torch.export they would be a graph break
    # (a tensor read back on the host), and there the inputs are the caller's responsibility.
    # The sum first: one reduction (0.08 ms for a batch of 8 demo pages) instead of an elementwise mask (9.8 ms,
    # 1.2 ms a query, the small-tier overhead #23 looked for); a NaN or inf anywhere makes the sum non-finite, and
    # the exact check only runs then, so a finite batch whose sum overflows is not refused.
    if (not is_tracing(pixel_values) and not torch.isfinite(pixel_values.sum())
            and not torch.isfinite(pixel_values).all()):
        raise ValueError("pixel_values contain NaN or infinite values.")


class ArrCocForConditionalGeneration(ArrCocPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # The tied head is sharded with its embedding (the language model's plan shards embed_tokens), as in llava.
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: ArrCocConfig):
        super().__init__(config)
        self.model = ArrCocModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    @property
    def vision_tower(self):
        return self.model.vision_tower

    @property
    def allocator(self):
        return self.model.allocator

    @property
    def clip_encoder(self):
        return self.model.clip_encoder

    @property
    def quality_adapter(self):
        return self.model.quality_adapter

    @property
    def language_model(self):
        return self.model.language_model

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ArrCocImageFeaturesOutput:
        """See `ArrCocModel.get_image_features`."""
        return self.model.get_image_features(pixel_values=pixel_values, input_ids=input_ids,
                                             attention_mask=attention_mask, **kwargs)

    def plan_allocation(self, input_ids=None, **kwargs) -> ArrCocAllocationPlan:
        """See `ArrCocModel.plan_allocation`."""
        return self.model.plan_allocation(input_ids=input_ids, **kwargs)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        budget: str | int | list | torch.Tensor = "auto",
        selection: str | None = None,
        patch_features: torch.FloatTensor | None = None,
        plan: ArrCocAllocationPlan | None = None,
        patch_targets: torch.FloatTensor | None = None,
        visual_targets: torch.LongTensor | None = None,
        loss_weights: dict[str, float] | None = None,
        logits_to_keep: int = 0,
        use_cache: bool | None = None,
        generator: torch.Generator | None = None,
        budget_cost: float | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ArrCocCausalLMOutputWithPast:
        r"""
        budget: "auto" (the allocator's tier), "full" (every patch), a tier value in `config.budgets`, a tier
            index, or a list/tensor of those per sample. Anything else raises a ValueError.
        budget_cost: under "auto", the price of tokens (`ArrCocModel.resolve_budget`): None (default) the model's
            own (`config.budget_cost`, fitted on validation), 0 the predicted tier, more buys fewer tokens, less buys
            more; the user's accuracy-vs-tokens trade-off, no retraining.
        selection: "learned" (allocator scores), "uniform" (fixed pooling), "hotspot" (query-agnostic
            saliency top-K), "random", "full" (every patch, whatever the budget) or another method registered in
            `selection.SELECTIONS_TABLE`; None (default): the model's
            own, `config.selection_method` ("learned" for ARR-COC; a trained baseline's checkpoint names its own).
            Another selection through this checkpoint is a diagnostic: its LLM learned to read its own selection
            (and, with `config.relevance_tag`, the allocator's relevance tag).
        patch_features: precomputed SAM features [B, N, C] (cache them when SAM is frozen).
        plan: an `ArrCocAllocationPlan` from `plan_allocation` for these inputs (budget, selection and
            patch_features are then already decided and ignored).
        patch_targets: [B, N] answer-region coverage per patch, for the alignment loss.
        visual_targets: [B, N] or [B, N, M] a teacher's visual-vocabulary ids per patch (-100: none); M ids
            mean a uniform M-hot teacher distribution. With it, `vet_kl_loss` is the cross-entropy of the
            adapter's distribution against the teacher (the KL plus the teacher's entropy); without it, the KL
            of vocabulary usage from uniform.
        loss_weights: weights of the loss terms (`losses.LOSS_TERMS`) in `loss`; default {"answer": 1.0} (others 0).
        logits_to_keep: as in Transformers' causal LMs: compute `logits` for the last `logits_to_keep` positions
            only (0: all). With labels, every label must lie in that window (the trainer keeps the answer's).
        shift_labels (in kwargs): pre-shifted targets (position t's target), as the trainer passes them under
            sequence/context parallelism: [B, L] aligned with the prompt (spliced here so that the last visual
            token predicts the token after the image) or [B, L_spliced]. With them the answer loss is taken against
            `shift_labels` (by `self.loss_function`) and `labels`, if given, only keep the answer from the
            allocator; without `labels`, the answer positions are read off `shift_labels`.
        num_items_in_batch (in kwargs): as in Transformers' causal LMs, the answer loss is then a sum over the
            labelled tokens divided by it (gradient accumulation).
        return_dict=False returns a tuple (the allocation decisions ride in its `image_outputs`, with the plan);
        `past_key_values=` is the deprecated name of `cache`.
        """
        shift_labels = kwargs.pop("shift_labels", None)
        outputs = self.model(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, inputs_embeds=inputs_embeds, budget=budget, selection=selection,
            patch_features=patch_features, plan=plan, labels=labels, shift_labels=shift_labels, use_cache=use_cache,
            generator=generator, budget_cost=budget_cost, return_dict=True, **kwargs,
        )
        labels, shift_labels = outputs.labels, outputs.shift_labels
        has_targets = labels is not None or shift_labels is not None
        logits, answer_loss = self._logits_and_answer_loss(outputs.last_hidden_state, labels, logits_to_keep,
                                                           shift_labels=shift_labels, **kwargs)
        losses = {"answer": answer_loss}
        if has_targets and outputs.image_outputs is not None:  # a text-only step has no visual terms
            losses.update(model_losses(LossInputs(outputs=outputs, config=self.config, patch_targets=patch_targets,
                                                  visual_targets=visual_targets)))
        return _causal_lm_output(outputs, logits, losses, weighted_loss(losses, loss_weights) if has_targets else None)

    def _logits_and_answer_loss(self, hidden_states, labels, logits_to_keep, shift_labels=None, **kwargs):
        """Logits of the last `logits_to_keep` positions (all for 0) and the answer loss: the shifted cross-entropy
        of `labels`, or (pre-shifted targets, or `num_items_in_batch` given) `self.loss_function`'s."""
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)
        if labels is None and shift_labels is None:
            return logits, None
        if logits_to_keep:
            # Labels predict from one position earlier than pre-shifted targets, hence the + 1.
            for name, targets, reach in (("labels", labels, logits_to_keep - 1), ("shift_labels", shift_labels,
                                                                                  logits_to_keep)):
                if targets is not None and (targets[:, : targets.shape[1] - reach] != -100).any():
                    raise ValueError(f"logits_to_keep={logits_to_keep} drops positions that predict {name}; keep "
                                     "at least the answer's length + 1 (see answer_window).")
            labels = None if labels is None else labels[:, -logits_to_keep:]
            shift_labels = None if shift_labels is None else shift_labels[:, -logits_to_keep:]
        num_items_in_batch = kwargs.get("num_items_in_batch")
        if shift_labels is None and num_items_in_batch is None:
            return logits, shifted_cross_entropy(logits, labels)
        shift_labels = None if shift_labels is None else shift_labels.contiguous()
        loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size,
                                  shift_labels=shift_labels, num_items_in_batch=num_items_in_batch)
        return logits, loss

    @torch.no_grad()
    def generate(self, input_ids=None, pixel_values=None, attention_mask=None, budget="auto",
                 selection=None, patch_features=None, plan=None, group_by_tier=True, budget_cost=None, **kwargs):
        """Generate with K_i visual tokens per sample. Returns `input_ids` (as given) followed by new tokens,
        so callers strip the prompt by its own length, as with any HF model.

        budget / selection / patch_features / plan / budget_cost: as in `forward`. The allocation is planned once
            for the whole batch (SAM and the allocator run once), whatever the tiers.
        group_by_tier: when the samples of a batch get different tiers (e.g. `budget="auto"`), generate each
            tier's samples as their own batch, so a 64-token sample is not padded to a 400-token one. The new
            tokens are put back in input order and right-padded with `pad_token_id`, as generate pads finished
            rows. Per-sample results do not change. With `return_dict_in_generate=True` the batch is always
            generated in one piece (per-step scores are batch-shaped).
        """
        if pixel_values is None and patch_features is None and plan is None:
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if input_ids is None:
            raise ValueError("generate with images needs input_ids, with one <image> token per sample.")
        check_no_assisted_decoding(kwargs=kwargs, default_config=self.generation_config)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        images = plan.patch_features if plan is not None else _first_given(pixel_values, patch_features)
        check_image_tokens(image_mask=input_ids == self.config.image_token_id, attention_mask=attention_mask,
                           image_token_id=self.config.image_token_id, images=images)
        if plan is None:
            plan = self.model.plan_allocation(
                input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                patch_features=patch_features, budget=budget, selection=selection, generator=kwargs.pop("generator", None),
                budget_cost=budget_cost,
            )
        return generate_by_tier(
            generate_group=lambda ids, mask, group: self._generate_spliced(ids, mask, group, kwargs),
            input_ids=input_ids, attention_mask=attention_mask, plan=plan, group_by_tier=group_by_tier,
            one_piece=kwargs.get("return_dict_in_generate", False),
            pad_token_id=generation_pad_token_id(kwargs=kwargs, generation_config=self.generation_config,
                                                 text_config=self.config.text_config),
        )

    def _generate_spliced(self, input_ids, attention_mask, plan, kwargs):
        """Generate's own output (new tokens only) from the spliced embeddings of one batch."""
        multimodal = self.model.prepare_multimodal_inputs(input_ids=input_ids, attention_mask=attention_mask,
                                                          plan=plan)
        generation_config = kwargs.get("generation_config") or self.generation_config
        max_new_tokens = kwargs.get("max_new_tokens", generation_config.max_new_tokens) or 0
        check_context_length(length=multimodal.inputs_embeds.shape[1] + max_new_tokens,
                             text_config=self.config.text_config, max_new_tokens=max_new_tokens)
        # Image inputs are consumed here, once; generate's prefill then only sees the spliced embeddings.
        return super().generate(
            inputs_embeds=multimodal.inputs_embeds, attention_mask=multimodal.attention_mask,
            position_ids=multimodal.position_ids, **kwargs,
        )

    @classmethod
    def from_components(cls, sam=None, clip=None, llm=None, dtype=None, *, vision=None, text=None, **config_kwargs):
        """Assemble ArrCoc from pretrained checkpoints (Hub names or local dirs): `sam` a SAM or DeepSeek-OCR2
        checkpoint, `clip` a CLIP vision model, `llm` a Qwen3, Ovis2 or Ovis2.5 checkpoint (docs/components.md).
        `vision=` and `text=` are the older names of `sam=` and `llm=`."""
        from .components import assemble_from_components, component_sources

        sources = component_sources(sam=sam, clip=clip, llm=llm, vision=vision, text=text)
        return assemble_from_components(cls, **sources, dtype=dtype, **config_kwargs)


def _priced_tiers(budget_logits, config, num_patches, budget_cost):
    budget_cost = config.budget_cost if budget_cost is None else budget_cost
    check_budget_cost(budget_cost)
    if budget_cost == 0:
        return budget_logits.argmax(-1)  # exactly the predicted tier (no log-softmax round-off)
    tokens = torch.tensor([min(k, num_patches) for k in config.budgets], dtype=torch.float32,
                          device=budget_logits.device)
    priced = (budget_logits.float() / config.budget_temperature).log_softmax(-1) - budget_cost * tokens.log2()
    return priced.argmax(-1)


def _causal_lm_output(outputs, logits, losses: dict, loss) -> ArrCocCausalLMOutputWithPast:
    """The base model's output with the head's logits, the total `loss` and each term in its `<name>_loss` field
    (named by the loss table). A term registered after import has no declared field: it is set as an extra key,
    read the same way (`outputs.<name>_loss`)."""
    fields = {LOSS_TERMS[name].field: value for name, value in losses.items()}
    declared = {field: value for field, value in fields.items() if field in _DECLARED_FIELDS}
    result = ArrCocCausalLMOutputWithPast(
        loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
        attentions=outputs.attentions, image_outputs=outputs.image_outputs, **declared,
    )
    for field in [field for field in fields if field not in declared]:
        result[field] = fields[field]
    return result


__all__ = [
    "ArrCocCausalLMOutputWithPast",
    "ArrCocModelOutputWithPast",
    "ArrCocClipEncoder",
    "ArrCocForConditionalGeneration",
    "ArrCocModel",
    "ArrCocPreTrainedModel",
    "ArrCocAllocationPlan",
    "ArrCocImageFeaturesOutput",
    "LOSS_COMPONENTS",
    "SELECTIONS",
    "alignment_loss",
    "answer_window",
    "efficiency_loss",
    "vet_kl_loss",
    "weighted_loss",
]
