"""Hub VQA datasets mapped onto the common row schema of the synthetic suite.

Common row: ``image`` (PIL), ``question`` (str), ``answers`` (list[str], first is canonical; for VQAv2 and
TextVQA the list keeps all 10 human answers with duplicates, canonical first, as VQA accuracy counts them),
``boxes`` (list of [x0, y0, x1, y1]; empty where the source has no answer boxes), ``task`` (short dataset
name), ``source`` (Hub repo id), ``variant`` ("standard", so Hub and synthetic rows concatenate).

Where each schema comes from (checked against the dataset cards / public loaders, not by downloading):
- lmms-lab/DocVQA, configs "DocVQA" and "InfographicVQA": questionId, question, answers (list[str]; the
  test split has no public answers), image. Card's dataset_info; splits validation / test.
- HuggingFaceM4/ChartQA: image, query, label (list[str]), human_or_machine. Card; splits train / val / test.
- lmms-lab/VQAv2: question, multiple_choice_answer, answers (list of {answer, answer_confidence,
  answer_id}), image, ... Card; splits validation / testdev / test (no train split in this repo).
- lmms-lab/textvqa: question, answers (list[str], 10 per question), image, ocr_tokens, ... Card (as mirrored
  by a duplicate of the repo); splits train / validation / test.
- lmms-lab/GQA: questions live in "<split>_balanced_instructions" (id, imageId, question, answer,
  fullAnswer, ...), images in "<split>_balanced_images" (id, image); joined on imageId == id. Card lists
  the configs and the image/instruction split; the "answer" column and the join follow lmms-eval's GQA task.
- lmms-lab/ST-VQA: one split "test" with question, question_id, image and NO answers (the ST-VQA test set
  is scored on the RRC server); adapters also accept an "answers" column if a mirror has one.
  question_id / question / image follow lmms-eval's ST-VQA task; the absence of answers is reported by
  third-party loaders, not verified here.
- PlotQA: the only parquet QA copy found is the "plotqa" config of HuggingFaceM4/the_cauldron (train
  split): images (list of images) and texts (list of {user, assistant, source}), several QA turns per image;
  each turn becomes one row. The images/texts layout is verified on the card of another config of the
  same repo (ai2d); that the plotqa config shares it is an inference. achang/plot_qa (image, text) looked
  like a table-extraction set, not QA, and is not used.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import datasets

from .synthetic import FEATURES

# The same columns and types as the synthetic suite, so the two concatenate.
COMMON_FEATURES = FEATURES


@dataclass(frozen=True)
class HubSpec:
    """Where a Hub dataset lives and how its rows map onto the common schema."""

    repo_id: str
    config: str | None
    split: str  # default split
    adapter: Callable[[dict], list]  # one Hub row -> one or more (question, answers) pairs, see _adapt
    metric: str  # "anls", "relaxed_accuracy", "vqa_accuracy" or "exact_match"
    image_config: str | None = None  # separate image table keyed by id (GQA), same split names


# ----------------------------------------------------------------------------------------------------------
# Per-dataset adapters: each returns a list of (image, question, answers) triples.
# ----------------------------------------------------------------------------------------------------------


def _strings(values) -> list:
    return [str(v) for v in (values or []) if v is not None]


def _canonical_first(answers: list, canonical: str | None = None) -> list:
    """Move one occurrence of the canonical (default: most frequent) answer to the front, keep the rest."""
    if not answers:
        return [canonical] if canonical else []
    canonical = canonical if canonical is not None else Counter(answers).most_common(1)[0][0]
    rest = list(answers)
    if canonical in rest:
        rest.remove(canonical)
    return [canonical] + rest


def _adapt_docvqa(row: dict) -> list:
    # DocVQA and InfographicVQA share question / answers; test rows carry answers=None.
    return [(row["image"], row["question"], _strings(row.get("answers")))]


def _adapt_chartqa(row: dict) -> list:
    label = row["label"]
    return [(row["image"], row["query"], _strings([label] if isinstance(label, str) else label))]


def _adapt_vqav2(row: dict) -> list:
    human = [a["answer"] if isinstance(a, dict) else a for a in row.get("answers") or []]
    answers = _canonical_first(_strings(human), row.get("multiple_choice_answer"))
    return [(row["image"], row["question"], answers)]


def _adapt_textvqa(row: dict) -> list:
    return [(row["image"], row["question"], _canonical_first(_strings(row.get("answers"))))]


def _adapt_gqa(row: dict) -> list:
    # The instruction table has no pixels; load_hub_dataset joins "image" in from the image table first.
    return [(row.get("image"), row["question"], _strings([row.get("answer")]))]


def _adapt_stvqa(row: dict) -> list:
    answers = row.get("answers") or row.get("answer")
    answers = [answers] if isinstance(answers, str) else answers
    return [(row["image"], row["question"], _canonical_first(_strings(answers)))]


def _adapt_cauldron(row: dict) -> list:
    images = row.get("images") or [None]
    return [(images[0], turn["user"], _strings([turn["assistant"]])) for turn in row["texts"]]


HUB_DATASETS: dict = {
    "docvqa": HubSpec("lmms-lab/DocVQA", "DocVQA", "validation", _adapt_docvqa, "anls"),
    "infovqa": HubSpec("lmms-lab/DocVQA", "InfographicVQA", "validation", _adapt_docvqa, "anls"),
    "chartqa": HubSpec("HuggingFaceM4/ChartQA", None, "test", _adapt_chartqa, "relaxed_accuracy"),
    "plotqa": HubSpec("HuggingFaceM4/the_cauldron", "plotqa", "train", _adapt_cauldron, "relaxed_accuracy"),
    "vqav2": HubSpec("lmms-lab/VQAv2", None, "validation", _adapt_vqav2, "vqa_accuracy"),
    "gqa": HubSpec(
        "lmms-lab/GQA", "testdev_balanced_instructions", "testdev", _adapt_gqa, "exact_match",
        image_config="testdev_balanced_images",
    ),
    "textvqa": HubSpec("lmms-lab/textvqa", None, "validation", _adapt_textvqa, "vqa_accuracy"),
    "stvqa": HubSpec("lmms-lab/ST-VQA", None, "test", _adapt_stvqa, "anls"),
}

_ALIASES = {"infographicvqa": "infovqa", "infographicsvqa": "infovqa", "vqa": "vqav2", "stvqatask3": "stvqa"}


def resolve_name(name: str) -> str:
    """Short dataset name for any common spelling ("ST-VQA", "InfographicVQA", "docvqa")."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    key = _ALIASES.get(key, key)
    if key not in HUB_DATASETS:
        raise ValueError(f"unknown Hub dataset {name!r}; known names: {', '.join(sorted(HUB_DATASETS))}")
    return key


