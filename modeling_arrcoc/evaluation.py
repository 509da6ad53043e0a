"""Evaluation: accuracy, measured visual tokens, latency and budget calibration of ARR-COC and of fixed-budget
baselines run through the same checkpoint.

Methods (names as they appear in the report):

- ``auto``: the allocator picks the tier and the patches (what a user gets by default).
- ``tier_<K>``: the tier of value K forced (K in ``config.budgets``), learned patch selection.
- ``full``: every patch.
- ``uniform_pool@K``: DeepSeek-OCR-style fixed compression, the grid average-pooled to K cells (selection
  "uniform"), whatever the question.
- ``saliency_topk@K``: the top-K patches by the allocator's query-independent hotspot saliency ("hotspot"),
  like VisionZip.
- ``random@K``: K random patches ("random"), seeded.
- ``query_sim@K``: training-free query similarity (SparseVLM-style): every patch is turned into an LLM-space
  embedding (the "full" path), scored by cosine similarity with the mean embedding of the question's tokens,
  and the top-K are kept (see `query_similarity_scores`).

Tokens are always measured: every count in the report is the model's ``visual_token_counts`` for the inputs it
generated from, never a tier value from the config (a tier larger than the grid keeps every patch, and the
report says so). ``auto`` batches are split by the tier the allocator chose, so a 64-token sample is not padded
to a 400-token one. SAM runs once per batch and is shared by every method; its time is added to each method's
latency, since every query pays for it.

Budget calibration: each sample's oracle tier is the smallest tier whose forced run (``tier_<K>``) answers it
correctly (metric score >= ``correct_threshold``), None when no tier does; ``auto``'s chosen tier is compared
with it by `metrics.calibration_stats`. Calibration therefore runs every tier (they are reported as methods).

Report (``eval.json``; all keys are strings, numbers plain JSON numbers, fractions in [0, 1])::

    {
      "methods": {
        "<method>": {
          "accuracy": float,              # mean metric score (the dataset's main metric, see meta.metric)
          "mean_visual_tokens": float,    # measured tokens per query
          "p50_visual_tokens": float,
          "p95_visual_tokens": float,
          "per_task": {"<task family>": float},   # accuracy per `task` column value
          "per_task_visual_tokens": {"<task family>": float},  # mean measured tokens per task family
          "token_histogram": {"<tokens>": int},   # samples per measured token count
          "tier_histogram": {"<tier value>": int},# samples per tier used ("full" counts as the largest tier)
          "latency_ms_per_query": float,  # wall time per query, SAM + selection + generation, batched
          "compression_ratio": float,     # grid patches / mean_visual_tokens
          "budget": "auto" | "full" | int,# the budget asked for (a tier value)
          "selection": str,               # "learned", "uniform", "hotspot", "random" or "query_sim"
          "num_samples": int
        }
      },
      "calibration": {"exact", "within_one", "over", "under": float | null, "n": int, "n_no_oracle": int} | null,
      "per_tier": {
        "<tier value>": {
          "tier": int,                    # tier index
          "n_predicted": int,             # samples `auto` put in this tier
          "accuracy": float | null,       # `auto` accuracy on those samples
          "mean_visual_tokens": float | null,
          "n_oracle": int | null,         # samples whose oracle tier this is (null without calibration)
          "forced_accuracy": float | null # accuracy of tier_<K> on every sample (null if not run)
        }
      },
      "skipped": {"<method>": "reason"},  # methods that cannot run on this checkpoint (e.g. pooling shape)
      "meta": {
        "checkpoint", "dataset", "dataset_source", "split": str, "num_samples": int,
        "commit": str | null,             # git rev-parse HEAD of the evaluating code
        "created": str,                   # ISO 8601, UTC
        "metric": str, "correct_threshold": float, "budgets": [int], "grid_size": [rows, cols],
        "num_patches": int, "batch_size": int, "max_new_tokens": int, "seed": int, "device": str
      }
    }
"""

import json
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter
from PIL import Image
from torch.nn import functional as F
from tqdm.auto import tqdm

from .data import HUB_DATASETS, SyntheticConfig, load_hub_dataset, make_synthetic_suite, resolve_name
from .explanation import explain, prompt_batch, render_heatmap
from .metrics import METRICS, calibration_stats, per_task_mean, token_stats

