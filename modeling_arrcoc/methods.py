"""The method vocabulary shared by evaluation and the learning curves: `auto`, `tier_<K>`, `full` and
`<baseline>@<K>` (uniform_pool, saliency_topk, random, query_sim), each a budget and a patch selection, all run
through one checkpoint; and `trained_<name>[@<K>]`, the methods of another trained checkpoint (a baseline trained
with its own selection), named by `trained_methods`.

Only names and rules live here (no model code), so the library, the training curves and the evaluation all read
the same vocabulary.
"""

import math
import re
from dataclasses import dataclass

from .configuration_arrcoc import tier_index
# The baselines and their selections are derived from the selection table (selection.py), never listed here.
from .selection import BASELINE_SELECTIONS, BASELINES, QUERY_SIM, SELECTION_BASELINES, SELECTIONS_TABLE

SYNTHETIC = "synthetic"
SYNTHETIC_METRIC = "exact_match"
TRAINED_PREFIX = "trained_"
CORRECT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Method:
    """One way of answering: a budget ("auto", "full" or a tier value) and a patch selection."""

    name: str
    budget: object
    selection: str
    kind: str  # "auto", "tier", "full" or a baseline name: the series it belongs to on the Pareto plot
    # The price of tokens under "auto" (the model's resolve_budget): auto's own curve. None: the model's own price
    # (config.budget_cost, fitted on validation); the evaluation records the value it ran at.
    budget_cost: float | None = None


AUTO_COST = "auto_cost"  # the kind of auto at a user-chosen token price, `auto(cost=C)`


def auto_cost_name(cost: float) -> str:
    """The method name of auto at token price `cost`: `auto(cost=0.5)`."""
    return f"auto(cost={float(cost):g})"


def tier_value(budget, budgets) -> int:
    """The tier value an integer budget (value or index, the config's rule) names."""
    return budgets[tier_index(int(budget), budgets)]


def method_names(budgets, budget="all", baselines=BASELINES, budget_costs=()) -> list:
    """Method names for a CLI budget choice: "all" (auto, every tier, full), "auto", "full" or one tier.

    Baselines run at every tier for "all" and "auto" (so that auto has a baseline at each budget around it), at
    the chosen tier otherwise, and not at all for "full". `budget_costs` add auto at each token price (with "all"
    and "auto"): auto's own accuracy-vs-tokens curve ("auto" itself is at the model's own price, 0 is the predicted
    tier).
    """
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"Unknown baselines {sorted(unknown)}; expected some of {BASELINES}.")
    if budget in ("all", "auto"):
        tiers = list(budgets)
        names = ["auto"] + list(dict.fromkeys(auto_cost_name(c) for c in budget_costs))
        names += [f"tier_{k}" for k in tiers] + ["full"] if budget == "all" else []
    elif budget == "full":
        return ["full"]
    else:
        tiers = [tier_value(budget, budgets)]
        names = [f"tier_{tiers[0]}"]
    return names + [f"{baseline}@{k}" for baseline in baselines for k in tiers]


def parse_method(name: str, budgets) -> Method:
    if name in ("auto", "full"):
        return Method(name, name, "learned", name)
    priced = re.fullmatch(r"auto\(cost=([^)]*)\)", name)
    if priced:
        return Method(name, "auto", "learned", AUTO_COST, parse_cost(priced.group(1), f"Method {name!r}"))
    if name.startswith("tier_"):
        return Method(name, _known_tier(name[len("tier_"):], name, budgets), "learned", "tier")
    baseline, _, value = name.partition("@")
    if baseline in BASELINE_SELECTIONS and value:
        return Method(name, _known_tier(value, name, budgets), BASELINE_SELECTIONS[baseline], baseline)
    raise ValueError(
        f"Unknown method {name!r}: expected 'auto', 'auto(cost=C)', 'full', 'tier_<K>' or '<baseline>@<K>' with a "
        "baseline in "
        f"{BASELINES} and K in {list(budgets)}."
    )


def parse_cost(text: str, where: str = "budget_cost") -> float:
    """A token price written as text (a method name's, a CLI list's): a finite number, else a ValueError."""
    try:
        cost = float(text)
    except ValueError:
        cost = math.nan
    if not math.isfinite(cost):
        raise ValueError(f"{where}: the token price {text!r} is not a finite number.")
    return cost


def _known_tier(text: str, name: str, budgets) -> int:
    if not text.isdigit() or int(text) not in budgets:
        raise ValueError(f"Method {name!r}: {text!r} is not a tier value in {list(budgets)}.")
    return int(text)