def adapt_rows(name: str, row: dict) -> list:
    """Every common-schema row one Hub row yields (several for multi-turn sources like the_cauldron)."""
    key = resolve_name(name)
    spec = HUB_DATASETS[key]
    return [
        {
            "image": image,
            "question": str(question),
            "answers": answers,
            "boxes": [],
            "task": key,
            "source": spec.repo_id,
            "variant": "standard",
        }
        for image, question, answers in spec.adapter(row)
    ]


def adapt_row(name: str, row: dict) -> dict:
    """One Hub row -> one common-schema row (the first QA turn where a source has several)."""
    return adapt_rows(name, row)[0]


def _adapt_batch(batch: dict, name: str) -> dict:
    size = len(next(iter(batch.values())))
    rows = [row for i in range(size) for row in adapt_rows(name, {k: v[i] for k, v in batch.items()})]
    return {column: [row[column] for row in rows] for column in COMMON_FEATURES}


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------

_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _offline_requested() -> bool:
    return any(os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"} for v in _OFFLINE_VARIABLES)


def _offline_kwargs(kw: dict) -> dict:
    """datasets / huggingface_hub read HF_HUB_OFFLINE once, at import; a value set later (as a user or a test
    does) is honoured by asking datasets for local files only, through its own option instead of patching it.
    Without this, a later HF_HUB_OFFLINE=1 still sends requests, which hang without a network."""
    if not _offline_requested() or "download_config" in kw:
        return kw
    return {**kw, "download_config": datasets.DownloadConfig(local_files_only=True)}


def _is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "state.json")) or os.path.exists(os.path.join(path, "dataset_dict.json"))
    )


