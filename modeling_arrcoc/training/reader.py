"""Teaching a reader: the views a method-neutral base trains on and the language model's attention supervision.

A base that every compared method fine-tunes must read the kinds of visual tokens each method feeds it (every patch;
a sparse subset at its grid positions; uniformly pooled cells) and must read them without any method's help (no
relevance tag). Learning to find one token among many is a sparse lookup whose plateau grows with the number of
distractors, so the base's reading stage offers denser supervision (docs/demo_model.md has the curves):

- views (`training_views`): one view per optimizer step, drawn from (seed, step) like the multi-budget tier:
  "full" (every patch), "sparse" (the answer patches of the chat's questions plus random other patches, K of them at
  the step's tier, at their own grid positions: the distractor curriculum) and "pooled" (uniform pooling to K);
  `distractor_curriculum_steps` grows the largest tier a step may draw from the smallest to full over that many steps.
- `llm_attention_loss`: at each position that predicts an answer's first token, one head per supervised layer is
  pulled toward that turn's answer patches (cross-entropy of its attention over the visual tokens against the
  answer region). A base-pretraining loss only: no compared method's phases use it, and it reads the answer boxes,
  which only the reader's own training sees (the allocator never sees answer tokens).
"""

from __future__ import annotations

import random

import torch

VIEWS = ("full", "sparse", "pooled")


def step_view(seed: int, step: int, weights: dict) -> str:
    """The view of an optimizer step: a pure function of (seed, step), so processes and micro-batches agree and a
    resumed run replays it (a stream apart from the tier draw's)."""
    unknown = set(weights) - set(VIEWS)
    if unknown or not weights:
        raise ValueError(f"training_views must map some of {VIEWS} to weights, got {weights}.")
    names = [name for name in VIEWS if weights.get(name)]
    draw = random.Random(seed * 2_000_003 + step + 7)
    return draw.choices(names, weights=[weights[name] for name in names])[0]


def curriculum_tier_cap(step: int, curriculum_steps: int, num_tiers: int) -> int:
    """The largest tier index a step may draw under the distractor curriculum: the smallest tier first, every tier
    (full included) from `curriculum_steps` on; 0 steps = no curriculum."""
    if not curriculum_steps:
        return num_tiers - 1
    return min(num_tiers - 1, int(num_tiers * step / curriculum_steps))


def sparse_view_scores(patch_targets: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Ranking scores of the "sparse" view: every answer patch (target > 0) above every other, the others in random
    order, so the top-K keeps the answers plus K - |answers| random distractors (all answers when K allows)."""
    noise = torch.rand(patch_targets.shape, generator=generator).to(patch_targets.device)
    return noise + 2.0 * (patch_targets > 0).to(noise.dtype)


def answer_prediction_positions(labels: torch.Tensor) -> list[list[int]]:
    """Per row, in order, the positions (of `labels`' sequence) whose next token starts an answer."""
    supervised = labels != -100
    starts = supervised[:, 1:] & ~supervised[:, :-1]
    return [torch.nonzero(row).flatten().tolist() for row in starts]


def llm_attention_loss(attentions, layers, input_ids, attention_mask, labels, image_token_id, visual_mask,
                       token_sources, turn_targets, head: int = 0) -> torch.Tensor | None:
    """Cross-entropy of one head's attention (per supervised layer) from each answer-predicting position over the
    visual tokens, against that turn's answer patches: -log(attention mass on the answer's tokens).

    attentions: the language model's per-layer attention probabilities [B, H, L, L] over the spliced sequence.
    input_ids / attention_mask / labels: the prompt side (one `<image>` per row, left-padded), as the collator
        built them; the visual tokens were spliced in at the `<image>` (splice_arrcoc.splice's layout).
    visual_mask / token_sources: [B, K] which visual tokens are real and the patch each was taken from.
    turn_targets: [B, Q, N] each turn's answer coverage per patch (the collator's `turn_patch_targets`).
    Returns None when no turn has an answer among the visual tokens (nothing to supervise).
    """
    length = attentions[0].shape[-1]
    keep = attention_mask.bool()
    rank = keep.long().cumsum(-1) - 1
    image_rank = (rank * (keep & (input_ids == image_token_id))).sum(-1)
    counts = visual_mask.sum(-1)
    offset = length - (keep.sum(-1) - 1 + counts)  # each spliced row's left padding
    terms = []
    for b, positions in enumerate(answer_prediction_positions(labels)):
        count = int(counts[b])
        visual_at = int(offset[b] + image_rank[b])
        for turn, position in enumerate(positions[: turn_targets.shape[1]]):
            on_answer = turn_targets[b, turn][token_sources[b, :count]] > 0
            if not on_answer.any():
                continue
            query = int(offset[b] + rank[b, position] + count - 1)  # the position sits after the image
            for layer in layers:
                weights = attentions[layer][b, head, query, visual_at : visual_at + count]
                terms.append(-torch.log(weights[on_answer].sum().float().clamp(min=1e-6)))
    return torch.stack(terms).mean() if terms else None


__all__ = [
    "VIEWS",
    "answer_prediction_positions",
    "curriculum_tier_cap",
    "llm_attention_loss",
    "sparse_view_scores",
    "step_view",
]
