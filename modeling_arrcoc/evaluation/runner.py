"""Running methods over a dataset: SAM once per batch, `auto` batches split by the allocator's tiers, greedy answers,
measured visual tokens and wall time per method; `evaluate` ties running and the report together, for the
checkpoint under evaluation and for other trained checkpoints (baselines trained with their own selection) on the
same questions.
"""

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch
from tqdm.auto import tqdm

from ..explanation import prompt_batch
from ..methods import (AUTO_COST, CORRECT_THRESHOLD, SYNTHETIC_METRIC, Method, method_names, parse_method,
                       unsupported_reason)
from ..selection import SELECTIONS_TABLE
from .report import MethodRun, build_report, column, git_commit, write_predictions


@dataclass
class TrainedCheckpoint:
    """Another trained checkpoint evaluated on the same questions, each of its `methods` at its own selection
    (`methods.trained_methods`). `record` is what the report keeps about it (checkpoint path, its method, its
    training configuration)."""

    name: str
    model: object
    processor: object
    methods: list
    record: dict = field(default_factory=dict)


@dataclass
class EvalBatch:
    """One batch of prompts with its SAM features (computed once, shared by every method)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    question_ids: torch.Tensor
    question_mask: torch.Tensor
    features: torch.Tensor
    # {selection: [B, N] patch scores} of the external selections (query_sim), the same for every K
    external_scores: dict = field(default_factory=dict)


def external_selections(methods) -> list:
    """The selections among `methods` whose scores are made outside the allocator, once per batch."""
    names = dict.fromkeys(method.selection for method in methods)
    return [name for name in names if SELECTIONS_TABLE[name].external is not None]


def eval_batch(model, processor, rows, external=()) -> tuple:
    """Model inputs for rows, and the seconds of the work methods share on this batch: {"sam": s} (every method)
    and {selection: s} for each external selection in `external` (e.g. every query_sim@K), scored here once."""
    encoded = prompt_batch(processor, [r["image"] for r in rows], [r["question"] for r in rows])
    questions = processor.tokenizer([r["question"] for r in rows], add_special_tokens=False, padding=True,
                                    return_tensors="pt")
    start = time.perf_counter()
    features = model.model.get_patch_features(encoded["pixel_values"].to(model.device, model.dtype))
    _synchronize(model)
    shared = {"sam": time.perf_counter() - start}
    to = model.device
    batch = EvalBatch(encoded["input_ids"].to(to), encoded["attention_mask"].to(to), questions["input_ids"].to(to),
                      questions["attention_mask"].to(to), features)
    for name in external:
        start = time.perf_counter()
        batch.external_scores[name] = SELECTIONS_TABLE[name].external(
            model=model, patch_features=features, question_ids=batch.question_ids, question_mask=batch.question_mask)
        _synchronize(model)
        shared[name] = time.perf_counter() - start
    return batch, shared


def method_plan(model, batch: EvalBatch, method: Method, generator):
    """The model's allocation plan for `method` on `batch`: its budget and selection (an external selection swaps
    in its own scores and keeps everything else of the checkpoint's learned path)."""
    external = SELECTIONS_TABLE[method.selection].external is not None
    return model.plan_allocation(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, patch_features=batch.features,
        budget=method.budget, selection="learned" if external else method.selection,
        selection_scores=batch.external_scores.get(method.selection), generator=generator,
        budget_cost=method.budget_cost,
    )


