"""Evaluate an ARR-COC checkpoint: accuracy, measured visual tokens, latency, budget calibration, fixed-budget
baselines through the same checkpoint (a diagnostic) and baselines trained with their own selection (--method).

    python eval.py outputs/demo/phase3/checkpoint --dataset synthetic --num-samples 200
    python eval.py CHECKPOINT --dataset docvqa --budget auto --baselines uniform_pool,query_sim \
        --model-card model_card.md
    python eval.py outputs/demo/checkpoint --method uniform_pool=outputs/demo/baseline_uniform/checkpoint \
        --method full_reference=outputs/demo/reference/checkpoint

Reads top to bottom: checkpoint + processor (from_pretrained on the directory) -> dataset (the synthetic suite at the
checkpoint's geometry, or a Hub dataset with its own metric) -> methods -> evaluation -> OUTPUT_DIR/eval.json,
pareto.png, heatmaps.png, predictions.jsonl -> table on stdout -> model card (optional). The report format is
documented in modeling_arrcoc/evaluation/__init__.py.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForImageTextToText, AutoProcessor

import modeling_arrcoc  # noqa: F401  (registers ArrCoc with the Auto classes)
from modeling_arrcoc.cli import whole_number
from modeling_arrcoc.configuration_arrcoc import VISION_AUTOCAST_DTYPES
from modeling_arrcoc.data.recipe import data_arguments
from modeling_arrcoc.data.synthetic import FAMILIES
from modeling_arrcoc.evaluation import (
    BASELINES,
    SYNTHETIC,
    TrainedCheckpoint,
    evaluate,
    format_table,
    load_eval_dataset,
    method_names,
    plot_heatmaps,
    plot_pareto,
    save_report,
    trained_families,
    trained_methods,
)
from modeling_arrcoc.evaluation.model_card import write_model_card
from modeling_arrcoc.methods import parse_cost, trained_own_budget
from modeling_arrcoc.provenance import git_commit, read_training_config, repo_path


NO_AUTOCAST = "none"  # --vision-autocast-dtype's value that turns a checkpoint's autocast off


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="Checkpoint directory with the model and its processor.")
    parser.add_argument("--dataset", default=SYNTHETIC, help="'synthetic' or a Hub dataset name (data/hub.py).")
    parser.add_argument("--dataset-path", default=None, help="Local copy of the Hub dataset (offline).")
    parser.add_argument("--dataset-mixture", default=None,
                        help="A YAML with `dataset_mixture` (a phase YAML, configs/mixture_example.yaml): evaluate "
                             "each source with its own metric into OUTPUT_DIR/<name>/, summary in mixture.json.")
    parser.add_argument("--split", default=None, help="Split (default: synthetic 'test', Hub: the spec's split).")
    parser.add_argument("--budget", default="all", type=budget_from,
                        help="'all' (auto, every tier, full), 'auto', 'full' or a tier (value or index).")
    parser.add_argument("--budget-costs", default="", type=costs_from, metavar="C1,C2,...",
                        help="Also run auto at each token price (auto(cost=C), generate's budget_cost): 0 is the "
                             "predicted tier, more buys fewer tokens, less buys more. Traces auto's own curve. A "
                             "price changes only each question's tier, so its answers are read from the forced tiers' "
                             "answers at the tiers it picks (not timed); auto itself is generated and eval.json "
                             "says how many of its answers that reading reproduces (answers_match_tiers).")
    parser.add_argument("--measure-prices", action="store_true",
                        help="Generate (and time) auto at every --budget-costs price instead of reading the tiers.")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help=f"Comma-separated subset of {','.join(BASELINES)}, or 'none'.")
    parser.add_argument("--method", action="append", default=[], type=trained_from, metavar="NAME=CHECKPOINT",
                        help="Another trained checkpoint (repeatable), run on the same questions with its own "
                             "selection (config.selection_method): a fixed-compression baseline at each tier "
                             "(trained_NAME@K), a full-token model once (trained_NAME, and with query_sim among "
                             "--baselines trained_NAME+query_sim@K), an ARR-COC-like one at auto and each tier.")
    parser.add_argument("--num-samples", type=int, default=None, help="Evaluate the first N rows.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--output-dir", default="outputs/eval")
    parser.add_argument("--no-calibration", action="store_true", help="Do not run every tier for calibration.")
    parser.add_argument("--model-card", default=None, help="Also write a model card to this path.")
    parser.add_argument("--model-name", default=None, help="Name in the model card (default: checkpoint folder).")
    parser.add_argument("--training-config", action="append", default=[],
                        help="Phase YAML used to train the checkpoint, quoted in the model card (repeatable).")
    parser.add_argument("--limitation", action="append", default=[],
                        help="A known limitation to state in the model card (repeatable).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random@K baseline.")
    parser.add_argument("--synthetic-seed", type=int, default=0, help="Seed of the synthetic pages.")
    parser.add_argument("--synthetic-families", default=None, type=families_from, metavar="F1,F2,...",
                        help="Synthetic task families to evaluate (default: all; make demo: the ones the base reads).")
    parser.add_argument("--cache-dir", default=None, help="datasets cache for the synthetic suite.")
    parser.add_argument("--heatmaps-per-task", type=whole_number(0), default=2,
                        help="Heatmap rows per task family in heatmaps.png; 0 draws none (no heatmaps.png).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.add_argument("--vision-autocast-dtype", default=None, choices=(*VISION_AUTOCAST_DTYPES, NO_AUTOCAST),
                        help="Run every checkpoint's SAM under autocast to this dtype (config.vision_autocast_dtype; "
                             f"compare the answers with tools.compare_predictions); '{NO_AUTOCAST}' runs it in the "
                             "weights' dtype even where a checkpoint's config sets one. Default: as each config says.")
    return parser.parse_args(argv)


def load_checkpoint(path: str, device: str = "cpu", vision_autocast_dtype=None):
    """Model (float32, eval mode, on `device`) and processor, both from the checkpoint directory; SAM under autocast
    to `vision_autocast_dtype` when given, with none for NO_AUTOCAST (else as the checkpoint's config says)."""
    processor = AutoProcessor.from_pretrained(path)
    overrides = {} if vision_autocast_dtype is None else {
        "vision_autocast_dtype": None if vision_autocast_dtype == NO_AUTOCAST else vision_autocast_dtype}
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, **overrides).to(device).eval()
    return model, processor


