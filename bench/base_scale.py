"""The base preset at its true sizes with random weights, on CPU: loading, then time and peak memory per tier.

1. Checkpoints. SamVisionModel, CLIPVisionModel and Qwen3ForCausalLM are built with random weights at the shapes
   of configs/model/base/config.json (SAM-B: 1024 px, patch 16 -> 64 x 64 = 4096 patches, hidden 768, 12 layers;
   CLIP-L/14 at 224 px: hidden 1024, 24 layers; Qwen3-0.6B: hidden 1024, 28 layers, 16 / 8 heads, head_dim 128,
   intermediate 3072, vocab 151936, tied embeddings), float32, saved with `save_pretrained` (safetensors) one at a
   time and freed. A digest of every tensor is kept. `ArrCocForConditionalGeneration.from_components` then
   assembles the model from the three local directories (the path train.py takes for the base preset), and
   every checkpoint tensor is compared with its place in the model (digest of the raw bytes: bitwise equality).
   CLIP's patch and class embeddings are the only tensors left out, by design (SAM feeds CLIP). The assembled
   sub-configs are compared with the preset's too.
   Ovis2 (the VET source): the real Ovis2 checkpoints carry a second LLM and vision tower, too costly here; the
   check builds an Ovis2 checkpoint whose visual embedding table has the base preset's shape (16384 x 1024) on a
   1-layer, small-vocabulary LLM and tiny SAM / CLIP, and checks the VET and LM head arrive unchanged.
2. Cost per tier. For each tier of config.budgets and at full tokens (4096), batch 1, one synthetic 1024 x 1024
   page and a short question (24 fixed token ids with one <image> placeholder: no tokenizer is downloaded, and
   only the count matters to the cost), three calls:
   - forward: `model(input_ids, attention_mask, pixel_values, budget=tier, use_cache=False)`, no labels (logits
     on every position, as `forward` computes them);
   - generate: `generate(..., budget=tier, max_new_tokens=4, min_new_tokens=4)` (greedy, EOS suppressed so every
     tier decodes 4 steps);
   - train_step: phase 1 (`apply_phase(model, "phase1")`: allocator and quality adapter train, SAM / CLIP / LLM
     frozen), AdamW over the trainable parameters, forward with labels, patch and visual targets and the phase
     loss weights, logits on the answer window only (the trainer's `logits_on_labels_only`), backward, step.
     Untimed warm-up steps create AdamW's state first, so every timed step is a steady-state step.
     At full tokens the plain step's activations (~15 GiB) do not fit beside the other work on this machine, and
     it would take ~8 minutes: by default it is extrapolated from the two largest tiers (marked as such);
     `--full-train-step checkpointed` measures it with gradient checkpointing (and the smallest tier likewise,
     for a like-for-like ratio), `plain` measures it as is, on a machine with the memory.
   Rounds: every (call, tier) once per round, the order reversed every other round; ratios per round as in
   bench/common.py. Two torch threads by default (one would double the run), waiting passively (below); both
   clocks are reported, CPU time being the steadier one while other processes share the cores.
   Peak memory: see `MEMORY_METHOD`. Next to each tier's speed-up over full tokens stands its FLOP ratio (the
   model of bench/flops.py; for the training step `train_flops` below extends it to the backward pass).

    python -m bench.base_scale [--repeats 1] [--threads 2] [--full-train-step checkpointed]

Writes outputs/bench/base_scale.json (and the checkpoints, deleted afterwards unless --keep-checkpoints, under
outputs/bench/base_components). About 15 minutes on 2 cores; peak RSS stays under ~9 GiB.

The second preset, `--preset base_ovis25` (configs/model/base_ovis25: DeepSeek-OCR2's SAM, CLIP-L, Ovis2.5-2B),
builds its checkpoints in those formats (PRESET_SOURCES): a DeepseekOcr2ForConditionalGeneration whose SAM has
the preset's shape (its language model and Qwen2 encoder are 1-layer stand-ins, skipped by from_components), and
an Ovis2_5ForConditionalGeneration with the preset's Qwen3-1.7B, the SigLIP2 ViT and a table of the preset's
visual words plus Ovis' 4 indicator words. The weight check follows each tensor to its place (DeepSeek's SAM under
`vision_encoder.`, Ovis2.5's table transposed into the VET) and lists what is left out by design. Loading it whole
in float32 holds Ovis2.5's LLM and VET (~7 GiB) beside the new model (~9 GiB), ~18 GiB at peak (384 MiB per LLM
layer over the 1-layer run's 8053 MiB): more than a 24 GiB machine has beside other work.
`--text-layers N` keeps the LLM's first N decoder layers and every other part at its true size,
the largest part that fits; `--load-only` stops after loading and the checks; `--parameters-only` counts every
component at the preset's true size on the meta device. Each run also times each checkpoint's load alone
(`load_sam`, `load_clip`, `load_text`) and records the peak RSS of from_components.

    python -m bench.base_scale --preset base_ovis25 --text-layers 1 --load-only --threads 1   # ~2 min, ~8 GiB
"""

import os

# Before torch starts its thread pool (bench/common.py would pin one thread). Passive waiting: an OpenMP thread
# whose partner lost its core to another process sleeps instead of spinning (measured here: a busy neighbour
# cost 2 spinning threads 1.5-2x in wall time and twice the CPU time; passive threads lost far less).
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from bench import common  # noqa: E402  (first: it sets the environment before torch starts its pool)
from bench.flops import STAGES, lm_head_flops, query_flops, visual_tokens  # noqa: E402
from bench.memory import peak_rss, reset_peak_rss  # noqa: E402  (one RSS high-water-mark probe for both)

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