SYNTHETIC = "synthetic"
SYNTHETIC_METRIC = "exact_match"
QUERY_SIM = "query_sim"
# Baseline name -> the selection it swaps into the same checkpoint.
BASELINE_SELECTIONS = {
    "uniform_pool": "uniform",
    "saliency_topk": "hotspot",
    "random": "random",
    "query_sim": QUERY_SIM,
}
BASELINES = tuple(BASELINE_SELECTIONS)
CORRECT_THRESHOLD = 0.5


# ----------------------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One way of answering: a budget ("auto", "full" or a tier value) and a patch selection."""

    name: str
    budget: object
    selection: str
    kind: str  # "auto", "tier", "full" or a baseline name: the series it belongs to on the Pareto plot


def tier_value(budget, budgets) -> int:
    """The model's rule: an integer budget is a tier value when it is in `budgets`, else a tier index."""
    value = int(budget)
    if value in budgets:
        return value
    if 0 <= value < len(budgets):
        return budgets[value]
    raise ValueError(f"Unknown tier {budget!r}: expected a value in {list(budgets)} or an index below {len(budgets)}.")


def method_names(budgets, budget="all", baselines=BASELINES) -> list:
    """Method names for a CLI budget choice: "all" (auto, every tier, full), "auto", "full" or one tier.

    Baselines run at every tier for "all" and "auto" (so that auto has a baseline at each budget around it), at
    the chosen tier otherwise, and not at all for "full".
    """
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"Unknown baselines {sorted(unknown)}; expected some of {BASELINES}.")
    if budget in ("all", "auto"):
        tiers = list(budgets)
        names = ["auto"] + ([f"tier_{k}" for k in tiers] + ["full"] if budget == "all" else [])
    elif budget == "full":
        return ["full"]
    else:
        tiers = [tier_value(budget, budgets)]
        names = [f"tier_{tiers[0]}"]
    return names + [f"{baseline}@{k}" for baseline in baselines for k in tiers]


def parse_method(name: str, budgets) -> Method:
    if name in ("auto", "full"):
        return Method(name, name, "learned", name)
    if name.startswith("tier_"):
        return Method(name, _known_tier(name[len("tier_"):], name, budgets), "learned", "tier")
    baseline, _, value = name.partition("@")
    if baseline in BASELINE_SELECTIONS and value:
        return Method(name, _known_tier(value, name, budgets), BASELINE_SELECTIONS[baseline], baseline)
    raise ValueError(
        f"Unknown method {name!r}: expected 'auto', 'full', 'tier_<K>' or '<baseline>@<K>' with a baseline in "
        f"{BASELINES} and K in {list(budgets)}."
    )


def _known_tier(text: str, name: str, budgets) -> int:
    if not text.isdigit() or int(text) not in budgets:
        raise ValueError(f"Method {name!r}: {text!r} is not a tier value in {list(budgets)}.")
    return int(text)


