"""What each token price does on a phase's validation rows: the sweep phase 3's price fit chooses from, with each
family's tokens beside what it needs.

    python -m tools.price_sweep outputs/demo/checkpoint configs/demo/phase3.yaml --rows 1200

Every tier runs on the first `--rows` validation rows of the YAML's data keys (`budget_head_runs`, one SAM pass a
batch), then each price of the fit's grid (`PRICE_GRID`, or `--prices`) picks every row's tier at the checkpoint's
own temperature (`price_points`, as `fit_budget_cost` does). Per price: accuracy, mean tokens, the margin over the
constant tiers' envelope, and each family's mean tokens; the last row gives each family's need, the mean tokens of
its oracle-minimal tier with its 95% interval, as eval.json's `policies.need` does on test questions (tokens spent on
the rows the largest tier answers, need on the rows some tier answers). A family whose tokens lie inside its interval
is marked with *; the price the YAML's rule chooses on these rows (`price_choice`, under its
`fit_budget_accuracy_floor` and `fit_budget_min_margin`) with "<- fit". The validation rows wear the training look:
on a look training never showed, the need can be larger (docs/demo_model.md).
"""

import argparse

import numpy as np

import modeling_arrcoc  # noqa: F401  (registers ArrCoc with the Auto classes)
from modeling_arrcoc import statistics
from modeling_arrcoc.data.collator import ArrCocCollator
from modeling_arrcoc.data.recipe import build_datasets
from modeling_arrcoc.training.calibration import PRICE_GRID, budget_head_runs, price_choice
from modeling_arrcoc.training.recipe import build_model_and_processor, parse_config


def sweep_table(points: list, exact: np.ndarray, tier_tokens: list, tasks: list, chosen: float | None = None) -> dict:
    """Rows of the sweep from `price_points`' points ([R] tiers and tokens each) and the runs' `exact` [R, T] (tier
    t costs `tier_tokens[t]`): {"need": {family: {"mean", "low", "high", "n"}}, "rows": [{"budget_cost", "accuracy",
    "mean_tokens", "margin", "chosen" (the price `chosen`), "families": {family: mean tokens}}]}."""
    counts = np.tile(np.asarray(tier_tokens, dtype=float)[:, None], (1, len(tasks)))
    spent = {index: [float(c) for c in point["counts"]] for index, point in enumerate(points)}
    need = statistics.family_need(exact.T != 0, counts, tasks, spent=spent)
    rows = [{key: point[key] for key in ("budget_cost", "accuracy", "mean_tokens", "margin")}
            | {"chosen": point["budget_cost"] == chosen,
               "families": {family: value["mean"] for family, value in need["spent"][index].items()}}
            for index, point in enumerate(points)]
    return {"need": need["oracle_minimal"], "rows": rows}


def format_table(table: dict) -> str:
    """`sweep_table`'s rows as markdown: a family's tokens starred inside its need interval (n/a where the largest
    tier answers none of its rows), the fit's price marked, the need row last."""
    families = sorted(table["need"], key=str)
    lines = ["| price | accuracy | tokens | over the envelope (points) | " + " | ".join(families) + " |",
             "|---" * (4 + len(families)) + "|"]
    for row in table["rows"]:
        cells = []
        for family in families:
            need, value = table["need"][family], row["families"][family]
            inside = value is not None and need["n"] and need["low"] - 1e-9 <= value <= need["high"] + 1e-9
            cells.append("n/a" if value is None else f"{value:.1f}{'*' if inside else ''}")
        mark = " <- fit" if row["chosen"] else ""
        lines.append(f"| {row['budget_cost']:g}{mark} | {row['accuracy']:.3f} | {row['mean_tokens']:.1f} | "
                     f"{100 * row['margin']:+.1f} | " + " | ".join(cells) + " |")
    needs = [f"{n['mean']:.1f} [{n['low']:.1f}, {n['high']:.1f}]" if n["n"] else "n/a"
             for n in (table["need"][family] for family in families)]
    lines.append("| need (oracle-minimal) | | | | " + " | ".join(needs) + " |")
    return "\n".join(lines)


def _prices(text: str) -> list:
    try:
        prices = [float(price) for price in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prices takes comma-separated numbers, got {text!r}") from None
    if not all(np.isfinite(prices)):
        raise argparse.ArgumentTypeError(f"--prices must be finite numbers, got {text!r}")
    return prices


def _rows(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--rows takes a positive number of validation rows, got {text!r}")
    return int(text)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a trained checkpoint with a budget predictor")
    parser.add_argument("config", help="the phase YAML whose data keys give the validation rows")
    parser.add_argument("overrides", nargs="*", help="key=value, as train.py takes them")
    parser.add_argument("--rows", type=_rows, default=1200, help="validation rows (the split is made this long)")
    parser.add_argument("--prices", type=_prices, default=list(PRICE_GRID),
                        help="comma-separated prices (default: the fit's grid)")
    parser.add_argument("--device", default="cpu", help="torch device to run the tiers on")
    args = parser.parse_args(argv)
    model_args, data_args, training = parse_config([
        args.config, *args.overrides, f"init_from={args.checkpoint}", f"synthetic_num_validation={args.rows}",
        f"max_eval_samples={args.rows}"])
    model, processor = build_model_and_processor(model_args)
    model.to(args.device).eval()
    _, validation = build_datasets(data_args, model.config)
    if validation is None or len(validation) == 0:
        raise ValueError(f"{args.config} gives no validation rows to sweep the price on.")
    rows = [validation[i] for i in range(min(args.rows, len(validation)))]
    collator = ArrCocCollator(processor, patch_size=model.config.vision_config.patch_size)
    runs = budget_head_runs(model, collator, rows)
    points, choice = price_choice(model, runs["logits"], runs["exact"], prices=args.prices,
                                  accuracy_floor=training.fit_budget_accuracy_floor,
                                  min_margin=training.fit_budget_min_margin)
    tokens = [model.config.tier_tokens(tier) for tier in range(runs["exact"].shape[1])]
    table = sweep_table(points, runs["exact"].cpu().numpy(), tokens, [row["task"] for row in rows],
                        chosen=choice["budget_cost"])
    print(f"{args.checkpoint}: {len(rows)} validation rows of {args.config}, temperature "
          f"{model.config.budget_temperature:.3g}, the model's own price {model.config.budget_cost:g}")
    print(format_table(table))
    return table


__all__ = ["format_table", "main", "sweep_table"]


if __name__ == "__main__":
    main()
