"""Budget calibration targets (the smallest tier whose answer loss is within a tolerance of the best) and the
multi-budget tier of a step.
"""

import random
from contextlib import contextmanager

import torch
from torch.nn import functional as F

from ..modeling_arrcoc import answer_window


def per_sample_answer_loss(model, inputs: dict, plan=None, budget="auto") -> torch.Tensor:
    """Mean answer cross-entropy per sample [B] following `plan` (or at `budget`). Rows without answer tokens
    get 0."""
    window = answer_window(inputs["labels"])
    out = model(**inputs, plan=plan, budget=budget, logits_to_keep=window)
    targets = inputs["labels"][:, -window:][:, 1:]
    token_losses = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none",
                                   ignore_index=-100).view(targets.shape)
    counts = (targets != -100).sum(-1)
    return token_losses.sum(-1) / counts.clamp(min=1)


def smallest_sufficient_tier(losses: torch.Tensor, tolerance: float, max_loss: float | None = None) -> torch.Tensor:
    """[B, T] losses per tier -> [B] index of the smallest tier within `tolerance` of the sample's best; with
    `max_loss`, rows whose best loss exceeds it (no tier answers) get tier 0."""
    best = losses.min(-1, keepdim=True).values
    sufficient = losses <= best + tolerance
    if max_loss is not None:
        sufficient[:, 0] |= best.squeeze(-1) > max_loss
    return sufficient.int().argmax(-1)  # argmax returns the first (smallest) sufficient tier


@torch.no_grad()
def calibration_targets(model, inputs: dict, tolerance: float, max_loss: float | None = None) -> torch.Tensor:
    """The oracle-minimal tier of each sample: every tier is run, SAM only once."""
    inputs = dict(inputs)
    pixel_values, patch_features = inputs.pop("pixel_values", None), inputs.pop("patch_features", None)
    with _eval_mode(model):
        # One allocation plan (SAM and the allocator once), replanned at each tier.
        plan = model.plan_allocation(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                     labels=inputs["labels"], pixel_values=pixel_values, patch_features=patch_features)
        losses = [per_sample_answer_loss(model, inputs, plan=model.model.replan(plan, value))
                  for value in model.config.budgets]
    return smallest_sufficient_tier(torch.stack(losses, dim=-1), tolerance, max_loss)


@contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def step_tier(seed: int, step: int, num_tiers: int, weights: list[float] | None = None) -> int:
    """The multi-budget tier of an optimizer step: a pure function of (seed, step), so every process and
    micro-batch of the step agree and a resumed run replays it."""
    draw = random.Random(seed * 1_000_003 + step)
    if weights is None:
        return draw.randrange(num_tiers)
    if len(weights) != num_tiers:
        raise ValueError(f"train_tier_weights has {len(weights)} entries for {num_tiers} tiers.")
    return draw.choices(range(num_tiers), weights=weights)[0]


__all__ = [
    "calibration_targets",
    "per_sample_answer_loss",
    "smallest_sufficient_tier",
    "step_tier",
]
