"""ArrCoc's SAM attention (layers_arrcoc): transformers' SAM attention with its relative-position bias built by a
one-hot matmul, or (SDPA, inference on CPU) summed block by block. The same weights give the same outputs, windowed
and global, eager and SDPA, with and without gradient."""

import pytest
import torch
from transformers import SamVisionConfig, SamVisionModel
from transformers.models.sam.modeling_sam import SamVisionAttention, SamVisionSdpaAttention

from modeling_arrcoc.layers_arrcoc import (
    SAM_ATTENTION_CLASSES,
    blockwise_biased_attention,
    ArrCocSamAttention,
    ArrCocSamSdpaAttention,
    key_one_hot,
    use_sam_attention,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _sam(implementation):
    """A small SAM (a 12 x 12 grid: windows of 5 pad it to 15) with non-zero relative positions."""
    config = SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=96,
                             patch_size=8, output_channels=16, window_size=5, global_attn_indexes=[1],
                             mlp_dim=64, attn_implementation=implementation)
    torch.manual_seed(0)
    model = SamVisionModel(config).eval()
    for name, parameter in model.named_parameters():
        if "rel_pos" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    return model


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("implementation,stock", [("eager", SamVisionAttention), ("sdpa", SamVisionSdpaAttention)])
def test_one_hot_relative_positions_match_transformers(implementation, stock, grad):
    """Without gradient the SDPA class sums its bias block by block; with it (training) it takes the one-hot bias."""
    model = _sam(implementation)
    assert {type(m) for m in model.modules() if isinstance(m, SamVisionAttention)} == {stock}
    pixels = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.set_grad_enabled(grad):
        expected = model(pixel_values=pixels, output_attentions=implementation == "eager")
        use_sam_attention(model)
        got = model(pixel_values=pixels, output_attentions=implementation == "eager")
    assert {type(m) for m in model.modules() if isinstance(m, SamVisionAttention)} == {
        SAM_ATTENTION_CLASSES[implementation]}
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-6, rtol=1e-6)
    if implementation == "eager":  # the attention maps themselves, windowed layer and global layer
        for mine, theirs in zip(got.attentions, expected.attentions):
            torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-6)


