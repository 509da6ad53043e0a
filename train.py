"""Train ARR-COC, one YAML per curriculum phase.

    python train.py configs/demo/phase1.yaml [key=value ...]
    accelerate launch --config_file configs/accelerate/cpu_ddp_2proc.yaml train.py configs/demo/phase1.yaml

Reads top to bottom: config -> model -> phase (what trains) -> data -> trainer -> train -> final checkpoint in
`output_dir/checkpoint`, loadable with AutoModelForImageTextToText / AutoProcessor.from_pretrained. `key=value`
arguments override YAML keys (values parsed as YAML); unknown keys are refused.
"""

import dataclasses
import difflib
import json
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, HfArgumentParser
from transformers import set_seed

import modeling_arrcoc  # noqa: F401  (registers ArrCoc with the Auto classes)
from modeling_arrcoc import ArrCocConfig, ArrCocForConditionalGeneration, ArrCocImageProcessor, ArrCocProcessor
from modeling_arrcoc.methods import learning_curve_methods
from modeling_arrcoc.training.curves import LearningCurve, LearningCurveCallback
from modeling_arrcoc.data.collator import ArrCocCollator
from modeling_arrcoc.data.synthetic import FAMILIES, NUM_VISUAL_WORDS, SyntheticConfig, make_synthetic_suite
from modeling_arrcoc.lora import merge_lora
from modeling_arrcoc.training.phases import apply_phase, trainable_parameter_counts
from modeling_arrcoc.training.arguments import ArrCocTrainingArguments
from modeling_arrcoc.training.trainer import ArrCocTrainer

ROOT = Path(__file__).resolve().parent
BASE_IMAGE_TOKEN = "<|image_pad|>"  # Qwen's image placeholder token


@dataclass
class ModelArguments:
    model_preset: str = field(default="configs/model/demo", metadata={
        "help": "Preset directory: config.json (+ processor) built with from_config, or components.json (SAM, "
                "CLIP, Qwen3 checkpoints) assembled with from_components."})
    init_from: str | None = field(default=None, metadata={"help": "Checkpoint directory to start from instead."})
    config_overrides: dict | None = field(default=None, metadata={
        "help": "Preset config fields to change before the model is built, e.g. {visual_vocab_size: 128}."})
    dtype: str = field(default="float32", metadata={
        "help": "Weights dtype for training (the shipped demo base is stored in float16; mixed precision is bf16)."})


