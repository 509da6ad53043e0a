"""Rows of the common schema -> model inputs: chat prompt with one <image>, answer labels, answer-region targets."""

from dataclasses import dataclass

import numpy as np
import torch

from .targets import answer_patch_targets

ALIGNMENT_TARGETS = ("boxes", "teacher", "none")
TEACHER_COLUMN = "teacher_targets"  # per-patch teacher scores (training/teacher.py writes this column)


def chat_prompt(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


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

    def __post_init__(self):
        if self.alignment_targets not in ALIGNMENT_TARGETS:
            raise ValueError(f"alignment_targets must be one of {list(ALIGNMENT_TARGETS)}, "
                             f"got {self.alignment_targets!r}.")

    def __call__(self, rows: list[dict]) -> dict:
        tokenizer = self.processor.tokenizer
        prompts = [tokenizer(chat_prompt(self.processor, row["question"]), add_special_tokens=False).input_ids
                   for row in rows]
        answers = [self._answer_ids(row) for row in rows] if self.with_answers else [[] for _ in rows]
        batch = _left_pad(prompts, answers, tokenizer.pad_token_id)
        images = [row["image"] for row in rows]
        batch["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        if self.with_answers and self.alignment_targets == "boxes" and all("boxes" in row for row in rows):
            batch["patch_targets"] = self._targets(rows)
        if self.with_answers and self.alignment_targets == "teacher" and all(
                row.get(TEACHER_COLUMN) is not None for row in rows):
            batch["patch_targets"] = torch.tensor([row[TEACHER_COLUMN] for row in rows], dtype=torch.float32)
        if self.with_answers and all("visual_targets" in row for row in rows):
            batch["visual_targets"] = torch.tensor([row["visual_targets"] for row in rows], dtype=torch.long)
        for column in self.keep_columns:
            batch[column] = [row[column] for row in rows]
        return batch

    def _answer_ids(self, row) -> list[int]:
        tokenizer = self.processor.tokenizer
        return tokenizer(row["answers"][0], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]

    def _targets(self, rows) -> torch.Tensor:
        size = self.processor.image_processor.size
        targets = []
        for row in rows:
            width, height = row["image"].size
            scale = size / max(width, height)  # the processor resizes the longest side to `size`
            boxes = [[coordinate * scale for coordinate in box] for box in row["boxes"]]
            targets.append(answer_patch_targets(boxes, size, self.patch_size))
        return torch.from_numpy(np.stack(targets)).float()


def _left_pad(prompts, answers, pad_id) -> dict:
    width = max(len(p) + len(a) for p, a in zip(prompts, answers))
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    labels = torch.full((len(prompts), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, (prompt, answer) in enumerate(zip(prompts, answers)):
        row = prompt + answer
        input_ids[b, width - len(row):] = torch.tensor(row)
        attention_mask[b, width - len(row):] = 1
        if answer:
            labels[b, width - len(answer):] = torch.tensor(answer)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if any(answers):
        batch["labels"] = labels
    return batch


__all__ = ["ALIGNMENT_TARGETS", "ArrCocCollator", "TEACHER_COLUMN", "chat_prompt"]
