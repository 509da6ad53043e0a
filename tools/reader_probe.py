"""What a checkpoint's language model does with the visual tokens: for local_color pages (no tag), at full tokens or
at K tokens of the reader stage's sparse view (the answer cell plus random distractors),
how well each layer's hidden state at the visual positions still encodes the cell's digit (a ridge probe on half the
tokens, scored on the other half), and where each head of each layer looks from the answer-predicting position
(attention mass on the answer cell, and on the page's other key-colour digits: the cells a colour-blind lookup
would confuse with it).

    python -m tools.reader_probe CHECKPOINT [--pages 8] [--tokens 4] [--variant heldout] [--decode-pages 512]
                                            [--heldout-factors 48] [--marker-pages 96] [--pooled-pages 960]
                                            [--heldout-accuracy 1200] [--count-questions 360]

docs/demo_model.md uses it to show why supervising the attention of layers 1-3 kept the answers at chance: layer 0
rewrote the visual positions and the digits were gone from them by layer 1.

`--heldout-accuracy N` answers which factor of the held-out look costs answers: N held-out questions of the
families the base is taught (drawn with --heldout-seed, 1: not the test questions eval.py reports), at full tokens,
once as they are and once per factor of HELDOUT_FACTORS set back to the standard look's value, accuracy per family
with intervals and, where the factor keeps the questions (all but the layout), the paired difference against the
held-out look.

`--count-questions N` shows how counts are read: per true count, the share of attention the supervised layer's heads
give from the answer-predicting position to itself (the count target's sink, whose target share is 1/(n+1)), its
spread, and the answers.
"""

import argparse
import contextlib
import dataclasses
import json
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import modeling_arrcoc  # noqa: F401  (registers the Auto classes)
from modeling_arrcoc.cli import positive_number, whole_number
from modeling_arrcoc.data import COLOR_NAMES, VARIANTS, render_sample
from modeling_arrcoc.data.collator import ArrCocCollator
from modeling_arrcoc.data import synthetic
from modeling_arrcoc.data.synthetic import DARK_WORD, FIRST_KEY_WORD, question_key_span
from modeling_arrcoc.data.targets import answer_patch_targets
from modeling_arrcoc.evaluation import evaluate, load_eval_dataset
from modeling_arrcoc.evaluation.agreement import compare_runs
from modeling_arrcoc.evaluation.seeds import check_same_questions, run_scores
from modeling_arrcoc.explanation import prompt_batch
from modeling_arrcoc.statistics import bootstrap_interval
from modeling_arrcoc.training.reader import (answer_prediction_positions, llm_attention_loss, sparse_view_scores,
                                             spliced_layout)


def ridge_accuracy(features: torch.Tensor, labels: torch.Tensor, classes: int = 10) -> float:
    """Fit on the first half, score on the second; features standardized (the residual stream's scale varies)."""
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    features = torch.cat([features, torch.ones(len(features), 1)], dim=1)
    half = len(features) // 2
    targets = torch.nn.functional.one_hot(labels, classes).float()
    gram = features[:half].T @ features[:half] + 1e-3 * torch.eye(features.shape[1])
    weights = torch.linalg.solve(gram, features[:half].T @ targets[:half])
    return float(((features[half:] @ weights).argmax(-1) == labels[half:]).float().mean())


def load(checkpoint: str):
    """The checkpoint's model (float32, eval) and processor, loaded once for every probe below."""
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(checkpoint)


def key_coloured(ink: torch.Tensor) -> torch.Tensor:
    """Which reading-teacher ink words are a key colour (not dark ink, not an empty cell)."""
    return (ink >= FIRST_KEY_WORD) & (ink < DARK_WORD)


@contextlib.contextmanager
def eager_attention(model):
    """The language model on the eager kernel (output_attentions needs it), its own restored after."""
    language_model = model.model.language_model
    attention = language_model.config._attn_implementation
    language_model.set_attn_implementation("eager")
    try:
        yield
    finally:
        language_model.set_attn_implementation(attention)


