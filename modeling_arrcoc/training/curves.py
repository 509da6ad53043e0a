"""Learning curves: held-out accuracy per method and answer-box coverage against training steps.

Accuracy here is teacher-forced exact match (every answer token is the argmax), one forward per batch, so a
curve point costs seconds; eval.py measures the same methods by generation at the end.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..methods import Method
from ..metrics import per_task_mean
from ..losses import answer_window

@torch.no_grad()
def score_batches(model, batches, budget, selection) -> dict:
    """Teacher-forced exact match, per task and overall; coverage of the answer boxes; mean visual tokens."""
    was_training = model.training
    model.eval()
    hits, covered, tokens, tasks = [], [], [], []
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k in _MODEL_KEYS}
        window = answer_window(batch["labels"])
        out = model(**inputs, budget=budget, selection=selection, logits_to_keep=window)
        hits += _exact_matches(out.logits.argmax(-1), batch["labels"][:, -window:])
        covered += _coverage(out.kept_patch_mask, batch.get("patch_targets"))
        tokens += out.visual_token_counts.tolist()
        tasks += batch["task"]
    model.train(was_training)
    return _summarize(hits, covered, tokens, tasks)


_MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "labels", "patch_features")


@torch.no_grad()
def with_patch_features(model, batches) -> list:
    """`batches` with SAM's features in place of their pixels, computed once for all the methods a curve point
    scores (the model does not change within a point). It is the call the model's own forward makes
    (`get_patch_features`, in eval mode, on the same batch), so every method scores exactly as from the pixels."""
    was_training = model.training
    model.eval()
    out = []
    for batch in batches:
        batch = dict(batch)
        if "pixel_values" in batch:
            batch["patch_features"] = model.model.get_patch_features(batch.pop("pixel_values"))
        out.append(batch)
    model.train(was_training)
    return out


def _exact_matches(predictions, labels) -> list[bool]:
    """Per sample: every answer token is the argmax. `predictions` [B, W] and `labels` [B, W] cover the same last
    W positions; position t predicts label t + 1."""
    targets, predicted = labels[:, 1:], predictions[:, :-1]
    answer = targets != -100
    return [bool((predicted[b][answer[b]] == targets[b][answer[b]]).all()) for b in range(labels.shape[0])]


def _coverage(kept, targets) -> list[float | None]:
    """Whether every patch touched by the answer box was kept (None where a sample has no box)."""
    if targets is None:
        return [None] * kept.shape[0]
    inside = targets > 0
    full = ((kept & inside).sum(-1) == inside.sum(-1)).tolist()
    return [f if n else None for f, n in zip(full, inside.sum(-1).tolist())]


def _summarize(hits, covered, tokens, tasks) -> dict:
    boxed = [c for c in covered if c is not None]
    return {
        "accuracy": sum(hits) / len(hits),
        "per_task": per_task_mean(hits, tasks),
        "coverage": sum(boxed) / len(boxed) if boxed else None,
        "mean_visual_tokens": sum(tokens) / len(tokens),
    }


def write_json_atomic(path, record: dict):
    """Write `record` to `path` through a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=1))
    temporary.replace(path)


@dataclass
class LearningCurve:
    """Points {step, methods: {name: summary}} appended to a JSON file, rewritten whole at each point."""

    path: Path
    points: list = field(default_factory=list)

    def add(self, step: int, model, batches, methods: list[Method]):
        batches = with_patch_features(model, batches) if len(methods) > 1 else batches
        summaries = {m.name: score_batches(model, batches, m.budget, m.selection) for m in methods}
        self.points.append({"step": step, "methods": summaries})
        write_json_atomic(self.path, {"points": self.points})
        return summaries


class LearningCurveCallback(TrainerCallback):
    """Adds a curve point every `every` steps and at the end of training."""

    def __init__(self, curve: LearningCurve, batches, methods: list[Method], every: int):
        self.curve, self.batches, self.methods, self.every = curve, batches, methods, every

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self.curve.add(state.global_step, model, self.batches, self.methods)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.curve.points or self.curve.points[-1]["step"] != state.global_step:
            self.curve.add(state.global_step, model, self.batches, self.methods)
        if state.is_world_process_zero:
            plot_learning_curve(self.curve.points, self.curve.path.with_suffix(".png"))


def plot_learning_curve(points: list, path, title: str = "held-out accuracy", axis=None):
    """Accuracy per method against steps (solid), answer-box coverage of `auto` (dashed). With `axis`, draws
    into it (a panel of a larger figure) and saves nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = None
    if axis is None:
        figure, axis = plt.subplots(figsize=(7, 4.5))
    steps = [p["step"] for p in points]
    for index, name in enumerate(points[-1]["methods"]):  # tab20: up to 20 methods, no colour repeats
        axis.plot(steps, [p["methods"][name]["accuracy"] for p in points], marker=".", label=name,
                  color=plt.cm.tab20(index % 20), linestyle="-" if not name.startswith("uniform") else ":")
    coverage = [p["methods"].get("auto", {}).get("coverage") for p in points]
    if any(c is not None for c in coverage):
        axis.plot(steps, coverage, "k--", label="answer-box coverage (auto)")
    axis.set(xlabel="training step", ylabel="accuracy / coverage", ylim=(0, 1.02), title=title)
    axis.legend(fontsize=7, ncol=2)
    if figure is not None:
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)


__all__ = [
    "LearningCurve",
    "LearningCurveCallback",
    "plot_learning_curve",
    "write_json_atomic",
    "score_batches",
    "with_patch_features",
]
