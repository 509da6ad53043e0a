"""ArrCoc: SAM -> allocator -> CLIP -> quality adapter -> Qwen3/Ovis LLM, with a per-sample number of visual tokens."""

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.models.clip.modeling_clip import CLIPEncoder
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .adapter_arrcoc import ArrCocQualityAdapter
from .allocator_arrcoc import ArrCocAllocator, Selection
from .configuration_arrcoc import ArrCocConfig
from .layers_arrcoc import ArrCocZeroInitEmbedding, ArrCocZeroInitLinear

SELECTIONS = ("learned", "uniform", "hotspot", "random")
LOSS_COMPONENTS = ("answer", "efficiency", "alignment", "vet_kl")


@dataclass
class ArrCocCausalLMOutputWithPast(ModelOutput):
    """
    loss: weighted total of the components below (weights from `loss_weights`), None without labels.
    answer_loss / efficiency_loss / alignment_loss / vet_kl_loss: each component, None without labels.
    visual_token_counts: [B] tokens actually fed to the LLM per sample (0 for text-only decoding steps).
    budget_logits: [B, n_tiers]; budget_tiers: [B] tier index used per sample.
    patch_scores: [B, N] allocator scores; kept_patch_mask: [B, N] patches whose own position was kept.
    visual_probs: [B, K_max, V] the adapter's distribution over the visual vocabulary (padded rows are 0).
    """

    loss: torch.FloatTensor | None = None
    answer_loss: torch.FloatTensor | None = None
    efficiency_loss: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    vet_kl_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    visual_token_counts: torch.LongTensor | None = None
    budget_logits: torch.FloatTensor | None = None
    budget_tiers: torch.LongTensor | None = None
    patch_scores: torch.FloatTensor | None = None
    kept_patch_mask: torch.BoolTensor | None = None
    visual_probs: torch.FloatTensor | None = None


