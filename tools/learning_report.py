"""The demo's learning-curve report: every stage's held-out curve on one step axis.

    python -m tools.learning_report --output outputs/demo/learning_curve.json \
        --stage pretrain=pretrained/demo-base/PROVENANCE.json --stage phase1=outputs/demo/phase1/learning_curve.json ...

The pretrain stage comes from the shipped base's provenance (make demo does not re-run it); each later stage from
the `learning_curve.json` its training run wrote. Writes the combined JSON ({"stages": [{name, start_step,
points}]}, steps counted from the start of the pretrain) and a PNG beside it, one panel per stage.
"""

import argparse
import json
from pathlib import Path

from modeling_arrcoc.provenance import stage_start_steps
from modeling_arrcoc.training.curves import plot_learning_curve, write_json_atomic


def expand(name: str, path: Path) -> list[tuple[str, list]]:
    """(stage name, points) pairs from a `learning_curve.json`, or from a base's PROVENANCE.json: one pair per
    training stage when it records several, else its joined curve."""
    record = json.loads(path.read_text())
    stages = [stage for stage in record.get("stages", []) if stage["learning_curve"]["points"]]
    if len(stages) > 1:
        return [(f"{name}: {Path(stage['config']).stem}", stage["learning_curve"]["points"]) for stage in stages]
    points = record.get("learning_curve", record).get("points")
    if not points:
        raise ValueError(f"{path} holds no learning-curve points.")
    return [(name, points)]


def combine(stages: list[tuple[str, Path]]) -> dict:
    """Every stage's curve, each starting where the previous one ended (as the base's PROVENANCE joins them)."""
    expanded = [(stage_name, points, path) for name, path in stages for stage_name, points in expand(name, path)]
    starts = stage_start_steps([points for _, points, _ in expanded])
    return {"stages": [{"name": stage_name, "source": str(path), "start_step": start, "points": points}
                       for (stage_name, points, path), start in zip(expanded, starts)]}


def plot(report: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report["stages"]
    figure, axes = plt.subplots(1, len(stages), figsize=(4.4 * len(stages), 4.4), sharey=True, squeeze=False)
    for axis, stage in zip(axes[0], stages):
        plot_learning_curve(stage["points"], None, stage["name"], axis=axis)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def parse_stage(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--stage takes NAME=PATH, got {text!r}")
    if not Path(path).exists():
        raise argparse.ArgumentTypeError(f"--stage {name}: {path} does not exist")
    return name, Path(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=parse_stage, action="append", required=True, help="NAME=PATH, in order")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    report = combine(args.stage)
    write_json_atomic(args.output, report)
    plot(report, args.output.with_suffix(".png"))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
