"""How training rows become batches: per-sample tiers, tier-grouped batches, the curriculum order, and the extra
columns (row index, heuristic tier) the trainer reads.

Why group by tier: a batch pads every sample's visual tokens to the largest K in it, and the LLM and CLIP pay
for the padding. When each sample has its own tier (phase0's heuristic), random batches of 8 almost always hold
a large-tier sample, so most visual-token slots are padding; batches of one tier hold none (measured
forward+backward 1.4-2.9x faster: docs/design.md, "What things cost here"). The trade-off: a single-tier batch is less diverse (in heuristic mode, one
tier means one question-length class, so similar task families), so each step's gradient is more biased than a
random batch's. `TierGroupedBatchSampler` spreads every tier's batches evenly over the epoch, so any short
stretch of steps still sees every tier; gradient accumulation or data parallelism over several micro-batches
mixes tiers within one optimizer step.

With a curriculum (`head`: the dataset's first rows are its easy stretch, `curriculum_indices`), the head and the
rest are grouped separately and the head's batches come first: every batch still has one tier, and the easy
stretch stays first. Grouping can round the head up to at most one partial batch per tier (all easy rows).
"""

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


def heuristic_tier(question: str, num_tiers: int, short_words: int = 5) -> int:
    """Phase 0's fixed rule: a short question (at most `short_words` words) gets the smallest tier, any other
    question the largest. Crude on purpose: it only has to show whether variable compression helps at all."""
    return 0 if len(question.split()) <= short_words else num_tiers - 1


def question_tiers(questions: Sequence[str], num_tiers: int, short_words: int = 5) -> list[int]:
    return [heuristic_tier(question, num_tiers, short_words) for question in questions]


class TierGroupedBatchSampler(torch.utils.data.Sampler):
    """Batches whose samples share one tier, in an order that spreads each tier evenly over the epoch.

    Each epoch (seeded by `seed + epoch`, so resuming replays the same order) shuffles each tier's rows, cuts
    them into batches, and places the j-th of a tier's n batches at (j + u) / n with u uniform in [0, 1): a
    randomized proportional round-robin. Call `set_epoch` between epochs (the Trainer does).

    `head` > 0: rows [0, head) (a curriculum's easy stretch) are batched apart, the same way, and come first.
    """

    def __init__(self, tiers: Sequence[int], batch_size: int, seed: int = 0, drop_last: bool = False,
                 head: int = 0):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        if not 0 <= head <= len(tiers):
            raise ValueError(f"head must be in [0, {len(tiers)}], got {head}.")
        self.parts = [_group_rows(tiers[:head]), _group_rows(tiers[head:], offset=head)] if head else \
            [_group_rows(tiers)]
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        ordered = []
        for groups in self.parts:
            placed = []
            for rows in groups.values():
                batches = self._batches(rng.sample(rows, len(rows)))
                placed += [((j + rng.random()) / len(batches), batch) for j, batch in enumerate(batches)]
            placed.sort(key=lambda item: item[0])
            ordered += [batch for _, batch in placed]
        return iter(ordered)

    def __len__(self) -> int:
        rounding = math.floor if self.drop_last else math.ceil
        return sum(rounding(len(rows) / self.batch_size) for groups in self.parts for rows in groups.values())

    def _batches(self, rows: list[int]) -> list[list[int]]:
        batches = [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches


def _group_rows(tiers: Sequence[int], offset: int = 0) -> dict[int, list[int]]:
    groups = {}
    for row, tier in enumerate(tiers, start=offset):
        groups.setdefault(int(tier), []).append(row)
    return dict(sorted(groups.items()))


def random_batches(num_rows: int, batch_size: int, seed: int = 0) -> list[list[int]]:
    """Plain shuffled batches, the baseline `padding_share` compares against."""
    order = random.Random(seed).sample(range(num_rows), num_rows)
    return [order[i:i + batch_size] for i in range(0, num_rows, batch_size)]


def padding_share(tokens: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Padded visual-token slots / all slots, when each batch is padded to its largest per-sample K."""
    slots = sum(len(batch) * max(tokens[i] for i in batch) for batch in batches)
    used = sum(tokens[i] for batch in batches for i in batch)
    return (slots - used) / slots if slots else 0.0


def measure_padding_share(tiers: Sequence[int], budgets: Sequence[int], batch_size: int, seed: int = 0,
                          num_patches: int | None = None) -> dict[str, float]:
    """Padding share of tier-grouped vs random batching for per-sample `tiers` (indices into `budgets`)."""
    tokens = [min(budgets[t], num_patches or budgets[t]) for t in tiers]
    grouped = list(TierGroupedBatchSampler(tiers, batch_size, seed=seed))
    return {
        "grouped": padding_share(tokens, grouped),
        "random": padding_share(tokens, random_batches(len(tiers), batch_size, seed)),
    }


def curriculum_indices(tasks: Sequence[str], easy_tasks: Sequence[str], num_easy: int, seed: int = 0) -> list[int]:
    """Row order for an easy-to-full-mix curriculum: `num_easy` rows drawn from the `easy_tasks` families, then
    every row in random order. Read it sequentially (the trainer sets a sequential sampler)."""
    easy = [row for row, task in enumerate(tasks) if task in set(easy_tasks)]
    if not easy:
        raise ValueError(f"No rows of the curriculum's easy families {list(easy_tasks)} in the training set.")
    rng = random.Random(seed)
    head = [easy[rng.randrange(len(easy))] for _ in range(num_easy)]
    return head + rng.sample(range(len(tasks)), len(tasks))


def with_sample_index(dataset, column: str = "sample_index"):
    """The dataset with its row numbers as a column, so batches say which rows they hold (feature cache key)."""
    if column in dataset.column_names:
        return dataset
    return dataset.add_column(column, list(range(len(dataset))))


@dataclass
class IndexedCollator:
    """Wraps a row collator and adds what the trainer needs besides model inputs.

    `sample_index` [B]: the rows' `sample_index` column, when the dataset has one (training set with a feature
    cache). `budget_tier` [B]: each row's heuristic tier, when `num_tiers` is set.
    """

    collator: object
    num_tiers: int | None = None
    short_words: int = 5

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.collator(rows)
        if all("sample_index" in row for row in rows):
            batch["sample_index"] = torch.tensor([row["sample_index"] for row in rows])
        if self.num_tiers is not None:
            tiers = question_tiers([row["question"] for row in rows], self.num_tiers, self.short_words)
            batch["budget_tier"] = torch.tensor(tiers)
        return batch


__all__ = [
    "IndexedCollator",
    "TierGroupedBatchSampler",
    "curriculum_indices",
    "heuristic_tier",
    "measure_padding_share",
    "padding_share",
    "question_tiers",
    "random_batches",
    "with_sample_index",
]
