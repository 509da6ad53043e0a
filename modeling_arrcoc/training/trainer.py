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
gradient is non-finite, the step is skipped: weights, optimizer state and the learning-rate schedule are as if
the step's batches had not been drawn (the step still counts in `global_step`, so the data and the per-step tier
draw move on). Without DeepSpeed, all gradients are dropped before the optimizer step (AdamW skips parameters
without a gradient) and the optimizer is marked as having skipped its step (accelerate's `step_was_skipped`,
which the Trainer reads before stepping the schedule); under fp16 with a gradient scaler the gradients are set
to NaN instead, so that the scaler skips the step (and lowers its scale). Under DeepSpeed the engine steps
inside the last micro-batch's `backward`, before the trainer sees the gradients: there the trainer decides
before that backward (all processes agree) and, for a bad step, makes the loss NaN, so that every process's
gradient is non-finite and DeepSpeed's own overflow check skips the optimizer and its schedule (ZeRO checks the
gradients for inf/NaN in fp16 and bf16, and the gradient norm in fp32); the trainer then reads
`engine.was_step_applied()` and raises if DeepSpeed applied the step anyway, rather than continue silently. A
step DeepSpeed skipped by itself (an overflow with a finite loss; fp16's loss-scale search aside) counts as
non-finite too. DeepSpeed 0.19's ZeRO-3 checks for overflow only under fp16, so ZeRO-3 in bf16 or fp32 (and a
DeepSpeed engine without ZeRO) cannot skip a step: there the first non-finite step raises `NonFiniteLossError`
before its update, and the run stops with its checkpoints intact.
`max_nonfinite_steps` such steps in a row raise `NonFiniteLossError`; checkpoints already saved stay intact.
Under DeepSpeed per-component gradient norms are not logged.