@torch.no_grad()
def run_batch(model, processor, batch: EvalBatch, method: Method, max_new_tokens, generator) -> tuple:
    """(answers, visual token counts, tier indices) of one method on one batch, by the model's own generate
    (tier-grouped when the plan's tiers differ)."""
    plan = method_plan(model, batch, method, generator)
    tokenizer = processor.tokenizer
    sequences = model.generate(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, plan=plan, max_new_tokens=max_new_tokens,
        do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    new_tokens = sequences[:, batch.input_ids.shape[1]:]
    answers = [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers, plan.visual_token_counts.tolist(), plan.budget_tiers.tolist()


def at_models_price(model, method: Method) -> Method:
    """`method` with the token price it runs at written in: "auto" (no price given) runs at the model's own
    (`config.budget_cost`), which the report then shows beside auto's curve."""
    if method.budget != "auto" or method.budget_cost is not None:
        return method
    return dataclasses.replace(method, budget_cost=float(model.config.budget_cost))


def run_methods(model, processor, dataset, methods, batch_size=8, max_new_tokens=16, seed=0, progress=True,
                measure_prices=False) -> dict:
    """{method name: MethodRun} over `dataset` (a datasets.Dataset or a list of rows with image and question).

    Auto at a chosen token price (`auto(cost=C)`, the price sweep) changes only which tier each question gets, so
    unless `measure_prices`, its answers are read from the forced tiers' answers on the same batch at the tier the
    price picks (`derive_from_tiers`) instead of being generated again, when every tier of its selection is run
    too. "auto" itself, at the model's own price, is always generated, and its run records how many of its answers
    the same reading gives (the check that the reading holds on these questions)."""
    runs = {method.name: MethodRun(at_models_price(model, method)) for method in methods}
    generator = torch.Generator().manual_seed(seed)  # random@K draws the same patches on every run
    budgets = model.config.budgets
    readable = [m for m in methods if m.kind in ("auto", AUTO_COST) and tiers_forced(m, methods, budgets)]
    derived = [] if measure_prices else [m for m in readable if m.kind == AUTO_COST]
    measured = [m for m in methods if m not in derived]
    checked = [m for m in readable if m.kind == "auto"]
    if measured and len(dataset):
        _warm_up(model, processor, [dataset[i] for i in range(min(batch_size, len(dataset)))], measured[0])
    external = external_selections(measured)
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="evaluating", unit="batch", disable=not progress):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        # SAM (and external scoring) run once per batch; each method is charged their time, as a query pays it.
        batch, shared = eval_batch(model, processor, rows, external)
        for method in measured:
            begin = time.perf_counter()
            predictions, counts, tiers = run_batch(model, processor, batch, method, max_new_tokens, generator)
            _synchronize(model)
            runs[method.name].add(predictions, counts, tiers,
                                  shared["sam"] + shared.get(method.selection, 0.0) + time.perf_counter() - begin)
        for method in derived:
            runs[method.name].add(*derive_from_tiers(model, batch, method, runs, generator), seconds=None)
        for method in checked:  # its tiers are already planned: read the forced tiers' answers at them
            run, last = runs[method.name], slice(-len(rows), None)
            run.check_tiers(tier_answers(model, runs, method, run.budget_tiers[last], run.visual_token_counts[last]))
    return runs


def tiers_forced(method: Method, methods, budgets) -> bool:
    """Whether every tier in `budgets` is among `methods`, forced at `method`'s selection (so that auto's answers
    can be read from them)."""
    forced = {m.budget for m in methods if m.kind == "tier" and m.selection == method.selection}
    return forced >= set(budgets)


@torch.no_grad()
def derive_from_tiers(model, batch: EvalBatch, method: Method, runs: dict, generator) -> tuple:
    """(answers, visual token counts, tier indices) of auto at `method`'s price on `batch`: the allocator plans the
    tiers (as generate would), and each question's answer is the one its forced tier gave on this batch
    (`tier_answers`)."""
    plan = method_plan(model, batch, method, generator)
    tiers, counts = plan.budget_tiers.tolist(), plan.visual_token_counts.tolist()
    return tier_answers(model, runs, method, tiers, counts), counts, tiers


def tier_answers(model, runs: dict, method: Method, tiers: list, counts: list) -> list:
    """The answers the forced tiers of `method`'s selection gave the last batch's questions, each at its tier in
    `tiers` (indices), already in `runs`; `counts` (the visual tokens planned) must be what the forced tier spent."""
    budgets = list(model.config.budgets)
    forced = {m.method.budget: m for m in runs.values() if m.method.kind == "tier"
              and m.method.selection == method.selection}
    answers = []
    for i, (tier, count) in enumerate(zip(tiers, counts)):
        run = forced[budgets[tier]]
        row = len(run.predictions) - len(tiers) + i
        if run.visual_token_counts[row] != count:
            raise RuntimeError(f"{method.name}: question {row} would spend {count} tokens at tier {budgets[tier]}, "
                               f"the forced tier spent {run.visual_token_counts[row]}; run with measure_prices.")
        answers.append(run.predictions[row])
    return answers


def _synchronize(model):
    # GPU kernels run asynchronously: without waiting for them, wall time measures only the launches.
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def _warm_up(model, processor, rows, method):
    """One untimed batch first: the first calls pay one-off costs (allocator caches, kernel setup) that would
    otherwise land on whichever method happens to run first."""
    batch, _ = eval_batch(model, processor, rows, external_selections([method]))
    run_batch(model, processor, batch, method, 2, torch.Generator().manual_seed(0))


def evaluate(model, processor, dataset, metric=SYNTHETIC_METRIC, methods=None, batch_size=8, max_new_tokens=16,
             calibration=True, seed=0, correct_threshold=CORRECT_THRESHOLD, meta=None, progress=True,
             predictions_path=None, trained=(), measure_prices=False) -> dict:
    """Run `methods` (names; default: auto, every tier, full and every baseline at every tier) over `dataset` and
    return the report. With `calibration`, `auto` and every `tier_<K>` are added if missing. `trained`:
    `TrainedCheckpoint`s whose methods run on the same rows (their checkpoints must share this one's grid and
    tiers). Per-sample answers go to `predictions_path` (JSON lines) when given. `measure_prices`: generate auto at
    every price instead of reading the sweep from the forced tiers (`run_methods`)."""
    if len(dataset) == 0:
        raise ValueError("The evaluation dataset is empty; check --split and --num-samples.")
    config = model.config
    names = list(methods or method_names(config.budgets))
    if calibration:
        names += [n for n in ["auto"] + [f"tier_{v}" for v in config.budgets] if n not in names]
    parsed = [parse_method(name, config.budgets) for name in names]
    skipped = {m.name: unsupported_reason(m, config) for m in parsed if unsupported_reason(m, config)}
    runnable = [m for m in parsed if m.name not in skipped]
    model.eval()
    runs = run_methods(model, processor, dataset, runnable, batch_size, max_new_tokens, seed, progress, measure_prices)
    for other in trained:
        _check_same_geometry(config, other.model.config, other.name)
        reasons = {m.name: unsupported_reason(m, other.model.config) for m in other.methods}
        skipped.update({name: why for name, why in reasons.items() if why})
        other.model.eval()
        own = [m for m in other.methods if not reasons[m.name]]
        runs.update(run_methods(other.model, other.processor, dataset, own, batch_size, max_new_tokens, seed, progress,
                                measure_prices))
    if predictions_path is not None:
        write_predictions(runs, dataset, predictions_path)
    meta = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
            "batch_size": batch_size, "max_new_tokens": max_new_tokens, "seed": seed, "device": str(model.device),
            **(meta or {})}
    records = {other.name: {**other.record, "methods": [m.name for m in other.methods if m.name in runs]}
               for other in trained}
    return build_report(runs, column(dataset, "answers"), column(dataset, "task"), metric, config, meta,
                        correct_threshold, skipped, trained=records)


def _check_same_geometry(config, other, name):
    """Scores and token counts are only comparable on the same pages, grid and tiers."""
    mine = (config.vision_config.image_size, config.vision_config.patch_size, list(config.budgets))
    theirs = (other.vision_config.image_size, other.vision_config.patch_size, list(other.budgets))
    if mine != theirs:
        raise ValueError(f"Trained method {name!r}: its checkpoint has (image size, patch size, tiers) {theirs}, the "
                         f"evaluated one {mine}; methods are compared on the same pages and tiers only.")


__all__ = [
    "EvalBatch",
    "TrainedCheckpoint",
    "at_models_price",
    "derive_from_tiers",
    "eval_batch",
    "evaluate",
    "external_selections",
    "method_plan",
    "run_batch",
    "run_methods",
    "tier_answers",
    "tiers_forced",
]