NAME = "base_scale"
ITEMS = ("forward", "generate", "train_step")
COMPONENT_NAMES = ("sam", "clip", "text")
PROMPT_TOKENS = 24  # a chat-templated short question with one <image> placeholder
ANSWER_TOKENS = 4  # answer + end-of-turn
NEW_TOKENS = 4
LOSS_WEIGHTS = {"answer": 1.0, "efficiency": 0.001, "alignment": 0.5, "vet_kl": 0.01}  # as training_throughput
MIB = 2**20
# CLIP tensors ArrCoc does not take: SAM's features replace CLIP's pixels (ArrCocClipEncoder.input_projection).
CLIP_UNUSED = ("embeddings.patch_embedding.weight", "embeddings.class_embedding")
# Checkpoint formats per preset (configs/model/<preset>/components.json names the Hub checkpoints): SAM + Qwen3 for
# the base preset, DeepSeek-OCR2 (its SAM) + Ovis2.5 (Qwen3 and its VET) for base_ovis25.
DEFAULT_SOURCES = {"sam": "sam", "text": "qwen3"}
PRESET_SOURCES = {"base_ovis25": {"sam": "deepseek_ocr2", "text": "ovis2_5"}}
DEEPSEEK_SAM = "model.vision_tower.sam_encoder."
OVIS2_5_TABLE = "model.multi_modal_projector.visual_embeddings_table.weight"
OVIS2_5_UNUSED = ("model.vision_tower.", "model.multi_modal_projector.visual_tokenizer.")
OVIS2_5_INDICATORS = 4  # Ovis2.5's image / video start and end words, after the visual words
SOURCE_LABELS = {"sam": "SAM", "deepseek_ocr2": "DeepSeek-OCR2", "qwen3": "Qwen3", "ovis2_5": "Ovis2.5"}
UNUSED_LABELS = {"clip": "CLIP's patch and class embeddings",
                 "deepseek_ocr2": "DeepSeek-OCR2's proj, Qwen2 encoder and LLM",
                 "ovis2_5": "Ovis2.5's ViT and visual head, and its 4 indicator words"}
# Frozen components that still carry the gradient (dX only) in phase 1; SAM is off the gradient path.
TRAINED_PHASE1 = ("allocator", "select", "adapter")
MEMORY_METHOD = (
    "Peak RSS of each call, in the one process that holds the model: before the call, gc.collect() and glibc "
    "malloc_trim(0) hand freed heap back to the OS and writing 5 to /proc/self/clear_refs resets the kernel's "
    "high-water mark (VmHWM) to the current RSS; after the call VmHWM is the call's peak. It counts everything "
    "resident: weights, AdamW state, activations, logits, KV cache, gradients. 'peak - before' is the call's own "
    "transient. tracemalloc cannot see torch's allocations, and a subprocess per call would reload ~4 GiB of "
    "weights each time; torch's CPU allocator does not cache, so the kernel's count is the honest one."
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, repeats=1)
    parser.set_defaults(preset="base", threads=2)
    parser.add_argument("--items", nargs="+", default=list(ITEMS), choices=ITEMS)
    parser.add_argument("--tiers", nargs="+", default=None, help="tiers to measure (default: every tier + full)")
    parser.add_argument("--full-train-step", default="skip", choices=("plain", "checkpointed", "skip"),
                        help="the training step at full tokens: skip (default: extrapolated from the largest tiers; "
                             "measuring it takes ~8 more minutes), checkpointed (gradient checkpointing, also at "
                             "the smallest tier for a like-for-like ratio), or plain (~15 GiB of activations)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="where the component checkpoints go (default: <output-dir>/base_components)")
    parser.add_argument("--keep-checkpoints", action="store_true")
    parser.add_argument("--skip-ovis2", action="store_true")
    parser.add_argument("--vision-source", choices=("sam", "deepseek_ocr2"), default=None,
                        help="format of the vision checkpoint (default: the preset's, see PRESET_SOURCES)")
    parser.add_argument("--text-source", choices=("qwen3", "ovis2_5"), default=None,
                        help="format of the text checkpoint (default: the preset's)")
    parser.add_argument("--text-layers", type=int, default=None,
                        help="keep only the LLM's first N decoder layers (width, vocabulary and VET unchanged): "
                             "the largest part of a preset that fits a machine's memory")
    parser.add_argument("--load-only", action="store_true", help="save, assemble and check; no timed calls")
    parser.add_argument("--parameters-only", action="store_true",
                        help="count the parameters at the preset's size on the meta device (no weights) and stop")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# Memory probes
# ---------------------------------------------------------------------------------------------------------------


def _malloc_trim():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss() -> int:
    return psutil.Process().memory_info().rss


def probed(fn) -> dict:
    """Run fn once: wall / CPU seconds, RSS before, peak RSS during (reset right before)."""
    gc.collect()
    _malloc_trim()
    reset = reset_peak_rss()
    before = rss()
    _, wall, cpu = common.timed(fn)
    peak = peak_rss()
    return {"wall": wall, "cpu": cpu, "rss_before": before, "peak_rss": max(peak, before), "reset": reset}


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: save, assemble, compare
# ---------------------------------------------------------------------------------------------------------------


def preset_config(preset="base"):
    import modeling_arrcoc  # noqa: F401
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(common.preset_path(preset))


def preset_sources(preset) -> dict:
    """The checkpoint formats a preset's components.json names (what the random checkpoints are built as)."""
    return dict(PRESET_SOURCES.get(Path(str(preset)).name, DEFAULT_SOURCES))


def _sub(sub_config) -> dict:
    values = sub_config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "_name_or_path", "dtype"):
        values.pop(key, None)
    return values


def component_models(config, sources=None, ovis_vision=None) -> dict:
    """Builders of the three checkpoints at the preset's sub-config shapes (built one at a time), in the formats of
    `sources` ({"sam": "sam" | "deepseek_ocr2", "text": "qwen3" | "ovis2_5"}); `ovis_vision`: the Ovis2.5 vision
    config (default: Transformers' Ovis2_5VisionConfig, the SigLIP2-so400m ViT that from_components loads and drops)."""
    from transformers import (CLIPVisionConfig, CLIPVisionModel, Qwen3Config, Qwen3ForCausalLM, SamVisionConfig,
                              SamVisionModel)

    sources = {**DEFAULT_SOURCES, **(sources or {})}
    vision = {"sam": lambda: SamVisionModel(SamVisionConfig(**_sub(config.vision_config))),
              "deepseek_ocr2": lambda: deepseek_ocr2_model(config)}
    text = {"qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**_sub(config.text_config))),
            "ovis2_5": lambda: ovis2_5_model(config, ovis_vision)}
    return {
        "sam": vision[sources["sam"]],
        "clip": lambda: CLIPVisionModel(CLIPVisionConfig(**_sub(config.clip_config))),
        "text": text[sources["text"]],
    }


