"""ArrCocTrainingArguments: `TrainingArguments` plus ARR-COC's phase, learning rates, loss weights, budget and
diagnostics settings, validated when parsed (YAML in, checked dataclass out).
"""

import json
import math
import os
from dataclasses import dataclass, field

import torch
import yaml
from transformers import TrainingArguments

from ..cli import is_positive_finite
from ..lora import DEFAULT_TARGET_MODULES
from ..losses import LOSS_TERMS, TRAINER_TERMS, WEIGHTED_TERMS
from ..provenance import TRAINING_CONFIG  # re-exported: where train.py saves the resolved YAML
from ..selection import FIXED_SELECTIONS, SELECTION_METHODS
from .phases import BUDGET_MODES, COMPONENTS, PHASES, check_phase, trained_components
from .calibration import CALIBRATION_TARGETS
from .reader import VIEWS
from .teacher import ALIGNMENT_TARGETS, SCORINGS


EVAL_BUDGETS = ("auto", "full", "heuristic")
DEFAULT_GRAD_NORM_RANGES = {name: [1e-8, 100.0] for name in COMPONENTS}
# FIXED_SELECTIONS (fixed-compression baselines: K is given, a tier or one drawn per step, never predicted per
# question), WEIGHTED_TERMS and TRAINER_TERMS are the selection and loss tables' (selection.py, losses.py).


def _help(text):
    return {"help": text}


def _with_loss_weights(cls):
    """One `loss_weight_<name>` field per loss term of `losses.LOSS_TERMS` (its default weight and help), added
    before @dataclass collects the fields: HfArgumentParser and the YAML files see plain float fields. A term
    registered after this module is imported has no field; its weight is the table's default (`loss_weight`)."""
    for term in LOSS_TERMS.entries():
        cls.__annotations__[term.argument] = float
        setattr(cls, term.argument, field(default=term.weight, metadata=_help(term.help)))
    return cls


