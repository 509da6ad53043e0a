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
- `query_side_attentions`: the supervised heads' attention recomputed from each layer's input with the visual
  positions' input detached, so that the loss moves where the head looks (its queries, its key projection) but not
  the keys it is matched against (a strong loss on the model's own attention made layer 0 rewrite the visual
  positions and erase the digits). At layer 0 nothing on the vision side learns from it; at a later layer the
  text positions' input still depends on the visual tokens through the earlier layers, and that path stays open.
- `question_attention_loss`: the first hop of the same lookup, on the text side: from each answer-predicting
  position, one head is pulled toward the word the turn's question asks about (its colour), so that the position
  that must find the red cell carries "red" (the collator's `question_keys`). Base pretraining only, like the above.
- `visual_words_loss`: the reading teacher's words read back from the language model's hidden states at the visual
  positions after its first layers, so that a layer cannot erase what a later layer's lookup must match (the key
  colour) or read (the digit). Base pretraining only.
- `scale_attention_logits`: a language model with QK-norm (Qwen3 normalises every head's query and key) bounds each
  attention logit by sqrt(head_dim) x its norms' weights, about 8 at initialisation for 64-dim heads. Putting most of
  a head's mass on one token among 256 needs a logit margin of about ln(255) + 2, near that bound, so a lookup among
  all patches cannot become sharp while the norms' weights (trained like any weight, about the learning rate a
  step) stay near 1. Scaling both norms' weights raises the bound, as QKNorm (Henry et al., 2020) sets its logit
  scale from the sequence length; the model stays a plain checkpoint of its own class.