def unsupported_reason(method: Method, config):
    """Why `method` cannot run on this checkpoint, or None. Only uniform pooling has a shape constraint."""
    if method.selection != "uniform":
        return None
    count, (rows, cols) = min(method.budget, config.num_patches), config.grid_size
    if any(count % r == 0 and count // r <= cols for r in range(1, rows + 1)):
        return None
    return f"uniform pooling cannot make {count} cells on a {rows}x{cols} grid"


# ----------------------------------------------------------------------------------------------------------
# The query-similarity baseline (training-free, SparseVLM-style)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class PreparedInputs:
    """What the language model generates from, and what it was given: per-sample token counts and tiers."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    visual_token_counts: torch.Tensor
    budget_tiers: torch.Tensor


@torch.no_grad()
def query_similarity_scores(model, patch_features, question_ids, question_mask) -> torch.Tensor:
    """[B, N] cosine similarity between each patch's LLM-space embedding and the mean question-token embedding.

    Every patch goes through the checkpoint's own "full" path (compression heads keeping all N patches in raster
    order, CLIP encoder, quality adapter at the largest tier), so the patch embeddings live where the question's
    token embeddings do. `question_ids` are the question's own tokens (no chat template, whose tokens are the same
    for every question and would blur the query); `question_mask` marks the real ones.
    """
    inner = model.model
    batch, num_patches = patch_features.shape[:2]
    everything = torch.full((batch,), num_patches, device=patch_features.device)
    largest = torch.full((batch,), len(model.config.budgets) - 1, device=patch_features.device)
    # With every patch kept the scores do not matter: all N come back in raster order.
    chosen = inner.select(patch_features, patch_features.new_zeros(batch, num_patches), everything, "learned")
    patch_embeds, _ = inner.quality_adapter(inner.clip_encoder(chosen), largest)
    text = inner.get_input_embeddings()(question_ids)
    weights = question_mask.unsqueeze(-1).to(text.dtype)
    query = (text * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return F.cosine_similarity(patch_embeds.float(), query[:, None].float(), dim=-1)


@torch.no_grad()
def query_similarity_inputs(model, input_ids, attention_mask, patch_features, scores, budget) -> PreparedInputs:
    """Spliced LLM inputs keeping the top-`budget` patches by `scores`, through the checkpoint's own compression
    heads, CLIP encoder and quality adapter (at the tier of `budget`): only the selection rule is swapped."""
    prepared = model.model.prepare_multimodal_inputs(
        input_ids, None, attention_mask, budget=budget, patch_features=patch_features, selection_scores=scores
    )
    return PreparedInputs(prepared.inputs_embeds, prepared.attention_mask, prepared.position_ids,
                          visual_token_counts=prepared.visual_token_counts, budget_tiers=prepared.budget_tiers)


# ----------------------------------------------------------------------------------------------------------
# Running methods over a dataset
# ----------------------------------------------------------------------------------------------------------


@dataclass
class MethodRun:
    """Per-sample results of one method, in dataset order."""

    method: Method
    predictions: list = field(default_factory=list)
    visual_token_counts: list = field(default_factory=list)
    budget_tiers: list = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    question_ids: torch.Tensor
    question_mask: torch.Tensor
    features: torch.Tensor
    query_scores: torch.Tensor | None = None  # query_sim's patch scores, the same for every K

    def subset(self, index):
        return _Batch(*(None if tensor is None else tensor[index] for tensor in vars(self).values()))


def _batch(model, processor, rows, with_query_scores=False) -> tuple:
    """Model inputs for rows, and the seconds of the work methods share on this batch: {"sam": s} (every method)
    and {"query_sim": s} (every query_sim@K) when `with_query_scores`."""
    encoded = prompt_batch(processor, [r["image"] for r in rows], [r["question"] for r in rows],
                           model.config.vision_config.patch_size)
    questions = processor.tokenizer([r["question"] for r in rows], add_special_tokens=False, padding=True,
                                    return_tensors="pt")
    start = time.perf_counter()
    features = model.model.get_patch_features(encoded["pixel_values"].to(model.device, model.dtype))
    _synchronize(model)
    shared = {"sam": time.perf_counter() - start}
    to = model.device
    batch = _Batch(encoded["input_ids"].to(to), encoded["attention_mask"].to(to), questions["input_ids"].to(to),
                   questions["attention_mask"].to(to), features)
    if with_query_scores:
        start = time.perf_counter()
        batch.query_scores = query_similarity_scores(model, features, batch.question_ids, batch.question_mask)
        _synchronize(model)
        shared[QUERY_SIM] = time.perf_counter() - start
    return batch, shared


def _tier_groups(model, batch: _Batch, method: Method) -> list:
    """[(sample indices, budget)]: `auto` batches split by the allocator's tier, other methods in one piece."""
    if method.budget != "auto":
        return [(torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device), method.budget)]
    groups = model.model.tier_groups(batch.input_ids, batch.attention_mask, "auto", batch.features)
    return [(index, model.config.budgets[tier]) for tier, index in groups.items()]


def _prepare(model, batch: _Batch, method: Method, budget, generator) -> PreparedInputs:
    if method.selection == QUERY_SIM:
        return query_similarity_inputs(model, batch.input_ids, batch.attention_mask, batch.features,
                                       batch.query_scores, budget)
    inputs = model.model.prepare_multimodal_inputs(
        batch.input_ids, None, batch.attention_mask, budget=budget, selection=method.selection,
        patch_features=batch.features, generator=generator,
    )
    return PreparedInputs(inputs.inputs_embeds, inputs.attention_mask, inputs.position_ids,
                          inputs.visual_token_counts, inputs.budget_tiers)


