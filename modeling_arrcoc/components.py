"""Assemble ArrCoc from pretrained checkpoints (Hub names or local directories); docs/components.md has the routes.

- vision: a SAM checkpoint (`facebook/sam-vit-*`, a saved `SamVisionModel`), or a DeepSeek-OCR2 checkpoint
  (`deepseek_ocr2`), whose document-trained SAM encoder becomes the vision tower;
- clip: a CLIP vision checkpoint;
- text: a Qwen3 (any causal LM), Ovis2 or Ovis2.5 checkpoint; an Ovis one also brings its visual embedding table
  (VET) into the quality adapter.

Each source is chosen by `AutoConfig.from_pretrained(path).model_type`.
"""

import contextlib
import dataclasses
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    CLIPVisionModel,
    PreTrainedConfig,
    SamVisionConfig,
    SamVisionModel,
)
from transformers.utils import logging

from .configuration_arrcoc import ArrCocConfig

SAM_MODEL_TYPES = ("sam", "sam_vision_model")
# Where DeepseekOcr2Model keeps its SAM encoder, and the part of it ArrCoc leaves out (see deepseek_ocr2_sam).
DEEPSEEK_OCR2_SAM_PREFIX = "vision_tower.sam_encoder."
DEEPSEEK_OCR2_DROPPED = ("proj.",)


# --- vision tower ---------------------------------------------------------------------------------------------


def load_vision_components(vision, dtype=None):
    """(SamVisionConfig, state dict of ArrCoc's vision tower) from a SAM or a DeepSeek-OCR2 checkpoint."""
    model_type = AutoConfig.from_pretrained(vision).model_type
    if model_type == "deepseek_ocr2":
        return deepseek_ocr2_sam(vision, dtype=dtype)
    if model_type not in SAM_MODEL_TYPES:
        # SamVisionModel.from_pretrained would warn and leave random weights: say what is accepted instead.
        raise ValueError(f"{vision} is a {model_type!r} checkpoint; the vision tower comes from a SAM checkpoint "
                         f"({', '.join(SAM_MODEL_TYPES)}) or a 'deepseek_ocr2' one.")
    sam = SamVisionModel.from_pretrained(vision, dtype=dtype)
    return sam.config, sam.state_dict()


# The pixel normalization each vision source was trained with (the image processor's mean and std). SAM's own
# preprocessor uses ImageNet's, which is ArrCocImageProcessor's default; DeepSeek-OCR2 maps pixels to [-1, 1].
VISION_NORMALIZATION = {"deepseek_ocr2": {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}}


def vision_normalization(vision) -> dict:
    """The image processor's `image_mean` / `image_std` for a vision checkpoint ({}: the processor's defaults)."""
    return dict(VISION_NORMALIZATION.get(AutoConfig.from_pretrained(vision).model_type, {}))


def deepseek_ocr2_sam(path, dtype=None):
    """DeepSeek-OCR2's SAM encoder as a transformers SAM vision tower: (SamVisionConfig, state dict).

    The encoder is SAM ViT-B in SamVisionEncoder's layout (patch embedding, absolute and relative positions,
    windowed / global blocks, the 1x1 + 3x3 conv neck to `output_channels`), so its tensors map one to one under
    the `vision_encoder.` prefix, unchanged. Kept: the neck, whose 256-channel grid (one cell per 16 px) is what
    the allocator scores and selects from. Dropped: `proj` (two stride-2 convolutions, 256 -> 512 -> 896 channels
    on a 4x coarser grid), DeepSeek's fixed 16x compressor for its own encoder; in ArrCoc the allocator's selection
    replaces it. DeepSeek-OCR2's Qwen2 visual encoder and language model are not used.
    """
    encoder = _deepseek_ocr2_sam_encoder(path, dtype)
    # The dtype the weights have, as SamVisionModel.from_pretrained records it (DeepSeek's sub-config has none).
    config = SamVisionConfig(**_sam_fields(encoder.config), dtype=encoder.dtype)
    state = {f"vision_encoder.{key}": value for key, value in encoder.state_dict().items()
             if not key.startswith(DEEPSEEK_OCR2_DROPPED)}
    return config, state


