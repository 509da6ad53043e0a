"""The reader's dense supervision (training/reader.py): several questions per image, the views a method-neutral base
trains on (full, sparse answer + distractors, pooled), the distractor curriculum and the language model's attention
supervision. Tiny preset, CPU."""

import argparse
import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from conftest import TINY_PRESET

from modeling_arrcoc.cli import positive_number
from modeling_arrcoc.data import render_sample
from modeling_arrcoc.data.collator import ArrCocCollator, row_turns
from modeling_arrcoc.data.synthetic import COLOR_NAMES, COUNT_FAMILIES
from modeling_arrcoc.training.phases import apply_phase
from modeling_arrcoc.training.reader import (
    answer_prediction_positions,
    count_target_kl,
    curriculum_tier_cap,
    llm_attention_loss,
    query_side_attentions,
    question_attention_loss,
    scale_attention_logits,
    sparse_view_scores,
    step_view,
    visual_words_loss,
)
from modeling_arrcoc.training.trainer import ArrCocTrainer

from test_training import data_args, datasets, make_args, processor, tiny_model  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def page_rows(family="local_color", count=3, image_size=64, patch_size=8):
    return [render_sample(family, np.random.default_rng(i), image_size, patch_size) for i in range(count)]


# --- several questions per image -----------------------------------------------------------------------------------


def test_every_question_of_a_page_is_answered_by_its_cells():
    """Each extra question's answer is the digit the page draws in that question's colour cell."""
    row = render_sample("local_color", np.random.default_rng(3))
    words = np.asarray(row["visual_targets"]).reshape(16, 16, 2)
    turns = row_turns(row, questions_per_image=10)
    assert len(turns) >= 3 and len({question for question, _, _ in turns}) == len(turns)
    for question, answer, boxes in turns:
        (x0, y0, _, _), = boxes
        glyph, _ = words[int(y0) // 16, int(x0) // 16]
        assert glyph == 1 + int(answer), question


def test_multi_question_collator_supervises_every_answer(processor):  # noqa: F811
    rows = page_rows()
    single = ArrCocCollator(processor, patch_size=8)(rows)
    multi = ArrCocCollator(processor, patch_size=8, questions_per_image=3)(rows)
    tokenizer = processor.tokenizer
    for b, row in enumerate(rows):
        turns = row_turns(row, 3)
        labels = multi["labels"][b]
        assert tokenizer.decode(labels[labels != -100]) == "".join(f"{a}{tokenizer.eos_token}" for _, a, _ in turns)
        text = tokenizer.decode(multi["input_ids"][b][multi["attention_mask"][b].bool()])
        assert text.count("<image>") == 1 and all(question in text for question, _, _ in turns)
        assert len(answer_prediction_positions(multi["labels"][b : b + 1])[0]) == len(turns)
    # The first turn is exactly the single-question prompt, and its answer region is the row's own.
    torch.testing.assert_close(multi["turn_patch_targets"][:, 0], single["patch_targets"])
    torch.testing.assert_close(multi["patch_targets"], multi["turn_patch_targets"].amax(1))
    with pytest.raises(ValueError, match="questions_per_image"):
        ArrCocCollator(processor, questions_per_image=0)


# --- views and the distractor curriculum ---------------------------------------------------------------------------


def test_sparse_view_keeps_every_answer_patch_then_random_distractors():
    targets = torch.zeros(2, 64)
    targets[0, [3, 40]] = 1.0
    targets[1, 7] = 0.5
    scores = sparse_view_scores(targets, torch.Generator().manual_seed(0))
    top = scores.topk(5, dim=-1).indices
    assert {3, 40} <= set(top[0].tolist()) and 7 in top[1].tolist()
    other = sparse_view_scores(targets, torch.Generator().manual_seed(1)).topk(5, dim=-1).indices
    assert set(other[0].tolist()) != set(top[0].tolist())  # the distractors are random


def test_view_draw_is_a_function_of_the_step_and_follows_its_weights():
    weights = {"full": 0.5, "sparse": 0.5}
    draws = [step_view(0, step, weights) for step in range(400)]
    assert draws == [step_view(0, step, weights) for step in range(400)]
    assert set(draws) == {"full", "sparse"} and 120 < draws.count("full") < 280
    assert {step_view(0, step, {"pooled": 1.0, "full": 0.0}) for step in range(50)} == {"pooled"}
    with pytest.raises(ValueError, match="training_views"):
        step_view(0, 0, {"everything": 1.0})


def test_distractor_curriculum_grows_to_full():
    caps = [curriculum_tier_cap(step, 100, 5) for step in range(0, 200, 10)]
    assert caps[0] == 0 and caps == sorted(caps) and caps[-1] == 4 and curriculum_tier_cap(100, 100, 5) == 4
    assert curriculum_tier_cap(0, 0, 5) == 4  # no curriculum: every tier from the start


# --- the language model's attention supervision --------------------------------------------------------------------


def test_attention_loss_reads_the_answer_tokens_attention():
    """Hand-made attention: the loss is -log(mass on the answer's visual tokens) at each answer-predicting position."""
    # Prompt: [pad, q, <image>, q, q, a0, q, a1]; 3 visual tokens replace <image> -> spliced length 9 + 2 - 1 = 9.
    image_id = 5
    input_ids = torch.tensor([[0, 1, image_id, 2, 2, 7, 2, 8]])
    attention_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, -100, -100, -100, 7, -100, 8]])
    visual_mask = torch.ones(1, 3, dtype=torch.bool)
    token_sources = torch.tensor([[10, 20, 30]])
    turn_targets = torch.zeros(1, 2, 64)
    turn_targets[0, 0, 20] = 1.0  # turn 0 answers from the second visual token
    turn_targets[0, 1, 30] = 1.0  # turn 1 from the third
    length = 9  # 7 kept text tokens - 1 placeholder + 3 visual
    attention = torch.zeros(1, 1, length, length)
    # Spliced layout: [q, v0, v1, v2, q, q, a0, q, a1]: visual tokens at 1..3; turn 0 is predicted from position 5,
    # turn 1 from position 7.
    attention[0, 0, 5, 2] = 0.25
    attention[0, 0, 7, 3] = 0.5
    loss = llm_attention_loss([attention], [0], input_ids, attention_mask, labels, image_id, visual_mask,
                              token_sources, turn_targets)
    torch.testing.assert_close(loss, -(torch.log(torch.tensor(0.25)) + torch.log(torch.tensor(0.5))) / 2)
    turn_targets[0, :, :] = 0.0
    assert llm_attention_loss([attention], [0], input_ids, attention_mask, labels, image_id, visual_mask,
                              token_sources, turn_targets) is None


