"""The quality adapter: turns a variable number of CLIP tokens into LLM-space embeddings (Ovis VET mechanism)."""

import torch
from torch import nn

from .configuration_arrcoc import ArrCocConfig
from .layers_arrcoc import ArrCocZeroInitEmbedding, ArrCocZeroInitLinear


class ArrCocBudgetAwareNorm(nn.Module):
    """LayerNorm whose scale and shift depend on the tier, since 64 tokens carry differently pooled content
    than 400. Zero-initialised tier embeddings make it a plain LayerNorm at the start."""

    def __init__(self, hidden_size: int, num_tiers: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.tier_scale = ArrCocZeroInitEmbedding(num_tiers, hidden_size)
        self.tier_shift = ArrCocZeroInitEmbedding(num_tiers, hidden_size)

    def forward(self, hidden_states, tier_index):
        scale = self.tier_scale(tier_index).unsqueeze(1)
        shift = self.tier_shift(tier_index).unsqueeze(1)
        return self.norm(hidden_states) * (1 + scale) + shift


class ArrCocPrototypeLayer(nn.Module):
    """Visual tokens attend to learned prototypes, a shared codebook of what page content looks like."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.mlp_norm = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, 4 * hidden_size), nn.GELU(), nn.Linear(4 * hidden_size, hidden_size)
        )

    def forward(self, hidden_states, prototypes):
        prototypes = prototypes.unsqueeze(0).expand(hidden_states.shape[0], -1, -1)
        attended, _ = self.attention(self.norm(hidden_states), prototypes, prototypes, need_weights=False)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))


class ArrCocVisualEmbeddingTable(nn.Embedding):
    """Ovis VET: integer visual tokens look rows up; a distribution over the visual vocabulary mixes them."""

    def forward(self, visual_tokens: torch.Tensor) -> torch.Tensor:
        if not visual_tokens.is_floating_point():
            return super().forward(visual_tokens)
        return visual_tokens.to(self.weight.dtype) @ self.weight


class ArrCocQualityAdapter(nn.Module):
    def __init__(self, config: ArrCocConfig):
        super().__init__()
        hidden = config.clip_config.hidden_size
        self.budget_norm = ArrCocBudgetAwareNorm(hidden, len(config.budgets))
        self.prototypes = nn.Parameter(torch.randn(config.num_vet_prototypes, hidden) * 0.02)
        self.layers = nn.ModuleList(
            [ArrCocPrototypeLayer(hidden, config.adapter_num_heads) for _ in range(config.adapter_num_layers)]
        )
        # Linear + LayerNorm over the visual vocabulary, as Ovis' visual head, so its weights can be loaded.
        self.visual_head = nn.Linear(hidden, config.visual_vocab_size, bias=False)
        self.visual_head_norm = nn.LayerNorm(config.visual_vocab_size)
        self.visual_embedding_table = ArrCocVisualEmbeddingTable(
            config.visual_vocab_size, config.text_config.hidden_size
        )
        # The allocator already matched the question to every patch. Its score rides along in LLM space, after
        # the VET mix (a distribution over visual words has no room for it), so the LLM can find the relevant
        # token in one attention hop instead of re-matching the question itself. Zero-init: off at the start.
        self.relevance_embedding = ArrCocZeroInitLinear(1, config.text_config.hidden_size, bias=False)

    def forward(self, hidden_states, tier_index, token_scores=None):
        """Returns (LLM-space embeddings [B, K, D_text], visual-token distribution [B, K, V])."""
        hidden_states = self.budget_norm(hidden_states, tier_index)
        for layer in self.layers:
            hidden_states = layer(hidden_states, self.prototypes)
        probs = self.visual_head_norm(self.visual_head(hidden_states)).softmax(-1)
        embeds = self.visual_embedding_table(probs)
        if token_scores is not None:
            # Bounded: a z-score of 10+ on the answer cell would otherwise drown that token's own content (the
            # one token the question needs), and the LLM then never learned to read it (measured).
            tag = torch.tanh(token_scores / 4).unsqueeze(-1).to(embeds.dtype)
            embeds = embeds + self.relevance_embedding(tag)
        return embeds, probs


__all__ = [
    "ArrCocBudgetAwareNorm",
    "ArrCocPrototypeLayer",
    "ArrCocQualityAdapter",
    "ArrCocVisualEmbeddingTable",
]
