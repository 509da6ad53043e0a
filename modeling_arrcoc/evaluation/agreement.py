"""Two evaluations of the same questions, method by method: did a change leave the answers alone?

`compare_runs` pairs two eval.py output folders (eval.json and predictions.jsonl, the same questions in the same
order): each run's accuracy by its own metric, the paired difference (second minus first) with its 95% interval, and
how often the answer and the visual-token count are the same. tools.compare_predictions is its command; `make
sam-bf16` and docs/results.md use it. The runs are read and checked as the seed study reads them (`seeds`).
"""

from ..statistics import paired_difference
from .seeds import check_same_questions, run_scores


def compare_runs(first: dict, second: dict, methods=None) -> dict:
    """{method: accuracies, paired difference (second minus first), same-answer and same-token shares} of two
    `seeds.load_run` runs: the methods both hold, or `methods`; runs over other questions or scored by another metric
    are refused."""
    check_same_questions([first, second])
    metrics = {run["report"]["meta"]["metric"] for run in (first, second)}
    if len(metrics) != 1:
        raise ValueError(f"The two runs are scored by different metrics: {sorted(metrics)}.")
    metric = metrics.pop()
    shared = [m for m in first["rows"][0]["predictions"] if m in second["rows"][0]["predictions"]]
    methods = shared if methods is None else methods
    missing = sorted(set(methods) - set(shared))
    if missing:
        raise ValueError(f"Methods not in both runs: {missing}; both hold {shared}.")
    rows = list(zip(first["rows"], second["rows"]))
    result = {}
    for method in methods:
        before, after = run_scores(first, method), run_scores(second, method)
        same_answer = sum(a["predictions"][method] == b["predictions"][method] for a, b in rows)
        same_tokens = sum(a["visual_token_counts"][method] == b["visual_token_counts"][method] for a, b in rows)
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