def test_count_target_keeps_a_sink_whose_share_is_the_count():
    """For a count, attention with all its mass on the counted tokens loses n (their average does not depend on it):
    the target is uniform over the n counted tokens and the answer-predicting position itself, as a KL divergence,
    0 when matched. Rows not marked as counts keep -log(mass)."""
    image_id = 5
    # Prompt: [q, <image>, q, a0]; 3 visual tokens -> spliced [q, v0, v1, v2, q, a0]; a0 is predicted from 4.
    input_ids = torch.tensor([[1, image_id, 2, 7]])
    attention_mask, labels = torch.ones(1, 4, dtype=torch.long), torch.tensor([[-100, -100, -100, 7]])
    visual_mask, token_sources = torch.ones(1, 3, dtype=torch.bool), torch.tensor([[10, 20, 30]])
    turn_targets = torch.zeros(1, 1, 64)
    turn_targets[0, 0, [10, 30]] = 1.0  # two counted squares: v0 and v2

    def loss(row, count):
        attention = torch.zeros(1, 1, 6, 6)
        attention[0, 0, 4] = torch.tensor(row)
        return llm_attention_loss([attention], [0], input_ids, attention_mask, labels, image_id, visual_mask,
                                  token_sources, turn_targets, count_rows=torch.tensor([count]))

    counted_and_sink = [0.0, 1 / 3, 0.0, 1 / 3, 1 / 3, 0.0]
    counted_only = [0.0, 0.5, 0.0, 0.5, 0.0, 0.0]
    torch.testing.assert_close(loss(counted_and_sink, True), torch.tensor(0.0))
    assert loss(counted_only, True) > 3.0  # no mass on the sink: n is lost
    torch.testing.assert_close(loss(counted_only, False), torch.tensor(0.0))  # not a count: mass on the answer
    torch.testing.assert_close(loss(counted_and_sink, False), -torch.log(torch.tensor(2 / 3)))
    # A count may have its own head: head 1 holds the count pattern, head 0 the cell lookup's.
    attention = torch.zeros(1, 2, 6, 6)
    attention[0, 0, 4], attention[0, 1, 4] = torch.tensor(counted_only), torch.tensor(counted_and_sink)
    for head, expected in ((None, loss(counted_only, True)), (1, torch.tensor(0.0))):
        torch.testing.assert_close(llm_attention_loss([attention], [0], input_ids, attention_mask, labels, image_id,
                                                      visual_mask, token_sources, turn_targets,
                                                      count_rows=torch.tensor([True]), count_head=head), expected)


