"""The training curriculum as one table: which components each phase trains, and how its forward picks a tier.

`apply_phase(model, phase, **options)` is the only place that sets `requires_grad`: it freezes everything, then
unfreezes what the phase's row names, then applies the phase's optional extras (the last N SAM blocks, the last
N LLM layers, LoRA on the LLM). Frozen parameters get `requires_grad=False`, so the trainer never puts them in an
optimizer group and they get no optimizer state.

Components are module attributes of `ArrCocForConditionalGeneration`, never parameter-name patterns.
"""

from dataclasses import dataclass

from torch import nn

from ..lora import DEFAULT_TARGET_MODULES, inject_lora

COMPONENTS = ("vision_tower", "allocator", "clip_encoder", "quality_adapter", "language_model", "lm_head")
# The components that read the selected tokens: everything downstream of the allocator's choice.
READER = ("clip_encoder", "quality_adapter", "language_model", "lm_head")
BUDGET_MODES = ("auto", "random", "heuristic", "full")


@dataclass(frozen=True)
class PhaseSpec:
    """One row of the curriculum.

    trains: components trained in full; every other component is frozen.
    budget: how the training forward picks each sample's tier: "auto" (the allocator's prediction, which the
        trainer calibrates), "random" (one tier drawn per optimizer step, DeepSeek-style multi-budget training
        of the parts downstream of the allocator), "heuristic" (short question -> smallest tier, else largest).
    options: the extras this phase accepts (see `apply_phase`); any other non-default option is an error.
    """

    trains: tuple[str, ...]
    budget: str
    options: tuple[str, ...] = ()
    description: str = ""


PHASES = {
    "pretrain": PhaseSpec(COMPONENTS, "random", (), "everything from random init; a random tier per step"),
    "phase0": PhaseSpec(("quality_adapter",), "heuristic", (), "adapter only; does variable compression help?"),
    "phase1": PhaseSpec(("allocator", "quality_adapter"), "auto", ("sam_unfreeze_last_n",), "learn to allocate"),
    "phase2": PhaseSpec(
        ("clip_encoder", "quality_adapter"), "random", ("llm_unfreeze_last_n", "lora_rank"),
        "teach CLIP and the adapter every tier",
    ),
    # Every tier, not auto's: trained at its own predicted tiers, phase 3 narrowed the reading to them
    # (docs/demo_model.md, "Phase 3 now trains every tier"); the budget predictor still learns from calibration.
    "phase3": PhaseSpec(COMPONENTS, "random", ("freeze_vision_tower", "freeze_reader"),
                        "everything, per-component learning rates, every tier"),
}


def component_modules(model) -> dict[str, nn.Module]:
    """The six trainable components of an `ArrCocForConditionalGeneration`, by attribute."""
    return {
        "vision_tower": model.model.vision_tower,
        "allocator": model.model.allocator,
        "clip_encoder": model.model.clip_encoder,
        "quality_adapter": model.model.quality_adapter,
        "language_model": model.model.language_model,
        "lm_head": model.lm_head,
    }


def component_parameters(model) -> dict[str, list[nn.Parameter]]:
    """Parameters per component, each parameter once: a weight tied across components (lm_head tied to the
    input embeddings) belongs to the first component that holds it."""
    seen, owned = set(), {}
    for name, module in component_modules(model).items():
        owned[name] = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in owned[name])
    return owned


def trained_components(phase: str, *, freeze_vision_tower: bool = False, freeze_reader: bool = False
                       ) -> tuple[str, ...]:
    """The components `phase` trains in full: its row of the table, less SAM under `freeze_vision_tower` and less
    the reader (`READER`) under `freeze_reader`."""
    frozen = (("vision_tower",) if freeze_vision_tower else ()) + (READER if freeze_reader else ())
    return tuple(name for name in PHASES[phase].trains if name not in frozen)