FULL_TOKENS = Method("full", "full", "full", "full")  # every patch, no ranking (a "full" model's own)


def learning_curve_methods(budgets, include_full=True, selection="learned") -> list:
    """The methods of a learning-curve point: ARR-COC at auto and at each forced tier (and full tokens). A model
    trained with another `selection` (a baseline) is scored with its own: that selection at each tier (and full
    tokens), or full tokens alone for a "full" model. Uniform pooling through ARR-COC's own reader is a diagnostic
    (make baselines), not a curve of make demo's: the trained uniform-pooling baseline has its own."""
    if selection == "full":
        return [FULL_TOKENS]
    if selection != "learned":
        own = [parse_method(f"{SELECTION_BASELINES[selection]}@{k}", budgets) for k in budgets]
        return own + ([FULL_TOKENS] if include_full else [])
    names = ["auto"] + [f"tier_{k}" for k in budgets]
    return [parse_method(name, budgets) for name in names + (["full"] if include_full else [])]


def trained_methods(name: str, selection: str, budgets, budget="all", query_sim=False, own_budget="auto") -> list:
    """The methods of a trained checkpoint called `name` whose own selection is `selection`, for a CLI budget
    choice (as `method_names`): a "full" model once (`trained_<name>`); a fixed-compression baseline at each tier
    (`trained_<name>@<K>`); a learned (ARR-COC-like, e.g. an ablation) model at auto (`trained_<name>`) and each
    tier. With budget "full", everything runs at full tokens. With `query_sim`, a "full" model is also run with
    the training-free query-similarity selection at each tier (`trained_<name>+query_sim@<K>`): SparseVLM-style
    pruning applied, as it is meant to be, to a model trained at full resolution. `own_budget`: where a learned
    model's own run (`trained_<name>`) runs: "auto", or the tier it was trained and validated at (the constant-tier
    ablation, whose budget predictor never trains)."""
    kind = f"{TRAINED_PREFIX}{name}"
    if budget in ("all", "auto"):
        tiers = list(budgets)
    elif budget == "full":
        tiers = []
    else:
        tiers = [tier_value(budget, budgets)]
    if selection == "full":
        extra = [Method(f"{kind}+{QUERY_SIM}@{k}", k, QUERY_SIM, f"{kind}+{QUERY_SIM}") for k in tiers]
        return [Method(kind, "full", "full", kind)] + (extra if query_sim else [])
    if budget == "full":
        return [Method(f"{kind}@full", "full", selection, kind)]
    head = [Method(kind, own_budget, selection, kind)] if selection == "learned" and budget in ("all", "auto") else []
    own = {own_budget} if head else set()  # its own run already covers that tier: not evaluated twice
    return head + [Method(f"{kind}@{k}", k, selection, kind) for k in tiers if k not in own]


def trained_own_budget(training: dict | None, budgets):
    """Where a learned checkpoint's own run goes (`trained_methods`' `own_budget`), from its resolved training YAML:
    the tier it was trained and validated at when its training fixed one (`train_budget` and `eval_budget` the same
    tier value: the constant-tier ablation), else auto."""
    training = training or {}
    tier = training.get("eval_budget")
    return tier if isinstance(tier, int) and tier in budgets and training.get("train_budget") == tier else "auto"


def unsupported_reason(method: Method, config):
    """Why `method` cannot run on this checkpoint, or None. Only pooling has a shape constraint, and the learned
    compressor runs only through a checkpoint trained with it."""
    selection = SELECTIONS_TABLE[method.selection]
    if not selection.pools:
        return None
    if selection.learned_pooling and not SELECTIONS_TABLE[config.selection_method].learned_pooling:
        return (f"{method.name} needs a checkpoint trained with selection_method {method.selection} (its learned "
                f"compressor); this one's is {config.selection_method}.")
    try:
        config.pool_shape(config.num_patches if method.budget == "full" else min(method.budget, config.num_patches))
    except ValueError as error:
        return str(error)
    return None


__all__ = [
    "AUTO_COST",
    "BASELINES",
    "BASELINE_SELECTIONS",
    "CORRECT_THRESHOLD",
    "FULL_TOKENS",
    "Method",
    "auto_cost_name",
    "parse_cost",
    "QUERY_SIM",
    "SELECTION_BASELINES",
    "SYNTHETIC",
    "SYNTHETIC_METRIC",
    "TRAINED_PREFIX",
    "learning_curve_methods",
    "method_names",
    "parse_method",
    "tier_value",
    "trained_methods",
    "trained_own_budget",
    "unsupported_reason",
]
