"""A training run from its YAML: what train.py does, as a library the scripts and tests share.

    main(["configs/demo/phase1.yaml", "max_steps=10"])   # train.py's entry point: returns the ArrCocTrainer

Reads top to bottom: config (`parse_config`: the YAML, key=value overrides, unknown keys refused) -> model
(`build_model_and_processor`: a preset built with from_config, a components.json preset assembled with
from_components, or `init_from` a checkpoint) -> method (`apply_method`: the model's own selection and relevance tag)
-> phase (what trains) -> data (data/recipe.py) -> trainer -> train -> final checkpoint in `output_dir/checkpoint`,
loadable with AutoModelForImageTextToText / AutoProcessor.from_pretrained, with the resolved configuration beside it
(`save_training_config`: provenance.TRAINING_CONFIG, which eval.py records).

Relative paths in a YAML (presets, `init_from`, a teacher) resolve against the repository checkout
(`provenance.repo_path`), so a run does not depend on the working directory.
"""

import dataclasses
import difflib
import itertools
import json
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import datasets
import torch
import yaml
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, HfArgumentParser
from transformers import set_seed

from .. import ArrCocConfig, ArrCocForConditionalGeneration, ArrCocImageProcessor, ArrCocProcessor
from ..components import COMPONENTS_FILE, component_sources, is_components_preset, vision_normalization
from ..data.collator import ArrCocCollator
from ..data.recipe import DataArguments, at_most, build_datasets, build_mixture
from ..lora import merge_lora
from ..methods import learning_curve_methods
from ..processing_arrcoc import PROMPT_LAYOUTS, prompt_layout_template
from ..provenance import TRAINING_CONFIG, repo_path
from .arguments import ArrCocTrainingArguments
from .calibration import budget_head_runs, fit_budget_head, fit_budget_temperature, predicts_budget
from .curves import LearningCurve, LearningCurveCallback
from .phases import apply_phase, trainable_parameter_counts
from .reader import scale_attention_logits
from .trainer import ArrCocTrainer

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
    prompt_layout: str | None = field(default=None, metadata={
        "help": f"Where the image goes in each chat turn, one of {list(PROMPT_LAYOUTS)}: the processor's chat template "
                "is set to it and saved with every checkpoint. None: keep the starting processor's."})
    llm_attention_scale: float | None = field(default=None, metadata={
        "help": "Multiply the language model's attention logits by this factor once, when the run starts (its "
                "query and key norms' weights, training/reader.py scale_attention_logits): QK-norm caps a logit near "
                "sqrt(head_dim), too flat to pick one token among 256. None: the starting weights as stored."})


# The three argument groups of one YAML, in the order parse_config returns them.
CONFIG_CLASSES = (ModelArguments, DataArguments, ArrCocTrainingArguments)
USAGE = "usage: train.py CONFIG.yaml [key=value ...]"


def parse_config(argv: list[str]):
    """YAML file + key=value overrides -> (model, data, training) arguments. Unknown keys are an error."""
    values = config_values(argv)
    # What HfArgumentParser.parse_yaml_file does, after the overrides are merged in.
    return HfArgumentParser(CONFIG_CLASSES).parse_dict(values, allow_extra_keys=False)


def config_values(argv: list[str]) -> dict:
    """The YAML file's keys with the key=value overrides merged in, checked (unknown keys are an error)."""
    if not argv or not argv[0].endswith((".yaml", ".yml")):
        raise SystemExit(USAGE)
    values = yaml.safe_load(Path(argv[0]).read_text()) or {}
    for override in argv[1:]:
        key, _, text = override.partition("=")
        value = yaml.safe_load(text)
        # YAML 1.1 reads no/yes/on/off as booleans; on the command line they mean the strings (eval_strategy=no).
        values[key.lstrip("-")] = text if isinstance(value, bool) and text.lower() not in ("true", "false") else value
    _refuse_unknown_keys(values, argv[0])
    _numbers_from_strings(values)
    return values


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


def build_model_and_processor(model_args: ModelArguments):
    """(model, processor) the run starts from: `init_from`'s checkpoint, else the preset (from_config, or
    from_components when it names pretrained parts), with the chat template of `prompt_layout` and the attention
    logits scaled by `llm_attention_scale` when they are given."""
    if model_args.prompt_layout is not None:
        prompt_layout_template(model_args.prompt_layout)  # a bad name fails now, not after minutes of loading
    model, processor = _starting_model_and_processor(model_args)
    if model_args.prompt_layout is not None:
        processor.chat_template = prompt_layout_template(model_args.prompt_layout, processor.image_token)
    if model_args.llm_attention_scale is not None:
        # Before training, so a resumed run's checkpoint weights (already scaled) replace these.
        scale_attention_logits(model.model.language_model, scale=model_args.llm_attention_scale)
    return model, processor


