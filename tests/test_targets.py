"""Answer-region patch targets: coverage per patch, raster order, and agreement with the synthetic pixels."""

from __future__ import annotations

import numpy as np
import pytest

from modeling_arrcoc.data import synthetic
from modeling_arrcoc.data.synthetic import KEY_COLORS, STYLES, render_sample
from modeling_arrcoc.data.targets import answer_patch_targets, scale_boxes


def test_box_on_one_cell_marks_only_that_patch():
    targets = answer_patch_targets([[32.0, 48.0, 48.0, 64.0]], 256, 16)
    assert targets.shape == (256,) and targets.dtype == np.float32
    expected = np.zeros(256, np.float32)
    expected[3 * 16 + 2] = 1.0  # row 3, column 2, raster order
    assert np.array_equal(targets, expected)


def test_half_covered_patch_is_one_half():
    targets = answer_patch_targets([[0.0, 0.0, 8.0, 16.0]], 256, 16)
    assert targets[0] == pytest.approx(0.5) and targets[1:].sum() == 0


def test_box_across_patches_spreads_fractions():
    targets = answer_patch_targets([[8.0, 8.0, 24.0, 24.0]], 32, 16).reshape(2, 2)
    assert np.allclose(targets, 0.25)


def test_overlapping_boxes_count_once():
    targets = answer_patch_targets([[0, 0, 16, 16], [0, 0, 16, 16], [4, 4, 12, 12]], 32, 16)
    assert targets[0] == 1.0 and targets.max() == 1.0


def test_no_boxes_gives_zeros_and_outside_is_clipped():
    assert not answer_patch_targets([], 64, 16).any()
    targets = answer_patch_targets([[-10, -10, 8, 16], [60, 60, 200, 200]], 64, 16)
    assert targets[0] == pytest.approx(0.5) and targets[-1] == pytest.approx(16 / 256)  # 4 x 4 px inside


def test_rectangular_image_is_height_then_width():
    targets = answer_patch_targets([[32, 16, 48, 32]], (32, 64), 16)  # 2 rows x 4 columns
    assert targets.shape == (8,) and np.flatnonzero(targets).tolist() == [1 * 4 + 2]


def test_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(ValueError):
        answer_patch_targets([[0, 0, 4, 4]], 250, 16)


def test_scale_boxes_follows_a_resize():
    assert scale_boxes([[10, 20, 30, 40]], (100, 200), (50, 50)) == [[2.5, 10.0, 7.5, 20.0]]


def _patches(image, patch=16):
    pixels = np.asarray(image).astype(np.float32)
    grid = pixels.shape[0] // patch
    return pixels.reshape(grid, patch, grid, patch, 3).transpose(0, 2, 1, 3, 4).reshape(grid * grid, patch, patch, 3)


def _colour_name(question):
    return next(name for name in KEY_COLORS["standard"] if f" {name} " in question)


def _page_colour(seed, variant, name):
    # The page's own shade (the training variant moves key shades per page; the look is drawn first).
    look = synthetic._page_look(np.random.default_rng(seed), STYLES[variant], variant)
    return look["key_colours"][name]


def _near(pixels, rgb, tol=40.0):
    return np.linalg.norm(pixels - np.asarray(rgb, np.float32), axis=-1) < tol


@pytest.mark.parametrize("variant", ["standard", "heldout"])
def test_synthetic_targets_land_on_the_answer(variant):
    for seed in range(20):
        row = render_sample("local_color", np.random.default_rng(seed), variant=variant)
        targets = answer_patch_targets(row["boxes"], 256, 16)
        colour = _page_colour(seed, variant, _colour_name(row["question"]))
        inked = np.array([_near(p, colour).mean() for p in _patches(row["image"])])
        assert np.flatnonzero(targets).tolist() == [int(np.argmax(inked))]

        row = render_sample("region_row", np.random.default_rng(seed), variant=variant)
        targets = answer_patch_targets(row["boxes"], 256, 16)
        assert targets.sum() == 3.0
        first = int(np.flatnonzero(targets)[0])
        colour = _page_colour(seed, variant, _colour_name(row["question"]))
        assert _near(_patches(row["image"])[first - 1], colour).mean() > 0.2  # marker just left of the run (the smallest square covers 1/4 of its cell)


@pytest.mark.parametrize("variant", ["standard", "heldout"])
def test_chart_targets_cover_bar_pixels(variant):
    colours = [[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in STYLES[variant].bar_colors]
    for seed in range(10):
        row = render_sample("chart", np.random.default_rng(seed), variant=variant)
        targets = answer_patch_targets(row["boxes"], 256, 16)
        patches = _patches(row["image"])
        bar = np.array([max(_near(p, c, 30).mean() for c in colours) for p in patches])
        assert (bar >= targets - 0.15).all()  # wherever the box covers a patch, bar pixels cover it too
        x0, y0, x1, y1 = row["boxes"][0]
        assert targets.sum() * 256 == pytest.approx((x1 - x0) * (y1 - y0), abs=2 * (x1 - x0 + y1 - y0))
