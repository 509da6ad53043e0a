"""Teacher pseudo-labels for the alignment loss on data without answer boxes (`alignment_targets: teacher`).

Real VQA sets (DocVQA, ChartQA, VQAv2, ...) have no answer boxes, so the alignment loss (patch scores toward the
answer region) would fall back to its anti-collapse term, and without a where-to-look signal the allocator stays
random while the reader learns (docs/design.md, "What learns here"). A teacher supplies the signal: any ArrCoc checkpoint run
at full tokens (budget "full": all N patches, token j = patch j in raster order) scores every patch for each
training question, and the normalized scores become that row's `patch_targets`.

Scoring ("grad_input", the default): gradient x input of the teacher's answer loss with respect to the visual
embeddings the LLM reads, one L2 norm per token, ||dL/de_j * e_j||. It asks how much the answer's likelihood moves
with each visual token, through every layer of the LLM, at the cost of one backward pass through the LLM alone
(SAM, the allocator, CLIP and the adapter run under no_grad), and it works with any attention implementation.
"attention" (the LLM's attention from the positions that predict answer tokens to the visual tokens, averaged over
heads and layers; the teacher is loaded with attn_implementation "eager" for it) is offered for comparison: on the
shipped demo base it put the answer box in its top 4 patches for 41% of validation questions, gradient x input for
77% (tools/teacher_vs_boxes.py measures both; docs/training.md, "Without answer boxes").

Which forward the teacher runs: budget "full" with the checkpoint's own selection (`teacher_selection` None), so an
ARR-COC teacher's LLM also reads its allocator's relevance tag, as it was trained to; `teacher_selection: full` feeds
every patch without the tag (the LLM's reading alone). On the shipped demo base most of the localization comes
through the tag (8% of answer boxes in the top 4 without it, 75% with it; docs/training.md, "Without answer boxes").

The answer tokens are read by the TEACHER only, to make labels. The student still never sees them: its collator
puts them in `labels`, and the model masks labels != -100 out of the allocator's question input.

The scores are cached on disk as a one-column dataset (`save_to_disk` into `<cache_dir>/<key>`, by default
`output_dir/teacher_targets`), keyed by the training set's fingerprint, the teacher checkpoint's identity (its
config and weight files' names, sizes and modification times), the scoring and the student's grid: a second run
reads them back and never loads the teacher.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import datasets
import torch
from torch.nn import functional as F

from ..data.collator import ALIGNMENT_TARGETS, TEACHER_COLUMN, ArrCocCollator
from ..losses import answer_window

logger = logging.getLogger(__name__)

SCORINGS = ("grad_input", "attention")
_VERSION = "1"  # bump when the scores a given key stands for change


def load_teacher(checkpoint, scoring: str = "grad_input", device="cpu"):
    """(model, processor) of a teacher checkpoint, float32, eval mode, frozen; eager LLM attention for
    "attention" scoring (sdpa and flash attention return no attention weights)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    _check_scoring(scoring)
    kwargs = {"attn_implementation": {"text_config": "eager"}} if scoring == "attention" else {}
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32, **kwargs)
    model = model.to(device).eval().requires_grad_(False)
    return model, AutoProcessor.from_pretrained(checkpoint)


def teacher_patch_scores(model, batch: dict, scoring: str = "grad_input", selection=None) -> torch.Tensor:
    """[B, N] per-patch relevance of each row's answer (raster order on the teacher's grid), each row summing to
    1 (all zeros for a row without answer tokens).

    `batch`: an `ArrCocCollator` batch with `labels` (the answer tokens). `selection`: the teacher's patch selection
    at full tokens (None: the checkpoint's own; every selection keeps all N patches in raster order at budget
    "full", and only the relevance tag the LLM reads differs).
    """
    _check_scoring(scoring)
    device = model.device
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    with torch.no_grad():
        multimodal = model.model.prepare_multimodal_inputs(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels,
            pixel_values=batch["pixel_values"].to(device, model.dtype), budget="full", selection=selection,
        )
    num_patches = model.config.num_patches
    if not (multimodal.visual_token_counts == num_patches).all() or not torch.equal(
            multimodal.token_sources[:, :num_patches].cpu(), torch.arange(num_patches).expand(len(labels), -1)):
        raise RuntimeError("At budget 'full' the teacher must feed every patch in raster order (token j = patch j).")
    starts = visual_token_starts(input_ids, attention_mask, model.config.image_token_id, num_patches,
                                 multimodal.inputs_embeds.shape[1])
    index = (starts[:, None] + torch.arange(num_patches, device=device)[None]).unsqueeze(-1)
    if scoring == "grad_input":
        scores = _gradient_x_input(model, multimodal, index)
    else:
        scores = _answer_attention(model, multimodal, index)
    has_answer = (multimodal.labels != -100).any(-1, keepdim=True)
    scores = scores.clamp(min=0) * has_answer
    return scores / scores.sum(-1, keepdim=True).clamp(min=1e-12)


