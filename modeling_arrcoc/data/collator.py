"""Rows of the common schema -> model inputs: chat prompt with one <image>, answer labels, answer-region targets."""

from dataclasses import dataclass

import numpy as np
import torch

from .synthetic import COUNT_FAMILIES, question_key_span
from .targets import answer_patch_targets

ALIGNMENT_TARGETS = ("boxes", "teacher", "none")
TEACHER_COLUMN = "teacher_targets"  # per-patch teacher scores (training/teacher.py writes this column)


def chat_prompt(processor, question: str, with_image: bool = True) -> str:
    """The prompt of one user turn and the assistant's opening; `with_image=False` for a later turn on the same
    image (the chat's `<image>` comes once, in its first turn)."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def row_turns(row: dict, questions_per_image: int = 1) -> list:
    """(question, answer, boxes) of the turns a row supervises: its own question, then up to
    `questions_per_image - 1` of its extra questions about the same image (rows without `extra_questions` have one)."""
    turns = [(row["question"], row["answers"][0] if row.get("answers") else None, row.get("boxes") or [])]
    extras = zip(row.get("extra_questions") or [], row.get("extra_answers") or [], row.get("extra_boxes") or [])
    return turns + list(extras)[: max(questions_per_image - 1, 0)]


@dataclass
class ArrCocCollator:
    """Builds `input_ids`, `attention_mask`, `labels` (-100 on the prompt, the <image> placeholder and padding),
    `pixel_values` and, where rows have them, `patch_targets` on the SAM grid (from boxes) and `visual_targets`
    (the synthetic suite's per-patch reading teacher).

    Args:
        processor: an `ArrCocProcessor`.
        patch_size: SAM patch size, for the answer-region targets.
        with_answers: False for evaluation/generation: prompts only, no labels.
        keep_columns: row columns passed through as lists (e.g. "task" for per-family scoring); the model
            does not take them, so leave it empty for a Trainer.
        questions_per_image: with answers, up to this many questions about each image in one chat (the row's own,
            then its `extra_questions`), each answer supervised: one vision pass, several supervised lookups (dense
            supervision for a reader learning to find one token among many). Every turn's answer region is then in
            `turn_patch_targets` ([B, Q, N], zero rows where a sample has fewer turns), `count_answers` ([B],
            rows whose answer is the number of their boxes), and `patch_targets` is
            their union (the allocator reads every question of the chat). 1 (default): one question per image.
        question_keys: with answers, also `turn_key_tokens` ([B, Q, L] bool): per turn, the prompt tokens of the word
            its question asks about (its colour or bar, `synthetic.question_key_span`; none for other questions),
            which the reader stage's question-attention loss reads (training/reader.py). Every batch is then built
            as a chat of turns (one turn when questions_per_image is 1: the same tokens as the single-question
            prompt).
        alignment_targets: where `patch_targets` come from: "boxes" (answer-box coverage, where rows have a
            `boxes` column), "teacher" (the rows' `teacher_targets` column, per-patch scores of a teacher model,
            see training/teacher.py; none for rows without it) or "none" (never: the alignment loss then
            falls back to its anti-collapse term).
    """

    processor: object
    patch_size: int = 16
    with_answers: bool = True
    keep_columns: tuple = ()
    alignment_targets: str = "boxes"
    questions_per_image: int = 1
    question_keys: bool = False

    def __post_init__(self):
        if not isinstance(self.questions_per_image, int) or self.questions_per_image < 1:
            raise ValueError(f"questions_per_image must be a positive integer, got {self.questions_per_image!r}.")
        if self.alignment_targets not in ALIGNMENT_TARGETS:
            raise ValueError(f"alignment_targets must be one of {list(ALIGNMENT_TARGETS)}, "
                             f"got {self.alignment_targets!r}.")

    def __call__(self, rows: list[dict]) -> dict:
        tokenizer = self.processor.tokenizer
        if self.with_answers and (self.questions_per_image > 1 or self.question_keys):
            return self._multi_turn(rows)
        prompts = [tokenizer(chat_prompt(self.processor, row["question"]), add_special_tokens=False).input_ids
                   for row in rows]
        answers = [self._answer_ids(row) for row in rows] if self.with_answers else [[] for _ in rows]
        return self._finish(rows, _left_pad(prompts, answers, tokenizer.pad_token_id))

    def _multi_turn(self, rows: list[dict]) -> dict:
        """Several question/answer turns per image: the prompt of turn 1 (with the image), its answer, then each
        later turn's prompt (no image) and answer; labels on every answer token."""
        tokenizer = self.processor.tokenizer
        separator = tokenizer("\n", add_special_tokens=False).input_ids  # the chat template's newline after a turn
        prompts, answers, turn_boxes, turn_keys = [], [], [], []
        for row in rows:
            turns = row_turns(row, self.questions_per_image)
            ids, labels, keys = [], [], []
            for index, (question, answer, _) in enumerate(turns):
                text = chat_prompt(self.processor, question, with_image=index == 0)
                encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=self.question_keys)
                start = len(ids) + (0 if index == 0 else len(separator))  # where this turn's prompt begins
                if self.question_keys:
                    keys.append([start + i for i in _key_tokens(text, question, encoded["offset_mapping"])])
                prompt = encoded.input_ids if index == 0 else separator + encoded.input_ids
                reply = self._encode_answer(answer)
                ids += prompt + reply
                labels += [-100] * len(prompt) + reply
            prompts.append(ids)
            answers.append(labels)
            turn_boxes.append([boxes for _, _, boxes in turns])
            turn_keys.append(keys)
        batch = _left_pad_labelled(prompts, answers, tokenizer.pad_token_id)
        if self.question_keys:
            batch["turn_key_tokens"] = _turn_key_mask(turn_keys, [len(ids) for ids in prompts],
                                                      batch["input_ids"].shape[1])
        batch = self._finish(rows, batch, with_targets=False)
        if all("boxes" in row for row in rows):
            turns = self._turn_targets(rows, turn_boxes)
            batch["turn_patch_targets"] = turns
            batch["count_answers"] = torch.tensor([row.get("task") in COUNT_FAMILIES for row in rows])
            if self.alignment_targets == "boxes":
                batch["patch_targets"] = turns.amax(1)
        return batch

    def _finish(self, rows, batch, with_targets=True) -> dict:
        images = [row["image"] for row in rows]
        batch["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        if with_targets and self.with_answers and self.alignment_targets == "boxes" and all(
                "boxes" in row for row in rows):
            batch["patch_targets"] = self._targets(rows)
        if self.with_answers and self.alignment_targets == "teacher" and all(
                row.get(TEACHER_COLUMN) is not None for row in rows):
            batch["patch_targets"] = torch.tensor([row[TEACHER_COLUMN] for row in rows], dtype=torch.float32)
        if self.with_answers and all("visual_targets" in row for row in rows):
            batch["visual_targets"] = torch.tensor([row["visual_targets"] for row in rows], dtype=torch.long)
        for column in self.keep_columns:
            batch[column] = [row[column] for row in rows]
        return batch

    def _encode_answer(self, answer: str) -> list[int]:
        tokenizer = self.processor.tokenizer
        return tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]

    def _turn_targets(self, rows, turn_boxes) -> torch.Tensor:
        """[B, Q, N] answer-region coverage of each turn (zeros past a sample's last turn)."""
        width = max(len(turns) for turns in turn_boxes)
        out = torch.zeros(len(rows), width, self._box_targets(rows[0]["image"], []).shape[-1])
        for b, (row, turns) in enumerate(zip(rows, turn_boxes)):
            for q, boxes in enumerate(turns):
                out[b, q] = torch.from_numpy(self._box_targets(row["image"], boxes))
        return out

    def _answer_ids(self, row) -> list[int]:
        return self._encode_answer(row["answers"][0])

    def _targets(self, rows) -> torch.Tensor:
        return torch.from_numpy(np.stack([self._box_targets(row["image"], row["boxes"]) for row in rows])).float()

    def _box_targets(self, image, boxes) -> np.ndarray:
        size = self.processor.image_processor.size
        width, height = image.size
        scale = size / max(width, height)  # the processor resizes the longest side to `size`
        scaled = [[coordinate * scale for coordinate in box] for box in boxes]
        return answer_patch_targets(scaled, size, self.patch_size)


