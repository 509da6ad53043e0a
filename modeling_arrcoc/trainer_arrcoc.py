"""ArrCocTrainer: the Hugging Face Trainer with ARR-COC's weighted losses, per-component learning rates, budget
calibration, cached SAM features and diagnostics (per-component losses and gradient norms, tier histogram).

How the budget predictor learns. The tier is an argmax, so the answer loss cannot reach the budget logits. Two
signals do: the efficiency loss (expected tokens / max tokens under the softmax of the budget logits) pushes
toward small tiers, and calibration pulls toward the tier the question needs. Every `calibration_every` optimizer
steps, on the first `calibration_samples` rows of the batch, the trainer runs the model at every tier under
`torch.no_grad()` (SAM features computed once), takes each sample's answer loss per tier, picks the smallest tier
whose loss is within `calibration_tolerance` (nats per answer token) of that sample's best, and adds a
cross-entropy of the batch forward's budget logits toward that tier (`budget_loss`, weight `loss_weight_budget`).
Calibration runs only in phases that train the budget predictor (the allocator). With `calibration_max_loss`
set, a sample that no tier answers (every tier's loss above it) targets the smallest tier: spending more tokens
buys nothing there, and the near-equal losses of a question the model cannot answer would otherwise pick a
tier at random (measured: families at chance then spread the predictor over every tier for no reason).

Multi-budget training. Where the budget is not predicted (pretrain, phase2), one tier is drawn per optimizer
step from (seed, step), the same on every process and every micro-batch, so CLIP and the adapter learn every
tier, each batch pads nothing, and an interrupted run replays the same tiers on resume.

Non-finite steps. When any micro-batch of an optimizer step (on any process) has a non-finite loss, or the
gradient is non-finite, all gradients are dropped before the optimizer step: AdamW skips parameters without a
gradient, so weights and optimizer state are untouched (the learning-rate schedule still advances one step).
`max_nonfinite_steps` such steps in a row raise `NonFiniteLossError`; checkpoints already saved stay intact.
Under DeepSpeed the engine steps inside `backward`, so there steps are counted but not skipped, and
per-component gradient norms are not logged.

Multi-resolution training is not offered: every preset (tiny, demo, base) has one SAM input size.
"""

import json
import math
import os
import random
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from accelerate.utils import DistributedType, gather_object
from torch.nn import functional as F
from torch.utils.data import DataLoader
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from .data.sampler import (
    IndexedCollator,
    TierGroupedBatchSampler,
    curriculum_indices,
    question_tiers,
    with_sample_index,
)
from .modeling_arrcoc import LOSS_COMPONENTS
from .phases import BUDGET_MODES, COMPONENTS, PHASES, check_phase, component_parameters, trainable_parameter_counts

logger = logging.get_logger(__name__)

WEIGHTED_TERMS = LOSS_COMPONENTS + ("budget",)
EVAL_BUDGETS = ("auto", "full", "heuristic")
DEFAULT_GRAD_NORM_RANGES = {name: [1e-8, 100.0] for name in COMPONENTS}


def _help(text):
    return {"help": text}


