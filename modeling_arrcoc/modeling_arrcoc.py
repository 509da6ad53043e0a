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
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.models.clip.modeling_clip import CLIPEncoder
from transformers.models.sam.modeling_sam import (
    SamVisionAttention,
    SamVisionModel,
    SamVisionSdpaAttention,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple
from transformers.utils.import_utils import is_tracing

from .adapter_arrcoc import ArrCocQualityAdapter
from .allocator_arrcoc import ArrCocAllocator, Selection
from .configuration_arrcoc import SELECTION_METHODS, ArrCocConfig
from .layers_arrcoc import ArrCocZeroInitEmbedding, ArrCocZeroInitLinear

SELECTIONS = SELECTION_METHODS  # learned, uniform, hotspot, random, full (the config's vocabulary)
LOSS_COMPONENTS = ("answer", "efficiency", "alignment", "vet_kl")


@dataclass
class ArrCocModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    """
    `ArrCocModel`'s output. last_hidden_state / cache / hidden_states / attentions: the language model's, over the
    spliced sequence (each `<image>` replaced by its K_i visual tokens, rows left-padded to the longest).
    image_outputs: the `ArrCocImageFeaturesOutput` of `get_image_features` (None on text-only steps); its
        hidden_states / attentions are the vision tower's when asked for.
    visual_token_counts: [B] tokens actually fed to the LLM per sample (0 for text-only decoding steps).
    budget_logits: [B, n_tiers]; budget_tiers: [B] tier index used per sample.
    patch_scores: [B, N] allocator scores; kept_patch_mask: [B, N] patches whose own position was kept.
    visual_probs: [B, K_max, V] the adapter's distribution over the visual vocabulary (padded rows are 0).
    labels / shift_labels: the targets given to `forward`, aligned with `last_hidden_state` (spliced like the
        inputs: -100 on the visual tokens), for a head's loss. None when not given.
    """

    visual_token_counts: torch.LongTensor | None = None
    budget_logits: torch.FloatTensor | None = None
    budget_tiers: torch.LongTensor | None = None
    patch_scores: torch.FloatTensor | None = None
    kept_patch_mask: torch.BoolTensor | None = None
    visual_probs: torch.FloatTensor | None = None
    labels: torch.LongTensor | None = None
    shift_labels: torch.LongTensor | None = None


@dataclass
class ArrCocCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    """
    loss: weighted total of the components below (weights from `loss_weights`), None without labels.
    logits / cache / hidden_states / attentions: the language model's, over the spliced sequence.
    image_outputs: the `ArrCocImageFeaturesOutput` the visual tokens came from (None on text-only steps).
    answer_loss / efficiency_loss / alignment_loss / vet_kl_loss: each component, None without labels.
    visual_token_counts: [B] tokens actually fed to the LLM per sample (0 for text-only decoding steps).
    budget_logits: [B, n_tiers]; budget_tiers: [B] tier index used per sample.
    patch_scores: [B, N] allocator scores; kept_patch_mask: [B, N] patches whose own position was kept.
    visual_probs: [B, K_max, V] the adapter's distribution over the visual vocabulary (padded rows are 0).
    """

    answer_loss: torch.FloatTensor | None = None
    efficiency_loss: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    vet_kl_loss: torch.FloatTensor | None = None
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
    shift_labels: torch.Tensor | None = None  # pre-shifted targets, spliced like `labels`
    image: "ArrCocImageFeaturesOutput | None" = None  # what `get_image_features` returned


@dataclass
class ArrCocAllocationPlan:
    """Everything decided about one batch's visual tokens, computed once by `ArrCocModel.plan_allocation`.

    patch_features: [B, N, C] SAM features. patch_scores / hotspot_scores: [B, N] the allocator's scores and its
    query-agnostic saliency. budget_logits: [B, n_tiers]. budget_tiers: [B] tier index per sample.
    visual_token_counts: [B] tokens each sample keeps. selection_scores: [B, N] what the top-K rule ranks by (None
    for uniform pooling). selection: the selection rule's name. static_tokens: the tokens every sample keeps when
    that is known on the host (a fixed tier, "full", or one tier group of an auto batch), else None: it fixes every
    shape of the forward, so a forced tier compiles as one graph (`torch.compile(fullgraph=True)`) with no read-back.
    """

    patch_features: torch.Tensor
    patch_scores: torch.Tensor
    hotspot_scores: torch.Tensor
    budget_logits: torch.Tensor
    budget_tiers: torch.Tensor
    visual_token_counts: torch.Tensor
    selection_scores: torch.Tensor | None
    selection: str = "learned"
    static_tokens: int | None = None

    def tier_groups(self) -> dict:
        """{tier index: sample indices} in ascending tier order: the batches generation runs without padding."""
        return {tier: (self.budget_tiers == tier).nonzero().flatten() for tier in self.budget_tiers.unique().tolist()}

    def tier_group(self, index) -> "ArrCocAllocationPlan":
        """The plan of one tier group (`tier_groups`' samples `index`): every sample keeps the same number of tokens,
        so the group's shapes are static (one compiled graph per tier group under "auto")."""
        return self.subset(index, static_tokens=int(self.visual_token_counts[index[0]]))

    def subset(self, index, static_tokens: int | None = None) -> "ArrCocAllocationPlan":
        """The plan of the samples at `index` (decisions are per sample, so nothing is recomputed).
        static_tokens: their common token count, when the caller knows it (one tier group); else the plan's own."""
        fields = {name: value[index] for name, value in vars(self).items() if isinstance(value, torch.Tensor)}
        static_tokens = self.static_tokens if static_tokens is None else static_tokens
        return dataclasses.replace(self, **fields, static_tokens=static_tokens)


# The plan's host-side decisions (the rule's name, a known token count) are pytree context, its tensors children:
# torch.export / torch.compile outputs can then carry the plan (in `image_outputs`) like any model output.
_PLAN_HOST_FIELDS = ("selection", "static_tokens")


def _flatten_plan(plan):
    names = tuple(field.name for field in dataclasses.fields(plan) if field.name not in _PLAN_HOST_FIELDS)
    return [getattr(plan, name) for name in names], (names, *(getattr(plan, name) for name in _PLAN_HOST_FIELDS))


def _unflatten_plan(children, context):
    names, *host = context
    return ArrCocAllocationPlan(**dict(zip(names, children)), **dict(zip(_PLAN_HOST_FIELDS, host)))


torch.utils._pytree.register_pytree_node(
    ArrCocAllocationPlan, _flatten_plan, _unflatten_plan,
    serialized_type_name=f"{__name__}.ArrCocAllocationPlan",  # this module's own name: a remote-code copy differs
)


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
        classes = {"eager": SamVisionAttention, "sdpa": SamVisionSdpaAttention}
        if not isinstance(requested, str) or requested not in classes:
            return
        for module in self.modules():
            if isinstance(module, SamVisionModel):
                for config in (module.config, self.config.vision_config):
                    config._attn_implementation_internal = requested
                for attention in module.modules():
                    if isinstance(attention, SamVisionAttention):
                        attention.__class__ = classes[requested]

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
        return _patch_sequence(self._vision_outputs(pixel_values).last_hidden_state)

    def _vision_outputs(self, pixel_values, **kwargs):
        """The vision tower's output (its hidden states / attentions too when `kwargs` or its config ask)."""
        _check_pixels(pixel_values)
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
        attention_mask = _ones_mask(embeds) if attention_mask is None else attention_mask
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
        selection=None, selection_scores=None, generator=None, inputs_embeds=None, budget_cost=0.0,
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
        budget_cost: the price of tokens under budget "auto" (see `resolve_budget`); 0 (default): the predicted tier.
        """
        selection = self.config.selection_method if selection is None else selection
        if selection not in SELECTIONS:
            raise ValueError(f"Unknown selection {selection!r}; expected one of {SELECTIONS}.")
        budget = "full" if selection == "full" else budget
        features = self.get_patch_features(pixel_values) if patch_features is None else patch_features
        if input_ids is None and inputs_embeds is None:
            question, question_mask = self._empty_question(features)
        else:
            question, question_mask = self.question_inputs(input_ids, attention_mask, labels, inputs_embeds)
        decision = self.allocator(features, question, question_mask)
        counts, tiers = self.resolve_budget(budget, decision.budget_logits, features.shape[1], budget_cost)
        if selection_scores is None:
            selection_scores = self._selection_scores(decision, selection, generator)
        return ArrCocAllocationPlan(
            patch_features=features, patch_scores=decision.patch_scores, hotspot_scores=decision.hotspot_scores,
            budget_logits=decision.budget_logits, budget_tiers=tiers, visual_token_counts=counts,
            selection_scores=selection_scores, selection=selection,
            static_tokens=self.static_tokens(budget, features.shape[1]),
        )

    def replan(self, plan: ArrCocAllocationPlan, budget, budget_cost=0.0) -> ArrCocAllocationPlan:
        """`plan` at another budget: the allocator's scores are reused, only tiers and token counts change (the
        budget calibration runs every tier on one allocator forward). A "full" plan stays full."""
        budget = "full" if plan.selection == "full" else budget
        num_patches = plan.patch_features.shape[1]
        counts, tiers = self.resolve_budget(budget, plan.budget_logits, num_patches, budget_cost)
        return dataclasses.replace(plan, budget_tiers=tiers, visual_token_counts=counts,
                                   static_tokens=self.static_tokens(budget, num_patches))

    @staticmethod
    def _selection_scores(decision, selection, generator):
        """What the top-K rule ranks patches by: the allocator's scores, its query-agnostic saliency, or noise.
        Uniform pooling ranks nothing; "full" keeps every patch, ranked by constant scores (so its tokens carry
        no relevance: each standardized score is 0, and the straight-through gate is exactly 1)."""
        if selection == "uniform":
            return None
        if selection == "full":
            return torch.zeros_like(decision.patch_scores)
        if selection == "random":
            shape, device = decision.patch_scores.shape, decision.patch_scores.device
            return torch.rand(shape, generator=generator, device="cpu").to(device)
        return decision.hotspot_scores if selection == "hotspot" else decision.patch_scores

    def resolve_budget(self, budget, budget_logits, num_patches, budget_cost=0.0):
        """Per-sample (token counts, tier indices) for `budget` (the tier rules live on the config).

        Under "auto", `budget_cost` is the user's price of tokens, chosen at inference without retraining: each
        tier scores its predicted log-probability minus `budget_cost` x log2(its tokens), so 0 keeps the predicted
        tier, a positive cost buys fewer tokens (1.0: a tier must be twice as likely to be worth twice the tokens)
        and a negative one more. Sweeping it traces auto's own accuracy-vs-tokens curve."""
        config = self.config
        batch, device = budget_logits.shape[0], budget_logits.device
        if isinstance(budget, str) and budget == "auto":
            tiers = _priced_tiers(budget_logits, config, num_patches, budget_cost)
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

    def static_tokens(self, budget, num_patches) -> int | None:
        """The tokens every sample keeps under `budget` when the host knows it without reading a tensor: "full"
        or one tier for the whole batch (the counts `resolve_budget` gives, as a Python int); None under "auto"
        and per-sample budgets, whose counts are data."""
        if isinstance(budget, str):
            return num_patches if budget == "full" else None
        if isinstance(budget, (list, tuple, torch.Tensor)):
            return None
        return min(self.config.tier_value(self.config.tier_index(budget)), num_patches)

    def select(self, plan: ArrCocAllocationPlan) -> Selection:
        """The kept (or pooled) tokens of `plan`: top-K in raster order with dropped patches folded in, or
        DeepSeek-OCR-style uniform pooling."""
        if plan.selection == "uniform":
            return self._uniform_selection(plan.patch_features, plan.visual_token_counts, plan.static_tokens)
        return self.allocator.compression_heads(plan.patch_features, plan.selection_scores, plan.visual_token_counts,
                                                static_tokens=plan.static_tokens)

    def _uniform_selection(self, features, counts, static_tokens=None):
        """DeepSeek-OCR-style fixed compression: average-pool the grid to K cells, whatever the question."""
        if static_tokens is None and counts.unique().numel() != 1:
            raise ValueError("Uniform pooling takes one budget per batch; group the batch by tier.")
        count = int(counts[0]) if static_tokens is None else static_tokens
        grid = self.config.grid_size
        rows, cols = self.config.pool_shape(count)
        eye = torch.eye(features.shape[1], dtype=features.dtype, device=features.device).view(-1, 1, *grid)
        weights = F.adaptive_avg_pool2d(eye, (rows, cols)).flatten(1).T.unsqueeze(0)  # [1, K, N]
        weights = weights.expand(features.shape[0], -1, -1)
        mask = torch.ones(weights.shape[:2], dtype=torch.bool, device=features.device)
        # Pooling ignores the question, so its tokens carry no relevance score.
        return Selection(weights @ features, weights, mask, weights.sum(1) > 0, torch.zeros_like(mask, dtype=features.dtype))

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
        budget_cost: float = 0.0,
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
                patch_features = _patch_sequence(vision.last_hidden_state)
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

    def splice(self, input_ids, attention_mask, image: ArrCocImageFeaturesOutput, labels=None, inputs_embeds=None
               ) -> tuple:
        """(inputs_embeds, attention_mask, position_ids, labels): each sample's text with its K_i visual embeddings
        in place of its `<image>` token, left-padded to the longest row. The text embeddings are `inputs_embeds`
        when given (the placeholder is then found in `input_ids`, or in `inputs_embeds` without them)."""
        text_embeds = self.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
        attention_mask = _ones_mask(text_embeds) if attention_mask is None else attention_mask
        return _splice(self.image_token_mask(input_ids, inputs_embeds), attention_mask, text_embeds,
                       image.pooler_output, image.visual_token_mask, labels,
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
        attention_mask = _ones_mask(reference) if attention_mask is None else attention_mask
        image_mask = self.image_token_mask(input_ids, inputs_embeds)
        images = plan.patch_features if plan is not None else _first_given(plan_kwargs.get("pixel_values"),
                                                                           plan_kwargs.get("patch_features"))
        _check_image_tokens(image_mask, attention_mask, self.config.image_token_id, images,
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
        *spliced, spliced_shift_labels = _splice(
            image_mask, attention_mask, text_embeds, image.pooler_output, image.visual_token_mask, labels,
            shift_labels if splice_shift_labels else None, static_tokens=plan.static_tokens,
        )
        if shift_labels is not None and not splice_shift_labels:
            if shift_labels.shape[1] != spliced[0].shape[1]:
                raise ValueError(
                    f"shift_labels must be aligned with the prompt ({reference.shape[1]} positions) or with the "
                    f"spliced sequence ({spliced[0].shape[1]}); got {tuple(shift_labels.shape)}."
                )
            spliced_shift_labels = shift_labels
        return ArrCocMultimodalInputs(
            *spliced, visual_token_counts=image.visual_token_mask.sum(-1), budget_logits=plan.budget_logits,
            budget_tiers=plan.budget_tiers, patch_scores=plan.patch_scores, kept_patch_mask=image.kept_patch_mask,
            visual_probs=image.visual_probs, visual_mask=image.visual_token_mask, token_sources=image.token_sources,
            shift_labels=spliced_shift_labels, image=image,
        )

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
        budget_cost: float = 0.0,
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
        multimodal = None
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
            _check_context_length(past_length + inputs_embeds.shape[1], self.config.text_config)
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
            **_decision_fields(multimodal, inputs_embeds.shape[0], inputs_embeds.device),
        )


def _patch_sequence(features):
    """[B, C, H, W] feature map -> [B, H*W, C] raster-ordered patch sequence."""
    return features.flatten(2).transpose(1, 2)


def _ones_mask(reference):
    """An all-ones attention mask for [B, L] ids or [B, L, D] embeddings."""
    return torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)


