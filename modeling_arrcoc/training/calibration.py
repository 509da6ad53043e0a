"""Budget calibration targets and the multi-budget tier of a step.

Four targets, `calibration_target` in the arguments:
- "exact": the smallest tier whose greedy answer is exactly right (read off the teacher-forced logits: every answer
  token is the argmax; no tier right -> the smallest, nothing to buy), the evaluation's oracle-minimal tier;
- "loss": the smallest tier whose answer loss is within a tolerance of the sample's best;
- "accuracy": weight 1 on every tier whose greedy answer is exact (none: no weight), so the loss is
  -sum over answering tiers of log p(tier). Over the questions of a kind its minimum is p(tier) proportional to how
  often the tier answers them: the argmax is the tier that answers most, and a token price trades accuracy for
  tokens from there. The two minimal targets put every question some small tier happens to answer on that tier: for
  a reader that is right on 0.23 of counting questions at 4 tokens and 0.35 at 16, the most frequent minimal tier is
  still 4. (Sharing one unit among the answering tiers would learn each tier's share of the credit instead, which
  favours a tier that alone answers a few questions over two that together answer more.)
- "stable": weight 1 on the stable tier, the smallest from which every larger tier answers exactly
  (`statistics.stable_tiers`, the evaluation's need), so a small tier's lucky guess is not a need and a question is
  not sent to a large tier merely because large tiers answer more often; a question the largest tier does not
  answer says nothing (weight 0).
"""

import copy
import random
from contextlib import contextmanager

import torch
from torch.nn import functional as F
from transformers.integrations import is_deepspeed_zero3_enabled

from .. import statistics
from ..losses import answer_window

CALIBRATION_TARGETS = ("exact", "loss", "accuracy", "stable")


def per_sample_answer_loss(model, inputs: dict, plan=None, budget="auto", with_exact=False):
    """Mean answer cross-entropy per sample [B] following `plan` (or at `budget`). Rows without answer tokens
    get 0. With `with_exact`, also [B] whether every answer token is the argmax (the greedy answer is exact)."""
    window = answer_window(inputs["labels"])
    out = model(**inputs, plan=plan, budget=budget, logits_to_keep=window)
    targets = inputs["labels"][:, -window:][:, 1:]
    logits = out.logits[:, :-1]
    token_losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none",
                                   ignore_index=-100).view(targets.shape)
    counts = (targets != -100).sum(-1)
    losses = token_losses.sum(-1) / counts.clamp(min=1)
    if not with_exact:
        return losses
    wrong = (logits.argmax(-1) != targets) & (targets != -100)
    return losses, ~wrong.any(-1) & (counts > 0)


def smallest_exact_tier(exact: torch.Tensor) -> torch.Tensor:
    """[B, T] whether each tier answers exactly -> [B] the smallest such tier; none -> tier 0 (nothing to buy)."""
    return exact.int().argmax(-1)  # argmax returns the first True, and 0 for an all-False row


def answering_tiers(exact: torch.Tensor) -> torch.Tensor:
    """[B, T] whether each tier answers exactly -> [B, T] target weights for `F.cross_entropy`: 1 on each tier that
    answers, so a row's loss is -sum of their log-probabilities (a question no tier answers says nothing about which
    tier to buy: weight 0)."""
    return exact.to(torch.float32)


def stable_tier_weights(exact: torch.Tensor) -> torch.Tensor:
    """[B, T] whether each tier answers exactly -> [B, T] target weights for `F.cross_entropy`: 1 on each row's
    stable tier (`statistics.stable_tiers`), a row of zeros where the largest tier does not answer."""
    weights = torch.zeros(exact.shape, dtype=torch.float32, device=exact.device)
    for row, tier in enumerate(statistics.stable_tiers(exact.T.cpu().numpy())):
        if tier is not None:
            weights[row, tier] = 1.0
    return weights


def smallest_sufficient_tier(losses: torch.Tensor, tolerance: float, max_loss: float | None = None) -> torch.Tensor:
    """[B, T] losses per tier -> [B] index of the smallest tier within `tolerance` of the sample's best; with
    `max_loss`, rows whose best loss exceeds it (no tier answers) get tier 0."""
    best = losses.min(-1, keepdim=True).values
    sufficient = losses <= best + tolerance
    if max_loss is not None:
        sufficient[:, 0] |= best.squeeze(-1) > max_loss
    return sufficient.int().argmax(-1)  # argmax returns the first (smallest) sufficient tier


