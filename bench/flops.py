"""FLOP model of one query, from the configs alone: what the ideal speed-up of a smaller tier is.

Counting rules (forward pass, batch of B samples, FLOPs = 2 x multiply-adds, as torch's FlopCounterMode counts):
- linear(T, d_in, d_out) = 2 T d_in d_out; attention over Tq queries and Tk keys of total width W (all heads)
  = 4 Tq Tk W (Q K^T and A V). Norms, softmax, activations, rotary, gathers and top-k are left out: they are
  O(T d) with a small constant, below 1% of any stage here.
- Shapes are what the implementation computes, padding included: a batch is left-padded to its longest prompt,
  so the LLM runs B x L_max positions; the allocator reads the whole padded question width.
- SAM: patch embedding, per layer QKV + output projection + MLP + attention (windowed layers attend inside
  window x window tiles of the grid padded to a multiple of the window; global layers over all N patches) +
  decomposed relative positions (each query against the rows and columns of its window), the neck (1x1 conv,
  3x3 conv). Independent of the budget K. In inference the implementation sums each relative-position bias by
  blocks (layers_arrcoc), which adds no multiplications; in training it builds the bias by a matmul with the keys'
  one-hot rows and columns, whose multiplications by zero no stage here counts.
- Allocator (N patches, Q question tokens): patch and question projections, hotspot MLP, question-to-patch
  cross-attention (O(N Q)), budget predictor. Independent of K. Its compression heads (counted as the "select"
  stage) keep the top K; with `fold_dropped` (off by default) they also fold every dropped patch into its most
  similar kept one: O(N K).
- CLIP encoder on K tokens: input projection, position embeddings gathered by a dense one-hot product (O(K N),
  as implemented), per layer O(K) linear terms and O(K^2) attention.
- Quality adapter on K tokens: cross-attention to P prototypes (the prototype keys/values are projected per
  sample, as nn.MultiheadAttention does after expanding them), MLP, visual head (V visual words), VET mix.
- LLM prefill over L = K + text length: per layer O(L) projections and MLP, O(L^2) attention counted as the full
  square (SDPA with an explicit padding mask computes it; a causal kernel would do half); the LM head over all
  L positions, because `forward` has no `logits_to_keep`, so generate's prefill computes logits everywhere.
- Decoding: G new tokens = the prefill (which yields the first) + G - 1 steps of one position attending to the
  L + j cached ones, each with the LM head on one position.
The processor (image decode, resize, tokenization) does no FLOPs that scale with K; it is timed, not modelled.
"""

import math

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

STAGES = ("sam", "allocator", "select", "clip", "adapter", "prefill", "decode")


def linear(tokens, d_in, d_out) -> int:
    return 2 * tokens * d_in * d_out


def attention(queries, keys, width) -> int:
    return 4 * queries * keys * width


def grid_of(vision_config) -> int:
    return vision_config.image_size // vision_config.patch_size


def sam_flops(vision_config) -> int:
    """One image through the SAM ViT and its neck."""
    vc = vision_config
    grid, width, channels = grid_of(vc), vc.hidden_size, vc.output_channels
    patches, mlp = grid * grid, vc.mlp_dim or int(vc.hidden_size * vc.mlp_ratio)
    total = linear(patches, vc.num_channels * vc.patch_size**2, width)
    for layer in range(vc.num_hidden_layers):
        total += linear(patches, width, 3 * width) + linear(patches, width, width)
        total += linear(patches, width, mlp) + linear(patches, mlp, width)
        total += _sam_attention(grid, width, vc.window_size, layer in vc.global_attn_indexes, vc.use_rel_pos)
    return total + linear(patches, width, channels) + linear(patches, 9 * channels, channels)


