"""generate: tier grouping (same tokens as one padded batch, less padding), bf16 end to end, flash attention."""

import pytest
import torch
from torch.nn import functional as F
from transformers.utils import is_flash_attn_2_available

from conftest import ArrCocModelTester
from modeling_arrcoc import ArrCocForConditionalGeneration

PROMPTS = (3, 5, 4, 6, 2)
TIERS = [4, 16, 4, 100, 16]


@pytest.fixture
def batch():
    tester = ArrCocModelTester(batch_size=len(PROMPTS))
    inputs = tester.prepare_inputs(prompt_lengths=PROMPTS)
    inputs.pop("labels")
    return tester, tester.get_model(), inputs


def generate(model, inputs, **kwargs):
    return model.generate(**inputs, **{"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, **kwargs})


def prefill_shapes(model, run):
    """(batch, length) of each LLM call that sees more than one position: the prefills."""
    shapes = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True
    )
    try:
        run()
    finally:
        hook.remove()
    return [shape for shape in shapes if shape[1] > 1]


def test_group_by_tier_gives_the_padded_batch_tokens(batch):
    tester, model, inputs = batch
    grouped = generate(model, inputs, budget=TIERS)
    padded = generate(model, inputs, budget=TIERS, group_by_tier=False)
    assert torch.equal(grouped, padded)
    assert torch.equal(grouped[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_group_by_tier_runs_one_prefill_per_tier_without_padding_to_the_largest(batch):
    tester, model, inputs = batch
    grouped = prefill_shapes(model, lambda: generate(model, inputs, budget=TIERS))
    padded = prefill_shapes(model, lambda: generate(model, inputs, budget=TIERS, group_by_tier=False))
    assert [b for b, _ in padded] == [5]
    assert sorted(b for b, _ in grouped) == [1, 2, 2], "tiers 4, 16 (two samples each) and 100"
    text = [p + 1 + 2 - 1 for p in PROMPTS]  # prompt tokens + answer tokens, minus the <image> placeholder
    counts = [min(t, tester.num_patches) for t in TIERS]
    assert padded[0][1] == max(t + c for t, c in zip(text, counts))
    assert sum(b * length for b, length in grouped) < sum(b * length for b, length in padded)


def early_stop(new_tokens, candidates):
    """(sample, step, token): a token that ends sample's generation at `step` and appears in no other row."""
    for b in candidates:
        for step in (1, 2, 3):
            token = int(new_tokens[b, step])
            others = torch.cat([new_tokens[:b], new_tokens[b + 1:]])
            if token not in new_tokens[b, :step] and not (others == token).any():
                return b, step, token
    raise AssertionError("no token stops one sample alone; change the seed")


def test_group_by_tier_pads_groups_that_stop_early(batch, monkeypatch):
    import modeling_arrcoc.generation_arrcoc as generation

    tester, model, inputs = batch
    tiers = [4, 16, 4, 100, 4]  # samples 1 and 3 are alone in their tier groups
    start = inputs["input_ids"].shape[1]
    reference = generate(model, inputs, budget=tiers, group_by_tier=False)
    # Make one lone sample's token its end of sequence: its group stops early, the others go on.
    sample, step, eos = early_stop(reference[:, start:], candidates=(1, 3))
    lengths = []
    reassemble = generation.reassemble
    monkeypatch.setattr(generation, "reassemble",
                        lambda pieces, *args: lengths.extend(t.shape[1] for _, t in pieces) or reassemble(pieces, *args))
    grouped = generate(model, inputs, budget=tiers, eos_token_id=eos)
    padded = generate(model, inputs, budget=tiers, eos_token_id=eos, group_by_tier=False)
    assert sorted(lengths) == [step + 1, 6, 6]
    assert torch.equal(grouped, padded)
    assert (grouped[sample, start + step + 1:] == 0).all() and grouped.shape[1] == start + 6


def spread_tiers(model, n_tiers):
    """Hook the budget predictor so "auto" sends samples to different tiers by question length: a per-sample
    (batch-independent) decision that differs across samples, as a trained allocator's does."""
    def by_question_length(module, args, output):
        return output + 100.0 * F.one_hot(args[2].sum(-1) % n_tiers, n_tiers)

    return model.model.allocator.budget_predictor.register_forward_hook(by_question_length)


def test_group_by_tier_with_the_allocators_mixed_auto_decisions(batch):
    tester, model, inputs = batch
    n_tiers = len(tester.budgets)
    hook = spread_tiers(model, n_tiers)
    try:
        with torch.no_grad():
            tiers = model(**inputs).budget_tiers
        assert tiers.unique().numel() == n_tiers, tiers
        grouped = prefill_shapes(model, lambda: generate(model, inputs))
        assert len(grouped) == n_tiers
        assert torch.equal(generate(model, inputs), generate(model, inputs, group_by_tier=False))
    finally:
        hook.remove()


def allocator_and_sam_calls(model, run) -> tuple:
    """(allocator forwards, SAM forwards) during `run`."""
    calls = {"allocator": 0, "sam": 0}

    def count(name):
        return lambda *args: calls.__setitem__(name, calls[name] + 1)

    hooks = [model.model.allocator.register_forward_hook(count("allocator")),
             model.model.vision_tower.register_forward_hook(count("sam"))]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return calls["allocator"], calls["sam"]


@pytest.mark.parametrize("budget", ["auto", TIERS, 16, "full"])
def test_one_allocator_forward_per_generate_whatever_the_tiers(batch, budget):
    """The allocation is planned once per generate call: tier groups reuse the plan instead of re-scoring."""
    tester, model, inputs = batch
    n_tiers = len(tester.budgets)
    hook = spread_tiers(model, n_tiers)
    try:
        groups = len(prefill_shapes(model, lambda: generate(model, inputs, budget=budget)))
        assert allocator_and_sam_calls(model, lambda: generate(model, inputs, budget=budget)) == (1, 1)
    finally:
        hook.remove()
    assert groups == {"auto": n_tiers, 16: 1, "full": 1}.get(budget if not isinstance(budget, list) else None, 3)


def test_a_given_plan_is_followed_without_running_sam_or_the_allocator(batch):
    tester, model, inputs = batch
    with torch.no_grad():
        plan = model.plan_allocation(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                     pixel_values=inputs["pixel_values"], budget=TIERS)
    expected = generate(model, inputs, budget=TIERS)
    planned = {k: v for k, v in inputs.items() if k != "pixel_values"}
    assert allocator_and_sam_calls(model, lambda: generate(model, planned, plan=plan)) == (0, 0)
    assert torch.equal(generate(model, planned, plan=plan), expected)


def test_group_by_tier_lets_uniform_pooling_take_mixed_budgets(batch):
    tester, model, inputs = batch
    with pytest.raises(ValueError, match="one budget per batch"):
        generate(model, inputs, budget=TIERS, selection="uniform", group_by_tier=False)
    grouped = generate(model, inputs, budget=TIERS, selection="uniform")
    for b in (0, 3):
        alone = generate(model, {k: v[b:b + 1] for k, v in inputs.items()}, budget=TIERS[b], selection="uniform")
        assert torch.equal(grouped[b], alone[0])


def test_num_return_sequences_keeps_samples_in_order(batch):
    tester, model, inputs = batch
    kwargs = dict(budget=TIERS, do_sample=True, num_return_sequences=2, top_k=1)
    grouped = generate(model, inputs, **kwargs)
    padded = generate(model, inputs, **kwargs, group_by_tier=False)
    assert grouped.shape[0] == 2 * len(PROMPTS)
    assert torch.equal(grouped, padded)


def test_bfloat16_generate_end_to_end(tmp_path):
    tester = ArrCocModelTester()
    tester.get_model().save_pretrained(tmp_path)
    model = ArrCocForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    inputs = tester.prepare_inputs()
    inputs.pop("labels")
    inputs["pixel_values"] = inputs["pixel_values"].bfloat16()
    calls = []
    hook = model.lm_head.register_forward_hook(lambda module, args, output: calls.append(output.dtype))
    try:
        out = model.generate(**inputs, budget=[4, 16, 100], max_new_tokens=4, do_sample=False, pad_token_id=0)
    finally:
        hook.remove()
    assert out.shape == (tester.batch_size, inputs["input_ids"].shape[1] + 4)
    assert ((out >= 0) & (out < tester.vocab_size)).all()
    assert calls and set(calls) == {torch.bfloat16}, "every step ran in bfloat16"


@pytest.mark.skipif(is_flash_attn_2_available(), reason="flash-attn is installed: the refusal cannot be observed")
def test_flash_attention_for_the_llm_without_flash_attn_is_refused_at_load(tmp_path):
    ArrCocModelTester().get_model().save_pretrained(tmp_path)
    with pytest.raises(ImportError, match="FlashAttention2 has been toggled on.*not.*installed|doesn't seem"):
        ArrCocForConditionalGeneration.from_pretrained(tmp_path, attn_implementation={"text_config": "flash_attention_2"})


@pytest.mark.skipif(is_flash_attn_2_available(), reason="flash-attn is installed: the refusal cannot be observed")
def test_flash_attention_for_clip_without_flash_attn_is_refused_at_load(tmp_path):
    ArrCocModelTester().get_model().save_pretrained(tmp_path)
    with pytest.raises(ImportError, match="FlashAttention2 has been toggled on"):
        ArrCocForConditionalGeneration.from_pretrained(tmp_path, attn_implementation={"clip_config": "flash_attention_2"})


@pytest.mark.skipif(not (torch.cuda.is_available() and is_flash_attn_2_available()), reason="needs CUDA and flash-attn")
def test_flash_attention_for_clip_and_llm_matches_sdpa(tmp_path):
    tester = ArrCocModelTester()
    tester.get_model().save_pretrained(tmp_path)
    flash = {"vision_config": "sdpa", "clip_config": "flash_attention_2", "text_config": "flash_attention_2"}
    inputs = {k: v.cuda() for k, v in tester.prepare_inputs().items() if k != "labels"}
    inputs["pixel_values"] = inputs["pixel_values"].bfloat16()
    logits = {}
    for name, choice in (("flash", flash), ("sdpa", "sdpa")):
        model = ArrCocForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16, attn_implementation=choice)
        with torch.no_grad():
            # The last position is real in every left-padded row; padded positions may differ between kernels.
            logits[name] = model.cuda().eval()(**inputs, budget=[4, 16, 100]).logits[:, -1].float()
    torch.testing.assert_close(logits["flash"], logits["sdpa"], atol=5e-2, rtol=5e-2)


# ----------------------------------------------------------------------------------------------------------
# The token price on "auto" (budget_cost): the user's trade-off at inference, no retraining
# ----------------------------------------------------------------------------------------------------------


def spread_logits(model, logits):
    """Pin the budget predictor's logits (every sample the same), so the price alone moves the tier."""
    return model.model.allocator.budget_predictor.register_forward_hook(
        lambda module, args, output: logits.to(output.dtype).expand_as(output).clone()
    )


def test_budget_cost_zero_is_the_predicted_tier_and_a_price_moves_it_monotonically(batch):
    tester, model, inputs = batch
    budgets = model.config.budgets
    # A predictor that leans to the middle tier (of 4, 16, 100), with mass on both sides.
    logits = torch.tensor([0.0, 1.0, 0.6])
    hook = spread_logits(model, logits)
    try:
        tiers = {cost: model.model.plan_allocation(**inputs, budget="auto", budget_cost=cost).budget_tiers
                 for cost in (-5.0, -1.0, 0.0, 1.0, 5.0)}
    finally:
        hook.remove()
    assert tiers[0.0].tolist() == [int(logits.argmax())] * len(PROMPTS)
    assert (tiers[5.0] == 0).all(), "a high price buys the smallest tier"
    assert (tiers[-5.0] == len(budgets) - 1).all(), "a negative price buys the largest"
    order = [tiers[c] for c in sorted(tiers)]
    assert all((a >= b).all() for a, b in zip(order, order[1:])), "a higher price never buys more tokens"
    assert tiers[1.0].float().mean() < tiers[0.0].float().mean() < tiers[-1.0].float().mean()


def test_budget_cost_reaches_generate_and_forward_and_is_checked(batch):
    tester, model, inputs = batch
    hook = spread_logits(model, torch.tensor([0.0, 0.2, 1.0] + [0.0] * (len(model.config.budgets) - 3)))
    try:
        cheap = model(**inputs, budget="auto", budget_cost=5.0)
        plan = model.model.plan_allocation(**inputs, budget="auto", budget_cost=5.0)
        assert torch.equal(generate(model, inputs, budget="auto", budget_cost=5.0), generate(model, inputs, plan=plan))
        default = model(**inputs, budget="auto")
    finally:
        hook.remove()
    assert (cheap.budget_tiers == 0).all() and (default.budget_tiers == 2).all()
    for bad in (float("nan"), "cheap", True):
        with pytest.raises(ValueError, match="budget_cost"):
            model.model.plan_allocation(**inputs, budget="auto", budget_cost=bad)


def test_auto_without_a_price_runs_at_the_models_own(batch):
    """config.budget_cost (fitted on validation) is what "auto" spends when a call names no price; an explicit 0 is
    still the predicted tier, and a saved checkpoint keeps its price."""
    tester, model, inputs = batch
    hook = spread_logits(model, torch.tensor([0.0, 0.2, 1.0] + [0.0] * (len(model.config.budgets) - 3)))
    try:
        model.config.budget_cost = 5.0
        own = model.model.plan_allocation(**inputs, budget="auto").budget_tiers
        predicted = model.model.plan_allocation(**inputs, budget="auto", budget_cost=0.0).budget_tiers
        assert torch.equal(generate(model, inputs, budget="auto"), generate(model, inputs, budget="auto", budget_cost=5.0))
    finally:
        hook.remove()
        model.config.budget_cost = 0.0
    assert (own == 0).all() and (predicted == 2).all()
    assert type(tester.get_config(budget_cost=0.01)).from_dict(tester.get_config(budget_cost=0.01).to_dict()).budget_cost == 0.01
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="budget_cost"):
            tester.get_config(budget_cost=bad)
