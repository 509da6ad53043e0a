"""Did a change leave the answers alone? Two evaluations' predictions (eval.py's predictions.jsonl) on the same
questions, method by method: accuracy of each, the paired difference with its 95% interval, and how often the
answer and the visual-token count are the same.

    python -m tools.compare_predictions outputs/demo/predictions.jsonl outputs/demo/sam_bf16/predictions.jsonl \
        [--methods auto tier_4 ...] [--json outputs/demo/sam_bf16/comparison.json]

Only the methods both files hold are compared (or those named); files over other questions are refused.
"""

import argparse
import json
import sys
from pathlib import Path

from modeling_arrcoc.metrics import exact_match
from modeling_arrcoc.statistics import paired_difference


def read_predictions(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def compare(first: list[dict], second: list[dict], methods=None) -> dict:
    """{method: accuracies, paired difference (second minus first), same-answer and same-token shares}."""
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


def table(result: dict) -> str:
    lines = ["| method | first | second | second - first (95% CI), points | same answer | same tokens |",
             "|---|---|---|---|---|---|"]
    for method, r in result.items():
        lines.append(f"| {method} | {r['accuracy_first']:.3f} | {r['accuracy_second']:.3f} | "
                     f"{100 * r['difference']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}] | "
                     f"{r['same_answer']:.3f} | {r['same_tokens']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the comparison here")
    args = parser.parse_args(argv)
    try:
        result = compare(read_predictions(args.first), read_predictions(args.second), args.methods)
    except ValueError as error:
        sys.exit(f"compare_predictions: {error}")
    print(f"{args.first} (first) against {args.second} (second), {next(iter(result.values()))['n']} questions:")
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"first": str(args.first), "second": str(args.second), "methods": result},
                                        indent=2))
    return result


if __name__ == "__main__":
    main()


__all__ = ["compare", "main", "read_predictions", "table"]