def _vision_kwargs(kwargs):
    """The keyword arguments the vision tower takes from those a forward receives."""
    return {key: kwargs[key] for key in ("output_hidden_states", "output_attentions") if key in kwargs}


def _first_given(*values):
    return next((value for value in values if value is not None), None)


def _check_pixels(pixel_values):
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be [batch, channels, height, width], got shape {tuple(pixel_values.shape)}.")
    # Value checks run in eager mode only: under torch.compile / torch.export they would be a graph break
    # (a tensor read back on the host), and there the inputs are the caller's responsibility.
    # The sum first: one reduction (0.08 ms for a batch of 8 demo pages) instead of an elementwise mask (9.8 ms,
    # 1.2 ms a query, the small-tier overhead #23 looked for); a NaN or inf anywhere makes the sum non-finite, and
    # the exact check only runs then, so a finite batch whose sum overflows is not refused.
    if not is_tracing(pixel_values) and not torch.isfinite(pixel_values.sum()) and not torch.isfinite(pixel_values).all():
        raise ValueError("pixel_values contain NaN or infinite values.")


def _check_image_tokens(image_mask, attention_mask, image_token_id, images, found_in="input_ids"):
    """Exactly one `<image>` placeholder per sample (`image_mask`, found in `found_in`) and one image each."""
    per_sample = (image_mask & attention_mask.bool()).sum(-1)
    if not is_tracing(image_mask) and (per_sample != 1).any():  # eager only, as in _check_pixels
        hint = ("; with inputs_embeds alone, the placeholder is the position holding the <image> token's own "
                "embedding: pass input_ids as well to mark it" if found_in == "inputs_embeds" else "")
        raise ValueError(
            f"Each sample needs exactly one <image> token (id {image_token_id}); found {per_sample.tolist()} in "
            f"{found_in}{hint}. Several images per sample are not supported."
        )
    if images is None:
        raise ValueError(f"{found_in} contain <image> tokens but no pixel_values were given.")
    if images.shape[0] != image_mask.shape[0]:
        raise ValueError(f"Got {images.shape[0]} images for {image_mask.shape[0]} samples with one <image> each.")