def _load_local(path: str, split: str, streaming: bool, config: str | None = None, **kw):
    """A save_to_disk folder, or the repo's files as the Hub serves them. A repo with several configs keeps each
    in its own folder (lmms-lab/DocVQA: DocVQA/validation-00000-of-00006.parquet, InfographicVQA/...): read the
    config's folder only (without it, datasets would merge every config's shards of that split into one, or
    refuse for lack of a config name where the README lists them)."""
    if _is_saved_dataset(path):
        loaded = datasets.load_from_disk(path)
        loaded = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return loaded.to_iterable_dataset() if streaming else loaded
    if config is not None and not {"name", "data_dir", "data_files"} & set(kw):
        if config in _readme_configs(path):
            # The repo's own README says which files each config holds. Name them explicitly: with the config name
            # alone, datasets caches the prepared split under that name without hashing the files, so a local copy
            # whose files changed would be read back stale from the cache.
            files = _readme_split_files(path, config, split)
            kw = {**kw, "name": config, **({"data_files": {split: files}} if files else {})}
        elif os.path.isdir(os.path.join(path, config)):
            files = _split_files(os.path.join(path, config), split)
            kw = {**kw, "data_files": {split: files}} if files else {**kw, "data_dir": config}
    return datasets.load_dataset(path, split=split, streaming=streaming, **kw)


def _readme_header(path: str) -> dict:
    """The YAML header of a local repo's README.md (as on the Hub), or {} without one."""
    readme = os.path.join(path, "README.md")
    if not os.path.isfile(readme):
        return {}
    with open(readme, encoding="utf-8") as handle:
        text = handle.read()
    if not text.startswith("---"):
        return {}
    import yaml

    return yaml.safe_load(text.split("---", 2)[1]) or {}


def _readme_config_entries(path: str) -> list:
    return [entry for entry in _readme_header(path).get("configs") or [] if isinstance(entry, dict)]


def _readme_configs(path: str) -> set:
    """Config names a local repo's README.md declares (its YAML header's `configs`, as on the Hub)."""
    return {entry.get("config_name") for entry in _readme_config_entries(path)}


def _readme_split_files(path: str, config: str, split: str) -> list:
    """The files of `config`'s `split` as the local repo's README header lists them (glob patterns, resolved)."""
    import glob

    for entry in _readme_config_entries(path):
        if entry.get("config_name") != config:
            continue
        specs = entry.get("data_files") or []
        specs = [specs] if isinstance(specs, (str, dict)) else specs
        patterns = [spec["path"] for spec in specs if isinstance(spec, dict) and spec.get("split") == split]
        patterns = [p for group in patterns for p in ([group] if isinstance(group, str) else group)]
        return sorted(f for pattern in patterns for f in glob.glob(os.path.join(path, pattern)))
    return []


def _split_files(folder: str, split: str) -> list:
    """A config folder's shards of `split`, named as the Hub names them (<split>-00000-of-00001.parquet) or kept in
    a <split>/ subfolder; datasets alone recognizes only train/validation/test-like names (GQA's "testdev" is not)."""
    names = sorted(os.listdir(folder))
    files = [os.path.join(folder, n) for n in names if n.startswith(f"{split}-") or n.split(".")[0] == split]
    sub = os.path.join(folder, split)
    if os.path.isdir(sub):
        files += [os.path.join(sub, n) for n in sorted(os.listdir(sub))]
    return [f for f in files if os.path.isfile(f)]


