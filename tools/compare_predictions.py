"""Did a change leave the answers alone? Two evaluations (eval.py --output-dir folders: eval.json and
predictions.jsonl) of the same questions, method by method: each run's accuracy by its own metric, the paired
difference with its 95% interval, and how often the answer and the visual-token count are the same
(modeling_arrcoc.evaluation.agreement).

    python -m tools.compare_predictions outputs/demo outputs/demo/sam_bf16 [--methods auto tier_4 ...] \
        [--family global_count] [--json outputs/demo/sam_bf16/comparison.json]

Only the methods both runs hold are compared (or those named); runs over other questions are refused. A method
FIRST:SECOND compares the first run's FIRST with the second run's SECOND; with one folder given twice, two methods
of one run on the same questions (e.g. tier_16:trained_saliency_topk@16).
"""

import argparse
import json
import sys
from pathlib import Path

from modeling_arrcoc.evaluation.agreement import agreement_table, compare_runs
from modeling_arrcoc.evaluation.seeds import load_run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path, help="an eval.py output folder")
    parser.add_argument("second", type=Path, help="another, over the same questions")
    parser.add_argument("--methods", nargs="+", default=None, help="names, or FIRST:SECOND pairs")
    parser.add_argument("--family", default=None, help="only this task family's questions")
    parser.add_argument("--json", type=Path, default=None, help="also write the comparison here")
    args = parser.parse_args(argv)
    try:
        result = compare_runs(load_run(args.first), load_run(args.second), args.methods, args.family)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"compare_predictions: {error}")
    print(f"{args.first} (first) against {args.second} (second), {next(iter(result.values()))['n']} questions:")
    print(agreement_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"first": str(args.first), "second": str(args.second), "methods": result},
                                        indent=2))
    return result


if __name__ == "__main__":
    main()


__all__ = ["main"]