def _deepseek_ocr2_sam_encoder(path, dtype):
    from transformers import DeepseekOcr2Model

    config = AutoConfig.from_pretrained(path)
    # Only the SAM encoder is wanted. Building the language model (a 3B MoE) and the Qwen2 visual encoder with no
    # layers makes from_pretrained skip their layer weights as unexpected keys instead of holding ~7 GiB (bf16).
    config.text_config.num_hidden_layers, config.text_config.mlp_layer_types = 0, []
    encoder_config = config.vision_config.encoder_config
    encoder_config.num_hidden_layers, encoder_config.layer_types = 0, []
    with _quiet_loading():  # the report would list every skipped layer weight; missing SAM keys are checked below
        model, info = DeepseekOcr2Model.from_pretrained(path, config=config, dtype=dtype, output_loading_info=True)
    missing = sorted(key for key in info["missing_keys"] if key.startswith(DEEPSEEK_OCR2_SAM_PREFIX))
    if missing:
        raise ValueError(f"{path} has no weights for DeepSeek-OCR2's SAM encoder: {missing[:5]} ...")
    return model.vision_tower.sam_encoder


def _sam_fields(source_config) -> dict:
    """The SamVisionConfig fields of a SAM-shaped config (DeepSeek-OCR2's subclasses SAM's; `downsample_channels`
    describes the dropped `proj`)."""
    base = {field.name for field in dataclasses.fields(PreTrainedConfig)}
    names = [field.name for field in dataclasses.fields(SamVisionConfig) if field.name not in base]
    return {name: getattr(source_config, name) for name in names if hasattr(source_config, name)}


@contextlib.contextmanager
def _quiet_loading():
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


# --- language side --------------------------------------------------------------------------------------------


def load_text_components(text, dtype=None):
    """(language model body, lm_head, VET weight [visual words, hidden] or None, text config) from a Qwen3, an
    Ovis2 or an Ovis2.5 checkpoint."""
    model_type = AutoConfig.from_pretrained(text).model_type
    if model_type == "ovis2_5":
        return ovis2_5_text(text, dtype=dtype)
    if model_type == "ovis2":
        from transformers import Ovis2ForConditionalGeneration

        ovis = Ovis2ForConditionalGeneration.from_pretrained(text, dtype=dtype)
        vet = ovis.model.visual_embeddings_table.weight
        return ovis.model.language_model, ovis.lm_head, vet, ovis.config.text_config
    causal = AutoModelForCausalLM.from_pretrained(text, dtype=dtype)
    return causal.model, causal.lm_head, None, causal.config


def ovis2_5_text(path, dtype=None):
    """The Qwen3 body, LM head and VET of an Ovis2.5 checkpoint (Transformers' native `ovis2_5` format).

    The table is `Ovis2_5VisualEmbeddingProjection`, a bias-free `nn.Linear(vocab_size, hidden)`: its weight is
    [hidden, vocab_size], one column per visual word, and ArrCoc's VET is an embedding, one row per word, so it is
    taken transposed. (Saved checkpoints keep Ovis' original `vte.weight` as [vocab_size, hidden], which
    Transformers transposes when it loads: ArrCoc's rows are exactly the saved rows.) The last
    `num_visual_indicator_tokens` (4) words are indicators, the embeddings Ovis2.5 puts at its image / video
    start and end tokens; its visual tokenizer gives them probability zero. ArrCoc's prompt has no boundary
    tokens and its visual head's softmax covers every VET row, so they are dropped: `visual_vocab_size` is
    `vocab_size - num_visual_indicator_tokens` (65532 for Ovis2.5-2B), the words Ovis2.5's own head scores.
    The SigLIP2 vision tower and the visual head (fed 4 merged 1152-wide patches, not CLIP tokens) are not used.
    """
    from transformers import Ovis2_5ForConditionalGeneration

    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "llm_config"):
        # The original remote-code format: the native config ignores llm_config and builds a default LLM.
        raise ValueError(f"{path} is in Ovis2.5's remote-code format (llm_config / vit_config); start from its "
                         "Transformers-native conversion, e.g. ovis-community/Ovis2.5-2B.")
    ovis = Ovis2_5ForConditionalGeneration.from_pretrained(path, dtype=dtype)
    vision = ovis.config.vision_config
    table = ovis.model.multi_modal_projector.visual_embeddings_table.weight
    vet = table.T[: vision.vocab_size - vision.num_visual_indicator_tokens]
    return ovis.model.language_model, ovis.lm_head, vet, ovis.config.text_config


# --- assembly -------------------------------------------------------------------------------------------------