def deepseek_ocr2_model(config):
    """A DeepSeek-OCR2 model whose SAM has the preset's shape (and DeepSeek's `proj`, which from_components drops).
    Its language model and Qwen2 encoder are 1-layer stand-ins: from_components skips their layers at load, and
    their true shapes are not in the installed code."""
    from transformers import DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration

    sam = {k: v for k, v in _sub(config.vision_config).items() if k not in ("num_pos_feats", "scale")}
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    return DeepseekOcr2ForConditionalGeneration(DeepseekOcr2Config(
        vision_config=dict(sam_config=sam, encoder_config={**small, "num_key_value_heads": 1, "vocab_size": 16}),
        text_config={**small, "vocab_size": 128, "mlp_layer_types": ["dense"], "n_routed_experts": 2,
                     "num_experts_per_tok": 1, "moe_intermediate_size": 16, "n_shared_experts": 1}))


def ovis2_5_model(config, ovis_vision=None):
    """An Ovis2.5 model with the preset's LLM and a table of its visual words plus Ovis' 4 indicator words."""
    from transformers import Ovis2_5Config, Ovis2_5ForConditionalGeneration

    vision = {**(ovis_vision or {}), "vocab_size": config.visual_vocab_size + OVIS2_5_INDICATORS,
              "num_visual_indicator_tokens": OVIS2_5_INDICATORS}
    return Ovis2_5ForConditionalGeneration(Ovis2_5Config(
        text_config=_sub(config.text_config), vision_config=vision,
        tie_word_embeddings=config.text_config.tie_word_embeddings))


def checkpoint_tensors(model, source: str) -> dict:
    """The source model's state dict as ArrCoc takes it: Ovis2.5's table (a Linear, [hidden, words]) as the
    visual-word rows ArrCoc's VET holds ([words, hidden], indicator words dropped); every other tensor as is."""
    tensors = model.state_dict()
    if source == "ovis2_5":
        table = tensors[OVIS2_5_TABLE]
        tensors[OVIS2_5_TABLE] = table.T[: table.shape[1] - OVIS2_5_INDICATORS]
    return tensors


def digest(tensor) -> str:
    """Digest of a tensor's shape, dtype and raw bytes: equal digests mean bitwise-equal tensors."""
    array = np.ascontiguousarray(tensor.detach().cpu().numpy())
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(tensor.shape)}|{tensor.dtype}".encode())
    h.update(memoryview(array).cast("B"))
    return h.hexdigest()


def save_components(config, root: Path, seed: int = 0, sources=None, ovis_vision=None) -> tuple:
    """Save the three random-weight checkpoints under root/{sam,clip,text}; ({name: {key: digest}}, info)."""
    digests, info = {}, {}
    sources = {**DEFAULT_SOURCES, **(sources or {})}
    for index, (name, build) in enumerate(component_models(config, sources, ovis_vision).items()):
        start = time.perf_counter()
        torch.manual_seed(seed + index)
        model = build()
        model.save_pretrained(root / name)  # safetensors
        tensors = checkpoint_tensors(model, sources.get(name, name))
        digests[name] = {key: digest(value) for key, value in tensors.items()}
        info[name] = {
            "class": type(model).__name__, "format": sources.get(name, name),
            "parameters": sum(p.numel() for p in model.parameters()),
            "bytes_on_disk": sum(f.stat().st_size for f in (root / name).iterdir()),
            "files": sorted(f.name for f in (root / name).iterdir()),
            "build_and_save_seconds": time.perf_counter() - start,
        }
        del model
        gc.collect()
        _malloc_trim()
    return digests, info


def load_each(root: Path, config) -> dict:
    """Where from_components' time goes: seconds to load each checkpoint alone with its own loader (files in the
    page cache, as just written), and to build (initialise) the new ArrCoc model the weights are copied into."""
    from transformers import CLIPVisionModel

    from modeling_arrcoc import ArrCocForConditionalGeneration
    from modeling_arrcoc.components import load_text_components, load_vision_components

    loaders = {"sam": load_vision_components, "clip": CLIPVisionModel.from_pretrained, "text": load_text_components,
               "build_arrcoc": lambda _: ArrCocForConditionalGeneration(config)}
    seconds = {}
    for name, load in loaders.items():
        start = time.perf_counter()
        loaded = load(str(root / name))
        seconds[f"load_{name}"] = time.perf_counter() - start
        del loaded
        gc.collect()
        _malloc_trim()
    return seconds


def arrcoc_settings(config) -> dict:
    """ArrCoc's own fields of the preset (budgets, allocator and adapter sizes, image token): what train.py
    passes to from_components next to the checkpoints; the sub-configs come from the checkpoints."""
    from modeling_arrcoc import ArrCocConfig

    own = {f.name for f in dataclasses.fields(ArrCocConfig)} - {"vision_config", "clip_config", "text_config"}
    values = config.to_dict()
    return {key: values[key] for key in own if key in values}


def assemble(config, root: Path):
    from modeling_arrcoc import ArrCocForConditionalGeneration

    return ArrCocForConditionalGeneration.from_components(
        sam=str(root / "sam"), clip=str(root / "clip"), llm=str(root / "text"), **arrcoc_settings(config))


def unused_by_design(component: str, key: str, source: str) -> bool:
    """Checkpoint tensors from_components leaves out on purpose: CLIP's patch and class embeddings (SAM feeds CLIP),
    DeepSeek-OCR2's `proj` and everything outside its SAM encoder, Ovis2.5's ViT and visual head."""
    if component == "clip":
        return key.removeprefix("vision_model.") in CLIP_UNUSED
    if source == "deepseek_ocr2":
        return not key.startswith(DEEPSEEK_SAM) or key.startswith(DEEPSEEK_SAM + "proj.")
    if source == "ovis2_5":
        return key.startswith(OVIS2_5_UNUSED)
    return False


def model_tensor(model, component: str, key: str, source: str | None = None):
    """Where checkpoint tensor `key` of `component` lives in the assembled model (None: not found)."""
    core = model.model
    if component == "sam":
        key = "vision_encoder." + key.removeprefix(DEEPSEEK_SAM) if source == "deepseek_ocr2" else key
        return core.vision_tower.state_dict().get(key)
    if component == "clip":
        rest = key.removeprefix("vision_model.")  # the key as CLIPVisionModel's state_dict names it, or saved
        if rest.startswith("embeddings.position_embedding."):
            return core.clip_encoder.position_embedding.state_dict().get(rest.rsplit(".", 1)[1])
        return core.clip_encoder.state_dict().get(rest)
    if key == "lm_head.weight":
        return model.lm_head.weight
    if key == OVIS2_5_TABLE:
        return core.quality_adapter.visual_embedding_table.weight
    prefix = "model.language_model." if source == "ovis2_5" else "model."
    return core.language_model.state_dict().get(key.removeprefix(prefix))