def _key_tokens(text: str, question: str, offsets) -> list[int]:
    """Indices of the tokens of `text` (a chat prompt) that overlap the word its `question` asks about."""
    span = question_key_span(question)
    if span is None:
        return []
    at = text.rfind(question)  # the question is the prompt's last user text
    start, end = at + span[0], at + span[1]
    return [i for i, (first, last) in enumerate(offsets) if first < end and last > start]


def _turn_key_mask(turn_keys, lengths, width: int) -> torch.Tensor:
    """[B, Q, width] bool: each turn's key-word tokens in the left-padded rows."""
    mask = torch.zeros(len(turn_keys), max(len(keys) for keys in turn_keys), width, dtype=torch.bool)
    for b, (keys, length) in enumerate(zip(turn_keys, lengths)):
        for q, indices in enumerate(keys):
            mask[b, q, [width - length + i for i in indices]] = True
    return mask


def _left_pad_labelled(sequences, labels, pad_id) -> dict:
    """Left-pad token rows whose labels are given position by position (-100 where nothing is supervised)."""
    width = max(len(row) for row in sequences)
    batch = {"input_ids": torch.full((len(sequences), width), pad_id, dtype=torch.long),
             "attention_mask": torch.zeros((len(sequences), width), dtype=torch.long),
             "labels": torch.full((len(sequences), width), -100, dtype=torch.long)}
    for b, (row, row_labels) in enumerate(zip(sequences, labels)):
        batch["input_ids"][b, width - len(row):] = torch.tensor(row)
        batch["attention_mask"][b, width - len(row):] = 1
        batch["labels"][b, width - len(row):] = torch.tensor(row_labels)
    return batch


def _left_pad(prompts, answers, pad_id) -> dict:
    """Prompt then answer per row, left-padded; labels on the answers only, and no labels without answers."""
    batch = _left_pad_labelled([p + a for p, a in zip(prompts, answers)],
                               [[-100] * len(p) + a for p, a in zip(prompts, answers)], pad_id)
    if not any(answers):
        del batch["labels"]
    return batch


__all__ = ["ALIGNMENT_TARGETS", "ArrCocCollator", "TEACHER_COLUMN", "chat_prompt", "row_turns"]
