"""One place per concept (#24): a selection method and a loss term are each one entry of their table, and everything
else (the config's allowed values, the trainer's checks, the evaluation's names, the training arguments, the
logged losses) follows. Each toy is registered for one test only and trains one step on the tiny preset."""

import dataclasses

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from conftest import TINY_PRESET

import modeling_arrcoc  # noqa: F401  (registers the Auto classes)
from modeling_arrcoc import ArrCocConfig
from modeling_arrcoc.data.collator import ArrCocCollator
from modeling_arrcoc.data.synthetic import NUM_VISUAL_WORDS, SyntheticConfig, make_synthetic_suite
from modeling_arrcoc.losses import LOSS_TERMS, WEIGHTED_TERMS, LossTerm, weighted_loss
from modeling_arrcoc.methods import BASELINES, parse_method
from modeling_arrcoc.selection import (
    BASELINE_SELECTIONS,
    FIXED_SELECTIONS,
    SELECTION_METHODS,
    SELECTIONS_TABLE,
    SelectionMethod,
)
from modeling_arrcoc.training.arguments import ArrCocTrainingArguments
from modeling_arrcoc.training.phases import apply_phase
from modeling_arrcoc.training.trainer import ArrCocTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_OVERRIDES = {"visual_vocab_size": max(NUM_VISUAL_WORDS, 64)}  # the synthetic words fit the adapter's vocabulary


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    suite = make_synthetic_suite(SyntheticConfig(image_size=64, patch_size=8, num_train=8, num_validation=1,
                                                 num_test=1), cache_dir=str(tmp_path_factory.mktemp("synthetic")))
    return suite["train"]


@pytest.fixture(scope="module")
def processor():
    return AutoProcessor.from_pretrained(TINY_PRESET)


def trainer_for(tmp_path, rows, processor, config=None, **overrides):
    """A phase-1 trainer on the tiny preset (one step of 4 rows, no calibration), its model built from `config`."""
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(
        AutoConfig.from_pretrained(TINY_PRESET, **TINY_OVERRIDES, **(config or {})))
    values = dict(output_dir=str(tmp_path), phase="phase1", max_steps=1, per_device_train_batch_size=4,
                  learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                  dataloader_pin_memory=False, seed=0, calibration_every=0)
    args = ArrCocTrainingArguments(**{**values, **overrides})
    apply_phase(model, "phase1")
    return ArrCocTrainer(model=model, args=args, data_collator=ArrCocCollator(processor, patch_size=8),
                         train_dataset=rows, processing_class=processor)


def test_a_selection_method_is_one_table_entry(tmp_path, rows, processor):
    """A fixed-compression toy that keeps the allocator's lowest-scored patches, registered in one place."""
    calls = []

    def lowest_first(decision, generator=None):
        calls.append(tuple(decision.patch_scores.shape))
        return -decision.patch_scores

    toy = SelectionMethod("toy_lowest", scores=lowest_first, fixed=True, baseline="toy_lowest_k",
                          style=dict(color="tab:brown", marker="v", label="lowest scores"))
    with SELECTIONS_TABLE.registered(toy):
        assert "toy_lowest" in SELECTION_METHODS and "toy_lowest" in FIXED_SELECTIONS
        assert BASELINE_SELECTIONS["toy_lowest_k"] == "toy_lowest" and "toy_lowest_k" in BASELINES
        assert parse_method("toy_lowest_k@4", [4, 16, 100]).selection == "toy_lowest"
        with pytest.raises(ValueError, match="no learned budget"):  # the trainer's fixed-baseline check applies
            ArrCocTrainingArguments(output_dir=str(tmp_path), selection_method="toy_lowest", train_budget="auto")
        trainer = trainer_for(tmp_path, rows, processor, config={"selection_method": "toy_lowest"},
                              selection_method="toy_lowest", train_budget="4")
        trainer.train()
        assert calls, "the toy scorer never ranked a training batch"
        assert trainer.state.log_history[0]["visual_tokens_mean"] == 4
        model = trainer.model.eval()
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        with torch.no_grad():
            out = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}, budget=4)
        lowest = torch.zeros_like(out.kept_patch_mask)
        lowest.scatter_(1, out.patch_scores.topk(4, largest=False).indices, True)
        assert torch.equal(out.kept_patch_mask, lowest), "the model's own selection is not the toy's"
    assert "toy_lowest" not in SELECTION_METHODS and "toy_lowest_k" not in BASELINES
    with pytest.raises(Exception, match="selection_method"):
        ArrCocConfig(selection_method="toy_lowest")


def test_a_loss_term_is_one_table_entry(tmp_path, rows, processor):
    """A toy term the model computes (a penalty on the patch scores), registered in one place with weight 0.5."""
    toy = LossTerm("toy_score_norm", weight=0.5, help="A toy penalty.",
                   compute=lambda inputs: inputs.outputs.patch_scores.float().square().mean())
    with LOSS_TERMS.registered(toy):
        assert "toy_score_norm" in WEIGHTED_TERMS
        trainer = trainer_for(tmp_path, rows, processor)
        assert trainer.loss_weights()["toy_score_norm"] == 0.5  # no argument field: the table's default weight
        trainer.train()
        assert trainer.state.log_history[0]["toy_score_norm_loss"] > 0
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        with_toy, out = trainer.compute_loss(trainer.model.train(), dict(batch), return_outputs=True)
    without_toy, plain = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
    assert out.toy_score_norm_loss > 0 and getattr(plain, "toy_score_norm_loss", None) is None
    torch.testing.assert_close(with_toy - without_toy, 0.5 * out.toy_score_norm_loss.float(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="Unknown loss components"):
        weighted_loss({"answer": out.answer_loss}, {"toy_score_norm": 1.0})


def test_training_arguments_carry_one_weight_per_term():
    """The `loss_weight_*` fields are the table's (HfArgumentParser and the YAMLs read plain float fields)."""
    fields = {f.name: f for f in dataclasses.fields(ArrCocTrainingArguments) if f.name.startswith("loss_weight_")}
    assert list(fields) == [term.argument for term in LOSS_TERMS.entries()]
    assert all(fields[term.argument].default == term.weight for term in LOSS_TERMS.entries())
