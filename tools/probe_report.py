"""Render the learning probes of docs/probes/ (probes.yaml + each probe's learning_curve.json) as a markdown table:
held-out (validation) accuracy per method at each recorded step, or answer-box coverage where the probe says so.

    python -m tools.probe_report [docs/probes] [--write docs/demo_model.md]

With --write, the table replaces the `generated:probes` block of that markdown file.
"""

import json
import sys
from pathlib import Path

import yaml

from modeling_arrcoc.evaluation.readme import fill_blocks


def rows(folder: Path) -> list:
    lines = ["| probe | what | step | " + "value per method (per family) |", "|---|---|---|---|"]
    for probe in yaml.safe_load((folder / "probes.yaml").read_text()):
        field = probe.get("field", "accuracy")
        curve = json.loads((folder / f"{probe['name']}.json").read_text())
        for point in curve["points"]:
            cells = []
            for method in probe["methods"]:
                entry = point["methods"].get(method)
                if entry is None:
                    continue
                families = "" if field != "accuracy" else " (" + ", ".join(
                    f"{task} {value:.2f}" for task, value in sorted(entry["per_task"].items())) + ")"
                cells.append(f"{method} {field} {entry[field]:.2f}{families}")
            lines.append(f"| {probe['name']} | {probe['what']} | {point['step']} | {'; '.join(cells)} |")
    return lines


def main(argv=None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    target = None
    if "--write" in args:
        index = args.index("--write")
        target = Path(args[index + 1])
        del args[index:index + 2]
    table = "\n".join(rows(Path(args[0] if args else "docs/probes")))
    if target is None:
        print(table)
    else:
        fill_blocks(target, {"probes": table})


if __name__ == "__main__":
    main()
