"""ArrCoc model configuration."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


@strict
class ArrCocConfig(PreTrainedConfig):
    r"""
    Configuration of [`ArrCocForConditionalGeneration`]: SAM vision tower -> allocator -> CLIP encoder ->
    quality adapter -> Qwen3/Ovis language model. Training settings (loss weights, phases, learning rates)
    live in the training arguments, never here.

    Args:
        vision_config (`dict` or `SamVisionConfig`): the SAM ViT that sees the whole page. Its neck output
            (`output_channels` x grid) is the patch grid the allocator chooses from.
        clip_config (`dict` or `CLIPVisionConfig`): the CLIP transformer fed the selected SAM features
            (its patch embedding is unused; its position table is resampled to the SAM grid).
        text_config (`dict` or `Qwen3Config`): the language model.
        budgets (`tuple[int]`): the visual-token tiers, ascending. An integer budget passed to `forward` is a
            tier value when it is in this list, otherwise a tier index.
        image_token_id (`int`): id of the single `<image>` placeholder token per image.
        allocator_hidden_size (`int`): width of the allocator's scorer; its cost grows with it.
        allocator_num_heads (`int`): heads of the question-to-patch cross-attention.
        fold_dropped (`bool`): whether the compression heads fold dropped patches into their most similar kept
            patch (dropped content is summarized) or discard them.
        adapter_num_layers (`int`): prototype cross-attention layers in the quality adapter.
        adapter_num_heads (`int`): heads of those layers.
        num_vet_prototypes (`int`): learnable prototypes the visual tokens attend to.
        visual_vocab_size (`int`): size of the visual vocabulary; rows of the visual embedding table (VET).
        tie_word_embeddings (`bool`): tie `lm_head` to the language model's input embeddings.
        initializer_range (`float`): std of the normal init of ArrCoc's own layers (allocator, adapter, heads).
    """

    model_type = "arrcoc"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="sam_vision_model"),
        "clip_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    clip_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    budgets: list[int] | tuple[int, ...] = (64, 100, 160, 256, 400)
    image_token_id: int = 151665
    allocator_hidden_size: int = 256
    allocator_num_heads: int = 4
    fold_dropped: bool = True
    adapter_num_layers: int = 2
    adapter_num_heads: int = 4
    num_vet_prototypes: int = 64
    visual_vocab_size: int = 16384
    visual_tokenize_function: Literal["softmax"] = "softmax"
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.budgets = [int(b) for b in self.budgets]
        if not self.budgets or any(b <= 0 for b in self.budgets) or self.budgets != sorted(set(self.budgets)):
            raise ValueError(f"budgets must be positive, unique and ascending, got {self.budgets}")
        for name in ("allocator_hidden_size", "adapter_num_layers", "num_vet_prototypes", "visual_vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """(rows, cols) of the SAM patch grid the allocator selects from."""
        size, patch = self.vision_config.image_size, self.vision_config.patch_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        return size[0] // patch[0], size[1] // patch[1]

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid_size
        return rows * cols


__all__ = ["ArrCocConfig"]
