"""A forced tier compiles whole (#23): at a fixed tier (or "full") every shape of the multimodal forward is known on
the host (`ArrCocAllocationPlan.static_tokens`), so Dynamo traces one graph with no break, and the compiled forward
answers as the eager one. Under "auto" the token count is data: generate runs one static plan per tier group."""

import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from modeling_arrcoc.splice_arrcoc import splice as _splice

pytestmark = pytest.mark.usefixtures("one_thread")

FIXED = [(4, "learned"), (16, "learned"), ("full", "learned"), (4, "uniform"), (16, "uniform")]


def _explain(function, **inputs):
    torch._dynamo.reset()
    return torch._dynamo.explain(function)(**inputs)


def _logits(model, budget, selection):
    def forward(**inputs):
        return model(**inputs, budget=budget, selection=selection, use_cache=False).logits
    return forward


@pytest.mark.parametrize("budget,selection", FIXED)
def test_fixed_tier_forward_is_one_graph(tester, budget, selection):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    explained = _explain(_logits(model, budget, selection), **inputs)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_auto_budget_is_not_static(tester):
    """The contrast that shows the check can fail: under "auto" the kept-token count is read back from a tensor."""
    model, inputs = tester.get_model(), tester.prepare_inputs()
    with torch.no_grad():
        plan = model.model.plan_allocation(**{k: v for k, v in inputs.items() if k != "labels"}, budget="auto")
    assert plan.static_tokens is None
    assert _explain(_logits(model, "auto", "learned"), **inputs).graph_break_count > 0