@dataclass
@_with_loss_weights
class ArrCocTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus ARR-COC's phase, learning rates, loss weights, budget and diagnostics settings.

    Read from a phase YAML with `HfArgumentParser(...).parse_yaml_file(path, allow_extra_keys=False)`: unknown
    keys are refused. Every field is checked in `__post_init__`, before any model or data is loaded.
    """

    phase: str = field(default="phase1", metadata=_help(f"Curriculum phase, one of {list(PHASES)} (phases.py)."))
    sam_unfreeze_last_n: int = field(default=0, metadata=_help("phase1: also train the last N SAM blocks + neck."))
    llm_unfreeze_last_n: int = field(default=0, metadata=_help("phase2: also train the last N LLM layers + norm."))
    freeze_vision_tower: bool = field(default=False, metadata=_help("phase3: leave SAM frozen (the demo's phase 3)."))
    freeze_reader: bool = field(default=False, metadata=_help("phase3: leave CLIP, the adapter, LLM, lm_head frozen."))
    lora_rank: int = field(default=0, metadata=_help("phase2: LoRA rank on the LLM (0 = no LoRA); merged at save."))
    lora_alpha: int = field(default=16, metadata=_help("LoRA scaling numerator (scale = alpha / rank)."))
    lora_dropout: float = field(default=0.0, metadata=_help("Dropout on the LoRA branch."))
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES), metadata=_help("LLM modules given LoRA.")
    )
    learning_rate_vision_tower: float | None = field(default=None, metadata=_help("SAM LR; None = learning_rate."))
    learning_rate_allocator: float | None = field(default=None, metadata=_help("Allocator LR; None = learning_rate."))
    learning_rate_clip_encoder: float | None = field(default=None, metadata=_help("CLIP LR; None = learning_rate."))
    learning_rate_quality_adapter: float | None = field(default=None, metadata=_help("Adapter LR; None = base LR."))
    learning_rate_language_model: float | None = field(default=None, metadata=_help("LLM LR (LoRA included)."))
    learning_rate_lm_head: float | None = field(default=None, metadata=_help("lm_head LR; None = the LLM's."))
    # loss_weight_<name> for each loss term: added from the loss table by _with_loss_weights.
    efficiency_weight_start: float = field(default=0.001, metadata=_help("Efficiency weight at step 0."))
    efficiency_warmup_steps: int = field(default=0, metadata=_help("Linear ramp start -> final; 0 = no ramp."))
    alignment_targets: str = field(
        default="boxes",
        metadata=_help(f"Where the alignment loss's per-patch targets come from, one of {list(ALIGNMENT_TARGETS)}: "
                       "'boxes' (answer-box coverage; rows without boxes get the anti-collapse term), 'teacher' "
                       "(a teacher checkpoint's scores at full tokens, computed once and cached under "
                       "output_dir/teacher_targets; training/teacher.py), 'none' (anti-collapse term only)."),
    )
    teacher_checkpoint: str | None = field(
        default=None, metadata=_help("alignment_targets 'teacher': any ArrCoc checkpoint (directory or Hub name).")
    )
    teacher_scoring: str = field(
        default="grad_input", metadata=_help(f"How the teacher scores patches, one of {list(SCORINGS)} (teacher.py).")
    )
    teacher_selection: str | None = field(
        default=None,
        metadata=_help("The teacher's selection at full tokens: None (the checkpoint's own; an ARR-COC teacher's LLM "
                       "then reads its allocator's relevance tag) or 'full' (every patch, no tag: the LLM's reading "
                       "alone)."),
    )
    train_budget: str = field(
        default="phase",
        metadata=_help(f"'phase' (the phase table's mode), one of {list(BUDGET_MODES)}, or a fixed tier value."),
    )
    train_tier_weights: dict | None = field(
        default=None,
        metadata=_help("Relative weights of the tiers in the 'random' (multi-budget) draw, keyed by tier value, e.g. "
                       "{4: 0.5, 8: 0.35, 16: 0.15}; a tier of the model left out has weight 0 (never drawn), a tier "
                       "the model does not have is an error (tier_weights). None = uniform. Few tokens make the "
                       "language model's lookup far faster to learn (8 tokens: learned in ~300 steps; 64 tokens: 24% "
                       "after 400, measured), so the demo pretrain favours small tiers."),
    )
    eval_budget: str = field(default="auto", metadata=_help(f"One of {list(EVAL_BUDGETS)} or a fixed tier value."))
    selection_method: str | None = field(
        default=None,
        metadata=_help(f"The model's own patch selection, one of {list(SELECTION_METHODS)}, written into the model "
                       "config before training (None: keep the model's). A trained baseline: 'uniform', 'compress', "
                       "'hotspot' or 'random' train at a fixed K (train_budget: a tier value) or at several "
                       "(train_budget: random), never 'auto'; 'full' keeps every patch whatever train_budget says."),
    )
    relevance_tag: bool | None = field(
        default=None,
        metadata=_help("Whether the quality adapter adds the allocator's relevance tag to each kept token, written "
                       "into the model config before training (None: keep the model's). Baselines: false."),
    )
    fold_dropped: bool | None = field(
        default=None,
        metadata=_help("Whether dropped patches are folded into their nearest kept token, written into the model "
                       "config before training (None: keep the model's). ARR-COC's demo phases: false; the fold "
                       "ablation: true."),
    )
    heuristic_short_words: int = field(default=5, metadata=_help("Heuristic: at most this many words = short."))
    group_by_tier: bool = field(
        default=False, metadata=_help("Batches of one heuristic tier (TierGroupedBatchSampler); no padding.")
    )
    calibration_every: int = field(default=10, metadata=_help("Calibrate the budget every N steps; 0 = never."))
    calibration_samples: int = field(default=4, metadata=_help("Rows of the batch calibrated (one forward/tier)."))
    calibration_tolerance: float = field(default=0.05, metadata=_help("Nats/token a smaller tier may lose."))
    calibration_target: str = field(
        default="loss",
        metadata=_help("The calibration's target: 'exact' (the smallest tier whose greedy answer is exactly right, "
                       "the evaluation's oracle; none -> the smallest), 'loss' (the smallest within "
                       "calibration_tolerance of the best loss), 'accuracy' (shared by every tier that answers "
                       "exactly: the predictor learns how often each tier answers) or 'stable' (the smallest tier "
                       "from which every larger tier answers: the evaluation's need; training/calibration.py)."),
    )
    fit_only: bool = field(
        default=False,
        metadata=_help("Train nothing: run only the fits that follow training (fit_budget_head, "
                       "fit_budget_temperature, fit_budget_cost) on init_from's checkpoint and save it as the final "
                       "checkpoint: a trained model's budget refitted without retraining it."),
    )
    fit_budget_head: int = field(
        default=0,
        metadata=_help("After training, before the temperature: refit the budget predictor's head on every tier's "
                       "outcome for the first this many training rows, against calibration_target "
                       "(training/calibration.py, fit_budget_head; the rest of the model is unchanged); 0 = off."),
    )
    fit_budget_head_epochs: int = field(
        default=100, metadata=_help("With fit_budget_head: passes over those rows (training/calibration.py).")
    )
    fit_budget_temperature: int = field(
        default=0,
        metadata=_help("After training, fit the budget predictor's temperature (config.budget_temperature, used by a "
                       "token price) on the first this many rows of the whole validation split (max_eval_samples "
                       "does not cut them) against their calibration_target ('loss': the oracle-minimal tier); "
                       "0 = off."),
    )
    fit_budget_cost: bool = field(
        default=False,
        metadata=_help("With fit_budget_temperature: also fit the model's own token price under 'auto' "
                       "(config.budget_cost) on the same rows: the price whose answers lie furthest above the "
                       "constant tiers' envelope (training/calibration.py, fit_budget_cost)."),
    )
    fit_budget_accuracy_floor: float | None = field(
        default=None,
        metadata=_help("With fit_budget_cost: only prices whose accuracy on those rows keeps this share of the best "
                       "constant tier's compete (e.g. 0.97); null = the margin alone decides."),
    )
    fit_budget_min_margin: float | None = field(
        default=None,
        metadata=_help("With fit_budget_cost: the price must lie at least this far above the constant tiers' "
                       "envelope on those rows (e.g. 0.03), and the most accurate such price wins; null = the "
                       "largest margin wins (training/calibration.py, fit_budget_cost)."),
    )
    calibration_max_loss: float | None = field(
        default=None, metadata=_help("Nats/token above which a tier does not answer; unanswered -> smallest tier.")
    )
    cache_sam_features: bool = field(
        default=False, metadata=_help("Cache frozen SAM features by training-row index (SAM must be frozen).")
    )
    sam_cache_dtype: str = field(default="float32", metadata=_help("'float32' or 'bfloat16' (half the memory)."))
    sam_cache_dir: str | None = field(
        default=None,
        metadata=_help("Keep the cached SAM features on disk here (safetensors shards, memory-mapped), keyed by row "
                       "index under a fingerprint of the SAM weights and image size, so a later phase or a restart "
                       "with the same frozen SAM reuses them; implies cache_sam_features. None: in memory."),
    )
    questions_per_image: int = field(
        default=1,
        metadata=_help("Questions asked about each training image in one chat (the row's own, then its "
                       "extra_questions), each answer supervised: dense supervision for a reader (reader.py)."),
    )
    training_views: dict | str | None = field(
        default=None,
        metadata=_help("Per-step view weights over 'full', 'sparse' (answer patches + random distractors at the "
                       "step's tier) and 'pooled' (uniform pooling to the step's tier), e.g. {full: 0.4, sparse: 0.4, "
                       "pooled: 0.2}: a method-neutral base's reading stage (reader.py). None: the model's own "
                       "selection at the phase's budget."),
    )
    distractor_curriculum_steps: int = field(
        default=0, metadata=_help("With training_views: the largest drawable tier grows from the smallest to full "
                                  "over this many steps (0: every tier from the start).")
    )
    llm_attention_layers: list[int] = field(
        default_factory=lambda: [1],
        metadata=_help("LLM layers whose head 0 the attention loss supervises. Layer 1 reads the visual tokens before "
                       "later layers rewrite them; supervising layers 2-3 too made layer 0 overwrite the digits at the "
                       "visual positions (measured: the glyph was linearly decodable there at 0.30 after layer 0)."),
    )
    question_attention_layers: list[int] = field(
        default_factory=lambda: [0],
        metadata=_help("LLM layers whose head 0 the question-attention loss supervises (loss_weight_question_attention): "
                       "layer 0 brings the question's key word to the answer position before layer 1 looks it up among "
                       "the visual tokens."),
    )
    llm_visual_words_layers: list[int] = field(
        default_factory=lambda: [1],
        metadata=_help("Hidden states (the input of these LLM layers) whose visual positions must still name their "
                       "visual words (loss_weight_llm_visual_words): [1] is layer 0's output."),
    )
    llm_attention_count_sink: bool = field(
        default=False,
        metadata=_help("For questions whose answer is a count (data.COUNT_FAMILIES), the attention loss's target is "
                       "uniform over the counted tokens and the answer-predicting position itself: the sink's share "
                       "1/(n+1) carries n, where mass on the counted tokens alone averages them and loses n. Needs "
                       "loss_weight_llm_attention > 0."),
    )
    llm_attention_count_sink_weight: float = field(
        default=1.0,
        metadata=_help("With llm_attention_count_sink: the sink's weight w against each counted token's 1 in the count "
                       "target, whose sink share w/(n+w) then carries n (1: uniform, 1/(n+1), whose shares at 8 and 9 "
                       "lie 0.011 apart; docs/demo_model.md, \"Count 8 is read as 9\")."),
    )
    llm_attention_count_head: int = field(
        default=0,
        metadata=_help("With llm_attention_count_sink: the head of each supervised layer whose attention the count target "
                       "shapes (0: the same head as the cell lookup's; measured, sharing head 0 traded local_key for "
                       "counting, docs/demo_model.md)."),
    )
    llm_attention_query_side: bool = field(
        default=False,
        metadata=_help("The attention loss on the supervised heads recomputed from each layer's input with the visual "
                       "positions' input detached: it moves where the head looks, not the keys it is matched against "
                       "(at weight 1.0 on the model's own attention, layer 0 rewrote the visual positions and erased "
                       "the digits). Needs loss_weight_llm_attention > 0."),
    )
    logits_on_labels_only: bool = field(default=True, metadata=_help("LM head only where labels exist (faster)."))
    grad_normalization: str = field(
        default="none", metadata=_help("'none' or 'visual_tokens': scale each batch's loss by mean tier K / its K.")
    )
    curriculum_easy_families: list[str] = field(
        default_factory=list, metadata=_help("Task families of the curriculum's easy stretch (column 'task').")
    )
    curriculum_easy_steps: int = field(
        default=0, metadata=_help("Optimizer steps on easy families first; 0 = off. With group_by_tier, the easy "
                                  "stretch and the rest are each grouped by tier, the easy batches first.")
    )
    max_nonfinite_steps: int = field(default=5, metadata=_help("Consecutive non-finite steps that stop the run."))
    grad_norm_ranges: dict | str | None = field(
        default=None, metadata=_help("{component: [low, high]}: warn when its grad norm leaves the range.")
    )
    tier_collapse_share: float = field(
        default=0.95, metadata=_help("Warn when one tier takes this share of predicted tiers in a log window.")
    )
    early_stopping_patience: int | None = field(
        default=None, metadata=_help("Stop after N evaluations without improvement of metric_for_best_model.")
    )
    early_stopping_threshold: float = field(default=0.0, metadata=_help("Smallest improvement that counts."))
    # Parent defaults changed: the collator reads raw rows, and eval logits vary in shape (only losses are kept).
    remove_unused_columns: bool = field(default=False, metadata=_help("Must stay False: the collator reads rows."))
    prediction_loss_only: bool = field(default=True, metadata=_help("Evaluation keeps losses, not logits."))
    # The Trainer would infer ["labels", "logits_on_labels_only"] from forward's signature (any name with "label").
    label_names: list[str] | None = field(default_factory=lambda: ["labels"], metadata=_help("Label input names."))

    def __post_init__(self):
        self.train_budget, self.eval_budget = str(self.train_budget), str(self.eval_budget)  # YAML may give ints
        if self.sam_cache_dir:
            self.cache_sam_features = True
        self._check_phase_and_budget()
        self._check_losses()
        self._check_alignment_targets()
        self._check_schedule_options()
        self._check_reader_options()
        self.grad_norm_ranges = _grad_norm_ranges(self.grad_norm_ranges)
        if self.curriculum_easy_steps:
            self.train_sampling_strategy = "sequential"  # the curriculum order is written into the dataset
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
            # Launched as several processes on a machine without accelerators (`accelerate launch --multi_gpu`
            # on CPU): without use_cpu, accelerate would run each process alone instead of gloo DDP.
            self.use_cpu = True
        super().__post_init__()

    def loss_weight(self, name: str) -> float:
        """The configured weight of loss term `name` (the table's default for a term registered after import)."""
        term = LOSS_TERMS[name]
        return getattr(self, term.argument, term.weight)

    def tier_weights(self, budgets) -> list[float] | None:
        """`train_tier_weights` as one weight per entry of the model's `budgets` (a tier left out weighs 0), for the
        multi-budget draw (calibration.step_tier); None when unset (a uniform draw). A tier the model does not have
        is an error naming it and the model's tiers: weights keyed by value cannot silently shift onto other tiers."""
        if self.train_tier_weights is None:
            return None
        unknown = sorted(set(self.train_tier_weights) - set(budgets))
        if unknown:
            raise ValueError(f"train_tier_weights names tier {', '.join(map(str, unknown))}, which this model does not "
                             f"have; its tiers are {list(budgets)}.")
        return [self.train_tier_weights.get(tier, 0.0) for tier in budgets]

    @property
    def training_budget(self) -> str:
        """The budget mode of the training forward, after resolving 'phase' through the phase table."""
        return PHASES[self.phase].budget if self.train_budget == "phase" else self.train_budget

    def _check_phase_and_budget(self):
        check_phase(self.phase, sam_unfreeze_last_n=self.sam_unfreeze_last_n,
                    llm_unfreeze_last_n=self.llm_unfreeze_last_n, lora_rank=self.lora_rank,
                    freeze_vision_tower=self.freeze_vision_tower, freeze_reader=self.freeze_reader)
        _check_budget("train_budget", self.train_budget, ("phase",) + BUDGET_MODES)
        _check_budget("eval_budget", self.eval_budget, EVAL_BUDGETS)
        if self.group_by_tier and self.training_budget != "heuristic":
            raise ValueError("group_by_tier needs per-sample tiers known before the forward: train_budget "
                             f"'heuristic' (got {self.training_budget!r}).")
        if self.cache_sam_features and self._trains_sam():
            raise ValueError(f"cache_sam_features needs a frozen SAM, but {self.phase} with "
                             f"sam_unfreeze_last_n={self.sam_unfreeze_last_n} trains it (phase3: freeze_vision_tower "
                             f"leaves it frozen).")
        if self.sam_cache_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"sam_cache_dtype must be 'float32' or 'bfloat16', got {self.sam_cache_dtype!r}.")
        if self.selection_method is not None:
            self.check_selection(self.selection_method)

    def check_selection(self, selection: str):
        """The budgets this run trains and evaluates at must make sense for `selection` (the model's own): a
        fixed-compression baseline has no learned budget to follow ("auto") and one K per batch ("heuristic"
        mixes tiers). The trainer checks the model's resolved selection again."""
        if selection not in SELECTION_METHODS:
            raise ValueError(f"selection_method must be one of {list(SELECTION_METHODS)}, got {selection!r} (query "
                             "similarity is training-free: evaluate it with eval.py, it is not trained).")
        if selection not in FIXED_SELECTIONS:
            return
        budgets = {"train_budget": self.training_budget}
        if str(getattr(self.eval_strategy, "value", self.eval_strategy)) != "no":
            budgets["eval_budget"] = self.eval_budget
        for name, value in budgets.items():
            if value in ("auto", "heuristic"):
                from_phase = name == "train_budget" and self.train_budget == "phase"
                resolved = f" (phase {self.phase}'s budget)" if from_phase else ""
                raise ValueError(
                    f"{name} {value!r}{resolved} does not fit selection_method {selection!r}: a fixed-compression "
                    f"baseline has no learned budget and takes one K per batch. Set {name} to a tier value (its "
                    "fixed K)" + (" or 'random' (several Ks, one drawn per step)." if name == "train_budget" else ".")
                )

    @property
    def phase_options(self) -> dict:
        """This run's keyword options of `phases.apply_phase`: every caller applies the phase with the same ones."""
        return dict(sam_unfreeze_last_n=self.sam_unfreeze_last_n, llm_unfreeze_last_n=self.llm_unfreeze_last_n,
                    lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                    lora_target_modules=tuple(self.lora_target_modules),
                    freeze_vision_tower=self.freeze_vision_tower, freeze_reader=self.freeze_reader)

    @property
    def trained_components(self) -> tuple[str, ...]:
        """The components this run's phase trains in full, after its freeze options (phases.trained_components)."""
        return trained_components(self.phase, freeze_vision_tower=self.freeze_vision_tower,
                                  freeze_reader=self.freeze_reader)

    def _trains_sam(self) -> bool:
        trained = "vision_tower" in self.trained_components
        return trained or self.sam_unfreeze_last_n > 0

    def _check_alignment_targets(self):
        if self.alignment_targets not in ALIGNMENT_TARGETS:
            raise ValueError(f"alignment_targets must be one of {list(ALIGNMENT_TARGETS)}, got "
                             f"{self.alignment_targets!r}.")
        if self.teacher_scoring not in SCORINGS:
            raise ValueError(f"teacher_scoring must be one of {list(SCORINGS)}, got {self.teacher_scoring!r}.")
        if self.teacher_selection not in (None, "learned", "full"):
            raise ValueError(f"teacher_selection must be null, 'learned' or 'full', got {self.teacher_selection!r}.")
        if self.alignment_targets == "teacher" and not self.teacher_checkpoint:
            raise ValueError("alignment_targets 'teacher' needs teacher_checkpoint (an ArrCoc checkpoint run at full "
                             "tokens to score the patches).")
        if self.alignment_targets != "teacher" and self.teacher_checkpoint:
            raise ValueError(f"teacher_checkpoint is set but alignment_targets is {self.alignment_targets!r}: set "
                             "alignment_targets: teacher to use it.")

    def _check_losses(self):
        weights = {name: self.loss_weight(name) for name in WEIGHTED_TERMS}
        weights["efficiency_start"] = self.efficiency_weight_start
        for name, value in weights.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss weight {name} must be finite and >= 0, got {value}.")
        if not any(weights[name] for name in ("answer", "alignment")):
            raise ValueError("loss_weight_answer or loss_weight_alignment must be positive: nothing to learn from.")
        _check_at_least("efficiency_warmup_steps", self.efficiency_warmup_steps, 0)
        _check_at_least("calibration_every", self.calibration_every, 0)
        _check_at_least("calibration_samples", self.calibration_samples, 1)
        if self.calibration_tolerance < 0:
            raise ValueError(f"calibration_tolerance must be >= 0, got {self.calibration_tolerance}.")
        _check_at_least("fit_budget_temperature", self.fit_budget_temperature, 0)
        _check_at_least("fit_budget_head", self.fit_budget_head, 0)
        _check_at_least("fit_budget_head_epochs", self.fit_budget_head_epochs, 1)
        if self.fit_budget_head and not self.fit_budget_temperature:
            raise ValueError("fit_budget_head needs fit_budget_temperature > 0: a temperature and price fitted to the "
                             "old head are in units of its log-probabilities, not the refitted head's.")
        if self.fit_budget_accuracy_floor is not None and not (
                self.fit_budget_cost and 0 < self.fit_budget_accuracy_floor <= 1):
            raise ValueError("fit_budget_accuracy_floor is a share in (0, 1] of the best constant tier's accuracy and "
                             f"needs fit_budget_cost: true, got {self.fit_budget_accuracy_floor!r} with fit_budget_cost="
                             f"{self.fit_budget_cost}.")
        if self.fit_budget_min_margin is not None and not (
                self.fit_budget_cost and 0 <= self.fit_budget_min_margin < 1):
            raise ValueError("fit_budget_min_margin is a share of questions in [0, 1) above the constant tiers' "
                             f"envelope and needs fit_budget_cost: true, got {self.fit_budget_min_margin!r} with "
                             f"fit_budget_cost={self.fit_budget_cost}.")
        if self.fit_budget_cost and not self.fit_budget_temperature:
            raise ValueError("fit_budget_cost fits the price on the rows of fit_budget_temperature: set "
                             "fit_budget_temperature to a number of validation rows (> 0).")
        if self.calibration_target not in CALIBRATION_TARGETS:
            raise ValueError(f"calibration_target must be one of {list(CALIBRATION_TARGETS)}, got "
                             f"{self.calibration_target!r}.")
        if self.calibration_max_loss is not None and self.calibration_max_loss <= 0:
            raise ValueError(f"calibration_max_loss must be > 0 or null, got {self.calibration_max_loss}.")
        if self.grad_normalization not in ("none", "visual_tokens"):
            raise ValueError(f"grad_normalization must be 'none' or 'visual_tokens', got {self.grad_normalization!r}.")

    def _check_reader_options(self):
        _check_at_least("questions_per_image", self.questions_per_image, 1)
        _check_at_least("distractor_curriculum_steps", self.distractor_curriculum_steps, 0)
        if isinstance(self.training_views, str):
            self.training_views = json.loads(self.training_views)
        if self.training_views is not None:
            views = dict(self.training_views)
            if set(views) - set(VIEWS) or not views or min(views.values()) < 0 or sum(views.values()) <= 0:
                raise ValueError(f"training_views must map some of {list(VIEWS)} to non-negative weights with a "
                                 f"positive sum, got {self.training_views}.")
            if self.training_budget != "random":
                raise ValueError("training_views draw their tier per step: train_budget must be 'random' (or a "
                                 f"phase whose budget is), got {self.training_budget!r}.")
            self.training_views = {name: float(weight) for name, weight in views.items()}
        if self.distractor_curriculum_steps and self.training_views is None:
            raise ValueError("distractor_curriculum_steps needs training_views (it grows the views' tiers).")
        if self.llm_attention_count_sink and not self.loss_weight_llm_attention:
            raise ValueError("llm_attention_count_sink changes the attention loss's target for counts: it needs "
                             "loss_weight_llm_attention > 0.")
        if not is_positive_finite(self.llm_attention_count_sink_weight):
            raise ValueError("llm_attention_count_sink_weight must be a positive finite number, got "
                             f"{self.llm_attention_count_sink_weight}.")
        if self.llm_attention_count_sink_weight != 1.0 and not self.llm_attention_count_sink:
            raise ValueError("llm_attention_count_sink_weight weights the count target's sink: it needs "
                             "llm_attention_count_sink=true.")
        if self.llm_attention_count_head and self.llm_attention_query_side:
            raise ValueError("llm_attention_query_side recomputes head 0 only; llm_attention_count_head must be 0 with it.")
        if self.llm_attention_query_side and not self.loss_weight_llm_attention:
            raise ValueError("llm_attention_query_side recomputes the attention loss's heads: it needs "
                             "loss_weight_llm_attention > 0.")

    def _check_schedule_options(self):
        _check_at_least("max_nonfinite_steps", self.max_nonfinite_steps, 1)
        _check_at_least("heuristic_short_words", self.heuristic_short_words, 0)
        if not 0 < self.tier_collapse_share <= 1:
            raise ValueError(f"tier_collapse_share must be in (0, 1], got {self.tier_collapse_share}.")
        self.train_tier_weights = _tier_weights(self.train_tier_weights)
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False: ArrCocCollator reads the raw rows.")
        if self.curriculum_easy_steps and not self.curriculum_easy_families:
            raise ValueError("curriculum_easy_steps needs curriculum_easy_families (task families of the easy part).")
        if self.early_stopping_patience is not None:
            _check_at_least("early_stopping_patience", self.early_stopping_patience, 1)
            if not self.load_best_model_at_end or self.metric_for_best_model is None:
                raise ValueError("early_stopping_patience needs load_best_model_at_end: true and "
                                 "metric_for_best_model.")