def check_weights(model, digests: dict, sources=None) -> dict:
    """Every checkpoint tensor against its place in the assembled model, bitwise."""
    sources = {**DEFAULT_SOURCES, **(sources or {})}
    report, taken = {}, set()
    for component, table in digests.items():
        source = sources.get(component, component)
        equal, mismatched, missing, unused = 0, [], [], []
        for key, expected in table.items():
            if unused_by_design(component, key, source):
                unused.append(key)
                continue
            tensor = model_tensor(model, component, key, source)
            if tensor is None:
                missing.append(key)
                continue
            taken.add(tensor.data_ptr())
            if digest(tensor) == expected:
                equal += 1
            else:
                mismatched.append(key)
        report[component] = {"tensors": len(table), "equal": equal, "mismatched": mismatched, "missing": missing,
                             "not_used_by_design": unused}
    own = sum(p.numel() for p in model.parameters() if p.data_ptr() not in taken)
    tied = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    all_equal = all(not r["mismatched"] and not r["missing"] for r in report.values())
    return {"components": report, "all_equal": all_equal, "lm_head_tied_to_embeddings": tied,
            "arrcoc_own_parameters": own}


SHAPE_KEYS = {
    "vision_config": ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
                      "mlp_dim", "output_channels", "window_size", "global_attn_indexes", "use_rel_pos"),
    "clip_config": ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
                    "patch_size", "hidden_act"),
    "text_config": ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                    "intermediate_size", "vocab_size", "tie_word_embeddings", "max_position_embeddings"),
}


def check_config(model_config, preset) -> dict:
    """The assembled model's shape fields against the preset's: {sub-config.key: [assembled, preset]} if any differ."""
    differ = {}
    for sub, keys in SHAPE_KEYS.items():
        for key in keys:
            got, want = getattr(getattr(model_config, sub), key, None), getattr(getattr(preset, sub), key, None)
            if got != want:
                differ[f"{sub}.{key}"] = [got, want]
    for key in ("budgets", "image_token_id", "visual_vocab_size", "num_patches"):
        if getattr(model_config, key) != getattr(preset, key):
            differ[key] = [getattr(model_config, key), getattr(preset, key)]
    return differ


def parameter_counts(model) -> dict:
    from modeling_arrcoc.training.phases import component_parameters

    return {name: sum(p.numel() for p in params) for name, params in component_parameters(model).items()}


def preset_parameters(config, sources=None, ovis_vision=None) -> dict:
    """Parameters at the preset's own size, built on the meta device (shapes only, no memory): ArrCoc's per
    component, and per source checkpoint its total and what from_components takes from it."""
    from modeling_arrcoc import ArrCocForConditionalGeneration

    sources = {**DEFAULT_SOURCES, **(sources or {})}
    with torch.device("meta"):
        arrcoc = parameter_counts(ArrCocForConditionalGeneration(config))
        out = {}
        for name, build in component_models(config, sources, ovis_vision).items():
            model, source = build(), sources.get(name, name)
            out[name] = {"class": type(model).__name__, "format": source,
                         "parameters": sum(p.numel() for p in model.parameters()),
                         "taken": sum(_taken(key, p, name, source) for key, p in model.named_parameters())}
    return {"arrcoc": arrcoc, "arrcoc_total": sum(arrcoc.values()), "sources": out}


def _taken(key, parameter, component, source) -> int:
    if unused_by_design(component, key, source):
        return 0
    if key == OVIS2_5_TABLE:  # [hidden, words + indicators]: the indicator columns are dropped
        return parameter.numel() - OVIS2_5_INDICATORS * parameter.shape[0]
    return parameter.numel()


def with_text_layers(config, layers: int):
    """`config` with only the LLM's first `layers` decoder layers; every other shape unchanged."""
    values = config.to_dict()
    text = values["text_config"]
    text.pop("layer_types", None)  # rebuilt for the new depth
    text["num_hidden_layers"] = layers
    text["max_window_layers"] = min(text.get("max_window_layers", layers), layers)
    return type(config).from_dict(values)


def result_name(preset, text_layers=None) -> str:
    """outputs/bench/<name>.json: base_scale for the base preset (what run_all reads), else one per preset."""
    name = NAME if Path(str(preset)).name == "base" else f"{NAME}_{Path(str(preset)).name}"
    return name if text_layers is None else f"{name}_llm{text_layers}layers"


def tiny_vision_configs(image_size=64, patch_size=8) -> tuple:
    """Tiny SAM and CLIP sub-configs (as tests/conftest.py) for the Ovis2 check."""
    sam = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
               patch_size=patch_size, output_channels=16, window_size=4, global_attn_indexes=[1], mlp_dim=64)
    clip = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                image_size=image_size, patch_size=patch_size)
    return sam, clip


def check_ovis2_vet(root: Path, visual_vocab_size: int, hidden_size: int, text_vocab_size: int = 512,
                    seed: int = 7) -> dict:
    """An Ovis2 checkpoint with a (visual_vocab_size x hidden_size) VET on a 1-layer LLM, tiny SAM / CLIP:
    from_components must take its VET, LM head and visual vocabulary size unchanged."""
    from transformers import (CLIPVisionConfig, CLIPVisionModel, Ovis2Config, Ovis2ForConditionalGeneration,
                              SamVisionConfig, SamVisionModel)

    from modeling_arrcoc import ArrCocForConditionalGeneration

    start = time.perf_counter()
    sam_config, clip_config = tiny_vision_configs()
    torch.manual_seed(seed)
    SamVisionModel(SamVisionConfig(**sam_config)).save_pretrained(root / "sam")
    CLIPVisionModel(CLIPVisionConfig(**clip_config)).save_pretrained(root / "clip")
    heads = max(1, hidden_size // 128)
    ovis_config = Ovis2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, vocab_size=visual_vocab_size, hidden_stride=1),
        text_config=dict(model_type="qwen2", hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=heads,
                         vocab_size=text_vocab_size),
        hidden_size=hidden_size, vocab_size=text_vocab_size,
    )
    ovis = Ovis2ForConditionalGeneration(ovis_config)
    ovis.save_pretrained(root / "ovis2")
    vet, head = digest(ovis.model.visual_embeddings_table.weight), digest(ovis.lm_head.weight)
    vet_shape = list(ovis.model.visual_embeddings_table.weight.shape)
    del ovis
    model = ArrCocForConditionalGeneration.from_components(
        sam=str(root / "sam"), clip=str(root / "clip"), llm=str(root / "ovis2"), budgets=[4, 16, 100],
        image_token_id=5, allocator_hidden_size=32, allocator_num_heads=2, adapter_num_layers=1, adapter_num_heads=2,
        num_vet_prototypes=8)
    result = {
        "shape": "tiny SAM / CLIP, 1-layer Qwen2 LLM of the given width and a small vocabulary; the VET at the "
                 "given (visual vocabulary x hidden) shape",
        "vet_shape": vet_shape,
        "visual_vocab_size": model.config.visual_vocab_size,
        "vet_equal": digest(model.model.quality_adapter.visual_embedding_table.weight) == vet,
        "lm_head_equal": digest(model.lm_head.weight) == head,
        "seconds": time.perf_counter() - start,
    }
    result["ok"] = result["vet_equal"] and result["lm_head_equal"] and result["visual_vocab_size"] == visual_vocab_size
    return result