def _starting_model_and_processor(model_args: ModelArguments):
    """(model, processor) as stored: `init_from`'s checkpoint, else the preset."""
    dtype = getattr(torch, model_args.dtype)
    if model_args.init_from:
        source = repo_path(model_args.init_from)
        if not source.exists() and (model_args.init_from.count("/") > 1 or model_args.init_from[0] in "/."):
            raise FileNotFoundError(f"init_from: no checkpoint at {source}; run the previous phase first.")
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
        return model, AutoProcessor.from_pretrained(source)
    preset = repo_path(model_args.model_preset)
    if is_components_preset(preset):
        return _from_components(preset, dtype)
    config = AutoConfig.from_pretrained(preset, **(model_args.config_overrides or {}))
    return AutoModelForImageTextToText.from_config(config, dtype=dtype), AutoProcessor.from_pretrained(preset)


def _from_components(preset: Path, dtype):
    """The base preset: pretrained SAM, CLIP and language model (components.json: sam, clip, llm), ArrCoc's own
    settings (config.json), the text checkpoint's tokenizer with Qwen's <|image_pad|> as the image token."""
    components = component_sources(**json.loads((preset / COMPONENTS_FILE).read_text()))
    tokenizer = AutoTokenizer.from_pretrained(components["llm"], padding_side="left")
    settings = _arrcoc_settings(preset / "config.json")
    settings["image_token_id"] = tokenizer.convert_tokens_to_ids(BASE_IMAGE_TOKEN)
    model = ArrCocForConditionalGeneration.from_components(**components, dtype=dtype, **settings)
    image_processor = ArrCocImageProcessor(size=model.config.vision_config.image_size,
                                           **vision_normalization(components["sam"]))
    return model, ArrCocProcessor(image_processor, tokenizer, image_token=BASE_IMAGE_TOKEN)


def _arrcoc_settings(path: Path) -> dict:
    """A preset's ArrCoc fields (budgets, allocator and adapter sizes); the sub-configs come from the checkpoints."""
    own = {f.name for f in dataclasses.fields(ArrCocConfig)} - {"vision_config", "clip_config", "text_config"}
    values = json.loads(path.read_text()) if path.exists() else {}
    return {key: value for key, value in values.items() if key in own}


def check_streaming(train_dataset, args):
    """A streamed training set has no length and no row index: the run needs max_steps, and the options that
    index rows are refused up front."""
    if not isinstance(train_dataset, datasets.IterableDataset):
        return
    if args.max_steps <= 0:
        raise ValueError("A streamed training set (streaming: true) has no length: set max_steps.")
    for name in ("cache_sam_features", "group_by_tier", "curriculum_easy_steps"):
        if getattr(args, name):
            raise ValueError(f"{name} indexes training rows and does not work with a streamed training set "
                             "(streaming: true).")
    if args.alignment_targets == "teacher":
        raise ValueError("alignment_targets 'teacher' caches one score per training row: use streaming: false.")


def add_alignment_targets(train_dataset, args, model_config):
    """alignment_targets 'teacher': the teacher checkpoint scores every training row at full tokens once; the
    scores are cached under output_dir/teacher_targets and become the rows' `teacher_targets` column
    (modeling_arrcoc/training/teacher.py)."""
    if args.alignment_targets != "teacher":
        return train_dataset
    from .teacher import add_teacher_targets  # imported when used: the teacher pulls in scoring code

    teacher = repo_path(args.teacher_checkpoint)
    teacher = teacher if teacher.exists() else args.teacher_checkpoint  # else a Hub name
    with args.main_process_first(desc="teacher targets"):
        return add_teacher_targets(
            train_dataset, teacher, model_config.grid_size, Path(args.output_dir) / "teacher_targets",
            scoring=args.teacher_scoring, selection=args.teacher_selection,
            batch_size=args.per_device_eval_batch_size, device=args.device,
            progress=args.process_index == 0 and not args.disable_tqdm,
        )