def _splice(image_mask, attention_mask, text_embeds, visual_embeds, visual_mask, labels=None, shift_labels=None,
            static_tokens=None):
    """Per sample: text before <image>, its K_i visual embeddings, text after; then left-pad to the longest.

    Returns (inputs_embeds, attention_mask, position_ids, labels, shift_labels). Labels get -100 on the visual
    tokens. Pre-shifted `shift_labels` (position t's target) get -100 on the token before the image and on the
    visual tokens but the last, which predicts the token after the image: they equal the spliced labels shifted.
    Vectorized (one scatter per tensor, no per-sample loop); the only data-dependent value is the output length.
    With `static_tokens` (every sample keeps that many) the length is known on the host instead: the prompt's
    padded length - 1 + K, which is the longest row's whenever one row is unpadded (as a processor pads); a batch
    whose every row is padded keeps a padding column more. No tensor is read back, so the splice compiles whole.
    """
    keep = attention_mask.bool()
    is_image = keep & image_mask  # exactly one per row (checked by _check_image_tokens)
    is_text = keep & ~image_mask
    counts = visual_mask.sum(-1)
    rank = keep.long().cumsum(-1) - 1  # each kept position's index among its row's kept positions
    image_rank = (rank * is_image).sum(-1)
    lengths = keep.sum(-1) - 1 + counts
    length = int(lengths.max()) if static_tokens is None else attention_mask.shape[1] - 1 + static_tokens
    offset = length - lengths  # left padding of each row
    after_image = rank > image_rank[:, None]
    # Where each text / visual token goes; everything else goes to a dump column `length`, dropped at the end.
    text_at = offset[:, None] + rank + after_image * (counts[:, None] - 1)
    text_at = torch.where(is_text, text_at, length)
    visual_rank = visual_mask.long().cumsum(-1) - 1
    visual_at = torch.where(visual_mask, offset[:, None] + image_rank[:, None] + visual_rank, length)

    batch, dim = text_embeds.shape[0], text_embeds.shape[-1]
    embeds = text_embeds.new_zeros(batch, length + 1, dim)
    embeds = embeds.scatter(1, text_at.unsqueeze(-1).expand(-1, -1, dim), text_embeds)
    visual = visual_embeds.to(text_embeds.dtype)
    embeds = embeds.scatter(1, visual_at.unsqueeze(-1).expand(-1, -1, dim), visual)[:, :length].contiguous()
    positions = torch.arange(length, device=text_embeds.device)
    mask = (positions[None] >= offset[:, None]).long()

    def scattered(values, extra=None):
        out = torch.full((batch, length + 1), -100, dtype=torch.long, device=text_embeds.device)
        out = out.scatter(1, text_at, values.long().to(out.device))
        if extra is not None:
            out = out.scatter(1, *extra)
        return out[:, :length].contiguous()

    spliced_labels = None if labels is None else scattered(labels)
    spliced_shift_labels = None
    if shift_labels is not None:
        before_image = keep & (rank == image_rank[:, None] - 1)
        last_visual = torch.where(counts > 0, offset + image_rank + counts - 1, length)
        image_target = (shift_labels * is_image).sum(-1)
        spliced_shift_labels = scattered(shift_labels.masked_fill(before_image, -100),
                                         (last_visual[:, None], image_target[:, None].long()))
    return embeds, mask, _position_ids(mask), spliced_labels, spliced_shift_labels