# ---------------------------------------------------------------------------------------------------------------
# Inputs and the three calls
# ---------------------------------------------------------------------------------------------------------------


def make_inputs(config, prompt_tokens=PROMPT_TOKENS, answer_tokens=ANSWER_TOKENS, seed=0) -> dict:
    """Batch-1 inputs: a rendered synthetic page at the preset's resolution, a fixed prompt of `prompt_tokens`
    ordinary token ids with one <image> placeholder, and (for training) `answer_tokens` labelled answer ids,
    patch targets from the answer boxes and the page's visual-word targets, as ArrCocCollator builds them."""
    from modeling_arrcoc.data.synthetic import render_sample
    from modeling_arrcoc.data.targets import answer_patch_targets
    from modeling_arrcoc.processing_arrcoc import ArrCocImageProcessor

    size, patch = config.vision_config.image_size, config.vision_config.patch_size
    row = render_sample("local_color", np.random.default_rng(seed), size, patch)
    pixel_values = ArrCocImageProcessor(size=size)([row["image"]], return_tensors="pt")["pixel_values"]
    tc = config.text_config
    special = {config.image_token_id, tc.pad_token_id, tc.eos_token_id, tc.bos_token_id}
    pool = [i for i in range(10, min(tc.vocab_size, 20000)) if i not in special]
    ids = np.random.default_rng([seed, 1]).choice(pool, prompt_tokens + answer_tokens, replace=False).tolist()
    ids[min(3, prompt_tokens - 1)] = config.image_token_id
    prompt = torch.tensor([ids[:prompt_tokens]])
    full = torch.tensor([ids])
    labels = torch.full_like(full, -100)
    labels[:, prompt_tokens:] = full[:, prompt_tokens:]
    return {
        "query": {"input_ids": prompt, "attention_mask": torch.ones_like(prompt), "pixel_values": pixel_values},
        "train": {"input_ids": full, "attention_mask": torch.ones_like(full), "pixel_values": pixel_values,
                  "labels": labels,
                  "patch_targets": torch.from_numpy(answer_patch_targets(row["boxes"], size, patch)).float()[None],
                  "visual_targets": torch.tensor([row["visual_targets"]], dtype=torch.long)},
    }


def budget_of(tier):
    return "full" if tier == "full" else int(tier)


class Calls:
    """forward / generate / train_step of one model on one batch, at a forced tier."""

    def __init__(self, model, inputs, new_tokens=NEW_TOKENS, lr=1e-5):
        from modeling_arrcoc.modeling_arrcoc import answer_window
        from modeling_arrcoc.training.phases import apply_phase

        self.model, self.inputs, self.new_tokens = model, inputs, new_tokens
        apply_phase(model, "phase1")
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=lr, weight_decay=0.0)
        self.window = answer_window(inputs["train"]["labels"])
        self.losses, self.errors = [], {}

    @torch.no_grad()
    def forward(self, tier):
        self.model.eval()
        return self.model(**self.inputs["query"], budget=budget_of(tier), use_cache=False).logits.shape

    @torch.no_grad()
    def generate(self, tier):
        self.model.eval()
        pad = self.model.config.text_config.pad_token_id
        return self.model.generate(**self.inputs["query"], budget=budget_of(tier), max_new_tokens=self.new_tokens,
                                   min_new_tokens=self.new_tokens, do_sample=False, pad_token_id=pad)

    def train_step(self, tier):
        self.model.train()
        out = self.model(**self.inputs["train"], budget=budget_of(tier), loss_weights=LOSS_WEIGHTS,
                         logits_to_keep=self.window)
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(float(out.loss.detach()))
        return out.loss.detach()

    def set_checkpointing(self, on: bool):
        """Activation checkpointing of the CLIP and LLM layers on or off. Transformers' enable also hooks every
        input embedding to make its output require grad (for PEFT), SAM's patch embedding included: frozen SAM
        would then be recorded by autograd and backpropagated (measured: +6 GiB and ~2x the step at tier 64), and
        disable leaves the hooks in place. Nothing here needs them (the trained allocator and adapter feed CLIP
        and the LLM), so they are removed both ways."""
        if on:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.activation_checkpointing_disable()
        self.model.disable_input_require_grads()


# ---------------------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------------------


def item_flops(config, item, tier, prompt_tokens=PROMPT_TOKENS, answer_tokens=ANSWER_TOKENS,
               new_tokens=NEW_TOKENS) -> float:
    """FLOPs of one call. forward: bench/flops.py's prefill (LM head on every position). generate: prefill +
    new_tokens - 1 decode steps. train_step: `train_flops`."""
    if item == "forward":
        return float(sum(query_flops(config, tier, prompt_tokens, 1).values()))
    if item == "generate":
        return float(sum(query_flops(config, tier, prompt_tokens, new_tokens).values()))
    return float(sum(train_flops(config, tier, prompt_tokens + answer_tokens, answer_tokens + 1).values()))


