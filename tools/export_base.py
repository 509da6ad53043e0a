"""Export a pretrained demo checkpoint as the shipped base: half-precision safetensors, processor, provenance.

    python -m tools.export_base outputs/demo/pretrain_looks/checkpoint pretrained/demo-base \
        --config configs/demo/pretrain.yaml --curve outputs/demo/pretrain/learning_curve.json ...  # one pair per stage

The base is stored in float16 to keep the repository small (~12 MB for the demo preset); `from_pretrained(...,
dtype=torch.float32)` widens it again for training. PROVENANCE.json records the command, the commit, and each
training stage's YAML and held-out learning curve (`make pretrain` gives its stages in order).
"""

import argparse
import json
import os
import platform
import shutil
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import modeling_arrcoc  # noqa: F401  (registers the Auto classes)
from modeling_arrcoc.provenance import PROVENANCE, git_commit, stage_record, stage_start_steps


def provenance(source: Path, configs: list[Path], curves: list[Path], note: str | None = None) -> dict:
    """The command, commit and, per training stage (config i produced curve i), its YAML and held-out curve.
    `learning_curve` joins the stages' curves on one step axis (stage 2's steps follow stage 1's). `note` says how
    the stages were run where that was not one `make pretrain` at this commit."""
    record = {
        "command": "make pretrain",
        **({"note": note} if note else {}),
        "source_checkpoint": str(source),
        "commit": git_commit(),
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "storage_dtype": "float16",
        # Where it was trained: make pretrain runs on CPU; a run elsewhere (a lent GPU) records its device here.
        "machine": {"device": "cuda" if torch.cuda.is_available() else "cpu", "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "torch": torch.__version__},
        "stages": [],
    }
    points = [json.loads(curve.read_text())["points"] for curve in curves]
    joined = []
    for config, curve, stage_points, start in zip(configs, curves, points, stage_start_steps(points)):
        timing = curve.parent / "timing.json"  # make pretrain writes each stage's wall time beside its curve
        seconds = json.loads(timing.read_text())["seconds"] if timing.exists() else None
        record["stages"].append(stage_record(config, stage_points, start, seconds))
        joined += [{**point, "step": point["step"] + start, "stage": config.stem} for point in stage_points]
    record["learning_curve"] = {"points": joined}
    return record


def export(source: Path, target: Path, configs: list[Path], curves: list[Path], note: str | None = None):
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(source)
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.to(torch.float16).save_pretrained(staging)
    processor.save_pretrained(staging)
    for code in staging.glob("*.py"):
        code.unlink()  # the base is read with the package imported; no stale copies of its source
    (staging / PROVENANCE).write_text(json.dumps(provenance(source, configs, curves, note), indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # the shipped base is replaced whole or not at all


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--config", type=Path, action="append", default=[], help="each training stage's YAML, in order")
    parser.add_argument("--curve", type=Path, action="append", default=[], help="the learning_curve.json of each stage")
    parser.add_argument("--note", help="how the stages were run, where that was not one make pretrain at this commit")
    args = parser.parse_args(argv)
    if len(args.config) != len(args.curve):
        parser.error(f"one --curve per --config (the stage's learning curve): got {len(args.config)} configs and "
                     f"{len(args.curve)} curves")
    missing = [str(path) for path in args.config + args.curve if not path.exists()]
    if missing:
        parser.error(f"not found: {', '.join(missing)}")
    export(args.source, args.target, args.config, args.curve, args.note)
    print(f"exported {args.source} -> {args.target}")


if __name__ == "__main__":
    main()
