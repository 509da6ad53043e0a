"""The budget predictor's inputs and targets (#22's levers): the relevance profile it reads, and the calibration
target that is the evaluation's oracle (the smallest tier whose greedy answer is exact). Tiny configs, CPU."""

import numpy as np
import pytest
import torch

from modeling_arrcoc.allocator_arrcoc import relevance_profile
from modeling_arrcoc.training.calibration import (
    answering_tiers,
    calibration_targets,
    per_sample_answer_loss,
    smallest_exact_tier,
    stable_tier_weights,
)


def test_relevance_profile_is_the_mass_each_tier_keeps():
    scores = torch.full((2, 16), -30.0)
    scores[0, 3] = 0.0  # one patch matters
    scores[1, :8] = 0.0  # eight patches matter equally
    profile = relevance_profile(scores, (1, 4, 8, 100))
    torch.testing.assert_close(profile[0], torch.ones(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(profile[1], torch.tensor([1 / 8, 4 / 8, 1.0, 1.0]), atol=1e-6, rtol=0)


def test_profile_layer_starts_at_zero_and_then_moves_the_tiers(tester):
    """A checkpoint saved before the profile layer predicts the same tiers; once trained, the profile moves them."""
    model = tester.get_model()
    inputs = tester.prepare_inputs()
    plan = model.plan_allocation(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                 pixel_values=inputs["pixel_values"])
    predictor = model.model.allocator.budget_predictor
    assert not predictor.profile.weight.any() and not predictor.profile.bias.any()
    with torch.no_grad():
        predictor.profile.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
    moved = model.plan_allocation(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                  pixel_values=inputs["pixel_values"])
    assert (moved.budget_tiers == 2).all() and not torch.equal(moved.budget_logits, plan.budget_logits)
    state = {k: v for k, v in model.state_dict().items() if "budget_predictor.profile" not in k}
    fresh = tester.get_model(seed=1)
    fresh.load_state_dict(state, strict=False)
    fresh._init_weights(fresh.model.allocator.budget_predictor.profile)
    again = fresh.plan_allocation(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                  pixel_values=inputs["pixel_values"])
    torch.testing.assert_close(again.budget_logits, plan.budget_logits)


def test_budget_loss_trains_the_predictor_alone(tester):
    """The budget's losses reach the predictor's own weights and nothing they share with the answer path: SAM, the
    allocator's scoring layers and the question embeddings keep no gradient from the tier logits."""
    model = tester.get_model()
    model.train()
    inputs = tester.prepare_inputs()
    plan = model.plan_allocation(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                 pixel_values=inputs["pixel_values"])
    plan.budget_logits.logsumexp(-1).sum().backward()
    moved = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved and all(".budget_predictor." in name for name in moved), sorted(moved)


def test_smallest_exact_tier():
    exact = torch.tensor([[False, True, True], [True, True, True], [False, False, True], [False, False, False]])
    assert smallest_exact_tier(exact).tolist() == [1, 0, 2, 0]


def test_exact_flag_is_greedy_decoding(tester):
    """The teacher-forced exact flag agrees with generate: labels set to the model's own greedy answer are exact,
    and changing one answer token makes them not."""
    model = tester.get_model()
    inputs = tester.prepare_inputs(answer_length=2)
    prompt = {key: value[:, :-2] for key, value in inputs.items() if key in ("input_ids", "attention_mask")}
    generated = model.generate(**prompt, pixel_values=inputs["pixel_values"], budget=16, max_new_tokens=2,
                               do_sample=False, eos_token_id=None)[:, -2:]
    forced = dict(inputs)
    forced["input_ids"] = torch.cat([prompt["input_ids"], generated], dim=1)
    forced["labels"] = torch.cat([torch.full_like(prompt["input_ids"], -100), generated], dim=1)
    _, exact = per_sample_answer_loss(model, forced, budget=16, with_exact=True)
    assert exact.all()
    wrong = dict(forced)
    wrong["labels"] = forced["labels"].clone()
    wrong["labels"][0, -1] = (wrong["labels"][0, -1] + 1) % tester.vocab_size
    _, exact = per_sample_answer_loss(model, wrong, budget=16, with_exact=True)
    assert exact.tolist() == [False, True, True]


# Which tiers answer exactly, per sample (tiers 4, 16, 100), for the target tests: the first answers at 16 and 100,
# the second nowhere, the third at 4 and 100 but not 16 (a lucky small tier).
TIER_TABLE = {4: [False, False, True], 16: [True, False, False], 100: [True, False, True]}


def targets_from_table(tester, monkeypatch, target, patch_features=False):
    """`calibration_targets` of three tiny-model samples whose per-tier exactness is TIER_TABLE (the forward per tier
    is faked: the targets, not the model, are under test)."""
    model = tester.get_model()
    inputs = tester.prepare_inputs()
    if patch_features:
        inputs.pop("pixel_values")
        inputs["patch_features"] = torch.randn(3, tester.num_patches, 16)

    def fake(model, inputs, plan=None, budget="auto", with_exact=False):
        value = model.config.budgets[int(plan.budget_tiers[0])]
        return torch.zeros(3), torch.tensor(TIER_TABLE[value])

    monkeypatch.setattr("modeling_arrcoc.training.calibration.per_sample_answer_loss", fake)
    return calibration_targets(model, inputs, 0.05, target=target)


def test_exact_calibration_targets_follow_the_oracle(tester, monkeypatch):
    # The third sample answers at 4: smaller is enough even when a larger tier misses.
    assert targets_from_table(tester, monkeypatch, "exact", patch_features=True).tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="calibration target"):
        targets_from_table(tester, monkeypatch, "best")


def test_accuracy_targets_share_the_answering_tiers(tester, monkeypatch):
    """"accuracy": weight 1 on every tier that answers exactly (none when no tier does), so over questions of one kind
    the predictor learns how often each tier answers, not which small tier happened to."""
    exact = torch.tensor([[False, True, True], [False, False, False], [True, False, False]])
    torch.testing.assert_close(answering_tiers(exact), torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0],
                                                                     [1.0, 0.0, 0.0]]))
    targets = targets_from_table(tester, monkeypatch, "accuracy")
    torch.testing.assert_close(targets, torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]))
    # Over many questions of one kind, the tier that answers most carries the most target mass, where the
    # oracle-minimal target puts most on the smallest tier that sometimes answers.
    rng = np.random.default_rng(0)
    answers = torch.from_numpy(rng.random((4000, 3)) < np.array([0.23, 0.28, 0.35]))
    assert answering_tiers(answers).mean(0).argmax() == 2
    assert torch.bincount(smallest_exact_tier(answers), minlength=3).argmax() == 0
    # Not nested: tier 0 alone answers 10 questions, tiers 1 and 2 together answer 12. The loss's minimum over these
    # questions (p proportional to the mean weight) ranks the tiers by how many they answer.
    answers = torch.tensor([[True, False, False]] * 10 + [[False, True, True]] * 12)
    weights = answering_tiers(answers).mean(0)
    assert weights[1] == weights[2] > weights[0]