def first_answer_predictions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] the argmax token at each row's position before its first answer token (prompts left-padded, so that
    position's distance from the end is the same in the prompt and in the spliced sequence the logits cover)."""
    first_answer = (labels != -100).int().argmax(-1)
    from_end = labels.shape[1] - first_answer + 1
    return logits[torch.arange(len(labels)), logits.shape[1] - from_end].argmax(-1)


@torch.no_grad()
def probe(model, processor, pages: int = 8, seed: int = 14, tokens: int | None = None,
          variant: str = "standard") -> dict:
    with eager_attention(model):
        return _probe(model, processor, pages, seed, tokens, variant)


def _probe(model, processor, pages, seed, tokens, variant) -> dict:
    rows = [render_sample("local_color", np.random.default_rng([seed, i]), variant=variant) for i in range(pages)]
    batch = ArrCocCollator(processor)(rows)
    prompt = {key: batch[key] for key in ("input_ids", "attention_mask", "labels")}
    if tokens is None:
        plan = model.plan_allocation(**prompt, pixel_values=batch["pixel_values"], budget="full", selection="full")
    else:
        scores = sparse_view_scores(batch["patch_targets"], torch.Generator().manual_seed(seed))
        plan = model.plan_allocation(**prompt, pixel_values=batch["pixel_values"], budget=tokens, selection="learned",
                                     selection_scores=scores)
    out = model(**prompt, plan=plan, output_hidden_states=True, output_attentions=True)
    image = out.image_outputs
    count = int(image.visual_token_mask.sum(-1)[0])
    answers = torch.tensor([int(row["answers"][0]) for row in rows])
    predicted = first_answer_predictions(out.logits, batch["labels"])
    digits = processor.tokenizer.convert_tokens_to_ids([str(d) for d in range(10)])
    accuracy = float((predicted == torch.tensor(digits)[answers]).float().mean())
    first = spliced_layout(batch["input_ids"], batch["attention_mask"], model.config.image_token_id,
                           image.visual_token_mask, out.hidden_states[0].shape[1])[2]
    sources = image.token_sources[..., None].expand(-1, -1, 2)
    glyphs = batch["visual_targets"].gather(1, sources)[..., 0].reshape(-1)
    has_digit = (glyphs >= 1) & (glyphs <= 10)
    decodable = []
    for hidden in out.hidden_states:
        tokens = torch.cat([hidden[b, first[b] : first[b] + count] for b in range(pages)])
        decodable.append(ridge_accuracy(tokens[has_digit], glyphs[has_digit] - 1))
    answer = batch["patch_targets"] > 0
    ink = batch["visual_targets"][..., 1]
    other_keys = key_coloured(ink) & ~answer  # the page's other colours' digits

    def mass(cells):  # [layer][head]: attention mass on `cells` from the answer-predicting position
        return [[float(torch.exp(-llm_attention_loss(
            out.attentions, [layer], batch["input_ids"], batch["attention_mask"], batch["labels"],
            model.config.image_token_id, image.visual_token_mask, image.token_sources, cells[:, None].float(),
            head=head))) for head in range(out.attentions[layer].shape[1])] for layer in range(len(out.attentions))]

    return {"glyph_decodable_per_layer_input": decodable, "answer_attention_per_layer_head": mass(answer),
            "other_key_attention_per_layer_head": mass(other_keys),
            "first_answer_token_accuracy": accuracy, "visual_tokens": count}