"""

from __future__ import annotations

import math
import random

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ..splice_arrcoc import position_ids as spliced_position_ids

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


def spliced_layout(input_ids, attention_mask, image_token_id, visual_mask, length: int):
    """Where each row's visual tokens sit in the spliced sequence of `length` (splice_arrcoc.splice's layout: the
    prompt left-padded, its `<image>` replaced by the row's K_i tokens): (left padding [B], prompt rank of each
    prompt token [B, L], first visual position [B], visual token count [B])."""
    keep = attention_mask.bool()
    rank = keep.long().cumsum(-1) - 1
    image_rank = (rank * (keep & (input_ids == image_token_id))).sum(-1)
    counts = visual_mask.sum(-1)
    offset = length - (keep.sum(-1) - 1 + counts)
    return offset, rank, offset + image_rank, counts


def query_side_attentions(language_model, hidden_states, layers, head, input_ids, attention_mask, image_token_id,
                          visual_mask) -> dict:
    """{layer: [B, 1, L, L]}: head `head`'s attention probabilities in each of `layers`, recomputed from the layer's
    input (`hidden_states[layer]`, the model's `output_hidden_states`) with the visual positions' input detached.
    Equal to the model's own attention in value; in gradient, the queries, the key projection and what feeds the
    text positions learn from a loss on it, and the visual positions' input to the layer does not. Llama-family
    attention (q/k projections, optional q/k norms, full rotary positions, no sliding window), as the presets'
    Qwen3."""
    length = hidden_states[0].shape[1]
    offset, _, first_visual, counts = spliced_layout(input_ids, attention_mask, image_token_id, visual_mask, length)
    position = torch.arange(length, device=hidden_states[0].device)
    valid = position[None] >= offset[:, None]  # [B, L]: not left padding
    visual = (position[None] >= first_visual[:, None]) & (position[None] < (first_visual + counts)[:, None])
    position_ids = spliced_position_ids(valid.long())
    allowed = valid[:, None, :] & torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()[None]
    cos, sin = language_model.rotary_emb(hidden_states[0], position_ids)  # the same positions at every layer
    result = {}
    for layer in layers:
        block = language_model.layers[layer]
        attention = block.self_attn
        if getattr(attention, "sliding_window", None):
            raise ValueError(f"query_side_attentions recomputes full causal attention; layer {layer} uses a sliding "
                             f"window of {attention.sliding_window}.")
        hidden = torch.where(visual[..., None], hidden_states[layer].detach(), hidden_states[layer])
        normed = block.input_layernorm(hidden)
        shape = (*normed.shape[:-1], -1, attention.head_dim)
        query = getattr(attention, "q_norm", torch.nn.Identity())(attention.q_proj(normed).view(shape))
        key = getattr(attention, "k_norm", torch.nn.Identity())(attention.k_proj(normed).view(shape))
        kv_head = head // (query.shape[2] // key.shape[2])
        query, key = query[:, :, head : head + 1].transpose(1, 2), key[:, :, kv_head : kv_head + 1].transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        scores = (query @ key.transpose(-1, -2)).float() * attention.scaling
        scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
        result[layer] = scores.softmax(-1)
    return result


def llm_attention_loss(attentions, layers, input_ids, attention_mask, labels, image_token_id, visual_mask,
                       token_sources, turn_targets, head: int = 0,
                       count_rows: torch.Tensor | None = None, count_head: int | None = None,
                       count_sink_weight: float = 1.0) -> torch.Tensor | None:
    """Cross-entropy of one head's attention (per supervised layer) from each answer-predicting position over the
    visual tokens, against that turn's answer patches: -log(attention mass on the answer's tokens).

    A count is different: attention with all its mass on n answer tokens averages them, and the average of n equal
    tokens does not depend on n. For rows in `count_rows` ([B] bool; the collator's `count_answers`) the target is
    instead uniform over the n answer tokens and the answer-predicting position itself, a sink whose share 1/(n+1)
    is the count; the loss is the KL divergence from that target (0 when attention matches it). `count_sink_weight`
    w weights the sink against each counted token (share w/(n+w); 1: uniform, `count_target_kl`). `count_head`
    (default `head`) is the head supervised for counts: one head holding both patterns gave up part of the cell lookup.

    attentions: per supervised layer, attention probabilities [B, H, L, L] over the spliced sequence (the language
        model's own, indexed by layer; or `query_side_attentions`' one head, with head 0).
    input_ids / attention_mask / labels: the prompt side (one `<image>` per row, left-padded), as the collator
        built them; the visual tokens were spliced in at the `<image>` (splice_arrcoc.splice's layout).
    visual_mask / token_sources: [B, K] which visual tokens are real and the patch each was taken from.
    turn_targets: [B, Q, N] each turn's answer coverage per patch (the collator's `turn_patch_targets`).
    Returns None when no turn has an answer among the visual tokens (nothing to supervise).
    """
    def answer_tokens(b, turn, layout):
        offset, rank, first_visual, counts = layout
        count = int(counts[b])
        on_answer = turn_targets[b, turn][token_sources[b, :count]] > 0
        return first_visual[b] + torch.nonzero(on_answer).flatten()

    return _turn_attention_loss(attentions, layers, input_ids, attention_mask, labels, image_token_id, visual_mask,
                                turn_targets.shape[1], answer_tokens, head, count_rows, count_head, count_sink_weight)


def question_attention_loss(attentions, layers, input_ids, attention_mask, labels, image_token_id, visual_mask,
                            turn_key_tokens, head: int = 0) -> torch.Tensor | None:
    """Cross-entropy of one head's attention (per supervised layer) from each answer-predicting position over the
    sequence, against the word that turn's question asks about: -log(attention mass on its tokens). It teaches the
    first hop of the lookup, bringing "red" to the position that must then find the red cell among the visual tokens
    (docs/demo_model.md: without it, the supervised head split its mass over every key-coloured cell).

    turn_key_tokens: [B, Q, L] the collator's per-turn key-word tokens on the prompt side (`question_keys`); the
    other arguments as `llm_attention_loss`'s. Returns None when no turn has a key word (nothing to supervise).
    """
    def key_tokens(b, turn, layout):
        offset, rank, first_visual, counts = layout
        keys = torch.nonzero(turn_key_tokens[b, turn]).flatten()
        # The image's K tokens replace its one placeholder, whose prompt rank is first_visual - offset.
        after_image = (rank[b, keys] > first_visual[b] - offset[b]).long()
        return offset[b] + rank[b, keys] + after_image * (counts[b] - 1)

    return _turn_attention_loss(attentions, layers, input_ids, attention_mask, labels, image_token_id, visual_mask,
                                turn_key_tokens.shape[1], key_tokens, head)


def count_target_kl(weights: torch.Tensor, sink_weight: float = 1.0) -> torch.Tensor:
    """KL(target || attention) for a count: `weights` is the attention on the n counted tokens, then on the sink (the
    answer-predicting position). The target gives each counted token 1 and the sink `sink_weight`, normalised, so the
    sink's share is w/(n+w). With w = 1 the shares of 8 and 9 squares (1/9, 1/10) lie 0.011 apart, and the shipped
    base answered 8 with 9 on 37 of 38 validation questions (docs/demo_model.md, "Count 8 is read as 9"); w near the
    largest counts spreads the top apart."""
    log_weights = torch.log(weights.clamp(min=1e-6))
    if sink_weight == 1.0:  # the uniform target's closed form: w = 1 trains bit for bit as before w existed
        return -log_weights.mean() - math.log(weights.numel())
    target = torch.ones_like(weights)
    target[-1] = sink_weight
    target = target / target.sum()
    return (target * (target.log() - log_weights)).sum()


def _turn_attention_loss(attentions, layers, input_ids, attention_mask, labels, image_token_id, visual_mask,
                         num_turns: int, targets, head: int, count_rows=None,
                         count_head: int | None = None, count_sink_weight: float = 1.0) -> torch.Tensor | None:
    """Mean over turns and layers of -log(head `head`'s attention mass, from the turn's answer-predicting position,
    on the spliced positions `targets(b, turn, layout)` gives), or for `count_rows` the KL divergence from the count
    target over those positions and the query itself (`count_target_kl`); turns without targets are skipped."""
    length = attentions[layers[0]].shape[-1]
    layout = spliced_layout(input_ids, attention_mask, image_token_id, visual_mask, length)
    offset, rank, _, counts = layout
    terms = []
    for b, positions in enumerate(answer_prediction_positions(labels)):
        for turn, position in enumerate(positions[:num_turns]):
            where = targets(b, turn, layout)
            if where.numel() == 0:
                continue
            query = int(offset[b] + rank[b, position] + counts[b] - 1)  # the position sits after the image
            counting = count_rows is not None and bool(count_rows[b])
            if counting:
                where = torch.cat([where, where.new_tensor([query])])
            supervised = count_head if counting and count_head is not None else head
            for layer in layers:
                weights = attentions[layer][b, supervised, query, where].float()
                if counting:
                    terms.append(count_target_kl(weights, count_sink_weight))
                else:
                    terms.append(-torch.log(weights.sum().clamp(min=1e-6)))
    return torch.stack(terms).mean() if terms else None


def visual_words_loss(hidden_states, layers, input_ids, attention_mask, image_token_id, visual_mask, token_targets,
                      word_embeddings, temperature: float = 10.0) -> torch.Tensor | None:
    """Cross-entropy of the visual words each visual token's hidden state still names at the input of each layer in
    `layers` (hidden_states[layer]), read through the visual embedding table it was made from (cosine to each
    word's row, times `temperature`; the table detached, so only the language model learns), against the reading
    teacher's words of its patch (uniform over them). At layer 0's input the tokens are the table's mixes; a layer that
    rewrites them (the reader stage's layer 0 erased the key colour: 0.98 decodable at its input, about 0.35 after
    it, docs/demo_model.md) is pulled back to keep them.

    token_targets: [B, K, M] word ids per visual token (losses.token_targets; -100: none). Returns None when no token
    has a word."""
    length = hidden_states[0].shape[1]
    _, _, first_visual, counts = spliced_layout(input_ids, attention_mask, image_token_id, visual_mask, length)
    rows = torch.nn.functional.normalize(word_embeddings.detach().float(), dim=-1)  # [V, D]
    width = visual_mask.shape[1]
    index = first_visual[:, None] + torch.arange(width, device=visual_mask.device)[None]  # [B, K]
    index = index.clamp(max=length - 1)
    valid = visual_mask[..., None] & (token_targets != -100)  # [B, K, M]
    if not valid.any():
        return None
    terms = []
    for layer in layers:
        hidden = hidden_states[layer].gather(1, index[..., None].expand(-1, -1, hidden_states[layer].shape[-1]))
        logits = temperature * torch.nn.functional.normalize(hidden.float(), dim=-1) @ rows.T  # [B, K, V]
        picked = logits.log_softmax(-1).gather(2, token_targets.clamp(min=0))
        terms.append(-(picked * valid).sum() / valid.sum())
    return torch.stack(terms).mean()


def scale_attention_logits(language_model, scale: float) -> int:
    """Multiply every attention logit of `language_model` by `scale`: each layer's query and key norm weights are
    multiplied by sqrt(scale) (in place; they keep training). Returns the number of layers changed. A model without
    per-head query and key norms (the logits' bound this lifts) is refused."""
    if scale <= 0:
        raise ValueError(f"llm_attention_scale must be positive, got {scale}.")
    layers = [module for module in language_model.modules() if hasattr(module, "q_norm") and hasattr(module, "k_norm")]
    if not layers:
        raise ValueError(f"llm_attention_scale scales the query and key norms of a QK-norm language model (Qwen3); "
                         f"{type(language_model).__name__} has none.")
    with torch.no_grad():
        for attention in layers:
            attention.q_norm.weight.mul_(scale**0.5)
            attention.k_norm.weight.mul_(scale**0.5)
    return len(layers)


__all__ = [
    "VIEWS",
    "answer_prediction_positions",
    "count_target_kl",
    "curriculum_tier_cap",
    "llm_attention_loss",
    "question_attention_loss",
    "query_side_attentions",
    "scale_attention_logits",
    "sparse_view_scores",
    "spliced_layout",
    "step_view",
    "visual_words_loss",
]