@torch.no_grad()
def tier_runs(model, inputs: dict) -> tuple:
    """Every tier on `inputs` from one allocation plan (SAM and the allocator once, replanned per tier): (plan,
    losses [B, T] as `per_sample_answer_loss`, exact [B, T] whether each tier's greedy answer is exact)."""
    inputs = dict(inputs)
    pixel_values, patch_features = inputs.pop("pixel_values", None), inputs.pop("patch_features", None)
    with _eval_mode(model):
        plan = model.plan_allocation(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                     labels=inputs["labels"], pixel_values=pixel_values, patch_features=patch_features)
        runs = [per_sample_answer_loss(model, inputs, plan=model.model.replan(plan, value), with_exact=True)
                for value in model.config.budgets]
    return plan, torch.stack([loss for loss, _ in runs], dim=-1), torch.stack([exact for _, exact in runs], dim=-1)


def calibration_targets(model, inputs: dict, tolerance: float, max_loss: float | None = None,
                        target: str = "loss") -> torch.Tensor:
    """Each sample's calibration target from `tier_runs` (`target`, see the module docstring): [B] the oracle-minimal
    tier ("exact", "loss") or [B, T] tier weights ("accuracy", "stable"); `F.cross_entropy` takes either."""
    if target not in CALIBRATION_TARGETS:
        raise ValueError(f"calibration target must be one of {CALIBRATION_TARGETS}, got {target!r}.")
    _, losses, exact = tier_runs(model, inputs)
    return tier_targets(losses, exact, target, tolerance, max_loss)


def tier_targets(losses, exact, target: str, tolerance: float = 0.0, max_loss: float | None = None):
    """`calibration_targets` from per-tier losses and exact flags ([B, T] each): one rule per target name."""
    if target == "exact":
        return smallest_exact_tier(exact)
    if target == "accuracy":
        return answering_tiers(exact)
    if target == "stable":
        return stable_tier_weights(exact)
    return smallest_sufficient_tier(losses, tolerance, max_loss)


# The prices `fit_budget_cost` chooses among (nats per doubling of tokens, on the fitted temperature's scale): dense
# where the demo's curve moves (0 to 0.03), a few below 0 (more tokens than predicted) and up to 1, where every
# question of the demo sits at the smallest tier (ARR-COC and its no-tag ablation, 480 validation questions). The grid
# once stopped at 0.1 and the demo's fit landed on that edge; on 480 validation questions its margin over the envelope
# kept rising to 0.2, and the no-tag ablation's fit then landed on 0.5.
PRICE_GRID = (-0.02, -0.015, -0.01, -0.005, 0.0, 0.002, 0.004, 0.006, 0.008, 0.01, 0.012, 0.014, 0.017, 0.02,
              0.025, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
              0.7, 1.0)


@torch.no_grad()
def budget_head_runs(model, collator, rows: list, batch_size: int = 16, target: str = "exact",
                     tolerance: float = 0.0, max_loss: float | None = None) -> dict:
    """Every tier on `rows` (one question each, `collator` batches them), one SAM pass a batch (`tier_runs`):
    {"summary" [R, 2H] and "profile" [R, T] (or None), what the budget predictor's head read (its `features`), "logits"
    [R, T] what it predicted, "exact" [R, T] whether each tier answers, "targets" each row's `calibration_target`
    ([R] or [R, T], `tier_targets` under `target`)}. The rows the head is refitted on (`fit_budget_head`) and the
    temperature and price are fitted on (`fit_budget_temperature`)."""
    if not rows:
        raise ValueError("budget_head_runs needs at least one row: the split is empty or shorter than asked.")
    predictor = model.model.allocator.budget_predictor
    captured, summaries, profiles, logits, exacts, targets = [], [], [], [], [], []
    hook = predictor.register_forward_hook(
        lambda module, args, kwargs, output: captured.append(module.features(*args, **kwargs)), with_kwargs=True)
    try:
        for start in range(0, len(rows), batch_size):
            batch = collator(rows[start : start + batch_size])
            inputs = {key: batch[key].to(model.device) for key in ("input_ids", "attention_mask", "labels",
                                                                   "pixel_values")}
            captured.clear()
            plan, losses, exact = tier_runs(model, inputs)
            summary, profile = captured[0]  # the plan's pass: the tier runs follow its plan, the allocator ran once
            summaries.append(summary)
            profiles.append(profile)
            logits.append(plan.budget_logits.float())
            exacts.append(exact)
            targets.append(tier_targets(losses, exact, target, tolerance, max_loss))
    finally:
        hook.remove()
    return {"summary": torch.cat(summaries), "profile": None if profiles[0] is None else torch.cat(profiles),
            "logits": torch.cat(logits), "exact": torch.cat(exacts), "targets": torch.cat(targets)}


