"""Layers shared by the allocator and the quality adapter, and the SAM attention ArrCoc runs its vision tower with."""

import torch
from torch import nn
from transformers.models.sam.modeling_sam import SamVisionAttention, SamVisionModel, SamVisionSdpaAttention


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


class _OneHotRelativePositions:
    """SAM's decomposed relative positions (MViTv2), the same values built another way. Transformers adds the
    per-query row term [.., kh, 1] to the column term [.., 1, kw], a broadcast sum that writes a query x key bias
    per head and runs at memory speed: on CPU it cost more than the attention it biases (0.31 s of each 0.59 s
    global layer of the base preset's SAM). Here [row terms | column terms] multiply the keys' one-hot rows and
    columns in one matmul: each entry is still exactly row + column (the other products are zeros), and GEMM
    kernels write it faster than the eager broadcast (SAM alone, bench/sam_attention.py). Under torch.compile and
    off the CPU the broadcast sum stays (see `one_hot_when_compiled`). Weights, names and outputs are transformers'."""

    # Compiled, transformers' broadcast sum is fused into one pass that writes the bias, faster than the matmul,
    # which stays an external kernel (bench/sam_attention.py times both ways compiled); True takes the matmul there too.
    one_hot_when_compiled = False

    def get_decomposed_rel_pos(self, query, rel_pos_h, rel_pos_w, q_size, k_size):
        # On CPU only: that is where it was measured faster, and a GPU's float32 matmul may run in TF32, which
        # would round the row and column terms (the broadcast sum adds them exactly).
        if query.device.type != "cpu" or (torch.compiler.is_compiling() and not self.one_hot_when_compiled):
            return super().get_decomposed_rel_pos(query, rel_pos_h, rel_pos_w, q_size, k_size)
        (query_height, query_width), (key_height, key_width) = q_size, k_size
        batch_size, _, dim = query.shape
        grid = query.reshape(batch_size, query_height, query_width, dim)
        rows = torch.einsum("bhwc,hkc->bhwk", grid, self.get_rel_pos(query_height, key_height, rel_pos_h))
        cols = torch.einsum("bhwc,wkc->bhwk", grid, self.get_rel_pos(query_width, key_width, rel_pos_w))
        terms = torch.cat([rows, cols], dim=-1).reshape(batch_size, query_height * query_width, -1)
        return (terms @ key_one_hot(key_height, key_width, terms).T).reshape(
            batch_size, query_height, query_width, key_height, key_width)


def key_one_hot(height, width, like) -> torch.Tensor:
    """[height * width, height + width]: each raster-ordered key's row and column as one-hot halves."""
    eye_rows = torch.eye(height, dtype=like.dtype, device=like.device)
    eye_cols = torch.eye(width, dtype=like.dtype, device=like.device)
    return torch.cat([eye_rows.repeat_interleave(width, dim=0), eye_cols.repeat(height, 1)], dim=1)


class ArrCocSamAttention(_OneHotRelativePositions, SamVisionAttention):
    """Transformers' eager SAM attention with the one-hot relative positions."""


class ArrCocSamSdpaAttention(_OneHotRelativePositions, SamVisionSdpaAttention):
    """Transformers' SDPA SAM attention with the one-hot relative positions."""


SAM_ATTENTION_CLASSES = {"eager": ArrCocSamAttention, "sdpa": ArrCocSamSdpaAttention}


def use_sam_attention(module: nn.Module, implementation: str | None = None,
                      one_hot_when_compiled: bool | None = None) -> None:
    """Every transformers SAM attention under `module` becomes ArrCoc's class for `implementation` ("eager" or
    "sdpa"; None: the kind it already is), in place: the classes share their weights. Other vision towers are left
    as they are. `one_hot_when_compiled`, when given, is set on each of them (None: each keeps its own)."""
    for sam in module.modules():
        if isinstance(sam, SamVisionModel):
            for attention in sam.modules():
                if isinstance(attention, SamVisionAttention):
                    kind = implementation or ("sdpa" if isinstance(attention, SamVisionSdpaAttention) else "eager")
                    attention.__class__ = SAM_ATTENTION_CLASSES[kind]
                    if one_hot_when_compiled is not None:
                        attention.one_hot_when_compiled = one_hot_when_compiled


__all__ = ["ArrCocMeanInitLinear", "ArrCocSamAttention", "ArrCocSamSdpaAttention", "ArrCocZeroInitEmbedding",
           "ArrCocZeroInitLinear", "SAM_ATTENTION_CLASSES", "key_one_hot", "use_sam_attention"]