def test_the_bias_itself_equals_the_broadcast_sum():
    attention = _sam("eager").vision_encoder.layers[1].attn  # the global layer: 12 x 12 queries and keys
    query = torch.randn(4, 144, 16, generator=torch.Generator().manual_seed(2))
    expected = SamVisionAttention.get_decomposed_rel_pos(
        attention, query, attention.rel_pos_h, attention.rel_pos_w, (12, 12), (12, 12))
    got = ArrCocSamAttention.get_decomposed_rel_pos(
        attention, query, attention.rel_pos_h, attention.rel_pos_w, (12, 12), (12, 12))
    assert got.shape == expected.shape == (4, 12, 12, 12, 12)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_key_one_hot_marks_each_keys_row_and_column():
    table = key_one_hot(3, 4, torch.empty(0))
    assert table.shape == (12, 7) and torch.equal(table.sum(1), torch.full((12,), 2.0))
    for key in range(12):
        assert table[key, key // 4] == 1 and table[key, 3 + key % 4] == 1


def test_the_model_runs_sam_with_arrcoc_attention_and_follows_the_implementation(tester):
    model = tester.get_model()
    kinds = lambda: {type(m) for m in model.model.vision_tower.modules() if isinstance(m, SamVisionAttention)}
    assert kinds() == {ArrCocSamSdpaAttention}
    model.set_attn_implementation("eager")
    assert kinds() == {ArrCocSamAttention}
    with torch.no_grad():
        vision = model.model._vision_outputs(tester.prepare_inputs()["pixel_values"], output_attentions=True)
    assert all(attention is not None for attention in vision.attentions)


def test_blockwise_attention_gives_every_row_what_one_sdpa_gives():
    """Blocks of groups (a whole bias fits) and blocks of queries (it does not), ragged at the end: each row is what
    the single SDPA over the whole broadcast bias gives (up to the kernel's rounding: a one-query block may take
    another vector path)."""
    generator = torch.Generator().manual_seed(4)
    groups, key_height, key_width, queries, dim = 5, 3, 4, 7, 8
    query, key, value = (torch.randn(groups, length, dim, generator=generator)
                         for length in (queries, key_height * key_width, key_height * key_width))
    rows = torch.randn(groups, queries, key_height, generator=generator)
    cols = torch.randn(groups, queries, key_width, generator=generator)
    bias = (rows[..., :, None] + cols[..., None, :]).flatten(-2)
    expected = torch.nn.functional.scaled_dot_product_attention(query[None], key[None], value[None],
                                                                attn_mask=bias[None])[0]
    for block in (1, 12, 30, 2 * queries * 12, 10_000):  # one query; queries of one group; groups of 2; 5
        got = blockwise_biased_attention(query, key, value, rows, cols, block_elements=block)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_sdpa_attention_sums_its_bias_by_blocks_only_in_inference(monkeypatch):
    from modeling_arrcoc import layers_arrcoc

    calls = []
    blockwise = layers_arrcoc.blockwise_biased_attention
    monkeypatch.setattr(layers_arrcoc, "blockwise_biased_attention", lambda *a, **k: calls.append(1) or blockwise(*a, **k))
    model = _sam("sdpa")
    use_sam_attention(model)
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    model(pixel_values=pixels).last_hidden_state.sum().backward()
    assert not calls and model.vision_encoder.layers[1].attn.rel_pos_h.grad is not None
    with torch.no_grad():
        model(pixel_values=pixels)
    assert len(calls) == 2  # the windowed layer and the global one


@pytest.mark.parametrize("one_hot", [False, True])
def test_compiled_sam_matches_eager_either_way(one_hot, monkeypatch):
    """Compiled without the blocks, the bias is transformers' broadcast sum (inductor fuses it) unless
    `one_hot_when_compiled`; both give the eager output (inference: blockwise), and the trace takes the one-hot
    table only when asked."""
    from modeling_arrcoc import layers_arrcoc

    calls = []
    table = layers_arrcoc.key_one_hot
    monkeypatch.setattr(layers_arrcoc, "key_one_hot", lambda *args: calls.append(args) or table(*args))
    model = _sam("sdpa")
    use_sam_attention(model, one_hot_when_compiled=one_hot, blockwise_when_compiled=False)
    assert all(m.one_hot_when_compiled == one_hot for m in model.modules() if isinstance(m, ArrCocSamSdpaAttention))
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    torch._dynamo.reset()
    eager_with_grad = model(pixel_values=pixels).last_hidden_state
    assert calls, "eager on CPU with gradient builds the bias with the one-hot table"
    calls.clear()
    with torch.no_grad():
        eager = model(pixel_values=pixels).last_hidden_state
        assert not calls, "eager inference sums the bias by blocks"
        torch.testing.assert_close(eager, eager_with_grad, atol=1e-6, rtol=1e-6)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(pixel_values=pixels).last_hidden_state
    assert bool(calls) == one_hot
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


def test_a_compiled_sam_calls_the_eager_blocks_as_one_operator(monkeypatch):
    """Compiled inference (`blockwise_when_compiled`, the default) calls the blocks through one custom operator: one
    graph, no break, the blocks run as in eager (the same attention output), the eager output overall."""
    from modeling_arrcoc import layers_arrcoc

    calls = []
    blockwise = layers_arrcoc.blockwise_biased_attention
    monkeypatch.setattr(layers_arrcoc, "blockwise_biased_attention", lambda *a, **k: calls.append(1) or blockwise(*a, **k))
    model = _sam("sdpa")
    use_sam_attention(model)
    assert all(m.blockwise_when_compiled for m in model.modules() if isinstance(m, ArrCocSamSdpaAttention))
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(pixel_values=pixels).last_hidden_state
        calls.clear()
        explained = torch._dynamo.explain(model)(pixel_values=pixels)
        assert explained.graph_count == 1 and explained.graph_break_count == 0
        calls.clear()
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(pixel_values=pixels).last_hidden_state
    assert len(calls) == 2, "the windowed layer's blocks and the global one's, each called once"
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    query, key, value = torch.randn(3, 4, 12, 8).unbind(0)
    rows, cols = torch.randn(4, 12, 3), torch.randn(4, 12, 4)  # 12 keys on a 3 x 4 grid
    torch.testing.assert_close(layers_arrcoc.blockwise_attention_op(query, key, value, rows, cols),
                               blockwise(query, key, value, rows, cols), atol=0, rtol=0)