def fit_budget_head(model, runs: dict, epochs: int, learning_rate: float = 1e-3, batch_size: int = 64,
                    seed: int = 0) -> dict:
    """Refit the budget predictor's head on `runs` (`budget_head_runs`, over training rows): its tier logits against
    each row's calibration target by the trainer's budget loss (`F.cross_entropy`), AdamW for `epochs` passes in a
    seeded order. Training calibrates the head on a few rows every few steps, while its inputs move with the model;
    here it sees every tier's outcome on many rows of the finished model, so it can learn what only many rows show
    (a count of 9 needs more tokens than a count of 3, docs/demo_model.md, "The budget head refitted"). Nothing else
    changes: the head reads detached features, so every forced tier answers as before. The fit trains a float32
    copy and loads its weights back: the live parameters may be frozen, in bf16, or hooked by a distributed
    engine. Returns {"rows", "epochs", "loss_before", "loss_after"} (the mean loss on `runs`)."""
    if is_deepspeed_zero3_enabled():
        raise ValueError("fit_budget_head refits whole weights and ZeRO-3 shards them: refit the saved checkpoint "
                         "afterwards on one process (train.py CONFIG init_from=CHECKPOINT fit_only=true).")
    predictor = model.model.allocator.budget_predictor
    fitted = copy.deepcopy(predictor).float().requires_grad_(True)
    summary, profile, targets = runs["summary"].float(), runs["profile"], runs["targets"]

    def loss_on(index):
        logits = fitted.head(summary[index], None if profile is None else profile[index].float())
        return F.cross_entropy(logits, targets[index])

    everything = torch.arange(len(targets))
    with torch.no_grad():
        before = float(loss_on(everything))
    optimizer = torch.optim.AdamW(fitted.parameters(), lr=learning_rate, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            for index in torch.randperm(len(targets), generator=order).split(batch_size):
                optimizer.zero_grad(set_to_none=True)
                loss_on(index).backward()
                optimizer.step()
    with torch.no_grad():
        after = float(loss_on(everything))
        predictor.load_state_dict(fitted.state_dict())  # cast back to the live head's dtype, in place
    return {"rows": len(targets), "epochs": epochs, "loss_before": before, "loss_after": after}


@torch.no_grad()
def fit_budget_temperature(model, collator, rows: list, batch_size: int = 16, target: str = "exact",
                           fit_price: bool = False, accuracy_floor: float | None = None,
                           min_margin: float | None = None) -> dict:
    """Fit `config.budget_temperature` on held-out `rows` (one question each): the temperature under which the budget
    predictor's tier probabilities best fit each row's calibration target (`target`, as it was trained: "exact" the
    oracle-minimal tier, "accuracy" the answering tiers, "stable" the stable tier; "loss" is fitted to "exact"), by
    `statistics.fit_temperature`. Writes it into `model.config` and returns the fit
    with the number of rows. The predicted tier does not change; a token price then moves questions across tiers
    one by one. With `fit_price`, the same runs then fit the model's own price (`fit_budget_cost`, under
    `accuracy_floor` and `min_margin`)."""
    runs = budget_head_runs(model, collator, rows, batch_size,
                            target=target if target in ("accuracy", "stable") else "exact")
    fit = statistics.fit_temperature(runs["logits"].cpu().numpy(), runs["targets"].cpu().numpy())
    model.config.budget_temperature = fit["temperature"]
    fit = {**fit, "rows": len(rows)}
    if fit_price:
        fit["price"] = fit_budget_cost(model, runs["logits"], runs["exact"], accuracy_floor=accuracy_floor,
                                       min_margin=min_margin)
    else:  # a price is in units of the old temperature's log-probabilities: it does not carry over
        model.config.budget_cost = 0.0
    return fit


def fit_budget_cost(model, budget_logits: torch.Tensor, exact: torch.Tensor, prices=PRICE_GRID,
                    accuracy_floor: float | None = None, min_margin: float | None = None) -> dict:
    """Fit `config.budget_cost`, the model's own price of tokens under "auto", from held-out rows' tier logits and
    whether each tier answers them exactly ([R, T] each; `tier_runs`), at the model's current temperature.

    Each price in `prices` picks every row's tier by the model's own rule (`resolve_budget`); its accuracy minus the
    constant tiers' envelope at its mean tokens (`statistics.frontier_at`: any fixed tier or random mix of two that
    spends no more) is its margin, and the price with the largest margin wins (ties: the fewer tokens). So "auto"
    sits where the predictor beats every constant policy by most on validation, not where training happened to
    leave its argmax. With `accuracy_floor` (a share, e.g. 0.97), only prices whose accuracy keeps that share of the
    best constant tier's compete: the default must not buy its margin by reading much worse than the model can (the
    model's own best tier on validation stands in for #21's full-resolution reference, which phase 3 does not have).
    A price below the envelope never competes under the floor: a constant tier, or a mix of two, reads better at no
    more tokens, so it buys its accuracy worse than a constant policy would (the demo's fit on the candidate base
    once chose such a price, -0.01 at 177 tokens, 1.2 points under the envelope, docs/demo_model.md). If no price on
    or above the envelope reaches the floor, the margin alone decides.

    With `min_margin` (e.g. 0.03, #22's target) the margin is a requirement instead of the objective: among the
    prices at least that far above the envelope (and over the floor), the most accurate wins (ties: the fewer
    tokens). The largest margin sits at the fewest tokens the validation pages can afford, and validation pages wear
    the training looks: on the demo it sent counts of 8 and 9 to 8 tokens, which read them there and not on the
    held-out look (docs/demo_model.md). If no price reaches `min_margin`, the rule above decides.

    Writes the price into `model.config` and returns {"budget_cost", "accuracy", "mean_tokens", "envelope",
    "margin", "rows", "at_edge", "floor", "met_floor", "min_margin", "met_margin", "unconstrained"}; `at_edge` says
    the winner is the grid's first or last price (the best price may lie beyond it), `met_floor` whether a price on
    or above the envelope reached the floor, `met_margin` whether one of those reached `min_margin`,
    `unconstrained` the price the margin alone would choose."""
    _, choice = price_choice(model, budget_logits, exact, prices=prices, accuracy_floor=accuracy_floor,
                             min_margin=min_margin)
    model.config.budget_cost = choice["budget_cost"]
    return choice


def price_choice(model, budget_logits: torch.Tensor, exact: torch.Tensor, prices=PRICE_GRID,
                 accuracy_floor: float | None = None, min_margin: float | None = None) -> tuple:
    """(`price_points` at each price, the point `select_price` chooses among them): the fit's whole decision, the
    floor taken from the best constant tier on these rows. `fit_budget_cost` writes the choice into the config;
    tools/price_sweep.py shows every point and marks it."""
    points = price_points(model, budget_logits, exact, prices)
    choice = select_price(points, best_tier_accuracy=float(exact.float().mean(0).max()),
                          accuracy_floor=accuracy_floor, min_margin=min_margin)
    return points, choice


def select_price(points: list, best_tier_accuracy: float, accuracy_floor: float | None = None,
                 min_margin: float | None = None) -> dict:
    """`fit_budget_cost`'s rule over `price_points`' points: with `min_margin`, the most accurate price at least that
    far above the envelope and over the floor (`accuracy_floor` x `best_tier_accuracy`, prices under the envelope
    excluded); else, or if none reaches it, the largest margin among those over the floor; else the largest margin.
    Returns the chosen point (without its per-row "tiers" and "counts") with the fit's flags."""
    points = [{key: value for key, value in point.items() if key not in ("tiers", "counts")} for point in points]
    prices = [point["budget_cost"] for point in points]
    unconstrained = max(points, key=_margin_first)
    floor = None if accuracy_floor is None else accuracy_floor * best_tier_accuracy
    eligible = points if floor is None else [
        p for p in points if p["accuracy"] >= floor - 1e-9 and p["margin"] >= -1e-9]
    wide = [] if min_margin is None else [p for p in eligible if p["margin"] >= min_margin - 1e-9]
    if wide:
        best = max(wide, key=_accuracy_first)
    else:
        best = max(eligible, key=_margin_first) if eligible else unconstrained
    return {**best, "at_edge": best["budget_cost"] in (min(prices), max(prices)), "floor": floor,
            "met_floor": bool(eligible), "min_margin": min_margin, "met_margin": bool(wide),
            "unconstrained": unconstrained["budget_cost"]}


def price_points(model, budget_logits: torch.Tensor, exact: torch.Tensor, prices) -> list[dict]:
    """What each token price does on held-out rows ([R, T] tier logits and whether each tier answers them exactly;
    `tier_runs`), at the model's current temperature: every row's tier by the model's own rule (`resolve_budget`),
    then {"budget_cost", "accuracy", "mean_tokens", "envelope" (the constant tiers' envelope at those tokens,
    `statistics.frontier_at`: any fixed tier or random mix of two that spends no more), "margin", "rows", "tiers"
    and "counts" ([R] each: every row's tier and tokens)}. The price fit chooses among these points (`select_price`);
    tools/price_sweep.py shows them."""
    exact = exact.float()
    tiers_points = [(float(model.config.tier_tokens(tier)), float(accuracy))
                    for tier, accuracy in enumerate(exact.mean(0).cpu())]
    points = []
    for price in prices:
        counts, tiers = model.model.resolve_budget("auto", budget_logits, model.config.num_patches, float(price))
        tiers = tiers.cpu()
        accuracy = float(exact[torch.arange(len(tiers)), tiers].mean())
        mean_tokens = float(counts.float().mean())
        envelope = statistics.frontier_at(tiers_points, mean_tokens)["value"]
        points.append({"budget_cost": float(price), "accuracy": accuracy, "mean_tokens": mean_tokens,
                       "envelope": envelope, "margin": accuracy - envelope, "rows": len(tiers), "tiers": tiers,
                       "counts": counts.cpu()})
    return points


def _margin_first(point: dict) -> tuple:
    """The price rule's order: the largest margin over the envelope, then the fewer tokens."""
    return round(point["margin"], 9), -point["mean_tokens"]


def _accuracy_first(point: dict) -> tuple:
    """The order under a required margin: the most accurate, then the fewer tokens."""
    return round(point["accuracy"], 9), -point["mean_tokens"]


@contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def predicts_budget(model) -> bool:
    """Whether the model's selection follows its budget predictor (the learned selection): only then is there a
    budget to calibrate, refit or price; a baseline's selection follows no predicted budget."""
    return model.config.selection_method == "learned"


def step_tier(seed: int, step: int, num_tiers: int, weights: list[float] | None = None) -> int:
    """The multi-budget tier of an optimizer step: a pure function of (seed, step), so every process and
    micro-batch of the step agree and a resumed run replays it."""
    draw = random.Random(seed * 1_000_003 + step)
    if weights is None:
        return draw.randrange(num_tiers)
    if len(weights) != num_tiers:
        raise ValueError(f"train_tier_weights has {len(weights)} entries for {num_tiers} tiers.")
    return draw.choices(range(num_tiers), weights=weights)[0]


__all__ = [
    "CALIBRATION_TARGETS",
    "calibration_targets",
    "PRICE_GRID",
    "budget_head_runs",
    "fit_budget_cost",
    "fit_budget_head",
    "fit_budget_temperature",
    "predicts_budget",
    "price_choice",
    "price_points",
    "select_price",
    "smallest_exact_tier",
    "answering_tiers",
    "stable_tier_weights",
    "tier_targets",
    "tier_runs",
    "per_sample_answer_loss",
    "smallest_sufficient_tier",
    "step_tier",
]