@dataclass
class ArrCocMultimodalInputs:
    """What the LLM receives after splicing, plus what the allocator decided."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    visual_token_counts: torch.Tensor
    budget_logits: torch.Tensor
    budget_tiers: torch.Tensor
    patch_scores: torch.Tensor
    kept_patch_mask: torch.Tensor
    visual_probs: torch.Tensor
    visual_mask: torch.Tensor
    token_sources: torch.Tensor  # [B, K_max] the grid index each token mostly comes from


@dataclass
class ArrCocAllocationPlan:
    """Everything decided about one batch's visual tokens, computed once by `ArrCocModel.plan_allocation`.

    patch_features: [B, N, C] SAM features. patch_scores / hotspot_scores: [B, N] the allocator's scores and its
    query-agnostic saliency. budget_logits: [B, n_tiers]. budget_tiers: [B] tier index per sample.
    visual_token_counts: [B] tokens each sample keeps. selection_scores: [B, N] what the top-K rule ranks by (None
    for uniform pooling). selection: the selection rule's name.
    """

    patch_features: torch.Tensor
    patch_scores: torch.Tensor
    hotspot_scores: torch.Tensor
    budget_logits: torch.Tensor
    budget_tiers: torch.Tensor
    visual_token_counts: torch.Tensor
    selection_scores: torch.Tensor | None
    selection: str = "learned"

    def tier_groups(self) -> dict:
        """{tier index: sample indices} in ascending tier order: the batches generation runs without padding."""
        return {tier: (self.budget_tiers == tier).nonzero().flatten() for tier in self.budget_tiers.unique().tolist()}

    def subset(self, index) -> "ArrCocAllocationPlan":
        """The plan of the samples at `index` (decisions are per sample, so nothing is recomputed)."""
        fields = {name: None if value is None or isinstance(value, str) else value[index]
                  for name, value in vars(self).items()}
        return ArrCocAllocationPlan(**{**fields, "selection": self.selection})


@dataclass
class ArrCocImageFeaturesOutput(BaseModelOutputWithPooling):
    """`get_image_features`' output. pooler_output: [B, K_max, D_text] LLM-space visual embeddings (padded);
    last_hidden_state: [B, K_max, D_clip] the CLIP encoder's output; visual_token_mask: [B, K_max] real tokens;
    visual_probs: [B, K_max, V] the adapter's visual-word distribution; kept_patch_mask: [B, N]; token_sources:
    [B, K_max] the grid index each token mostly comes from; plan: the allocation plan followed."""

    visual_token_mask: torch.BoolTensor | None = None
    visual_probs: torch.FloatTensor | None = None
    kept_patch_mask: torch.BoolTensor | None = None
    token_sources: torch.LongTensor | None = None
    plan: ArrCocAllocationPlan | None = None


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

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, (ArrCocZeroInitLinear, ArrCocZeroInitEmbedding)):
            for parameter in module.parameters(recurse=False):
                init.zeros_(parameter)
        elif isinstance(module, ArrCocQualityAdapter):
            init.normal_(module.prototypes, std=self.config.initializer_range)


class ArrCocModel(ArrCocPreTrainedModel):
    def __init__(self, config: ArrCocConfig):
        super().__init__(config)
        if config.vision_config._attn_implementation == "flash_attention_2":
            raise ValueError("The SAM vision tower cannot use flash_attention_2; use 'sdpa' or 'eager' for it.")
        if config.clip_config._attn_implementation == "flash_attention_2":
            # The CLIP encoder is a bare module that from_pretrained never checks: check it here, at load.
            self.get_correct_attn_implementation("flash_attention_2", is_init_check=True)
        self.vision_tower = AutoModel.from_config(config.vision_config)
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
        """SAM neck features as a raster-ordered patch sequence [B, N, C]. Cache these when SAM is frozen."""
        _check_pixels(pixel_values)
        features = self.vision_tower(pixel_values=pixel_values).last_hidden_state
        return features.flatten(2).transpose(1, 2)

    def question_inputs(self, input_ids, attention_mask, labels=None):
        """Prompt-token embeddings for the allocator. Answer tokens (labels != -100) never reach it."""
        mask = attention_mask.bool() & (input_ids != self.config.image_token_id)
        if labels is not None:
            mask = mask & (labels == -100)
        return self.get_input_embeddings()(input_ids), mask

    # -- the allocation plan: every decision about visual tokens, made once ----------------------------------

    def plan_allocation(
        self, input_ids, attention_mask=None, pixel_values=None, patch_features=None, labels=None, budget="auto",
        selection="learned", selection_scores=None, generator=None,
    ) -> ArrCocAllocationPlan:
        """Run SAM (unless `patch_features` are given) and the allocator once, and decide each sample's tier, token
        count and ranking scores. `forward`, `generate`, evaluation, explanation, the trainer and the benchmarks
        all take this plan, so the allocator runs exactly once per batch whatever the tiers.

        budget / selection: as in `ArrCocForConditionalGeneration.forward`.
        selection_scores: [B, N] scores that replace the allocator's in the top-K rule (an external selection rule,
            e.g. the training-free query-similarity baseline, runs through everything else unchanged).
        generator: the random generator of selection="random".
        """
        if selection not in SELECTIONS:
            raise ValueError(f"Unknown selection {selection!r}; expected one of {SELECTIONS}.")
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        features = self.get_patch_features(pixel_values) if patch_features is None else patch_features
        question, question_mask = self.question_inputs(input_ids, attention_mask, labels)
        decision = self.allocator(features, question, question_mask)
        counts, tiers = self.resolve_budget(budget, decision.budget_logits, features.shape[1])
        if selection_scores is None:
            selection_scores = self._selection_scores(decision, selection, generator)
        return ArrCocAllocationPlan(
            patch_features=features, patch_scores=decision.patch_scores, hotspot_scores=decision.hotspot_scores,
            budget_logits=decision.budget_logits, budget_tiers=tiers, visual_token_counts=counts,
            selection_scores=selection_scores, selection=selection,
        )

    def replan(self, plan: ArrCocAllocationPlan, budget) -> ArrCocAllocationPlan:
        """`plan` at another budget: the allocator's scores are reused, only tiers and token counts change (the
        budget calibration runs every tier on one allocator forward)."""
        counts, tiers = self.resolve_budget(budget, plan.budget_logits, plan.patch_features.shape[1])
        return dataclasses.replace(plan, budget_tiers=tiers, visual_token_counts=counts)

    @staticmethod
    def _selection_scores(decision, selection, generator):
        """What the top-K rule ranks patches by: the allocator's scores, its query-agnostic saliency, or noise.
        Uniform pooling ranks nothing."""
        if selection == "uniform":
            return None
        if selection == "random":
            shape, device = decision.patch_scores.shape, decision.patch_scores.device
            return torch.rand(shape, generator=generator, device="cpu").to(device)
        return decision.hotspot_scores if selection == "hotspot" else decision.patch_scores

    def resolve_budget(self, budget, budget_logits, num_patches):
        """Per-sample (token counts, tier indices) for `budget` (the tier rules live on the config)."""
        config = self.config
        batch, device = budget_logits.shape[0], budget_logits.device
        if isinstance(budget, str) and budget == "auto":
            tiers = budget_logits.argmax(-1)
        elif isinstance(budget, str) and budget == "full":
            tiers = torch.full((batch,), config.full_tier, device=device)
            return torch.full((batch,), num_patches, device=device), tiers
        elif isinstance(budget, (list, tuple, torch.Tensor)):
            values = budget.tolist() if isinstance(budget, torch.Tensor) else list(budget)
            if len(values) != batch:
                raise ValueError(f"A per-sample budget needs {batch} entries, got {len(values)}.")
            tiers = torch.tensor([config.tier_index(v) for v in values], device=device)
        elif isinstance(budget, str):
            raise ValueError(config.budget_error(budget))
        else:
            tiers = torch.full((batch,), config.tier_index(budget), device=device)
        counts = torch.tensor(config.budgets, device=device)[tiers].clamp(max=num_patches)
        return counts, tiers

    def select(self, plan: ArrCocAllocationPlan) -> Selection:
        """The kept (or pooled) tokens of `plan`: top-K in raster order with dropped patches folded in, or
        DeepSeek-OCR-style uniform pooling."""
        if plan.selection == "uniform":
            return self._uniform_selection(plan.patch_features, plan.visual_token_counts)
        return self.allocator.compression_heads(plan.patch_features, plan.selection_scores, plan.visual_token_counts)

    def _uniform_selection(self, features, counts):
        """DeepSeek-OCR-style fixed compression: average-pool the grid to K cells, whatever the question."""
        if counts.unique().numel() != 1:
            raise ValueError("Uniform pooling takes one budget per batch; group the batch by tier.")
        count, grid = int(counts[0]), self.config.grid_size
        rows, cols = self.config.pool_shape(count)
        eye = torch.eye(features.shape[1], dtype=features.dtype, device=features.device).view(-1, 1, *grid)
        weights = F.adaptive_avg_pool2d(eye, (rows, cols)).flatten(1).T.unsqueeze(0)  # [1, K, N]
        weights = weights.expand(features.shape[0], -1, -1)
        mask = torch.ones(weights.shape[:2], dtype=torch.bool, device=features.device)
        # Pooling ignores the question, so its tokens carry no relevance score.
        return Selection(weights @ features, weights, mask, weights.sum(1) > 0, torch.zeros_like(mask, dtype=features.dtype))

    def get_image_features(
        self, pixel_values=None, input_ids=None, attention_mask=None, plan=None, **plan_kwargs
    ) -> ArrCocImageFeaturesOutput:
        """Visual embeddings of each image for its question, as a model output: `pooler_output` [B, K_max, D]
        (LLM-space embeddings, padded), `visual_token_mask`, `visual_probs` and the `plan` they follow.

        Give a `plan` (from `plan_allocation`) or the inputs to make one (`input_ids`, `attention_mask` and
        `pixel_values` or `patch_features`, with `plan_allocation`'s keyword arguments)."""
        if plan is None:
            plan = self.plan_allocation(input_ids=input_ids, attention_mask=attention_mask,
                                        pixel_values=pixel_values, **plan_kwargs)
        chosen = self.select(plan)
        hidden = self.clip_encoder(chosen)
        embeds, probs = self.quality_adapter(hidden, plan.budget_tiers, chosen.token_scores)
        return ArrCocImageFeaturesOutput(
            last_hidden_state=hidden, pooler_output=embeds, visual_token_mask=chosen.token_mask,
            visual_probs=probs * chosen.token_mask.unsqueeze(-1), kept_patch_mask=chosen.kept_patch_mask,
            token_sources=chosen.position_weights.argmax(-1), plan=plan,
        )

    def splice(self, input_ids, attention_mask, image: ArrCocImageFeaturesOutput, labels=None) -> tuple:
        """(inputs_embeds, attention_mask, position_ids, labels): each sample's text with its K_i visual embeddings
        in place of its `<image>` token, left-padded to the longest row."""
        text_embeds = self.get_input_embeddings()(input_ids)
        return _splice(input_ids, attention_mask, labels, text_embeds, image.pooler_output, image.visual_token_mask,
                       self.config.image_token_id)

    def prepare_multimodal_inputs(
        self, input_ids, attention_mask=None, labels=None, plan=None, **plan_kwargs
    ) -> ArrCocMultimodalInputs:
        """Select visual tokens (following `plan`, made here from `plan_kwargs` when not given) and splice each
        sample's K_i embeddings at its `<image>` token, left-padded."""
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        images = plan.patch_features if plan is not None else _first_given(plan_kwargs.get("pixel_values"),
                                                                           plan_kwargs.get("patch_features"))
        _check_image_tokens(input_ids, attention_mask, self.config.image_token_id, images)
        if plan is None:
            plan = self.plan_allocation(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                        **plan_kwargs)
        image = self.get_image_features(plan=plan)
        spliced = self.splice(input_ids, attention_mask, image, labels)
        return ArrCocMultimodalInputs(
            *spliced, visual_token_counts=image.visual_token_mask.sum(-1), budget_logits=plan.budget_logits,
            budget_tiers=plan.budget_tiers, patch_scores=plan.patch_scores, kept_patch_mask=image.kept_patch_mask,
            visual_probs=image.visual_probs, visual_mask=image.visual_token_mask, token_sources=image.token_sources,
        )


def _first_given(*values):
    return next((value for value in values if value is not None), None)


def _check_pixels(pixel_values):
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be [batch, channels, height, width], got shape {tuple(pixel_values.shape)}.")
    if not torch.isfinite(pixel_values).all():
        raise ValueError("pixel_values contain NaN or infinite values.")


def _check_image_tokens(input_ids, attention_mask, image_token_id, images):
    per_sample = ((input_ids == image_token_id) & attention_mask.bool()).sum(-1)
    if (per_sample != 1).any():
        raise ValueError(
            f"Each sample needs exactly one <image> token (id {image_token_id}); found {per_sample.tolist()}. "
            "Several images per sample are not supported."
        )
    if images is None:
        raise ValueError("input_ids contain <image> tokens but no pixel_values were given.")
    if images.shape[0] != input_ids.shape[0]:
        raise ValueError(f"Got {images.shape[0]} images for {input_ids.shape[0]} samples with one <image> each.")


def _splice(input_ids, attention_mask, labels, text_embeds, visual_embeds, visual_mask, image_token_id):
    """Per sample: text before <image>, its K_i visual embeddings, text after; then left-pad to the longest."""
    rows = []
    for b in range(input_ids.shape[0]):
        keep = attention_mask[b].bool()
        ids, embeds = input_ids[b][keep], text_embeds[b][keep]
        at = int((ids == image_token_id).nonzero()[0])
        visual = visual_embeds[b][visual_mask[b]]
        row_embeds = torch.cat([embeds[:at], visual.to(embeds.dtype), embeds[at + 1:]])
        row_labels = None
        if labels is not None:
            lab = labels[b][keep]
            ignore = torch.full((visual.shape[0],), -100, dtype=lab.dtype, device=lab.device)
            row_labels = torch.cat([lab[:at], ignore, lab[at + 1:]])
        rows.append((row_embeds, row_labels))
    return _left_pad(rows)


def _left_pad(rows):
    length = max(r[0].shape[0] for r in rows)
    first = rows[0][0]
    embeds = first.new_zeros(len(rows), length, first.shape[-1])
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=first.device)
    labels = None if rows[0][1] is None else torch.full((len(rows), length), -100, device=first.device)
    for b, (row_embeds, row_labels) in enumerate(rows):
        embeds[b, length - row_embeds.shape[0]:] = row_embeds
        mask[b, length - row_embeds.shape[0]:] = 1
        if labels is not None:
            labels[b, length - row_labels.shape[0]:] = row_labels
    return embeds, mask, _position_ids(mask), labels