def _position_ids(attention_mask):
    # Left padding must not shift positions: the first real token is position 0 in every row.
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


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
        budget_cost: float = 0.0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ArrCocCausalLMOutputWithPast:
        r"""
        budget: "auto" (the allocator's tier), "full" (every patch), a tier value in `config.budgets`, a tier
            index, or a list/tensor of those per sample. Anything else raises a ValueError.
        budget_cost: under "auto", the price of tokens (`ArrCocModel.resolve_budget`): 0 keeps the predicted
            tier, more buys fewer tokens, less buys more; the user's accuracy-vs-tokens trade-off, no retraining.
        selection: "learned" (allocator scores), "uniform" (fixed pooling), "hotspot" (query-agnostic
            saliency top-K), "random" or "full" (every patch, whatever the budget); None (default): the model's
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
        loss_weights: weights of `LOSS_COMPONENTS` in `loss`; default {"answer": 1.0} (others 0).
        logits_to_keep: as in Transformers' causal LMs: compute `logits` for the last `logits_to_keep` positions
            only (0: all). With labels, every label must lie in that window (the trainer keeps the answer's).
        shift_labels (in kwargs): pre-shifted targets (position t's target), as the trainer passes them under
            sequence/context parallelism: [B, L] aligned with the prompt (spliced here so that the last visual
            token predicts the token after the image) or [B, L_spliced]. With them the answer loss is taken against
            `shift_labels` (by `self.loss_function`) and `labels`, if given, only keep the answer from the
            allocator; without `labels`, the answer positions are read off `shift_labels`.
        num_items_in_batch (in kwargs): as in Transformers' causal LMs, the answer loss is then a sum over the
            labelled tokens divided by it (gradient accumulation).
        return_dict=False returns a tuple; `past_key_values=` is the deprecated name of `cache`.
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
        losses = self._auxiliary_losses(outputs, patch_targets, visual_targets) if has_targets else {}
        losses["answer"] = answer_loss
        return ArrCocCausalLMOutputWithPast(
            loss=weighted_loss(losses, loss_weights) if has_targets else None,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            answer_loss=answer_loss,
            efficiency_loss=losses.get("efficiency"),
            alignment_loss=losses.get("alignment"),
            vet_kl_loss=losses.get("vet_kl"),
            visual_token_counts=outputs.visual_token_counts,
            budget_logits=outputs.budget_logits,
            budget_tiers=outputs.budget_tiers,
            patch_scores=outputs.patch_scores,
            kept_patch_mask=outputs.kept_patch_mask,
            visual_probs=outputs.visual_probs,
        )

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
            return logits, _shifted_ce(logits, labels)
        shift_labels = None if shift_labels is None else shift_labels.contiguous()
        loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size,
                                  shift_labels=shift_labels, num_items_in_batch=num_items_in_batch)
        return logits, loss

    def _auxiliary_losses(self, outputs, patch_targets, visual_targets):
        image = outputs.image_outputs
        if image is None:
            return {}
        return {
            "efficiency": efficiency_loss(outputs.budget_logits, self.config.budgets),
            "alignment": alignment_loss(outputs.patch_scores, patch_targets),
            "vet_kl": vet_kl_loss(outputs.visual_probs, image.visual_token_mask,
                                  _token_targets(visual_targets, image.token_sources)),
        }

    @torch.no_grad()
    def generate(self, input_ids=None, pixel_values=None, attention_mask=None, budget="auto",
                 selection=None, patch_features=None, plan=None, group_by_tier=True, budget_cost=0.0, **kwargs):
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
        _check_no_assisted_decoding(kwargs, self.generation_config)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        images = plan.patch_features if plan is not None else _first_given(pixel_values, patch_features)
        _check_image_tokens(input_ids == self.config.image_token_id, attention_mask, self.config.image_token_id,
                            images)
        if plan is None:
            plan = self.model.plan_allocation(
                input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                patch_features=patch_features, budget=budget, selection=selection, generator=kwargs.pop("generator", None),
                budget_cost=budget_cost,
            )
        groups = plan.tier_groups()
        if len(groups) == 1:
            plan = plan.tier_group(next(iter(groups.values())))  # one tier for all: static shapes
        if not group_by_tier or kwargs.get("return_dict_in_generate", False) or len(groups) == 1:
            return _prepend_prompt(input_ids, self._generate_spliced(input_ids, attention_mask, plan, kwargs))
        pieces = [(index, self._generate_spliced(input_ids[index], attention_mask[index], plan.tier_group(index),
                                                 kwargs))
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


def _check_no_assisted_decoding(kwargs, default_config):
    """Assisted decoding (an assistant model, prompt lookup or early exit) cannot run with images: generate
    continues from spliced `inputs_embeds`, and a candidate generator has neither the prompt's ids nor the images
    to hand to its draft model. Refuse it clearly instead of failing deep inside transformers."""
    config = kwargs.get("generation_config") or default_config
    asked = [name for name in ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")
             if kwargs.get(name) is not None or getattr(config, name, None) is not None]
    if asked:
        raise ValueError(
            f"Assisted decoding ({', '.join(asked)}) is not supported with images: ArrCoc generates from spliced "
            "inputs_embeds, which no candidate generator can hand to a draft model. Generate without it (text-only "
            "prompts can use it)."
        )


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


def _priced_tiers(budget_logits, config, num_patches, budget_cost):
    if not isinstance(budget_cost, (int, float)) or isinstance(budget_cost, bool) or not math.isfinite(budget_cost):
        raise ValueError(f"budget_cost must be a finite number (the price of tokens under budget 'auto'), got "
                         f"{budget_cost!r}.")
    if budget_cost == 0:
        return budget_logits.argmax(-1)  # exactly the predicted tier (no log-softmax round-off)
    tokens = torch.tensor([min(k, num_patches) for k in config.budgets], dtype=torch.float32,
                          device=budget_logits.device)
    priced = (budget_logits.float() / config.budget_temperature).log_softmax(-1) - budget_cost * tokens.log2()
    return priced.argmax(-1)


def efficiency_loss(budget_logits, budgets):
    """Expected visual tokens under the predicted tier distribution, as a fraction of the largest tier."""
    values = torch.tensor(budgets, dtype=budget_logits.dtype, device=budget_logits.device)
    return (budget_logits.softmax(-1) @ values).mean() / values.max()


def alignment_loss(patch_scores, patch_targets=None):
    """Cross-entropy of the patch-score distribution against the answer region where boxes exist; otherwise
    an anti-collapse term: KL of the batch-mean selection distribution from uniform, so the allocator cannot
    settle on one fixed set of patches for every question. Masked means, no boolean indexing or host branch: the
    loss traces into the forward's one graph (torch.compile)."""
    log_probs = patch_scores.float().log_softmax(-1)
    mean_probs = log_probs.exp().mean(0)
    anti_collapse = (mean_probs * (mean_probs.clamp(min=1e-12).log() + math.log(mean_probs.numel()))).sum()
    if patch_targets is None:
        return anti_collapse
    mass = patch_targets.float().sum(-1)
    has_box = mass > 0
    target = patch_targets.float() / mass.clamp(min=1e-12)[:, None]
    per_row = -(target * log_probs).sum(-1)
    boxed = (per_row * has_box).sum() / has_box.sum().clamp(min=1)
    return torch.where(has_box.any(), boxed, anti_collapse)