@torch.no_grad()
def colour_decodability(model, processor, pages: int = 512, seed: int = 21, variant: str = "standard",
                        batch_size: int = 16) -> dict:
    """The lookup's two hops, as linear probes (ridge, fit on the first half of the examples, scored on the rest)
    over local_color pages at full tokens, at the input of each LLM layer (0..L):
    - `question_colour_at_answer`: the colour the question names, at the position that predicts the answer (the
      first hop brings it there; 5-way, chance 0.2);
    - `key_colour_at_visual`: the ink colour of each key-coloured visual token, at its own position (what the
      second hop's keys must still carry to tell the asked colour from the page's other key colours)."""
    collator = ArrCocCollator(processor)
    asked, asked_labels, keys, key_labels = None, [], None, []
    for start in range(0, pages, batch_size):
        rows = [render_sample("local_color", np.random.default_rng([seed, i]), variant=variant)
                for i in range(start, min(start + batch_size, pages))]
        batch = collator(rows)
        out = model(**{key: batch[key] for key in ("input_ids", "attention_mask", "labels", "pixel_values")},
                    budget="full", output_hidden_states=True)
        image, states = out.image_outputs, out.hidden_states
        asked, keys = asked or [[] for _ in states], keys or [[] for _ in states]
        offset, rank, first, counts = spliced_layout(batch["input_ids"], batch["attention_mask"],
                                                     model.config.image_token_id, image.visual_token_mask,
                                                     states[0].shape[1])
        ink = batch["visual_targets"][..., 1].gather(1, image.token_sources)
        for b, (row, positions) in enumerate(zip(rows, answer_prediction_positions(batch["labels"]))):
            before_answer = int(offset[b] + rank[b, positions[0]] + counts[b] - 1)  # it sits after the image
            count = int(counts[b])
            coloured = key_coloured(ink[b, :count])
            for layer, hidden in enumerate(states):
                asked[layer].append(hidden[b, before_answer])
                keys[layer].append(hidden[b, first[b] : first[b] + count][coloured])
            asked_labels.append(COLOR_NAMES.index(row["question"][slice(*question_key_span(row["question"]))]))
            key_labels.append(ink[b, :count][coloured] - FIRST_KEY_WORD)
    asked_labels, key_labels = torch.tensor(asked_labels), torch.cat(key_labels)
    return {"question_colour_at_answer": [ridge_accuracy(torch.stack(f), asked_labels, 5) for f in asked],
            "key_colour_at_visual": [ridge_accuracy(torch.cat(f), key_labels, 5) for f in keys],
            "pages": pages, "key_tokens": len(key_labels)}


_STANDARD = synthetic.STYLES["standard"]
# One held-out factor at a time set back to the standard look's value (the look every stage trains on first).
HELDOUT_FACTORS = {
    "held-out look": {},
    "standard glyph sizes (18, 20 px)": {"font_scales": _STANDARD.font_scales},
    "standard glyph offsets (-1..1 px)": {"glyph_dx": _STANDARD.glyph_dx},
    "standard glyph sizes and offsets": {"font_scales": _STANDARD.font_scales, "glyph_dx": _STANDARD.glyph_dx},
    "standard ink (0-60)": {"ink_range": _STANDARD.ink_range, "ink_spread": _STANDARD.ink_spread},
    "standard page colours": {"background": _STANDARD.background},
    "standard layout (uniform)": {"layouts": _STANDARD.layouts},
    "standard key shades": {"key_colours": synthetic.KEY_COLORS["standard"]},
}


@contextlib.contextmanager
def heldout_look(key_colours: dict | None = None, **change):
    """Held-out pages with some of their look replaced (fields of the look, and `key_colours` the named shades),
    restored after (the glyph bank is cached per look)."""
    original, shades = synthetic.STYLES["heldout"], synthetic.KEY_COLORS["heldout"]
    synthetic.STYLES["heldout"] = dataclasses.replace(original, **change)
    if key_colours is not None:
        synthetic.KEY_COLORS["heldout"] = dict(key_colours)
    synthetic._glyph_bank.cache_clear()
    try:
        yield
    finally:
        synthetic.STYLES["heldout"], synthetic.KEY_COLORS["heldout"] = original, shades
        synthetic._glyph_bank.cache_clear()