def _position_ids(attention_mask):
    # Left padding must not shift positions: the first real token is position 0 in every row.
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


class ArrCocForConditionalGeneration(ArrCocPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

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

    def get_image_features(self, pixel_values=None, input_ids=None, attention_mask=None, **kwargs):
        return self.model.get_image_features(pixel_values=pixel_values, input_ids=input_ids,
                                             attention_mask=attention_mask, **kwargs)

    def plan_allocation(self, input_ids, **kwargs) -> ArrCocAllocationPlan:
        """See `ArrCocModel.plan_allocation`."""
        return self.model.plan_allocation(input_ids=input_ids, **kwargs)

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
        selection: str = "learned",
        patch_features: torch.FloatTensor | None = None,
        plan: ArrCocAllocationPlan | None = None,
        patch_targets: torch.FloatTensor | None = None,
        visual_targets: torch.LongTensor | None = None,
        loss_weights: dict[str, float] | None = None,
        logits_to_keep: int = 0,
        use_cache: bool | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> ArrCocCausalLMOutputWithPast:
        r"""
        budget: "auto" (the allocator's tier), "full" (every patch), a tier value in `config.budgets`, a tier
            index, or a list/tensor of those per sample. Anything else raises a ValueError.
        selection: "learned" (allocator scores), "uniform" (fixed pooling), "hotspot" (query-agnostic
            saliency top-K) or "random": baselines run through the same model at the same budgets.
        patch_features: precomputed SAM features [B, N, C] (cache them when SAM is frozen).
        plan: an `ArrCocAllocationPlan` from `plan_allocation` for these inputs (budget, selection and
            patch_features are then already decided and ignored).
        patch_targets: [B, N] answer-region coverage per patch, for the alignment loss.
        visual_targets: [B, N] or [B, N, M] a teacher's visual-vocabulary ids per patch (-100: none); M ids
            mean a uniform M-hot teacher distribution. With it, `vet_kl_loss` is the cross-entropy of the
            adapter's distribution against the teacher (the KL plus the teacher's entropy); without it, the KL
            of vocabulary usage from uniform.
        loss_weights: weights of `LOSS_COMPONENTS` in `loss`; default {"answer": 1.0} (others 0).
        logits_to_keep: as in Transformers' causal LMs: compute `logits` for the last `logits_to_keep` positions
            only (0: all). With labels, every label must lie in that window (the trainer keeps the answer's).
        """
        multimodal = None
        if pixel_values is not None or patch_features is not None or plan is not None:
            plan_kwargs = dict(pixel_values=pixel_values, patch_features=patch_features, budget=budget,
                               selection=selection, generator=generator)
            multimodal = self.model.prepare_multimodal_inputs(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, plan=plan,
                **({} if plan is not None else plan_kwargs),
            )
            inputs_embeds, attention_mask = multimodal.inputs_embeds, multimodal.attention_mask
            position_ids, labels = multimodal.position_ids, multimodal.labels
        elif inputs_embeds is None:
            if input_ids is not None and (input_ids == self.config.image_token_id).any() and cache is None:
                raise ValueError("input_ids contain <image> tokens but no pixel_values were given.")
            inputs_embeds = self.get_input_embeddings()(input_ids)
        past_length = cache.get_seq_length() if cache is not None else 0
        _check_context_length(past_length + inputs_embeds.shape[1], self.config.text_config)
        outputs = self.model.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            use_cache=use_cache, **kwargs,
        )
        logits, answer_loss = self._logits_and_answer_loss(outputs.last_hidden_state, labels, logits_to_keep)
        losses = self._auxiliary_losses(multimodal, patch_targets, visual_targets) if labels is not None else {}
        losses["answer"] = answer_loss
        return ArrCocCausalLMOutputWithPast(
            loss=weighted_loss(losses, loss_weights) if labels is not None else None,
            answer_loss=answer_loss,
            efficiency_loss=losses.get("efficiency"),
            alignment_loss=losses.get("alignment"),
            vet_kl_loss=losses.get("vet_kl"),
            logits=logits,
            cache=outputs.cache if use_cache is not False else None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **_decision_fields(multimodal, inputs_embeds.shape[0], inputs_embeds.device),
        )

    def _logits_and_answer_loss(self, hidden_states, labels, logits_to_keep):
        """Logits of the last `logits_to_keep` positions (all for 0) and the shifted cross-entropy of the labels."""
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)
        if labels is None:
            return logits, None
        if logits_to_keep:
            if (labels[:, : labels.shape[1] - logits_to_keep + 1] != -100).any():
                raise ValueError(f"logits_to_keep={logits_to_keep} drops positions that predict labels; keep at "
                                 "least the answer's length + 1 (see answer_window).")
            labels = labels[:, -logits_to_keep:]
        return logits, _shifted_ce(logits, labels)

    def _auxiliary_losses(self, multimodal, patch_targets, visual_targets):
        if multimodal is None:
            return {}
        return {
            "efficiency": efficiency_loss(multimodal.budget_logits, self.config.budgets),
            "alignment": alignment_loss(multimodal.patch_scores, patch_targets),
            "vet_kl": vet_kl_loss(multimodal.visual_probs, multimodal.visual_mask,
                                  _token_targets(visual_targets, multimodal.token_sources)),
        }

    @torch.no_grad()
    def generate(self, input_ids=None, pixel_values=None, attention_mask=None, budget="auto",
                 selection="learned", patch_features=None, plan=None, group_by_tier=True, **kwargs):
        """Generate with K_i visual tokens per sample. Returns `input_ids` (as given) followed by new tokens,
        so callers strip the prompt by its own length, as with any HF model.

        budget / selection / patch_features / plan: as in `forward`. The allocation is planned once for the
            whole batch (SAM and the allocator run once), whatever the tiers.
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
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        images = plan.patch_features if plan is not None else _first_given(pixel_values, patch_features)
        _check_image_tokens(input_ids, attention_mask, self.config.image_token_id, images)
        if plan is None:
            plan = self.model.plan_allocation(
                input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                patch_features=patch_features, budget=budget, selection=selection, generator=kwargs.pop("generator", None),
            )
        groups = plan.tier_groups()
        if not group_by_tier or kwargs.get("return_dict_in_generate", False) or len(groups) == 1:
            return _prepend_prompt(input_ids, self._generate_spliced(input_ids, attention_mask, plan, kwargs))
        pieces = [(index, self._generate_spliced(input_ids[index], attention_mask[index], plan.subset(index), kwargs))
                  for index in groups.values()]
        return _prepend_prompt(input_ids, _reassemble(pieces, input_ids.shape[0], self._pad_token_id(kwargs)))

    def _generate_spliced(self, input_ids, attention_mask, plan, kwargs):
        """Generate's own output (new tokens only) from the spliced embeddings of one batch."""
        multimodal = self.model.prepare_multimodal_inputs(input_ids=input_ids, attention_mask=attention_mask,
                                                          plan=plan)
        generation_config = kwargs.get("generation_config") or self.generation_config
        max_new_tokens = kwargs.get("max_new_tokens", generation_config.max_new_tokens) or 0
        _check_context_length(multimodal.inputs_embeds.shape[1] + max_new_tokens, self.config.text_config,
                              max_new_tokens)
        # Image inputs are consumed here, once; generate's prefill then only sees the spliced embeddings.
        return super().generate(
            inputs_embeds=multimodal.inputs_embeds, attention_mask=multimodal.attention_mask,
            position_ids=multimodal.position_ids, **kwargs,
        )

    def _pad_token_id(self, kwargs):
        """The id generate itself pads finished rows with: pad_token_id, else the (first) eos_token_id."""
        generation_config = kwargs.get("generation_config") or self.generation_config
        for value in (kwargs.get("pad_token_id"), generation_config.pad_token_id, kwargs.get("eos_token_id"),
                      generation_config.eos_token_id, self.config.text_config.pad_token_id):
            if value is not None:
                return value[0] if isinstance(value, (list, tuple)) else int(value)
        return 0

    @classmethod
    def from_components(cls, vision, clip, text, dtype=None, **config_kwargs):
        """Assemble ArrCoc from pretrained SAM, CLIP and Qwen3 or Ovis2 checkpoints (Hub names or local dirs)."""
        from .components import assemble_from_components

        return assemble_from_components(cls, vision, clip, text, dtype=dtype, **config_kwargs)