def test_collator_marks_count_rows(processor):  # noqa: F811
    rows = page_rows(count=2) + page_rows("global_count", count=2)
    batch = ArrCocCollator(processor, patch_size=8, questions_per_image=2)(rows)
    assert batch["count_answers"].tolist() == [row["task"] in COUNT_FAMILIES for row in rows] == [False] * 2 + [True] * 2


@pytest.mark.parametrize("key_after_image", [True, False])
def test_question_attention_loss_reads_the_key_words_attention(key_after_image):
    """Hand-made attention: the loss is -log(mass on the turn's key-word tokens), whose spliced positions move by
    the image's K - 1 extra tokens when the word follows the image (image first) and not when it precedes it."""
    image_id, visual = 5, 3
    # Prompt: [pad, k, <image>, q, a0] or [pad, <image>, k, q, a0]; turn 0's key word is k.
    input_ids = torch.tensor([[0, 9, image_id, 2, 7]] if not key_after_image else [[0, image_id, 9, 2, 7]])
    attention_mask = torch.tensor([[0, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, -100, -100, 7]])
    key_tokens = (input_ids == 9)[:, None]  # [B, Q=1, L]
    length = 4 - 1 + visual  # spliced: 4 kept tokens, the placeholder replaced by 3 visual tokens
    key_at = visual if key_after_image else 0  # [v, v, v, k, q, a0] or [k, v, v, v, q, a0]
    attention = torch.zeros(1, 1, length, length)
    attention[0, 0, length - 2, key_at] = 0.25  # a0 is predicted from the position before it
    loss = question_attention_loss([attention], [0], input_ids, attention_mask, labels, image_id,
                                   torch.ones(1, visual, dtype=torch.bool), key_tokens)
    torch.testing.assert_close(loss, -torch.log(torch.tensor(0.25)))
    assert question_attention_loss([attention], [0], input_ids, attention_mask, labels, image_id,
                                   torch.ones(1, visual, dtype=torch.bool), torch.zeros_like(key_tokens)) is None


def test_question_keys_mark_each_turns_asked_word(processor):  # noqa: F811
    """The collator's `turn_key_tokens` hold, per turn, the tokens of the colour that turn's question names; the
    prompts are unchanged, and a single question gives the single-question prompt."""
    rows = page_rows(count=4) + page_rows("global_count", count=2)
    for per_image in (1, 3):
        plain = ArrCocCollator(processor, patch_size=8, questions_per_image=per_image)(rows)
        keyed = ArrCocCollator(processor, patch_size=8, questions_per_image=per_image, question_keys=True)(rows)
        assert torch.equal(plain["input_ids"], keyed["input_ids"]) and torch.equal(plain["labels"], keyed["labels"])
        for b, row in enumerate(rows):
            turns = row_turns(row, per_image)
            for q, (question, _, _) in enumerate(turns):
                word = processor.tokenizer.decode(keyed["input_ids"][b][keyed["turn_key_tokens"][b, q]]).strip()
                assert word and f" {word} " in f" {question} " and word in COLOR_NAMES, (question, word)
            assert not keyed["turn_key_tokens"][b, len(turns):].any()