def copy_clip(clip_encoder, clip_model: CLIPVisionModel):
    """CLIP's transformer, norms and position table; its patch embedding stays unused (SAM feeds it)."""
    source = clip_model.vision_model if hasattr(clip_model, "vision_model") else clip_model
    clip_encoder.position_embedding.load_state_dict(source.embeddings.position_embedding.state_dict())
    clip_encoder.pre_layrnorm.load_state_dict(source.pre_layrnorm.state_dict())
    clip_encoder.encoder.load_state_dict(source.encoder.state_dict())
    clip_encoder.post_layernorm.load_state_dict(source.post_layernorm.state_dict())


# The names `from_components` and a preset's components.json use for the three sources, and the older names each
# still accepts (`vision=` for the SAM side, `text=` for the language side).
COMPONENT_ALIASES = {"sam": "vision", "clip": None, "llm": "text"}


COMPONENTS_FILE = "components.json"  # a preset of pretrained parts names them here (configs/model/base)


def is_components_preset(preset) -> bool:
    """Whether a preset directory names pretrained components (components.json) rather than being built from its
    config alone; such a preset ships no processor: its tokenizer is the text checkpoint's."""
    return (Path(preset) / COMPONENTS_FILE).exists()


def component_sources(**sources) -> dict:
    """{"sam", "clip", "llm"} from keyword sources, each given once under its name or its older alias."""
    unknown = set(sources) - set(COMPONENT_ALIASES) - {a for a in COMPONENT_ALIASES.values() if a}
    if unknown:
        raise TypeError(f"from_components: unknown source(s) {sorted(unknown)}; the sources are sam=, clip= and llm= "
                        f"(vision= and text= are accepted for sam= and llm=).")
    resolved = {}
    for name, alias in COMPONENT_ALIASES.items():
        given = {key: sources[key] for key in (name, alias) if key and sources.get(key) is not None}
        if len(given) != 1:
            raise TypeError(f"from_components needs the {name} checkpoint exactly once"
                            f"{f' (as {name}= or {alias}=)' if alias else f' (as {name}=)'}; got {sorted(given) or 'none'}.")
        resolved[name] = next(iter(given.values()))
    return resolved


def assemble_from_components(cls, sam, clip, llm, dtype=None, **config_kwargs):
    """`cls.from_components`: the three sources loaded, their weights copied bitwise into a new `cls` model."""
    vision_config, vision_state = load_vision_components(sam, dtype=dtype)
    clip_model = CLIPVisionModel.from_pretrained(clip, dtype=dtype)
    body, lm_head, vet, text_config = load_text_components(llm, dtype=dtype)
    if vet is not None:
        _check_visual_vocab(config_kwargs, vet)
    config = ArrCocConfig(
        vision_config=vision_config.to_dict(), clip_config=clip_model.config.to_dict(),
        text_config=text_config.to_dict(), **config_kwargs,
    )
    model = cls(config)
    model.model.vision_tower.load_state_dict(vision_state)
    copy_clip(model.model.clip_encoder, clip_model)
    model.model.language_model.load_state_dict(body.state_dict())
    _copy_lm_head(model, lm_head)
    if vet is not None:
        with torch.no_grad():
            model.model.quality_adapter.visual_embedding_table.weight.copy_(vet)
    return model.to(dtype) if dtype is not None else model


def _check_visual_vocab(config_kwargs, vet):
    rows = vet.shape[0]
    if config_kwargs.setdefault("visual_vocab_size", rows) != rows:
        raise ValueError(f"visual_vocab_size={config_kwargs['visual_vocab_size']}, but the text checkpoint's visual "
                         f"embedding table has {rows} visual words; leave it unset to take the table's.")


def _copy_lm_head(model, lm_head):
    # A tied head is the input embedding itself: copying a different head would overwrite the embeddings.
    embeddings = model.get_input_embeddings().weight
    if model.lm_head.weight is embeddings and not torch.equal(lm_head.weight, embeddings):
        raise ValueError("tie_word_embeddings=True, but the text checkpoint's LM head differs from its input "
                         "embeddings; pass tie_word_embeddings=False to keep both.")
    model.lm_head.load_state_dict(lm_head.state_dict())


__all__ = [
    "COMPONENTS_FILE",
    "COMPONENT_ALIASES",
    "assemble_from_components",
    "component_sources",
    "copy_clip",
    "deepseek_ocr2_sam",
    "is_components_preset",
    "load_text_components",
    "load_vision_components",
    "ovis2_5_text",
    "vision_normalization",
]
