"""The demo's comparison across training seeds (modeling_arrcoc/evaluation/seeds.py): one eval.py output folder per
seed, all on the same questions.

    python -m tools.seed_report 0=outputs/demo 1=outputs/demo/seeds/1 2=outputs/demo/seeds/2 \
        --output outputs/demo/seeds/report.json

Prints the table docs/results.md shows (one row per seed, the spread across them); `make seeds` runs it.
"""

import argparse
import json
from pathlib import Path

from modeling_arrcoc.evaluation.seeds import load_run, seed_study, seed_table


def _run(text: str):
    seed, sep, folder = text.partition("=")
    if not sep or not seed.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected SEED=FOLDER (e.g. 1=outputs/demo/seeds/1), got {text!r}.")
    return int(seed), folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=_run, help="SEED=FOLDER, one per seed (eval.py --output-dir)")
    parser.add_argument("--output", help="write the study as JSON here")
    args = parser.parse_args(argv)
    study = seed_study({seed: load_run(folder) for seed, folder in args.runs})
    print("\n".join(seed_table(study)))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(study, indent=2) + "\n")


if __name__ == "__main__":
    main()
