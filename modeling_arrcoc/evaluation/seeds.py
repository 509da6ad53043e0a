"""Run-to-run spread: the demo's comparison (ARR-COC at auto against the trained full-resolution reference) trained
at several seeds and measured on the same questions.

A bootstrap interval over questions says how much one trained model's accuracy would move on other questions; it
says nothing about how much another training run would move it. On 2 cores one run's float-sum order alone moved
ARR-COC by up to 4 points (docs/demo_model.md), so a difference of a few points needs several runs. This module
reads one evaluation per seed (eval.py's eval.json and predictions.jsonl, all on the same questions) and reports:

- per seed: auto's accuracy, tokens and price, the reference's accuracy, their paired difference with its interval
  over questions, auto's margin over the constant tiers' envelope, each forced tier's accuracy, and whether more
  tokens ever hurt (every pair of forced budgets, paired: `report.more_tokens`);
- across seeds: the mean, sample standard deviation, range and a 95% Student-t interval of each (n = the seeds);
- pooled: the paired difference of the seed-averaged answers (each question's correctness averaged over the seeds,
  for auto and for the reference), with a bootstrap interval over questions: the expected model's difference, the
  run-to-run noise averaged out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import statistics
from ..metrics import METRICS
from .report import more_tokens, more_tokens_line, own_budgets


def load_run(folder) -> dict:
    """One seed's evaluation: eval.json and predictions.jsonl from eval.py's --output-dir."""
    folder = Path(folder)
    report = json.loads((folder / "eval.json").read_text())
    with open(folder / "predictions.jsonl") as handle:
        rows = [json.loads(line) for line in handle]
    return {"folder": str(folder), "report": report, "rows": rows}


def run_scores(run: dict, method: str) -> np.ndarray:
    """Each question's score of `method` in a `load_run` run, by the run's own metric (eval.json's meta)."""
    metric = METRICS[run["report"]["meta"]["metric"]]
    try:
        return np.asarray([metric(row["predictions"][method], row["answers"]) for row in run["rows"]], dtype=float)
    except KeyError:
        raise ValueError(f"{run['folder']}/predictions.jsonl has no method {method!r}: evaluate it with "
                         f"that method (eval.py --method / --budget all).") from None


def check_same_questions(runs: list) -> None:
    """ValueError unless every `load_run` run holds the same (task, question, answers) in the same order."""
    first = [(row["task"], row["question"], row["answers"]) for row in runs[0]["rows"]]
    for run in runs[1:]:
        if [(row["task"], row["question"], row["answers"]) for row in run["rows"]] != first:
            raise ValueError(f"{run['folder']} was evaluated on other questions than {runs[0]['folder']}: the "
                             "runs must be measured on the same split, families and number of samples.")


def seed_row(seed, run: dict, method: str, reference: str, scores: tuple) -> dict:
    """One seed's numbers (see the module docstring), from its report and its answers' `scores` (the method's and the
    reference's per question, `_scores`)."""
    paired = statistics.paired_difference(*scores)
    report = run["report"]
    auto, ref = report["methods"][method], report["methods"][reference]
    tiers = {key: value["accuracy"] for key, value in report["methods"].items() if key.startswith("tier_")}
    frontier = report.get("frontier") or {}
    return {"seed": seed, "folder": run["folder"], "accuracy": auto["accuracy"],
            "mean_tokens": auto["mean_visual_tokens"], "budget_cost": auto.get("budget_cost"),
            "reference_accuracy": ref["accuracy"], "difference": paired["difference"], "low": paired["low"],
            "high": paired["high"], "accuracy_kept": auto["accuracy"] / ref["accuracy"] if ref["accuracy"] else None,
            "envelope_margin": frontier.get("difference"), "envelope_low": frontier.get("low"),
            "envelope_high": frontier.get("high"), "tiers": tiers, "n": len(run["rows"]),
            "more_tokens": more_tokens({name: run_scores(run, name) for name in own_budgets(report["methods"])},
                                       seed=report["meta"].get("seed", 0))}


def seed_study(runs: dict, method: str = "auto", reference: str = "trained_full") -> dict:
    """`runs`: seed -> `load_run(...)`, every run on the same questions. Returns {"per_seed", "across", "pooled",
    "method", "reference"} (module docstring)."""
    if len(runs) < 2:
        raise ValueError(f"a seed study needs at least 2 seeds, got {len(runs)}.")
    seeds = sorted(runs)
    check_same_questions([runs[seed] for seed in seeds])
    scores = {seed: (run_scores(runs[seed], method), run_scores(runs[seed], reference)) for seed in seeds}
    per_seed = [seed_row(seed, runs[seed], method, reference, scores[seed]) for seed in seeds]
    fields = ("accuracy", "mean_tokens", "reference_accuracy", "difference", "accuracy_kept", "envelope_margin")
    across = {field: statistics.across_seeds([row[field] for row in per_seed]) for field in fields
              if all(row[field] is not None for row in per_seed)}
    tier_names = sorted(set.intersection(*(set(row["tiers"]) for row in per_seed)), key=lambda t: int(t[5:]))
    across["tiers"] = {tier: statistics.across_seeds([row["tiers"][tier] for row in per_seed]) for tier in tier_names}
    mean_auto = np.mean([scores[seed][0] for seed in seeds], axis=0)
    mean_ref = np.mean([scores[seed][1] for seed in seeds], axis=0)
    pooled = statistics.paired_difference(mean_auto, mean_ref)
    pooled.update(accuracy=[float(mean_auto.mean()), float(mean_ref.mean())], seeds=len(seeds))
    return {"method": method, "reference": reference, "per_seed": per_seed, "across": across, "pooled": pooled}


def seed_table(study: dict) -> list:
    """The study as markdown lines: one row per seed, the spread across seeds, the seed-averaged difference, and one
    bullet per seed on whether more tokens ever hurt."""
    def points(value):
        return f"{100 * value:+.1f}"

    rows = ["| seed | auto accuracy | auto tokens (price) | reference accuracy | auto minus reference [95% interval] "
            "| auto over the envelope [95% interval] |", "|---|---|---|---|---|---|"]
    for row in study["per_seed"]:
        margin = ("" if row["envelope_margin"] is None else
                  f"{points(row['envelope_margin'])} [{points(row['envelope_low'])}, {points(row['envelope_high'])}]")
        rows.append(f"| {row['seed']} | {row['accuracy']:.3f} | {row['mean_tokens']:.1f} ({row['budget_cost']}) | "
                    f"{row['reference_accuracy']:.3f} | {points(row['difference'])} [{points(row['low'])}, "
                    f"{points(row['high'])}] | {margin} |")
    across = study["across"]

    def spread(field, scale=1.0, sign=""):
        if field not in across:
            return ""
        value, digits = across[field], 1 if scale != 1.0 or field == "mean_tokens" else 3
        mean, low, high = (f"{scale * value[key]:{sign}.{digits}f}" for key in ("mean", "low", "high"))
        return f"{mean} (sd {scale * value['std']:.{digits}f}; t interval [{low}, {high}])"

    rows.append(f"| mean of {len(study['per_seed'])} seeds | {spread('accuracy')} | {spread('mean_tokens')} | "
                f"{spread('reference_accuracy')} | {spread('difference', 100, '+')} | "
                f"{spread('envelope_margin', 100, '+')} |")
    pooled = study["pooled"]
    tiers = ", ".join(f"{name[5:]}: {value['mean']:.3f} [{value['min']:.3f}-{value['max']:.3f}]"
                      for name, value in across.get("tiers", {}).items())
    summary = (f"Seed-averaged answers (each question's correctness averaged over the {pooled['seeds']} seeds): "
               f"auto {pooled['accuracy'][0]:.3f}, reference {pooled['accuracy'][1]:.3f}, difference "
               f"{points(pooled['difference'])} [{points(pooled['low'])}, {points(pooled['high'])}] (paired bootstrap "
               f"over {pooled['n']} questions). Forced tiers, mean [range] over seeds: {tiers}.")
    checks = [f"- Seed {row['seed']}: {more_tokens_line(row['more_tokens'])}" for row in study["per_seed"]
              if row.get("more_tokens")]  # a report.json written before the check has none
    return [*rows, "", summary, *([""] + checks if checks else [])]


__all__ = ["check_same_questions", "load_run", "run_scores", "seed_row", "seed_study", "seed_table"]