@pytest.mark.parametrize("words", [0.0, 1.0])
def test_question_attention_trains_layer_0(words, tmp_path, datasets, processor):  # noqa: F811
    """A training step with the question-attention loss (and the visual words read back after layer 0): each loss is
    logged and reaches layer 0's queries (the visual attention loss is off, so nothing else asks for attention)."""
    model = tiny_model()
    args = make_args(tmp_path, "pretrain", max_steps=1, training_views={"pooled": 1.0}, train_budget="random",
                     questions_per_image=2, loss_weight_question_attention=1.0, calibration_every=0,
                     train_tier_weights={4: 1.0, 16: 1.0}, loss_weight_llm_visual_words=words)
    apply_phase(model, "pretrain")
    collator = ArrCocCollator(processor, patch_size=8, questions_per_image=2, question_keys=True)
    trainer = ArrCocTrainer(model=model, args=args, data_collator=collator, train_dataset=datasets[0],
                            processing_class=processor)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    trainer.compute_loss(trainer.model, dict(batch)).backward()
    logged = trainer._metrics["train"].get("question_attention_loss")
    assert logged and logged[-1] > 0
    assert bool(trainer._metrics["train"].get("llm_visual_words_loss")) == bool(words)
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="question_attention_layers must be layers"):
        ArrCocTrainer(model=model, args=dataclasses.replace(args, question_attention_layers=[9]),
                      data_collator=collator, train_dataset=datasets[0], processing_class=processor)


def test_visual_words_loss_reads_each_visual_position_through_the_table():
    """Hand-made hidden states: a visual position that holds its word's table row costs almost nothing, one that holds
    another word's row costs the temperature; text positions are never read, and tokens without words are skipped."""
    image_id = 5
    input_ids = torch.tensor([[0, 1, image_id, 2], [1, image_id, 2, 3]])  # row 0 left-padded
    attention_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    visual_mask = torch.tensor([[True, True], [True, False]])  # row 1 has one real visual token
    table = torch.eye(4)
    targets = torch.tensor([[[2], [3]], [[1], [-100]]])  # [B, K, M=1]
    length = 4  # row 0: 3 kept tokens - 1 + 2 visual; row 1: 4 - 1 + 1
    hidden = torch.zeros(2, length, 4)
    hidden[0, 1], hidden[0, 2] = table[2], table[3]  # [q, v0, v1, q]
    hidden[1, 1] = table[1]  # [q, v0, q, q]
    hidden[:, -1], hidden[1, 2] = table[0], table[0]  # text positions, never read
    args = (input_ids, attention_mask, image_id, visual_mask, targets, table)
    right = visual_words_loss([hidden], [0], *args)
    assert right < 1e-3
    hidden[0, 2] = table[0]
    # The wrong row: its word's logit 0 against 10 for the row's word, so -log softmax = log(e^10 + 3).
    torch.testing.assert_close(visual_words_loss([hidden], [0], *args) * 3,
                               right * 2 + torch.log(torch.exp(torch.tensor(10.0)) + 3))
    assert visual_words_loss([hidden], [0], *args[:4], torch.full_like(targets, -100), table) is None


def _reader_batch(tmp_path, datasets, processor, model, **overrides):  # noqa: F811
    args = make_args(tmp_path, "pretrain", training_views={"sparse": 1.0}, train_budget="random",
                     train_tier_weights={4: 1.0, 16: 1.0}, calibration_every=0, questions_per_image=2, **overrides)
    apply_phase(model, "pretrain")
    trainer = ArrCocTrainer(model=model, args=args, data_collator=ArrCocCollator(processor, patch_size=8,
                                                                               questions_per_image=2),
                            train_dataset=datasets[0], processing_class=processor)
    batch = dict(trainer._prepare_inputs(next(iter(trainer.get_train_dataloader()))))
    for key in ("sample_index", "budget_tier", "turn_patch_targets", "count_answers"):
        batch.pop(key, None)
    return trainer, batch