def train_flops(config, tier, text_width, window) -> dict:
    """Phase-1 step as a FLOP model: forward with the LM head on the `window` answer positions only; backward =
    2 x forward for the trained stages (allocator, its compression heads, the adapter: dX and dW), 1 x forward for
    the frozen stages on the gradient path (CLIP, the LLM: dX only), nothing for SAM (frozen, before the
    allocator). Attention's backward is counted like its forward (the same rules as bench/flops.py)."""
    forward = query_flops(config, tier, text_width, 1)
    length = text_width - 1 + visual_tokens(config, tier)
    tc = config.text_config
    forward["prefill"] += lm_head_flops(tc, window) - lm_head_flops(tc, length)
    backward = {stage: (2 if stage in TRAINED_PHASE1 else 0 if stage == "sam" else 1) * forward[stage]
                for stage in STAGES}
    return {stage: forward[stage] + backward[stage] for stage in STAGES}


# ---------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------


def bench_tiers(config, tiers=None) -> list:
    """Every tier of the preset below its patch count, then "full" (ascending: the first round runs small first)."""
    if tiers:
        return [t if t == "full" else int(t) for t in tiers]
    return [t for t in config.budgets if t < config.num_patches] + ["full"]


def measure(calls: Calls, tiers, items, rounds, full_train_step="skip") -> dict:
    """{(item, tier, checkpointed): [probe, ...]} over `rounds` rounds (order reversed every other round), after
    untimed warm-ups."""
    smallest = tiers[0]
    runs, errors = {}, calls.errors
    plan = [(item, tier, False) for item in items for tier in tiers
            if not (item == "train_step" and tier == "full" and full_train_step != "plain")]
    if "train_step" in items and "full" in tiers and full_train_step == "checkpointed":
        plan += [("train_step", smallest, True), ("train_step", "full", True)]
    # Warm-up (untimed): one forward, and one train step per checkpointing mode (creates AdamW's state).
    if "forward" in items or "generate" in items:
        calls.forward(smallest)
    for checkpointed in sorted({c for item, _, c in plan if item == "train_step"}):
        calls.set_checkpointing(checkpointed)
        calls.train_step(smallest)
    calls.set_checkpointing(False)
    for round_index in range(rounds):
        for item, tier, checkpointed in plan if round_index % 2 == 0 else reversed(plan):
            calls.set_checkpointing(checkpointed)
            try:
                probe = probed(lambda item=item, tier=tier: getattr(calls, item)(tier))
            except Exception as error:  # e.g. the CPU allocator out of memory: keep the other measurements
                calls.optimizer.zero_grad(set_to_none=True)
                errors[f"{item} {tier}{' checkpointed' if checkpointed else ''}"] = f"{type(error).__name__}: {error}"
                print(f"  {item} {tier} FAILED: {type(error).__name__}: {error}", flush=True)
                continue
            runs.setdefault((item, tier, checkpointed), []).append(probe)
            print(f"  {item:<10} {str(tier):>5}{' (checkpointed)' if checkpointed else '':<15} "
                  f"{probe['wall']:8.1f} s  peak RSS {probe['peak_rss'] / MIB:7.0f} MiB "
                  f"(+{(probe['peak_rss'] - probe['rss_before']) / MIB:.0f})", flush=True)
        calls.set_checkpointing(False)
    return runs


def entry(config, item, tier, probes, full_probes, flops, full_flops) -> dict:
    walls = [p["wall"] for p in probes]
    out = {
        "visual_tokens": visual_tokens(config, tier),
        "ms": common.ms(walls),
        "cpu_ms": common.ms([p["cpu"] for p in probes]),
        "peak_rss_mib": common.stats([p["peak_rss"] for p in probes], 1 / MIB),
        "rss_before_mib": common.stats([p["rss_before"] for p in probes], 1 / MIB),
        "peak_over_before_mib": common.stats([p["peak_rss"] - p["rss_before"] for p in probes], 1 / MIB),
        "gflops": flops / 1e9,
        "flop_ratio_vs_full": full_flops / flops,
        "speedup_vs_full": None,
        "peak_reset": all(p["reset"] for p in probes),
    }
    if full_probes:
        out["speedup_vs_full"] = common.ratio([p["wall"] for p in full_probes], walls)
        out["speedup_vs_full_cpu_time"] = common.ratio([p["cpu"] for p in full_probes], [p["cpu"] for p in probes])
        out["share_of_flop_ratio"] = out["speedup_vs_full"]["median"] / out["flop_ratio_vs_full"]
    return out


def full_train_estimate(config, results: dict, prompt_tokens=PROMPT_TOKENS, answer_tokens=ANSWER_TOKENS):
    """The plain (not checkpointed) training step at full tokens, extrapolated from the two largest measured tiers
    when it was not measured: time linear in the step's FLOPs, memory above the pre-call RSS linear in visual
    tokens (below ~300 tokens SAM's own attention transient, the same at every tier, sets the peak instead)."""
    tiers = [t for t in results.get("train_step", {}) if t != "full"]
    if len(tiers) < 2 or "full" in results.get("train_step", {}):
        return None
    a, b = (results["train_step"][t] for t in tiers[-2:])
    full_flops = item_flops(config, "train_step", "full", prompt_tokens, answer_tokens) / 1e9
    tokens = visual_tokens(config, "full")

    def line(x0, y0, x1, y1, x):
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)

    out = {"from_tiers": tiers[-2:], "visual_tokens": tokens, "gflops": full_flops}
    for clock, key in (("wall_s", "ms"), ("cpu_s", "cpu_ms")):
        out[clock] = line(a["gflops"], a[key]["median"], b["gflops"], b[key]["median"], full_flops) / 1e3
    out["peak_over_before_mib"] = line(a["visual_tokens"], a["peak_over_before_mib"]["median"], b["visual_tokens"],
                                       b["peak_over_before_mib"]["median"], tokens)
    out["peak_rss_mib"] = b["rss_before_mib"]["median"] + out["peak_over_before_mib"]
    return out


def report(config, runs, tiers, items, prompt_tokens=PROMPT_TOKENS, answer_tokens=ANSWER_TOKENS) -> dict:
    results = {}
    for item in items:
        for checkpointed in (False, True):
            label = item + ("_checkpointed" if checkpointed else "")
            measured = [t for t in tiers if (item, t, checkpointed) in runs]
            if not measured:
                continue
            full_probes = runs.get((item, "full", checkpointed))
            full = item_flops(config, item, "full", prompt_tokens, answer_tokens)
            results[label] = {str(t): entry(config, item, t, runs[(item, t, checkpointed)], full_probes,
                                            item_flops(config, item, t, prompt_tokens, answer_tokens), full)
                              for t in measured}
    return results


