"""The allocator: decides, per image and question, how many patches to keep and which ones.

It reads SAM patch features and the question's token embeddings, and never imports the model.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .configuration_arrcoc import ArrCocConfig
from .layers_arrcoc import ArrCocMeanInitLinear, ArrCocZeroInitLinear
from .selection import selection_method


@dataclass
class AllocatorOutput:
    patch_scores: torch.Tensor  # [B, N]: hotspot + relevance, higher = keep
    hotspot_scores: torch.Tensor  # [B, N]: query-independent saliency
    relevance_scores: torch.Tensor  # [B, N]: question-to-patch relevance
    budget_logits: torch.Tensor  # [B, n_tiers]


@dataclass
class Selection:
    tokens: torch.Tensor  # [B, K_max, C] SAM-space features of the kept (or pooled) tokens
    position_weights: torch.Tensor  # [B, K_max, N]: each token's mix of grid positions (one-hot for top-K)
    token_mask: torch.Tensor  # [B, K_max] bool, False on padding
    kept_patch_mask: torch.Tensor  # [B, N] bool: patches whose own position is kept
    token_scores: torch.Tensor  # [B, K_max] each token's standardized allocator score (0 where pooled)

    @property
    def counts(self) -> torch.Tensor:
        return self.token_mask.sum(-1)


class ArrCocCrossAttention(nn.Module):
    """Patches attend over question tokens; the attended question context scores each patch."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(hidden_size)
        self.score = nn.Linear(hidden_size, 1)

    def forward(self, patches, question, question_mask):
        # A sample with no question tokens would make attention NaN; give it one masked-in zero token instead.
        # Branch-free (no data-dependent Python `if`), so torch.compile / torch.export trace it in one piece.
        empty = ~question_mask.any(-1)
        first = torch.arange(question_mask.shape[1], device=question_mask.device) == 0
        question_mask = question_mask | (empty[:, None] & first)
        question = question.masked_fill(empty[:, None, None], 0.0)
        context, _ = self.attention(patches, question, question, key_padding_mask=~question_mask, need_weights=False)
        contextual = self.norm(patches + context)
        return self.score(contextual * patches).squeeze(-1), contextual