@pytest.mark.parametrize("head", [0, 1])  # the tiny LLM: 2 query heads share 1 key head
def test_query_side_attention_is_the_models_own_in_value(head, tmp_path, datasets, processor):  # noqa: F811
    """Recomputed from each layer's input (left padding, rotary positions, grouped key heads), one head's attention
    equals the eager attention the model returns, at every real query position."""
    model = tiny_model()
    model.model.language_model.set_attn_implementation("eager")
    _, batch = _reader_batch(tmp_path, datasets, processor, model)
    model.eval()
    with torch.no_grad():
        out = model(**batch, budget=16, output_attentions=True, output_hidden_states=True)
    layers = list(range(model.config.text_config.num_hidden_layers))
    recomputed = query_side_attentions(model.model.language_model, out.hidden_states, layers, head,
                                       batch["input_ids"], batch["attention_mask"], model.config.image_token_id,
                                       out.image_outputs.visual_token_mask)
    real = batch["attention_mask"].sum(-1) - 1 + out.image_outputs.visual_token_mask.sum(-1)  # spliced row lengths
    length = out.attentions[0].shape[-1]
    assert len(set(real.tolist())) > 1  # rows of different lengths: the left padding is exercised
    for layer in layers:
        for b in range(len(real)):
            rows = slice(length - int(real[b]), length)
            torch.testing.assert_close(recomputed[layer][b, 0, rows], out.attentions[layer][b, head, rows].float(),
                                       atol=1e-5, rtol=1e-4)


def test_query_side_attention_gives_the_visual_tokens_no_gradient(tmp_path, datasets, processor):  # noqa: F811
    """A loss on layer 0's recomputed head reaches the head's projections, never the vision side: the visual
    positions' input is detached in its path (at later layers the text positions still carry the earlier layers'
    reading of the visual tokens; reader.py)."""
    model = tiny_model()
    _, batch = _reader_batch(tmp_path, datasets, processor, model)
    out = model(**batch, budget=16, output_hidden_states=True)
    attention = query_side_attentions(model.model.language_model, out.hidden_states, [0], 0, batch["input_ids"],
                                      batch["attention_mask"], model.config.image_token_id,
                                      out.image_outputs.visual_token_mask)[0]
    model.zero_grad(set_to_none=True)
    attention[:, 0, -1].square().sum().backward()
    vision = [p.grad for name, p in model.named_parameters() if "quality_adapter" in name and p.requires_grad]
    assert vision and all(grad is None or not grad.any() for grad in vision)
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.model.language_model.layers[0].self_attn.k_proj.weight.grad.abs().sum() > 0


def test_attention_logit_scale_multiplies_every_layers_logits(tmp_path, datasets, processor):  # noqa: F811
    """After scale_attention_logits(s), layer 0's log-attention differences between two keys are s times the
    original's in every head: the softmax's logits are multiplied by s (QK-norm's bound lifted). Later layers read
    layer 0's changed output, so only their norm weights are compared (tests/test_training.py)."""
    model = tiny_model()
    model.model.language_model.set_attn_implementation("eager")
    _, batch = _reader_batch(tmp_path, datasets, processor, model)
    model.eval()

    def log_attention_margins():
        with torch.no_grad():
            out = model(**batch, budget=16, output_attentions=True)
        # The last position (a real token in every left-padded row) against its first two real keys' logits.
        rows = [attention[:, :, -1].double().clamp(min=1e-30).log() for attention in out.attentions]
        first = out.attentions[0].shape[-1] - batch["attention_mask"].sum(-1).min()
        return torch.stack([row[..., -1] - row[..., int(first)] for row in rows])

    before = log_attention_margins()
    assert scale_attention_logits(model.model.language_model, scale=3.0) == model.config.text_config.num_hidden_layers
    torch.testing.assert_close(log_attention_margins()[0], 3.0 * before[0], atol=1e-4, rtol=1e-3)
    assert before[0].abs().min() > 1e-3  # margins that could have failed to scale
    with pytest.raises(ValueError, match="must be positive"):
        scale_attention_logits(model.model.language_model, scale=0.0)
    with pytest.raises(ValueError, match="has none"):
        scale_attention_logits(torch.nn.Linear(2, 2), scale=2.0)


