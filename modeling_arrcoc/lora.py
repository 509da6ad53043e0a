"""LoRA on the last layers of ArrCoc's language model (phase 2, and users' fine-tuning).

The target is a regex scoped to the language model's own layers. PEFT's `layers_to_transform` alone is not
enough: it matches the layer index in any `layers.<i>` path, so it would also put LoRA on the CLIP encoder's
`q_proj/k_proj/v_proj` of the same index.
"""

import re

from peft import LoraConfig, PeftModel, get_peft_model, inject_adapter_in_model

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
DEFAULT_MODULES_TO_SAVE = ("allocator", "quality_adapter")


def lora_config_for_language_model(
    model,
    last_n_layers: int = 2,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    modules_to_save=DEFAULT_MODULES_TO_SAVE,
    target_modules=DEFAULT_TARGET_MODULES,
    **lora_kwargs,
) -> LoraConfig:
    """A `LoraConfig` putting LoRA on `target_modules` of the last `last_n_layers` decoder layers of the LLM.

    Args:
        model: an `ArrCocForConditionalGeneration` or `ArrCocModel` (the regex follows its module names).
        last_n_layers: how many of the last decoder layers get LoRA; more layers adapt more, at more memory.
        r / alpha / dropout: LoRA rank, scaling numerator (the update is scaled by alpha / r) and dropout.
        modules_to_save: modules trained in full and saved with the adapter (by default the allocator and the
            quality adapter, which phase 2 also adapts); None for a LoRA-only adapter.
        target_modules: projection names inside each targeted layer.
        lora_kwargs: any other `LoraConfig` field (e.g. `task_type`, `use_rslora`).
    """
    num_layers = model.config.text_config.num_hidden_layers
    if not 1 <= last_n_layers <= num_layers:
        raise ValueError(f"last_n_layers must be in 1..{num_layers} (the LLM's layers), got {last_n_layers}.")
    if not target_modules:
        raise ValueError("target_modules must name at least one projection, e.g. ('q_proj', 'v_proj').")
    layers = "|".join(str(i) for i in range(num_layers - last_n_layers, num_layers))
    names = "|".join(re.escape(name) for name in target_modules)
    pattern = rf"{re.escape(_language_model_path(model))}\.layers\.({layers})\.(.*\.)?({names})"
    _check_matches(model, pattern, target_modules)
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern,
        modules_to_save=list(modules_to_save) if modules_to_save else None, **lora_kwargs,
    )


def apply_lora(model, **kwargs) -> PeftModel:
    """Wrap `model` in a `PeftModel` with `lora_config_for_language_model(model, **kwargs)`."""
    return get_peft_model(model, lora_config_for_language_model(model, **kwargs))


def inject_lora(model, last_n_layers: int | None = None, r: int = 8, alpha: int = 16, dropout: float = 0.0,
                target_modules=DEFAULT_TARGET_MODULES) -> LoraConfig:
    """Put LoRA adapters on the LLM's last `last_n_layers` (all by default) in place, without a `PeftModel` wrapper
    (the phase-2 trainer keeps training the model it has). Adapters are trainable; every other parameter keeps
    the `requires_grad` it had (the phase decided it). Returns the config used; `merge_lora` folds them back."""
    last_n_layers = last_n_layers or model.config.text_config.num_hidden_layers
    config = lora_config_for_language_model(model, last_n_layers, r, alpha, dropout, modules_to_save=None,
                                            target_modules=target_modules)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    inject_adapter_in_model(config, model)  # marks only the adapters trainable ...
    for name, param in model.named_parameters():
        if name in trainable:
            param.requires_grad_(True)  # ... so give back what the phase trains
    return config


def merge_lora(model) -> int:
    """Fold LoRA adapters into the LLM's base weights and put the plain layers back, so the checkpoint loads
    with `from_pretrained`. Returns the number of layers merged (0 when no LoRA was injected)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = 0
    language_model = model.language_model
    for name, module in list(language_model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(language_model.get_submodule(parent_name), child, module.get_base_layer())
            merged += 1
    return merged


def _language_model_path(model) -> str:
    """`model.language_model` on the generation head, `language_model` on the bare ArrCocModel."""
    for name, module in model.named_modules():
        if module is model.language_model:
            return name
    raise ValueError("The model has no language_model submodule.")


def _check_matches(model, pattern, target_modules):
    # PEFT's own error for an empty match lists every module; say which projection names were missing.
    if not any(re.fullmatch(pattern, name) for name, _ in model.named_modules()):
        raise ValueError(f"No module of the language model's last layers is named any of {list(target_modules)}.")


__all__ = [
    "DEFAULT_MODULES_TO_SAVE",
    "DEFAULT_TARGET_MODULES",
    "apply_lora",
    "inject_lora",
    "lora_config_for_language_model",
    "merge_lora",
]
