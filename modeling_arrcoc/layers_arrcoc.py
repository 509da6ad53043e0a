"""Layers shared by the allocator and the quality adapter."""

from torch import nn


class ArrCocZeroInitLinear(nn.Linear):
    """A linear layer that starts at zero: its output is added to something that must start unchanged.
    Its own class, so the model's `_init_weights` keeps it at zero instead of drawing it like any Linear."""

    def reset_parameters(self):
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class ArrCocZeroInitEmbedding(nn.Embedding):
    """An embedding that starts at zero (a per-tier offset that must start as no offset)."""

    def reset_parameters(self):
        nn.init.zeros_(self.weight)


__all__ = ["ArrCocZeroInitEmbedding", "ArrCocZeroInitLinear"]