@pytest.mark.parametrize("views", [{"full": 1.0}, {"sparse": 1.0}, {"pooled": 1.0}])
def test_reader_stage_trains_a_step_in_each_view(views, tmp_path, datasets, processor):  # noqa: F811
    model = tiny_model()
    model.config.relevance_tag = False
    args = make_args(tmp_path, "pretrain", max_steps=2, training_views=views, train_budget="random",
                     questions_per_image=3, loss_weight_llm_attention=1.0, llm_attention_layers=[1],
                     calibration_every=0, train_tier_weights={4: 1.0, 16: 1.0})
    apply_phase(model, "pretrain")
    trainer = ArrCocTrainer(model=model, args=args, data_collator=ArrCocCollator(processor, patch_size=8,
                                                                               questions_per_image=3),
                            train_dataset=datasets[0], processing_class=processor)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    loss, out = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
    counts = out.visual_token_counts.unique().tolist()
    attention = trainer._metrics["train"].get("llm_attention_loss")
    if "pooled" in views:
        assert counts[0] < model.config.num_patches and not attention  # no attention targets on pooled cells
    else:
        assert attention and attention[-1] > 0
    if "full" in views:
        assert counts == [model.config.num_patches]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())


def test_count_sink_changes_the_attention_loss_of_count_rows_only(tmp_path, datasets, processor):  # noqa: F811
    """The trainer hands the collator's count flags to the attention loss only with llm_attention_count_sink (and
    the sink's weight with them); the same batch's loss then differs exactly when it holds a count question."""
    losses, counts = [], []
    for sink, weight in ((False, 1.0), (True, 1.0), (True, 6.0)):
        torch.manual_seed(0)
        trainer, _ = _reader_batch(tmp_path, datasets, processor, tiny_model(), loss_weight_llm_attention=1.0,
                                   llm_attention_layers=[1], llm_attention_count_sink=sink,
                                   llm_attention_count_sink_weight=weight)
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        counts.append(bool(batch["count_answers"].any()))
        trainer.model.train()
        trainer.compute_loss(trainer.model, dict(batch))
        losses.append(trainer._metrics["train"]["llm_attention_loss"][-1])
    assert counts == [True, True, True], "the tiny train split's first batch should hold a count question"
    assert losses[0] != pytest.approx(losses[1])
    assert losses[2] != pytest.approx(losses[1]), "the sink's weight reaches the trainer's attention loss"
    with pytest.raises(ValueError, match="count_sink"):
        make_args(tmp_path, "pretrain", llm_attention_count_sink=True)


