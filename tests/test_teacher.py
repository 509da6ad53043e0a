"""Teacher pseudo-labels for the alignment loss (training/teacher.py): scores on the right tokens, normalized, from the
answer (for the teacher only), cached on disk and reused by a second run; the collator's alignment_targets."""

import json

import datasets
import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from conftest import TINY_PRESET
from modeling_arrcoc.data.collator import ArrCocCollator
from modeling_arrcoc.data.synthetic import NUM_VISUAL_WORDS, make_synthetic_suite
from modeling_arrcoc.training import recipe
from modeling_arrcoc.training import teacher as teacher_module
from modeling_arrcoc.training.arguments import ArrCocTrainingArguments
from modeling_arrcoc.training.teacher import (
    add_teacher_targets,
    load_teacher,
    resample_to_grid,
    teacher_patch_scores,
    visual_token_starts,
)

OVERRIDES = {"visual_vocab_size": max(NUM_VISUAL_WORDS, 64)}


pytestmark = pytest.mark.usefixtures("one_thread")


FAMILIES = ["local_color", "local_key", "global_count"]


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def suite(suite_dir):
    return make_synthetic_suite(image_size=64, patch_size=8, num_train=12, num_validation=4, num_test=1,
                                families=tuple(FAMILIES), cache_dir=suite_dir)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random-weight ArrCoc checkpoint (the teacher), saved the way train.py saves one."""
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(TINY_PRESET, **OVERRIDES))
    path = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(path)
    AutoProcessor.from_pretrained(TINY_PRESET).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def batch(suite, checkpoint):
    rows = [suite["train"][i] for i in range(6)]
    return ArrCocCollator(AutoProcessor.from_pretrained(checkpoint), patch_size=8)(rows)


def test_visual_token_starts_point_at_the_patches_in_raster_order(checkpoint, batch):
    model, _ = load_teacher(checkpoint)
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    multimodal = model.model.prepare_multimodal_inputs(**inputs, labels=batch["labels"],
                                                      pixel_values=batch["pixel_values"], budget="full")
    image = model.model.get_image_features(**inputs, pixel_values=batch["pixel_values"], budget="full")
    n = model.config.num_patches
    assert image.kept_patch_mask.all() and torch.equal(image.token_sources, torch.arange(n).expand(6, -1))
    starts = visual_token_starts(batch["input_ids"], batch["attention_mask"], model.config.image_token_id, n,
                                 multimodal.inputs_embeds.shape[1])
    assert len(set(starts.tolist())) > 1  # prompts of different lengths: the check below is not trivial
    for b, start in enumerate(starts.tolist()):
        torch.testing.assert_close(multimodal.inputs_embeds[b, start:start + n], image.pooler_output[b])


@pytest.mark.parametrize("scoring", ["grad_input", "attention"])
def test_scores_are_a_distribution_over_patches_made_from_the_answer(scoring, checkpoint, batch):
    model, _ = load_teacher(checkpoint, scoring)
    scores = teacher_patch_scores(model, batch, scoring)
    assert scores.shape == (6, model.config.num_patches) and (scores >= 0).all()
    torch.testing.assert_close(scores.sum(-1), torch.ones(6))
    other = dict(batch, labels=batch["labels"].clone(), input_ids=batch["input_ids"].clone())
    answer = other["labels"] != -100
    other["input_ids"][answer] = (other["input_ids"][answer] + 7) % 400 + 10  # other answer tokens, same lengths
    other["labels"][answer] = other["input_ids"][answer]
    assert not torch.allclose(teacher_patch_scores(model, other, scoring), scores)  # the teacher reads the answer


def test_the_trained_allocator_never_sees_the_answer(checkpoint, batch):
    model, _ = load_teacher(checkpoint)
    other = dict(batch, labels=batch["labels"].clone(), input_ids=batch["input_ids"].clone())
    answer = other["labels"] != -100
    other["input_ids"][answer] = (other["input_ids"][answer] + 7) % 400 + 10
    other["labels"][answer] = other["input_ids"][answer]
    keys = ("input_ids", "attention_mask", "pixel_values", "labels")
    with torch.no_grad():
        mine = model(**{k: batch[k] for k in keys}, patch_targets=batch["patch_targets"])
        theirs = model(**{k: other[k] for k in keys}, patch_targets=batch["patch_targets"])
    torch.testing.assert_close(mine.patch_scores, theirs.patch_scores)
    torch.testing.assert_close(mine.budget_logits, theirs.budget_logits)


def test_attention_scoring_needs_an_eager_teacher(checkpoint, batch):
    model, _ = load_teacher(checkpoint, "grad_input")
    model.config.text_config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match="eager"):
        teacher_patch_scores(model, batch, "attention")


def test_resample_to_grid():
    scores = torch.rand(2, 16)
    scores = scores / scores.sum(-1, keepdim=True)
    assert resample_to_grid(scores, (4, 4), (4, 4)) is scores
    for grid in ((8, 8), (2, 2), (3, 5)):
        resized = resample_to_grid(scores, (4, 4), grid)
        assert resized.shape == (2, grid[0] * grid[1]) and (resized >= 0).all()
        torch.testing.assert_close(resized.sum(-1), torch.ones(2))
    peak = torch.zeros(1, 16)
    peak[0, 0] = 1  # top-left patch -> the top-left of the finer grid
    assert resample_to_grid(peak, (4, 4), (8, 8)).view(8, 8)[:2, :2].sum() > 0.5


def test_targets_are_computed_once_and_read_back(suite, checkpoint, tmp_path, monkeypatch):
    rows = suite["train"].select(range(5))
    rows = datasets.concatenate_datasets([rows, rows.select([0]).map(lambda r: {"answers": []})])
    first = add_teacher_targets(rows, checkpoint, (8, 8), tmp_path, batch_size=4)
    targets = torch.tensor(first["teacher_targets"])
    torch.testing.assert_close(targets[:5].sum(-1), torch.ones(5))
    assert targets[5].abs().sum() == 0  # a row without an answer: no target (the anti-collapse term)
    assert first["question"] == rows["question"]

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher was loaded although its scores are cached")

    monkeypatch.setattr(teacher_module, "load_teacher", refuse)
    second = add_teacher_targets(rows, checkpoint, (8, 8), tmp_path, batch_size=4)
    assert second["teacher_targets"] == first["teacher_targets"]
    with pytest.raises(AssertionError, match="cached"):  # another scoring is another cache entry
        add_teacher_targets(rows, checkpoint, (8, 8), tmp_path, scoring="attention")
    with pytest.raises(ValueError, match="streaming"):
        add_teacher_targets(rows.to_iterable_dataset(), checkpoint, (8, 8), tmp_path)


def test_collator_alignment_targets(suite, checkpoint):
    processor = AutoProcessor.from_pretrained(checkpoint)
    rows = [dict(suite["train"][i], teacher_targets=[1.0 / 64] * 64) for i in range(3)]
    boxes = ArrCocCollator(processor, patch_size=8)(rows)
    teacher = ArrCocCollator(processor, patch_size=8, alignment_targets="teacher")(rows)
    none = ArrCocCollator(processor, patch_size=8, alignment_targets="none")(rows)
    assert boxes["patch_targets"].max() == 1 and boxes["patch_targets"].sum(-1).min() > 0
    torch.testing.assert_close(teacher["patch_targets"], torch.full((3, 64), 1.0 / 64))
    assert "patch_targets" not in none
    assert "patch_targets" not in ArrCocCollator(processor, 8, alignment_targets="teacher")(
        [suite["train"][i] for i in range(3)])  # rows without the column: no targets
    with pytest.raises(ValueError, match="alignment_targets"):
        ArrCocCollator(processor, patch_size=8, alignment_targets="box")


@pytest.mark.parametrize("values, message", [
    (dict(alignment_targets="teacher"), "needs teacher_checkpoint"),
    (dict(alignment_targets="boxs"), "alignment_targets must be one of"),
    (dict(teacher_checkpoint="x"), "teacher_checkpoint is set"),
    (dict(alignment_targets="teacher", teacher_checkpoint="x", teacher_scoring="saliency"), "teacher_scoring"),
])
def test_arguments_are_checked(values, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        ArrCocTrainingArguments(output_dir=str(tmp_path), **values)


def test_train_py_with_teacher_targets_reuses_them_on_a_second_run(suite_dir, checkpoint, tmp_path, monkeypatch):
    config = dict(model_preset="configs/model/tiny", config_overrides=OVERRIDES, synthetic_num_train=12,
                  synthetic_num_validation=4, synthetic_families=FAMILIES, synthetic_cache_dir=suite_dir,
                  phase="phase1", max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1,
                  report_to="none", disable_tqdm=True, dataloader_pin_memory=False, save_strategy="no",
                  calibration_every=0, output_dir=str(tmp_path / "out"), alignment_targets="teacher",
                  teacher_checkpoint=str(checkpoint), learning_curve_every=2, learning_curve_samples=4)
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump(config))
    trainer = recipe.main([str(path)])
    history = [h for h in trainer.state.log_history if "alignment_loss" in h]
    assert history and all(h["alignment_loss"] > 0 for h in history)
    cached = list((tmp_path / "out" / "teacher_targets").iterdir())
    assert len(cached) == 1 and (cached[0] / "dataset_info.json").exists()
    curve = json.loads((tmp_path / "out" / "learning_curve.json").read_text())
    assert curve["points"][-1]["methods"]["auto"]["coverage"] is not None  # curves score the true boxes' coverage

    monkeypatch.setattr(teacher_module, "load_teacher", lambda *a, **k: pytest.fail("teacher loaded again"))
    again = recipe.main([str(path)])
    assert again.train_dataset["teacher_targets"] == trainer.train_dataset["teacher_targets"]