@pytest.mark.parametrize("budget,selection", [(4, "learned"), ("full", "learned"), (16, "uniform")])
def test_fullgraph_compile_matches_eager(tester, budget, selection):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        eager = model(**inputs, budget=budget, selection=selection)
        graph = compiled(**inputs, budget=budget, selection=selection)
    torch.testing.assert_close(graph.logits, eager.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(graph.loss, eager.loss, atol=1e-5, rtol=1e-5)
    assert torch.equal(graph.visual_token_counts, eager.visual_token_counts)


def _prefilled(model, inputs):
    """(cache, next token, attention mask) after a tier-4 prefill: the inputs of one decode step."""
    with torch.no_grad():
        prefill = model(**inputs, budget=4, use_cache=True)
    token = prefill.logits[:, -1:].argmax(-1)
    return prefill.cache, token, torch.ones(token.shape[0], prefill.cache.get_seq_length() + 1, dtype=torch.long)


def test_decode_step_is_one_graph(tester):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    cache, next_token, mask = _prefilled(model, inputs)

    def step(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True).logits
    explained = _explain(step, input_ids=next_token, attention_mask=mask)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_tier_groups_of_an_auto_plan_are_static(tester):
    """generate under "auto" (or per-sample budgets) runs each tier group as its own batch with a static plan."""
    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    budgets = [4, 16, 4]
    with torch.no_grad():
        plan = model.model.plan_allocation(**inputs, budget=budgets)
    assert plan.static_tokens is None
    groups = plan.tier_groups()
    assert len(groups) == 2
    for index in groups.values():
        group = plan.tier_group(index)
        assert group.static_tokens == budgets[int(index[0])]
        assert torch.equal(group.visual_token_counts, torch.full_like(group.visual_token_counts, group.static_tokens))

        def forward(input_ids, attention_mask):
            return model(input_ids=input_ids, attention_mask=attention_mask, plan=group, use_cache=False).logits
        explained = _explain(forward, input_ids=inputs["input_ids"][index],
                             attention_mask=inputs["attention_mask"][index])
        assert explained.graph_break_count == 0, explained.break_reasons


def test_static_splice_equals_measured_splice():
    """The host-known length gives the same splice whenever one row is unpadded (as a processor pads), and a batch
    whose every row is padded gets one more padding column with the same tokens after it."""
    generator = torch.Generator().manual_seed(0)
    batch, length, dim, tokens = 3, 7, 4, 5
    text = torch.randn(batch, length, dim, generator=generator)
    visual = torch.randn(batch, tokens, dim, generator=generator)
    visual_mask = torch.ones(batch, tokens, dtype=torch.bool)
    labels = torch.randint(0, 9, (batch, length), generator=generator)
    image = torch.zeros(batch, length, dtype=torch.bool)
    image[:, 3] = True
    for pads in ((0, 2, 1), (1, 2, 1)):
        mask = torch.stack([torch.arange(length) >= pad for pad in pads]).long()
        measured = _splice(image, mask, text, visual, visual_mask, labels)
        static = _splice(image, mask, text, visual, visual_mask, labels, static_tokens=tokens)
        extra = static[0].shape[1] - measured[0].shape[1]
        assert extra == (0 if 0 in pads else 1)
        for got, want in zip(static[:4], measured[:4]):
            assert torch.equal(got[:, extra:], want)
        assert not static[1][:, :extra].any()


def test_export_at_a_fixed_tier_matches_eager(tester):
    """torch.export of the whole multimodal forward works once the tier is fixed (under "auto" it cannot: the
    kept-token count is data; tests/test_transformers_common.py's test_torch_export holds that limit)."""
    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    case = {**inputs, "budget": 4, "use_cache": False}
    exported = torch.export.export(model, args=(), kwargs=case, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(**case).logits, model(**case).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("budget", [4, "auto"])
def test_compiled_static_cache_generate_matches_eager(tester, budget):
    """The documented route (docs/inference.md): a static cache and a compile config make transformers compile the
    decode step (fullgraph); each tier group's prefill is static too. Same tokens as the eager dynamic-cache run."""
    from transformers import CompileConfig

    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    config = CompileConfig(fullgraph=True, backend="aot_eager")
    config._compile_all_devices = True  # transformers compiles on accelerators only unless told
    torch._dynamo.reset()
    eager = model.generate(**inputs, budget=budget, max_new_tokens=4, do_sample=False)
    counters.clear()
    compiled = model.generate(**inputs, budget=budget, max_new_tokens=4, do_sample=False,
                              cache_implementation="static", compile_config=config)
    assert counters["stats"]["unique_graphs"] >= 1  # the decode step did compile
    assert torch.equal(compiled, eager)


def _capturing_backend():
    """(graphs, backend): a torch.compile backend that keeps the FX graphs Dynamo hands it and runs them as traced."""
    graphs = []

    def capture(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward
    return graphs, capture


def _decode_graphs(model, inputs):
    """The FX graphs Dynamo hands its backend for one compiled decode step after a tier-4 prefill."""
    graphs, capture = _capturing_backend()
    cache, token, mask = _prefilled(model, inputs)
    with torch.no_grad():
        torch._dynamo.reset()
        step = torch.compile(lambda **kw: model(**kw).logits, fullgraph=True, backend=capture)
        logits = step(input_ids=token, attention_mask=mask, cache=cache, use_cache=True)
        cache.crop(-1)
        eager = model(input_ids=token, attention_mask=mask, cache=cache, use_cache=True).logits
    return graphs, logits, eager


def _repeats_the_cache(graphs) -> bool:
    """transformers' repeat_kv: a 5-D expand of each key/value head over the query heads it serves."""
    return any(node.op == "call_method" and node.target == "expand" and node.meta["example_value"].dim() == 5
               for graph in graphs for node in graph.graph.nodes)


def test_compiled_decode_reads_the_grouped_cache_only_with_the_switch(tester, monkeypatch):
    """Why compiled decode ran slower than eager at full tokens (bench/decode_gqa.py, docs/inference.md): traced, the
    decode step copies the cache once per query head (transformers packs the heads in eager mode only);
    TRANSFORMERS_SDPA_FORCE_GQA=1 at trace time makes SDPA read the grouped heads itself. Same logits either way."""
    model, inputs = tester.get_model(), tester.prepare_inputs()
    inputs.pop("labels")
    text = model.config.text_config
    assert text.num_attention_heads > text.num_key_value_heads
    monkeypatch.delenv("TRANSFORMERS_SDPA_FORCE_GQA", raising=False)
    graphs, logits, eager = _decode_graphs(model, inputs)
    assert _repeats_the_cache(graphs)
    torch.testing.assert_close(logits, eager, atol=1e-5, rtol=1e-5)
    monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    graphs, logits, eager = _decode_graphs(model, inputs)
    assert graphs and not _repeats_the_cache(graphs)
    torch.testing.assert_close(logits, eager, atol=1e-5, rtol=1e-5)


def test_fixed_tier_forward_with_sam_under_autocast_is_one_graph(tester):
    """SAM's autocast (`vision_autocast_dtype`) is traced inside the one graph, not a break around it."""
    model, inputs = tester.get_model(vision_autocast_dtype="bfloat16"), tester.prepare_inputs()
    explained = _explain(_logits(model, 4, "learned"), **inputs)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def _sdpa_calls(model, inputs, budget):
    """(is_causal, has a mask) of each SDPA call in the one graph of a compiled forward at `budget`, and its logits."""
    graphs, capture = _capturing_backend()
    torch._dynamo.reset()
    compiled = torch.compile(lambda **kw: model(**kw, budget=budget, use_cache=False).logits, fullgraph=True,
                             backend=capture)
    with torch.no_grad():
        logits = compiled(**inputs)
    calls = [(bool(node.kwargs.get("is_causal", False)), node.kwargs.get("attn_mask") is not None)
             for graph in graphs for node in graph.graph.nodes
             if node.target is torch.nn.functional.scaled_dot_product_attention]
    return calls, logits


@pytest.mark.parametrize("budget", [4, "full"])
def test_unpadded_fixed_tier_prefill_compiles_without_a_causal_mask(tester, budget):
    """#23: with no attention_mask (unpadded rows) at a fixed tier, every language-model layer's SDPA runs with
    `is_causal` and no [L, L] mask, also traced (transformers builds the mask whenever it compiles under torch < 2.14);
    the logits are those of the eager forward given the all-ones mask. Given a mask, the compiled graph keeps it."""
    model = tester.get_model()
    inputs = tester.prepare_inputs(prompt_lengths=(4, 4, 4))
    inputs.pop("labels")
    assert bool(inputs["attention_mask"].all())
    layers = model.config.text_config.num_hidden_layers
    with torch.no_grad():
        eager = model(**inputs, budget=budget, use_cache=False).logits
    masked_calls, masked_logits = _sdpa_calls(model, inputs, budget)
    assert sum(causal for causal, _ in masked_calls) == 0 and sum(mask for _, mask in masked_calls) >= layers
    unmasked = {key: value for key, value in inputs.items() if key != "attention_mask"}
    calls, logits = _sdpa_calls(model, unmasked, budget)
    assert sum(causal and not mask for causal, mask in calls) == layers
    torch.testing.assert_close(logits, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked_logits, eager, atol=1e-5, rtol=1e-5)


def test_auto_or_cached_prefill_keeps_its_mask(tester):
    """Only a fixed tier over an empty cache is a plain causal prompt: under "auto" rows keep different K (the splice
    pads), and after a cached prefix `is_causal`'s upper-left alignment would hide the cache from the prompt."""
    from transformers import DynamicCache

    from modeling_arrcoc.modeling_arrcoc import _cache_known_empty

    model = tester.get_model()
    base = model.model
    plan = base.plan_allocation(pixel_values=tester.prepare_inputs()["pixel_values"], budget=4)
    assert base._plain_causal_prefill(None, plan, None)
    assert not base._plain_causal_prefill(torch.ones(3, 4, dtype=torch.long), plan, None)
    assert not base._plain_causal_prefill(None, dataclasses.replace(plan, static_tokens=None), None)
    cache = DynamicCache(config=model.config.text_config)
    assert _cache_known_empty(None) and _cache_known_empty(cache)
    text = model.config.text_config
    shape = (1, text.num_key_value_heads, 2, text.head_dim)
    cache.update(torch.zeros(shape), torch.zeros(shape), layer_idx=0)
    assert not _cache_known_empty(cache) and not base._plain_causal_prefill(None, plan, cache)
