"""Two evaluations of the same questions, method by method: did a change leave the answers alone?

`compare_runs` pairs two eval.py output folders (eval.json and predictions.jsonl, the same questions in the same
order): each run's accuracy by its own metric, the paired difference (second minus first) with its 95% interval, and
how often the answer and the visual-token count are the same. A method may be a pair "FIRST:SECOND" (the first
run's FIRST against the second run's SECOND; one folder twice compares two methods of one run), and `family`
keeps one task family's questions. tools.compare_predictions is its command; `make sam-bf16` and docs/results.md
use it. The runs are read and checked as the seed study reads them (`seeds`).
"""

from ..statistics import paired_difference
from .seeds import check_same_questions, run_scores


def compare_runs(first: dict, second: dict, methods=None, family: str | None = None) -> dict:
    """{method: accuracies, paired difference (second minus first), same-answer and same-token shares} of two
    `seeds.load_run` runs: the methods both hold, or `methods` (a name, or "FIRST:SECOND" for the first run's FIRST
    against the second run's SECOND), over every question or `family`'s; runs over other questions or scored by
    another metric are refused."""
    check_same_questions([first, second])
    metrics = {run["report"]["meta"]["metric"] for run in (first, second)}
    if len(metrics) != 1:
        raise ValueError(f"The two runs are scored by different metrics: {sorted(metrics)}.")
    metric = metrics.pop()
    shared = [m for m in first["rows"][0]["predictions"] if m in second["rows"][0]["predictions"]]
    methods = shared if methods is None else methods
    pairs = {method: tuple(method.split(":", 1)) if ":" in method else (method, method) for method in methods}
    missing = sorted({a for a, _ in pairs.values() if a not in first["rows"][0]["predictions"]}
                     | {b for _, b in pairs.values() if b not in second["rows"][0]["predictions"]})
    if missing:
        raise ValueError(f"Methods not in both runs: {missing}; both hold {shared}.")
    index = [i for i, row in enumerate(first["rows"]) if family is None or row["task"] == family]
    if not index:
        families = sorted({row["task"] for row in first["rows"]})
        raise ValueError(f"{first['folder']} holds no {family!r} questions (it holds {', '.join(families)}).")
    rows = [(first["rows"][i], second["rows"][i]) for i in index]
    result = {}
    for method, (one, other) in pairs.items():
        before, after = run_scores(first, one)[index], run_scores(second, other)[index]
        same_answer = sum(a["predictions"][one] == b["predictions"][other] for a, b in rows)
        same_tokens = sum(a["visual_token_counts"][one] == b["visual_token_counts"][other] for a, b in rows)
        difference = paired_difference(after, before)
        result[method] = {
            "n": len(rows), "metric": metric,
            "accuracy_first": float(before.mean()), "accuracy_second": float(after.mean()),
            "difference": difference["difference"], "low": difference["low"], "high": difference["high"],
            "same_answer": same_answer / len(rows), "same_tokens": same_tokens / len(rows),
        }
    return result


def agreement_table(result: dict) -> str:
    lines = ["| method | first | second | second - first (95% CI), points | same answer | same tokens |",
             "|---|---|---|---|---|---|"]
    for method, r in result.items():
        lines.append(f"| {method} | {r['accuracy_first']:.3f} | {r['accuracy_second']:.3f} | "
                     f"{100 * r['difference']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}] | "
                     f"{r['same_answer']:.3f} | {r['same_tokens']:.3f} |")
    return "\n".join(lines)


__all__ = ["agreement_table", "compare_runs"]
