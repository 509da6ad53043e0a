"""The loss terms, one table: each name maps to its function, its output field (`<name>_loss`), its default weight
(the `loss_weight_<name>` training argument) and that argument's help.

Training owns these losses; they sit at the package level, beside the model, only because the model's forward
computes its terms when given labels and the library never imports `training/` (tests/test_layout.py). From the
table come the `*_loss` fields the forward fills, the training arguments' `loss_weight_*` fields, the weighting and
the trainer's per-term logging. A new term the model computes is one `LOSS_TERMS.register(LossTerm(...))` here
whose function reads a `LossInputs`; a term the trainer computes ("trainer") is registered here for its weight and
computed in `ArrCocTrainer.compute_loss`.
"""

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from .registry import Registry


@dataclass(frozen=True)
class LossTerm:
    """One term of the training loss.

    weight / help: the default and help of its `loss_weight_<name>` training argument.
    compute: a model term's function of a `LossInputs` -> scalar tensor; None when it is computed elsewhere: the
        answer loss (the language model's, from its logits) and the trainer's terms.
    computed_by: "model" (forward returns it as `<name>_loss` when given labels) or "trainer".
    """

    name: str
    weight: float
    help: str
    compute: Callable | None = None
    computed_by: str = "model"

    @property
    def field(self) -> str:
        return f"{self.name}_loss"

    @property
    def argument(self) -> str:
        return f"loss_weight_{self.name}"


@dataclass
class LossInputs:
    """What a model term reads: the base model's outputs (the plan, the image features and the decisions they
    carry), the model's config and the batch's optional targets."""

    outputs: object  # ArrCocModelOutputWithPast
    config: object  # ArrCocConfig
    patch_targets: torch.Tensor | None = None
    visual_targets: torch.Tensor | None = None


def efficiency_loss(budget_logits, budgets):
    """Expected visual tokens under the predicted tier distribution, as a fraction of the largest tier."""
    values = torch.tensor(budgets, dtype=budget_logits.dtype, device=budget_logits.device)
    return (budget_logits.softmax(-1) @ values).mean() / values.max()


def alignment_loss(patch_scores, patch_targets=None):
    """Cross-entropy of the patch-score distribution against the answer region where boxes exist; otherwise
    an anti-collapse term: KL of the batch-mean selection distribution from uniform, so the allocator cannot
    settle on one fixed set of patches for every question. Masked means, no boolean indexing or host branch: the
    loss traces into the forward's one graph (torch.compile)."""
    log_probs = patch_scores.float().log_softmax(-1)
    mean_probs = log_probs.exp().mean(0)
    anti_collapse = (mean_probs * (mean_probs.clamp(min=1e-12).log() + math.log(mean_probs.numel()))).sum()
    if patch_targets is None:
        return anti_collapse
    mass = patch_targets.float().sum(-1)
    has_box = mass > 0
    target = patch_targets.float() / mass.clamp(min=1e-12)[:, None]
    per_row = -(target * log_probs).sum(-1)
    boxed = (per_row * has_box).sum() / has_box.sum().clamp(min=1)
    return torch.where(has_box.any(), boxed, anti_collapse)


def vet_kl_loss(visual_probs, visual_mask, token_targets=None):
    """Against a teacher: cross-entropy of each kept token's distribution with its patch's visual words
    ([B, K, M] ids, a uniform M-hot target). Without one: KL(visual-vocabulary usage || uniform), so the adapter
    cannot collapse onto a few VET rows. Masked means, as in `alignment_loss`, so it compiles whole."""
    kept = visual_mask.unsqueeze(-1).float()
    usage = (visual_probs.float() * kept).sum((0, 1)) / kept.sum().clamp(min=1)
    uniform_kl = (usage * (usage.clamp(min=1e-12).log() + math.log(usage.numel()))).sum()
    if token_targets is None:
        return uniform_kl
    valid = visual_mask.unsqueeze(-1) & (token_targets != -100)
    picked = visual_probs.float().clamp(min=1e-12).log().gather(2, token_targets.clamp(min=0))
    teacher = -(picked * valid).sum() / valid.sum().clamp(min=1)
    return torch.where(valid.any(), teacher, uniform_kl)


def token_targets(visual_targets, token_sources):
    """Each visual token's teacher id: that of the patch it was selected from (the dominant one if pooled)."""
    if visual_targets is None:
        return None
    targets = visual_targets if visual_targets.ndim == 3 else visual_targets.unsqueeze(-1)
    index = token_sources.unsqueeze(-1).expand(-1, -1, targets.shape[-1])
    return targets.gather(1, index)  # [B, K, M]


