"""Layers shared by the allocator and the quality adapter, and the SAM attention ArrCoc runs its vision tower with."""

import torch
import torch.nn.functional as F
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
        rows, cols = relative_terms(self, query, rel_pos_h, rel_pos_w, q_size, k_size)
        terms = torch.cat([rows, cols], dim=-1).reshape(query.shape[0], query_height * query_width, -1)
        return (terms @ key_one_hot(key_height, key_width, terms).T).reshape(
            query.shape[0], query_height, query_width, key_height, key_width)


def relative_terms(attention, query, rel_pos_h, rel_pos_w, q_size, k_size):
    """The row and column terms of a SAM attention's bias, transformers' einsums over [B, qh * qw, C] queries:
    [B, qh, qw, kh] and [B, qh, qw, kw]."""
    (query_height, query_width), (key_height, key_width) = q_size, k_size
    grid = query.reshape(query.shape[0], query_height, query_width, query.shape[-1])
    rows = torch.einsum("bhwc,hkc->bhwk", grid, attention.get_rel_pos(query_height, key_height, rel_pos_h))
    cols = torch.einsum("bhwc,wkc->bhwk", grid, attention.get_rel_pos(query_width, key_width, rel_pos_w))
    return rows, cols


def key_one_hot(height, width, like) -> torch.Tensor:
    """[height * width, height + width]: each raster-ordered key's row and column as one-hot halves."""
    eye_rows = torch.eye(height, dtype=like.dtype, device=like.device)
    eye_cols = torch.eye(width, dtype=like.dtype, device=like.device)
    return torch.cat([eye_rows.repeat_interleave(width, dim=0), eye_cols.repeat(height, 1)], dim=1)


class ArrCocSamAttention(_OneHotRelativePositions, SamVisionAttention):
    """Transformers' eager SAM attention with the one-hot relative positions."""