def heldout_factors(model, processor, pages: int = 48) -> dict:
    """Which factor of the held-out look hides the digit: for each of HELDOUT_FACTORS, the digit's decodability
    from the visual tokens at the language model's input (full tokens, local_color pages) and the first answer
    token's accuracy."""
    result = {}
    for name, change in HELDOUT_FACTORS.items():
        with heldout_look(**change):
            probed = probe(model, processor, pages, variant="heldout")
        result[name] = {"digit_decodable_at_input": probed["glyph_decodable_per_layer_input"][0],
                        "first_answer_token_accuracy": probed["first_answer_token_accuracy"]}
    return result


HELDOUT_ACCURACY_FAMILIES = ("local_color", "local_key", "global_count")  # the families the base is taught


def heldout_accuracy(model, processor, questions: int = 1200, families=HELDOUT_ACCURACY_FAMILIES,
                     seed: int = 1) -> list:
    """Which factor of the held-out look costs answers: for the held-out look and each of HELDOUT_FACTORS, the same
    `questions` held-out test questions answered at full tokens. They are drawn with `seed`: 1 by default, other
    pages than the test questions eval.py reports (seed 0), so that a choice made from this probe is not made on
    the reported questions. Rows: {"factor", "mean", "low", "high", "n", "families": accuracy per family, "paired":
    the paired difference against the held-out look (agreement.compare_runs), or None where the factor redraws the
    pages (the layout) or for the look itself}."""
    vision = model.config.vision_config
    runs = {}
    for name, change in HELDOUT_FACTORS.items():
        # A fresh dataset cache: the suite's cache key (the generator's text) does not see a look changed at run time.
        with heldout_look(**change), tempfile.TemporaryDirectory() as folder:
            data = load_eval_dataset("synthetic", "test", questions, vision.image_size, vision.patch_size,
                                     cache_dir=folder, seed=seed, families=families)
            predictions = Path(folder) / "predictions.jsonl"
            evaluate(model, processor, data.dataset, data.metric, ["full"], calibration=False, progress=False,
                     predictions_path=predictions)
            rows = [json.loads(line) for line in predictions.read_text().splitlines()]
        runs[name] = {"folder": name, "report": {"meta": {"metric": data.metric}}, "rows": rows}
    return [_factor_row(name, run, runs["held-out look"]) for name, run in runs.items()]


@torch.no_grad()
def count_sink_shares(model, processor, questions: int = 360, split: str = "validation", layer: int = 1,
                      batch_size: int = 8, sink_weight: float = 1.0) -> dict:
    """How the count target's sink carries n: on `questions` global_count questions of `split` at full tokens, the
    attention each head of `layer` (the supervised one) gives from the answer-predicting position to itself, and the
    greedy first answer token, per true count. {n: {"questions", "sink_share": [per head, mean], "sink_share_sd":
    [per head], "target": w/(n+w), "answers": {token: count}}}, w the `sink_weight` the checkpoint was trained with
    (`llm_attention_count_sink_weight`; a checkpoint does not record it). A readout can only tell n from n+1 where
    their shares lie further apart than their spread."""
    vision = model.config.vision_config
    data = load_eval_dataset("synthetic", split, questions, vision.image_size, vision.patch_size,
                             families=("global_count",)).dataset
    shares, answers = defaultdict(list), defaultdict(Counter)
    with eager_attention(model):
        for start in range(0, len(data), batch_size):
            rows = [data[i] for i in range(start, min(start + batch_size, len(data)))]
            inputs = prompt_batch(processor, [row["image"] for row in rows], [row["question"] for row in rows])
            outputs = model(**inputs, budget="full", output_attentions=True)
            sink = outputs.attentions[layer][:, :, -1, -1]  # [B, H]: prompts are left-padded, the last position answers
            first = outputs.logits[:, -1].argmax(-1)
            for row, share, token in zip(rows, sink, first):
                n = int(row["answers"][0])
                shares[n].append(share)
                answers[n][processor.tokenizer.decode([int(token)]).strip()] += 1
    result = {}
    for n in sorted(shares):
        per_page = torch.stack(shares[n])  # [questions, H]
        result[n] = {"questions": len(per_page), "sink_share": per_page.mean(0).tolist(),
                     "sink_share_sd": per_page.std(0, unbiased=False).tolist(),
                     "target": sink_weight / (n + sink_weight), "answers": dict(answers[n].most_common())}
    return result


