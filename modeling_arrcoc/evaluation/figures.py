"""Figures of an evaluation: the accuracy-vs-tokens Pareto plot and a grid of allocation heatmaps.
"""

import math
from collections import defaultdict
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter
from PIL import Image

import numpy as np

from .. import statistics
from ..explanation import explain, render_heatmap
from ..methods import AUTO_COST
from ..selection import BASELINE_STYLES
from .report import column


# ARR-COC's own series; each baseline's style is its selection's (selection.py's table).
_SERIES_STYLE = {
    "tier": dict(color="tab:blue", marker="o", label="ARR-COC, forced tier"),
    "full": dict(color="black", marker="P", label="full tokens"),
}


def plot_pareto(report: dict, path) -> Path:
    """Accuracy vs measured mean visual tokens, one series per method family; ARR-COC auto highlighted."""
    figure = Figure(figsize=(9.5, 4.8))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    series = defaultdict(list)
    for name, m in report["methods"].items():
        series[_kind(name)].append((m["mean_visual_tokens"], m["accuracy"]))
    for kind, points in series.items():
        if kind in ("auto", AUTO_COST):
            continue
        points.sort()
        style = _SERIES_STYLE.get(kind) or BASELINE_STYLES.get(kind) or dict(marker=".", label=kind)
        ax.plot(*zip(*points), linestyle="-" if len(points) > 1 else "none", alpha=0.85, **style)
    _plot_envelope(ax, series.get("tier", []))
    if AUTO_COST in series:  # auto's own curve: the token price swept at inference, auto itself on it
        points = sorted(series[AUTO_COST] + series.get("auto", []))
        ax.plot(*zip(*points), color="crimson", linestyle="--", marker=".", alpha=0.9,
                label="ARR-COC auto, token price swept")
    if "auto" in series:
        (x, y), = series["auto"]
        ax.scatter([x], [y], s=260, marker="*", color="crimson", edgecolor="black", zorder=5,
                   label="ARR-COC auto (allocator's budget at its own price)")
        # The label goes on the side with room: right of the star in the axis' left half (log tokens), else left.
        tokens = [point[0] for points in series.values() for point in points]
        left = math.log(x) > (math.log(min(tokens)) + math.log(max(tokens))) / 2
        ax.annotate(f"auto: {y:.3f} @ {x:.1f} tok", (x, y), textcoords="offset points", xytext=(-8 if left else 8, 8),
                    ha="right" if left else "left")
    _pareto_axes(ax, report)
    return _save(figure, path)


def _plot_envelope(ax, tier_points):
    """The constant policies' envelope (statistics.frontier_at): mixes of two forced tiers are linear in tokens, so
    on the log token axis its segments are drawn through many points."""
    if len(tier_points) < 2:
        return
    low, high = min(x for x, _ in tier_points), max(x for x, _ in tier_points)
    xs = np.geomspace(low, high, 200)
    ys = [statistics.frontier_at(tier_points, float(x))["value"] for x in xs]
    ax.plot(xs, ys, color="tab:blue", linestyle=":", alpha=0.7, label="envelope of constant tiers (mixes)")


def _kind(name: str) -> str:
    if name in ("auto", "full"):
        return name
    if name.startswith("auto("):
        return AUTO_COST
    return "tier" if name.startswith("tier_") else name.partition("@")[0]


def _pareto_axes(ax, report):
    xs = [m["mean_visual_tokens"] for m in report["methods"].values()]
    ys = [m["accuracy"] for m in report["methods"].values()]
    if xs and max(xs) / max(min(xs), 1e-9) > 8:
        ax.set_xscale("log")  # tiers span an order of magnitude or more
        # Ticks at the tiers (auto's points lie between them; labelling each would overlap).
        budgets = report.get("meta", {}).get("budgets")
        patches = report.get("meta", {}).get("num_patches") or float("inf")
        ax.set_xticks(sorted({min(b, patches) for b in budgets}) if budgets else sorted({round(x, 1) for x in xs}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    if ys:
        # Zoom on the measured range (small gaps between methods matter) but never past the metric's [0, 1].
        ax.set_ylim(max(-0.02, min(ys) - 0.05), min(1.02, max(ys) + 0.05))
    meta = report.get("meta", {})
    ax.set_xlabel("mean visual tokens per query (measured)")
    ax.set_ylabel(f"accuracy ({meta.get('metric', 'metric')})")
    ax.set_title(f"{meta.get('dataset', '')} {meta.get('split', '')}, n={meta.get('num_samples', '?')}".strip())
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point


def _save(figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def heatmap_rows(dataset, per_task=2) -> dict:
    """{task: [row index, ...]}: the first `per_task` samples of each task family, in dataset order."""
    chosen = defaultdict(list)
    for i, task in enumerate(column(dataset, "task")):
        if len(chosen[task]) < per_task:
            chosen[task].append(i)
    return dict(chosen)


def plot_heatmaps(model, processor, dataset, path, per_task=2, budget="auto", tile_size=256) -> Path:
    """A grid of allocation heatmaps: one row per task family, `per_task` sample questions each."""
    tiles = []
    for task, indices in heatmap_rows(dataset, per_task).items():
        row_tiles = []
        for i in indices:
            sample = dataset[i]
            explanation = explain(model, processor, sample["image"], sample["question"], budget=budget)
            row_tiles.append(render_heatmap(_enlarged(sample["image"], tile_size), explanation, title=task))
        tiles.append(row_tiles)
    return _save_grid(tiles, path)


def _enlarged(image, tile_size):
    """The page with its longest side at `tile_size`: small pages are enlarged (nearest, so patches stay crisp)
    until the caption fits under them, large ones shrunk so the sheet stays viewable."""
    scale = tile_size / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    return image.convert("RGB").resize(size, resample)


def _save_grid(tiles, path, gap=6) -> Path:
    width = max(t.width for row in tiles for t in row)
    heights = [max(t.height for t in row) for row in tiles]
    columns = max(len(row) for row in tiles)
    sheet = Image.new("RGB", (columns * (width + gap) + gap, sum(heights) + gap * (len(tiles) + 1)), "white")
    y = gap
    for row, height in zip(tiles, heights):
        for c, tile in enumerate(row):
            sheet.paste(tile, (gap + c * (width + gap), y))
        y += height + gap
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


__all__ = [
    "heatmap_rows",
    "plot_heatmaps",
    "plot_pareto",
]