def _fetch(key: str, config: str | None, split: str, streaming: bool, path: str | None, **kw):
    repo_id = HUB_DATASETS[key].repo_id
    try:
        if path is not None:
            return _load_local(path, split, streaming, config, **_offline_kwargs(kw))
        return datasets.load_dataset(repo_id, config, split=split, streaming=streaming, **_offline_kwargs(kw))
    except OSError as exc:  # ConnectionError, HTTP errors, "not in the local cache" all derive from OSError
        where = f"local path {path!r}" if path is not None else f"Hub repo {repo_id!r}"
        raise ConnectionError(
            f"Cannot fetch dataset {key!r} ({where}, config {config!r}, split {split!r}): {exc}. "
            "The Hugging Face Hub is not reachable (offline: HF_HUB_OFFLINE=1, or no network) and no cached copy "
            "was found. Download it once on a machine with network access (it is then read from the datasets "
            "cache, also under HF_HUB_OFFLINE=1), or pass path= a local copy (a save_to_disk folder or a folder "
            "of the repo's parquet files)."
        ) from exc


def _attach_images(questions, images) -> datasets.Dataset:
    """GQA: add each question's image from the image table (joined on imageId == id)."""
    index = {image_id: i for i, image_id in enumerate(images["id"])}

    def attach(batch):
        return {"image": [images[index[image_id]]["image"] for image_id in batch["imageId"]]}

    return questions.map(attach, batched=True, batch_size=64)


def _is_image_struct(feature) -> bool:
    return isinstance(feature, dict) and set(feature) == {"bytes", "path"}


def _images_from_structs(raw):
    """Parquet files written without datasets' schema metadata (by pyarrow or another tool) keep images as bare
    {bytes, path} structs; read them as images, as files carrying the metadata (the Hub's) declare. A streamed
    dataset needs this before the adapter runs: it would otherwise yield the raw dicts."""
    for name, feature in (raw.features or {}).items():
        if _is_image_struct(feature):
            raw = raw.cast_column(name, datasets.Image())
        elif isinstance(feature, datasets.List) and _is_image_struct(feature.feature):
            raw = raw.cast_column(name, datasets.List(datasets.Image()))
    return raw


def load_hub_dataset(
    name: str,
    split: str | None = None,
    streaming: bool = False,
    path: str | None = None,
    image_path: str | None = None,
    **kw,
):
    """Load a Hub VQA dataset and map it onto the common schema.

    ``name``: a key of HUB_DATASETS (common spellings accepted). ``split``: defaults to the spec's split.
    ``path``: read a local copy instead of the Hub (``image_path`` likewise for GQA's image table; by default the
    image table's folder inside ``path``): a ``save_to_disk`` folder, or the repo's files as the Hub serves them
    (parquet shards, images as {bytes, path} structs), of which only this dataset's config is read in a repo with
    several (DocVQA and InfographicVQA share lmms-lab/DocVQA). ``streaming``: an IterableDataset, read lazily.
    Other keyword arguments go to ``datasets.load_dataset``. Raises ConnectionError naming the dataset when
    it can be neither downloaded nor found in the cache, e.g. offline.
    """
    key = resolve_name(name)
    spec = HUB_DATASETS[key]
    split = split or spec.split
    raw = _fetch(key, spec.config, split, streaming, path, **kw)
    if spec.image_config is not None:
        if image_path is None and path is not None and os.path.isdir(os.path.join(path, spec.image_config)):
            image_path = path  # a local copy of the whole repo holds the image table's folder too
        raw = _attach_images(raw, _fetch(key, spec.image_config, split, False, image_path, **kw))
    raw = _images_from_structs(raw)
    columns = list(raw.column_names or [])
    return raw.map(
        _adapt_batch,
        batched=True,
        fn_kwargs={"name": key},
        remove_columns=columns,
        features=COMMON_FEATURES,
    )


__all__ = [
    "COMMON_FEATURES",
    "HUB_DATASETS",
    "HubSpec",
    "adapt_row",
    "adapt_rows",
    "load_hub_dataset",
    "resolve_name",
]