class ArrCocSamSdpaAttention(_OneHotRelativePositions, SamVisionSdpaAttention):
    """Transformers' SDPA SAM attention. In inference on CPU (eager, no gradient) the bias is never written whole:
    `blockwise_biased_attention` sums it for a block of queries at a time, each block while it is still in cache,
    and runs the same SDPA on it. A global layer of the base preset's SAM otherwise writes and reads back a 4096 x
    4096 bias per head (805 MB), which cost more than the attention's arithmetic (bench/sam_attention.py). Every
    query row is computed as before, from the same bias values over all the keys, so the output is the same up to
    the kernel's rounding (on the base preset's SAM, bit for bit: bench/sam_attention.py reports the difference).
    Compiled, inference calls the same blocks as one operator. Training and other devices take the path above (the
    one-hot bias, or transformers' own)."""

    # False: inference too takes the one-hot bias (bench/sam_attention.py times both ways).
    blockwise_in_inference = True
    # Compiled inference calls the blocks as one opaque operator (`blockwise_attention_op`, no graph break) rather
    # than inductor's fused broadcast sum, slower on the base preset's SAM (bench/sam_attention.py); False: the sum.
    blockwise_when_compiled = True

    def forward(self, hidden_states: torch.Tensor, output_attentions=False):
        compiling = torch.compiler.is_compiling()
        if (not self.blockwise_in_inference or not self.use_rel_pos or output_attentions
                or hidden_states.device.type != "cpu" or torch.is_grad_enabled()
                or (compiling and not self.blockwise_when_compiled)):
            return super().forward(hidden_states, output_attentions)
        batch, height, width, _ = hidden_states.shape
        heads = self.num_attention_heads
        qkv = self.qkv(hidden_states).reshape(batch, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.reshape(3, batch * heads, height * width, -1).unbind(0)
        rows, cols = relative_terms(self, query, self.rel_pos_h, self.rel_pos_w, (height, width), (height, width))
        attend = blockwise_attention_op if compiling else blockwise_biased_attention
        output = attend(query, key, value, rows.flatten(1, 2), cols.flatten(1, 2))
        output = output.view(batch, heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
        return self.proj(output), None


# Bias entries summed per block (4 MiB in float32): small enough to be read back from cache by the attention.
BIAS_BLOCK_ELEMENTS = 1 << 20


def blockwise_biased_attention(query, key, value, rows, cols, block_elements: int = BIAS_BLOCK_ELEMENTS):
    """SDPA of [G, Q, D] queries over [G, K, D] keys and values (G: batch x heads) with the decomposed bias
    rows[g, q, kh] + cols[g, q, kw] on key (kh, kw) (keys raster-ordered, K = kh x kw), computed for blocks of
    groups and queries whose bias has at most `block_elements` entries. Each block's bias is transformers' broadcast
    sum, and each query row still attends to every key, so each row is what one SDPA over the whole bias gives (up
    to rounding where a block's size sends the kernel down another vector path)."""
    groups, queries, keys = query.shape[0], query.shape[1], key.shape[1]
    if queries * keys <= block_elements:
        group_step, query_step = max(1, block_elements // (queries * keys)), queries
    else:
        group_step, query_step = 1, max(1, block_elements // keys)
    output = torch.empty(groups, queries, value.shape[-1], dtype=query.dtype, device=query.device)
    # One bias buffer for every block, written in place: a fresh 4 MiB tensor per block can cost a page fault per
    # page when the allocator hands large blocks back to the system, as it did inside the compiled base preset's
    # graph (tier-64 prefill 4% slower). A last, smaller block uses its leading part, contiguous: when blocks span
    # several groups they hold every query.
    buffer = rows.new_empty(min(groups, group_step), min(queries, query_step), rows.shape[-1], cols.shape[-1])
    for g in range(0, groups, group_step):
        g_end = min(groups, g + group_step)
        for q in range(0, queries, query_step):
            q_end = min(queries, q + query_step)
            bias = buffer[: g_end - g, : q_end - q]
            torch.add(rows[g:g_end, q:q_end, :, None], cols[g:g_end, q:q_end, None, :], out=bias)
            output[g:g_end, q:q_end] = F.scaled_dot_product_attention(
                query[None, g:g_end, q:q_end], key[None, g:g_end], value[None, g:g_end],
                attn_mask=bias.flatten(-2)[None])[0]
    return output


@torch.library.custom_op("arrcoc::blockwise_biased_attention", mutates_args=())
def blockwise_attention_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: torch.Tensor,
                           cols: torch.Tensor) -> torch.Tensor:
    """`blockwise_biased_attention` as one opaque operator: a compiled graph calls the eager blocks whole (no graph
    break) instead of unrolling them."""
    return blockwise_biased_attention(query, key, value, rows, cols)


@blockwise_attention_op.register_fake
def _(query, key, value, rows, cols):
    return query.new_empty(query.shape[0], query.shape[1], value.shape[-1])


SAM_ATTENTION_CLASSES = {"eager": ArrCocSamAttention, "sdpa": ArrCocSamSdpaAttention}


def use_sam_attention(module: nn.Module, implementation: str | None = None,
                      one_hot_when_compiled: bool | None = None, blockwise_when_compiled: bool | None = None) -> None:
    """Every transformers SAM attention under `module` becomes ArrCoc's class for `implementation` ("eager" or
    "sdpa"; None: the kind it already is), in place: the classes share their weights. Other vision towers are left
    as they are. `one_hot_when_compiled` and `blockwise_when_compiled`, when given, are set on each of them (None:
    each keeps its own)."""
    for sam in module.modules():
        if isinstance(sam, SamVisionModel):
            for attention in sam.modules():
                if isinstance(attention, SamVisionAttention):
                    kind = implementation or ("sdpa" if isinstance(attention, SamVisionSdpaAttention) else "eager")
                    attention.__class__ = SAM_ATTENTION_CLASSES[kind]
                    if one_hot_when_compiled is not None:
                        attention.one_hot_when_compiled = one_hot_when_compiled
                    if blockwise_when_compiled is not None and kind == "sdpa":
                        attention.blockwise_when_compiled = blockwise_when_compiled


__all__ = ["ArrCocMeanInitLinear", "ArrCocSamAttention", "ArrCocSamSdpaAttention", "ArrCocZeroInitEmbedding",
           "ArrCocZeroInitLinear", "BIAS_BLOCK_ELEMENTS", "SAM_ATTENTION_CLASSES", "blockwise_attention_op",
           "blockwise_biased_attention",
           "key_one_hot", "relative_terms", "use_sam_attention"]