@dataclass
class ArrCocTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus ARR-COC's phase, learning rates, loss weights, budget and diagnostics settings.

    Read from a phase YAML with `HfArgumentParser(...).parse_yaml_file(path, allow_extra_keys=False)`: unknown
    keys are refused. Every field is checked in `__post_init__`, before any model or data is loaded.
    """

    phase: str = field(default="phase1", metadata=_help(f"Curriculum phase, one of {list(PHASES)} (phases.py)."))
    sam_unfreeze_last_n: int = field(default=0, metadata=_help("phase1: also train the last N SAM blocks + neck."))
    llm_unfreeze_last_n: int = field(default=0, metadata=_help("phase2: also train the last N LLM layers + norm."))
    lora_rank: int = field(default=0, metadata=_help("phase2: LoRA rank on the LLM (0 = no LoRA); merged at save."))
    lora_alpha: int = field(default=16, metadata=_help("LoRA scaling numerator (scale = alpha / rank)."))
    lora_dropout: float = field(default=0.0, metadata=_help("Dropout on the LoRA branch."))
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], metadata=_help("LLM modules given LoRA.")
    )
    learning_rate_vision_tower: float | None = field(default=None, metadata=_help("SAM LR; None = learning_rate."))
    learning_rate_allocator: float | None = field(default=None, metadata=_help("Allocator LR; None = learning_rate."))
    learning_rate_clip_encoder: float | None = field(default=None, metadata=_help("CLIP LR; None = learning_rate."))
    learning_rate_quality_adapter: float | None = field(default=None, metadata=_help("Adapter LR; None = base LR."))
    learning_rate_language_model: float | None = field(default=None, metadata=_help("LLM LR (LoRA included)."))
    learning_rate_lm_head: float | None = field(default=None, metadata=_help("lm_head LR; None = the LLM's."))
    loss_weight_answer: float = field(default=1.0, metadata=_help("Weight of the answer cross-entropy."))
    loss_weight_efficiency: float = field(default=0.05, metadata=_help("Efficiency weight after its warm-up."))
    efficiency_weight_start: float = field(default=0.001, metadata=_help("Efficiency weight at step 0."))
    efficiency_warmup_steps: int = field(default=0, metadata=_help("Linear ramp start -> final; 0 = no ramp."))
    loss_weight_alignment: float = field(default=0.5, metadata=_help("Weight of the answer-region alignment loss."))
    loss_weight_vet_kl: float = field(default=0.01, metadata=_help("Weight of the VET usage KL."))
    loss_weight_budget: float = field(default=1.0, metadata=_help("Weight of the calibration cross-entropy."))
    train_budget: str = field(
        default="phase",
        metadata=_help(f"'phase' (the phase table's mode), one of {list(BUDGET_MODES)}, or a fixed tier value."),
    )
    train_tier_weights: list[float] | None = field(
        default=None,
        metadata=_help("Relative weights of the tiers in the 'random' (multi-budget) draw, one per config.budgets "
                       "entry; None = uniform. Few tokens make the language model's lookup far faster to learn "
                       "(8 tokens: learned in ~300 steps; 64 tokens: 24% after 400, measured), so the demo "
                       "pretrain favours small tiers."),
    )
    eval_budget: str = field(default="auto", metadata=_help(f"One of {list(EVAL_BUDGETS)} or a fixed tier value."))
    heuristic_short_words: int = field(default=5, metadata=_help("Heuristic: at most this many words = short."))
    group_by_tier: bool = field(
        default=False, metadata=_help("Batches of one heuristic tier (TierGroupedBatchSampler); no padding.")
    )
    calibration_every: int = field(default=10, metadata=_help("Calibrate the budget every N steps; 0 = never."))
    calibration_samples: int = field(default=4, metadata=_help("Rows of the batch calibrated (one forward/tier)."))
    calibration_tolerance: float = field(default=0.05, metadata=_help("Nats/token a smaller tier may lose."))
    calibration_max_loss: float | None = field(
        default=None, metadata=_help("Nats/token above which a tier does not answer; unanswered -> smallest tier.")
    )
    cache_sam_features: bool = field(
        default=False, metadata=_help("Cache frozen SAM features by training-row index (SAM must be frozen).")
    )
    sam_cache_dtype: str = field(default="float32", metadata=_help("'float32' or 'bfloat16' (half the memory)."))
    logits_on_labels_only: bool = field(default=True, metadata=_help("LM head only where labels exist (faster)."))
    grad_normalization: str = field(
        default="none", metadata=_help("'none' or 'visual_tokens': scale each batch's loss by mean tier K / its K.")
    )
    curriculum_easy_families: list[str] = field(
        default_factory=list, metadata=_help("Task families of the curriculum's easy stretch (column 'task').")
    )
    curriculum_easy_steps: int = field(default=0, metadata=_help("Optimizer steps on easy families first; 0 = off."))
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
        self._check_phase_and_budget()
        self._check_losses()
        self._check_schedule_options()
        self.grad_norm_ranges = _grad_norm_ranges(self.grad_norm_ranges)
        if self.curriculum_easy_steps:
            self.train_sampling_strategy = "sequential"  # the curriculum order is written into the dataset
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
            # Launched as several processes on a machine without accelerators (`accelerate launch --multi_gpu`
            # on CPU): without use_cpu, accelerate would run each process alone instead of gloo DDP.
            self.use_cpu = True
        super().__post_init__()

    @property
    def training_budget(self) -> str:
        """The budget mode of the training forward, after resolving 'phase' through the phase table."""
        return PHASES[self.phase].budget if self.train_budget == "phase" else self.train_budget

    def _check_phase_and_budget(self):
        check_phase(self.phase, sam_unfreeze_last_n=self.sam_unfreeze_last_n,
                    llm_unfreeze_last_n=self.llm_unfreeze_last_n, lora_rank=self.lora_rank)
        _check_budget("train_budget", self.train_budget, ("phase",) + BUDGET_MODES)
        _check_budget("eval_budget", self.eval_budget, EVAL_BUDGETS)
        if self.group_by_tier and self.training_budget != "heuristic":
            raise ValueError("group_by_tier needs per-sample tiers known before the forward: train_budget "
                             f"'heuristic' (got {self.training_budget!r}).")
        if self.cache_sam_features and self._trains_sam():
            raise ValueError(f"cache_sam_features needs a frozen SAM, but {self.phase} with "
                             f"sam_unfreeze_last_n={self.sam_unfreeze_last_n} trains it.")
        if self.sam_cache_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"sam_cache_dtype must be 'float32' or 'bfloat16', got {self.sam_cache_dtype!r}.")

    def _trains_sam(self) -> bool:
        return "vision_tower" in PHASES[self.phase].trains or self.sam_unfreeze_last_n > 0

    def _check_losses(self):
        weights = {name: getattr(self, f"loss_weight_{name}") for name in WEIGHTED_TERMS}
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
        if self.calibration_max_loss is not None and self.calibration_max_loss <= 0:
            raise ValueError(f"calibration_max_loss must be > 0 or null, got {self.calibration_max_loss}.")
        if self.grad_normalization not in ("none", "visual_tokens"):
            raise ValueError(f"grad_normalization must be 'none' or 'visual_tokens', got {self.grad_normalization!r}.")

    def _check_schedule_options(self):
        _check_at_least("max_nonfinite_steps", self.max_nonfinite_steps, 1)
        _check_at_least("heuristic_short_words", self.heuristic_short_words, 0)
        if not 0 < self.tier_collapse_share <= 1:
            raise ValueError(f"tier_collapse_share must be in (0, 1], got {self.tier_collapse_share}.")
        if self.train_tier_weights is not None and (min(self.train_tier_weights) < 0 or sum(self.train_tier_weights) <= 0):
            raise ValueError(f"train_tier_weights must be non-negative with a positive sum, got {self.train_tier_weights}.")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False: ArrCocCollator reads the raw rows.")
        if self.curriculum_easy_steps and not self.curriculum_easy_families:
            raise ValueError("curriculum_easy_steps needs curriculum_easy_families (task families of the easy part).")
        if self.curriculum_easy_steps and self.group_by_tier:
            raise ValueError("The curriculum (a fixed row order) and group_by_tier (its own order) exclude each other.")
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


def _grad_norm_ranges(value) -> dict:
    ranges = {name: list(bounds) for name, bounds in DEFAULT_GRAD_NORM_RANGES.items()}
    ranges.update(json.loads(value) if isinstance(value, str) else (value or {}))
    for name, bounds in ranges.items():
        if name not in COMPONENTS:
            raise ValueError(f"grad_norm_ranges: unknown component {name!r}; expected some of {list(COMPONENTS)}.")
        if len(bounds) != 2 or not 0 <= bounds[0] < bounds[1]:
            raise ValueError(f"grad_norm_ranges[{name!r}] must be [low, high] with 0 <= low < high, got {bounds}.")
    return ranges


# ---------------------------------------------------------------------------------------------------------------
# Optimizer groups: one learning rate per component, found by module attribute, never by parameter-name pattern.
# ---------------------------------------------------------------------------------------------------------------


def component_param_groups(model, learning_rates: dict, weight_decay: float, decay_names: set) -> list[dict]:
    """Optimizer groups per component (decayed and non-decayed parameters apart), trainable parameters only."""
    names = {id(param): name for name, param in model.named_parameters()}
    groups = []
    for component, params in component_parameters(model).items():
        trainable = [p for p in params if p.requires_grad]
        decay = [p for p in trainable if names[id(p)] in decay_names]
        rest = [p for p in trainable if names[id(p)] not in decay_names]
        lr = learning_rates[component]
        groups.append({"name": component, "params": decay, "lr": lr, "weight_decay": weight_decay})
        groups.append({"name": f"{component}:no_decay", "params": rest, "lr": lr, "weight_decay": 0.0})
    return [group for group in groups if group["params"]]


def check_param_groups(model, groups: list[dict]):
    """Every trainable parameter in exactly one group, and no frozen one in any (frozen = no optimizer state)."""
    counts = Counter(id(p) for group in groups for p in group["params"])
    named = {id(p): (name, p.requires_grad) for name, p in model.named_parameters()}
    missing = [name for key, (name, trains) in named.items() if trains and counts[key] == 0]
    repeated = [named.get(key, ("<not in model>",))[0] for key, count in counts.items() if count > 1]
    frozen = [named.get(key, ("<not in model>",))[0] for key in counts if not named.get(key, ("", False))[1]]
    if missing or repeated or frozen:
        raise AssertionError(
            f"Bad optimizer groups: trainable but in no group {missing[:5]}, in several groups {repeated[:5]}, "
            f"frozen or foreign but grouped {frozen[:5]}."
        )


# ---------------------------------------------------------------------------------------------------------------
# Budget calibration.
# ---------------------------------------------------------------------------------------------------------------


def per_sample_answer_loss(model, inputs: dict, budget) -> torch.Tensor:
    """Mean answer cross-entropy per sample [B] at `budget`. Rows without answer tokens get 0."""
    out = model(**inputs, budget=budget, logits_on_labels_only=True)
    targets = inputs["labels"][:, 1:]
    counts = (targets != -100).sum(-1)
    # logits_on_labels_only returns label positions row by row, in the order of the (unspliced) labels.
    token_losses = F.cross_entropy(out.logits.float(), targets[targets != -100], reduction="none")
    rows = torch.arange(targets.shape[0], device=targets.device).repeat_interleave(counts)
    sums = torch.zeros(targets.shape[0], device=token_losses.device).index_add_(0, rows, token_losses)
    return sums / counts.clamp(min=1)


def smallest_sufficient_tier(losses: torch.Tensor, tolerance: float, max_loss: float | None = None) -> torch.Tensor:
    """[B, T] losses per tier -> [B] index of the smallest tier within `tolerance` of the sample's best; with
    `max_loss`, rows whose best loss exceeds it (no tier answers) get tier 0."""
    best = losses.min(-1, keepdim=True).values
    sufficient = losses <= best + tolerance
    if max_loss is not None:
        sufficient[:, 0] |= best.squeeze(-1) > max_loss
    return sufficient.int().argmax(-1)  # argmax returns the first (smallest) sufficient tier


@torch.no_grad()
def oracle_tiers(model, inputs: dict, tolerance: float, max_loss: float | None = None) -> torch.Tensor:
    """The oracle-minimal tier of each sample: every tier is run, SAM only once."""
    inputs = dict(inputs)
    pixel_values = inputs.pop("pixel_values", None)
    if inputs.get("patch_features") is None:
        inputs["patch_features"] = model.model.get_patch_features(pixel_values)
    with _eval_mode(model):
        losses = [per_sample_answer_loss(model, inputs, value) for value in model.config.budgets]
    return smallest_sufficient_tier(torch.stack(losses, dim=-1), tolerance, max_loss)


@contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def step_tier(seed: int, step: int, num_tiers: int, weights: list[float] | None = None) -> int:
    """The multi-budget tier of an optimizer step: a pure function of (seed, step), so every process and
    micro-batch of the step agree and a resumed run replays it."""
    draw = random.Random(seed * 1_000_003 + step)
    if weights is None:
        return draw.randrange(num_tiers)
    if len(weights) != num_tiers:
        raise ValueError(f"train_tier_weights has {len(weights)} entries for {num_tiers} tiers.")
    return draw.choices(range(num_tiers), weights=weights)[0]


# ---------------------------------------------------------------------------------------------------------------
# Cached SAM features and the non-finite guard.
# ---------------------------------------------------------------------------------------------------------------


class SamFeatureCache:
    """Frozen-SAM patch features keyed by training-row index, computed the first time a row is seen and kept in
    memory (rows x patches x channels x bytes: demo 256 x 128 x 4 B = 128 KiB a row). Only valid while SAM is
    frozen; the trainer refuses to build one otherwise."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.features = {}
        self.hits = 0
        self.misses = 0

    @torch.no_grad()
    def lookup(self, model, pixel_values: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
        rows = sample_index.tolist()
        missing = [i for i, row in enumerate(rows) if row not in self.features]
        if missing:
            computed = model.model.get_patch_features(pixel_values[missing]).to(self.dtype)
            self.features.update({rows[i]: feature for i, feature in zip(missing, computed)})
        self.misses += len(missing)
        self.hits += len(rows) - len(missing)
        return torch.stack([self.features[row] for row in rows]).to(pixel_values.dtype)


class NonFiniteLossError(RuntimeError):
    """Raised after `max_nonfinite_steps` consecutive optimizer steps with a non-finite loss or gradient."""


@dataclass
class NonFiniteGuard:
    limit: int
    total: int = 0
    consecutive: int = 0

    def good(self):
        self.consecutive = 0

    def bad(self, step: int, output_dir: str):
        self.total += 1
        self.consecutive += 1
        logger.warning(f"Step {step}: non-finite loss or gradient; optimizer update skipped "
                       f"({self.consecutive} in a row, limit {self.limit}).")
        if self.consecutive >= self.limit:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive optimizer steps (up to step {step}) had a non-finite loss or "
                f"gradient, so training stopped. The last checkpoint ({get_last_checkpoint(output_dir)}) is intact: "
                "lower the learning rate or check the data, then resume_from_checkpoint."
            )


