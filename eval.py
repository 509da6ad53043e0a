"""Evaluate an ARR-COC checkpoint: accuracy, measured visual tokens, latency, budget calibration, and fixed-budget
baselines through the same checkpoint.

    python eval.py outputs/demo/phase3/checkpoint --dataset synthetic --num-samples 200
    python eval.py CHECKPOINT --dataset docvqa --budget auto --baselines uniform_pool,query_sim \
        --model-card model_card.md

Reads top to bottom: checkpoint + processor (from_pretrained on the directory) -> dataset (the synthetic suite at the
checkpoint's geometry, or a Hub dataset with its own metric) -> methods -> evaluation -> OUTPUT_DIR/eval.json,
pareto.png, heatmaps.png, predictions.jsonl -> table on stdout -> model card (optional). The report format is
documented in modeling_arrcoc/evaluation.py.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import modeling_arrcoc  # noqa: F401  (registers ArrCoc with the Auto classes)
from modeling_arrcoc.evaluation import (
    BASELINES,
    SYNTHETIC,
    evaluate,
    format_table,
    git_commit,
    load_eval_dataset,
    method_names,
    plot_heatmaps,
    plot_pareto,
    save_report,
)
from modeling_arrcoc.evaluation.model_card import write_model_card

ROOT = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="Checkpoint directory with the model and its processor.")
    parser.add_argument("--dataset", default=SYNTHETIC, help="'synthetic' or a Hub dataset name (data/hub.py).")
    parser.add_argument("--dataset-path", default=None, help="Local copy of the Hub dataset (offline).")
    parser.add_argument("--split", default=None, help="Split (default: synthetic 'test', Hub: the spec's split).")
    parser.add_argument("--budget", default="all", type=budget_from,
                        help="'all' (auto, every tier, full), 'auto', 'full' or a tier (value or index).")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help=f"Comma-separated subset of {','.join(BASELINES)}, or 'none'.")
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
    parser.add_argument("--cache-dir", default=None, help="datasets cache for the synthetic suite.")
    parser.add_argument("--heatmaps-per-task", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    return parser.parse_args(argv)


def load_checkpoint(path: str, device: str = "cpu"):
    """Model (float32, eval mode, on `device`) and processor, both from the checkpoint directory."""
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return model, processor


def baselines_from(text: str) -> tuple:
    return () if text.strip().lower() == "none" else tuple(b.strip() for b in text.split(",") if b.strip())


def budget_from(text: str):
    if text.isdigit():
        return int(text)
    if text in ("all", "auto", "full"):
        return text
    raise argparse.ArgumentTypeError(f"--budget takes all, auto, full or a tier (value or index), not {text!r}")


def model_card_extra(args) -> dict:
    configs = [f"`{path}`:\n\n```yaml\n{Path(path).read_text().rstrip()}\n```" for path in args.training_config]
    limitations = "\n".join(f"- {text}" for text in args.limitation) or None
    return {"name": args.model_name or Path(args.checkpoint).resolve().name, "training": "\n\n".join(configs) or None,
            "limitations": limitations}


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    model, processor = load_checkpoint(args.checkpoint, args.device)
    vision = model.config.vision_config
    data = load_eval_dataset(args.dataset, args.split, args.num_samples, vision.image_size, vision.patch_size,
                             args.cache_dir, seed=args.synthetic_seed, path=args.dataset_path)
    print(f"{args.checkpoint}: {len(data.dataset)} questions of {args.dataset} ({data.split}), metric {data.metric}")
    methods = method_names(model.config.budgets, args.budget, baselines_from(args.baselines))
    meta = {"checkpoint": str(args.checkpoint), "dataset": args.dataset, "dataset_source": data.source,
            "split": data.split, "commit": git_commit(ROOT)}
    output_dir = Path(args.output_dir)
    report = evaluate(model, processor, data.dataset, data.metric, methods, args.batch_size, args.max_new_tokens,
                      calibration=not args.no_calibration, seed=args.seed, meta=meta, progress=not args.quiet,
                      predictions_path=output_dir / "predictions.jsonl")
    save_report(report, output_dir / "eval.json")
    plot_pareto(report, output_dir / "pareto.png")
    plot_heatmaps(model, processor, data.dataset, output_dir / "heatmaps.png", per_task=args.heatmaps_per_task)
    print(format_table(report))
    if report["calibration"]:
        print("calibration:", json.dumps(report["calibration"]))
    if args.model_card:
        write_model_card(report, args.model_card, model_card_extra(args))
    elapsed = time.perf_counter() - start
    print(f"wrote {output_dir}/eval.json, pareto.png, heatmaps.png, predictions.jsonl in {elapsed:.1f} s")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