def _generate(model, processor, inputs: PreparedInputs, max_new_tokens: int) -> list:
    """Greedy answers from spliced embeddings; generate then returns only the new tokens."""
    tokenizer = processor.tokenizer
    new_tokens = model.generate(
        inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask, position_ids=inputs.position_ids,
        max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


@torch.no_grad()
def _run_batch(model, processor, batch: _Batch, method: Method, max_new_tokens, generator) -> tuple:
    size = batch.input_ids.shape[0]
    predictions, counts, tiers = [None] * size, [0] * size, [0] * size
    for index, budget in _tier_groups(model, batch, method):
        inputs = _prepare(model, batch.subset(index), method, budget, generator)
        answers = _generate(model, processor, inputs, max_new_tokens)
        for i, answer, count, tier in zip(index.tolist(), answers, inputs.visual_token_counts.tolist(),
                                          inputs.budget_tiers.tolist()):
            predictions[i], counts[i], tiers[i] = answer, int(count), int(tier)
    return predictions, counts, tiers


def run_methods(model, processor, dataset, methods, batch_size=8, max_new_tokens=16, seed=0, progress=True) -> dict:
    """{method name: MethodRun} over `dataset` (a datasets.Dataset or a list of rows with image and question)."""
    runs = {method.name: MethodRun(method) for method in methods}
    generator = torch.Generator().manual_seed(seed)  # random@K draws the same patches on every run
    if methods and len(dataset):
        _warm_up(model, processor, [dataset[i] for i in range(min(batch_size, len(dataset)))], methods[0])
    with_query_scores = any(method.selection == QUERY_SIM for method in methods)
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="evaluating", unit="batch", disable=not progress):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        # SAM (and query_sim's scoring) run once per batch; each method is charged their time, as a query pays it.
        batch, shared = _batch(model, processor, rows, with_query_scores)
        for method in methods:
            begin = time.perf_counter()
            predictions, counts, tiers = _run_batch(model, processor, batch, method, max_new_tokens, generator)
            _synchronize(model)
            run = runs[method.name]
            run.seconds += shared["sam"] + shared.get(method.selection, 0.0) + time.perf_counter() - begin
            run.predictions += predictions
            run.visual_token_counts += counts
            run.budget_tiers += tiers
    return runs