@dataclass
class DataArguments:
    dataset: str = field(default="synthetic", metadata={"help": "'synthetic' or a Hub dataset name (data/hub.py)."})
    dataset_path: str | None = field(default=None, metadata={"help": "Local copy of the Hub dataset."})
    train_split: str = field(default="train", metadata={"help": "Hub split to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Hub split to evaluate on (None: no eval)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many rows."})
    synthetic_num_train: int = field(default=8000, metadata={"help": "Synthetic training rows."})
    synthetic_num_validation: int = field(default=500, metadata={"help": "Synthetic validation rows."})
    synthetic_families: list[str] = field(default_factory=lambda: list(FAMILIES), metadata={"help": "Families."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic pages (not of training)."})
    synthetic_cache_dir: str | None = field(default=None, metadata={"help": "datasets cache for the suite."})
    learning_curve_every: int = field(default=0, metadata={
        "help": "Every N steps, score held-out rows at every tier (curves.py) into output_dir/learning_curve.json."})
    learning_curve_samples: int = field(default=64, metadata={"help": "Held-out rows per learning-curve point."})


CONFIG_CLASSES = (ModelArguments, DataArguments, ArrCocTrainingArguments)


def parse_config(argv: list[str]):
    """YAML file + key=value overrides -> (model, data, training) arguments. Unknown keys are an error."""
    if not argv or not argv[0].endswith((".yaml", ".yml")):
        raise SystemExit("usage: train.py CONFIG.yaml [key=value ...]")
    values = yaml.safe_load(Path(argv[0]).read_text()) or {}
    for override in argv[1:]:
        key, _, text = override.partition("=")
        value = yaml.safe_load(text)
        # YAML 1.1 reads no/yes/on/off as booleans; on the command line they mean the strings (eval_strategy=no).
        values[key.lstrip("-")] = text if isinstance(value, bool) and text.lower() not in ("true", "false") else value
    _refuse_unknown_keys(values, argv[0])
    _numbers_from_strings(values)
    # What HfArgumentParser.parse_yaml_file does, after the overrides are merged in.
    return HfArgumentParser(CONFIG_CLASSES).parse_dict(values, allow_extra_keys=False)


def _refuse_unknown_keys(values: dict, source: str):
    known = {f.name for cls in CONFIG_CLASSES for f in fields(cls) if f.init}
    for key in sorted(set(values) - known):
        hint = difflib.get_close_matches(key, known, n=1)
        raise ValueError(f"{source}: unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def _numbers_from_strings(values: dict):
    """PyYAML reads 1e-3 (no dot) as a string; fields typed float or int get numbers."""
    hints = {}
    for cls in CONFIG_CLASSES:
        hints.update(typing.get_type_hints(cls))
    for key, value in values.items():
        kinds = set(typing.get_args(hints[key])) or {hints[key]}
        if isinstance(value, str) and kinds & {float, int}:
            values[key] = float(value) if float in kinds else int(value)


def repo_path(path: str) -> Path:
    """Relative paths in the YAMLs are relative to the repository, wherever the script is launched from."""
    candidate = Path(path)
    return candidate if candidate.exists() or candidate.is_absolute() else ROOT / candidate


def build_model_and_processor(model_args: ModelArguments):
    dtype = getattr(torch, model_args.dtype)
    if model_args.init_from:
        source = repo_path(model_args.init_from)
        if not source.exists() and (model_args.init_from.count("/") > 1 or model_args.init_from[0] in "/."):
            raise FileNotFoundError(f"init_from: no checkpoint at {source}; run the previous phase first.")
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
        return model, AutoProcessor.from_pretrained(source)
    preset = repo_path(model_args.model_preset)
    if (preset / "components.json").exists():
        return _from_components(preset, dtype)
    config = AutoConfig.from_pretrained(preset, **(model_args.config_overrides or {}))
    return AutoModelForImageTextToText.from_config(config, dtype=dtype), AutoProcessor.from_pretrained(preset)


def _from_components(preset: Path, dtype):
    """The base preset: pretrained SAM, CLIP and Qwen3 (components.json), ArrCoc's own settings (config.json),
    the text checkpoint's tokenizer with Qwen's <|image_pad|> as the image token."""
    components = json.loads((preset / "components.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(components["text"], padding_side="left")
    settings = _arrcoc_settings(preset / "config.json")
    settings["image_token_id"] = tokenizer.convert_tokens_to_ids(BASE_IMAGE_TOKEN)
    model = ArrCocForConditionalGeneration.from_components(**components, dtype=dtype, **settings)
    image_processor = ArrCocImageProcessor(size=model.config.vision_config.image_size)
    return model, ArrCocProcessor(image_processor, tokenizer, image_token=BASE_IMAGE_TOKEN)


def _arrcoc_settings(path: Path) -> dict:
    """A preset's ArrCoc fields (budgets, allocator and adapter sizes); the sub-configs come from the checkpoints."""
    own = {f.name for f in dataclasses.fields(ArrCocConfig)} - {"vision_config", "clip_config", "text_config"}
    values = json.loads(path.read_text()) if path.exists() else {}
    return {key: value for key, value in values.items() if key in own}


def build_datasets(data_args: DataArguments, model_config):
    """(train, eval) datasets in the common row schema; synthetic pages match the model's SAM geometry."""
    if data_args.dataset == "synthetic":
        suite = make_synthetic_suite(SyntheticConfig(
            image_size=model_config.vision_config.image_size, patch_size=model_config.vision_config.patch_size,
            num_train=data_args.synthetic_num_train, num_validation=data_args.synthetic_num_validation, num_test=1,
            seed=data_args.synthetic_seed, families=tuple(data_args.synthetic_families),
        ), cache_dir=data_args.synthetic_cache_dir)
        train, evaluation = suite["train"], suite["validation"]
        _check_visual_words(model_config)
    else:
        from modeling_arrcoc.data.hub import load_hub_dataset

        train = load_hub_dataset(data_args.dataset, split=data_args.train_split, path=data_args.dataset_path)
        split = data_args.eval_split
        evaluation = load_hub_dataset(data_args.dataset, split=split, path=data_args.dataset_path) if split else None
    if evaluation is not None and data_args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    return train, evaluation


def _check_visual_words(config):
    if NUM_VISUAL_WORDS > config.visual_vocab_size:
        raise ValueError(
            f"The synthetic suite's reading teacher uses {NUM_VISUAL_WORDS} visual words but the model's visual "
            f"vocabulary has {config.visual_vocab_size}; set config_overrides: {{visual_vocab_size: "
            f"{NUM_VISUAL_WORDS}}} (or more) for a preset, or regenerate the preset."
        )


def learning_curve_callbacks(data_args, args, eval_dataset, collator, budgets) -> list:
    """Held-out accuracy of ARR-COC at every tier and of uniform pooling, against training steps (curves.py)."""
    if not data_args.learning_curve_every or eval_dataset is None:
        return []
    rows = [eval_dataset[i] for i in range(min(data_args.learning_curve_samples, len(eval_dataset)))]
    size = args.per_device_eval_batch_size
    batches = [{**collator(rows[i:i + size]), "task": [row["task"] for row in rows[i:i + size]]}
               for i in range(0, len(rows), size)]
    curve = LearningCurve(Path(args.output_dir) / "learning_curve.json")
    return [LearningCurveCallback(curve, batches, learning_curve_methods(budgets), data_args.learning_curve_every)]


def print_trainable(model, args):
    if args.process_index != 0:
        return
    print(f"phase {args.phase}: trainable / total parameters per component")
    for name, (trainable, total) in trainable_parameter_counts(model).items():
        print(f"  {name:<16} {trainable:>13,} / {total:>13,}")
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    print(f"global batch {global_batch} = {args.per_device_train_batch_size} per device x "
          f"{args.gradient_accumulation_steps} accumulation x {args.world_size} processes; max_steps {args.max_steps}")


def main(argv: list[str] | None = None):
    model_args, data_args, args = parse_config(sys.argv[1:] if argv is None else argv)
    set_seed(args.seed)

    model, processor = build_model_and_processor(model_args)
    apply_phase(model, args.phase, sam_unfreeze_last_n=args.sam_unfreeze_last_n,
                llm_unfreeze_last_n=args.llm_unfreeze_last_n, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                lora_dropout=args.lora_dropout, lora_target_modules=tuple(args.lora_target_modules))
    print_trainable(model, args)

    train_dataset, eval_dataset = build_datasets(data_args, model.config)
    collator = ArrCocCollator(processor, patch_size=model.config.vision_config.patch_size)
    curves = learning_curve_callbacks(data_args, args, eval_dataset, collator, model.config.budgets)
    trainer = ArrCocTrainer(model=model, args=args, data_collator=collator, train_dataset=train_dataset,
                            eval_dataset=eval_dataset if args.eval_strategy != "no" else None,
                            processing_class=processor, callbacks=curves)

    resume = args.resume_from_checkpoint  # a checkpoint directory, or "last" for the newest in output_dir
    trainer.train(resume_from_checkpoint=True if resume in (True, "last", "true") else resume)

    final = str(Path(args.output_dir) / "checkpoint")
    merge_lora(trainer.model)  # a plain checkpoint: LoRA (if any) folded into the LLM weights
    trainer.save_model(final)  # safetensors weights + the processor, on the main process
    if args.process_index == 0:
        pickle_free(Path(final), args)
        print(f"saved {final}")
    return trainer


def pickle_free(checkpoint: Path, args):
    """The Trainer also pickles its arguments (training_args.bin); the final checkpoint keeps them as JSON."""
    (checkpoint / "training_args.bin").unlink(missing_ok=True)
    (checkpoint / "training_args.json").write_text(args.to_json_string())


if __name__ == "__main__":
    main()
