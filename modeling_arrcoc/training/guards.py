"""Cached frozen-SAM features and the non-finite-step guard.
"""

from dataclasses import dataclass

import torch
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

logger = logging.get_logger(__name__)


class SamFeatureCache:
    """Frozen-SAM patch features keyed by training-row index, computed the first time a row is seen and kept in
    memory (rows x patches x channels x bytes: demo 256 x 128 x 4 B = 128 KiB a row). Only valid while SAM is
    frozen; the trainer refuses to build one otherwise."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.features = {}
        self.hits = 0
        self.misses = 0

    @torch.no_grad()
    def lookup(self, model, pixel_values: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
        rows = sample_index.tolist()
        missing = [i for i, row in enumerate(rows) if row not in self.features]
        if missing:
            computed = model.model.get_patch_features(pixel_values[missing]).to(self.dtype)
            self.features.update({rows[i]: feature for i, feature in zip(missing, computed)})
        self.misses += len(missing)
        self.hits += len(rows) - len(missing)
        return torch.stack([self.features[row] for row in rows]).to(pixel_values.dtype)


class NonFiniteLossError(RuntimeError):
    """Raised after `max_nonfinite_steps` consecutive optimizer steps with a non-finite loss or gradient."""


@dataclass
class NonFiniteGuard:
    limit: int
    total: int = 0
    consecutive: int = 0

    def good(self):
        self.consecutive = 0

    def bad(self, step: int, output_dir: str):
        self.total += 1
        self.consecutive += 1
        logger.warning(f"Step {step}: non-finite loss or gradient; optimizer update skipped "
                       f"({self.consecutive} in a row, limit {self.limit}).")
        if self.consecutive >= self.limit:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive optimizer steps (up to step {step}) had a non-finite loss or "
                f"gradient, so training stopped. The last checkpoint ({get_last_checkpoint(output_dir)}) is intact: "
                "lower the learning rate or check the data, then resume_from_checkpoint."
            )


__all__ = [
    "NonFiniteGuard",
    "NonFiniteLossError",
    "SamFeatureCache",
]