Multi-resolution training is not offered: every preset (tiny, demo, base) has one SAM input size.
"""

import math
from collections import defaultdict

import torch
from accelerate.utils import DistributedType, gather_object
from torch.nn import functional as F
from torch.utils.data import DataLoader
from transformers import EarlyStoppingCallback, Trainer
from transformers.utils import logging

from ..data.sampler import IndexedCollator, TierGroupedBatchSampler, curriculum_indices, question_tiers, with_sample_index
from ..losses import LOSS_COMPONENTS, LOSS_TERMS, WEIGHTED_TERMS, answer_window, token_targets, weighted_loss
from .arguments import COMPONENTS, ArrCocTrainingArguments
from .calibration import calibration_targets, predicts_budget, step_tier
from .guards import NonFiniteGuard, NonFiniteLossError, SamFeatureCache, last_checkpoint
from .optim import check_param_groups, component_param_groups
from .phases import component_parameters, trainable_parameter_counts
from .reader import (curriculum_tier_cap, llm_attention_loss, query_side_attentions, question_attention_loss,
                     sparse_view_scores, step_view, visual_words_loss)

logger = logging.get_logger(__name__)


def _check_layers(model, name: str, layers: list):
    count = model.config.text_config.num_hidden_layers
    if not layers or any(not 0 <= i < count for i in layers):
        raise ValueError(f"{name} must be layers of the language model (0-{count - 1}), got {layers}.")


def _check_phase_applied(model, args):
    """Components the phase trains are fully trainable; the others are frozen unless a phase option opens them."""
    optional = {"vision_tower": args.sam_unfreeze_last_n, "language_model": args.llm_unfreeze_last_n or args.lora_rank}
    trains = args.trained_components
    for name, (trainable, total) in trainable_parameter_counts(model).items():
        expected = total if name in trains else None if optional.get(name) else 0
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
        self._deepspeed_bad = False
        self._collapsed_tier = None
        self.nonfinite = NonFiniteGuard(args.max_nonfinite_steps)
        self.feature_cache = self._make_feature_cache(model)
        self._check_model(model)
        for weight, name in (("llm_attention", "llm_attention_layers"),
                             ("question_attention", "question_attention_layers"),
                             ("llm_visual_words", "llm_visual_words_layers")):
            if args.loss_weight(weight):
                _check_layers(model, name, getattr(args, name))
        if args.loss_weight_question_attention or (args.loss_weight_llm_attention and not args.llm_attention_query_side):
            # Attention probabilities are only returned by eager attention (sdpa computes them fused).
            model.model.language_model.set_attn_implementation("eager")
        if args.early_stopping_patience is not None:
            self.add_callback(EarlyStoppingCallback(args.early_stopping_patience, args.early_stopping_threshold))

    @staticmethod
    def _prepare_train_dataset(dataset, args):
        if dataset is None:
            return None
        if not hasattr(dataset, "__len__"):  # streamed (IterableDataset): no row index, no length
            indexed = [name for name in ("cache_sam_features", "curriculum_easy_steps", "group_by_tier")
                       if getattr(args, name)]
            if args.max_steps <= 0:
                raise ValueError("A streamed training set has no length: set max_steps.")
            if indexed:
                raise ValueError(f"{', '.join(indexed)} index training rows: not available with a streamed set.")
            return dataset
        if args.cache_sam_features:
            dataset = with_sample_index(dataset)
        if args.curriculum_easy_steps:
            num_easy = ArrCocTrainer._curriculum_rows(args)
            order = curriculum_indices(dataset["task"], args.curriculum_easy_families, num_easy, args.seed)
            dataset = dataset.select(order)
        return dataset

    @staticmethod
    def _curriculum_rows(args) -> int:
        """Rows of the curriculum's easy stretch: its optimizer steps x the global batch."""
        global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        return args.curriculum_easy_steps * global_batch

    def _make_feature_cache(self, model):
        if not self.args.cache_sam_features:
            return None
        if any(p.requires_grad for p in model.model.vision_tower.parameters()):
            raise ValueError("cache_sam_features needs a frozen vision tower; apply the phase first.")
        return SamFeatureCache(getattr(torch, self.args.sam_cache_dtype), cache_dir=self.args.sam_cache_dir)

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.feature_cache is not None:
                self.feature_cache.flush()  # the rows computed since the last shard, for the next run

    def _check_model(self, model):
        budgets = model.config.budgets
        for name in ("training_budget", "eval_budget"):
            value = getattr(self.args, name)
            if value.isdigit() and int(value) not in budgets:
                raise ValueError(f"{name}={value} is not a tier of this model; its tiers are {budgets}.")
        self.args.tier_weights(budgets)  # every weighted tier is one of the model's (raises naming it otherwise)
        # The model's own selection and tag are what forward uses: the arguments' must already be written there.
        for name in ("selection_method", "relevance_tag"):
            wanted = getattr(self.args, name)
            if wanted is not None and getattr(model.config, name) != wanted:
                raise ValueError(f"args.{name}={wanted!r} but model.config.{name}={getattr(model.config, name)!r}: "
                                 "write it into the model config before building the trainer (train.py does).")
        self.args.check_selection(model.config.selection_method)

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
        # With the curriculum, the dataset's first rows are its easy stretch: grouped apart and read first.
        head = self._curriculum_rows(self.args) if self.args.curriculum_easy_steps else 0
        sampler = TierGroupedBatchSampler(tiers, self._train_batch_size, seed, self.args.dataloader_drop_last,
                                          head=head)
        loader = DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    # -- loss --------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        sample_index, tiers = inputs.pop("sample_index", None), inputs.pop("budget_tier", None)
        turn_targets = inputs.pop("turn_patch_targets", None)
        count_rows = inputs.pop("count_answers", None)
        key_tokens = inputs.pop("turn_key_tokens", None)
        unwrapped = self.accelerator.unwrap_model(model)
        if self.feature_cache is not None and sample_index is not None:
            inputs["patch_features"] = self.feature_cache.lookup(unwrapped, inputs.pop("pixel_values"), sample_index)
        budget = self.budget_for(mode, tiers, unwrapped.config.budgets)
        view = self.view_for(mode)
        if view is not None:
            budget = self._view_inputs(unwrapped, inputs, view, turn_targets)
        supervise_attention = (mode == "train" and self.args.loss_weight_llm_attention > 0
                               and turn_targets is not None and view != "pooled")
        supervise_question = (mode == "train" and self.args.loss_weight_question_attention > 0
                              and key_tokens is not None)
        supervise_words = (mode == "train" and self.args.loss_weight_llm_visual_words > 0
                           and inputs.get("visual_targets") is not None)
        extra = {}
        if supervise_attention:  # the query-side loss recomputes its heads from the layers' inputs
            extra = {"output_hidden_states" if self.args.llm_attention_query_side else "output_attentions": True}
        if supervise_question:
            extra["output_attentions"] = True
        if supervise_words:
            extra["output_hidden_states"] = True
        window = answer_window(inputs["labels"]) if self.args.logits_on_labels_only else 0
        # Training's "auto" is the predictor's own tier (price 0), whatever price a fitted checkpoint it started from
        # carries: that price is chosen after training, for inference.
        outputs = model(**inputs, budget=budget, budget_cost=0.0, logits_to_keep=window, **extra)
        # Every model term the loss table names, by its output field (None where it was not computed).
        components = {name: getattr(outputs, LOSS_TERMS[name].field, None) for name in LOSS_COMPONENTS}
        if supervise_attention:
            components["llm_attention"] = self.attention_supervision(unwrapped, inputs, outputs, turn_targets,
                                                                     count_rows)
        if supervise_question:
            components["question_attention"] = question_attention_loss(
                outputs.attentions, self.args.question_attention_layers, inputs["input_ids"], inputs["attention_mask"],
                inputs["labels"], unwrapped.config.image_token_id, outputs.image_outputs.visual_token_mask, key_tokens)
        if supervise_words:
            image = outputs.image_outputs
            components["llm_visual_words"] = visual_words_loss(
                outputs.hidden_states, self.args.llm_visual_words_layers, inputs["input_ids"],
                inputs["attention_mask"], unwrapped.config.image_token_id, image.visual_token_mask,
                token_targets(inputs["visual_targets"], image.token_sources),
                unwrapped.model.quality_adapter.visual_embedding_table.weight)
        if mode == "train" and self._calibration_due(unwrapped):
            components["budget"] = self.calibration_loss(unwrapped, inputs, outputs.budget_logits)
        loss = self.weighted_loss(components, outputs.visual_token_counts, unwrapped.config)
        self._record(mode, components, outputs, unwrapped.config.budgets)
        if mode == "train" and self._deepspeed_step_is_next():
            loss = self._deepspeed_poison(model, loss)
        return (loss, outputs) if return_outputs else loss

    def attention_supervision(self, model, inputs, outputs, turn_targets, count_rows=None):
        """The reader stage's attention loss (reader.py) on the model's own attention, or on its heads recomputed
        with the visual positions detached (llm_attention_query_side)."""
        image, layers = outputs.image_outputs, self.args.llm_attention_layers
        attentions = outputs.attentions  # head 0 of each layer is supervised; recomputed, it is the only head
        if self.args.llm_attention_query_side:
            attentions = query_side_attentions(
                model.model.language_model, outputs.hidden_states, layers, 0, inputs["input_ids"],
                inputs["attention_mask"], model.config.image_token_id, image.visual_token_mask,
            )
        return llm_attention_loss(attentions, layers, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                  model.config.image_token_id, image.visual_token_mask, image.token_sources,
                                  turn_targets, head=0,
                                  count_rows=count_rows if self.args.llm_attention_count_sink else None,
                                  count_head=self.args.llm_attention_count_head,
                                  count_sink_weight=self.args.llm_attention_count_sink_weight)

    def view_for(self, mode: str) -> str | None:
        """This training step's view (reader.py), or None: the model's own selection at the phase's budget."""
        if mode != "train" or self.args.training_views is None:
            return None
        return step_view(self.args.seed, self.state.global_step, self.args.training_views)

    def _view_inputs(self, model, inputs: dict, view: str, turn_targets) -> int | str:
        """Rewrite `inputs` for `view` at this step's tier (capped by the distractor curriculum); returns the
        budget. "sparse" plans the selection here (answer patches + random distractors) and passes the plan."""
        args, budgets = self.args, model.config.budgets
        cap = curriculum_tier_cap(self.state.global_step, args.distractor_curriculum_steps, len(budgets))
        weights = (args.tier_weights(budgets) or [1.0] * len(budgets))[: cap + 1]
        weights = weights if sum(weights) > 0 else [0.0] * cap + [1.0]
        tier = budgets[step_tier(args.seed, self.state.global_step, cap + 1, weights)]
        if view == "full" and budgets[cap] < model.config.num_patches:
            view, tier = "sparse", budgets[cap]  # the curriculum has not reached every patch yet: its largest tier
        if view == "full" or (view == "sparse" and tier >= model.config.num_patches):
            inputs["selection"] = "full"
            return "full"
        if view == "pooled":
            inputs["selection"] = "uniform"
            return tier
        answers = turn_targets.amax(1) if turn_targets is not None else inputs.get("patch_targets")
        if answers is None:
            raise ValueError("The 'sparse' view keeps the answer patches: the batch needs answer boxes.")
        generator = torch.Generator().manual_seed(args.seed * 1_000_033 + self.state.global_step)
        features = inputs.pop("patch_features", None)
        pixels = inputs.pop("pixel_values", None)
        inputs["plan"] = model.model.plan_allocation(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"],
            pixel_values=pixels, patch_features=features, budget=tier, selection="learned",
            selection_scores=sparse_view_scores(answers, generator),
        )
        return tier

    def budget_for(self, mode: str, tiers, budgets: list[int]):
        """The `budget` argument of this batch's forward (tier values, never indices: see `_resolve_tier`)."""
        name = self.args.training_budget if mode == "train" else self.args.eval_budget
        if name in ("auto", "full"):
            return name
        if name == "random":
            tier = step_tier(self.args.seed, self.state.global_step, len(budgets), self.args.tier_weights(budgets))
            return budgets[tier]
        if name == "heuristic":
            return [budgets[t] for t in tiers.tolist()]
        return int(name)

    def loss_weights(self) -> dict[str, float]:
        """The weight of each loss term at the current step (the efficiency weight ramps up)."""
        args = self.args
        weights = {name: args.loss_weight(name) for name in WEIGHTED_TERMS}
        if args.efficiency_warmup_steps:
            progress = min(1.0, self.state.global_step / args.efficiency_warmup_steps)
            start = args.efficiency_weight_start
            weights["efficiency"] = start + progress * (args.loss_weight_efficiency - start)
        return weights

    def weighted_loss(self, components: dict, visual_token_counts, config) -> torch.Tensor:
        loss = weighted_loss(components, self.loss_weights())
        if self.args.grad_normalization == "visual_tokens":
            # Batches at large K send gradient through more visual tokens; scale them back to the mean tier.
            mean_tier = sum(min(b, config.num_patches) for b in config.budgets) / len(config.budgets)
            loss = loss * mean_tier / visual_token_counts.float().mean()
        return loss

    def _calibration_due(self, model) -> bool:
        every = self.args.calibration_every
        if not every or self.state.global_step % every or not predicts_budget(model):
            return False  # a baseline's selection follows no predicted budget: nothing to calibrate
        return any(p.requires_grad for p in model.model.allocator.budget_predictor.parameters())

    def calibration_loss(self, model, inputs: dict, budget_logits: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the first rows' budget logits toward their calibration targets (calibration.py)."""
        count = min(self.args.calibration_samples, budget_logits.shape[0])
        part = {key: value[:count] for key, value in inputs.items() if isinstance(value, torch.Tensor)}
        targets = calibration_targets(model, part, self.args.calibration_tolerance, self.args.calibration_max_loss,
                                      target=self.args.calibration_target)
        return F.cross_entropy(budget_logits[:count].float(), targets)

    # -- steps: gradient norms, non-finite guard ----------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._step_nonfinite = self._step_nonfinite or not bool(torch.isfinite(loss))
        if self.accelerator.sync_gradients:
            self._end_of_accumulation(model)
        return loss

    def _deepspeed_step_is_next(self) -> bool:
        """Under DeepSpeed, whether this micro-batch's backward runs the engine's optimizer step."""
        return self.accelerator.distributed_type == DistributedType.DEEPSPEED and self.accelerator.sync_gradients

    def _deepspeed_poison(self, engine, loss: torch.Tensor) -> torch.Tensor:
        """Before the backward that steps the DeepSpeed engine: when this optimizer step is bad on any process,
        a NaN loss, so that every process's gradient is non-finite and DeepSpeed's overflow check skips it."""
        self._deepspeed_bad = self._on_any_process(self._step_nonfinite or not bool(torch.isfinite(loss)))
        if not self._deepspeed_bad:
            return loss
        # DeepSpeed 0.19 checks gradients for overflow in ZeRO-1/2 (every precision) and under fp16; ZeRO-3 in
        # bf16/fp32 and plain (ZeRO-0) engines apply whatever the gradient is: stop before that step.
        if engine.zero_optimization_stage() not in (1, 2) and not engine.fp16_enabled():
            raise NonFiniteLossError(
                f"Step {self.state.global_step + 1}: non-finite loss under DeepSpeed ZeRO stage "
                f"{engine.zero_optimization_stage()} without fp16, whose engine cannot skip an optimizer step (it "
                "checks no overflow there). Training stopped before the step; the last checkpoint "
                f"({last_checkpoint(self.args.output_dir)}) is intact: use ZeRO-2, or lower the learning "
                "rate / check the data, then resume_from_checkpoint."
            )
        return loss * float("nan")

    def _end_of_accumulation(self, model):
        """After the last backward of an optimizer step, before clipping: norms, and the non-finite skip."""
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            return self._end_of_deepspeed_step(model)
        norms = self.component_grad_norms()
        bad = self._on_any_process(self._step_nonfinite) or not all(map(math.isfinite, norms.values()))
        self._step_nonfinite = False
        self._skip_optimizer_step(model, bad)
        if bad:
            self.nonfinite.bad(self.state.global_step + 1, self.args.output_dir)
            return
        self.nonfinite.good()
        for name, norm in norms.items():
            self._metrics["train"][f"grad_norm/{name}"].append(norm)

    def _skip_optimizer_step(self, model, skip: bool):
        """Make the coming optimizer step (and with it the learning-rate schedule) a no-op when `skip`."""
        if self.accelerator.scaler is not None:
            if skip:  # the scaler finds the NaN, skips the step, and accelerate reports it skipped
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.fill_(float("nan"))
            return
        if skip:
            model.zero_grad(set_to_none=True)  # AdamW skips parameters without gradient: no update, no state
        # accelerate's AcceleratedOptimizer.step_was_skipped (backed by _is_overflow, which its step only sets
        # under a scaler): the Trainer does not step the schedule after a skipped optimizer step.
        if not hasattr(self.optimizer, "_is_overflow"):
            raise RuntimeError("ArrCocTrainer expects accelerate's AcceleratedOptimizer (step_was_skipped) to skip "
                               f"non-finite steps, got {type(self.optimizer).__name__}.")
        self.optimizer._is_overflow = skip

    def _end_of_deepspeed_step(self, engine):
        """After the DeepSpeed engine stepped (inside backward): count the step, and check a bad one was skipped."""
        bad, self._deepspeed_bad, self._step_nonfinite = self._deepspeed_bad, False, False
        applied = engine.was_step_applied()
        if bad and applied:
            raise RuntimeError(
                f"Step {self.state.global_step + 1}: the loss was non-finite and DeepSpeed applied the optimizer step "
                "anyway (its overflow check did not catch the NaN gradient: check zero_optimization.compute_grad_norm "
                "and bf16.check_grad_overflow in the DeepSpeed config). Training stopped rather than continue from "
                "weights the non-finite step may have changed."
            )
        # A step DeepSpeed skipped by itself counts too, except fp16's loss-scale overflows (its scale search).
        if bad or not (applied or engine.fp16_enabled()):
            self.nonfinite.bad(self.state.global_step + 1, self.args.output_dir)
        else:
            self.nonfinite.good()

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
        for name, value in components.items():  # logged under each term's output field, as the table names it
            if value is not None and torch.isfinite(value):
                metrics[LOSS_TERMS[name].field].append(value.item())
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
]