def vet_kl_loss(visual_probs, visual_mask, token_targets=None):
    """Against a teacher: cross-entropy of each kept token's distribution with its patch's visual words
    ([B, K, M] ids, a uniform M-hot target). Without one: KL(visual-vocabulary usage || uniform), so the adapter
    cannot collapse onto a few VET rows. Masked means, as in `alignment_loss`, so it compiles whole."""
    kept = visual_mask.unsqueeze(-1).float()
    usage = (visual_probs.float() * kept).sum((0, 1)) / kept.sum().clamp(min=1)
    uniform_kl = (usage * (usage.clamp(min=1e-12).log() + math.log(usage.numel()))).sum()
    if token_targets is None:
        return uniform_kl
    valid = visual_mask.unsqueeze(-1) & (token_targets != -100)
    picked = visual_probs.float().clamp(min=1e-12).log().gather(2, token_targets.clamp(min=0))
    teacher = -(picked * valid).sum() / valid.sum().clamp(min=1)
    return torch.where(valid.any(), teacher, uniform_kl)


def _token_targets(visual_targets, token_sources):
    """Each visual token's teacher id: that of the patch it was selected from (the dominant one if pooled)."""
    if visual_targets is None:
        return None
    targets = visual_targets if visual_targets.ndim == 3 else visual_targets.unsqueeze(-1)
    index = token_sources.unsqueeze(-1).expand(-1, -1, targets.shape[-1])
    return targets.gather(1, index)  # [B, K, M]


def weighted_loss(losses: dict, loss_weights: dict | None = None, extra_terms: tuple = ("budget",)) -> torch.Tensor:
    """The one loss weighting: sum of weight x component over the components present (forward and the trainer
    both call it). Unknown component names are an error; `extra_terms` are the caller's own terms besides the
    model's (the trainer passes its list; forward keeps accepting a calibration weight it never computes). Without
    weights the answer loss alone."""
    weights = {"answer": 1.0} if loss_weights is None else loss_weights
    unknown = set(weights) - set(LOSS_COMPONENTS) - set(extra_terms)
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