def smallest_vs_full(results: dict) -> dict:
    out = {}
    for label, tiers in results.items():
        if "full" not in tiers or len(tiers) < 2:
            continue
        smallest = next(iter(tiers))
        e = tiers[smallest]
        out[label] = {"tier": smallest, "speedup": e["speedup_vs_full"]["median"],
                      "speedup_cpu_time": e["speedup_vs_full_cpu_time"]["median"],
                      "flop_ratio": e["flop_ratio_vs_full"], "share_of_flop_ratio": e["share_of_flop_ratio"],
                      "peak_rss_mib": e["peak_rss_mib"]["median"],
                      "full_peak_rss_mib": tiers["full"]["peak_rss_mib"]["median"]}
    return out


def run(config, checkpoint_dir: Path, rounds=1, items=ITEMS, tiers=None, full_train_step="skip",
        prompt_tokens=PROMPT_TOKENS, answer_tokens=ANSWER_TOKENS, threads=2, keep_checkpoints=False,
        ovis2=True, sources=None, ovis_vision=None) -> dict:
    """The whole benchmark for the shapes of `config` (an ArrCocConfig: a base preset, or a tiny one in tests), its
    checkpoints in the formats of `sources` (see `component_models`). The Ovis2 VET check runs on the Qwen3 route
    only: an Ovis2.5 text checkpoint's VET is part of the main weight check."""
    common.use_threads(threads)
    sources = {**DEFAULT_SOURCES, **(sources or {})}
    timings = {}
    checkpoint_dir = Path(checkpoint_dir)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    checkpoint_dir.mkdir(parents=True)
    try:
        start = time.perf_counter()
        digests, checkpoints = save_components(config, checkpoint_dir, sources=sources, ovis_vision=ovis_vision)
        timings["save_components"] = time.perf_counter() - start
        sizes = ", ".join(f"{k} {v['parameters'] / 1e6:.1f}M" for k, v in checkpoints.items())
        print(f"saved {sizes} "
              f"in {timings['save_components']:.0f} s", flush=True)
        timings.update(load_each(checkpoint_dir, config))
        loaded = {}
        load = probed(lambda: loaded.setdefault("model", assemble(config, checkpoint_dir)))
        model = loaded["model"]
        timings["from_components"], timings["from_components_cpu"] = load["wall"], load["cpu"]
        gc.collect()
        _malloc_trim()
        start = time.perf_counter()
        weights = check_weights(model, digests, sources)
        timings["weight_check"] = time.perf_counter() - start
        print(f"from_components in {timings['from_components']:.0f} s (peak RSS {load['peak_rss'] / MIB:.0f} MiB); "
              f"every weight unchanged: {weights['all_equal']}", flush=True)
        ovis = None
        if ovis2 and sources["text"] == "qwen3":
            ovis = check_ovis2_vet(checkpoint_dir / "ovis2_check", config.visual_vocab_size,
                                   config.text_config.hidden_size)
            print(f"Ovis2 VET ({ovis['vet_shape'][0]} x {ovis['vet_shape'][1]}) unchanged: {ovis['ok']}", flush=True)
    finally:
        if not keep_checkpoints:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    config_differs = check_config(model.config, config)
    tiers = bench_tiers(model.config, tiers)
    inputs = make_inputs(model.config, prompt_tokens, answer_tokens)
    calls = Calls(model, inputs)
    start = time.perf_counter()
    runs = measure(calls, tiers, list(items), rounds, full_train_step)
    timings["measure"] = time.perf_counter() - start
    results = report(model.config, runs, tiers, list(items), prompt_tokens, answer_tokens)
    return {
        "preset_shapes": {"image_size": config.vision_config.image_size, "patch_size": config.vision_config.patch_size,
                          "num_patches": config.num_patches, "budgets": list(config.budgets),
                          "sam_hidden": config.vision_config.hidden_size,
                          "sam_layers": config.vision_config.num_hidden_layers,
                          "clip_hidden": config.clip_config.hidden_size,
                          "clip_layers": config.clip_config.num_hidden_layers,
                          "llm_hidden": config.text_config.hidden_size,
                          "llm_layers": config.text_config.num_hidden_layers,
                          "llm_vocab": config.text_config.vocab_size},
        "dtype": "float32", "threads": torch.get_num_threads(), "rounds": rounds, "batch_size": 1,
        "prompt_tokens": prompt_tokens, "answer_tokens": answer_tokens, "new_tokens": NEW_TOKENS,
        "tiers": [str(t) for t in tiers], "items": list(items), "full_train_step": full_train_step,
        "loss_weights": LOSS_WEIGHTS, "train_losses": calls.losses, "errors": calls.errors,
        "sources": sources, "checkpoints": checkpoints,
        "from_components_peak_rss_mib": load["peak_rss"] / MIB,
        "from_components_rss_before_mib": load["rss_before"] / MIB,
        "parameters": parameter_counts(model),
        "trainable_parameters_phase1": sum(p.numel() for p in calls.trainable),
        "weight_check": weights,
        "config_differs_from_preset": config_differs,
        "ovis2_vet_check": ovis,
        "results": results,
        "smallest_vs_full": smallest_vs_full(results),
        "full_train_step_estimate": full_train_estimate(model.config, results, prompt_tokens, answer_tokens),
        "seconds": timings,
        "memory_method": MEMORY_METHOD,
    }


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    s, w = result["preset_shapes"], result["weight_check"]
    counts = ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in result["parameters"].items())
    equal = sum(c["equal"] for c in w["components"].values())
    total = sum(c["tensors"] - len(c["not_used_by_design"]) for c in w["components"].values())
    differ = result["config_differs_from_preset"]
    sources = {**DEFAULT_SOURCES, **result.get("sources", {})}
    names = " / ".join((SOURCE_LABELS[sources["sam"]], "CLIP", SOURCE_LABELS[sources["text"]]))
    unused = [UNUSED_LABELS[k] for k in ("clip", sources["sam"], sources["text"]) if k in UNUSED_LABELS]
    unused = f"{unused[0]} are unused by design" if len(unused) == 1 else "unused by design: " + "; ".join(unused)
    preset = Path(str(result.get("preset", "base"))).name
    title = "Base preset" if preset == "base" else f"`{preset}` preset"
    peak = result.get("from_components_peak_rss_mib")
    scope = "at its true sizes" if not result.get("text_layers") else (
        f"with its LLM cut to {result['text_layers']} decoder layer(s), every other part at its true size")
    lines = [
        f"**{title} {scope}** (`bench/base_scale.py`, random float32 weights; SAM {s['sam_layers']}x"
        f"{s['sam_hidden']} at {s['image_size']} px / patch {s['patch_size']} = {s['num_patches']} patches, CLIP "
        f"{s['clip_layers']}x{s['clip_hidden']}, LLM {s['llm_layers']}x{s['llm_hidden']}, vocab {s['llm_vocab']}; "
        f"parameters {counts}; {common.machine_line(result)}).", "",
        f"Loading: `from_components` on locally saved {names} checkpoints took "
        f"{result['seconds']['from_components']:.0f} s{f' (peak RSS {peak:.0f} MiB)' if peak else ''}; {equal} of "
        f"{total} checkpoint tensors arrived bitwise "
        f"unchanged ({'all' if w['all_equal'] else 'NOT all'}; {unused}); "
        f"LM head tied to the embeddings: {w['lm_head_tied_to_embeddings']}; sub-configs "
        f"{'DIFFER: ' + json.dumps(differ) if differ else 'match the preset'}.",
    ]
    each = {k.removeprefix("load_"): v for k, v in result["seconds"].items() if k.startswith("load_")}
    if each:
        build = each.pop("build_arrcoc", None)
        lines.append("Each checkpoint loaded alone (from_components' loader, files in the page cache): "
                     + ", ".join(f"{k} {v:.1f} s" for k, v in each.items())
                     + (f"; building the new ArrCoc model (initialisation) {build:.1f} s" if build else "") + ".")
    at_size = result.get("parameters_at_preset_size")
    if at_size:
        arrcoc = ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in at_size["arrcoc"].items())
        taken = ", ".join(f"{k} ({v['class']}) {v['parameters'] / 1e6:.1f}M, {v['taken'] / 1e6:.1f}M taken"
                          for k, v in at_size["sources"].items())
        lines.append(f"Parameters at the preset's own size (meta device, no weights): ArrCoc {arrcoc} "
                     f"(total {at_size['arrcoc_total'] / 1e6:.1f}M); checkpoints: {taken}.")
    ovis = result.get("ovis2_vet_check")
    if ovis:
        lines.append(f"Ovis2: a VET of the preset's shape ({ovis['vet_shape'][0]} x {ovis['vet_shape'][1]}) on a "
                     f"tiny Ovis2 checkpoint arrives unchanged: {ovis['ok']}.")
    rows = []
    for label, tiers in result["results"].items():
        for tier, e in tiers.items():
            has = e["speedup_vs_full"] is not None and tier != "full"
            rows.append([label, tier, e["visual_tokens"], f"{e['ms']['median'] / 1e3:.1f}",
                         f"{e['cpu_ms']['median'] / 1e3:.1f}", f"{e['peak_rss_mib']['median']:.0f}",
                         f"{e['peak_over_before_mib']['median']:.0f}", f"{e['gflops']:.0f}",
                         f"{e['speedup_vs_full']['median']:.2f}x" if has else "-",
                         f"{e['speedup_vs_full_cpu_time']['median']:.2f}x" if has else "-",
                         "-" if tier == "full" else f"{e['flop_ratio_vs_full']:.2f}x"])
    headers = ["call", "tier", "visual tokens", "wall s", "CPU s", "peak RSS MiB", "peak - before MiB", "GFLOPs",
               "speed-up vs full (wall)", "(CPU time)", "FLOP ratio"]
    if rows:  # none with --load-only
        lines += ["", f"Batch 1, one {s['image_size']} px page, {result['prompt_tokens']}-token prompt, "
                      f"{result['rounds']} round(s) (median shown), {result['threads']} torch threads; the FLOP ratio "
                      "is full tokens' FLOPs over the tier's (bench/flops.py; train_step: base_scale.train_flops):", "",
                  common.markdown_table(headers, rows), ""]
    for label, r in result["smallest_vs_full"].items():
        lines.append(f"- {label}: tier {r['tier']} is {r['speedup']:.2f}x faster than full tokens in wall time, "
                     f"{r['speedup_cpu_time']:.2f}x in CPU time; FLOP ratio {r['flop_ratio']:.2f}x; peak RSS "
                     f"{r['peak_rss_mib']:.0f} vs {r['full_peak_rss_mib']:.0f} MiB.")
    if result["full_train_step"] == "checkpointed":
        lines.append("- train_step at full tokens ran once per round with gradient checkpointing "
                     "(train_step_checkpointed rows; the smallest tier under the same setting gives the ratio): "
                     "without it its activations would not fit this machine's memory budget (extrapolation below).")
    estimate = result.get("full_train_step_estimate")
    if estimate:
        lines.append(f"- train_step at full tokens without checkpointing, extrapolated from tiers "
                     f"{'/'.join(estimate['from_tiers'])} (not measured): ~{estimate['wall_s']:.0f} s wall, "
                     f"~{estimate['cpu_s']:.0f} s CPU, peak RSS ~{estimate['peak_rss_mib'] / 1024:.1f} GiB.")
    for call, error in result.get("errors", {}).items():
        lines.append(f"- {call}: FAILED, {error}")
    lines += ["", f"Memory: {result['memory_method']}"]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    checkpoint_dir = args.checkpoint_dir or args.output_dir / "base_components"
    config = preset_config(args.preset)
    sources = preset_sources(args.preset)
    sources.update({k: v for k, v in (("sam", args.vision_source), ("text", args.text_source)) if v})
    at_size = preset_parameters(config, sources)
    if args.parameters_only:
        print(json.dumps(at_size, indent=2))
        return
    if args.text_layers is not None:
        config = with_text_layers(config, args.text_layers)
    items = [] if args.load_only else args.items
    result = run(config, checkpoint_dir, args.repeats, items, args.tiers, args.full_train_step,
                 threads=args.threads, keep_checkpoints=args.keep_checkpoints, ovis2=not args.skip_ovis2,
                 sources=sources)
    result.update(preset=str(args.preset), text_layers=args.text_layers, parameters_at_preset_size=at_size)
    common.publish(result_name(args.preset, args.text_layers), result, args.output_dir, markdown)


if __name__ == "__main__":
    main()


__all__ = [
    "ITEMS",
    "PRESET_SOURCES",
    "check_weights",
    "component_models",
    "make_inputs",
    "markdown",
    "preset_parameters",
    "preset_sources",
    "run",
    "save_components",
    "train_flops",
    "with_text_layers",
]