def _factor_row(name: str, run: dict, held_out: dict) -> dict:
    scores, tasks = run_scores(run, "full"), [row["task"] for row in run["rows"]]
    row = {"factor": name, **bootstrap_interval(scores), "paired": None,
           "families": {task: float(np.mean(scores[np.array(tasks) == task])) for task in sorted(set(tasks))}}
    if run is not held_out:
        try:
            check_same_questions([held_out, run])
        except ValueError:
            return row  # another page draw: only the unpaired intervals compare
        row["paired"] = compare_runs(held_out, run, ["full"])["full"]
    return row


def heldout_accuracy_table(rows: list) -> str:
    """`heldout_accuracy`'s rows as a markdown table."""
    families = list(rows[0]["families"])
    lines = ["| set back to the standard look | full tokens (95% interval) | " + " | ".join(families)
             + " | paired vs the held-out look (points) |", "|---" * (3 + len(families)) + "|"]
    for row in rows:
        paired = row["paired"]
        difference = ("" if row["factor"] == "held-out look" else "other pages" if paired is None else
                      f"{100 * paired['difference']:+.1f} [{100 * paired['low']:+.1f}, {100 * paired['high']:+.1f}]")
        lines.append(f"| {row['factor']} | {row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}] | "
                     + " | ".join(f"{row['families'][f]:.3f}" for f in families) + f" | {difference} |")
    return "\n".join(lines)


def _patch_targets(boxes_per_row: list, rows: list, patch: int) -> torch.Tensor:
    """[B, 1, N] one turn's target for llm_attention_loss: each row's boxes as answer-patch coverage."""
    return torch.from_numpy(np.stack([answer_patch_targets(boxes, (row["image"].height, row["image"].width), patch)
                                      for boxes, row in zip(boxes_per_row, rows)]))[:, None]


@torch.no_grad()
def marker_lookup(model, processor, pages: int = 96, seed: int = 5, variant: str = "standard",
                  batch_size: int = 16) -> dict:
    """local_key at full tokens: "the digit right of the red square" is dark like every other digit, so the lookup
    must find the marker's colour in the digit's own token. Reports
    - `answers`: the share of first answer tokens that are the asked digit, another marker's digit (the page's other
      runs: a colour-blind lookup) or anything else;
    - `marker_colour_decodable`: the colour of the square left of each run's digit, linearly decodable from the
      digit's token at the input of each LLM layer (ridge, 5-way, chance 0.2);
    - `attention`: layer 1 head 0's mass (the supervised head; geometric mean over pages) on the asked digit, on
      the asked square and on the other runs' digits."""
    with eager_attention(model):
        return _marker_lookup(model, processor, pages, seed, variant, batch_size)


