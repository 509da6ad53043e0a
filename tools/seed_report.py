"""The demo's comparison across training seeds (modeling_arrcoc/evaluation/seeds.py): one eval.py output folder per
seed, all on the same questions.

    python -m tools.seed_report 0=outputs/demo 1=outputs/demo/seeds/1 2=outputs/demo/seeds/2 \
        --output outputs/demo/seeds/report.json

Prints one line per seed and the spread across them; `make seeds` runs it.
"""

import argparse
import json
from pathlib import Path

from modeling_arrcoc.evaluation.seeds import load_run, seed_study


def _run(text: str):
    seed, sep, folder = text.partition("=")
    if not sep or not seed.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected SEED=FOLDER (e.g. 1=outputs/demo/seeds/1), got {text!r}.")
    return int(seed), folder


def lines(study: dict) -> list:
    out = [f"{study['method']} against {study['reference']}, same questions (n = {study['per_seed'][0]['n']})"]
    for row in study["per_seed"]:
        out.append(f"seed {row['seed']}: {row['accuracy']:.3f} at {row['mean_tokens']:.1f} tokens (price "
                   f"{row['budget_cost']}), reference {row['reference_accuracy']:.3f}, difference "
                   f"{100 * row['difference']:+.1f} [{100 * row['low']:+.1f}, {100 * row['high']:+.1f}]")
    for field, value in study["across"].items():
        if field != "tiers":
            out.append(f"{field}: mean {value['mean']:.3f}, sd {value['std']:.3f}, range [{value['min']:.3f}, "
                       f"{value['max']:.3f}], 95% t interval [{value['low']:.3f}, {value['high']:.3f}]")
    pooled = study["pooled"]
    out.append(f"seed-averaged answers: {100 * pooled['difference']:+.1f} [{100 * pooled['low']:+.1f}, "
               f"{100 * pooled['high']:+.1f}] over {pooled['n']} questions, {pooled['seeds']} seeds")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=_run, help="SEED=FOLDER, one per seed (eval.py --output-dir)")
    parser.add_argument("--output", help="write the study as JSON here")
    args = parser.parse_args(argv)
    study = seed_study({seed: load_run(folder) for seed, folder in args.runs})
    print("\n".join(lines(study)))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(study, indent=2) + "\n")


if __name__ == "__main__":
    main()
