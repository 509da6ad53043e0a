"""The data side of a training recipe: `DataArguments` (the data keys of a phase YAML) and the (train, eval) datasets
they build, in the common row schema.

train.py reads these keys (training/recipe.py parses them with the model's and the trainer's arguments); eval.py and
evaluation read them back from a recorded training YAML (`data_arguments`) to know what a checkpoint was trained on;
tools reuse `build_datasets` for the same rows a run would see. Data layer: the model's config is only read (its
SAM geometry and visual vocabulary), never imported.
"""

import dataclasses
from dataclasses import dataclass, field

import datasets

from .synthetic import FAMILIES, NUM_VISUAL_WORDS, SyntheticConfig, make_synthetic_suite


@dataclass
class DataArguments:
    dataset: str = field(default="synthetic", metadata={"help": "'synthetic' or a Hub dataset name (data/hub.py)."})
    dataset_path: str | None = field(default=None, metadata={
        "help": "Local copy of the Hub dataset: a save_to_disk folder or the repo's files (parquet shards)."})
    train_split: str = field(default="train", metadata={"help": "Hub split to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Hub split to evaluate on (None: no eval)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many rows."})
    synthetic_num_train: int = field(default=8000, metadata={"help": "Synthetic training rows."})
    synthetic_num_validation: int = field(default=500, metadata={"help": "Synthetic validation rows."})
    synthetic_families: list[str] = field(default_factory=lambda: list(FAMILIES), metadata={"help": "Families."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic pages (not of training)."})
    synthetic_train_variant: str = field(default="standard", metadata={
        "help": "Look of the training and validation pages: 'standard', or 'randomized' (each page draws glyph "
                "sizes, offsets, shades, tint and layout from wide ranges; see data/synthetic.py)."})
    synthetic_key_jitter: float | None = field(default=None, metadata={
        "help": "The randomized look's key-shade jitter per channel (None: data/synthetic.py's own); training and "
                "validation pages only."})
    synthetic_cache_dir: str | None = field(default=None, metadata={"help": "datasets cache for the suite."})
    learning_curve_every: int = field(default=0, metadata={
        "help": "Every N steps, score held-out rows at every tier (curves.py) into output_dir/learning_curve.json."})
    learning_curve_samples: int = field(default=64, metadata={"help": "Held-out rows per learning-curve point."})
    streaming: bool = field(default=False, metadata={
        "help": "Stream the training split (a datasets IterableDataset, read as it trains): needs max_steps; no "
                "cache_sam_features, curriculum, group_by_tier or teacher targets (they index rows)."})
    dataset_mixture: list[dict] | None = field(default=None, metadata={
        "help": "Several sources mixed by weight instead of `dataset`: [{name, weight, path, split, eval_split}, ...] "
                "(data/mixture.py), interleaved with datasets.interleave_datasets."})
    mixture_stopping_strategy: str = field(default="all_exhausted", metadata={
        "help": "'all_exhausted' (sample until every source was seen whole) or 'first_exhausted'."})
    mixture_seed: int = field(default=0, metadata={"help": "Seed of the mixture's interleaving draw."})


def data_arguments(values: dict) -> DataArguments:
    """The `DataArguments` of a training YAML (a file's keys or a recorded TRAINING_CONFIG): its data keys, the
    dataclass's defaults for the ones it leaves out; the model's and the trainer's keys are ignored. Readers of a
    recorded run get the same defaults train.py used, not a second copy of them."""
    names = {f.name for f in dataclasses.fields(DataArguments)}
    return DataArguments(**{key: value for key, value in values.items() if key in names})


def build_datasets(data_args: DataArguments, model_config, num_proc: int | None = None):
    """(train, eval) datasets in the common row schema; synthetic pages match the model's SAM geometry. `num_proc`
    renders synthetic pages in that many processes (the same rows and cache)."""
    if data_args.dataset_mixture:
        return build_mixture(data_args, model_config)
    if data_args.dataset == "synthetic":
        suite = make_synthetic_suite(SyntheticConfig(
            image_size=model_config.vision_config.image_size, patch_size=model_config.vision_config.patch_size,
            num_train=data_args.synthetic_num_train, num_validation=data_args.synthetic_num_validation, num_test=1,
            seed=data_args.synthetic_seed, families=tuple(data_args.synthetic_families),
            train_variant=data_args.synthetic_train_variant, key_jitter=data_args.synthetic_key_jitter,
        ), cache_dir=data_args.synthetic_cache_dir, num_proc=num_proc)
        train, evaluation = suite["train"], suite["validation"]
        check_visual_words(model_config)
    else:
        from .hub import load_hub_dataset

        train = load_hub_dataset(data_args.dataset, split=data_args.train_split, path=data_args.dataset_path,
                                 streaming=data_args.streaming)
        split = data_args.eval_split
        evaluation = load_hub_dataset(data_args.dataset, split=split, path=data_args.dataset_path) if split else None
    if data_args.streaming and isinstance(train, datasets.Dataset):
        train = train.to_iterable_dataset()
    return train, at_most(evaluation, data_args.max_eval_samples)


def build_mixture(data_args: DataArguments, model_config):
    """`dataset_mixture`: each source loaded alone (its split, path and streaming), then interleaved by weight
    (data/mixture.py); the evaluation set is the sources' `eval_split`s one after the other."""
    from .hub import load_hub_dataset
    from .mixture import SYNTHETIC, common_rows, interleave_sources, parse_mixture

    sources = parse_mixture(data_args.dataset_mixture)
    parts, evaluations = [], []
    for source in sources:
        streaming = data_args.streaming if source.streaming is None else source.streaming
        if source.name == SYNTHETIC:
            single = dataclasses.replace(data_args, dataset=SYNTHETIC, dataset_mixture=None, streaming=streaming,
                                         max_eval_samples=None)
            train, evaluation = build_datasets(single, model_config)
            evaluation = evaluation if source.eval_split else None
        else:
            kwargs = dict(path=source.path, image_path=source.image_path)
            train = load_hub_dataset(source.name, split=source.split or data_args.train_split, streaming=streaming,
                                     **kwargs)
            evaluation = load_hub_dataset(source.name, split=source.eval_split, **kwargs) if source.eval_split else None
        parts.append(train)
        if evaluation is not None:
            evaluations.append(common_rows(evaluation))
    # interleave_datasets takes all map-style or all iterable sources: one streamed source streams them all.
    if len({isinstance(part, datasets.IterableDataset) for part in parts}) > 1:
        parts = [p if isinstance(p, datasets.IterableDataset) else p.to_iterable_dataset() for p in parts]
    train = interleave_sources(parts, sources, data_args.mixture_seed, data_args.mixture_stopping_strategy)
    evaluation = datasets.concatenate_datasets(evaluations) if evaluations else None
    return train, at_most(evaluation, data_args.max_eval_samples)


def at_most(evaluation, max_samples):
    """The first `max_samples` rows of an evaluation set (None: all of it, or no set)."""
    if evaluation is None or max_samples is None:
        return evaluation
    return evaluation.select(range(min(max_samples, len(evaluation))))


def check_visual_words(config):
    """The synthetic suite's reading teacher names NUM_VISUAL_WORDS visual words: the model's visual vocabulary must
    hold them all (checked before training, with the fix in the message)."""
    if NUM_VISUAL_WORDS > config.visual_vocab_size:
        raise ValueError(
            f"The synthetic suite's reading teacher uses {NUM_VISUAL_WORDS} visual words but the model's visual "
            f"vocabulary has {config.visual_vocab_size}; set config_overrides: {{visual_vocab_size: "
            f"{NUM_VISUAL_WORDS}}} (or more) for a preset, or regenerate the preset."
        )


__all__ = ["DataArguments", "at_most", "build_datasets", "build_mixture", "check_visual_words", "data_arguments"]