def _marker_lookup(model, processor, pages, seed, variant, batch_size) -> dict:
    digits = processor.tokenizer.convert_tokens_to_ids([str(d) for d in range(10)])
    grid = model.config.grid_size[1]  # cells per row of the model's patch grid (the collator's targets)
    answers = {"asked digit": 0, "another marker's digit": 0, "other": 0}
    features, colours, masses = {}, [], {"asked digit": [], "asked square": [], "other markers' digits": []}
    for start in range(0, pages, batch_size):
        rows = [render_sample("local_key", np.random.default_rng([seed, i]), variant=variant)
                for i in range(start, min(start + batch_size, pages))]
        patch = rows[0]["image"].width // grid
        batch = ArrCocCollator(processor)(rows)
        prompt = {key: batch[key] for key in ("input_ids", "attention_mask", "labels")}
        out = model(**prompt, pixel_values=batch["pixel_values"], budget="full", output_attentions=True,
                    output_hidden_states=True)
        image = out.image_outputs
        predicted = first_answer_predictions(out.logits, batch["labels"]).tolist()
        first = spliced_layout(batch["input_ids"], batch["attention_mask"], model.config.image_token_id,
                               image.visual_token_mask, out.hidden_states[0].shape[1])[2]
        for b, row in enumerate(rows):
            if predicted[b] == digits[int(row["answers"][0])]:
                answers["asked digit"] += 1
            elif predicted[b] in [digits[int(answer)] for answer in row["extra_answers"]]:
                answers["another marker's digit"] += 1
            else:
                answers["other"] += 1
            for question, boxes in zip([row["question"]] + row["extra_questions"], [row["boxes"]] + row["extra_boxes"]):
                cell = int(boxes[0][1] // patch) * grid + int(boxes[0][0] // patch)
                position = int(torch.nonzero(image.token_sources[b] == cell)[0])
                for layer, hidden in enumerate(out.hidden_states):
                    features.setdefault(layer, []).append(hidden[b, first[b] + position])
                colours.append(COLOR_NAMES.index(question[slice(*question_key_span(question))]))
        squares = [[[x0 - patch, y0, x1 - patch, y1] for x0, y0, x1, y1 in row["boxes"]] for row in rows]
        others = [[box for boxes in row["extra_boxes"] for box in boxes] for row in rows]
        for name, boxes in (("asked digit", [row["boxes"] for row in rows]), ("asked square", squares),
                            ("other markers' digits", others)):
            loss = llm_attention_loss(out.attentions, [1], batch["input_ids"], batch["attention_mask"],
                                      batch["labels"], model.config.image_token_id, image.visual_token_mask,
                                      image.token_sources, _patch_targets(boxes, rows, patch), head=0)
            masses[name].append(float(torch.exp(-loss)))
    labels = torch.tensor(colours)
    return {"answers": {name: count / pages for name, count in answers.items()},
            "marker_colour_decodable": [ridge_accuracy(torch.stack(features[layer]), labels, 5)
                                        for layer in sorted(features)],
            "attention": {name: float(np.exp(np.mean(np.log(values)))) for name, values in masses.items()},
            "pages": pages, "digits": len(labels)}


@torch.no_grad()
def pooled_digit(model, processor, pages: int = 960, seed: int = 77, variant: str = "randomized",
                 batch_size: int = 16, windows: tuple = (2, 4)) -> dict:
    """Why uniform pooling reads local_color at chance: the asked digit (the key-coloured cell's), linearly
    decodable (ridge, 10-way, chance 0.1) from the answer cell's SAM feature alone, from the average of the SAM
    features of the w x w window holding it (uniform pooling's input: 2x2 at 64 tokens, 4x4 at 16), from that
    window's pooled token in LLM space (after CLIP and the adapter) and from the cell's own token at full tokens. A
    checkpoint with a learned compressor (selection "compress") also gives its compressed token, in SAM space and in
    LLM space."""
    grid = model.config.grid_size[1]
    tiers = {w: model.config.num_patches // (w * w) for w in windows}
    compressor = model.model.allocator.compressor
    kinds = ("sam_pool", "llm_pool") + (("sam_compress", "llm_compress") if compressor else ())
    features = {name: [] for name in ["sam_cell", "llm_full_cell"] + [f"{kind}_{w}x{w}" for w in windows
                                                                       for kind in kinds]}
    labels = []
    for start in range(0, pages, batch_size):
        rows = [render_sample("local_color", np.random.default_rng([seed, i]), variant=variant)
                for i in range(start, min(start + batch_size, pages))]
        patch = rows[0]["image"].width // grid
        batch = ArrCocCollator(processor)(rows)
        sam = model.model.get_patch_features(batch["pixel_values"])  # [B, N, C]
        prompt = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], patch_features=sam)
        full = model.model.get_image_features(**prompt, budget="full", selection="full").pooler_output
        tokens = {f"llm_pool_{w}": model.model.get_image_features(**prompt, budget=tiers[w], selection="uniform")
                  .pooler_output for w in windows}
        if compressor:
            for w in windows:
                tokens[f"sam_compress_{w}"] = compressor(sam, tiers[w])
                tokens[f"llm_compress_{w}"] = model.model.get_image_features(
                    **prompt, budget=tiers[w], selection="compress").pooler_output
        for b, row in enumerate(rows):
            r, c = int(row["boxes"][0][1] // patch), int(row["boxes"][0][0] // patch)
            labels.append(int(row["answers"][0]))
            features["sam_cell"].append(sam[b, r * grid + c])
            features["llm_full_cell"].append(full[b, r * grid + c])
            cells = sam[b].view(grid, grid, -1)
            for w in windows:
                top, left = (r // w) * w, (c // w) * w
                features[f"sam_pool_{w}x{w}"].append(cells[top : top + w, left : left + w].flatten(0, 1).mean(0))
                for kind in kinds[1:]:
                    features[f"{kind}_{w}x{w}"].append(tokens[f"{kind}_{w}"][b, (r // w) * (grid // w) + c // w])
    digits = torch.tensor(labels)
    return {**{name: ridge_accuracy(torch.stack(values), digits) for name, values in features.items()},
            "pages": pages, "tiers": tiers}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--pages", type=whole_number(1), default=8)
    parser.add_argument("--tokens", type=whole_number(1), default=None,
                        help="the sparse view at this many tokens (default: all)")
    parser.add_argument("--variant", default="standard", choices=VARIANTS,
                        help="page look ('heldout' is the test split's)")
    parser.add_argument("--decode-pages", type=whole_number(0), default=0,
                        help="also probe the lookup's two hops over this many pages (colour_decodability; 512+)")
    parser.add_argument("--heldout-factors", type=whole_number(0), default=0,
                        help="also probe each held-out factor over this many pages (heldout_factors; 48)")
    parser.add_argument("--heldout-accuracy", type=whole_number(0), default=0,
                        help="also answer this many held-out questions per held-out factor (heldout_accuracy; 1200)")
    parser.add_argument("--heldout-seed", type=int, default=1,
                        help="the pages --heldout-accuracy draws (1: not the test questions eval.py reports, seed 0)")
    parser.add_argument("--marker-pages", type=whole_number(0), default=0,
                        help="also probe local_key's marker lookup over this many pages (marker_lookup; 96)")
    parser.add_argument("--count-questions", type=whole_number(0), default=0,
                        help="also measure the count target's sink share per true count over this many validation "
                             "global_count questions (count_sink_shares; 360)")
    parser.add_argument("--count-sink-weight", type=positive_number, default=1.0,
                        help="the sink weight the checkpoint was trained with (llm_attention_count_sink_weight): "
                             "the target share w/(n+w) printed beside each count's (default 1: 1/(n+1))")
    parser.add_argument("--pooled-pages", type=whole_number(0), default=0,
                        help="also probe what uniform pooling keeps of the asked digit over this many pages "
                             "(pooled_digit; 960)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, processor = load(args.checkpoint)
    result = probe(model, processor, args.pages, tokens=args.tokens, variant=args.variant)
    print(f"{result['visual_tokens']} visual tokens; the answer's digit is the argmax on "
          f"{result['first_answer_token_accuracy']:.2f} of the pages")
    print("digit decodable at the visual positions, input of layer 0..L:",
          " ".join(f"{value:.2f}" for value in result["glyph_decodable_per_layer_input"]))
    for layer, heads in enumerate(result["answer_attention_per_layer_head"]):
        print(f"layer {layer}: attention mass on the answer cell per head (geometric mean over pages):",
              " ".join(f"{value:.2f}" for value in heads), "| on the other key-colour digits:",
              " ".join(f"{value:.2f}" for value in result["other_key_attention_per_layer_head"][layer]))
    if args.decode_pages:
        hops = colour_decodability(model, processor, args.decode_pages, variant=args.variant)
        print(f"over {hops['pages']} pages ({hops['key_tokens']} key-coloured tokens), input of layer 0..L, chance 0.2:")
        print("  the question's colour decodable at the answer-predicting position:",
              " ".join(f"{value:.2f}" for value in hops["question_colour_at_answer"]))
        print("  the key colour decodable at the key-coloured visual positions:",
              " ".join(f"{value:.2f}" for value in hops["key_colour_at_visual"]))
    if args.heldout_factors:
        print(f"held-out local_color pages ({args.heldout_factors}), one factor set back to the standard look's:")
        for name, values in heldout_factors(model, processor, args.heldout_factors).items():
            print(f"  {name:34s} digit decodable at the LLM's input {values['digit_decodable_at_input']:.3f}, "
                  f"first answer token right {values['first_answer_token_accuracy']:.2f}")
    if args.heldout_accuracy:
        rows = heldout_accuracy(model, processor, args.heldout_accuracy, seed=args.heldout_seed)
        print(f"{rows[0]['n']} held-out questions (test split, seed {args.heldout_seed}) at full tokens, one factor set "
              "back to the standard look's:")
        print(heldout_accuracy_table(rows))
    if args.marker_pages:
        marker = marker_lookup(model, processor, args.marker_pages, variant=args.variant)
        print(f"local_key, {marker['pages']} pages, full tokens; first answer token:",
              ", ".join(f"{name} {share:.3f}" for name, share in marker["answers"].items()))
        print(f"  the marker's colour decodable at its run's digit ({marker['digits']} digits), input of layer 0..L, "
              "chance 0.2:", " ".join(f"{value:.2f}" for value in marker["marker_colour_decodable"]))
        print("  layer 1 head 0 attention mass:",
              ", ".join(f"{name} {value:.3f}" for name, value in marker["attention"].items()))
    if args.count_questions:
        print(f"global_count, validation, full tokens: layer 1's attention from the answer-predicting position to "
              "itself (the count target's sink), per head, by true count; greedy first answer token:")
        shares = count_sink_shares(model, processor, args.count_questions, sink_weight=args.count_sink_weight)
        for n, row in shares.items():
            print(f"  {n} ({row['questions']} questions): " + " ".join(f"{v:.3f}" for v in row["sink_share"])
                  + f" (head 0 sd {row['sink_share_sd'][0]:.3f}; target w/(n+w) at w = {args.count_sink_weight:g}: "
                  f"{row['target']:.3f}); answers "
                  + ", ".join(f"{token} {count}" for token, count in row["answers"].items()))
    if args.pooled_pages:
        pooled = pooled_digit(model, processor, args.pooled_pages)
        print(f"local_color, {pooled['pages']} random-look pages: the asked digit linearly decodable (ridge, chance "
              f"0.1) from the answer cell's SAM feature {pooled['sam_cell']:.3f}, its full-token LLM-space token "
              f"{pooled['llm_full_cell']:.3f};")

        def compressed(w):  # a checkpoint with a learned compressor (selection "compress") has these too
            if f"sam_compress_{w}x{w}" not in pooled:
                return ""
            return (f"; the learned compressor's token {pooled[f'sam_compress_{w}x{w}']:.3f} in SAM space, "
                    f"{pooled[f'llm_compress_{w}x{w}']:.3f} in LLM space")

        for w, tier in pooled["tiers"].items():
            print(f"  uniform pooling to {tier} tokens ({w}x{w} cells): the window's mean SAM feature "
                  f"{pooled[f'sam_pool_{w}x{w}']:.3f}, its pooled LLM-space token {pooled[f'llm_pool_{w}x{w}']:.3f}"
                  + compressed(w))


if __name__ == "__main__":
    main()