class ArrCocHotspotDetector(nn.Module):
    """Query-independent saliency: where is there anything on the page at all."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, hidden_size), nn.GELU())
        self.score = nn.Linear(hidden_size, 1)

    def forward(self, patches):
        return self.score(self.mlp(patches)).squeeze(-1)


class ArrCocBudgetPredictor(nn.Module):
    """Tier logits from the question-conditioned page summary and the question's relevance profile: the share of
    the patch-score distribution each tier's top-K would keep (how many patches matter for this question: one cell,
    a row, every square of a colour). The profile enters through a zero-initialised layer, so a checkpoint saved
    before it predicts exactly as before until it trains.

    It reads its inputs detached: the budget's losses (calibration, efficiency) train this head alone and never move
    the page and question features it shares with the answer path. Undetached, phase 3's calibration loss reached SAM,
    the question embeddings and the relevance scores, and at one seed cost the reader its counting at every tier,
    full tokens included (docs/demo_model.md, "What phase 3 cost ARR-COC")."""

    def __init__(self, hidden_size: int, budgets: tuple):
        super().__init__()
        self.budgets = tuple(budgets)
        self.mlp = nn.Sequential(
            nn.LayerNorm(2 * hidden_size), nn.Linear(2 * hidden_size, hidden_size), nn.GELU(),
            nn.Linear(hidden_size, len(budgets)),
        )
        self.profile = ArrCocZeroInitLinear(len(budgets), len(budgets))

    def forward(self, contextual, question, question_mask, patch_scores=None):
        return self.head(*self.features(contextual, question, question_mask, patch_scores))

    def features(self, contextual, question, question_mask, patch_scores=None) -> tuple:
        """What the head reads, detached: ([B, 2H] the page's and the question's pooled summaries, [B, T] the
        relevance profile or None without scores). Small and fixed-size, so many rows' worth can be kept and the
        head refitted on them alone (training/calibration.py, `fit_budget_head`)."""
        contextual, question = contextual.detach(), question.detach()
        weights = question_mask.to(question.dtype).unsqueeze(-1)
        question_summary = (question * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        summary = torch.cat([contextual.mean(1), question_summary], dim=-1)
        return summary, None if patch_scores is None else relevance_profile(patch_scores, self.budgets)

    def head(self, summary, profile=None):
        """Tier logits [B, T] from `features`."""
        logits = self.mlp(summary)
        return logits if profile is None else logits + self.profile(profile.to(logits.dtype))


def relevance_profile(patch_scores: torch.Tensor, budgets) -> torch.Tensor:
    """[B, T]: the softmax mass of the patch scores that each tier's top-K keeps (K clamped to the patches). Detached:
    the budget predictor reads the scores, it does not move them."""
    probs = patch_scores.detach().float().softmax(-1).sort(-1, descending=True).values.cumsum(-1)
    index = torch.tensor([min(k, probs.shape[-1]) - 1 for k in budgets], device=probs.device)
    return probs[:, index]


class ArrCocCompressionHeads(nn.Module):
    """Keep the top-K patches in raster order and, with `fold_dropped` (off by default), fold each dropped patch
    into its most similar kept one.

    Each kept token's standardized score goes along (`Selection.token_scores`) for the quality adapter.
    Scores get gradients from the answer loss through it and through a straight-through gate: kept tokens are multiplied by
    `1 + s - s.detach()` with `s = sigmoid(score)`, which is exactly 1 in the forward pass (outputs are
    unchanged) while d(token)/d(score) = token * s * (1 - s) in the backward pass.

    The fold assignment is straight-through too: each dropped patch goes to its most similar kept patch (a hard
    one-hot, by `fold_key` cosine similarity) in the forward pass, while the backward pass takes the gradient of
    the soft assignment `softmax(similarity / fold_temperature)`, so `fold_key` learns from the answer loss.
    """

    # Temperature of the soft assignment whose gradient the hard fold takes (cosine similarities are in [-1, 1]).
    fold_temperature = 0.1

    def __init__(self, channels: int, hidden_size: int, fold_dropped: bool):
        super().__init__()
        self.fold_dropped = fold_dropped
        self.fold_key = nn.Linear(channels, hidden_size)
        # Zero-init: at the start a pretrained CLIP sees plain SAM features.
        self.fold_proj = ArrCocZeroInitLinear(channels, channels)

    def forward(self, features, scores, counts, static_tokens=None):
        kept_index, token_mask = top_k_raster(scores, counts, k_max=static_tokens)
        batch = torch.arange(features.shape[0], device=features.device)[:, None]
        tokens = features[batch, kept_index]
        if self.fold_dropped:
            tokens = tokens + self.fold_proj(self._fold(features, tokens, kept_index, token_mask))
        gate = torch.sigmoid(scores[batch, kept_index]).unsqueeze(-1)
        tokens = tokens * (1 + gate - gate.detach()) * token_mask.unsqueeze(-1)
        weights = F.one_hot(kept_index, features.shape[1]).to(features.dtype) * token_mask.unsqueeze(-1)
        token_scores = standardize(scores)[batch, kept_index] * token_mask
        return Selection(tokens, weights, token_mask, weights.sum(1) > 0, token_scores)

    def _fold(self, features, tokens, kept_index, token_mask):
        keys = F.normalize(self.fold_key(features), dim=-1)
        kept_keys = F.normalize(self.fold_key(tokens), dim=-1)
        raw = keys @ kept_keys.transpose(1, 2)  # [B, N, K] cosine similarities
        padding = ~token_mask[:, None, :]
        similarity = raw.masked_fill(padding, float("-inf"))
        hard = F.one_hot(similarity.argmax(-1), tokens.shape[1]).to(features.dtype)  # [B, N, K]
        if raw.requires_grad:
            # Straight-through: `soft - soft.detach()` is exactly 0 in the forward pass (the hard assignment's values
            # are unchanged, bit for bit) and carries the soft assignment's gradient to `fold_key` in the backward
            # pass. Padding gets the lowest finite value, not -inf: an all-padding row gives no NaN to propagate.
            soft = (raw / self.fold_temperature).masked_fill(padding, torch.finfo(raw.dtype).min).softmax(-1)
            assign = hard + (soft - soft.detach()).to(features.dtype)
        else:
            assign = hard
        # Padding points at a sentinel column past the grid: scattering it onto a real index would race with
        # that patch's own entry and could mark a kept patch as dropped.
        num_patches = features.shape[1]
        index = kept_index.masked_fill(~token_mask, num_patches)
        is_kept = assign.new_zeros(assign.shape[0], num_patches + 1).scatter(1, index, 1.0)[:, :num_patches]
        assign = assign * (1 - is_kept).unsqueeze(-1)
        folded = assign.transpose(1, 2) @ features
        return folded / assign.sum(1).clamp(min=1.0).unsqueeze(-1)


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """Per-sample z-scores over the patches, so a token's relevance reads the same whatever the batch."""
    return (scores - scores.mean(-1, keepdim=True)) / (scores.std(-1, keepdim=True) + 1e-6)


