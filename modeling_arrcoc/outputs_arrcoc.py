"""The records ArrCoc returns: the allocation plan (every decision about a batch's visual tokens, made once), the
image features that follow it, and the model outputs that carry both.

The decisions are held once, in the plan and the image features; the outputs read them through
`ArrCocAllocationView`'s properties (`outputs.budget_tiers`, `outputs.visual_token_counts`, ...) instead of
restating them as fields. With `return_dict=False`, the tuple carries them inside `image_outputs`.
"""

import dataclasses
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)


@dataclass
class ArrCocAllocationPlan:
    """Everything decided about one batch's visual tokens, computed once by `ArrCocModel.plan_allocation`.

    patch_features: [B, N, C] SAM features. patch_scores / hotspot_scores: [B, N] the allocator's scores and its
    query-agnostic saliency. budget_logits: [B, n_tiers]. budget_tiers: [B] tier index per sample.
    visual_token_counts: [B] tokens each sample keeps. selection_scores: [B, N] what the top-K rule ranks by (None
    for uniform pooling). selection: the selection rule's name. static_tokens: the tokens every sample keeps when
    that is known on the host (a fixed tier, "full", or one tier group of an auto batch), else None: it fixes every
    shape of the forward, so a forced tier compiles as one graph (`torch.compile(fullgraph=True)`) with no read-back.
    """

    patch_features: torch.Tensor
    patch_scores: torch.Tensor
    hotspot_scores: torch.Tensor
    budget_logits: torch.Tensor
    budget_tiers: torch.Tensor
    visual_token_counts: torch.Tensor
    selection_scores: torch.Tensor | None
    selection: str = "learned"
    static_tokens: int | None = None

    def tier_groups(self) -> dict:
        """{tier index: sample indices} in ascending tier order: the batches generation runs without padding."""
        return {tier: (self.budget_tiers == tier).nonzero().flatten() for tier in self.budget_tiers.unique().tolist()}

    def tier_group(self, index) -> "ArrCocAllocationPlan":
        """The plan of one tier group (`tier_groups`' samples `index`): every sample keeps the same number of tokens,
        so the group's shapes are static (one compiled graph per tier group under "auto")."""
        return self.subset(index, static_tokens=int(self.visual_token_counts[index[0]]))

    def subset(self, index, static_tokens: int | None = None) -> "ArrCocAllocationPlan":
        """The plan of the samples at `index` (decisions are per sample, so nothing is recomputed).
        static_tokens: their common token count, when the caller knows it (one tier group); else the plan's own."""
        fields = {name: value[index] for name, value in vars(self).items() if isinstance(value, torch.Tensor)}
        static_tokens = self.static_tokens if static_tokens is None else static_tokens
        return dataclasses.replace(self, **fields, static_tokens=static_tokens)


# The plan's host-side decisions (the rule's name, a known token count) are pytree context, its tensors children:
# torch.export / torch.compile outputs can then carry the plan (in `image_outputs`) like any model output.
_PLAN_HOST_FIELDS = ("selection", "static_tokens")


def _flatten_plan(plan):
    names = tuple(field.name for field in dataclasses.fields(plan) if field.name not in _PLAN_HOST_FIELDS)
    return [getattr(plan, name) for name in names], (names, *(getattr(plan, name) for name in _PLAN_HOST_FIELDS))


def _unflatten_plan(children, context):
    names, *host = context
    return ArrCocAllocationPlan(**dict(zip(names, children)), **dict(zip(_PLAN_HOST_FIELDS, host)))


torch.utils._pytree.register_pytree_node(
    ArrCocAllocationPlan, _flatten_plan, _unflatten_plan,
    serialized_type_name=f"{__name__}.ArrCocAllocationPlan",  # this module's own name: a remote-code copy differs
)


@dataclass
class ArrCocImageFeaturesOutput(BaseModelOutputWithPooling):
    """`get_image_features`' output. pooler_output: [B, K_max, D_text] LLM-space visual embeddings (padded);
    last_hidden_state: [B, K_max, D_clip] the CLIP encoder's output; visual_token_mask: [B, K_max] real tokens;
    visual_probs: [B, K_max, V] the adapter's visual-word distribution; kept_patch_mask: [B, N]; token_sources:
    [B, K_max] the grid index each token mostly comes from; plan: the allocation plan followed."""

    visual_token_mask: torch.BoolTensor | None = None
    visual_probs: torch.FloatTensor | None = None
    kept_patch_mask: torch.BoolTensor | None = None
    token_sources: torch.LongTensor | None = None
    plan: ArrCocAllocationPlan | None = None


def _from_plan(name: str) -> property:
    return property(lambda self: None if self.plan is None else getattr(self.plan, name),
                    doc=f"The plan's `{name}` (None on text-only steps).")