# ---------------------------------------------------------------------------------------------------------------
# The trainer.
# ---------------------------------------------------------------------------------------------------------------


def _check_phase_applied(model, args):
    """Components the phase trains are fully trainable; the others are frozen unless a phase option opens them."""
    spec = PHASES[args.phase]
    optional = {"vision_tower": args.sam_unfreeze_last_n, "language_model": args.llm_unfreeze_last_n or args.lora_rank}
    for name, (trainable, total) in trainable_parameter_counts(model).items():
        expected = total if name in spec.trains else None if optional.get(name) else 0
        if expected is not None and trainable != expected:
            raise ValueError(
                f"{name} has {trainable:,} of {total:,} parameters trainable, which is not {args.phase}: call "
                f"apply_phase(model, {args.phase!r}, ...) with the same options before building the trainer."
            )


class ArrCocTrainer(Trainer):
    """`Trainer` for `ArrCocForConditionalGeneration` with `ArrCocTrainingArguments` (see the module docstring).

    Apply the phase (`phases.apply_phase`) before building the trainer: the optimizer groups are the parameters
    that require grad at that moment.
    """

    def __init__(self, model, args: ArrCocTrainingArguments, data_collator, train_dataset=None, **kwargs):
        if data_collator is None:
            raise ValueError("ArrCocTrainer needs a data_collator (ArrCocCollator) that reads the rows.")
        _check_phase_applied(model, args)
        collator = IndexedCollator(data_collator, len(model.config.budgets), args.heuristic_short_words)
        train_dataset = self._prepare_train_dataset(train_dataset, args)
        super().__init__(model=model, args=args, data_collator=collator, train_dataset=train_dataset, **kwargs)
        self.model_accepts_loss_kwargs = False  # compute_loss returns per-batch means; the Trainer divides by GA
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._step_nonfinite = False
        self._collapsed_tier = None
        self.nonfinite = NonFiniteGuard(args.max_nonfinite_steps)
        self.feature_cache = self._make_feature_cache(model)
        self._check_model(model)
        if args.early_stopping_patience is not None:
            self.add_callback(EarlyStoppingCallback(args.early_stopping_patience, args.early_stopping_threshold))

    @staticmethod
    def _prepare_train_dataset(dataset, args):
        if dataset is None:
            return None
        if args.cache_sam_features:
            dataset = with_sample_index(dataset)
        if args.curriculum_easy_steps:
            global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            num_easy = args.curriculum_easy_steps * global_batch
            order = curriculum_indices(dataset["task"], args.curriculum_easy_families, num_easy, args.seed)
            dataset = dataset.select(order)
        return dataset

    def _make_feature_cache(self, model):
        if not self.args.cache_sam_features:
            return None
        if any(p.requires_grad for p in model.model.vision_tower.parameters()):
            raise ValueError("cache_sam_features needs a frozen vision tower; apply the phase first.")
        return SamFeatureCache(getattr(torch, self.args.sam_cache_dtype))

    def _check_model(self, model):
        budgets = model.config.budgets
        for name in ("training_budget", "eval_budget"):
            value = getattr(self.args, name)
            if value.isdigit() and int(value) not in budgets:
                raise ValueError(f"{name}={value} is not a tier of this model; its tiers are {budgets}.")

    # -- optimizer -------------------------------------------------------------------------------------------

    def component_learning_rates(self) -> dict[str, float]:
        args = self.args
        rates = {name: getattr(args, f"learning_rate_{name}") for name in COMPONENTS}
        if rates["lm_head"] is None:
            rates["lm_head"] = rates["language_model"]
        return {name: args.learning_rate if rate is None else rate for name, rate in rates.items()}

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            target = self.accelerator.unwrap_model(self.model if model is None else model)
            decay_names = set(self.get_decay_parameter_names(target))
            groups = component_param_groups(target, self.component_learning_rates(), self.args.weight_decay,
                                            decay_names)
            check_param_groups(target, groups)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, target)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # -- data --------------------------------------------------------------------------------------------------

    def get_train_dataloader(self):
        if not self.args.group_by_tier:
            return super().get_train_dataloader()
        budgets = self.model.config.budgets
        tiers = question_tiers(list(self.train_dataset["question"]), len(budgets), self.args.heuristic_short_words)
        seed = self.args.seed if self.args.data_seed is None else self.args.data_seed
        sampler = TierGroupedBatchSampler(tiers, self._train_batch_size, seed, self.args.dataloader_drop_last)
        loader = DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    # -- loss --------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        sample_index, tiers = inputs.pop("sample_index", None), inputs.pop("budget_tier", None)
        unwrapped = self.accelerator.unwrap_model(model)
        if self.feature_cache is not None and sample_index is not None:
            inputs["patch_features"] = self.feature_cache.lookup(unwrapped, inputs.pop("pixel_values"), sample_index)
        budget = self.budget_for(mode, tiers, unwrapped.config.budgets)
        outputs = model(**inputs, budget=budget, logits_on_labels_only=self.args.logits_on_labels_only)
        components = {name: getattr(outputs, f"{name}_loss") for name in LOSS_COMPONENTS}
        if mode == "train" and self._calibration_due(unwrapped):
            components["budget"] = self.calibration_loss(unwrapped, inputs, outputs.budget_logits)
        loss = self.weighted_loss(components, outputs.visual_token_counts, unwrapped.config)
        self._record(mode, components, outputs, unwrapped.config.budgets)
        return (loss, outputs) if return_outputs else loss

    def budget_for(self, mode: str, tiers, budgets: list[int]):
        """The `budget` argument of this batch's forward (tier values, never indices: see `_resolve_tier`)."""
        name = self.args.training_budget if mode == "train" else self.args.eval_budget
        if name in ("auto", "full"):
            return name
        if name == "random":
            tier = step_tier(self.args.seed, self.state.global_step, len(budgets), self.args.train_tier_weights)
            return budgets[tier]
        if name == "heuristic":
            return [budgets[t] for t in tiers.tolist()]
        return int(name)

    def loss_weights(self) -> dict[str, float]:
        """The weight of each loss term at the current step (the efficiency weight ramps up)."""
        args = self.args
        weights = {name: getattr(args, f"loss_weight_{name}") for name in WEIGHTED_TERMS}
        if args.efficiency_warmup_steps:
            progress = min(1.0, self.state.global_step / args.efficiency_warmup_steps)
            start = args.efficiency_weight_start
            weights["efficiency"] = start + progress * (args.loss_weight_efficiency - start)
        return weights

    def weighted_loss(self, components: dict, visual_token_counts, config) -> torch.Tensor:
        weights = self.loss_weights()
        terms = [weights[name] * value.float() for name, value in components.items()
                 if weights[name] and value is not None]
        loss = torch.stack(terms).sum()
        if self.args.grad_normalization == "visual_tokens":
            # Batches at large K send gradient through more visual tokens; scale them back to the mean tier.
            mean_tier = sum(min(b, config.num_patches) for b in config.budgets) / len(config.budgets)
            loss = loss * mean_tier / visual_token_counts.float().mean()
        return loss

    def _calibration_due(self, model) -> bool:
        every = self.args.calibration_every
        if not every or self.state.global_step % every:
            return False
        return any(p.requires_grad for p in model.model.allocator.budget_predictor.parameters())

    def calibration_loss(self, model, inputs: dict, budget_logits: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the first rows' budget logits toward their oracle-minimal tiers."""
        count = min(self.args.calibration_samples, budget_logits.shape[0])
        part = {key: value[:count] for key, value in inputs.items() if isinstance(value, torch.Tensor)}
        targets = oracle_tiers(model, part, self.args.calibration_tolerance, self.args.calibration_max_loss)
        return F.cross_entropy(budget_logits[:count].float(), targets)

    # -- steps: gradient norms, non-finite guard ----------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._step_nonfinite = self._step_nonfinite or not bool(torch.isfinite(loss))
        if self.accelerator.sync_gradients:
            self._end_of_accumulation(model)
        return loss

    def _end_of_accumulation(self, model):
        """After the last backward of an optimizer step, before clipping: norms, and the non-finite skip."""
        norms = self.component_grad_norms()
        bad = self._on_any_process(self._step_nonfinite) or not all(map(math.isfinite, norms.values()))
        self._step_nonfinite = False
        if bad:
            model.zero_grad(set_to_none=True)  # AdamW skips parameters without gradient: no update, no state
            self.nonfinite.bad(self.state.global_step + 1, self.args.output_dir)
            return
        self.nonfinite.good()
        for name, norm in norms.items():
            self._metrics["train"][f"grad_norm/{name}"].append(norm)

    def component_grad_norms(self) -> dict[str, float]:
        """L2 norm of each component's gradient (empty under DeepSpeed, whose engine holds the gradients)."""
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            return {}
        norms = {}
        for name, params in component_parameters(self.accelerator.unwrap_model(self.model)).items():
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                norms[name] = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        values = torch.stack(list(norms.values())).tolist() if norms else []
        return dict(zip(norms, values))

    def _on_any_process(self, flag: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return flag
        total = self.accelerator.reduce(torch.tensor(float(flag), device=self.args.device), reduction="sum")
        return bool(total > 0)

    # -- metrics -----------------------------------------------------------------------------------------------

    def _record(self, mode: str, components: dict, outputs, budgets: list[int]):
        metrics = self._metrics[mode]
        for name, value in components.items():
            if value is not None and torch.isfinite(value):
                metrics[f"{name}_loss"].append(value.item())
        metrics["visual_tokens_mean"].append(outputs.visual_token_counts.float().mean().item())
        shares = torch.bincount(outputs.budget_tiers, minlength=len(budgets)).float() / len(outputs.budget_tiers)
        for value, share in zip(budgets, shares.tolist()):
            metrics[f"tier_share/{value}"].append(share)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = self._mean_over_processes(self._metrics[mode])
        self._metrics[mode].clear()
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        else:
            self._warn_if_anomalous(metrics)
            metrics["nonfinite_steps"] = self.nonfinite.total
            metrics.update(self._learning_rates())
        logs.update(metrics)  # in place: evaluate() returns this dict, and metric_for_best_model reads it
        super().log(logs, start_time)

    def _mean_over_processes(self, store: dict) -> dict[str, float]:
        keys = sorted(store)
        if self.accelerator.num_processes > 1:
            keys = sorted(set(gather_object(keys)))
        if not keys:
            return {}
        sums = [[sum(store.get(key, [])), len(store.get(key, []))] for key in keys]
        sums = torch.tensor(sums, dtype=torch.float64, device=self.args.device)
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        return {key: total / count for key, (total, count) in zip(keys, sums.tolist()) if count}

    def _learning_rates(self) -> dict[str, float]:
        if self.optimizer is None:
            return {}
        return {f"lr/{group['name']}": group["lr"] for group in self.optimizer.param_groups
                if not group["name"].endswith(":no_decay")}

    def _warn_if_anomalous(self, metrics: dict):
        if not self.is_world_process_zero():
            return
        step = self.state.global_step
        for name, (low, high) in self.args.grad_norm_ranges.items():
            norm = metrics.get(f"grad_norm/{name}")
            if norm is not None and not low <= norm <= high:
                logger.warning(f"Step {step}: grad norm of {name} is {norm:.3g}, outside its range [{low}, {high}].")
        budgets = self.model.config.budgets
        shares = [metrics.get(f"tier_share/{value}", 0.0) for value in budgets]
        collapsed = self.args.training_budget == "auto" and max(shares) >= self.args.tier_collapse_share
        tier = budgets[shares.index(max(shares))] if collapsed and len(budgets) > 1 else None
        if tier is not None and tier != self._collapsed_tier:  # once per collapse, not at every log
            logger.warning(f"Step {step}: the tier histogram collapsed: {max(shares):.0%} of samples at tier {tier}.")
        self._collapsed_tier = tier


__all__ = [
    "ArrCocTrainer",
    "ArrCocTrainingArguments",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "SamFeatureCache",
    "check_param_groups",
    "component_param_groups",
    "oracle_tiers",
    "per_sample_answer_loss",
    "smallest_sufficient_tier",
    "step_tier",
]
