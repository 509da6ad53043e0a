"""Where a checkpoint came from: the repository's own paths, the training YAML saved beside a checkpoint, the stages
behind it and the commit of the code.

A final checkpoint of train.py holds `TRAINING_CONFIG`, the run's YAML with its overrides merged in
(training/recipe.py writes it); a shipped base holds `PROVENANCE`, one record per training stage
(tools/export_base.py writes it). eval.py follows either back to the first stage (`training_stages`) to learn what
the model was trained on; tools/learning_report.py joins the stages' learning curves on one step axis. Writers and
readers share the names and the record layout here, so they cannot drift apart.

Library level: files and git only, no model code, so training, evaluation and the scripts can all import it.
"""

import json
import subprocess
from pathlib import Path

import yaml

# The checkout the package lives in (it is installed editable from there): relative paths in the YAMLs, presets and
# checkpoints resolve against it, whatever the working directory.
REPO_ROOT = Path(__file__).resolve().parent.parent
# train.py saves the run's resolved YAML under this name beside the final checkpoint; eval.py reads it.
TRAINING_CONFIG = "training_config.yaml"
# tools/export_base.py records a shipped base's training stages in this file inside it.
PROVENANCE = "PROVENANCE.json"
# The training YAML key naming the checkpoint a stage started from (training/recipe.py's ModelArguments.init_from;
# the library cannot import the training layer, tests/test_training.py checks the two agree).
INIT_FROM = "init_from"


def repo_path(path) -> Path:
    """`path` as given when it exists or is absolute, else relative to the repository: the YAMLs name presets and
    checkpoints relative to the checkout, and a script may be launched from anywhere."""
    candidate = Path(path)
    return candidate if candidate.exists() or candidate.is_absolute() else REPO_ROOT / candidate


def git_commit(path=None) -> str | None:
    """`git rev-parse HEAD` of the code at `path` (default: this package's checkout), or None outside a git checkout."""
    where = Path(path) if path is not None else REPO_ROOT
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def read_training_config(checkpoint) -> dict | None:
    """The resolved training YAML saved beside `checkpoint` (train.py), or None when it has none."""
    path = Path(checkpoint) / TRAINING_CONFIG
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else None


def training_stages(checkpoint) -> list | None:
    """The resolved YAML of every training stage behind `checkpoint`, first stage first: its own TRAINING_CONFIG,
    after its `init_from`'s, recursively; a shipped base's stages from its PROVENANCE. None when a link of the chain
    is not recorded."""
    path = repo_path(checkpoint)
    values = read_training_config(path)
    if values is not None:
        return stages_up_to(values)
    if (path / PROVENANCE).exists():
        stages = json.loads((path / PROVENANCE).read_text())["stages"]
        return [yaml.safe_load(stage["training_config"]) or {} for stage in stages]
    return None


def stages_up_to(values: dict) -> list | None:
    """The stages behind one training YAML (its `init_from`'s, recursively), then the YAML itself; None when a link
    of the chain is not recorded."""
    earlier = training_stages(values[INIT_FROM]) if values.get(INIT_FROM) else []
    return None if earlier is None else earlier + [values]


def stage_record(config: Path, points: list, start_step: int, wall_seconds=None) -> dict:
    """One training stage of a PROVENANCE record: its YAML (path and text), where its steps start on the joined axis,
    its wall time and its held-out learning curve."""
    return {"config": str(config), "training_config": Path(config).read_text(), "start_step": start_step,
            "wall_seconds": wall_seconds, "learning_curve": {"points": points}}


def stage_start_steps(curves: list) -> list:
    """Where each stage's steps start when the stages' curves are joined on one step axis: a stage's steps follow
    the previous stage's last recorded step (a stage without points adds none)."""
    starts, start = [], 0
    for points in curves:
        starts.append(start)
        start += points[-1]["step"] if points else 0
    return starts


__all__ = [
    "INIT_FROM",
    "PROVENANCE",
    "REPO_ROOT",
    "TRAINING_CONFIG",
    "git_commit",
    "read_training_config",
    "repo_path",
    "stage_record",
    "stage_start_steps",
    "stages_up_to",
    "training_stages",
]