def baselines_from(text: str) -> tuple:
    return () if text.strip().lower() == "none" else tuple(b.strip() for b in text.split(",") if b.strip())


def families_from(text: str) -> tuple:
    families = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = set(families) - set(FAMILIES)
    if unknown or not families:
        raise argparse.ArgumentTypeError(f"unknown synthetic families {sorted(unknown)}; known: {list(FAMILIES)}")
    return families


def costs_from(text: str) -> tuple:
    try:
        return tuple(parse_cost(c, "--budget-costs") for c in text.split(",") if c.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def budget_from(text: str):
    if text.isdigit():
        return int(text)
    if text in ("all", "auto", "full"):
        return text
    raise argparse.ArgumentTypeError(f"--budget takes all, auto, full or a tier (value or index), not {text!r}")


def trained_from(text: str) -> tuple:
    name, _, path = text.partition("=")
    if not path or not name.replace("_", "").replace("-", "").isalnum():
        raise argparse.ArgumentTypeError(f"--method takes NAME=CHECKPOINT with NAME of letters, digits, _ and -; "
                                         f"got {text!r}")
    return name, path


def load_trained(name, path, device, budget, baselines, vision_autocast_dtype=None) -> TrainedCheckpoint:
    """A trained checkpoint, its methods at its own selection, and what the report records about it."""
    model, processor = load_checkpoint(path, device, vision_autocast_dtype)
    config = model.config
    training = read_training_config(path)
    record = {"checkpoint": str(path), "selection_method": config.selection_method,
              "relevance_tag": config.relevance_tag, "fold_dropped": config.fold_dropped,
              "training_config": training, "trained_families": trained_families(path)}
    methods = trained_methods(name, config.selection_method, config.budgets, budget, query_sim="query_sim" in baselines,
                              own_budget=trained_own_budget(training, config.budgets))
    return TrainedCheckpoint(name, model, processor, methods, record)


def model_card_extra(args) -> dict:
    configs = [f"`{path}`:\n\n```yaml\n{Path(path).read_text().rstrip()}\n```" for path in args.training_config]
    limitations = "\n".join(f"- {text}" for text in args.limitation) or None
    return {"name": args.model_name or Path(args.checkpoint).resolve().name, "training": "\n\n".join(configs) or None,
            "limitations": limitations}


def evaluate_mixture(args, argv: list) -> dict:
    """Each source of the YAML's `dataset_mixture` that names an `eval_split` evaluated on its own (that split, its
    path, its metric: ANLS, relaxed accuracy, VQA accuracy or exact match) by `main` into OUTPUT_DIR/<name>/;
    OUTPUT_DIR/mixture.json gathers every source's metric, n and per-method accuracy with its interval. Scores of
    different metrics are not averaged. A source without `eval_split` (train-only) is skipped."""
    from modeling_arrcoc.data.mixture import SYNTHETIC, parse_mixture

    values = yaml.safe_load(repo_path(args.dataset_mixture).read_text()) or {}
    sources = parse_mixture(data_arguments(values).dataset_mixture)
    base, skip = [], False
    for item in argv:  # every option but --dataset-mixture; the per-source options are appended (last one wins)
        if skip or item.startswith("--dataset-mixture"):
            skip = item == "--dataset-mixture"
            continue
        base.append(item)
    summary = {}
    for source in sources:
        if not source.eval_split:
            print(f"{source.name}: no eval_split in the mixture, not evaluated")
            continue
        extra = ["--dataset", source.name, "--output-dir", str(Path(args.output_dir) / source.name)]
        extra += ["--split", source.eval_split]
        extra += ["--dataset-path", source.path] if source.path and source.name != SYNTHETIC else []
        report = main(base + extra)
        summary[source.name] = {
            "metric": report["meta"]["metric"], "dataset_source": report["meta"].get("dataset_source"),
            "split": report["meta"].get("split"), "num_samples": report["meta"]["num_samples"],
            "methods": {name: {key: entry.get(key) for key in ("accuracy", "interval", "n", "mean_visual_tokens")}
                        for name, entry in report["methods"].items()},
        }
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "mixture.json").write_text(json.dumps({"sources": summary}, indent=1))
    for name, entry in summary.items():
        scores = ", ".join(f"{method} {values['accuracy']:.3f}" for method, values in entry["methods"].items())
        print(f"{name} ({entry['metric']}, n={entry['num_samples']}): {scores}")
    return {"sources": summary}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.dataset_mixture:
        return evaluate_mixture(args, list(sys.argv[1:] if argv is None else argv))
    start = time.perf_counter()
    model, processor = load_checkpoint(args.checkpoint, args.device, args.vision_autocast_dtype)
    vision = model.config.vision_config
    data = load_eval_dataset(args.dataset, args.split, args.num_samples, vision.image_size, vision.patch_size,
                             args.cache_dir, seed=args.synthetic_seed, path=args.dataset_path,
                             families=args.synthetic_families)
    print(f"{args.checkpoint}: {len(data.dataset)} questions of {args.dataset} ({data.split}), metric {data.metric}")
    baselines = baselines_from(args.baselines)
    methods = method_names(model.config.budgets, args.budget, baselines, args.budget_costs)
    trained = [load_trained(name, path, args.device, args.budget, baselines, args.vision_autocast_dtype)
               for name, path in args.method]
    meta = {"checkpoint": str(args.checkpoint), "dataset": args.dataset, "dataset_source": data.source,
            "split": data.split, "commit": git_commit(), "evaluated_families": args.synthetic_families,
            "trained_families": trained_families(args.checkpoint, args.training_config)}
    output_dir = Path(args.output_dir)
    report = evaluate(model, processor, data.dataset, data.metric, methods, args.batch_size, args.max_new_tokens,
                      calibration=not args.no_calibration, seed=args.seed, meta=meta, progress=not args.quiet,
                      predictions_path=output_dir / "predictions.jsonl", trained=trained,
                      measure_prices=args.measure_prices)
    save_report(report, output_dir / "eval.json")
    plot_pareto(report, output_dir / "pareto.png")
    if args.heatmaps_per_task:
        plot_heatmaps(model, processor, data.dataset, output_dir / "heatmaps.png", per_task=args.heatmaps_per_task)
    print(format_table(report))
    if report["calibration"]:
        print("calibration:", json.dumps(report["calibration"]))
    if args.model_card:
        write_model_card(report, args.model_card, model_card_extra(args))
    elapsed = time.perf_counter() - start
    figures = "pareto.png, heatmaps.png" if args.heatmaps_per_task else "pareto.png"
    print(f"wrote {output_dir}/eval.json, {figures}, predictions.jsonl in {elapsed:.1f} s")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
