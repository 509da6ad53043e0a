"""Several datasets in one phase, mixed by weight (`dataset_mixture` in a phase YAML).

    dataset_mixture:
      - {name: docvqa, path: data/docvqa, split: validation, weight: 0.5}
      - {name: chartqa, path: data/chartqa, split: train, eval_split: val, weight: 0.3}
      - {name: synthetic, weight: 0.2}

Each source is loaded on its own (a Hub adapter, or the synthetic suite), reduced to the common row schema, and the
sources are interleaved with `datasets.interleave_datasets(probabilities=weights / sum, seed=...)`: every drawn row
comes from source i with probability w_i, whatever the sources' sizes ("all_exhausted": sampling goes on until
every source has been seen whole, small sources repeating; "first_exhausted": it stops with the first source to
run out). Rows keep their `task` (the Hub dataset's short name, or the synthetic family) and `source` (the Hub repo
id, or "synthetic"), so evaluation can score each source with its own metric (eval.py --dataset-mixture).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import datasets

from .hub import COMMON_FEATURES, resolve_name

SYNTHETIC = "synthetic"
STOPPING_STRATEGIES = ("all_exhausted", "first_exhausted")


@dataclass(frozen=True)
class MixtureSource:
    """One entry of `dataset_mixture`."""

    name: str  # "synthetic" or a Hub dataset name (data/hub.py), resolved to its short name
    weight: float = 1.0  # relative sampling weight; the weights are normalized to probabilities
    path: str | None = None  # local copy of a Hub dataset (save_to_disk folder or the repo's parquet files)
    split: str | None = None  # training split (None: the run's train_split)
    eval_split: str | None = None  # evaluation split (None: this source is not evaluated during training)
    image_path: str | None = None  # GQA's image table, when local
    streaming: bool | None = None  # None: the run's `streaming`


def parse_mixture(entries) -> list[MixtureSource]:
    """`dataset_mixture` entries (dicts, as read from YAML) -> checked `MixtureSource`s (ValueError naming the
    entry: unknown key, unknown dataset, a non-positive weight, the same dataset twice)."""
    if not entries:
        raise ValueError("dataset_mixture is empty: give at least one {name: ..., weight: ...} entry.")
    known = {f.name for f in fields(MixtureSource)}
    sources = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"dataset_mixture[{position}] must be a mapping with a 'name', got {entry!r}.")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"dataset_mixture[{position}] ({entry['name']}): unknown key(s) {unknown}; "
                             f"known keys: {sorted(known)}.")
        name = SYNTHETIC if str(entry["name"]).lower() == SYNTHETIC else resolve_name(entry["name"])
        weight = float(entry.get("weight", 1.0))
        if not weight > 0:
            raise ValueError(f"dataset_mixture[{position}] ({name}): weight must be > 0, got {entry.get('weight')!r}.")
        sources.append(MixtureSource(**{**entry, "name": name, "weight": weight}))
    names = [s.name for s in sources]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"dataset_mixture names {duplicated} more than once; give each source one entry.")
    return sources


def mixture_probabilities(sources) -> list[float]:
    total = sum(s.weight for s in sources)
    return [s.weight / total for s in sources]


def common_rows(dataset):
    """The common schema's columns only (the synthetic suite also carries `visual_targets`), so sources
    interleave."""
    dataset = dataset.select_columns(list(COMMON_FEATURES))
    return dataset if dataset.features == COMMON_FEATURES else dataset.cast(COMMON_FEATURES)


def interleave_sources(parts, sources, seed: int = 0, stopping_strategy: str = "all_exhausted"):
    """Interleave the loaded `parts` (one per source, all map-style or all streaming) by the sources' weights."""
    if stopping_strategy not in STOPPING_STRATEGIES:
        raise ValueError(f"mixture stopping strategy must be one of {list(STOPPING_STRATEGIES)}, got "
                         f"{stopping_strategy!r}.")
    if len(parts) != len(sources):
        raise ValueError(f"{len(parts)} datasets for {len(sources)} mixture sources.")
    parts = [common_rows(part) for part in parts]
    if len(parts) == 1:
        return parts[0]
    return datasets.interleave_datasets(parts, probabilities=mixture_probabilities(sources), seed=seed,
                                        stopping_strategy=stopping_strategy)


__all__ = [
    "MixtureSource",
    "STOPPING_STRATEGIES",
    "SYNTHETIC",
    "common_rows",
    "interleave_sources",
    "mixture_probabilities",
    "parse_mixture",
]