def test_count_target_weights_the_sink():
    """The count target's KL is 0 exactly at shares (1, ..., 1, w)/(n + w) and positive elsewhere; w = 1 is the uniform
    target of before; a heavier sink spreads the shares of 8 and 9 counted tokens apart."""
    for n in (1, 8, 9):
        for w in (1.0, 6.0):
            at_target = torch.cat([torch.ones(n), torch.tensor([w])]) / (n + w)
            assert count_target_kl(at_target, w).item() == pytest.approx(0.0, abs=1e-6)
            uniform = torch.full((n + 1,), 1.0 / (n + 1))
            if w != 1.0:
                assert count_target_kl(uniform, w).item() > 1e-3
            assert count_target_kl(uniform, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    skewed = torch.tensor([0.5, 0.2, 0.3])
    before = -torch.log(skewed.clamp(min=1e-6)).mean() - np.log(3)  # the loss term before the weight existed
    assert torch.equal(count_target_kl(skewed, 1.0), before)
    def share(n, w):
        return w / (n + w)
    assert share(8, 6.0) - share(9, 6.0) > 2 * (share(8, 1.0) - share(9, 1.0))


def test_count_sink_weight_is_checked(tmp_path):
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive finite"):
            make_args(tmp_path, "pretrain", loss_weight_llm_attention=1.0, llm_attention_count_sink=True,
                      llm_attention_count_sink_weight=bad)
    with pytest.raises(ValueError, match="needs llm_attention_count_sink"):
        make_args(tmp_path, "pretrain", loss_weight_llm_attention=1.0, llm_attention_count_sink_weight=6.0)
    # reader_probe's --count-sink-weight refuses what training refuses, by the same test
    assert positive_number("6") == 6.0
    for bad in ("0", "-1", "nan", "inf", "six"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive finite"):
            positive_number(bad)


def test_query_side_attention_loss_trains_a_step(tmp_path, datasets, processor):  # noqa: F811
    model = tiny_model()
    trainer, _ = _reader_batch(tmp_path, datasets, processor, model, max_steps=2, loss_weight_llm_attention=1.0,
                               llm_attention_layers=[1], llm_attention_query_side=True)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    trainer.compute_loss(trainer.model, dict(batch))
    attention = trainer._metrics["train"].get("llm_attention_loss")
    assert attention and attention[-1] > 0
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())


def test_sparse_view_keeps_the_answers_in_the_forward(tmp_path, datasets, processor):  # noqa: F811
    model = tiny_model()
    args = make_args(tmp_path, "pretrain", training_views={"sparse": 1.0}, train_budget="random",
                     train_tier_weights={16: 1.0}, calibration_every=0, questions_per_image=2)
    apply_phase(model, "pretrain")
    trainer = ArrCocTrainer(model=model, args=args, data_collator=ArrCocCollator(processor, patch_size=8,
                                                                               questions_per_image=2),
                            train_dataset=datasets[0], processing_class=processor)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    inputs = dict(batch)
    turn_targets = inputs["turn_patch_targets"]
    budget = trainer._view_inputs(model, inputs, "sparse", turn_targets)
    assert budget == model.config.budgets[1]
    kept = model.model.select(inputs["plan"]).kept_patch_mask
    answers = turn_targets.amax(1) > 0
    small = answers.sum(-1) <= budget
    assert small.any() and (kept[small] | ~answers[small]).all()


def test_full_view_waits_for_the_distractor_curriculum(tmp_path, datasets, processor):  # noqa: F811
    model = tiny_model()
    args = make_args(tmp_path, "pretrain", training_views={"full": 1.0}, train_budget="random", calibration_every=0,
                     distractor_curriculum_steps=30)
    apply_phase(model, "pretrain")
    trainer = ArrCocTrainer(model=model, args=args, data_collator=ArrCocCollator(processor, patch_size=8),
                            train_dataset=datasets[0], processing_class=processor)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    budgets = []
    for step in (0, 15, 30):
        trainer.state.global_step = step
        budgets.append(trainer._view_inputs(model, dict(batch), "full", batch.get("patch_targets")[:, None]))
    # Tiny tiers (4, 16, 100): the sparse view at the curriculum's largest tier, then every patch.
    assert budgets == [4, 16, "full"]


def test_attention_layers_must_exist(tmp_path, datasets, processor):  # noqa: F811
    model = tiny_model()
    args = make_args(tmp_path, "pretrain", loss_weight_llm_attention=1.0, llm_attention_layers=[7], calibration_every=0)
    apply_phase(model, "pretrain")
    with pytest.raises(ValueError, match="llm_attention_layers"):
        ArrCocTrainer(model=model, args=args, data_collator=ArrCocCollator(processor, patch_size=8),
                      train_dataset=datasets[0], processing_class=processor)


def test_reader_options_are_validated(tmp_path):
    with pytest.raises(ValueError, match="training_views"):
        make_args(tmp_path, "pretrain", training_views={"all": 1.0}, train_budget="random")
    with pytest.raises(ValueError, match="train_budget must be 'random'"):
        make_args(tmp_path, "phase1", training_views={"full": 1.0})
    with pytest.raises(ValueError, match="distractor_curriculum_steps needs"):
        make_args(tmp_path, "pretrain", distractor_curriculum_steps=10)
    with pytest.raises(ValueError, match="questions_per_image"):
        make_args(tmp_path, "pretrain", questions_per_image=0)
    with pytest.raises(ValueError, match="needs loss_weight_llm_attention"):
        make_args(tmp_path, "pretrain", llm_attention_query_side=True)
