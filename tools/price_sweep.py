"""What each token price does on a phase's validation rows: the sweep phase 3's price fit chooses from, with each
family's tokens beside what it needs.

    python -m tools.price_sweep outputs/demo/checkpoint configs/demo/phase3.yaml --rows 1200

Every tier runs on the first `--rows` validation rows of the YAML's data keys (`budget_head_runs`, one SAM pass a
batch), then each price picks every row's tier at the checkpoint's own temperature (`price_points`, as
`fit_budget_cost` does). Per price: accuracy, mean tokens, the margin over the constant tiers' envelope, and each
family's mean tokens; the last row gives each family's need, the mean tokens of its oracle-minimal tier with its 95%
interval, as eval.json's `policies.need` does on test questions (tokens spent on the rows the largest tier answers,
need on the rows some tier answers). A family whose tokens lie inside its interval is marked with *. The validation
rows wear the training look: on a look training never showed, the need can be larger (docs/demo_model.md).
"""

import argparse

import numpy as np

import modeling_arrcoc  # noqa: F401  (registers ArrCoc with the Auto classes)
from modeling_arrcoc import statistics
from modeling_arrcoc.data.collator import ArrCocCollator
from modeling_arrcoc.data.recipe import build_datasets
from modeling_arrcoc.training.calibration import budget_head_runs, price_points
from modeling_arrcoc.training.recipe import build_model_and_processor, parse_config

DEFAULT_PRICES = (0.0, 0.02, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5)


def sweep_table(points: list, exact: np.ndarray, tier_tokens: list, tasks: list) -> dict:
    """Rows of the sweep from `price_points`' points ([R] tiers each) and the runs' `exact` [R, T]: {"need": {family:
    {"mean", "low", "high", "n"}}, "rows": [{"budget_cost", "accuracy", "mean_tokens", "margin", "families": {family:
    mean tokens}}]}."""
    counts = np.tile(np.asarray(tier_tokens, dtype=float)[:, None], (1, len(tasks)))
    spent = {index: [float(tier_tokens[int(t)]) for t in point["tiers"]] for index, point in enumerate(points)}
    need = statistics.family_need(exact.T != 0, counts, tasks, spent)
    rows = [{key: point[key] for key in ("budget_cost", "accuracy", "mean_tokens", "margin")}
            | {"families": {family: value["mean"] for family, value in need["spent"][index].items()}}
            for index, point in enumerate(points)]
    return {"need": need["oracle_minimal"], "rows": rows}


def format_table(table: dict) -> str:
    families = sorted(table["need"], key=str)
    lines = ["| price | accuracy | tokens | over the envelope (points) | " + " | ".join(families) + " |",
             "|---" * (4 + len(families)) + "|"]
    for row in table["rows"]:
        cells = []
        for family in families:
            need, value = table["need"][family], row["families"][family]
            inside = value is not None and need["n"] and need["low"] - 1e-9 <= value <= need["high"] + 1e-9
            cells.append("n/a" if value is None else f"{value:.1f}{'*' if inside else ''}")
        lines.append(f"| {row['budget_cost']:g} | {row['accuracy']:.3f} | {row['mean_tokens']:.1f} | "
                     f"{100 * row['margin']:+.1f} | " + " | ".join(cells) + " |")
    needs = [f"{n['mean']:.1f} [{n['low']:.1f}, {n['high']:.1f}]" if n["n"] else "n/a"
             for n in (table["need"][family] for family in families)]
    lines.append("| need (oracle-minimal) | | | | " + " | ".join(needs) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a trained checkpoint with a budget predictor")
    parser.add_argument("config", help="the phase YAML whose data keys give the validation rows")
    parser.add_argument("overrides", nargs="*", help="key=value, as train.py takes them")
    parser.add_argument("--rows", type=int, default=1200, help="validation rows (the split is made this long)")
    parser.add_argument("--prices", default=",".join(map(str, DEFAULT_PRICES)), help="comma-separated prices")
    args = parser.parse_args(argv)
    model_args, data_args, _ = parse_config([args.config, *args.overrides, f"init_from={args.checkpoint}",
                                             f"synthetic_num_validation={args.rows}", f"max_eval_samples={args.rows}"])
    model, processor = build_model_and_processor(model_args)
    model.eval()
    _, validation = build_datasets(data_args, model.config)
    if validation is None or len(validation) == 0:
        raise ValueError(f"{args.config} gives no validation rows to sweep the price on.")
    rows = [validation[i] for i in range(min(args.rows, len(validation)))]
    collator = ArrCocCollator(processor, patch_size=model.config.vision_config.patch_size)
    runs = budget_head_runs(model, collator, rows)
    prices = [float(price) for price in args.prices.split(",")]
    points = price_points(model, runs["logits"], runs["exact"], prices)
    tokens = [model.config.tier_tokens(tier) for tier in range(runs["exact"].shape[1])]
    table = sweep_table(points, runs["exact"].cpu().numpy(), tokens, [row["task"] for row in rows])
    print(f"{args.checkpoint}: {len(rows)} validation rows of {args.config}, temperature "
          f"{model.config.budget_temperature:.3g}, the model's own price {model.config.budget_cost:g}")
    print(format_table(table))
    return table


__all__ = ["format_table", "main", "sweep_table"]


if __name__ == "__main__":
    main()
