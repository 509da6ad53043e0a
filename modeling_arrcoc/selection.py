"""Patch selection methods, one table: each name maps to what the top-K rule ranks patches by, whether it is a
fixed-compression baseline, its baseline (report) name and its plot style (the baselines' contract: docs/design.md,
"Contracts").

Everything else is derived from `SELECTIONS_TABLE`: the config's allowed `selection_method` values
(`SELECTION_METHODS`), the trainer's `FIXED_SELECTIONS`, the evaluation's `<baseline>@<K>` names
(`BASELINE_SELECTIONS`, `SELECTION_BASELINES`, `BASELINES`) and the Pareto plot's series (`BASELINE_STYLES`). A new
method is one `SELECTIONS_TABLE.register(SelectionMethod(...))`.

Only torch here: the config imports this module, and the model reads its scorers.
"""

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.nn import functional as F

from .registry import NameView, Registry


@dataclass(frozen=True)
class SelectionMethod:
    """One way of choosing each image's K visual tokens.

    scores: (the allocator's decision, a random generator) -> [B, N] what the top-K rule ranks patches by; None for
        uniform pooling (the grid is average-pooled to K cells, nothing is ranked) and for external scores.
    external: (model, patch_features, question_ids, question_mask) -> [B, N] scores made outside the allocator
        (training-free, evaluation only: never a model's own selection). The plan then ranks by them on the learned
        path, so everything but the ranking is the checkpoint's own.
    fixed: a fixed-compression baseline (K is given, never predicted): it trains at a tier or one drawn per step.
    baseline: its name as a baseline through a checkpoint, `<baseline>@<K>` (None: not a baseline).
    style: its series' matplotlib style on the Pareto plot (color, marker, label).
    every_patch: keeps every patch whatever the budget ("full").
    learned_pooling: pools like uniform, but each K-token's window goes through the allocator's learned compressor
        (`ArrCocWindowCompressor`) instead of a mean; only a checkpoint trained with it has one.
    """

    name: str
    scores: Callable | None = None
    external: Callable | None = None
    fixed: bool = False
    baseline: str | None = None
    style: dict = field(default_factory=dict)
    every_patch: bool = False
    learned_pooling: bool = False

    @property
    def pools(self) -> bool:
        """Uniform pooling: no ranking at all (one K per batch, a pooling shape that must fit the grid)."""
        return self.scores is None and self.external is None

    @property
    def trainable(self) -> bool:
        """A selection a model can be trained with and carry as its own (`config.selection_method`)."""
        return self.external is None


def allocator_scores(decision, generator=None):
    """ARR-COC: the allocator's query-conditioned patch scores."""
    return decision.patch_scores


def saliency_scores(decision, generator=None):
    """The allocator's query-agnostic saliency (VisionZip-style hotspots)."""
    return decision.hotspot_scores


def random_scores(decision, generator=None):
    """Noise drawn on the CPU, so a seeded generator draws the same patches on every device."""
    shape, device = decision.patch_scores.shape, decision.patch_scores.device
    return torch.rand(shape, generator=generator, device="cpu").to(device)


def constant_scores(decision, generator=None):
    """"full" ranks every patch equally: each standardized score (the relevance tag) is 0 and the straight-through
    gate exactly 1, so its tokens carry no relevance."""
    return torch.zeros_like(decision.patch_scores)