def _check_budget(name, value, modes):
    if value not in modes and not str(value).isdigit():
        raise ValueError(f"{name} must be one of {list(modes)} or a tier value such as 64, got {value!r}.")


def _check_at_least(name, value, low):
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}.")


def _tier_weights(value) -> dict | None:
    """{tier value: weight} with int keys (YAML gives ints; JSON, e.g. training_args.json, gives strings) and float
    weights, each finite and >= 0, with a positive sum. A list is refused: positional weights silently moved to
    other tiers whenever the tier list changed."""
    if value is None:
        return None
    if isinstance(value, str):  # a command line or JSON text: {4: 0.5} or {"4": 0.5}
        value = yaml.safe_load(value)
    if not isinstance(value, dict):
        raise ValueError(f"train_tier_weights maps tier values to weights, e.g. {{4: 0.5, 8: 0.35, 16: 0.15}}; got "
                         f"{value!r} (a list by position is no longer read: key each weight by its tier).")
    try:
        weights = {int(tier): float(weight) for tier, weight in value.items()}
    except (TypeError, ValueError):
        raise ValueError(f"train_tier_weights maps tier values (integers) to weights (numbers), got "
                         f"{value!r}.") from None
    if not weights or any(not math.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"train_tier_weights must be finite, non-negative, with a positive sum, got {value!r}.")
    return weights


def _grad_norm_ranges(value) -> dict:
    ranges = {name: list(bounds) for name, bounds in DEFAULT_GRAD_NORM_RANGES.items()}
    ranges.update(json.loads(value) if isinstance(value, str) else (value or {}))
    for name, bounds in ranges.items():
        if name not in COMPONENTS:
            raise ValueError(f"grad_norm_ranges: unknown component {name!r}; expected some of {list(COMPONENTS)}.")
        if len(bounds) != 2 or not 0 <= bounds[0] < bounds[1]:
            raise ValueError(f"grad_norm_ranges[{name!r}] must be [low, high] with 0 <= low < high, got {bounds}.")
    return ranges


__all__ = [
    "ArrCocTrainingArguments",
    "DEFAULT_GRAD_NORM_RANGES",
    "EVAL_BUDGETS",
    "FIXED_SELECTIONS",
    "TRAINER_TERMS",
    "TRAINING_CONFIG",
    "WEIGHTED_TERMS",
]