def _synchronize(model):
    # GPU kernels run asynchronously: without waiting for them, wall time measures only the launches.
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def _warm_up(model, processor, rows, method):
    """One untimed batch first: the first calls pay one-off costs (allocator caches, kernel setup) that would
    otherwise land on whichever method happens to run first."""
    batch, _ = _batch(model, processor, rows, method.selection == QUERY_SIM)
    _run_batch(model, processor, batch, method, 2, torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------------------------------------
# Scoring and the report
# ----------------------------------------------------------------------------------------------------------


def sample_scores(metric: str, predictions, references) -> list:
    """Per-sample metric scores in [0, 1]."""
    metric_fn = METRICS[metric]
    return [metric_fn(prediction, refs) for prediction, refs in zip(predictions, references)]


def summarize_run(run: MethodRun, scores, tasks, budgets, num_patches) -> dict:
    """One method's report entry, from measured per-sample counts and tiers."""
    stats = token_stats(run.visual_token_counts)
    tier_counts = Counter(run.budget_tiers)
    return {
        "accuracy": float(np.mean(scores)),
        "mean_visual_tokens": stats["mean"],
        "p50_visual_tokens": stats["p50"],
        "p95_visual_tokens": stats["p95"],
        "per_task": per_task_mean(scores, tasks),
        "per_task_visual_tokens": per_task_mean(run.visual_token_counts, tasks),
        "token_histogram": stats["histogram"],
        "tier_histogram": {str(budgets[t]): tier_counts[t] for t in sorted(tier_counts)},
        "latency_ms_per_query": 1000.0 * run.seconds / len(scores),
        "compression_ratio": num_patches / stats["mean"],
        "budget": run.method.budget,
        "selection": run.method.selection,
        "num_samples": len(scores),
    }


def oracle_tiers(correct_by_tier) -> list:
    """Per sample, the smallest tier index whose forced run is correct; None where no tier is.

    `correct_by_tier[t][i]`: whether tier t answers sample i correctly (tiers in ascending order).
    """
    oracles = []
    for per_tier in zip(*correct_by_tier):
        oracles.append(next((t for t, correct in enumerate(per_tier) if correct), None))
    return oracles


def per_tier_buckets(budgets, auto_tiers, auto_scores, auto_counts, oracles=None, forced_accuracy=None) -> dict:
    """Per tier value: how many samples `auto` sent there and how it did on them, how many have it as their oracle,
    and the accuracy of forcing it on every sample."""
    buckets = {}
    for tier, value in enumerate(budgets):
        chosen = [i for i, t in enumerate(auto_tiers) if t == tier]
        buckets[str(value)] = {
            "tier": tier,
            "n_predicted": len(chosen),
            "accuracy": float(np.mean([auto_scores[i] for i in chosen])) if chosen else None,
            "mean_visual_tokens": float(np.mean([auto_counts[i] for i in chosen])) if chosen else None,
            "n_oracle": None if oracles is None else sum(o == tier for o in oracles),
            "forced_accuracy": (forced_accuracy or {}).get(value),
        }
    return buckets


def _calibration(runs, scores, budgets, threshold):
    """(calibration stats, oracle tiers), or (None, None) when `auto` or a forced tier was not run."""
    names = [f"tier_{value}" for value in budgets]
    if "auto" not in runs or any(name not in runs for name in names):
        return None, None
    correct = [[s >= threshold for s in scores[name]] for name in names]
    oracles = oracle_tiers(correct)
    return calibration_stats(runs["auto"].budget_tiers, oracles), oracles


def build_report(runs, references, tasks, metric, config, meta=None, correct_threshold=CORRECT_THRESHOLD,
                 skipped=None) -> dict:
    """The evaluation report (format in the module docstring) from per-sample runs."""
    budgets, num_patches = list(config.budgets), config.num_patches
    scores = {name: sample_scores(metric, run.predictions, references) for name, run in runs.items()}
    methods = {name: summarize_run(run, scores[name], tasks, budgets, num_patches) for name, run in runs.items()}
    calibration, oracles = _calibration(runs, scores, budgets, correct_threshold)
    per_tier = None
    if "auto" in runs:
        forced = {v: methods[f"tier_{v}"]["accuracy"] for v in budgets if f"tier_{v}" in methods}
        auto = runs["auto"]
        per_tier = per_tier_buckets(budgets, auto.budget_tiers, scores["auto"], auto.visual_token_counts, oracles,
                                    forced)
    meta = {**(meta or {}), "metric": metric, "correct_threshold": correct_threshold, "budgets": budgets,
            "grid_size": list(config.grid_size), "num_patches": num_patches, "num_samples": len(references)}
    return {"methods": methods, "calibration": calibration, "per_tier": per_tier, "skipped": skipped or {},
            "meta": meta}


def git_commit(path=None):
    """`git rev-parse HEAD` of the code doing the evaluation, or None outside a git checkout."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _column(dataset, name) -> list:
    # A datasets.Dataset reads one column without decoding the images; a list of rows is read row by row.
    return list(dataset[name]) if hasattr(dataset, "column_names") else [row[name] for row in dataset]


def evaluate(model, processor, dataset, metric=SYNTHETIC_METRIC, methods=None, batch_size=8, max_new_tokens=16,
             calibration=True, seed=0, correct_threshold=CORRECT_THRESHOLD, meta=None, progress=True,
             predictions_path=None) -> dict:
    """Run `methods` (names; default: auto, every tier, full and every baseline at every tier) over `dataset` and
    return the report. With `calibration`, `auto` and every `tier_<K>` are added if missing. Per-sample answers go
    to `predictions_path` (JSON lines) when given."""
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
    runs = run_methods(model, processor, dataset, runnable, batch_size, max_new_tokens, seed, progress)
    if predictions_path is not None:
        write_predictions(runs, dataset, predictions_path)
    meta = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
            "batch_size": batch_size, "max_new_tokens": max_new_tokens, "seed": seed, "device": str(model.device),
            **(meta or {})}
    return build_report(runs, _column(dataset, "answers"), _column(dataset, "task"), metric, config, meta,
                        correct_threshold, skipped)


def save_report(report: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return path


def format_table(report: dict) -> str:
    """Plain-text table: method, accuracy, mean tokens, p95 tokens, latency."""
    header = f"{'method':<22}{'accuracy':>10}{'mean tok':>10}{'p95 tok':>10}{'ms/query':>10}"
    lines = [header, "-" * len(header)]
    for name, m in report["methods"].items():
        lines.append(f"{name:<22}{m['accuracy']:>10.3f}{m['mean_visual_tokens']:>10.1f}"
                     f"{m['p95_visual_tokens']:>10.1f}{m['latency_ms_per_query']:>10.1f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------


@dataclass
class EvalData:
    dataset: object  # datasets.Dataset in the common schema
    metric: str  # a key of metrics.METRICS
    source: str  # "synthetic" or the Hub repo id
    split: str


def load_eval_dataset(name: str, split=None, num_samples=None, image_size=256, patch_size=16, cache_dir=None,
                      seed=0, path=None) -> EvalData:
    """"synthetic" or a Hub dataset name (see `data.HUB_DATASETS`), with the metric it is scored by.

    The synthetic suite is rendered at the checkpoint's geometry (`image_size`, `patch_size`) with pages seeded by
    `seed`; only the requested split is made at full size. Hub rows without reference answers (test splits) are
    dropped; `path` reads a local copy of a Hub dataset.
    """
    if name == SYNTHETIC:
        split = split or "test"
        sizes = {f"num_{s}": 1 for s in ("train", "validation", "test")}
        sizes[f"num_{split}"] = num_samples or getattr(SyntheticConfig(), f"num_{split}")
        suite = make_synthetic_suite(image_size=image_size, patch_size=patch_size, seed=seed, cache_dir=cache_dir,
                                     **sizes)
        return EvalData(suite[split], SYNTHETIC_METRIC, SYNTHETIC, split)
    key = resolve_name(name)
    spec = HUB_DATASETS[key]
    split = split or spec.split
    dataset = load_hub_dataset(key, split, path=path)
    dataset = dataset.filter(lambda answers: len(answers) > 0, input_columns=["answers"])
    if num_samples:
        dataset = dataset.select(range(min(num_samples, len(dataset))))
    return EvalData(dataset, spec.metric, spec.repo_id, split)


def write_predictions(runs: dict, dataset, path) -> Path:
    """predictions.jsonl: per sample, its question, references and every method's answer and token count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    questions, answers, tasks = (_column(dataset, c) for c in ("question", "answers", "task"))
    with path.open("w") as f:
        for i, (question, refs, task) in enumerate(zip(questions, answers, tasks)):
            record = {"index": i, "task": task, "question": question, "answers": list(refs),
                      "predictions": {n: r.predictions[i] for n, r in runs.items()},
                      "visual_token_counts": {n: r.visual_token_counts[i] for n, r in runs.items()}}
            f.write(json.dumps(record) + "\n")
    return path


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------

_SERIES_STYLE = {
    "tier": dict(color="tab:blue", marker="o", label="ARR-COC, forced tier"),
    "uniform_pool": dict(color="tab:orange", marker="s", label="uniform pooling (DeepSeek-OCR-style)"),
    "saliency_topk": dict(color="tab:green", marker="^", label="saliency top-K (VisionZip-style)"),
    "query_sim": dict(color="tab:purple", marker="D", label="query similarity (SparseVLM-style)"),
    "random": dict(color="tab:gray", marker="x", label="random K"),
    "full": dict(color="black", marker="P", label="full tokens"),
}


def plot_pareto(report: dict, path) -> Path:
    """Accuracy vs measured mean visual tokens, one series per method family; ARR-COC auto highlighted."""
    figure = Figure(figsize=(9.5, 4.8))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    series = defaultdict(list)
    for name, m in report["methods"].items():
        series[_kind(name)].append((m["mean_visual_tokens"], m["accuracy"]))
    for kind, points in series.items():
        if kind == "auto":
            continue
        points.sort()
        style = _SERIES_STYLE.get(kind, dict(marker=".", label=kind))
        ax.plot(*zip(*points), linestyle="-" if len(points) > 1 else "none", alpha=0.85, **style)
    if "auto" in series:
        (x, y), = series["auto"]
        ax.scatter([x], [y], s=260, marker="*", color="crimson", edgecolor="black", zorder=5,
                   label="ARR-COC auto (allocator's budget)")
        ax.annotate(f"auto: {y:.3f} @ {x:.1f} tok", (x, y), textcoords="offset points", xytext=(8, 8))
    _pareto_axes(ax, report)
    return _save(figure, path)


def _kind(name: str) -> str:
    if name in ("auto", "full"):
        return name
    return "tier" if name.startswith("tier_") else name.partition("@")[0]


def _pareto_axes(ax, report):
    xs = [m["mean_visual_tokens"] for m in report["methods"].values()]
    ys = [m["accuracy"] for m in report["methods"].values()]
    if xs and max(xs) / max(min(xs), 1e-9) > 8:
        ax.set_xscale("log")  # tiers span an order of magnitude or more
        ax.set_xticks(sorted({round(x, 1) for x in xs}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    if ys:
        # Zoom on the measured range (small gaps between methods matter) but never past the metric's [0, 1].
        ax.set_ylim(max(-0.02, min(ys) - 0.05), min(1.02, max(ys) + 0.05))
    meta = report.get("meta", {})
    ax.set_xlabel("mean visual tokens per query (measured)")
    ax.set_ylabel(f"accuracy ({meta.get('metric', 'metric')})")
    ax.set_title(f"{meta.get('dataset', '')} {meta.get('split', '')}, n={meta.get('num_samples', '?')}".strip())
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point


def _save(figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def heatmap_rows(dataset, per_task=2) -> dict:
    """{task: [row index, ...]}: the first `per_task` samples of each task family, in dataset order."""
    chosen = defaultdict(list)
    for i, task in enumerate(_column(dataset, "task")):
        if len(chosen[task]) < per_task:
            chosen[task].append(i)
    return dict(chosen)


def plot_heatmaps(model, processor, dataset, path, per_task=2, budget="auto", tile_size=256) -> Path:
    """A grid of allocation heatmaps: one row per task family, `per_task` sample questions each."""
    tiles = []
    for task, indices in heatmap_rows(dataset, per_task).items():
        row_tiles = []
        for i in indices:
            sample = dataset[i]
            explanation = explain(model, processor, sample["image"], sample["question"], budget=budget)
            row_tiles.append(render_heatmap(_enlarged(sample["image"], tile_size), explanation, title=task))
        tiles.append(row_tiles)
    return _save_grid(tiles, path)


def _enlarged(image, tile_size):
    """The page with its longest side at `tile_size`: small pages are enlarged (nearest, so patches stay crisp)
    until the caption fits under them, large ones shrunk so the sheet stays viewable."""
    scale = tile_size / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    return image.convert("RGB").resize(size, resample)


def _save_grid(tiles, path, gap=6) -> Path:
    width = max(t.width for row in tiles for t in row)
    heights = [max(t.height for t in row) for row in tiles]
    columns = max(len(row) for row in tiles)
    sheet = Image.new("RGB", (columns * (width + gap) + gap, sum(heights) + gap * (len(tiles) + 1)), "white")
    y = gap
    for row, height in zip(tiles, heights):
        for c, tile in enumerate(row):
            sheet.paste(tile, (gap + c * (width + gap), y))
        y += height + gap
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


__all__ = [
    "BASELINES",
    "BASELINE_SELECTIONS",
    "CORRECT_THRESHOLD",
    "EvalData",
    "Method",
    "MethodRun",
    "PreparedInputs",
    "build_report",
    "evaluate",
    "format_table",
    "git_commit",
    "heatmap_rows",
    "load_eval_dataset",
    "method_names",
    "oracle_tiers",
    "parse_method",
    "per_task_mean",
    "per_tier_buckets",
    "plot_heatmaps",
    "plot_pareto",
    "query_similarity_inputs",
    "query_similarity_scores",
    "run_methods",
    "sample_scores",
    "save_report",
    "summarize_run",
    "tier_value",
    "unsupported_reason",
    "write_predictions",
]