def visual_token_starts(input_ids, attention_mask, image_token_id, num_visual, spliced_length) -> torch.Tensor:
    """[B] position of each row's first visual token in the spliced, left-padded sequence (`splice_arrcoc.splice`:
    text before <image>, the visual tokens, text after, padded on the left to the longest row)."""
    kept = attention_mask.bool()
    at = ((input_ids == image_token_id) & kept).long().cumsum(-1)
    before = ((at == 0) & kept).sum(-1)  # attended tokens before <image>
    row_length = kept.sum(-1) - 1 + num_visual
    return spliced_length - row_length + before


def _gradient_x_input(model, multimodal, index) -> torch.Tensor:
    with torch.enable_grad():
        embeds = multimodal.inputs_embeds.detach().requires_grad_(True)
        hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=multimodal.attention_mask,
                                            position_ids=multimodal.position_ids).last_hidden_state
        window = answer_window(multimodal.labels)
        logits = model.lm_head(hidden[:, -window:]).float()
        labels = multimodal.labels[:, -window:]
        # Summed over rows: rows never attend to each other, so each row's gradient is its own answer loss's.
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100,
                               reduction="sum")
        (gradient,) = torch.autograd.grad(loss, embeds)
    product = (gradient * embeds.detach()).float()
    visual = product.gather(1, index.expand(-1, -1, product.shape[-1]))
    return visual.norm(dim=-1)


def _answer_attention(model, multimodal, index) -> torch.Tensor:
    text_config = model.config.text_config
    if getattr(text_config, "_attn_implementation", None) != "eager":
        raise ValueError("attention scoring needs the teacher's LLM in eager attention: load it with "
                         "load_teacher(..., scoring='attention').")
    with torch.no_grad():
        outputs = model.model.language_model(inputs_embeds=multimodal.inputs_embeds,
                                             attention_mask=multimodal.attention_mask,
                                             position_ids=multimodal.position_ids, output_attentions=True)
    if not outputs.attentions:
        raise RuntimeError("The teacher's language model returned no attention weights.")
    attention = torch.stack(outputs.attentions).float().mean((0, 2))  # layers and heads -> [B, L, L]
    predicts_answer = torch.zeros_like(multimodal.labels, dtype=torch.bool)
    predicts_answer[:, :-1] = multimodal.labels[:, 1:] != -100  # position t predicts label t + 1
    weights = predicts_answer.float() / predicts_answer.sum(-1, keepdim=True).clamp(min=1)
    from_answer = torch.einsum("bq,bqk->bk", weights, attention)  # mean over the answer-predicting queries
    return from_answer.gather(1, index.squeeze(-1))


def resample_to_grid(scores: torch.Tensor, source_grid, target_grid) -> torch.Tensor:
    """[B, Hs*Ws] scores on the teacher's grid -> [B, Ht*Wt] on the student's (both grids cover the same resized
    page: the processors resize the longest side to their size), renormalized to sum 1 per row."""
    source_grid, target_grid = tuple(source_grid), tuple(target_grid)
    if source_grid == target_grid:
        return scores
    grid = scores.view(scores.shape[0], 1, *source_grid)
    shrink = target_grid[0] < source_grid[0] or target_grid[1] < source_grid[1]
    resized = F.interpolate(grid, size=target_grid, mode="bilinear", align_corners=False, antialias=shrink)
    resized = resized.flatten(1).clamp(min=0)
    return resized / resized.sum(-1, keepdim=True).clamp(min=1e-12)


