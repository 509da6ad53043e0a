"""Model core: outputs, losses, budgets, batch invariance, generation, answer isolation."""

import pytest
import torch

from modeling_arrcoc.modeling_arrcoc import LOSS_COMPONENTS, answer_window

OUTPUT_FIELDS = ("loss", "answer_loss", "efficiency_loss", "alignment_loss", "vet_kl_loss")


def unpadded(inputs, b):
    keep = inputs["attention_mask"][b].bool()
    return {
        "input_ids": inputs["input_ids"][b:b + 1, keep], "attention_mask": inputs["attention_mask"][b:b + 1, keep],
        "pixel_values": inputs["pixel_values"][b:b + 1],
    }


def test_forward_output_fields(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    out = model(**inputs, budget=[4, 16, 100])
    for name in OUTPUT_FIELDS:
        assert getattr(out, name).ndim == 0 and torch.isfinite(getattr(out, name)), name
    assert out.visual_token_counts.dtype == torch.long
    assert out.visual_token_counts.tolist() == [4, 16, tester.num_patches]
    assert out.budget_logits.shape == (tester.batch_size, len(tester.budgets))
    assert out.patch_scores.shape == (tester.batch_size, tester.num_patches)
    assert out.kept_patch_mask.sum(-1).tolist() == [4, 16, tester.num_patches]
    lengths = inputs["attention_mask"].sum(-1) - 1 + out.visual_token_counts
    longest = int(lengths.max())
    assert out.logits.shape == (tester.batch_size, longest, tester.vocab_size)


def test_loss_fields_none_without_labels(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    out = model(**inputs)
    assert all(getattr(out, name) is None for name in OUTPUT_FIELDS)
    # Tokens are measured without labels too: each sample's count is its predicted tier's tokens.
    expected = [min(tester.budgets[int(t)], tester.num_patches) for t in out.budget_tiers]
    assert out.visual_token_counts.tolist() == expected


def test_loss_is_weighted_sum_of_components(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    weights = {"answer": 1.0, "efficiency": 0.5, "alignment": 0.25, "vet_kl": 2.0}
    out = model(**inputs, loss_weights=weights)
    expected = sum(w * getattr(out, f"{name}_loss") for name, w in weights.items())
    torch.testing.assert_close(out.loss, expected)
    default = model(**inputs)
    torch.testing.assert_close(default.loss, default.answer_loss)
    with pytest.raises(ValueError, match="Unknown loss components"):
        model(**inputs, loss_weights={"answr": 1.0})


def test_alignment_loss_uses_patch_targets(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    targets = torch.zeros(tester.batch_size, tester.num_patches)
    targets[:, 0] = 1.0
    out = model(**inputs, patch_targets=targets)
    expected = -out.patch_scores.log_softmax(-1)[:, 0].mean()
    torch.testing.assert_close(out.alignment_loss, expected)


def test_backward_reaches_every_component(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    model.train()
    out = model(**inputs, budget=4, loss_weights={"answer": 1.0, "efficiency": 1.0, "vet_kl": 1.0})
    out.loss.backward()
    for name in ("vision_tower", "clip_encoder", "quality_adapter", "language_model"):
        grads = [p.grad for p in getattr(model.model, name).parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
    # The answer loss alone reaches the scorer through the straight-through gate on kept tokens.
    model.zero_grad()
    model(**inputs, budget=4).loss.backward()
    assert model.model.allocator.cross_attention.score.weight.grad.abs().sum() > 0
    assert model.model.allocator.hotspot_detector.score.weight.grad.abs().sum() > 0


def test_straight_through_gate_leaves_forward_values_unchanged(tester):
    from modeling_arrcoc.allocator_arrcoc import ArrCocCompressionHeads

    heads = ArrCocCompressionHeads(channels=4, hidden_size=8, fold_dropped=False)
    features = torch.randn(1, 6, 4)
    scores = torch.randn(1, 6, requires_grad=True)
    chosen = heads(features, scores, torch.tensor([3]))
    kept = scores.detach().topk(3).indices.sort().values[0]
    torch.testing.assert_close(chosen.tokens[0], features[0, kept])
    chosen.tokens.sum().backward()
    assert scores.grad[0, kept].abs().min() > 0


def test_fold_summarizes_dropped_patches(tester):
    from modeling_arrcoc.allocator_arrcoc import ArrCocCompressionHeads

    heads = ArrCocCompressionHeads(channels=4, hidden_size=8, fold_dropped=True)
    torch.nn.init.eye_(heads.fold_proj.weight)
    features = torch.randn(1, 6, 4)
    scores = torch.arange(6.0)[None]  # keeps patches 3, 4, 5
    changed_drop = features.clone()
    changed_drop[0, 0] += 5.0
    a = heads(features, scores, torch.tensor([3])).tokens
    b = heads(changed_drop, scores, torch.tensor([3])).tokens
    assert not torch.allclose(a, b), "a dropped patch's content must reach the kept tokens"


def test_budget_resolution_and_validation(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    with torch.no_grad():
        assert model(**inputs, budget=16).visual_token_counts.tolist() == [16] * 3  # a tier value
        assert model(**inputs, budget=0).visual_token_counts.tolist() == [4] * 3  # a tier index
        assert model(**inputs, budget="full").visual_token_counts.tolist() == [tester.num_patches] * 3
        # 100 > 64 patches: every patch is kept, and the count says so.
        out = model(**inputs, budget=100)
        assert out.visual_token_counts.tolist() == [tester.num_patches] * 3 and out.kept_patch_mask.all()
        auto = model(**inputs, budget="auto")
        expected = torch.tensor(tester.budgets)[auto.budget_logits.argmax(-1)].clamp(max=tester.num_patches)
        assert auto.visual_token_counts.tolist() == expected.tolist()
        for bad in (7, -1, "big", True, 3.5, [4, 16]):
            with pytest.raises(ValueError, match="budget"):
                model(**inputs, budget=bad)


def test_batch_invariance_mixed_tiers(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    tiers = [4, 16, 100]
    with torch.no_grad():
        batch = model(**inputs, budget=tiers)
        worst = 0.0
        for b in range(tester.batch_size):
            alone = model(**unpadded(inputs, b), budget=[tiers[b]])
            length = alone.logits.shape[1]
            worst = max(worst, (batch.logits[b, -length:] - alone.logits[0]).abs().max().item())
            assert torch.equal(batch.kept_patch_mask[b], alone.kept_patch_mask[0])
    assert worst < 1e-5, worst


def test_generate_batch_matches_single(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    tiers = [100, 4, 16]
    batch = model.generate(**inputs, budget=tiers, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(batch[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    for b in range(tester.batch_size):
        alone = model.generate(**unpadded(inputs, b), budget=[tiers[b]], max_new_tokens=6, do_sample=False,
                               pad_token_id=0)
        new_alone = alone[0, alone.shape[1] - 6:]
        new_batch = batch[b, batch.shape[1] - 6:]
        assert torch.equal(new_alone, new_batch), (b, new_alone, new_batch)


def test_generate_uses_kv_cache_and_not_images_after_prefill(tester, monkeypatch):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    calls = []
    original = model.model.get_patch_features
    monkeypatch.setattr(model.model, "get_patch_features", lambda px: calls.append(1) or original(px))
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    model.generate(**inputs, budget=4, max_new_tokens=4, do_sample=False, pad_token_id=0)
    hook.remove()
    assert len(calls) == 1, "the vision tower runs once, before prefill"
    assert seen[1:] == [1, 1, 1], "decoding steps feed one new token each (KV cache)"


def test_allocator_never_sees_answer_tokens(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    other = {k: v.clone() for k, v in inputs.items()}
    answer = inputs["labels"] != -100
    other["input_ids"][answer] = (other["input_ids"][answer] + 7) % tester.vocab_size + 6
    other["labels"][answer] = other["input_ids"][answer]
    with torch.no_grad():
        a, b = model(**inputs), model(**other)
    assert not torch.equal(a.logits, b.logits), "the answers differ, so the LLM sees a difference"
    assert torch.equal(a.patch_scores, b.patch_scores)
    assert torch.equal(a.budget_logits, b.budget_logits)
    assert torch.equal(a.kept_patch_mask, b.kept_patch_mask)
    assert torch.equal(a.visual_token_counts, b.visual_token_counts)


def test_baseline_selections_share_the_model(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    with torch.no_grad():
        for selection in ("uniform", "hotspot", "random"):
            out = model(**inputs, budget=16, selection=selection)
            assert out.visual_token_counts.tolist() == [16] * 3, selection
        uniform = model(**inputs, budget=16, selection="uniform")
        assert uniform.kept_patch_mask.all(), "pooling covers the whole page"
        with pytest.raises(ValueError, match="selection"):
            model(**inputs, selection="oracle")
        with pytest.raises(ValueError, match="one budget per batch"):
            model(**inputs, budget=[4, 16, 16], selection="uniform")


def test_image_token_errors(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    two = inputs["input_ids"].clone()
    two[0, -1] = tester.image_token_id
    with pytest.raises(ValueError, match="exactly one <image>"):
        model(**{**inputs, "input_ids": two})
    none = inputs["input_ids"].clone()
    none[none == tester.image_token_id] = 7
    with pytest.raises(ValueError, match="exactly one <image>"):
        model(**{**inputs, "input_ids": none})
    with pytest.raises(ValueError, match="images for"):
        model(**{**inputs, "pixel_values": inputs["pixel_values"][:2]})
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    bad = inputs["pixel_values"].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(**{**inputs, "pixel_values": bad})


def test_cached_patch_features_give_same_outputs(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    with torch.no_grad():
        features = model.model.get_patch_features(inputs["pixel_values"])
        direct = model(**inputs)
        cached = model(**{k: v for k, v in inputs.items() if k != "pixel_values"}, patch_features=features)
    torch.testing.assert_close(direct.logits, cached.logits, rtol=0, atol=0)


def test_logits_to_keep_the_answer_window_gives_same_loss(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    window = answer_window(inputs["labels"])
    full = model(**inputs)
    sparse = model(**inputs, logits_to_keep=window)
    torch.testing.assert_close(full.answer_loss, sparse.answer_loss)
    assert sparse.logits.shape[:2] == (inputs["labels"].shape[0], window)
    torch.testing.assert_close(sparse.logits, full.logits[:, -window:])
    with pytest.raises(ValueError, match="drops positions that predict labels"):
        model(**inputs, logits_to_keep=window - 1)


def test_gradient_checkpointing_matches(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    model.train()
    reference = model(**inputs, budget=16).loss
    reference.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.model.language_model.gradient_checkpointing or any(
        getattr(m, "gradient_checkpointing", False) for m in model.modules()
    )
    loss = model(**inputs, budget=16).loss
    loss.backward()
    torch.testing.assert_close(loss, reference)
    for name, grad in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)


def test_loss_components_constant_matches_fields():
    from modeling_arrcoc.modeling_arrcoc import ArrCocCausalLMOutputWithPast

    fields = ArrCocCausalLMOutputWithPast.__dataclass_fields__
    assert all(f"{name}_loss" in fields for name in LOSS_COMPONENTS)


def test_vet_loss_against_teacher_targets(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    targets = torch.randint(0, 64, (tester.batch_size, tester.num_patches))
    targets[:, :8] = -100  # patches without a teacher label are ignored
    out = model(**inputs, budget=16, visual_targets=targets)
    kept = out.kept_patch_mask
    expected = []
    for b in range(tester.batch_size):
        token_targets = targets[b][kept[b]]  # kept tokens are in raster order
        probs = out.visual_probs[b, : kept[b].sum()]
        valid = token_targets != -100
        expected.append(-probs[valid].log().gather(1, token_targets[valid, None]).squeeze(1))
    torch.testing.assert_close(out.vet_kl_loss, torch.cat(expected).mean())
    prior = model(**inputs, budget=16)
    assert not torch.allclose(prior.vet_kl_loss, out.vet_kl_loss)


def test_vet_loss_with_two_hot_teacher(tester):
    """[B, N, M] targets: a uniform M-hot teacher; the loss averages -log p over every valid (token, word)."""
    model, inputs = tester.get_model(), tester.prepare_inputs()
    targets = torch.randint(0, 64, (tester.batch_size, tester.num_patches, 2))
    targets[:, :8, 1] = -100
    out = model(**inputs, budget="full", visual_targets=targets)
    log_probs = out.visual_probs.log()  # budget "full": token i is patch i
    picked = log_probs.gather(2, targets.clamp(min=0))
    torch.testing.assert_close(out.vet_kl_loss, -picked[targets != -100].mean())


def test_zero_initialised_layers_start_at_zero(tester):
    model = tester.get_model()
    heads, adapter = model.model.allocator.compression_heads, model.model.quality_adapter
    for parameter in (heads.fold_proj.weight, heads.fold_proj.bias, adapter.relevance_embedding.weight,
                      adapter.budget_norm.tier_scale.weight, adapter.budget_norm.tier_shift.weight):
        assert torch.count_nonzero(parameter) == 0


def test_batch_invariance_with_trained_heads(tester):
    """Non-zero fold and relevance layers (as after training) must keep samples independent of their batch."""
    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    heads, adapter = model.model.allocator.compression_heads, model.model.quality_adapter
    with torch.no_grad():
        for parameter in (heads.fold_proj.weight, adapter.relevance_embedding.weight):
            parameter.normal_(std=0.5)
        tiers = [4, 16, 100]
        batch = model(**inputs, budget=tiers)
        for b in range(tester.batch_size):
            alone = model(**unpadded(inputs, b), budget=[tiers[b]])
            length = alone.logits.shape[1]
            assert (batch.logits[b, -length:] - alone.logits[0]).abs().max() < 1e-5


def test_relevance_tag_is_bounded(tester):
    """However peaked the allocator's scores, the tag added to a token is at most the embedding's own norm."""
    model = tester.get_model()
    adapter = model.model.quality_adapter
    with torch.no_grad():
        adapter.relevance_embedding.weight.fill_(1.0)
        hidden = torch.zeros(1, 2, model.config.clip_config.hidden_size)
        tiers = torch.zeros(1, dtype=torch.long)
        plain, _ = adapter(hidden, tiers)
        tagged, _ = adapter(hidden, tiers, torch.tensor([[0.0, 1e4]]))
    shift = (tagged - plain).norm(dim=-1)
    assert shift[0, 0] == 0 and 0 < shift[0, 1] <= adapter.relevance_embedding.weight.norm() + 1e-5


# ----------------------------------------------------------------------------------------------------------
# Tier rules (on the config) and the allocation plan
# ----------------------------------------------------------------------------------------------------------


def test_tier_rules_live_on_the_config(tester):
    config = tester.get_config()
    budgets = config.budgets
    assert [config.tier_index(v) for v in budgets] == list(range(len(budgets)))
    assert config.tier_index(1) == (budgets.index(1) if 1 in budgets else 1), "a value wins over an index"
    assert [config.tier_value(i) for i in range(len(budgets))] == budgets
    assert config.tier_tokens(len(budgets) - 1) == min(budgets[-1], config.num_patches)
    for bad in (True, 3.5, "big", -1, len(budgets) + max(budgets)):
        with pytest.raises(ValueError, match="Unknown budget"):
            config.tier_index(bad)
    rows, cols = config.pool_shape(16)
    assert rows * cols == 16 and rows <= config.grid_size[0] and cols <= config.grid_size[1]
    with pytest.raises(ValueError, match="cannot make 11 tokens"):
        config.pool_shape(11)  # prime and wider than the 8x8 grid


def test_get_image_features_returns_a_model_output_following_the_plan(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    with torch.no_grad():
        plan = model.plan_allocation(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                     pixel_values=inputs["pixel_values"], budget=16)
        image = model.get_image_features(plan=plan)
        again = model.get_image_features(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                                         attention_mask=inputs["attention_mask"], budget=16)
    assert image.pooler_output.shape[:2] == (inputs["input_ids"].shape[0], 16)
    assert image.visual_token_mask.sum(-1).tolist() == plan.visual_token_counts.tolist()
    assert image.plan is plan and image["pooler_output"] is image.pooler_output
    torch.testing.assert_close(image.pooler_output, again.pooler_output, rtol=0, atol=0)


def test_replan_reuses_the_allocator_and_changes_only_the_budget(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    with torch.no_grad():
        plan = model.plan_allocation(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                     labels=inputs["labels"], pixel_values=inputs["pixel_values"])
        forced = model.model.replan(plan, 4)
        direct = model(**inputs, budget=4)
        followed = model(**{k: v for k, v in inputs.items() if k != "pixel_values"}, plan=forced)
    assert forced.visual_token_counts.tolist() == [4] * inputs["input_ids"].shape[0]
    assert forced.patch_scores is plan.patch_scores
    torch.testing.assert_close(direct.logits, followed.logits, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------
# Transformers conventions (issue #15: D1-D6, D11 in docs/conformance.md)
# ----------------------------------------------------------------------------------------------------------


def _shifted(labels):
    """Pre-shifted targets as the trainer builds them under sequence parallelism: position t's target."""
    return torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]


def test_automodel_from_a_checkpoint_is_a_callable_base_model(tester, tmp_path):
    """D1: AutoModel.from_pretrained(checkpoint) gives ArrCocModel, whose forward splices and runs the LLM: its
    last_hidden_state is what the LM head of ForConditionalGeneration reads, with the same decisions."""
    from transformers import AutoModel

    import modeling_arrcoc
    from modeling_arrcoc import ArrCocForConditionalGeneration

    tester.get_model().save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path).eval()
    full = ArrCocForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert type(base) is modeling_arrcoc.ArrCocModel
    inputs = tester.prepare_inputs()
    inputs.pop("labels")
    with torch.no_grad():
        out = base(**inputs, budget=[4, 16, 100], output_hidden_states=True)
        reference = full(**inputs, budget=[4, 16, 100], output_hidden_states=True)
    assert out.last_hidden_state.shape[:2] == reference.logits.shape[:2]
    torch.testing.assert_close(full.lm_head(out.last_hidden_state), reference.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.hidden_states[-1], reference.hidden_states[-1], rtol=0, atol=0)
    for name in ("visual_token_counts", "budget_tiers", "patch_scores", "kept_patch_mask", "visual_probs"):
        assert torch.equal(getattr(out, name), getattr(reference, name)), name
    assert out.visual_token_counts.tolist() == [4, 16, tester.num_patches]
    assert out.image_outputs.pooler_output.shape[:2] == (tester.batch_size, tester.num_patches)
    # A text-only step (what generate runs after prefill) goes straight to the language model.
    with torch.no_grad():
        step = base(input_ids=torch.full((tester.batch_size, 1), 7), use_cache=False)
    assert step.last_hidden_state.shape[:2] == (tester.batch_size, 1) and step.image_outputs is None


def test_return_dict_false_gives_tuples(tester):
    """D2: return_dict=False (argument or config) returns the output's non-None fields as a tuple."""
    model, inputs = tester.get_model(), tester.prepare_inputs()
    with torch.no_grad():
        as_dict = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
        base = model.model(**inputs, return_dict=False)
        model.config.return_dict = False
        from_config = model(**inputs)
    assert isinstance(as_tuple, tuple) and isinstance(base, tuple) and isinstance(from_config, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    torch.testing.assert_close(from_config[1], as_dict.logits)
    assert base[0].shape[:2] == as_dict.logits.shape[:2]  # last_hidden_state


def test_past_key_values_is_the_deprecated_name_of_cache(tester):
    """D3: a decode step given its cache as past_key_values= uses it (and warns), in both classes."""
    import copy
    import warnings

    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    with torch.no_grad():
        prefill = model(**inputs, use_cache=True)
        step = {"input_ids": torch.full((tester.batch_size, 1), 7), "use_cache": True,
                "attention_mask": torch.ones(tester.batch_size, prefill.logits.shape[1] + 1, dtype=torch.long)}
        for module, field in ((model, "logits"), (model.model, "last_hidden_state")):
            expected = getattr(module(**step, cache=copy.deepcopy(prefill.cache)), field)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = getattr(module(**step, past_key_values=copy.deepcopy(prefill.cache)), field)
            assert any("past_key_values" in str(w.message) for w in caught), type(module).__name__
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_inputs_embeds_with_images_match_input_ids(tester):
    """D4: with inputs_embeds alone, the <image> placeholder is the position holding its embedding."""
    model, inputs = tester.get_model(), tester.prepare_inputs()
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    with torch.no_grad():
        reference = model(**inputs, budget=[4, 16, 100])
        out = model(inputs_embeds=embeds, **rest, budget=[4, 16, 100])
    torch.testing.assert_close(out.logits, reference.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, reference.loss, rtol=0, atol=0)
    assert torch.equal(out.patch_scores, reference.patch_scores)
    with torch.no_grad(), pytest.raises(ValueError, match="inputs_embeds"):
        model(inputs_embeds=torch.randn_like(embeds), **rest)  # no position holds the <image> embedding


def test_shift_labels_are_spliced_like_labels(tester):
    """D5: pre-shifted targets give the labels' loss when they agree, and the loss follows them when they differ;
    with them alone, the answer positions are still kept from the allocator."""
    model, inputs = tester.get_model(), tester.prepare_inputs()
    labels = inputs["labels"]
    no_labels = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad():
        reference = model(**inputs)
        both = model(**inputs, shift_labels=_shifted(labels))
        alone = model(**no_labels, shift_labels=_shifted(labels))
        moved = model(**inputs, shift_labels=_shifted(torch.where(labels == -100, labels, 7)))
        window = answer_window(labels)
        sparse = model(**no_labels, shift_labels=_shifted(labels), logits_to_keep=window)
    torch.testing.assert_close(both.loss, reference.loss)
    torch.testing.assert_close(alone.loss, reference.loss)
    torch.testing.assert_close(sparse.loss, reference.loss)
    assert torch.equal(alone.patch_scores, reference.patch_scores), "the allocator saw the answer"
    assert not torch.allclose(moved.loss, reference.loss), "shift_labels were ignored"
    # Already aligned with the spliced sequence (what the logits are): used as given.
    spliced = model.model(**inputs, shift_labels=_shifted(labels)).shift_labels
    with torch.no_grad():
        given = model(**inputs, shift_labels=spliced)
    torch.testing.assert_close(given.loss, reference.loss)


def test_get_image_features_without_a_prompt_and_with_vision_outputs(tester):
    """D6: pixel_values alone plan for an empty question; the vision tower's hidden states/attentions on request."""
    model, inputs = tester.get_model(), tester.prepare_inputs()
    model.set_attn_implementation("eager")  # SDPA returns no attention weights
    with torch.no_grad():
        image = model.get_image_features(pixel_values=inputs["pixel_values"], output_hidden_states=True,
                                         output_attentions=True)
        as_tuple = model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=False)
    assert image.pooler_output.shape[:2] == (tester.batch_size, max(image.plan.visual_token_counts.tolist()))
    assert torch.isfinite(image.pooler_output).all()
    assert len(image.hidden_states) == model.config.vision_config.num_hidden_layers + 1
    assert len(image.attentions) == model.config.vision_config.num_hidden_layers
    assert isinstance(as_tuple, tuple)


def test_assisted_decoding_with_images_is_refused_clearly(tester):
    """D11: generate continues from spliced embeddings, which no candidate generator can hand to a draft model."""
    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    one = {k: v[:1] for k, v in inputs.items()}
    for kwargs in ({"assistant_model": tester.get_model(seed=1)}, {"prompt_lookup_num_tokens": 2}):
        with pytest.raises(ValueError, match="Assisted decoding"):
            model.generate(**one, max_new_tokens=2, pad_token_id=0, **kwargs)


def test_gradient_checkpointing_keeps_the_frozen_sam_out_of_autograd(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    model.train()
    model.model.vision_tower.requires_grad_(False)
    model.gradient_checkpointing_enable()
    seen = {}
    hooks = [model.model.vision_tower.register_forward_hook(
                 lambda module, args, output: seen.__setitem__("sam", output.last_hidden_state.requires_grad)),
             model.get_input_embeddings().register_forward_hook(
                 lambda module, args, output: seen.__setitem__("tokens", output.requires_grad))]
    try:
        model(**inputs, budget=16).loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"sam": False, "tokens": True}


def test_vision_autocast_runs_sam_in_bfloat16_and_hands_on_the_model_dtype(tester):
    """`vision_autocast_dtype`: SAM computes in bf16 (its output is bf16), everything after it in the model's fp32,
    and the answers stay close to an all-fp32 forward of the same weights."""
    reference, inputs = tester.get_model(), tester.prepare_inputs()
    model = tester.get_model(vision_autocast_dtype="bfloat16")
    model.load_state_dict(reference.state_dict())
    seen = {}
    hooks = [model.model.vision_tower.register_forward_hook(
                 lambda module, args, output: seen.__setitem__("sam", output.last_hidden_state.dtype)),
             model.model.allocator.register_forward_hook(
                 lambda module, args, output: seen.__setitem__("allocator", args[0].dtype))]
    with torch.no_grad():
        try:
            half = model(**inputs, budget=16)
        finally:
            for hook in hooks:
                hook.remove()
        full = reference(**inputs, budget=16)
    assert seen == {"sam": torch.bfloat16, "allocator": torch.float32}
    assert half.logits.dtype == torch.float32
    assert not torch.equal(half.logits, full.logits)  # bf16 really ran
    torch.testing.assert_close(half.logits, full.logits, atol=5e-2, rtol=5e-2)


def test_vision_autocast_dtype_is_checked(tester):
    with pytest.raises(Exception, match="vision_autocast_dtype"):
        tester.get_config(vision_autocast_dtype="int8")
