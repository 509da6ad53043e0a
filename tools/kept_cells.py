"""Which cells does a ranking keep at K tokens? On the synthetic questions an evaluation measures (same split,
families and number), each checkpoint's two rankings: its learned scores (hotspot + question relevance, ARR-COC's
selection) and its hotspot scores alone (the query-agnostic saliency baseline's selection). Per family and K:

- answer: the share of the answer's cells in the top K (each question weighs the same);
- with marker: the same with local_key's marker square (the cell left of each answer digit) counted as an answer
  cell, since the question names the marker's colour;
- keyed: the share of the page's keyed cells in the top K, every cell any of the page's questions points at (its
  own answer and the extra questions' answers, with their markers): what a query-agnostic ranking can keep.

If the query-agnostic ranking already keeps every answer cell at some K, question-aware selection cannot read better
there by what it keeps (docs/demo_model.md, "Another CPU, the same commit").

    python -m tools.kept_cells outputs/demo/checkpoint --method saliency=outputs/demo/saliency/phase3/checkpoint \
        --num-samples 1200 --synthetic-families local_color,local_key,global_count --ks 4 8 16 64 [--json FILE]

Rows are the synthetic test split at the checkpoints' geometry (eval.py's questions with the same arguments).
"""

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
import torch

from modeling_arrcoc.evaluation.datasets import load_eval_dataset
from modeling_arrcoc.explanation import prompt_batch

MARKER_FAMILIES = ("local_key", "region_row")  # an answer digit's marker square sits left of its run


def box_cells(boxes, patch_size: int) -> set:
    """(row, col) grid cells of pixel boxes [x0, y0, x1, y1] one patch each (the suite's answer boxes)."""
    return {(int(box[1]) // patch_size, int(box[0]) // patch_size) for box in boxes}


def with_markers(cells: set) -> set:
    """The cells and the cell left of each (a marker family's squares)."""
    return cells | {(row, col - 1) for row, col in cells if col > 0}


def question_cells(row: dict, patch_size: int) -> dict:
    """{"answer", "with marker", "keyed"}: the cells each measure counts for one question (see the docstring)."""
    answer = box_cells(row["boxes"], patch_size)
    keyed = set(answer)
    for boxes in row.get("extra_boxes") or []:
        keyed |= box_cells(boxes, patch_size)
    marker = row["task"] in MARKER_FAMILIES
    return {"answer": answer, "with marker": with_markers(answer) if marker else answer,
            "keyed": with_markers(keyed) if marker else keyed}


def kept_shares(scores, cells: dict, ks, grid_width: int) -> dict:
    """{k: {measure: share of its cells among the top-k of `scores` (one question's [N] patch scores, raster order)}}."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    shares = {}
    for k in ks:
        kept = {(int(i) // grid_width, int(i) % grid_width) for i in order[:k]}
        shares[k] = {name: len(wanted & kept) / len(wanted) for name, wanted in cells.items()}
    return shares


@torch.no_grad()
def rankings(model, processor, rows) -> dict:
    """{"learned": [B, N], "hotspot": [B, N]} scores of `model`'s allocator for rows' images and questions."""
    batch = prompt_batch(processor, [r["image"] for r in rows], [r["question"] for r in rows])
    plan = model.model.plan_allocation(
        input_ids=batch["input_ids"].to(model.device), attention_mask=batch["attention_mask"].to(model.device),
        pixel_values=batch["pixel_values"].to(model.device, model.dtype), budget="full")
    return {"learned": plan.patch_scores.float().cpu().numpy(), "hotspot": plan.hotspot_scores.float().cpu().numpy()}


def kept_cells(models: dict, processor, dataset, ks, batch_size: int = 16) -> dict:
    """{family: {"n", f"{name}:{ranking}": {k: {measure: mean share}}}} over `dataset`'s rows for each named model."""
    config = next(iter(models.values())).config
    patch, grid_width = config.vision_config.patch_size, config.grid_size[1]
    counts, shares = collections.Counter(), collections.defaultdict(list)
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        scores = {f"{name}:{kind}": values for name, model in models.items()
                  for kind, values in rankings(model, processor, rows).items()}
        for j, row in enumerate(rows):
            counts[row["task"]] += 1
            cells = question_cells(row, patch)
            for key, values in scores.items():
                for k, by_measure in kept_shares(values[j], cells, ks, grid_width).items():
                    for measure, share in by_measure.items():
                        shares[row["task"], key, k, measure].append(share)
    result = {family: {"n": n} for family, n in counts.items()}
    for (family, key, k, measure), values in shares.items():
        result[family].setdefault(key, {}).setdefault(k, {})[measure] = float(np.mean(values))
    return result


def format_table(result: dict) -> str:
    lines = ["| family | n | ranking | K | answer | with marker | keyed |", "|---|---|---|---|---|---|---|"]
    for family in sorted(result):
        block = result[family]
        for key in (k for k in block if k != "n"):
            for k, shares in block[key].items():
                lines.append(f"| {family} | {block['n']} | {key} | {k} | {shares['answer']:.3f} | "
                             f"{shares['with marker']:.3f} | {shares['keyed']:.3f} |")
    return "\n".join(lines)


def _load(path):
    from transformers import AutoModelForImageTextToText

    import modeling_arrcoc  # noqa: F401  (registers the Auto classes)

    # float32, as eval.py loads a checkpoint: the rankings are the ones its evaluation ranked by.
    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="an ARR-COC checkpoint (its processor reads the rows)")
    parser.add_argument("--method", action="append", default=[], metavar="NAME=CHECKPOINT",
                        help="another checkpoint of the same geometry, ranked the same two ways (repeatable)")
    parser.add_argument("--num-samples", type=int, default=1200)
    parser.add_argument("--split", default="test")
    parser.add_argument("--synthetic-families", default=None, help="comma-separated, as eval.py's")
    parser.add_argument("--synthetic-seed", type=int, default=0)
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16, 64])
    parser.add_argument("--cache-dir", default=None, help="datasets cache for the synthetic suite")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from transformers import AutoProcessor

    try:
        named = dict(spec.split("=", 1) for spec in args.method)
    except ValueError:
        sys.exit(f"kept_cells: --method takes NAME=CHECKPOINT, got {args.method}")
    models = {"arrcoc": _load(args.checkpoint), **{name: _load(path) for name, path in named.items()}}
    vision = models["arrcoc"].config.vision_config
    if any(m.config.vision_config.image_size != vision.image_size or
           m.config.vision_config.patch_size != vision.patch_size for m in models.values()):
        sys.exit("kept_cells: every checkpoint must share the first one's image and patch size.")
    families = args.synthetic_families.split(",") if args.synthetic_families else None
    data = load_eval_dataset("synthetic", args.split, args.num_samples, vision.image_size, vision.patch_size,
                             seed=args.synthetic_seed, families=families, cache_dir=args.cache_dir)
    result = kept_cells(models, AutoProcessor.from_pretrained(args.checkpoint), data.dataset, args.ks)
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"checkpoints": {"arrcoc": str(args.checkpoint), **named},
                                         "num_samples": args.num_samples, "families": result}, indent=2))
    return result


if __name__ == "__main__":
    main()


__all__ = ["box_cells", "kept_cells", "kept_shares", "main", "question_cells", "with_markers"]