def checkpoint_identity(checkpoint) -> dict:
    """What makes a teacher's scores reproducible without hashing its weights: its config and the names, sizes and
    modification times of its weight files (a copied or retrained checkpoint gets new scores)."""
    path = Path(checkpoint)
    if not path.is_dir():
        return {"name": str(checkpoint)}  # a Hub name: its revision is what the cache holds
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    return {
        "path": str(path.resolve()),
        "config": (path / "config.json").read_text() if (path / "config.json").exists() else "",
        "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights],
    }


def teacher_cache_key(dataset, checkpoint, scoring, selection, grid_size) -> str:
    record = {"dataset": dataset._fingerprint, "rows": len(dataset), "teacher": checkpoint_identity(checkpoint),
              "scoring": scoring, "selection": selection, "grid": list(grid_size), "version": _VERSION}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]


def add_teacher_targets(dataset, checkpoint, grid_size, cache_dir, scoring: str = "grad_input", selection=None,
                        batch_size: int = 8, device="cpu", progress: bool = False):
    """`dataset` with a `teacher_targets` column: per row, the teacher's normalized scores on the student's
    `grid_size` (N floats summing to 1; all zeros for a row without answers). Computed once and cached under
    `cache_dir/<key>` (see the module docstring); a cached run never loads the teacher."""
    if isinstance(dataset, datasets.IterableDataset):
        raise ValueError("alignment_targets 'teacher' scores every training row once and caches the scores: it "
                         "needs a map-style dataset (streaming: false).")
    _check_scoring(scoring)
    key = teacher_cache_key(dataset, checkpoint, scoring, selection, grid_size)
    folder = Path(cache_dir) / key
    if (folder / "dataset_info.json").exists():
        logger.info("teacher targets: reusing %s", folder)
        scores = datasets.load_from_disk(str(folder))
    else:
        scores = _compute_and_save(dataset, checkpoint, grid_size, folder, scoring, selection, batch_size, device,
                                   progress)
    if len(scores) != len(dataset):
        raise ValueError(f"teacher targets at {folder} have {len(scores)} rows, the training set {len(dataset)}.")
    base = dataset.remove_columns(TEACHER_COLUMN) if TEACHER_COLUMN in dataset.column_names else dataset
    return datasets.concatenate_datasets([base, scores], axis=1)


def _compute_and_save(dataset, checkpoint, grid_size, folder, scoring, selection, batch_size, device, progress):
    from tqdm.auto import tqdm

    model, processor = load_teacher(checkpoint, scoring, device)
    collator = ArrCocCollator(processor, patch_size=model.config.vision_config.patch_size)
    columns = [c for c in ("image", "question", "answers") if c in dataset.column_names]
    rows_only = dataset.select_columns(columns)
    num_target = grid_size[0] * grid_size[1]
    scores = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="teacher targets", disable=not progress):
        block = rows_only[start:start + batch_size]
        rows = [dict(zip(block, values)) for values in zip(*block.values())]
        answered = [i for i, row in enumerate(rows) if row["answers"]]
        out = torch.zeros(len(rows), num_target)
        if answered:
            batch = collator([rows[i] for i in answered])
            teacher = teacher_patch_scores(model, batch, scoring, selection).cpu()
            out[answered] = resample_to_grid(teacher, model.config.grid_size, grid_size)
        scores += out.tolist()
    table = datasets.Dataset.from_dict(
        {TEACHER_COLUMN: scores}, features=datasets.Features({TEACHER_COLUMN: datasets.List(datasets.Value("float32"))})
    )
    temporary = folder.with_name(folder.name + f".tmp{os.getpid()}")
    table.save_to_disk(str(temporary))
    if folder.exists():  # another process finished first: keep its copy
        shutil.rmtree(temporary)
    else:
        temporary.rename(folder)
    logger.info("teacher targets: %d rows scored by %s (%s), saved to %s", len(scores), checkpoint, scoring, folder)
    return datasets.load_from_disk(str(folder))


def _check_scoring(scoring):
    if scoring not in SCORINGS:
        raise ValueError(f"teacher scoring must be one of {list(SCORINGS)}, got {scoring!r}.")


__all__ = [
    "ALIGNMENT_TARGETS",
    "SCORINGS",
    "TEACHER_COLUMN",
    "add_teacher_targets",
    "checkpoint_identity",
    "load_teacher",
    "resample_to_grid",
    "teacher_cache_key",
    "teacher_patch_scores",
    "visual_token_starts",
]