def _prepend_prompt(input_ids, outputs):
    """generate from embeddings returns only the new tokens; put the prompt back in front of each row."""
    sequences = outputs if isinstance(outputs, torch.Tensor) else outputs.sequences
    prompts = input_ids.repeat_interleave(sequences.shape[0] // input_ids.shape[0], dim=0)
    sequences = torch.cat([prompts, sequences.to(input_ids.device)], dim=-1)
    if isinstance(outputs, torch.Tensor):
        return sequences
    outputs.sequences = sequences
    return outputs


def _reassemble(pieces, batch_size, pad_token_id):
    """New tokens of each tier group back in input order; groups that stopped early are right-padded."""
    first = pieces[0][1]
    per_sample = first.shape[0] // pieces[0][0].numel()  # num_return_sequences
    length = max(tokens.shape[1] for _, tokens in pieces)
    out = first.new_full((batch_size, per_sample, length), pad_token_id)
    for index, tokens in pieces:
        tokens = tokens.view(index.numel(), per_sample, -1)
        out[index.to(out.device), :, : tokens.shape[-1]] = tokens
    return out.flatten(0, 1)


def answer_window(labels: torch.Tensor) -> int:
    """The smallest `logits_to_keep` that still predicts every label: labels sit at the end of each left-padded
    row (prompt, then answer), and splicing the visual tokens in before them keeps their distance from the end."""
    has_label = labels != -100
    if not has_label.any():
        return 1
    first = has_label.int().argmax(-1)[has_label.any(-1)]
    return int(labels.shape[1] - first.min()) + 1


def _check_context_length(length, text_config, max_new_tokens=0):
    """RoPE language models run past max_position_embeddings without an error and answer garbage; refuse."""
    limit = text_config.max_position_embeddings
    if limit is not None and length > limit:
        extra = f" + max_new_tokens {max_new_tokens}" if max_new_tokens else ""
        raise ValueError(
            f"The input needs {length} positions (question and visual tokens{extra}) but the language model's "
            f"context is {limit} (text_config.max_position_embeddings). Shorten the question, use a smaller budget "
            "or generate fewer tokens."
        )


def _shifted_ce(logits, labels):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def efficiency_loss(budget_logits, budgets):
    """Expected visual tokens under the predicted tier distribution, as a fraction of the largest tier."""
    values = torch.tensor(budgets, dtype=budget_logits.dtype, device=budget_logits.device)
    return (budget_logits.softmax(-1) @ values).mean() / values.max()


def alignment_loss(patch_scores, patch_targets=None):
    """Cross-entropy of the patch-score distribution against the answer region where boxes exist; otherwise
    an anti-collapse term: KL of the batch-mean selection distribution from uniform, so the allocator cannot
    settle on one fixed set of patches for every question."""
    log_probs = patch_scores.float().log_softmax(-1)
    if patch_targets is not None:
        mass = patch_targets.float().sum(-1)
        has_box = mass > 0
        if has_box.any():
            target = patch_targets.float()[has_box] / mass[has_box, None]
            return -(target * log_probs[has_box]).sum(-1).mean()
    mean_probs = log_probs.exp().mean(0)
    return (mean_probs * (mean_probs.clamp(min=1e-12).log() + math.log(mean_probs.numel()))).sum()


def vet_kl_loss(visual_probs, visual_mask, token_targets=None):
    """Against a teacher: cross-entropy of each kept token's distribution with its patch's visual words
    ([B, K, M] ids, a uniform M-hot target). Without one: KL(visual-vocabulary usage || uniform), so the adapter
    cannot collapse onto a few VET rows."""
    if token_targets is not None:
        valid = visual_mask.unsqueeze(-1) & (token_targets != -100)
        if valid.any():
            log_probs = visual_probs.float().clamp(min=1e-12).log()
            picked = log_probs.gather(2, token_targets.clamp(min=0))
            return -picked[valid].mean()
    usage = visual_probs[visual_mask].float().mean(0)
    return (usage * (usage.clamp(min=1e-12).log() + math.log(usage.numel()))).sum()


def _token_targets(visual_targets, token_sources):
    """Each visual token's teacher id: that of the patch it was selected from (the dominant one if pooled)."""
    if visual_targets is None:
        return None
    targets = visual_targets if visual_targets.ndim == 3 else visual_targets.unsqueeze(-1)
    index = token_sources.unsqueeze(-1).expand(-1, -1, targets.shape[-1])
    return targets.gather(1, index)  # [B, K, M]


def weighted_loss(losses: dict, loss_weights: dict | None = None) -> torch.Tensor:
    """The one loss weighting: sum of weight x component over the components present (forward and the trainer
    both call it). Unknown component names are an error; without weights the answer loss alone."""
    weights = {"answer": 1.0} if loss_weights is None else loss_weights
    unknown = set(weights) - set(LOSS_COMPONENTS) - {"budget"}
    if unknown:
        raise ValueError(f"Unknown loss components {sorted(unknown)}; expected some of {LOSS_COMPONENTS}.")
    terms = [w * losses[name].float() for name, w in weights.items() if w and losses.get(name) is not None]
    return torch.stack(terms).sum() if terms else losses["answer"]


def _decision_fields(multimodal, batch, device):
    if multimodal is None:
        return {"visual_token_counts": torch.zeros(batch, dtype=torch.long, device=device)}
    return {
        "visual_token_counts": multimodal.visual_token_counts,
        "budget_logits": multimodal.budget_logits,
        "budget_tiers": multimodal.budget_tiers,
        "patch_scores": multimodal.patch_scores,
        "kept_patch_mask": multimodal.kept_patch_mask,
        "visual_probs": multimodal.visual_probs,
    }


__all__ = [
    "ArrCocCausalLMOutputWithPast",
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
