"""Fill the generated blocks of README.md and docs/results.md from what the repo's own commands wrote (`make readme`).

    README.md
      headline  <- outputs/demo/eval.json                 (make demo)
      heatmap   <- outputs/demo/heatmaps.png -> docs/heatmaps.png
    docs/app_screenshot.png <- outputs/app/app_screenshot.png (tests/test_app.py's browser round trip)
    docs/results.md (the tables that run past a screen; its figures lie beside it in docs/)
      demo      <- outputs/demo/eval.json                 (make demo)
      baselines <- outputs/demo/baselines/eval.json       (make baselines)
      seeds     <- outputs/demo/seeds/report.json         (make seeds)
      sam_bf16  <- outputs/demo/sam_bf16/comparison.json  (make sam-bf16)
      pretrain  <- pretrained/demo-base/PROVENANCE.json   (make pretrain)
      bench     <- outputs/bench/summary.md               (make bench)

A block whose source is missing is left as it is, so no number in either page is ever typed by hand. A source written
before the shipped base was exported (PROVENANCE.json's `exported`) cannot come from that base: its block says to
rerun its target instead of showing the base before's numbers beside the current one's.
"""

import json
import shutil
import sys
from datetime import datetime
from pathlib import Path

from modeling_arrcoc.evaluation.agreement import agreement_table
from modeling_arrcoc.evaluation.model_card import RELEVANCE_TAG
from modeling_arrcoc.evaluation.readme import fill_blocks
from modeling_arrcoc.evaluation.report import headline
from modeling_arrcoc.evaluation.seeds import seed_table
from modeling_arrcoc.provenance import PROVENANCE, REPO_ROOT as ROOT

# Which page holds which block (tests/test_training.py checks the pages against it).
PAGES = {"README.md": ("headline", "heatmap"),
         "docs/results.md": ("demo", "baselines", "seeds", "pretrain", "bench", "sam_bf16")}


def _latency(method: dict) -> str:
    """A price-sweep point read from the forced tiers was not timed (eval.py --budget-costs)."""
    latency = method["latency_ms_per_query"]
    return "from tiers" if latency is None else f"{latency:.1f}"


