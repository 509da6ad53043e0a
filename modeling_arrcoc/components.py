"""Assemble ArrCoc from pretrained SAM, CLIP and Qwen3 / Ovis2 checkpoints (Hub names or local directories)."""

import torch
from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionModel, SamVisionModel

from .configuration_arrcoc import ArrCocConfig


def load_text_components(text, dtype=None):
    """(language model body, lm_head, VET weight or None, text config) from a Qwen3 or an Ovis2 checkpoint."""
    if AutoConfig.from_pretrained(text).model_type == "ovis2":
        from transformers import Ovis2ForConditionalGeneration

        ovis = Ovis2ForConditionalGeneration.from_pretrained(text, dtype=dtype)
        vet = ovis.model.visual_embeddings_table.weight
        return ovis.model.language_model, ovis.lm_head, vet, ovis.config.text_config
    causal = AutoModelForCausalLM.from_pretrained(text, dtype=dtype)
    return causal.model, causal.lm_head, None, causal.config


def copy_clip(clip_encoder, clip_model: CLIPVisionModel):
    """CLIP's transformer, norms and position table; its patch embedding stays unused (SAM feeds it)."""
    source = clip_model.vision_model if hasattr(clip_model, "vision_model") else clip_model
    clip_encoder.position_embedding.load_state_dict(source.embeddings.position_embedding.state_dict())
    clip_encoder.pre_layrnorm.load_state_dict(source.pre_layrnorm.state_dict())
    clip_encoder.encoder.load_state_dict(source.encoder.state_dict())
    clip_encoder.post_layernorm.load_state_dict(source.post_layernorm.state_dict())


def assemble_from_components(cls, vision, clip, text, dtype=None, **config_kwargs):
    sam = SamVisionModel.from_pretrained(vision, dtype=dtype)
    clip_model = CLIPVisionModel.from_pretrained(clip, dtype=dtype)
    body, lm_head, vet, text_config = load_text_components(text, dtype)
    if vet is not None:
        config_kwargs.setdefault("visual_vocab_size", vet.shape[0])
    config = ArrCocConfig(
        vision_config=sam.config.to_dict(), clip_config=clip_model.config.to_dict(),
        text_config=text_config.to_dict(), **config_kwargs,
    )
    model = cls(config)
    model.model.vision_tower.load_state_dict(sam.state_dict())
    copy_clip(model.model.clip_encoder, clip_model)
    model.model.language_model.load_state_dict(body.state_dict())
    model.lm_head.load_state_dict(lm_head.state_dict())
    if vet is not None:
        with torch.no_grad():
            model.model.quality_adapter.visual_embedding_table.weight.copy_(vet)
    return model.to(dtype) if dtype is not None else model


__all__ = ["assemble_from_components", "copy_clip", "load_text_components"]
