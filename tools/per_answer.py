"""Where a family's points and tokens go, answer by answer: for one task family of an evaluation (eval.py
--output-dir: eval.json and predictions.jsonl), each method's accuracy and mean visual tokens per reference answer
(for counting, per count: does auto buy more tokens for a count of 9 than for a count of 3, and does it pay?).

    python -m tools.per_answer outputs/demo --family global_count --methods auto tier_8 tier_16 full trained_full

Accuracy is by the run's own metric (eval.json's meta); rows are sorted by answer (numerically where they are
numbers). A method with the same tokens on every question shows its accuracy alone.
"""

import argparse
import sys

import numpy as np

from modeling_arrcoc.evaluation.seeds import load_run, run_scores


def per_answer(run: dict, family: str, methods: list) -> list:
    """[{"answer", "n", method: (accuracy, mean tokens)}] over `family`'s questions of a `load_run` run, one row
    per first reference answer."""
    rows = run["rows"]
    picked = [i for i, row in enumerate(rows) if row["task"] == family]
    if not picked:
        families = sorted({row["task"] for row in rows})
        raise ValueError(f"{run['folder']} holds no {family!r} questions (it holds {', '.join(families)}).")
    scores = {method: run_scores(run, method) for method in methods}
    groups = {}
    for i in picked:
        groups.setdefault(rows[i]["answers"][0], []).append(i)
    table = []
    for answer in sorted(groups, key=_answer_order):
        index = groups[answer]
        table.append({"answer": answer, "n": len(index), **{
            method: (float(scores[method][index].mean()),
                     float(np.mean([rows[i]["visual_token_counts"][method] for i in index])))
            for method in methods}})
    return table


def _answer_order(answer: str):
    return (0, float(answer), "") if answer.replace(".", "", 1).isdigit() else (1, 0.0, answer)


def format_table(table: list, methods: list) -> str:
    varying = [m for m in methods if len({round(row[m][1], 6) for row in table}) > 1]
    header = ["answer", "n"] + [f"{m} acc" for m in methods] + [f"{m} tokens" for m in varying]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [row["answer"], str(row["n"])] + [f"{row[m][0]:.2f}" for m in methods]
        cells += [f"{row[m][1]:.1f}" for m in varying]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="an eval.py output folder")
    parser.add_argument("--family", default="global_count")
    parser.add_argument("--methods", nargs="+", default=["auto", "tier_8", "tier_16", "full"])
    args = parser.parse_args(argv)
    try:
        table = per_answer(load_run(args.run), args.family, args.methods)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"per_answer: {error}")
    print(f"{args.run}, {args.family}, {sum(row['n'] for row in table)} questions:")
    print(format_table(table, args.methods))
    return table


if __name__ == "__main__":
    main()


__all__ = ["format_table", "main", "per_answer"]