def apply_method(model, args) -> str:
    """Write the run's `selection_method`, `relevance_tag` and `fold_dropped` (when given) into the model config,
    the one place they are set, so the checkpoint carries its own method; check the budgets fit the resulting
    selection and the tier weights name the model's tiers; return the line that says what the run trains."""
    config = model.config
    for name in ("selection_method", "relevance_tag", "fold_dropped"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    # The compression heads were built from the loaded config: the fold is their flag too (a reload reads config).
    model.model.allocator.compression_heads.fold_dropped = config.fold_dropped
    # Likewise the learned compressor: a base loaded as that baseline grows one, starting as uniform pooling.
    model.model.allocator.grow_compressor(config)
    args.check_selection(config.selection_method)
    args.tier_weights(config.budgets)  # a weighted tier the model lacks fails here, before any data is built
    budget = "every patch (train_budget ignored)" if config.selection_method == "full" else args.training_budget
    return (f"method: selection_method={config.selection_method} relevance_tag={config.relevance_tag} "
            f"fold_dropped={config.fold_dropped}; training budget {budget}")


def learning_curve_callbacks(data_args, args, eval_dataset, collator, config) -> list:
    """Held-out accuracy of ARR-COC at every tier and of uniform pooling (a baseline: its own selection), against
    training steps (curves.py)."""
    if not data_args.learning_curve_every or eval_dataset is None:
        return []
    rows = [eval_dataset[i] for i in range(min(data_args.learning_curve_samples, len(eval_dataset)))]
    size = args.per_device_eval_batch_size
    batches = [{**collator(rows[i:i + size]), "task": [row["task"] for row in rows[i:i + size]]}
               for i in range(0, len(rows), size)]
    curve = LearningCurve(Path(args.output_dir) / "learning_curve.json")
    methods = learning_curve_methods(config.budgets, selection=config.selection_method)
    return [LearningCurveCallback(curve, batches, methods, data_args.learning_curve_every)]


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
    """train.py: the YAML and its key=value overrides (sys.argv when `argv` is None) -> a trained final checkpoint
    in output_dir/checkpoint (with `fit_only`, init_from's weights with only the post-training fits redone). Returns
    the trainer (tests and tools read its state)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    model_args, data_args, args = parse_config(argv)
    set_seed(args.seed)
    if args.fit_only:
        check_fit_only(model_args, args)
    trainer, collator, validation = build_trainer(model_args, data_args, args)
    if not args.fit_only:
        resume = args.resume_from_checkpoint  # a checkpoint directory, or "last" for the newest in output_dir
        trainer.train(resume_from_checkpoint=True if resume in (True, "last", "true") else resume)
    save_final(trainer, collator, validation, argv)
    # A launched process leaves its process group before the interpreter exits: torch asks for it, and without it one
    # DeepSpeed rank aborted in its teardown after saving ("terminate called without an active exception", once in CI).
    if args.world_size > 1:
        trainer.accelerator.end_training()
    return trainer


def check_fit_only(model_args, args):
    """fit_only fits the budget of one trained checkpoint, on one process, and needs a fit to run."""
    if not model_args.init_from:
        raise ValueError("fit_only fits the budget of a trained model: set init_from to its checkpoint.")
    if not (args.fit_budget_head or args.fit_budget_temperature):
        raise ValueError("fit_only with neither fit_budget_head nor fit_budget_temperature set would only copy the "
                         "checkpoint: set the fits to run.")
    if args.resume_from_checkpoint:
        raise ValueError("fit_only trains nothing, so there is nothing to resume: drop resume_from_checkpoint.")
    if args.deepspeed or args.world_size > 1:
        raise ValueError("fit_only runs on one process without DeepSpeed: run `python train.py ...`, not a launcher.")


def build_trainer(model_args, data_args, args):
    """(trainer, collator, validation split) of a run: model -> method -> phase -> data -> ArrCocTrainer. The trainer
    and the learning curves evaluate the split's first max_eval_samples rows; the budget fit after training may take
    more of it (fit_budget_temperature rows)."""
    model, processor = build_model_and_processor(model_args)
    method = apply_method(model, args)
    if args.process_index == 0:
        print(method)
    apply_phase(model, args.phase, **args.phase_options)
    print_trainable(model, args)

    train_dataset, validation = build_datasets(dataclasses.replace(data_args, max_eval_samples=None), model.config)
    eval_dataset = at_most(validation, data_args.max_eval_samples)
    check_streaming(train_dataset, args)
    train_dataset = add_alignment_targets(train_dataset, args, model.config)
    collator = ArrCocCollator(processor, patch_size=model.config.vision_config.patch_size,
                              alignment_targets=args.alignment_targets, questions_per_image=args.questions_per_image,
                              question_keys=args.loss_weight_question_attention > 0)
    # Learning curves measure coverage of the true answer boxes, whatever the training targets, one question per image
    # as evaluation asks them.
    curves = learning_curve_callbacks(data_args, args, eval_dataset, dataclasses.replace(
        collator, alignment_targets="boxes", questions_per_image=1, question_keys=False), model.config)
    trainer = ArrCocTrainer(model=model, args=args, data_collator=collator, train_dataset=train_dataset,
                            eval_dataset=eval_dataset if args.eval_strategy != "no" else None,
                            processing_class=processor, callbacks=curves)
    return trainer, collator, validation


def save_final(trainer, collator, validation, argv: list[str]):
    """The final checkpoint in output_dir/checkpoint: LoRA merged, the budget temperature fitted, weights and
    processor, the arguments as JSON and the resolved YAML beside them."""
    args = trainer.args
    final = Path(args.output_dir) / "checkpoint"
    merge_lora(trainer.model)  # a plain checkpoint: LoRA (if any) folded into the LLM weights
    one_question = dataclasses.replace(collator, questions_per_image=1, question_keys=False)  # as evaluation asks
    head_fit(trainer.model, args, trainer.train_dataset, one_question)
    temperature_fit(trainer.model, args, validation, one_question)
    trainer.save_model(str(final))  # safetensors weights + the processor, on the main process
    if args.process_index == 0:
        pickle_free(final, args)
        save_training_config(final, argv)
        print(f"saved {final}")


def head_fit(model, args, train_dataset, collator):
    """The budget predictor's head refitted on every tier's outcome for the first `fit_budget_head` training rows
    (before the temperature and price, which are fitted on validation for the head that ships)."""
    if not args.fit_budget_head or not predicts_budget(model):
        return
    rows = list(itertools.islice(iter(train_dataset), args.fit_budget_head))
    runs = budget_head_runs(model, collator, rows, target=args.calibration_target,
                            tolerance=args.calibration_tolerance, max_loss=args.calibration_max_loss)
    fit = fit_budget_head(model, runs, epochs=args.fit_budget_head_epochs, seed=args.seed)
    if args.process_index == 0:
        print(f"budget head refitted on {fit['rows']} training rows x {fit['epochs']} passes (calibration loss "
              f"{fit['loss_before']:.3f} -> {fit['loss_after']:.3f})")


def temperature_fit(model, args, validation, collator):
    """The first `fit_budget_temperature` validation rows -> config.budget_temperature, and with `fit_budget_cost`
    config.budget_cost (saved with the checkpoint)."""
    if not args.fit_budget_temperature or validation is None or not predicts_budget(model):
        return
    rows = [validation[i] for i in range(min(args.fit_budget_temperature, len(validation)))]
    fit = fit_budget_temperature(model, collator, rows, target=args.calibration_target, fit_price=args.fit_budget_cost,
                                 accuracy_floor=args.fit_budget_accuracy_floor, min_margin=args.fit_budget_min_margin)
    if args.process_index == 0:
        print(f"budget temperature {fit['temperature']:.3g} on {fit['rows']} validation rows (cross-entropy to the "
              f"{args.calibration_target} target {fit['nll']:.3f}, {fit['nll_at_1']:.3f} at 1)")
        if "price" in fit:
            price = fit["price"]
            print(f"budget cost {price['budget_cost']:g}: {price['accuracy']:.3f} at {price['mean_tokens']:.1f} "
                  f"tokens, {100 * price['margin']:+.1f} points over the constant tiers' envelope"
                  + "".join(f" ({note})" for note in _price_notes(price)))


def _price_notes(price: dict) -> list:
    """What a reader of the fitted price should know: the floor and whether it bound, the required margin and
    whether a price met it, a margin below the envelope, a price at the grid's edge."""
    notes = []
    if price["floor"] is not None:
        reached = "" if price["met_floor"] else (", reached by no price on or above the envelope: the margin "
                                                 "alone decides")
        notes.append(f"accuracy floor {price['floor']:.3f}{reached}; the margin alone would choose "
                     f"{price['unconstrained']:g}")
    if price["min_margin"] is not None:
        notes.append(f"the most accurate price at least {100 * price['min_margin']:g} points above the envelope"
                     if price["met_margin"] else
                     f"no price {100 * price['min_margin']:g} points above the envelope: the largest margin wins")
    if price["margin"] < 0:
        notes.append("below the envelope: a constant tier beats it there")
    if price["at_edge"]:
        notes.append("at the edge of the price grid: the best price may lie beyond it")
    return notes


def pickle_free(checkpoint: Path, args):
    """The Trainer also pickles its arguments (training_args.bin); the final checkpoint keeps them as JSON."""
    (checkpoint / "training_args.bin").unlink(missing_ok=True)
    (checkpoint / "training_args.json").write_text(args.to_json_string())


def save_training_config(checkpoint: Path, argv: list[str]):
    """The run's YAML with its key=value overrides merged in (what `train.py` read), beside the checkpoint: eval.py
    records it per method, and the trained task families come from it (and from `init_from`'s, recursively)."""
    header = f"# train.py {' '.join(argv)}\n"
    (checkpoint / TRAINING_CONFIG).write_text(header + yaml.safe_dump(config_values(argv), sort_keys=False))


__all__ = [
    "BASE_IMAGE_TOKEN",
    "CONFIG_CLASSES",
    "DataArguments",
    "ModelArguments",
    "add_alignment_targets",
    "apply_method",
    "build_datasets",
    "build_mixture",
    "build_model_and_processor",
    "build_trainer",
    "check_streaming",
    "config_values",
    "learning_curve_callbacks",
    "main",
    "parse_config",
    "pickle_free",
    "print_trainable",
    "repo_path",
    "save_final",
    "save_training_config",
    "temperature_fit",
]