def demo_block(report: dict) -> str:
    rows = ["| method | accuracy | mean visual tokens | p95 tokens | latency ms/query |", "|---|---|---|---|---|"]
    for name, method in report["methods"].items():
        rows.append(f"| {name} | {method['accuracy']:.3f} | {method['mean_visual_tokens']:.1f} | "
                    f"{method['p95_visual_tokens']:.0f} | {_latency(method)} |")
    tasks = sorted(report["methods"]["auto"]["per_task"])
    task_rows = ["| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for name in ("auto", "full", *[n for n in report["methods"] if n.startswith("tier_")]):
        if name in report["methods"]:
            per_task = report["methods"][name]["per_task"]
            task_rows.append(f"| {name} | " + " | ".join(f"{per_task.get(t, float('nan')):.2f}" for t in tasks) + " |")
    tokens = report["methods"]["auto"].get("per_task_visual_tokens")
    if tokens:
        task_rows.append("| auto: mean visual tokens | " + " | ".join(f"{tokens.get(t, float('nan')):.1f}" for t in tasks)
                         + " |")
    meta = report["meta"]
    lines = [f"Held-out test split ({meta['split']}, {meta['num_samples']} samples, {meta['metric']}), "
             f"checkpoint `{meta['checkpoint']}`, commit `{str(meta.get('commit'))[:10]}`:", "", *rows, "",
             "Per task family:", "", *task_rows]
    calibration = report.get("calibration")
    if calibration and calibration.get("exact") is not None:
        lines += ["", f"Budget calibration vs the oracle-minimal tier ({calibration['n'] - calibration['n_no_oracle']} "
                      f"samples with an oracle): exact {calibration['exact']:.2f}, within one tier "
                      f"{calibration['within_one']:.2f}, over {calibration['over']:.2f}, under {calibration['under']:.2f}."]
    need = (report.get("policies") or {}).get("need")
    if need:
        lines += ["", *need_table(need)]
    return "\n".join(lines + ["", "![accuracy vs visual tokens](pareto.png)"])


def need_table(need: dict) -> list:
    """Mean tokens per family: what the oracle tiers need and what auto spends at each price, with intervals."""
    def cell(entry):
        return "n/a" if entry["mean"] is None else f"{entry['mean']:.1f} [{entry['low']:.1f}, {entry['high']:.1f}]"

    columns = {"oracle-minimal tier": need["oracle_minimal"], "stable tier": need["stable"], **need["spent"]}
    families = sorted(need["stable"])
    sizes = ", ".join(f"{family} {need['stable'][family]['n']}" for family in families)
    rows = ["| mean visual tokens (95% interval) | " + " | ".join(families) + " | share with tier = stable tier |",
            "|---" * (len(families) + 2) + "|"]
    for name, per_family in columns.items():
        match = need["calibration_stable"].get(name)
        exact = "" if match is None or match["exact"] is None else f"{match['exact']:.2f}"
        rows.append(f"| {name} | " + " | ".join(cell(per_family[f]) for f in families) + f" | {exact} |")
    return ["Tokens per family against need. The stable tier is the smallest from which every larger tier answers; "
            "it and auto's rows count the questions the largest tier answers (" + sizes + "). The oracle-minimal "
            "tier, on the questions some tier answers, also counts a small tier's lucky guess; one unlucky miss at a "
            "larger tier raises the stable tier.", "", *rows]


def headline_block(report: dict) -> str:
    lines = headline(report)
    return "\n".join(f"- {line}" for line in lines) + "\n\n" + RELEVANCE_TAG if lines else ""


def _comparison(report: dict, name: str):
    comparisons = report.get("comparisons") or {}
    for section in ("auto_vs_ablation", "auto_vs_baseline", "auto_vs_trained_full"):
        if name in (comparisons.get(section) or {}):
            return comparisons[section][name]
    return None


def baselines_block(report: dict, timing: dict | None) -> str:
    """make baselines: every trained model (baselines, ablations, the reference) next to auto, with intervals."""
    rows = ["| trained model | accuracy [95% interval] | mean visual tokens | auto minus it, paired [95% interval] |",
            "|---|---|---|---|"]
    auto = report["methods"]["auto"]
    rows.append(f"| ARR-COC auto | {auto['accuracy']:.3f} [{auto['interval'][0]:.3f}, {auto['interval'][1]:.3f}] | "
                f"{auto['mean_visual_tokens']:.1f} | |")
    cheaper = set((report.get("comparisons") or {}).get("baselines_with_fewer_tokens") or [])
    for name, method in report["methods"].items():
        if not name.startswith("trained_"):
            continue
        entry = _comparison(report, name)
        if entry is not None:
            versus = f"{100 * entry['difference']:+.1f} points [{100 * entry['low']:+.1f}, {100 * entry['high']:+.1f}]"
        else:  # an ablation is compared at its auto and at the tier nearest auto's tokens only
            versus = "not compared: fewer tokens than auto" if name in cheaper else ""
        rows.append(f"| {name} | {method['accuracy']:.3f} [{method['interval'][0]:.3f}, {method['interval'][1]:.3f}] "
                    f"| {method['mean_visual_tokens']:.1f} | {versus} |")
    meta = report["meta"]
    took = "" if timing is None else (f"; `make baselines` took {timing['seconds'] / 60:.1f} minutes on "
                                      f"{timing['cores']} cores")
    header = (f"`make baselines` ({meta['split']} split, n = {meta['num_samples']}, the demo's questions, commit "
              f"`{str(meta.get('commit'))[:10]}`{took}):")
    return "\n".join([header, "", *rows, "", *(f"- {line}" for line in headline(report)[1:])])


def pretrain_block(provenance: dict) -> str:
    points = provenance.get("learning_curve", {}).get("points", [])
    if not points:
        return "*(the base was exported without a learning curve)*"
    names = [n for n in points[-1]["methods"] if n != "auto"]  # auto in a pretrain is an untrained predictor
    small = [n for n in names if n.startswith("tier_")][:2]
    rows = ["| step | stage | " + " | ".join(names) + " | " + " | ".join(f"coverage {n}" for n in small) + " |",
            "|---" * (len(names) + len(small) + 2) + "|"]
    for point in points:
        methods = point["methods"]
        coverage = [methods.get(n, {}).get("coverage") for n in small]
        rows.append(f"| {point['step']} | {point.get('stage', '')} | "
                    + " | ".join(f"{methods[n]['accuracy']:.2f}" if n in methods else "-" for n in names) + " | "
                    + " | ".join("-" if c is None else f"{c:.2f}" for c in coverage) + " |")
    header = (f"Held-out accuracy (teacher-forced exact match, validation rows of the stage's families) during "
              f"`make pretrain`, commit `{str(provenance.get('commit'))[:10]}`; coverage = share of questions whose "
              f"answer-box patches are all kept:")
    return "\n".join([header, "", *rows])


def curve_figures(provenance: dict) -> str:
    """PNGs of the pretrain curve (from the base's provenance) and of every stage's (make demo's report)."""
    from modeling_arrcoc.training.curves import plot_learning_curve

    figures = []
    points = provenance.get("learning_curve", {}).get("points", [])
    if points:
        plot_learning_curve(points, ROOT / "docs/pretrain_curve.png", "make pretrain: held-out accuracy")
        figures.append("![pretrain learning curve](pretrain_curve.png)")
    report = ROOT / "outputs/demo/learning_curve.png"  # make demo: every stage, pretrain to phase 3
    if report.exists():
        shutil.copyfile(report, ROOT / "docs/learning_curve.png")
        figures.append("![learning curve of every stage](learning_curve.png)")
    return "\n\n" + "\n".join(figures) if figures else ""


def older_than_base(source: Path, provenance: dict | None) -> bool:
    """True when `source` was written before the shipped base was exported: it cannot come from that base (a run
    from the base before it), so its block must not stand beside the current base's numbers."""
    exported = (provenance or {}).get("exported")
    return exported is not None and source.stat().st_mtime < datetime.fromisoformat(exported).timestamp()


def stale_block(target: str, provenance: dict) -> str:
    return (f"*(not yet rerun on the current base, exported {provenance['exported'][:10]}: `make {target}` writes this "
            f"block; its last results, on the base before, are in this page's git history)*")


def blocks() -> dict:
    """Every block whose source exists, by name (copying the figures the blocks show into docs/). A source older than
    the shipped base gives its block a note to rerun it instead of its numbers."""
    out = {}
    provenance = read_json(ROOT / "pretrained/demo-base" / PROVENANCE)

    def fresh(source: Path, names: tuple, target: str) -> bool:
        if not source.exists():
            return False
        if older_than_base(source, provenance):
            out.update({name: stale_block(target, provenance) for name in names})
            return False
        return True

    demo = ROOT / "outputs/demo/eval.json"
    if fresh(demo, ("demo", "headline", "heatmap"), "demo"):
        report = json.loads(demo.read_text())
        took = read_json(ROOT / "outputs/demo/timing.json")
        out["demo"] = demo_block(report) + ("" if took is None else (
            f"\n\n`make demo` took {took['seconds'] / 60:.1f} minutes on {took['cores']} cores (outputs/demo/timing.json)."
        ))
        out["headline"] = headline_block(report)
        shutil.copyfile(ROOT / "outputs/demo/pareto.png", ROOT / "docs/pareto.png")
        heatmap = ROOT / "outputs/demo/heatmaps.png"
        if heatmap.exists():
            shutil.copyfile(heatmap, ROOT / "docs/heatmaps.png")
            out["heatmap"] = "![where each question pulled its tokens from](docs/heatmaps.png)"
    baselines = ROOT / "outputs/demo/baselines/eval.json"
    if fresh(baselines, ("baselines",), "baselines"):
        out["baselines"] = baselines_block(json.loads(baselines.read_text()),
                                           read_json(ROOT / "outputs/demo/baselines/timing.json"))
    seeds = ROOT / "outputs/demo/seeds/report.json"
    if fresh(seeds, ("seeds",), "seeds"):
        took = read_json(ROOT / "outputs/demo/seeds/timing.json")
        out["seeds"] = "\n".join(seed_table(read_json(seeds))) + ("" if took is None else (
            f"\n\n`make seeds` took {took['seconds'] / 60:.1f} minutes on {took['cores']} cores."))
    screenshot = ROOT / "outputs/app/app_screenshot.png"
    if screenshot.exists():  # README and docs/app.md show it; no block, the figure alone
        shutil.copyfile(screenshot, ROOT / "docs/app_screenshot.png")
    if provenance is not None:
        out["pretrain"] = pretrain_block(provenance) + curve_figures(provenance)
    bench = ROOT / "outputs/bench/summary.md"
    if bench.exists():
        out["bench"] = bench.read_text()
    sam_bf16 = ROOT / "outputs/demo/sam_bf16/comparison.json"
    if fresh(sam_bf16, ("sam_bf16",), "sam-bf16"):
        comparison = read_json(sam_bf16)
        n = next(iter(comparison["methods"].values()))["n"]
        out["sam_bf16"] = "\n".join([
            f"`make sam-bf16`: make demo's checkpoint on its {n} test questions, first with SAM in float32 (make "
            "demo's run), second with SAM under bf16 autocast (`vision_autocast_dtype=\"bfloat16\"`); differences "
            "paired on the same questions:", "", agreement_table(comparison["methods"])])
    return out


def read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def main():
    rendered = blocks()
    for page, names in PAGES.items():
        fill_blocks(ROOT / page, {name: rendered[name] for name in names if name in rendered})
    missing = [name for names in PAGES.values() for name in names if name not in rendered]
    print(f"rendered {', '.join(PAGES)}" + (f"; not yet produced: {', '.join(missing)}" if missing else ""),
          file=sys.stderr)


if __name__ == "__main__":
    main()