def shifted_cross_entropy(logits, labels):
    """The answer loss of unshifted `labels`: position t's logits predict the label at t + 1."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def answer_window(labels: torch.Tensor) -> int:
    """The smallest `logits_to_keep` that still predicts every label: labels sit at the end of each left-padded
    row (prompt, then answer), and splicing the visual tokens in before them keeps their distance from the end."""
    has_label = labels != -100
    if not has_label.any():
        return 1
    first = has_label.int().argmax(-1)[has_label.any(-1)]
    return int(labels.shape[1] - first.min()) + 1


def _efficiency(inputs: LossInputs):
    return efficiency_loss(inputs.outputs.budget_logits, inputs.config.budgets)


def _alignment(inputs: LossInputs):
    return alignment_loss(inputs.outputs.patch_scores, inputs.patch_targets)


def _vet_kl(inputs: LossInputs):
    image = inputs.outputs.image_outputs
    return vet_kl_loss(inputs.outputs.visual_probs, image.visual_token_mask,
                       token_targets(inputs.visual_targets, image.token_sources))


LOSS_TERMS = Registry("loss term")
# The order is the weighted sum's (float addition is not associative) and the training arguments'.
for _term in (
    LossTerm("answer", 1.0, "Weight of the answer cross-entropy."),
    LossTerm("efficiency", 0.05, "Efficiency weight after its warm-up.", _efficiency),
    LossTerm("alignment", 0.5, "Weight of the answer-region alignment loss.", _alignment),
    LossTerm("vet_kl", 0.01, "Weight of the VET usage KL.", _vet_kl),
    LossTerm("budget", 1.0, "Weight of the calibration cross-entropy.", computed_by="trainer"),
    LossTerm("llm_attention", 0.0, computed_by="trainer", help=(
        "Base pretraining only: weight of the language model's attention supervision (one head per layer in "
        "llm_attention_layers, from each answer-predicting position toward that answer's patches; reader.py). Runs "
        "the language model with eager attention. Checked with the other loss weights (WEIGHTED_TERMS).")),
    LossTerm("question_attention", 0.0, computed_by="trainer", help=(
        "Base pretraining only: weight of the question-attention supervision (head 0 of each layer in "
        "question_attention_layers, from each answer-predicting position toward the word its question asks "
        "about, the collator's question_keys; reader.py). Runs the language model with eager attention.")),
    LossTerm("llm_visual_words", 0.0, computed_by="trainer", help=(
        "Base pretraining only: weight of the visual words read back from the language model's hidden states at the "
        "visual positions at the input of each layer in llm_visual_words_layers (through the visual embedding "
        "table, against the reading teacher; reader.py), so early layers keep what later ones match and read.")),
):
    LOSS_TERMS.register(_term)

LOSS_COMPONENTS = LOSS_TERMS.names(lambda term: term.computed_by == "model")  # answer, efficiency, alignment, vet_kl
TRAINER_TERMS = LOSS_TERMS.names(lambda term: term.computed_by == "trainer")  # budget, llm_attention, question_attention, llm_visual_words
WEIGHTED_TERMS = LOSS_TERMS.names()


def model_losses(inputs: LossInputs) -> dict:
    """{name: value} of every model term with a function (the answer loss comes from the logits, apart)."""
    return {term.name: term.compute(inputs) for term in LOSS_TERMS.entries(_has_model_function)}


def _has_model_function(term: LossTerm) -> bool:
    return term.computed_by == "model" and term.compute is not None


def weighted_loss(losses: dict, loss_weights: dict | None = None) -> torch.Tensor:
    """The one loss weighting: sum of weight x term over the terms present (forward and the trainer both call it),
    in the weights' order. A name outside `LOSS_TERMS` is an error; a term the caller did not compute (None or
    absent, e.g. the trainer's calibration between its steps) is skipped. Without weights the answer loss alone."""
    weights = {"answer": 1.0} if loss_weights is None else loss_weights
    unknown = set(weights) - set(WEIGHTED_TERMS)
    if unknown:
        raise ValueError(f"Unknown loss components {sorted(unknown)}; expected some of {WEIGHTED_TERMS}.")
    terms = [w * losses[name].float() for name, w in weights.items() if w and losses.get(name) is not None]
    return torch.stack(terms).sum() if terms else losses["answer"]


__all__ = [
    "LOSS_COMPONENTS",
    "LOSS_TERMS",
    "LossInputs",
    "LossTerm",
    "TRAINER_TERMS",
    "WEIGHTED_TERMS",
    "alignment_loss",
    "answer_window",
    "efficiency_loss",
    "model_losses",
    "shifted_cross_entropy",
    "token_targets",
    "vet_kl_loss",
    "weighted_loss",
]
