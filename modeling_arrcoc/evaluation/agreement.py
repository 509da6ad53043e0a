"""Two evaluations of the same questions, method by method: did a change leave the answers alone?

`compare_predictions` pairs two eval.py predictions.jsonl files (the same questions in the same order): accuracy of
each, the paired difference (second minus first) with its 95% interval, and how often the answer and the
visual-token count are the same. tools.compare_predictions is its command; `make sam-bf16` and docs/results.md use it.
"""

import json
from pathlib import Path

from ..metrics import exact_match
from ..statistics import paired_difference


def read_predictions(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def compare_predictions(first: list[dict], second: list[dict], methods=None) -> dict:
    """{method: accuracies, paired difference (second minus first), same-answer and same-token shares}: the methods
    both runs hold, or `methods`; runs over other questions are refused."""
    if [r["question"] for r in first] != [r["question"] for r in second]:
        raise ValueError("The two prediction files are not over the same questions in the same order.")
    shared = [m for m in first[0]["predictions"] if m in second[0]["predictions"]]
    methods = shared if methods is None else methods
    missing = sorted(set(methods) - set(shared))
    if missing:
        raise ValueError(f"Methods not in both files: {missing}; both hold {shared}.")
    result = {}
    for method in methods:
        before = [exact_match(r["predictions"][method], r["answers"]) for r in first]
        after = [exact_match(r["predictions"][method], r["answers"]) for r in second]
        same_answer = sum(a["predictions"][method] == b["predictions"][method] for a, b in zip(first, second))
        same_tokens = sum(a["visual_token_counts"][method] == b["visual_token_counts"][method]
                          for a, b in zip(first, second))
        difference = paired_difference(after, before)
        result[method] = {
            "n": len(first), "accuracy_first": sum(before) / len(before), "accuracy_second": sum(after) / len(after),
            "difference": difference["difference"], "low": difference["low"], "high": difference["high"],
            "same_answer": same_answer / len(first), "same_tokens": same_tokens / len(first),
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


__all__ = ["agreement_table", "compare_predictions", "read_predictions"]