def top_k_raster(scores: torch.Tensor, counts: torch.Tensor, k_max: int | None = None):
    """Indices of each row's top-`counts[b]` scores in raster order, padded to the largest count. `k_max`: that
    largest count when the caller knows it on the host (a fixed tier): nothing is read back, so it compiles whole."""
    num_patches = scores.shape[1]
    k_max = int(counts.max()) if k_max is None else k_max
    order = scores.topk(k_max, dim=-1).indices
    valid = torch.arange(k_max, device=scores.device)[None] < counts[:, None]
    # Padding gets a sentinel past every real index, so an ascending sort puts it last.
    kept_index = order.masked_fill(~valid, num_patches).sort(-1).values
    token_mask = kept_index < num_patches
    return kept_index.clamp(max=num_patches - 1), token_mask


class ArrCocWindowCompressor(nn.Module):
    """A learned fixed-rate compressor (selection "compress"): each of a tier's K tokens is a linear map of its
    window's SAM features laid side by side (space-to-depth, the cells of uniform pooling's window), one map per tier,
    as Qwen2-VL's patch merger and DeepSeek-OCR's strided convolutions learn theirs. Initialised to the window's mean,
    so an untrained compressor is uniform pooling; training can keep what the mean loses (the asked cell's digit:
    docs/demo_model.md, "Uniform pooling")."""

    def __init__(self, config: ArrCocConfig):
        super().__init__()
        grid, channels = tuple(config.grid_size), config.vision_config.output_channels
        self.windows, merges = {}, {}
        for value in config.budgets:
            count = min(value, config.num_patches)
            if count == config.num_patches:  # every patch its own token: nothing to compress
                continue
            rows, cols = config.pool_shape(count)
            if grid[0] % rows or grid[1] % cols:
                raise ValueError(f"The learned compressor needs windows that tile the grid: {count} tokens pool a "
                                 f"{grid[0]}x{grid[1]} grid to {rows}x{cols}, which does not divide it.")
            self.windows[count] = (rows, cols, grid[0] // rows, grid[1] // cols)
            merges[str(count)] = ArrCocMeanInitLinear(grid[0] // rows * (grid[1] // cols), channels)
        self.merges = nn.ModuleDict(merges)

    def forward(self, features: torch.Tensor, count: int) -> torch.Tensor:
        """[B, N, C] raster patch features -> [B, count, C], tokens in raster order of their windows (as uniform
        pooling's)."""
        batch, patches, channels = features.shape
        if count >= patches:
            return features
        if count not in self.windows:
            raise ValueError(f"The learned compressor has maps for {sorted(self.windows)} tokens (the config's "
                             f"tiers), not {count}.")
        rows, cols, height, width = self.windows[count]
        windows = features.reshape(batch, rows, height, cols, width, channels).permute(0, 1, 3, 2, 4, 5)
        return self.merges[str(count)](windows.reshape(batch, rows * cols, height * width * channels))


class ArrCocAllocator(nn.Module):
    """Hotspot detector + question cross-attention -> patch scores; budget predictor -> tier logits."""

    def __init__(self, config: ArrCocConfig):
        super().__init__()
        hidden = config.allocator_hidden_size
        channels = config.vision_config.output_channels
        self.patch_proj = nn.Linear(channels, hidden)
        self.question_proj = nn.Linear(config.text_config.hidden_size, hidden)
        self.hotspot_detector = ArrCocHotspotDetector(hidden)
        self.cross_attention = ArrCocCrossAttention(hidden, config.allocator_num_heads)
        self.budget_predictor = ArrCocBudgetPredictor(hidden, tuple(config.budgets))
        self.compression_heads = ArrCocCompressionHeads(channels, hidden, config.fold_dropped)
        self.compressor = None
        self.grow_compressor(config)

    def grow_compressor(self, config: ArrCocConfig) -> None:
        """Build the learned compressor when `config`'s selection pools through one and this allocator has none, on
        the allocator's device and dtype: at construction, or when a base is loaded as that baseline (it then starts
        as uniform pooling). Only that baseline carries one: its parameters grow with the tiers."""
        if self.compressor is None and selection_method(config.selection_method).learned_pooling:
            weight = self.patch_proj.weight
            self.compressor = ArrCocWindowCompressor(config).to(device=weight.device, dtype=weight.dtype)

    def forward(self, patch_features, question_embeds, question_mask) -> AllocatorOutput:
        patches = self.patch_proj(patch_features)
        question = self.question_proj(question_embeds)
        hotspot = self.hotspot_detector(patches)
        relevance, contextual = self.cross_attention(patches, question, question_mask)
        scores = hotspot + relevance
        budget_logits = self.budget_predictor(contextual, question, question_mask, patch_scores=scores)
        return AllocatorOutput(scores, hotspot, relevance, budget_logits)


__all__ = [
    "AllocatorOutput",
    "ArrCocAllocator",
    "ArrCocBudgetPredictor",
    "ArrCocCompressionHeads",
    "ArrCocCrossAttention",
    "ArrCocHotspotDetector",
    "ArrCocWindowCompressor",
    "Selection",
    "relevance_profile",
    "standardize",
    "top_k_raster",
]
