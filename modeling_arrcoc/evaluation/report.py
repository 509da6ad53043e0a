"""The evaluation report (format in the package docstring) from per-sample runs: scores, token statistics, budget
calibration, per-tier buckets, and predictions.jsonl.
"""

import json
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..metrics import METRICS, calibration_stats, per_task_mean, token_stats
from ..methods import CORRECT_THRESHOLD, Method


@dataclass
class MethodRun:
    """Per-sample results of one method, in dataset order."""

    method: Method
    predictions: list = field(default_factory=list)
    visual_token_counts: list = field(default_factory=list)
    budget_tiers: list = field(default_factory=list)
    seconds: float = 0.0


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


def column(dataset, name) -> list:
    # A datasets.Dataset reads one column without decoding the images; a list of rows is read row by row.
    return list(dataset[name]) if hasattr(dataset, "column_names") else [row[name] for row in dataset]


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


def write_predictions(runs: dict, dataset, path) -> Path:
    """predictions.jsonl: per sample, its question, references and every method's answer and token count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    questions, answers, tasks = (column(dataset, c) for c in ("question", "answers", "task"))
    with path.open("w") as f:
        for i, (question, refs, task) in enumerate(zip(questions, answers, tasks)):
            record = {"index": i, "task": task, "question": question, "answers": list(refs),
                      "predictions": {n: r.predictions[i] for n, r in runs.items()},
                      "visual_token_counts": {n: r.visual_token_counts[i] for n, r in runs.items()}}
            f.write(json.dumps(record) + "\n")
    return path


__all__ = [
    "MethodRun",
    "build_report",
    "format_table",
    "git_commit",
    "oracle_tiers",
    "per_tier_buckets",
    "sample_scores",
    "save_report",
    "summarize_run",
    "write_predictions",
]