def _sam_attention(grid, width, window, is_global, rel_pos) -> int:
    if is_global or window == 0:
        tiles, side = 1, grid
    else:
        padded = math.ceil(grid / window) * window
        tiles, side = (padded // window) ** 2, window
    tokens = side * side
    relative = 2 * tokens * (2 * side) * width if rel_pos else 0  # q against side rows + side columns
    return tiles * (attention(tokens, tokens, width) + relative)


def allocator_flops(config, question_tokens) -> int:
    """The scorer (hotspot + cross-attention + budget predictor) for one image and its question."""
    hidden, channels = config.allocator_hidden_size, config.vision_config.output_channels
    patches, text = config.num_patches, config.text_config.hidden_size
    total = linear(patches, channels, hidden) + linear(question_tokens, text, hidden)
    total += linear(patches, hidden, hidden) + linear(patches, hidden, 1)  # hotspot MLP and score
    total += 2 * linear(patches, hidden, hidden) + 2 * linear(question_tokens, hidden, hidden)  # q, out; k, v
    total += attention(patches, question_tokens, hidden) + linear(patches, hidden, 1)
    return total + linear(1, 2 * hidden, hidden) + linear(1, hidden, len(config.budgets))


def select_flops(config, tokens) -> int:
    """Compression heads: top-K (no FLOPs counted) and folding the N - K dropped patches into the K kept."""
    if not config.fold_dropped:
        return 0
    hidden, channels, patches = config.allocator_hidden_size, config.vision_config.output_channels, config.num_patches
    keys = linear(patches, channels, hidden) + linear(tokens, channels, hidden)
    similarity = 2 * patches * tokens * hidden
    folded = 2 * tokens * patches * channels  # assign^T @ features, a dense [K, N] x [N, C] product
    return keys + similarity + folded + linear(tokens, channels, channels)


def clip_flops(config, tokens) -> int:
    clip, patches = config.clip_config, config.num_patches
    width, inner = clip.hidden_size, clip.intermediate_size
    total = linear(tokens, config.vision_config.output_channels, width) + 2 * tokens * patches * width
    per_layer = 4 * linear(tokens, width, width) + attention(tokens, tokens, width)
    per_layer += linear(tokens, width, inner) + linear(tokens, inner, width)
    return total + clip.num_hidden_layers * per_layer


def adapter_flops(config, tokens) -> int:
    width, prototypes = config.clip_config.hidden_size, config.num_vet_prototypes
    vocab, text = config.visual_vocab_size, config.text_config.hidden_size
    per_layer = 2 * linear(tokens, width, width) + 2 * linear(prototypes, width, width)
    per_layer += attention(tokens, prototypes, width) + 2 * linear(tokens, width, 4 * width)
    total = config.adapter_num_layers * per_layer
    return total + linear(tokens, width, vocab) + linear(tokens, vocab, text) + linear(tokens, 1, text)


def llm_flops(text_config, queries, keys) -> int:
    """The decoder stack for `queries` new positions attending to `keys` positions (cache included)."""
    tc = text_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    q_width, kv_width = tc.num_attention_heads * head_dim, tc.num_key_value_heads * head_dim
    per_layer = linear(queries, tc.hidden_size, q_width) + 2 * linear(queries, tc.hidden_size, kv_width)
    per_layer += linear(queries, q_width, tc.hidden_size) + attention(queries, keys, q_width)
    per_layer += 3 * linear(queries, tc.hidden_size, tc.intermediate_size)
    return tc.num_hidden_layers * per_layer


def lm_head_flops(text_config, positions) -> int:
    return linear(positions, text_config.hidden_size, text_config.vocab_size)


def visual_tokens(config, tier) -> int:
    """Tokens a tier really keeps: a tier above the number of patches keeps every patch."""
    return config.num_patches if tier == "full" else min(int(tier), config.num_patches)


def query_flops(config, tier, text_width: int, new_tokens: int, batch: int = 1) -> dict:
    """{stage: FLOPs} of generating `new_tokens` for a batch at one forced tier ("full" = every patch).

    text_width: the padded prompt width (input_ids.shape[1], the <image> placeholder included)."""
    tokens = visual_tokens(config, tier)
    length = text_width - 1 + tokens  # the <image> placeholder becomes K embeddings
    tc = config.text_config
    decode = sum(llm_flops(tc, 1, length + step) + lm_head_flops(tc, 1) for step in range(1, new_tokens))
    per_sample = {
        "sam": sam_flops(config.vision_config),
        "allocator": allocator_flops(config, text_width),
        "select": select_flops(config, tokens),
        "clip": clip_flops(config, tokens),
        "adapter": adapter_flops(config, tokens),
        # generate passes logits_to_keep=1 to the prefill: the LM head runs on the last position only.
        "prefill": llm_flops(tc, length, length) + lm_head_flops(tc, 1),
        "decode": decode,
    }
    return {stage: batch * value for stage, value in per_sample.items()}


def training_lm_head_flops(text_config, positions, label_positions) -> dict:
    """LM-head forward FLOPs over every position vs only the positions that predict a label."""
    return {"all": lm_head_flops(text_config, positions), "labels_only": lm_head_flops(text_config, label_positions)}


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, taught the CPU flash-attention kernel that SDPA dispatches to here (it only
    knows the CUDA ones, and would count CPU attention as zero). Used to check this model against the code."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    return FlopCounterMode(display=False, custom_mapping=mapping)


def counted_flops(fn) -> tuple:
    """(fn's result, FLOPs torch counted while it ran)."""
    counter = flop_counter()
    with counter:
        result = fn()
    return result, counter.get_total_flops()


__all__ = [
    "STAGES",
    "counted_flops",
    "flop_counter",
    "adapter_flops",
    "allocator_flops",
    "attention",
    "clip_flops",
    "linear",
    "llm_flops",
    "lm_head_flops",
    "query_flops",
    "sam_flops",
    "select_flops",
    "training_lm_head_flops",
    "visual_tokens",
]
