"""Synthetic suite: schema, determinism, caching, answers that match the pixels, and what pooling destroys."""

from __future__ import annotations

import ast
import dataclasses
import itertools
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modeling_arrcoc.data import synthetic
from modeling_arrcoc.data.synthetic import (
    BAR_LABELS,
    FAMILIES,
    KEY_COLORS,
    QUESTION_TEMPLATES,
    STYLES,
    SyntheticConfig,
    corpus_text,
    glyph_templates,
    make_synthetic_suite,
    pooled_view,
    render_sample,
    token_pooled_view,
)

SMALL = dict(num_train=40, num_validation=20, num_test=20)
PATCH = 16


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return make_synthetic_suite(SyntheticConfig(**SMALL), cache_dir=str(tmp_path_factory.mktemp("cache")))


def _rows(dataset):
    return [dict(row, image=np.asarray(row["image"])) for row in dataset]


def _sample(family, seed, variant="standard", **kw):
    return render_sample(family, np.random.default_rng([seed, 99]), variant=variant, **kw)


# ------------------------------------------------------------------ readers used to check rendered answers


def _shift(templates, dy, dx):
    out = np.zeros_like(templates)
    h, w = templates.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = templates[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _template_bank(patch=PATCH):
    # Every style of both variants, each also shifted by one pixel: a reader that knows the font, not the page.
    styles = np.concatenate([glyph_templates(patch, v) for v in synthetic.VARIANTS], axis=1)
    return np.concatenate([_shift(styles, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=1)


def _read_digit(coverage, templates):
    """Nearest template by normalised correlation (scale-free, so ink darkness does not matter)."""
    x = coverage.ravel() - coverage.mean()
    t = templates.reshape(10, templates.shape[1], -1)
    t = t - t.mean(-1, keepdims=True)
    score = (t @ x) / (np.linalg.norm(t, axis=-1) * np.linalg.norm(x) + 1e-9)
    return int(np.argmax(score.max(axis=1)))


def _background(pixels):
    return np.median(pixels.reshape(-1, 3), axis=0)


def _ink(pixels, background):
    # Colour-blind ink map: distance from the page colour, whatever the ink's hue.
    return np.linalg.norm(pixels.astype(np.float32) - background, axis=-1)


def _cell(pixels, box):
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return pixels[y0:y1, x0:x1]


def _colour_fraction(pixels, colour, tol=40.0):
    return float((np.linalg.norm(pixels.astype(np.float32) - np.asarray(colour, np.float32), axis=-1) < tol).mean())


def _page_colour(seed, variant, name):
    # The page's own shade of a key colour: the training variant moves each shade per page, and the look is the
    # first thing a page draws from its generator, so drawing it again from the same seed gives the same shades.
    look = synthetic._page_look(np.random.default_rng([seed, 99]), STYLES[variant], variant)
    return look["key_colours"][name]


def _asked_colour(question):
    return re.search(r"\b({})\b".format("|".join(KEY_COLORS["standard"])), question).group(1)


# ------------------------------------------------------------------------------------------- schema


def test_schema_sizes_and_variants(suite):
    assert list(suite) == ["train", "validation", "test"]
    assert {split: len(ds) for split, ds in suite.items()} == {"train": 40, "validation": 20, "test": 20}
    expected_variant = {"train": "standard", "validation": "standard", "test": "heldout"}
    for split, ds in suite.items():
        assert ds.features == synthetic.SYNTHETIC_FEATURES
        for row in ds:
            assert isinstance(row["image"], Image.Image) and row["image"].mode == "RGB"
            assert row["image"].size == (256, 256)
            assert row["question"] and row["answers"] and all(isinstance(a, str) and a for a in row["answers"])
            assert row["task"] in FAMILIES and row["source"] == "synthetic"
            assert row["variant"] == expected_variant[split]
            assert row["boxes"] and all(len(b) == 4 for b in row["boxes"])
            for x0, y0, x1, y1 in row["boxes"]:
                assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256


def test_every_family_present(suite):
    for split in ("train", "test"):
        assert set(suite[split]["task"]) == set(FAMILIES)


def test_page_boxes_are_single_aligned_cells(suite):
    for row in suite["train"]:
        if row["task"] == "chart":
            continue
        for x0, y0, x1, y1 in row["boxes"]:
            assert (x1 - x0, y1 - y0) == (PATCH, PATCH)
            assert x0 % PATCH == 0 and y0 % PATCH == 0


def test_family_weights_and_subset(tmp_path):
    only = make_synthetic_suite(
        cache_dir=str(tmp_path), num_train=12, num_validation=2, num_test=2,
        families=("chart", "local_key"), family_weights=(0.0, 1.0),
    )
    assert set(only["train"]["task"]) == {"local_key"}


def test_config_validation():
    with pytest.raises(ValueError):
        SyntheticConfig(families=("nope",))
    with pytest.raises(ValueError):
        SyntheticConfig(image_size=250)
    with pytest.raises(ValueError):
        SyntheticConfig(families=("chart",), family_weights=(1.0, 2.0))
    with pytest.raises(ValueError):
        render_sample("nope", np.random.default_rng(0))
    with pytest.raises(ValueError):
        render_sample("local_color", np.random.default_rng(0), variant="weird")


# ---------------------------------------------------------------------------- determinism and cache


def test_same_seed_identical_different_seed_differs(tmp_path):
    a = make_synthetic_suite(cache_dir=str(tmp_path / "a"), **SMALL)
    b = make_synthetic_suite(cache_dir=str(tmp_path / "b"), **SMALL)  # separate cache: really regenerated
    c = make_synthetic_suite(cache_dir=str(tmp_path / "c"), seed=1, **SMALL)
    for split in a:
        rows_a, rows_b, rows_c = _rows(a[split]), _rows(b[split]), _rows(c[split])
        for ra, rb in zip(rows_a, rows_b):
            assert np.array_equal(ra["image"], rb["image"])
            assert {k: v for k, v in ra.items() if k != "image"} == {k: v for k, v in rb.items() if k != "image"}
        same = sum(np.array_equal(ra["image"], rc["image"]) for ra, rc in zip(rows_a, rows_c))
        assert same == 0


def test_splits_are_different_streams(suite):
    train, validation = _rows(suite["train"]), _rows(suite["validation"])
    assert not any(np.array_equal(t["image"], v["image"]) for t in train for v in validation)


def test_second_call_reads_the_cache(tmp_path, monkeypatch):
    first = make_synthetic_suite(cache_dir=str(tmp_path), **SMALL)

    def must_not_render(*args, **kwargs):
        raise AssertionError("the cached suite was regenerated")

    monkeypatch.setattr(synthetic, "render_sample", must_not_render)
    start = time.perf_counter()
    second = make_synthetic_suite(cache_dir=str(tmp_path), **SMALL)
    assert time.perf_counter() - start < 5.0
    for split in first:
        assert second[split]._fingerprint == first[split]._fingerprint
        for ra, rb in zip(_rows(first[split]), _rows(second[split])):
            assert np.array_equal(ra["image"], rb["image"]) and ra["answers"] == rb["answers"]


def test_parallel_generation_is_identical(tmp_path):
    serial = make_synthetic_suite(cache_dir=str(tmp_path / "serial"), num_train=10, num_validation=2, num_test=2)
    parallel = make_synthetic_suite(
        cache_dir=str(tmp_path / "parallel"), num_proc=2, num_train=10, num_validation=2, num_test=2
    )
    for ra, rb in zip(_rows(serial["train"]), _rows(parallel["train"])):
        assert np.array_equal(ra["image"], rb["image"]) and ra["question"] == rb["question"]


def test_chart_rendering_does_not_depend_on_the_previous_chart():
    first = np.asarray(_sample("chart", 1)["image"])
    _sample("chart", 2, variant="heldout")
    assert np.array_equal(np.asarray(_sample("chart", 1)["image"]), first)


# ------------------------------------------------------------------ answers agree with what is drawn


def test_local_color_box_holds_the_one_digit_of_that_colour():
    templates = _template_bank()
    for seed in range(30):
        for variant in synthetic.VARIANTS:
            row = _sample("local_color", seed, variant)
            pixels = np.asarray(row["image"])
            colour = _page_colour(seed, variant, _asked_colour(row["question"]))
            cell = _cell(pixels, row["boxes"][0])
            assert _colour_fraction(cell, colour) > 0.02  # the cell is inked in the asked colour (antialiased)
            assert _colour_fraction(pixels, colour) * 256 * 256 < 1.2 * PATCH * PATCH  # and nowhere else
            assert str(_read_digit(_ink(cell, _background(pixels)), templates)) == row["answers"][0]


@pytest.mark.parametrize("family", ["local_key", "region_row"])
def test_marker_families_read_the_cells_right_of_the_square(family):
    templates = _template_bank()
    for seed in range(25):
        for variant in synthetic.VARIANTS:
            row = _sample(family, seed, variant)
            pixels = np.asarray(row["image"])
            background = _background(pixels)
            boxes = row["boxes"]
            assert len(boxes) == len(row["answers"][0]) == (1 if family == "local_key" else 3)
            x0, y0, x1, y1 = boxes[0]
            marker = _cell(pixels, [x0 - PATCH, y0, x0, y1])
            assert _colour_fraction(marker, _page_colour(seed, variant, _asked_colour(row["question"]))) > 0.15
            assert all(b[0] == x0 + i * PATCH and b[1] == y0 for i, b in enumerate(boxes))  # one row, in order
            for box in boxes:  # answer digits wear distractor grey: only the relation to the square marks them
                cell = _cell(pixels, box).astype(np.float32)
                inked = cell[_ink(cell, background) > 60]
                assert len(inked) and (inked.max(-1) - inked.min(-1)).max() < 30
            read = "".join(str(_read_digit(_ink(_cell(pixels, b), background), templates)) for b in boxes)
            assert read == row["answers"][0]


def test_global_count_boxes_are_every_square_of_that_colour():
    for seed in range(30):
        for variant in synthetic.VARIANTS:
            row = _sample("global_count", seed, variant)
            pixels = np.asarray(row["image"]).astype(np.float32)
            colour = _page_colour(seed, variant, _asked_colour(row["question"]))
            cells = pixels.reshape(16, PATCH, 16, PATCH, 3).transpose(0, 2, 1, 3, 4)
            hits = np.linalg.norm(cells - np.asarray(colour, np.float32), axis=-1) < 40
            squares = {(int(r) * PATCH, int(c) * PATCH) for r, c in zip(*np.nonzero(hits.mean((2, 3)) > 0.15))}
            assert len(squares) == int(row["answers"][0]) == len(row["boxes"])
            assert squares == {(int(b[1]), int(b[0])) for b in row["boxes"]}


def _bar_runs(pixels, colours):
    """Columns of bar-coloured pixels grouped into bars: (first column, last column, height in pixels)."""
    near = np.zeros(pixels.shape[:2], bool)
    for colour in colours:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], np.float32)
        near |= np.linalg.norm(pixels.astype(np.float32) - rgb, axis=-1) < 30
    columns = near.sum(axis=0)
    runs, start = [], None
    for x, count in enumerate(np.append(columns, 0)):
        if count and start is None:
            start = x
        elif not count and start is not None:
            runs.append((start, x - 1, int(columns[start:x].max())))
            start = None
    return runs, near


def test_chart_box_is_the_asked_bar():
    for seed in range(30):
        for variant in synthetic.VARIANTS:
            row = _sample("chart", seed, variant)
            pixels = np.asarray(row["image"])
            runs, near = _bar_runs(pixels, STYLES[variant].bar_colors)
            x0, y0, x1, y1 = row["boxes"][0]
            inner = near[int(np.ceil(y0)) + 1 : int(y1) - 1, int(np.ceil(x0)) + 1 : int(x1) - 1]
            assert inner.mean() > 0.97  # the box lies on the bar
            assert not near[: int(y0) - 2, int(x0) : int(x1)].any()  # and nothing of it sticks out above
            index = [i for i, (a, b, _) in enumerate(runs) if a <= (x0 + x1) / 2 <= b]
            assert len(index) == 1
            first, last, height = runs[index[0]]
            assert abs((x1 - x0) - (last - first + 1)) <= 2 and abs((y1 - y0) - height) <= 2  # and covers all of it
            if row["question"] == QUESTION_TEMPLATES["chart"][1]:
                assert height == max(h for _, _, h in runs)
                assert row["answers"][0] == BAR_LABELS[index[0]]
            else:
                assert row["question"].endswith(f"bar {BAR_LABELS[index[0]]}?")
                pixels_per_unit = 0.82 * 256 / 10  # axes height over the 0..10 range
                assert abs(height / pixels_per_unit - int(row["answers"][0])) < 0.1


# --------------------------------------------------------------------- what uniform pooling destroys


def _pooled_reading(samples, factor):
    templates = _template_bank()
    full = pooled = 0
    for row in samples:
        pixels = np.asarray(row["image"])
        background = _background(pixels)
        x0, y0, _, _ = (int(v) for v in row["boxes"][0])
        answer = int(row["answers"][0])
        full += _read_digit(_ink(_cell(pixels, row["boxes"][0]), background), templates) == answer
        # The pooled token holding the answer: factor x factor cells averaged into one cell.
        tokens = np.asarray(token_pooled_view(row["image"], PATCH, factor))
        r, c = (y0 // PATCH) // factor, (x0 // PATCH) // factor
        token = tokens[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH]
        pooled += _read_digit(_ink(token, background), templates) == answer
    return full / len(samples), pooled / len(samples)


def test_uniform_pooling_to_16_tokens_destroys_the_digit():
    """Read the local_color answer from its cell, then from the token left after 4x4 token pooling.

    Dense distractor digits are superposed on the answer when 16 cells are averaged, so the shape reader falls
    to near chance (10 classes). The colour cue itself survives any linear pooling (a colour-aware reader
    still finds it), so this checks shape detail, the thing fixed compression must lose.
    """
    samples = [_sample("local_color", seed) for seed in range(150)]
    full, pooled = _pooled_reading(samples, factor=4)
    assert full >= 0.97
    assert pooled <= 0.35


def test_pooling_check_depends_on_dense_distractors(monkeypatch):
    # Control: without distractors the same reader reads the pooled token, so the check above is not vacuous.
    sparse = dataclasses.replace(STYLES["standard"], density=(0.0, 0.0))
    monkeypatch.setitem(synthetic.STYLES, "standard", sparse)
    samples = [_sample("local_color", seed) for seed in range(150)]
    full, pooled = _pooled_reading(samples, factor=4)
    assert full >= 0.97
    assert pooled >= 0.6


def test_pooled_views_average_blocks():
    image = _sample("local_key", 3)["image"]
    pixels = np.asarray(image, np.float32)
    small = np.asarray(pooled_view(image, 4), np.float32)
    assert small.shape == (64, 64, 3)
    assert np.allclose(small[5, 7], pixels[20:24, 28:32].mean((0, 1)), atol=0.5)
    tokens = np.asarray(token_pooled_view(image, PATCH, 4), np.float32)
    assert tokens.shape == (64, 64, 3)
    cells = pixels.reshape(16, PATCH, 16, PATCH, 3)
    assert np.allclose(tokens[:PATCH, :PATCH], cells[:4, :, :4].mean((0, 2)), atol=0.5)


# ------------------------------------------------------------------------------- held-out variant


def test_heldout_differs_from_standard():
    for family in FAMILIES:
        for seed in range(5):
            standard = np.asarray(_sample(family, seed, "standard")["image"])
            heldout = np.asarray(_sample(family, seed, "heldout")["image"])
            assert not np.array_equal(standard, heldout)
    standard_bg = {tuple(_background(np.asarray(_sample("local_color", s)["image"]))) for s in range(20)}
    heldout_bg = {tuple(_background(np.asarray(_sample("local_color", s, "heldout")["image"]))) for s in range(20)}
    assert not standard_bg & heldout_bg  # tinted page colours never seen in training
    assert all(max(bg) - min(bg) >= 10 for bg in heldout_bg)
    for name in KEY_COLORS["standard"]:
        assert KEY_COLORS["standard"][name] != KEY_COLORS["heldout"][name]
    assert not set(STYLES["standard"].bar_colors) & set(STYLES["heldout"].bar_colors)
    assert glyph_templates(PATCH, "standard").shape[1] != glyph_templates(PATCH, "heldout").shape[1]


# ------------------------------------------------------------------------------ geometry and text


def test_other_geometry_keeps_glyphs_on_the_grid():
    for family in FAMILIES:
        row = render_sample(family, np.random.default_rng(4), image_size=128, patch_size=8)
        assert row["image"].size == (128, 128)
        if family != "chart":
            assert all(b[0] % 8 == 0 and b[1] % 8 == 0 and b[2] - b[0] == 8 for b in row["boxes"])


def test_corpus_covers_every_question_and_answer(suite):
    corpus = corpus_text()
    words = set(corpus.split())
    for split in suite:
        for question, answers in zip(suite[split]["question"], suite[split]["answers"]):
            assert question in corpus
            assert all(answer in words for answer in answers)
    for name in KEY_COLORS["standard"]:
        assert name in words
    assert all(f"{n:03d}" in words for n in range(1000))


def test_data_modules_do_not_import_the_model():
    package = Path(synthetic.__file__).parent
    for path in (package / name for name in ("__init__.py", "synthetic.py", "hub.py", "targets.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("modeling_arrcoc"), f"{path.name} imports {node.module}"
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                raise AssertionError(f"{path.name} imports from outside the data package")
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("modeling_arrcoc") for a in node.names)


def test_visual_words_describe_the_answer_cell():
    from modeling_arrcoc.data.synthetic import COLOR_NAMES, DARK_WORD, NUM_VISUAL_WORDS, render_sample

    for seed in range(5):
        row = render_sample("local_color", np.random.default_rng(seed))
        words = np.array(row["visual_targets"])
        assert words.shape == (256, 2) and words.min() >= 0 and words.max() < NUM_VISUAL_WORDS
        x0, y0, _, _ = row["boxes"][0]
        cell = int(y0 // 16) * 16 + int(x0 // 16)
        colour = COLOR_NAMES.index(row["question"].split()[3])
        assert words[cell].tolist() == [1 + int(row["answers"][0]), 12 + colour]
        glyph, ink = words[:, 0], words[:, 1]
        assert ((glyph == 0) == (ink == 0)).all(), "empty cells, and only they, have the empty ink word"
        assert (ink[(glyph > 0) & (ink != 12 + colour)] >= 12).all()
        assert (ink == DARK_WORD).sum() > 100, "most glyphs are dark distractors"
    chart = render_sample("chart", np.random.default_rng(0))
    assert {tuple(w) for w in chart["visual_targets"]} == {(-100, -100)}


def test_a_marked_digit_takes_its_markers_key_word():
    """local_key's asked digit is dark like every distractor; its key word is its marker's colour, so the question's
    colour finds it as it finds a red digit. Only digits right of a key square are marked."""
    from modeling_arrcoc.data.synthetic import COLOR_NAMES, FIRST_KEY_WORD, SQUARE_WORD, render_sample

    for seed in range(5):
        row = render_sample("local_key", np.random.default_rng(seed))
        words = np.array(row["visual_targets"]).reshape(16, 16, 2)
        for question, boxes in zip([row["question"]] + row["extra_questions"], [row["boxes"]] + row["extra_boxes"]):
            r, c = int(boxes[0][1] // 16), int(boxes[0][0] // 16)
            colour = COLOR_NAMES.index(question.split()[6])
            assert words[r, c - 1].tolist() == [SQUARE_WORD, FIRST_KEY_WORD + colour]
            assert 1 <= words[r, c, 0] <= 10 and words[r, c, 1] == FIRST_KEY_WORD + colour
        keyed_digits = (words[..., 0] >= 1) & (words[..., 0] <= 10) & (words[..., 1] >= FIRST_KEY_WORD) & (
            words[..., 1] < FIRST_KEY_WORD + len(COLOR_NAMES))
        assert keyed_digits.sum() == 1 + len(row["extra_questions"]), "only the marked digits take a key colour"


def test_randomized_pages_vary_their_look_but_never_take_the_heldout_values(tmp_path):
    looks = [synthetic._page_look(np.random.default_rng([s, 99]), STYLES["randomized"], "randomized")
             for s in range(40)]
    # Every page its own page colour, key shades and grey range (the held-out variant's kind of change)...
    assert len({tuple(np.round(look["background"])) for look in looks}) > 30
    assert len({tuple(np.round(look["key_colours"]["red"])) for look in looks}) > 30
    assert np.ptp([look["ink_range"][0] for look in looks]) > 30
    # ...while the held-out variant's exact glyph sizes, offsets, square margins, layout and bar look stay out.
    standard, heldout = STYLES["randomized"], STYLES["heldout"]
    sizes = {variant: {synthetic._font_size(scale, PATCH, style.pixel_step) for scale in style.font_scales}
             for variant, style in (("randomized", standard), ("heldout", heldout))}
    assert not sizes["randomized"] & sizes["heldout"]
    assert not set(synthetic._cell_units(standard.square_margins, PATCH, standard.pixel_step)) & set(
        synthetic._cell_units(heldout.square_margins, PATCH, heldout.pixel_step))
    assert not set(standard.layouts) & set(heldout.layouts)
    assert not set(standard.bar_colors) & set(heldout.bar_colors) and not set(standard.bar_widths) & set(
        heldout.bar_widths)
    heldout_shades = [np.array(KEY_COLORS["heldout"][name], np.float32) for name in KEY_COLORS["heldout"]]
    assert not any(np.allclose(look["key_colours"][name], shade) for look in looks
                   for name, shade in zip(KEY_COLORS["heldout"], heldout_shades))
    # A training option: the suite's train and validation splits take it, the test split stays held out.
    suite = make_synthetic_suite(cache_dir=str(tmp_path), num_train=4, num_validation=2, num_test=2,
                                 train_variant="randomized")
    assert [suite[split][0]["variant"] for split in synthetic.SPLITS] == ["randomized", "randomized", "heldout"]
    with pytest.raises(ValueError, match="train_variant"):
        SyntheticConfig(train_variant="fancy")


def test_randomized_key_shades_keep_their_names_apart():
    """The training look's key shades (standard shade +- key_jitter per channel) of any two names stay at least 12
    grey levels apart, so a jittered shade still has one name (docs/demo_model.md, "The held-out shades", widened the
    jitter to 48, where red and orange, blue and purple came within 14)."""
    jitter = STYLES["randomized"].key_jitter
    standard = {name: np.array(shade, np.float32) for name, shade in KEY_COLORS["standard"].items()}
    gaps = []
    for first, second in itertools.combinations(standard, 2):
        gap = np.clip(np.abs(standard[first] - standard[second]) - 2 * jitter, 0, None)  # per channel, 0 if they meet
        gaps.append(np.sqrt((gap ** 2).sum()))
        assert gaps[-1] >= synthetic.MIN_KEY_SHADE_GAP, (first, second)
    assert synthetic.key_shade_gap(jitter) == pytest.approx(min(gaps))
    assert 12 <= synthetic.key_shade_gap(48) < 15  # red/orange and blue/purple at 14


def test_key_jitter_moves_the_training_shades_only(tmp_path):
    """SyntheticConfig.key_jitter (train.py's synthetic_key_jitter) replaces the randomized look's shade range on the
    training and validation pages; the rows are otherwise the same draws, and the test pages keep their shades."""
    def shades(jitter):
        suite = make_synthetic_suite(cache_dir=str(tmp_path / str(jitter)), num_train=6, num_validation=2, num_test=4,
                                     train_variant="randomized", key_jitter=jitter, families=("local_color",))
        return suite

    default, wide = shades(None), shades(48.0)
    for split in ("train", "validation"):
        assert default[split]["question"] == wide[split]["question"]
        assert default[split]["answers"] == wide[split]["answers"]
        pixels = [np.asarray(row["image"], np.int16) for row in (default[split][0], wide[split][0])]
        assert np.abs(pixels[0] - pixels[1]).max() > 0  # the key shades moved
    assert [np.asarray(row["image"]).tobytes() for row in default["test"]] == \
        [np.asarray(row["image"]).tobytes() for row in wide["test"]]
    assert default["test"]._fingerprint == wide["test"]._fingerprint  # one cached test split, whatever the jitter
    assert default["train"]._fingerprint != wide["train"]._fingerprint
    with pytest.raises(ValueError, match="within"):
        SyntheticConfig(train_variant="randomized", key_jitter=60.0)
    with pytest.raises(ValueError, match="train_variant"):
        SyntheticConfig(key_jitter=30.0)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match=">= 0"):
            SyntheticConfig(train_variant="randomized", key_jitter=bad)


def test_half_pixel_looks_fill_the_gaps_between_whole_pixels():
    """The randomized look draws glyphs supersampled on a half-pixel grid and squares with partial coverage;
    whole-pixel looks render exactly as before, and no randomized glyph equals a held-out one pixel for pixel."""
    def centre_x(mask):
        return float((mask.sum(0) * np.arange(mask.shape[1])).sum() / mask.sum())

    left, half, right = (synthetic._digit_mask(3, 18.5, dx, 0, 16, supersample=4) for dx in (0, 0.5, 1))
    assert centre_x(left) + 0.3 < centre_x(half) < centre_x(right) - 0.3
    assert synthetic._digit_mask(3, 19, 0, 0, 16).max() == 1.0  # whole pixels: the font's own rendering
    square = synthetic._square_mask(2.5, 0, 0, 16)
    assert square[0, 0] == 0 and square[2, 5] == 0.5 and square[2, 2] == 0.25 and square[8, 8] == 1
    assert synthetic._square_mask(3, 1, -1, 16).sum() == 100
    np.testing.assert_array_equal(synthetic._square_mask(3, 1, -1, 16)[2:12, 4:14], 1)
    randomized, heldout = synthetic._glyph_bank(PATCH, "randomized"), synthetic._glyph_bank(PATCH, "heldout")
    assert len(randomized.digits[0]) > 4 * len(heldout.digits[0])
    for d in range(10):
        gap = np.abs(randomized.masks[randomized.digits[d]][:, None] - heldout.masks[heldout.digits[d]][None])
        assert gap.sum((2, 3)).min() > 1.0, f"a randomized {d} draws a held-out {d}"
    squares = np.abs(randomized.masks[randomized.squares][:, None] - heldout.masks[heldout.squares][None])
    assert squares.sum((2, 3)).min() > 1.0


def test_question_key_span_finds_each_templates_slot():
    """The asked word of every templated question (colour or bar) is found where the template put it; a question
    with no slot, or no template, has none."""
    for templates in synthetic.QUESTION_TEMPLATES.values():
        for template in templates:
            slot = "{color}" in template and synthetic.COLOR_NAMES or "{bar}" in template and synthetic.BAR_LABELS
            for word in slot or [None]:
                question = template.format(color=word, bar=word)
                span = synthetic.question_key_span(question)
                assert (question[slice(*span)] if span else None) == word, question
    assert synthetic.question_key_span("What is the red digit") is None  # not a template's question


def test_heldout_factor_probe_changes_one_factor_and_restores_the_look():
    """tools/reader_probe's held-out factors name real fields of the look; inside `heldout_look` held-out pages take
    the replaced value, and the look (and its cached glyph bank) is the held-out one again after, even on error."""
    from tools.reader_probe import HELDOUT_FACTORS, heldout_look

    fields = {field.name for field in dataclasses.fields(STYLES["heldout"])} | {"key_colours"}
    assert all(set(change) <= fields for change in HELDOUT_FACTORS.values())
    shades = dict(KEY_COLORS["heldout"])
    with heldout_look(**HELDOUT_FACTORS["standard key shades"]):
        assert KEY_COLORS["heldout"] == KEY_COLORS["standard"]
    assert KEY_COLORS["heldout"] == shades
    original = _sample("local_color", 3, "heldout")
    bank = synthetic._glyph_bank(PATCH, "heldout").masks.copy()
    with heldout_look(**HELDOUT_FACTORS["standard glyph sizes and offsets"]):
        changed = synthetic._glyph_bank(PATCH, "heldout").masks
        assert changed.shape != bank.shape or not np.array_equal(changed, bank)
        standard = synthetic._glyph_bank(PATCH, "standard")
        digits = 1 + sum(len(styles) for styles in standard.digits)  # the empty cell, then every digit style
        np.testing.assert_array_equal(changed[:digits], standard.masks[:digits])
    with pytest.raises(RuntimeError), heldout_look(layouts=("uniform",)):
        raise RuntimeError("probe failed")
    np.testing.assert_array_equal(synthetic._glyph_bank(PATCH, "heldout").masks, bank)
    assert np.array_equal(np.asarray(_sample("local_color", 3, "heldout")["image"]), np.asarray(original["image"]))


def test_heldout_accuracy_answers_the_same_questions_per_factor_and_pairs_them(tiny):
    """tools/reader_probe --heldout-accuracy: every factor answers the same held-out test questions (so the paired
    difference against the held-out look is reported), except the layout, which redraws the pages and is left
    unpaired; each row's accuracy is the mean of its families' answers."""
    from tools.reader_probe import HELDOUT_FACTORS, heldout_accuracy, heldout_accuracy_table

    model, processor = tiny
    rows = heldout_accuracy(model, processor, questions=6, families=("local_color", "global_count"))
    assert [row["factor"] for row in rows] == list(HELDOUT_FACTORS)
    by_name = {row["factor"]: row for row in rows}
    assert by_name["held-out look"]["paired"] is None and by_name["standard layout (uniform)"]["paired"] is None
    shades = by_name["standard key shades"]["paired"]
    assert shades["n"] == 6 and shades["accuracy_first"] == pytest.approx(by_name["held-out look"]["mean"])
    assert shades["accuracy_second"] == pytest.approx(by_name["standard key shades"]["mean"])
    assert set(by_name["held-out look"]["families"]) == {"local_color", "global_count"}
    assert KEY_COLORS["heldout"] != KEY_COLORS["standard"], "the look is restored after"
    table = heldout_accuracy_table(rows)
    assert table.count("\n") == len(rows) + 1 and "other pages" in table


def test_count_sink_shares_cover_every_question_by_true_count(tiny):
    """tools/reader_probe --count-questions: each validation count question lands under its true count once, with
    one sink share per head of the supervised layer (an attention weight) and its greedy answer counted."""
    from tools.reader_probe import count_sink_shares

    model, processor = tiny
    heads = model.config.text_config.num_attention_heads
    shares = count_sink_shares(model, processor, questions=6, batch_size=4)
    assert sum(row["questions"] for row in shares.values()) == 6
    for n, row in shares.items():
        assert 1 <= n <= 9 and row["target"] == pytest.approx(1 / (n + 1))
        assert len(row["sink_share"]) == heads and all(0.0 <= value <= 1.0 for value in row["sink_share"])
        assert sum(row["answers"].values()) == row["questions"]
    weighted = count_sink_shares(model, processor, questions=6, batch_size=4, sink_weight=6.0)
    for n, row in weighted.items():  # the same attention, the weighted target w/(n+w) beside it
        assert row["target"] == pytest.approx(6 / (n + 6)) and row["sink_share"] == shares[n]["sink_share"]


@pytest.mark.parametrize("option, value, message", [
    ("--count-questions", "-3", "expected a whole number 0 or more, not '-3'"),
    ("--pages", "0", "expected a whole number 1 or more, not '0'"),
    ("--tokens", "-4", "expected a whole number 1 or more, not '-4'"),
    ("--marker-pages", "many", "expected a whole number 0 or more, not 'many'")])
def test_reader_probe_refuses_a_count_below_its_minimum_by_name(option, value, message, capsys):
    from tools.reader_probe import main

    with pytest.raises(SystemExit):
        main(["no/such/checkpoint", option, value])  # refused while parsing, before any checkpoint is read
    error = capsys.readouterr().err
    assert option in error and message in error