def _from_image(name: str) -> property:
    return property(lambda self: None if self.image_features is None else getattr(self.image_features, name),
                    doc=f"The image features' `{name}` (None on text-only steps).")


class ArrCocAllocationView:
    """The allocation decisions of an output that carries its `ArrCocImageFeaturesOutput` (and with it the plan),
    read from there: budget_logits [B, n_tiers], budget_tiers [B] and patch_scores [B, N] are the plan's;
    kept_patch_mask [B, N] and visual_probs [B, K_max, V] (padded rows 0) the image features'; visual_token_counts
    [B] the tokens actually fed to the LLM (0 on a text-only step, e.g. decoding)."""

    @property
    def image_features(self):
        return self.image_outputs

    @property
    def plan(self) -> ArrCocAllocationPlan | None:
        return None if self.image_features is None else self.image_features.plan

    budget_logits = _from_plan("budget_logits")
    budget_tiers = _from_plan("budget_tiers")
    patch_scores = _from_plan("patch_scores")
    kept_patch_mask = _from_image("kept_patch_mask")
    visual_probs = _from_image("visual_probs")

    @property
    def visual_token_counts(self) -> torch.LongTensor:
        if self.image_features is not None:
            return self.image_features.visual_token_mask.sum(-1)  # measured on the tokens, not the tier's value
        batch = self._batch_tensor()
        return torch.zeros(batch.shape[0], dtype=torch.long, device=batch.device)


@dataclass
class ArrCocModelOutputWithPast(ArrCocAllocationView, MultimodalBaseModelOutputWithPast):
    """
    `ArrCocModel`'s output. last_hidden_state / cache / hidden_states / attentions: the language model's, over the
    spliced sequence (each `<image>` replaced by its K_i visual tokens, rows left-padded to the longest).
    image_outputs: the `ArrCocImageFeaturesOutput` of `get_image_features` (None on text-only steps); its
        hidden_states / attentions are the vision tower's when asked for, its `plan` the allocation followed.
    labels / shift_labels: the targets given to `forward`, aligned with `last_hidden_state` (spliced like the
        inputs: -100 on the visual tokens), for a head's loss. None when not given.
    The allocation decisions (visual_token_counts, budget_logits, budget_tiers, patch_scores, kept_patch_mask,
    visual_probs, plan) are read from `image_outputs` (`ArrCocAllocationView`).
    """

    labels: torch.LongTensor | None = None
    shift_labels: torch.LongTensor | None = None

    def _batch_tensor(self):
        return self.last_hidden_state


@dataclass
class ArrCocCausalLMOutputWithPast(ArrCocAllocationView, MultimodalCausalLMOutputWithPast):
    """
    loss: weighted total of the loss terms (weights from `loss_weights`, `losses.weighted_loss`), None without labels.
    logits / cache / hidden_states / attentions: the language model's, over the spliced sequence.
    image_outputs: the `ArrCocImageFeaturesOutput` the visual tokens came from (None on text-only steps).
    answer_loss / efficiency_loss / alignment_loss / vet_kl_loss: each model-computed term of `losses.LOSS_TERMS`
        (`<name>_loss`), None without labels. A term registered after import is set the same way, as an extra key.
    The allocation decisions (visual_token_counts, budget_logits, budget_tiers, patch_scores, kept_patch_mask,
    visual_probs, plan) are read from `image_outputs` (`ArrCocAllocationView`).
    """

    answer_loss: torch.FloatTensor | None = None
    efficiency_loss: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    vet_kl_loss: torch.FloatTensor | None = None

    def _batch_tensor(self):
        return self.logits


@dataclass
class ArrCocMultimodalInputs(ArrCocAllocationView):
    """What the LLM receives after splicing (inputs_embeds, attention_mask, position_ids, the spliced labels and
    pre-shifted targets), and `image`, what `get_image_features` returned: the allocation decisions are read there."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    shift_labels: torch.Tensor | None = None  # pre-shifted targets, spliced like `labels`
    image: ArrCocImageFeaturesOutput | None = None

    @property
    def image_features(self):
        return self.image

    @property
    def visual_mask(self) -> torch.Tensor:
        """[B, K_max] the real visual tokens."""
        return self.image.visual_token_mask

    @property
    def token_sources(self) -> torch.Tensor:
        """[B, K_max] the grid index each token mostly comes from."""
        return self.image.token_sources

    def _batch_tensor(self):
        return self.inputs_embeds


__all__ = [
    "ArrCocAllocationPlan",
    "ArrCocAllocationView",
    "ArrCocCausalLMOutputWithPast",
    "ArrCocImageFeaturesOutput",
    "ArrCocModelOutputWithPast",
    "ArrCocMultimodalInputs",
]
