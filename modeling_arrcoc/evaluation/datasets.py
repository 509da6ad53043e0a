"""Evaluation datasets: the synthetic suite at the checkpoint's geometry, or a Hub dataset with its own metric; and
the synthetic families a checkpoint was trained on (read from its recorded training stages).
"""

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..data import FAMILIES, HUB_DATASETS, SyntheticConfig, load_hub_dataset, make_synthetic_suite, resolve_name
from ..data.recipe import data_arguments
from ..methods import SYNTHETIC, SYNTHETIC_METRIC
from ..provenance import stages_up_to, training_stages


@dataclass
class EvalData:
    dataset: object  # datasets.Dataset in the common schema
    metric: str  # a key of metrics.METRICS
    source: str  # "synthetic" or the Hub repo id
    split: str


def load_eval_dataset(name: str, split=None, num_samples=None, image_size=256, patch_size=16, cache_dir=None,
                      seed=0, path=None, families=None) -> EvalData:
    """"synthetic" or a Hub dataset name (see `data.HUB_DATASETS`), with the metric it is scored by.

    The synthetic suite is rendered at the checkpoint's geometry (`image_size`, `patch_size`) with pages seeded by
    `seed`; only the requested split is made at full size; `families` (synthetic only) restricts its task families
    (None: all of them). Hub rows without reference answers (test splits) are
    dropped; `path` reads a local copy of a Hub dataset.
    """
    if name == SYNTHETIC:
        split = split or "test"
        sizes = {f"num_{s}": 1 for s in ("train", "validation", "test")}
        sizes[f"num_{split}"] = num_samples or getattr(SyntheticConfig(), f"num_{split}")
        extra = {} if families is None else {"families": tuple(families)}
        suite = make_synthetic_suite(image_size=image_size, patch_size=patch_size, seed=seed, cache_dir=cache_dir,
                                     **sizes, **extra)
        return EvalData(suite[split], SYNTHETIC_METRIC, SYNTHETIC, split)
    if families is not None:
        raise ValueError(f"families select synthetic task families; {name!r} is a Hub dataset.")
    key = resolve_name(name)
    spec = HUB_DATASETS[key]
    split = split or spec.split
    dataset = load_hub_dataset(key, split, path=path)
    dataset = dataset.filter(lambda answers: len(answers) > 0, input_columns=["answers"])
    if num_samples:
        dataset = dataset.select(range(min(num_samples, len(dataset))))
    return EvalData(dataset, spec.metric, spec.repo_id, split)


def trained_families(checkpoint, training_configs=()) -> list | None:
    """Task families with training rows behind `checkpoint` (its recorded stages, plus `training_configs` YAMLs
    and theirs): each synthetic stage's `synthetic_families` (all families when unset). None when a stage is not
    recorded or trained on a Hub dataset (its families are unknown here). Each stage's data keys are read as
    train.py read them (`data_arguments`: same names, same defaults)."""
    given = []
    for path in training_configs:
        stages = stages_up_to(yaml.safe_load(Path(path).read_text()) or {})
        if stages is None:
            return None
        given += stages
    data = [data_arguments(stage) for stage in (training_stages(checkpoint) or []) + given]
    if not data or any(stage.dataset != SYNTHETIC for stage in data):
        return None
    return sorted({family for stage in data for family in stage.synthetic_families or FAMILIES})


__all__ = [
    "EvalData",
    "load_eval_dataset",
    "trained_families",
]
