"""explain(): the model's own allocation for one question; render_heatmap(): that allocation drawn on the page."""

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_arrcoc.data import render_sample, sample_rng
from modeling_arrcoc.explanation import OUTLINE_COLOR, Explanation, explain, prompt_batch, render_heatmap

IMAGE_SIZE, PATCH = 64, 8  # the tiny preset's geometry: an 8x8 grid, budgets 4 / 16 / 100


@pytest.fixture(scope="module")
def sample():
    return render_sample("local_key", sample_rng(0, "test", 0), IMAGE_SIZE, PATCH)


def forward(model, processor, sample, **kwargs):
    batch = prompt_batch(processor, [sample["image"]], [sample["question"]])
    with torch.no_grad():
        return model(**batch, **kwargs)


@pytest.mark.parametrize("budget", [4, 16, 100, 1, "full", "auto"])
def test_explain_matches_the_models_kept_patch_mask_and_tier(tiny, sample, budget):
    model, processor = tiny
    explanation = explain(model, processor, sample["image"], sample["question"], budget=budget)
    outputs = forward(model, processor, sample, budget=budget)
    kept = outputs.kept_patch_mask[0].reshape(8, 8).nonzero().tolist()
    assert explanation.kept_positions == [tuple(p) for p in kept]
    assert explanation.tier == int(outputs.budget_tiers[0])
    assert explanation.visual_token_count == int(outputs.visual_token_counts[0])
    assert explanation.tier_value == model.config.budgets[explanation.tier]
    assert explanation.grid_size == (8, 8) and explanation.patch_scores.shape == (8, 8)
    np.testing.assert_allclose(explanation.patch_scores.reshape(-1), outputs.patch_scores[0].numpy(), rtol=1e-6)


@pytest.mark.parametrize("budget, tier, count", [(4, 0, 4), (16, 1, 16), (1, 1, 16), (100, 2, 64)])
def test_explain_keeps_the_requested_tier(tiny, sample, budget, tier, count):
    model, processor = tiny
    explanation = explain(model, processor, sample["image"], sample["question"], budget=budget)
    assert (explanation.tier, explanation.visual_token_count, len(explanation.kept_positions)) == (tier, count, count)


@pytest.mark.parametrize("selection", ["learned", "hotspot"])
def test_kept_patches_are_the_top_scored_ones(tiny, sample, selection):
    model, processor = tiny
    explanation = explain(model, processor, sample["image"], sample["question"], budget=16, selection=selection)
    top = np.argsort(-explanation.patch_scores.reshape(-1), kind="stable")[:16]
    assert sorted(divmod(int(i), 8) for i in top) == explanation.kept_positions


def test_hotspot_scores_differ_from_the_learned_ones(tiny, sample):
    model, processor = tiny
    learned = explain(model, processor, sample["image"], sample["question"], budget=16)
    hotspot = explain(model, processor, sample["image"], sample["question"], budget=16, selection="hotspot")
    assert not np.allclose(learned.patch_scores, hotspot.patch_scores)


def one_hot_explanation(row=2, col=3, grid=(8, 8)) -> Explanation:
    scores = np.zeros(grid, dtype=np.float32)
    scores[row, col] = 5.0
    return Explanation("Which digit?", 0, 4, 1, [(row, col)], scores, grid)


def test_render_heatmap_paints_high_scores_and_leaves_low_ones():
    page = Image.new("RGB", (64, 64), (250, 250, 250))
    heat = np.asarray(render_heatmap(page, one_hot_explanation(), caption=False), dtype=int)
    original = np.asarray(page, dtype=int)
    assert heat.shape == original.shape
    hot_cell = np.abs(heat[17:23, 25:31] - original[17:23, 25:31]).sum(-1)  # inside patch (2, 3), off its border
    assert (hot_cell > 60).all()
    assert (heat[40:, :16] == original[40:, :16]).all(), "zero-score patches far from the kept one stay untouched"


def test_render_heatmap_outlines_kept_patches():
    page = Image.new("RGB", (64, 64), (250, 250, 250))
    heat = np.asarray(render_heatmap(page, one_hot_explanation(), caption=False))
    assert tuple(heat[16, 28]) == OUTLINE_COLOR, "top edge of patch (2, 3)"
    assert tuple(heat[20, 24]) == OUTLINE_COLOR, "left edge"
    assert tuple(heat[20, 20]) != OUTLINE_COLOR


def test_render_heatmap_adds_a_caption_strip_below_the_page(tmp_path):
    page = Image.new("RGB", (64, 64), (250, 250, 250))
    path = tmp_path / "heat.png"
    heat = render_heatmap(page, one_hot_explanation(), path=path, title="local_key")
    assert heat.width == 64 and heat.height > 64
    assert path.stat().st_size > 0 and Image.open(path).size == heat.size
    strip = np.asarray(heat)[64:]
    assert (strip < 128).any(), "the caption has ink"


def test_render_heatmap_maps_the_grid_onto_a_non_square_page():
    # The processor pads bottom/right to a square: a 64x32 page covers grid rows 0-3 at full width.
    page = Image.new("RGB", (64, 32), (250, 250, 250))
    heat = np.asarray(render_heatmap(page, one_hot_explanation(row=1, col=6), caption=False), dtype=int)
    original = np.asarray(page, dtype=int)
    assert heat.shape == original.shape
    assert np.abs(heat[10:14, 50:54] - original[10:14, 50:54]).sum() > 0
    assert (heat[20:, :40] == original[20:, :40]).all()


def test_render_heatmap_of_a_real_explanation(tiny, sample):
    model, processor = tiny
    explanation = explain(model, processor, sample["image"], sample["question"], budget=16)
    heat = render_heatmap(sample["image"], explanation)
    assert heat.width == IMAGE_SIZE and heat.height > IMAGE_SIZE
    assert not np.array_equal(np.asarray(heat)[:IMAGE_SIZE], np.asarray(sample["image"]))