@torch.no_grad()
def query_similarity_scores(model, patch_features, question_ids, question_mask) -> torch.Tensor:
    """[B, N] cosine similarity between each patch's LLM-space embedding and the mean question-token embedding
    (the training-free SparseVLM-style baseline).

    Every patch goes through the checkpoint's own "full" path (every patch kept in raster order, CLIP encoder,
    quality adapter at the largest tier, no relevance score), so the patch embeddings live where the question's
    token embeddings do. `question_ids` are the question's own tokens (no chat template, whose tokens are the same
    for every question and would blur the query); `question_mask` marks the real ones.
    """
    batch, num_patches = patch_features.shape[:2]
    # Constant scores: every patch is kept and each token's standardized score (its relevance tag) is 0. The
    # selection is named, so a checkpoint whose own selection is another (a trained baseline) takes this path too.
    plan = model.plan_allocation(input_ids=question_ids, attention_mask=question_mask, patch_features=patch_features,
                                 budget="full", selection="full",
                                 selection_scores=patch_features.new_zeros(batch, num_patches))
    patch_embeds = model.get_image_features(plan=plan).pooler_output
    text = model.get_input_embeddings()(question_ids)
    weights = question_mask.unsqueeze(-1).to(text.dtype)
    query = (text * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return F.cosine_similarity(patch_embeds.float(), query[:, None].float(), dim=-1)


QUERY_SIM = "query_sim"
SELECTIONS_TABLE = Registry("selection method")
# The order is the config's, the evaluation's method order and (for random@K) the order random draws are made in.
for _method in (
    SelectionMethod("learned", scores=allocator_scores),
    SelectionMethod("uniform", fixed=True, baseline="uniform_pool",
                    style=dict(color="tab:orange", marker="s", label="uniform pooling (DeepSeek-OCR-style)")),
    SelectionMethod("hotspot", scores=saliency_scores, fixed=True, baseline="saliency_topk",
                    style=dict(color="tab:green", marker="^", label="saliency top-K (VisionZip-style)")),
    SelectionMethod("random", scores=random_scores, fixed=True, baseline="random",
                    style=dict(color="tab:gray", marker="x", label="random K")),
    SelectionMethod("full", scores=constant_scores, every_patch=True),
    # After random: random@K's draws keep their order. A learned fixed-rate compressor (DeepSeek-OCR's convolutional
    # compressor, Qwen2-VL's patch merger): the fair uniform baseline, since a mean of SAM features loses the digit.
    SelectionMethod("compress", fixed=True, baseline="compressor", learned_pooling=True,
                    style=dict(color="tab:brown", marker="P", label="learned compressor (DeepSeek-OCR-style)")),
    SelectionMethod(QUERY_SIM, external=query_similarity_scores, baseline=QUERY_SIM,
                    style=dict(color="tab:purple", marker="D", label="query similarity (SparseVLM-style)")),
):
    SELECTIONS_TABLE.register(_method)

SELECTION_METHODS = SELECTIONS_TABLE.names(lambda m: m.trainable)  # learned, uniform, hotspot, random, full, compress
FIXED_SELECTIONS = SELECTIONS_TABLE.names(lambda m: m.fixed)
POOLING_SELECTIONS = SELECTIONS_TABLE.names(lambda m: m.pools)  # uniform, compress: no ranking, one K per batch
# Baseline name -> the selection it swaps into the same checkpoint; a model's own selection -> its baseline name.
BASELINE_SELECTIONS = SELECTIONS_TABLE.mapping(lambda m: m.baseline, lambda m: m.name, lambda m: m.baseline)
SELECTION_BASELINES = SELECTIONS_TABLE.mapping(lambda m: m.name, lambda m: m.baseline,
                                               lambda m: m.baseline and m.trainable)
BASELINES = NameView(lambda: tuple(BASELINE_SELECTIONS))
BASELINE_STYLES = SELECTIONS_TABLE.mapping(lambda m: m.baseline, lambda m: m.style, lambda m: m.baseline)


def selection_method(name: str) -> SelectionMethod:
    """The table's entry for a selection a model runs (external ones are planned on the learned path)."""
    if name not in SELECTION_METHODS:
        raise ValueError(f"Unknown selection {name!r}; expected one of {SELECTION_METHODS}.")
    return SELECTIONS_TABLE[name]


def check_selection_method(value):
    """The config's validator of `selection_method`: a name the table lets a model carry, read when the config is
    built, so a method registered after import is accepted."""
    if value not in SELECTION_METHODS:
        raise ValueError(f"selection_method must be one of {list(SELECTION_METHODS)}, got {value!r} (query "
                         "similarity is training-free and evaluation-only).")


__all__ = [
    "BASELINES",
    "BASELINE_SELECTIONS",
    "BASELINE_STYLES",
    "FIXED_SELECTIONS",
    "POOLING_SELECTIONS",
    "QUERY_SIM",
    "SELECTIONS_TABLE",
    "SELECTION_BASELINES",
    "SELECTION_METHODS",
    "SelectionMethod",
    "allocator_scores",
    "check_selection_method",
    "constant_scores",
    "query_similarity_scores",
    "random_scores",
    "saliency_scores",
    "selection_method",
]