def test_stable_targets_weigh_the_tier_from_which_every_larger_tier_answers(tester, monkeypatch):
    """"stable": a lucky small tier (right at 4, wrong at 16) is not the need; the tier from which reading holds is;
    a question the largest tier misses says nothing (a zero row)."""
    exact = torch.tensor([[True, False, True], [False, True, True], [True, True, False], [True, True, True]])
    torch.testing.assert_close(stable_tier_weights(exact), torch.tensor(
        [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    targets = targets_from_table(tester, monkeypatch, "stable")
    # Sample 1 answers at 16 and 100 (stable 16); sample 2 nowhere; sample 3 at 4 and 100, not 16 (stable 100).
    torch.testing.assert_close(targets, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    logits = torch.zeros(3, 3, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad[1].abs().sum() == 0, "a zero row adds no gradient"


# --- the token price's temperature ----------------------------------------------------------------------------------


def test_fit_temperature_recovers_the_sampling_temperature():
    from modeling_arrcoc import statistics

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 3.0
    true_temperature = 2.5
    probs = np.exp(logits / true_temperature)
    probs /= probs.sum(-1, keepdims=True)
    targets = np.array([rng.choice(5, p=p) for p in probs])
    fit = statistics.fit_temperature(logits, targets)
    assert abs(np.log(fit["temperature"] / true_temperature)) < 0.15 and fit["nll"] < fit["nll_at_1"]
    with pytest.raises(ValueError, match="one target per row"):
        statistics.fit_temperature(logits, targets[:10])
    with pytest.raises(ValueError, match="integers in"):
        statistics.fit_temperature(logits, targets + 5)
    with pytest.raises(ValueError, match="integers in"):
        statistics.fit_temperature(logits, targets.astype(float))
    # Soft targets (the "accuracy" calibration's): the cross-entropy is lowest at the temperature that made them.
    soft = statistics.fit_temperature(logits, probs)
    assert abs(np.log(soft["temperature"] / true_temperature)) < 0.05 and soft["nll"] < soft["nll_at_1"]


def test_temperature_spreads_a_price_over_questions_but_keeps_the_predicted_tier(tester):
    """At price 0 the predicted tier whatever the temperature; at a price, a flatter (higher-temperature) predictor
    moves more questions off their predicted tier."""
    model = tester.get_model()
    logits = torch.tensor([[4.0, 0.0, -4.0], [0.0, 4.0, 0.0], [-4.0, 0.0, 4.0]])
    resolve = model.model.resolve_budget
    base = resolve("auto", logits, tester.num_patches)[1]
    model.config.budget_temperature = 8.0
    assert torch.equal(resolve("auto", logits, tester.num_patches)[1], base)
    hot = resolve("auto", logits, tester.num_patches, budget_cost=0.3)[1]
    model.config.budget_temperature = 1.0
    cold = resolve("auto", logits, tester.num_patches, budget_cost=0.3)[1]
    assert torch.equal(cold, base) and (hot <= base).all() and (hot < base).any()
    with pytest.raises(ValueError, match="budget_temperature"):
        tester.get_config(budget_temperature=0.0)


def test_fit_budget_temperature_writes_the_config(tiny):
    from modeling_arrcoc.data import render_sample
    from modeling_arrcoc.data.collator import ArrCocCollator
    from modeling_arrcoc.training.calibration import fit_budget_temperature

    model, processor = tiny
    rows = [render_sample("local_color", np.random.default_rng(i), 64, 8) for i in range(6)]
    before = model.config.budget_temperature
    model.config.budget_cost = 0.5  # a price fitted on the old temperature's scale
    try:
        fit = fit_budget_temperature(model, ArrCocCollator(processor, patch_size=8), rows, batch_size=4)
        assert fit["rows"] == 6 and model.config.budget_temperature == fit["temperature"] > 0
        assert fit["nll"] <= fit["nll_at_1"] + 1e-9
        assert model.config.budget_cost == 0.0, "a refitted temperature drops the old price"
    finally:
        model.config.budget_temperature, model.config.budget_cost = before, 0.0


def test_fit_budget_cost_takes_the_price_furthest_above_the_envelope(tester):
    """Easy questions (every tier answers) lean to the largest tier, hard ones (only it answers) insist on it: a
    middle price sends the easy ones to the smallest tier and keeps the hard ones, which no constant policy or mix of
    two matches at those tokens. Equal margins go to the fewer tokens."""
    from modeling_arrcoc.training.calibration import fit_budget_cost, price_choice, price_points, select_price

    model = tester.get_model()
    easy, hard = torch.tensor([0.0, 0.0, 2.0]), torch.tensor([-10.0, -10.0, 10.0])
    logits = torch.stack([easy] * 4 + [hard] * 4)
    exact = torch.tensor([[True, True, True]] * 4 + [[False, False, True]] * 4)
    try:
        fit = fit_budget_cost(model, logits, exact, prices=(0.0, 1.0, 20.0))
        # Tokens 4 / 16 / 64 (100 clamped to the 64 patches): price 1 answers all 8 at (4 * 4 + 4 * 64) / 8 = 34
        # tokens, where the tiers' envelope (4, 0.5) to (64, 1.0) reads 0.75.
        assert (fit["budget_cost"], fit["accuracy"], fit["mean_tokens"], fit["at_edge"]) == (1.0, 1.0, 34.0, False)
        assert fit["envelope"] == pytest.approx(0.75) and fit["margin"] == pytest.approx(0.25)
        assert model.config.budget_cost == 1.0
        assert (model.model.resolve_budget("auto", logits, tester.num_patches)[1] == torch.tensor([0] * 4 + [2] * 4)).all()
        assert not {"tiers", "counts"} & set(fit), "the fit reports the chosen price, not every row"
        points = price_points(model, logits, exact, prices=(0.0, 1.0, 20.0))
        assert points[1]["tiers"].tolist() == [0] * 4 + [2] * 4 and points[1]["counts"].tolist() == [4] * 4 + [64] * 4
        assert select_price(points, best_tier_accuracy=1.0)["budget_cost"] == 1.0, "the fit's own rule"
        assert price_choice(model, logits, exact, prices=(0.0, 1.0, 20.0))[1] == fit, "what the fit chose and wrote"
        tie = fit_budget_cost(model, logits, exact, prices=(0.0, 20.0))
        assert tie["budget_cost"] == 20.0 and tie["margin"] == pytest.approx(0.0), "a tie goes to the fewer tokens"
        assert tie["at_edge"], "the grid's last price won: the best price may lie beyond it"
    finally:
        model.config.budget_cost = 0.0


def test_fit_budget_cost_accuracy_floor_keeps_the_default_near_the_best_tier(tester):
    """A price that sends easy and borderline questions to the smallest tier together can gain margin over the
    envelope while losing a question: with an accuracy floor it may not win; with a lower floor it may; when no
    price on or above the envelope reaches the floor, the margin alone decides (a price under the envelope is
    beaten by a constant policy, however accurate)."""
    from modeling_arrcoc.training.calibration import fit_budget_cost

    model = tester.get_model()
    lean_large, insist = torch.tensor([0.0, 0.0, 2.0]), torch.tensor([-10.0, -10.0, 10.0])
    logits = torch.stack([lean_large] * 5 + [insist] * 3)
    # 4 easy rows every tier answers, 1 borderline row only the largest tier answers (same logits as the easy
    # ones), 3 hard rows only the largest tier answers. Tiers read 0.5 / 0.5 / 1.0.
    exact = torch.tensor([[True, True, True]] * 4 + [[False, False, True]] * 4)
    try:
        # Price 1: 7 of 8 at 26.5 tokens, envelope 0.6875, margin 0.1875; price 0: all 8 at 64 tokens, margin 0.
        free = fit_budget_cost(model, logits, exact, prices=(0.0, 1.0))
        assert (free["budget_cost"], free["accuracy"], free["floor"], free["unconstrained"]) == (1.0, 0.875, None, 1.0)
        assert free["margin"] == pytest.approx(0.1875)
        kept = fit_budget_cost(model, logits, exact, prices=(0.0, 1.0), accuracy_floor=0.97)
        assert (kept["budget_cost"], kept["accuracy"], kept["unconstrained"]) == (0.0, 1.0, 1.0)
        assert kept["floor"] == pytest.approx(0.97) and model.config.budget_cost == 0.0
        low = fit_budget_cost(model, logits, exact, prices=(0.0, 1.0), accuracy_floor=0.85)
        assert low["budget_cost"] == 1.0
        assert kept["met_floor"] and low["met_floor"]
        # An odd row the predictor sends to the middle tier, which misses it: price 0 reads 7 of 8 at 58 tokens
        # (margin -0.075, below the envelope), price 1 reads 6 of 8 at 20.5 tokens (margin +0.1125).
        odd_logits = torch.cat([logits, torch.tensor([[0.0, 5.0, 0.0]])])[[0, 1, 2, 3, 4, 5, 6, 8]]
        # At a floor of 0.85 price 0 reaches it but lies under the envelope: a mix of tiers 16 and 64 reads more at
        # its 58 tokens. It does not win; nothing else reaches the floor, so the margin decides.
        under = fit_budget_cost(model, odd_logits, exact, prices=(0.0, 1.0), accuracy_floor=0.85)
        assert (under["budget_cost"], under["accuracy"], under["met_floor"]) == (1.0, 0.75, False)
        assert under["margin"] == pytest.approx(0.1125) and model.config.budget_cost == 1.0
        none = fit_budget_cost(model, odd_logits, exact, prices=(0.0, 1.0), accuracy_floor=0.97)
        assert (none["budget_cost"], none["met_floor"], none["unconstrained"]) == (1.0, False, 1.0)
        from modeling_arrcoc.training.recipe import _price_notes

        notes = " ".join(_price_notes({**none, "at_edge": False}))
        assert "reached by no price on or above the envelope" in notes and "choose 1" in notes
        below = _price_notes({**none, "margin": -0.075, "at_edge": False})
        assert "below the envelope" in " ".join(below)
        assert _price_notes({**free, "at_edge": False}) == []
    finally:
        model.config.budget_cost = 0.0


def test_fit_budget_temperature_fits_the_price_on_the_same_runs(tiny):
    from modeling_arrcoc.data import render_sample
    from modeling_arrcoc.data.collator import ArrCocCollator
    from modeling_arrcoc.training.arguments import ArrCocTrainingArguments
    from modeling_arrcoc.training.calibration import PRICE_GRID, fit_budget_temperature

    model, processor = tiny
    rows = [render_sample("local_color", np.random.default_rng(i), 64, 8) for i in range(6)]
    before = model.config.budget_temperature, model.config.budget_cost
    try:
        fit = fit_budget_temperature(model, ArrCocCollator(processor, patch_size=8), rows, batch_size=4, fit_price=True)
        assert fit["price"]["rows"] == 6 and fit["price"]["budget_cost"] in PRICE_GRID
        assert model.config.budget_cost == fit["price"]["budget_cost"]
    finally:
        model.config.budget_temperature, model.config.budget_cost = before
    with pytest.raises(ValueError, match="fit_budget_cost fits the price on the rows of fit_budget_temperature"):
        ArrCocTrainingArguments(output_dir="unused", fit_budget_cost=True, fit_budget_temperature=0)
    with pytest.raises(ValueError, match="fit_budget_accuracy_floor is a share"):
        ArrCocTrainingArguments(output_dir="unused", fit_budget_accuracy_floor=0.97)  # without fit_budget_cost
    with pytest.raises(ValueError, match="fit_budget_accuracy_floor is a share"):
        ArrCocTrainingArguments(output_dir="unused", fit_budget_cost=True, fit_budget_temperature=8,
                                fit_budget_accuracy_floor=1.5)


def test_fit_budget_cost_min_margin_takes_the_most_accurate_price_above_it(tester):
    """With a required margin, the most accurate price at least that far above the envelope wins, where the margin
    rule takes the fewer tokens and reads less; when no price reaches it, the margin rule decides."""
    from modeling_arrcoc.training.calibration import fit_budget_cost
    from modeling_arrcoc.training.recipe import _price_notes

    model = tester.get_model()
    lean, insist = torch.tensor([0.0, 1.5, 2.0]), torch.tensor([-10.0, -10.0, 10.0])
    logits = torch.stack([lean] * 10 + [insist] * 6)
    # 8 easy rows every tier answers, 1 the middle tier reads, 7 only the largest (1 of them leaning with the easy).
    # Tier tokens 4 / 16 / 64 read 0.5 / 0.5625 / 1.0. Price 0: all at tier 2, 16 of 16 at 64 tokens (margin 0);
    # 0.5: the 10 leaning rows at tier 1, 15 of 16 at 34 tokens (envelope 0.75); 1: them at tier 0, 14 of 16 at
    # 26.5 tokens (envelope 0.6875). Both margins are 0.1875.
    exact = torch.tensor([[True, True, True]] * 8 + [[False, True, True]] + [[False, False, True]] * 7)
    prices = (0.0, 0.5, 1.0)
    try:
        largest = fit_budget_cost(model, logits, exact, prices=prices)
        assert (largest["budget_cost"], largest["accuracy"], largest["met_margin"]) == (1.0, 0.875, False)
        required = fit_budget_cost(model, logits, exact, prices=prices, min_margin=0.03)
        assert (required["budget_cost"], required["accuracy"], required["mean_tokens"]) == (0.5, 0.9375, 34.0)
        assert required["margin"] == pytest.approx(0.1875) and required["met_margin"]
        assert model.config.budget_cost == 0.5 and required["unconstrained"] == 1.0
        assert "the most accurate price at least 3 points" in " ".join(_price_notes(required))
        unreachable = fit_budget_cost(model, logits, exact, prices=prices, min_margin=0.5)
        assert (unreachable["budget_cost"], unreachable["met_margin"]) == (1.0, False)
        assert "the largest margin wins" in " ".join(_price_notes(unreachable))
    finally:
        model.config.budget_cost = 0.0


def test_budget_predictor_head_reads_its_features(tester):
    """The predictor is its head over its features: refitting the head on kept features is refitting the predictor."""
    model = tester.get_model()
    inputs = tester.prepare_inputs()
    predictor = model.model.allocator.budget_predictor
    with torch.no_grad():
        predictor.profile.weight.normal_()  # a profile layer that has trained
    seen = {}
    hook = predictor.register_forward_hook(
        lambda module, args, kwargs, output: seen.update(args=args, kwargs=kwargs, output=output), with_kwargs=True)
    try:
        model.plan_allocation(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                              pixel_values=inputs["pixel_values"])
    finally:
        hook.remove()
    summary, profile = predictor.features(*seen["args"], **seen["kwargs"])
    assert summary.shape == (inputs["input_ids"].shape[0], 2 * model.config.allocator_hidden_size)
    assert profile is not None and not summary.requires_grad
    torch.testing.assert_close(predictor.head(summary, profile), seen["output"], rtol=0, atol=0)
    # and the predictor computes what it did before it had a head: pooled page and question, plus the profile layer
    contextual, question, mask = seen["args"]
    weights = mask.to(question.dtype).unsqueeze(-1)
    pooled = torch.cat([contextual.mean(1), (question * weights).sum(1) / weights.sum(1).clamp(min=1.0)], dim=-1)
    written_out = predictor.mlp(pooled) + predictor.profile(relevance_profile(seen["kwargs"]["patch_scores"],
                                                                              predictor.budgets))
    torch.testing.assert_close(seen["output"], written_out, rtol=0, atol=0)


def test_fit_budget_head_learns_from_many_rows_and_moves_nothing_else(tiny):
    """`budget_head_runs` keeps what the head read and every tier's outcome per row; `fit_budget_head` then fits
    the head alone to those rows' targets: its loss falls, every other weight stays bit for bit, and the head's
    frozen flags come back as they were."""
    from modeling_arrcoc.data import render_sample
    from modeling_arrcoc.data.collator import ArrCocCollator
    from modeling_arrcoc.training.calibration import budget_head_runs, fit_budget_head

    model, processor = tiny
    rows = [render_sample(family, np.random.default_rng(i), 64, 8)
            for i, family in enumerate(["local_color", "global_count"] * 3)]
    tiers = len(model.config.budgets)
    runs = budget_head_runs(model, ArrCocCollator(processor, patch_size=8), rows, batch_size=4, target="exact")
    assert runs["summary"].shape == (6, 2 * model.config.allocator_hidden_size)
    assert runs["profile"].shape == runs["logits"].shape == runs["exact"].shape == (6, tiers)
    assert runs["targets"].shape == (6,)
    head = model.model.allocator.budget_predictor
    torch.testing.assert_close(head.head(runs["summary"], runs["profile"]).float(), runs["logits"])  # what it read
    # Targets no random head predicts: half the rows one tier, half another, told apart by their features.
    runs["targets"] = torch.tensor([0, tiers - 1] * 3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for parameter in head.parameters():
        parameter.requires_grad_(False)  # a phase that froze it
    try:
        fit = fit_budget_head(model, runs, epochs=200, learning_rate=1e-2, batch_size=4)
        assert fit["rows"] == 6 and fit["loss_after"] < 0.5 * fit["loss_before"]
        refit = head.head(runs["summary"], runs["profile"]).argmax(-1)
        assert refit.tolist() == runs["targets"].tolist()
        assert not any(parameter.requires_grad for parameter in head.parameters())
        for name, parameter in model.named_parameters():
            if ".budget_predictor." not in name:
                assert torch.equal(parameter, before[name]), name
        assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if ".budget_predictor." in n)
    finally:
        model.load_state_dict(before, strict=False)
        for parameter in head.parameters():
            parameter.requires_grad_(True)


def test_budget_head_arguments():
    from modeling_arrcoc.training.arguments import ArrCocTrainingArguments

    with pytest.raises(ValueError, match="fit_budget_min_margin is a share"):
        ArrCocTrainingArguments(output_dir="unused", fit_budget_min_margin=0.03)  # without fit_budget_cost
    with pytest.raises(ValueError, match="fit_budget_head"):
        ArrCocTrainingArguments(output_dir="unused", fit_budget_head=-1)
    with pytest.raises(ValueError, match="fit_budget_head_epochs"):
        ArrCocTrainingArguments(output_dir="unused", fit_budget_head=10, fit_budget_head_epochs=0,
                                fit_budget_temperature=8)
    with pytest.raises(ValueError, match="fit_budget_head needs fit_budget_temperature"):
        ArrCocTrainingArguments(output_dir="unused", fit_budget_head=10)
    with pytest.raises(ValueError, match="needs at least one row"):
        from modeling_arrcoc.training.calibration import budget_head_runs

        budget_head_runs(None, None, [])
