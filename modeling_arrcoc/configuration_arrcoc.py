"""ArrCoc model configuration."""

import math
from typing import Literal

from huggingface_hub.dataclasses import strict, validated_field
from transformers import AutoConfig, CLIPVisionConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .selection import SELECTION_METHODS, check_selection_method


# The dtypes SAM may compute in under autocast (`ArrCocConfig.vision_autocast_dtype`; eval.py and bench/ offer these).
VISION_AUTOCAST_DTYPES = ("bfloat16", "float16")


def tier_index(budget, budgets) -> int:
    """The tier rule: an integer budget is a tier value when it is in `budgets`, else a tier index; anything else
    is an error naming what is accepted. (The config's `tier_index` and the evaluation's method names use this.)"""
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise ValueError(budget_error(budget, budgets))
    if budget in budgets:
        return list(budgets).index(budget)
    if 0 <= budget < len(budgets):
        return budget
    raise ValueError(budget_error(budget, budgets))


def check_budget_cost(value) -> None:
    """A token price under budget "auto" (the config's own, or a call's) must be a finite number; a bool is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"budget_cost must be a finite number (the price of tokens under budget 'auto'), got "
                         f"{value!r}.")


def budget_error(budget, budgets) -> str:
    return (
        f"Unknown budget {budget!r}: expected 'auto', 'full', a tier value in {list(budgets)}, a tier index in "
        f"0..{len(budgets) - 1}, or one of those per sample."
    )


@strict
class ArrCocClipVisionConfig(CLIPVisionConfig):
    r"""
    [`CLIPVisionConfig`] as ArrCoc's `clip_config`: the same fields, defaults, model type (`clip_vision_model`) and
    serialized form, so checkpoints are unchanged and [`CLIPVisionModel`] takes it as it is.

    The one difference is `base_config_key`. Transformers loads a sub-config from a composite checkpoint by that key,
    and `CLIPVisionConfig`'s is `vision_config`, which in an ArrCoc checkpoint holds SAM. This class reads
    `clip_config`, so `ArrCocClipVisionConfig.from_pretrained(arrcoc_checkpoint)` (what the common tests call as
    `type(config.clip_config).from_pretrained`) gives the checkpoint's CLIP. On a checkpoint without `clip_config`
    (a CLIP checkpoint's `config.json`), it finds the `clip_vision_model` entry as `CLIPVisionConfig` does.

    The stock `CLIPVisionConfig.from_pretrained(arrcoc_checkpoint)` still reads `vision_config`: its key is fixed by
    Transformers, and Transformers warns that it is building a `clip_vision_model` from a `sam_vision_model` entry.
    Use `ArrCocConfig.from_pretrained(path).clip_config` or this class instead.
    """

    base_config_key = "clip_config"


@strict
class ArrCocConfig(PreTrainedConfig):
    r"""
    Configuration of [`ArrCocForConditionalGeneration`]: SAM vision tower -> allocator -> CLIP encoder ->
    quality adapter -> Qwen3/Ovis language model. Training settings (loss weights, phases, learning rates)
    live in the training arguments, never here.

    Args:
        vision_config (`dict` or `SamVisionConfig`): the SAM ViT that sees the whole page. Its neck output
            (`output_channels` x grid) is the patch grid the allocator chooses from.
        clip_config (`dict` or `CLIPVisionConfig`): the CLIP transformer fed the selected SAM features
            (its patch embedding is unused; its position table is resampled to the SAM grid). Held as an
            [`ArrCocClipVisionConfig`] (a `CLIPVisionConfig` that loads from this config's `clip_config` entry).
        text_config (`dict` or `Qwen3Config`): the language model.
        budgets (`tuple[int]`): the visual-token tiers, ascending. An integer budget passed to `forward` is a
            tier value when it is in this list, otherwise a tier index.
        image_token_id (`int`): id of the single `<image>` placeholder token per image.
        allocator_hidden_size (`int`): width of the allocator's scorer; its cost grows with it.
        allocator_num_heads (`int`): heads of the question-to-patch cross-attention.
        fold_dropped (`bool`): whether the compression heads fold dropped patches into their most similar kept
            patch (dropped content is summarized) or discard them. Off by default: a folded token mixes the cell
            the question asks about with the dropped ones, as a pooled token does, and ARR-COC trained with the
            fold read worse at every tier below full (docs/results.md, the fold ablation).
        selection_method (`str`): the model's own patch selection, used by `forward` / `generate` /
            `plan_allocation` when the caller passes no `selection`: "learned" (ARR-COC: the allocator's scores),
            "uniform" (DeepSeek-OCR-style average pooling of the grid to K cells), "hotspot" (top-K by the
            allocator's query-independent saliency, VisionZip-style), "random" (K random patches), "full"
            (every patch, whatever the budget) or "compress" (uniform pooling's windows through a learned
            compressor, which the allocator builds only for this selection), or another name registered in
            `selection.SELECTIONS_TABLE` (the allowed values are read from it). A baseline trained with its own
            selection carries it here, so its checkpoint runs that selection without being told. (Query similarity, SparseVLM-style, is
            training-free and evaluation-only: it is not a selection a model is trained with.)
        relevance_tag (`bool`): whether the quality adapter adds each kept token's allocator relevance (a bounded
            z-score, `relevance_embedding`) to its LLM-space embedding. Baselines whose selection carries no
            allocator score are trained with it off, so their LLM never reads a signal only ARR-COC has.
        budget_temperature (`float`): temperature of the budget predictor's tier probabilities when a token price
            is set (`budget_cost`): log-probabilities of logits / temperature. Fitted on validation questions at the
            end of training (`fit_budget_temperature`), so that a price moves questions across tiers one by one
            rather than all at once; it never changes the predicted tier (price 0).
        budget_cost (`float`): the model's own price of tokens under budget "auto", used when a call gives none
            (`ArrCocModel.resolve_budget`): 0 keeps the predicted tier. Fitted with the temperature at the end of
            training (`fit_budget_cost`): of a grid of prices, the one whose validation answers lie furthest above
            the constant tiers' envelope at their mean tokens, among those that keep a share of the best constant
            tier's accuracy when an accuracy floor is set (the demo's: 97%). The demo's "auto" is this price.
        adapter_num_layers (`int`): prototype cross-attention layers in the quality adapter.
        adapter_num_heads (`int`): heads of those layers.
        num_vet_prototypes (`int`): learnable prototypes the visual tokens attend to.
        visual_vocab_size (`int`): size of the visual vocabulary; rows of the visual embedding table (VET).
        tie_word_embeddings (`bool`): tie `lm_head` to the language model's input embeddings.
        initializer_range (`float`): std of the normal init of ArrCoc's own layers (allocator, adapter, heads).
        vision_autocast_dtype (`str`, *optional*): "bfloat16" or "float16": the SAM vision tower computes under
            autocast to this dtype, its features cast back to the language model's dtype for everything after it.
            SAM is the fixed cost of every query (90% of the base preset's prefill at tier 64 on CPU); bf16 runs it
            2.2-2.7x faster on CPUs with AMX (bench/sam_attention.py, docs/inference.md). None (default): SAM
            computes in the model's dtype.
    """

    model_type = "arrcoc"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="sam_vision_model"),
        "clip_config": SubConfigSpec(config_class=ArrCocClipVisionConfig),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    clip_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    budgets: list[int] | tuple[int, ...] = (64, 100, 160, 256, 400)
    image_token_id: int = 151665
    allocator_hidden_size: int = 256
    allocator_num_heads: int = 4
    fold_dropped: bool = False
    # Checked against the selection table when set (not a Literal fixed at import: a registered method is accepted).
    selection_method: str = validated_field(check_selection_method, default="learned")
    relevance_tag: bool = True
    budget_temperature: float = 1.0
    budget_cost: float = 0.0
    adapter_num_layers: int = 2
    adapter_num_heads: int = 4
    num_vet_prototypes: int = 64
    visual_vocab_size: int = 16384
    visual_tokenize_function: Literal["softmax"] = "softmax"
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    vision_autocast_dtype: Literal[VISION_AUTOCAST_DTYPES] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.budgets = [int(b) for b in self.budgets]
        if not self.budgets or any(b <= 0 for b in self.budgets) or self.budgets != sorted(set(self.budgets)):
            raise ValueError(f"budgets must be positive, unique and ascending, got {self.budgets}")
        if not (math.isfinite(self.budget_temperature) and self.budget_temperature > 0):
            raise ValueError(f"budget_temperature must be a positive number, got {self.budget_temperature}")
        check_budget_cost(self.budget_cost)
        for name in ("allocator_hidden_size", "adapter_num_layers", "num_vet_prototypes", "visual_vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """(rows, cols) of the SAM patch grid the allocator selects from."""
        size, patch = self.vision_config.image_size, self.vision_config.patch_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        return size[0] // patch[0], size[1] // patch[1]

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid_size
        return rows * cols

    # -- tier rules: the one place that maps budgets to tiers and tiers to token counts ----------------------

    def tier_index(self, budget) -> int:
        """See `tier_index` (module level): the tier index of an integer budget on this config's tiers."""
        return tier_index(budget, self.budgets)

    def tier_value(self, index: int) -> int:
        """The tier value (as listed in `budgets`) of tier `index`."""
        return self.budgets[index]

    def tier_tokens(self, index: int) -> int:
        """Visual tokens tier `index` keeps: its value, or every patch when the value exceeds the grid."""
        return min(self.budgets[index], self.num_patches)

    @property
    def full_tier(self) -> int:
        """The tier index "full" reports (every patch is kept; the adapter is conditioned on the largest tier)."""
        return len(self.budgets) - 1

    def budget_error(self, budget) -> str:
        return budget_error(budget, self.budgets)

    def pool_shape(self, count: int) -> tuple[int, int]:
        """Uniform pooling's (rows, cols) for `count` tokens: the factor pair that fits the grid with the closest
        aspect ratio. ValueError when no factor pair fits."""
        grid = self.grid_size
        pairs = [(r, count // r) for r in range(1, count + 1) if count % r == 0]
        pairs = [(r, c) for r, c in pairs if r <= grid[0] and c <= grid[1]]
        if not pairs:
            raise ValueError(f"Uniform pooling cannot make {count} tokens on a {grid[0]}x{grid[1]} grid.")
        return min(pairs, key=lambda rc: abs(math.log(rc[0] / rc[1]) - math.log(grid[0] / grid[1])))


__all__ = ["ArrCocClipVisionConfig", "ArrCocConfig", "SELECTION_METHODS", "VISION_AUTOCAST_DTYPES", "budget_error",
           "check_budget_cost", "tier_index"]
