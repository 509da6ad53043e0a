"""Optimizer groups: one learning rate per component, found by module attribute, never by parameter-name pattern.
"""

from collections import Counter

from .phases import component_parameters


def component_param_groups(model, learning_rates: dict, weight_decay: float, decay_names: set) -> list[dict]:
    """Optimizer groups per component (decayed and non-decayed parameters apart), trainable parameters only."""
    names = {id(param): name for name, param in model.named_parameters()}
    groups = []
    for component, params in component_parameters(model).items():
        trainable = [p for p in params if p.requires_grad]
        decay = [p for p in trainable if names[id(p)] in decay_names]
        rest = [p for p in trainable if names[id(p)] not in decay_names]
        lr = learning_rates[component]
        groups.append({"name": component, "params": decay, "lr": lr, "weight_decay": weight_decay})
        groups.append({"name": f"{component}:no_decay", "params": rest, "lr": lr, "weight_decay": 0.0})
    return [group for group in groups if group["params"]]


def check_param_groups(model, groups: list[dict]):
    """Every trainable parameter in exactly one group, and no frozen one in any (frozen = no optimizer state)."""
    counts = Counter(id(p) for group in groups for p in group["params"])
    named = {id(p): (name, p.requires_grad) for name, p in model.named_parameters()}
    missing = [name for key, (name, trains) in named.items() if trains and counts[key] == 0]
    repeated = [named.get(key, ("<not in model>",))[0] for key, count in counts.items() if count > 1]
    frozen = [named.get(key, ("<not in model>",))[0] for key in counts if not named.get(key, ("", False))[1]]
    if missing or repeated or frozen:
        raise AssertionError(
            f"Bad optimizer groups: trainable but in no group {missing[:5]}, in several groups {repeated[:5]}, "
            f"frozen or foreign but grouped {frozen[:5]}."
        )


__all__ = [
    "check_param_groups",
    "component_param_groups",
]
