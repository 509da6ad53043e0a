"""The compression heads' fold: a straight-through assignment, so fold_key learns (issue #15, D9).

Forward: each dropped patch goes to its most similar kept patch (hard one-hot, argmax), exactly as before.
Backward: the gradient of the soft assignment softmax(similarity / fold_temperature) reaches fold_key."""

import torch
from torch.nn import functional as F

from modeling_arrcoc.allocator_arrcoc import ArrCocCompressionHeads, top_k_raster


def argmax_fold(heads, features, tokens, kept_index, token_mask):
    """The fold as it was before the straight-through assignment (argmax only): the forward reference."""
    keys = F.normalize(heads.fold_key(features), dim=-1)
    kept_keys = F.normalize(heads.fold_key(tokens), dim=-1)
    similarity = (keys @ kept_keys.transpose(1, 2)).masked_fill(~token_mask[:, None, :], float("-inf"))
    assign = F.one_hot(similarity.argmax(-1), tokens.shape[1]).to(features.dtype)
    num_patches = features.shape[1]
    index = kept_index.masked_fill(~token_mask, num_patches)
    is_kept = assign.new_zeros(assign.shape[0], num_patches + 1).scatter(1, index, 1.0)[:, :num_patches]
    assign = assign * (1 - is_kept).unsqueeze(-1)
    folded = assign.transpose(1, 2) @ features
    return folded / assign.sum(1).clamp(min=1.0).unsqueeze(-1)


def heads_and_inputs(seed=0):
    torch.manual_seed(seed)
    heads = ArrCocCompressionHeads(channels=8, hidden_size=16, fold_dropped=True)
    torch.nn.init.normal_(heads.fold_proj.weight, std=0.5)  # zero-init: the fold would not reach the output yet
    features = torch.randn(3, 20, 8)
    scores = torch.randn(3, 20)
    counts = torch.tensor([4, 7, 2])  # padded to 7 tokens: padding columns must stay out of the assignment
    return heads, features, scores, counts


def test_forward_is_bit_identical_to_the_argmax_fold():
    heads, features, scores, counts = heads_and_inputs()
    kept_index, token_mask = top_k_raster(scores, counts)
    tokens = features[torch.arange(3)[:, None], kept_index]
    with torch.no_grad():
        reference = argmax_fold(heads, features, tokens, kept_index, token_mask)
    straight_through = heads._fold(features, tokens, kept_index, token_mask)  # grad mode: the soft path runs
    assert straight_through.requires_grad
    assert torch.equal(straight_through.detach(), reference)
    with torch.no_grad():
        assert torch.equal(heads._fold(features, tokens, kept_index, token_mask), reference)
    # And the whole selection, with and without gradients.
    with torch.no_grad():
        frozen = heads(features, scores, counts)
    live = heads(features, scores.requires_grad_(), counts)
    for name in ("tokens", "position_weights", "token_mask", "kept_patch_mask", "token_scores"):
        assert torch.equal(getattr(live, name).detach(), getattr(frozen, name)), name


def test_fold_key_gets_a_gradient():
    heads, features, scores, counts = heads_and_inputs()
    selection = heads(features, scores, counts)
    (selection.tokens * torch.randn_like(selection.tokens)).sum().backward()
    for name in ("weight", "bias"):
        grad = getattr(heads.fold_key, name).grad
        assert grad is not None and grad.abs().sum() > 0, name
        assert torch.isfinite(grad).all(), name


def test_fold_key_gets_the_answer_loss_gradient(tester, monkeypatch):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    heads = model.model.allocator.compression_heads
    torch.nn.init.normal_(heads.fold_proj.weight, std=0.02)  # as after any training step (it starts at zero)
    out = model(**inputs, budget=4)  # gradients on: the straight-through path runs
    with monkeypatch.context() as patch:  # the same forward, gradients on, with the argmax-only fold
        patch.setattr(ArrCocCompressionHeads, "_fold", argmax_fold)
        reference = model(**inputs, budget=4)
    assert torch.equal(out.logits.detach(), reference.logits.detach())  # no forward value changes
    assert torch.equal(out.loss.detach(), reference.loss.detach())
    out.loss.backward()  # the answer loss alone
    assert heads.fold_key.weight.grad is not None and heads.fold_key.weight.grad.abs().sum() > 0
