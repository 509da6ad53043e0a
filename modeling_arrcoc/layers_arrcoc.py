"""Layers shared by the allocator and the quality adapter."""

import torch
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


class ArrCocMeanInitLinear(nn.Linear):
    """A bias-free map of `window` C-channel features laid side by side to C channels that starts as their mean (the
    learned compressor's per-tier map: it starts as uniform pooling). Its own class, for `_init_weights`."""

    def __init__(self, window: int, channels: int):
        super().__init__(window * channels, channels, bias=False)

    def mean_weights(self) -> torch.Tensor:
        channels = self.out_features
        eye = torch.eye(channels, dtype=self.weight.dtype, device=self.weight.device)
        return eye.repeat(1, self.in_features // channels) / (self.in_features // channels)

    def reset_parameters(self):
        with torch.no_grad():
            self.weight.copy_(self.mean_weights())


__all__ = ["ArrCocMeanInitLinear", "ArrCocZeroInitEmbedding", "ArrCocZeroInitLinear"]