def apply_phase(model, phase: str, *, sam_unfreeze_last_n: int = 0, llm_unfreeze_last_n: int = 0,
                lora_rank: int = 0, lora_alpha: int = 16, lora_dropout: float = 0.0,
                lora_target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES,
                freeze_vision_tower: bool = False, freeze_reader: bool = False) -> PhaseSpec:
    """Freeze / unfreeze `model` in place for `phase` (a key of `PHASES`) and return its spec.

    sam_unfreeze_last_n (phase1): also train the last N SAM blocks and the SAM neck that follows them.
    llm_unfreeze_last_n (phase2): also train the last N decoder layers and the final norm of the LLM.
    lora_rank (phase2): inject LoRA adapters (PEFT) of this rank into the LLM's `lora_target_modules`; merge
        them with `merge_lora` before saving a plain checkpoint.
    freeze_vision_tower (phase3): leave SAM frozen while everything else trains (the demo's phase 3: trained in
        150 steps beside the sparse tiers, SAM cost ARR-COC its reading at every tier; docs/demo_model.md).
    freeze_reader (phase3): leave the reader (`READER`: CLIP, the adapter, the LLM and lm_head) as phase 2 left it,
        so that phase 3 trains the allocator and its budget only (the demo's phase 3: even at 1e-5 the reader's
        training cost ARR-COC its held-out counting; docs/demo_model.md).
    """
    spec = check_phase(phase, sam_unfreeze_last_n=sam_unfreeze_last_n, llm_unfreeze_last_n=llm_unfreeze_last_n,
                        lora_rank=lora_rank, freeze_vision_tower=freeze_vision_tower, freeze_reader=freeze_reader)
    model.requires_grad_(False)
    modules = component_modules(model)
    for name in trained_components(phase, freeze_vision_tower=freeze_vision_tower, freeze_reader=freeze_reader):
        modules[name].requires_grad_(True)
    if sam_unfreeze_last_n:
        _unfreeze_last(modules["vision_tower"].vision_encoder.layers, sam_unfreeze_last_n, "SAM blocks")
        modules["vision_tower"].vision_encoder.neck.requires_grad_(True)
    if llm_unfreeze_last_n:
        _unfreeze_last(modules["language_model"].layers, llm_unfreeze_last_n, "LLM layers")
        modules["language_model"].norm.requires_grad_(True)
    if lora_rank:
        inject_lora(model, r=lora_rank, alpha=lora_alpha, dropout=lora_dropout, target_modules=lora_target_modules)
    return spec


def check_phase(phase: str, **options) -> PhaseSpec:
    """The spec of `phase`, after checking that each non-zero option is one the phase accepts."""
    if phase not in PHASES:
        raise ValueError(f"Unknown phase {phase!r}; expected one of {sorted(PHASES)}.")
    spec = PHASES[phase]
    for name, value in options.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}.")
        if value and name not in spec.options:
            raise ValueError(f"{name}={value} is not an option of {phase} (its options: {list(spec.options)}).")
    return spec


def _unfreeze_last(layers: nn.ModuleList, count: int, what: str):
    if count > len(layers):
        raise ValueError(f"Cannot unfreeze the last {count} {what}: the model has {len(layers)}.")
    for layer in layers[len(layers) - count:]:
        layer.requires_grad_(True)



def trainable_parameter_counts(model) -> dict[str, tuple[int, int]]:
    """(trainable, total) parameter counts per component."""
    counts = {}
    for name, params in component_parameters(model).items():
        counts[name] = (sum(_numel(p) for p in params if p.requires_grad), sum(_numel(p) for p in params))
    return counts


def _numel(param) -> int:
    # Under DeepSpeed ZeRO-3 a parameter is partitioned (numel 0 here); ds_numel is its full size.
    return param.ds_numel if hasattr(param, "ds_numel") else param.numel()


__all__ = [
    "BUDGET_MODES",
    "COMPONENTS",
    "PHASES",
    "PhaseSpec",
    "READER",
    "apply_phase",
    "trained_components",
    "check_phase",
    "component_modules",
    "component_parameters",
    "trainable_parameter_counts",
]
