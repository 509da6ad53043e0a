"""model_card.md from an evaluation report: Hub metadata, intended use, architecture, training, measured tables.

Every number in the card comes from the report (`evaluation.evaluate` / eval.json); nothing is typed by hand.
What the report cannot know (training phases and configs, training data, licence) comes in `extra`.
"""

from pathlib import Path

import yaml

from .report import headline

DEFAULT_LICENSE = "apache-2.0"
DEFAULT_TAGS = ("arr-coc", "vision-language", "document-vqa", "visual-token-compression", "adaptive-compute")
# Columns of the per-task table: ARR-COC's own methods, not the baselines (those are in the main table).
OWN_KINDS = ("auto", "tier_", "full")


def _comparison(report) -> str:
    """The headline comparison first (report.headline), and what the relevance tag is."""
    lines = headline(report)
    if not lines:
        return ""
    return ("## The comparison as it stands\n\n" + "\n".join(f"- {line}" for line in lines) + "\n\n" + RELEVANCE_TAG)


RELEVANCE_TAG = (
    "The relevance tag: each token ARR-COC keeps carries tanh(z/4) of its allocator z-score, added in the language "
    "model's embedding space through a zero-initialised linear map, so the language model finds the relevant token in "
    "one hop. Baselines are trained without it (their selection defines no such score); through ARR-COC's own "
    "checkpoint they would feed its language model a tag it never saw, which is why those runs are diagnostics only."
)


def write_model_card(report: dict, path, extra: dict | None = None) -> Path:
    """Write model_card.md for `report` to `path` and return the path.

    extra (all optional):
        name: model name (default: the checkpoint folder's name).
        license: Hub licence id (default apache-2.0). base_model: Hub id(s) the model was built from.
        tags: added to the default tags. datasets: Hub dataset ids it was trained or evaluated on (default: the
            evaluation dataset when it is a Hub dataset).
        training: markdown on the training phases (e.g. the phase YAMLs used). data: markdown on training data.
        architecture / intended_use / limitations: markdown added to (limitations) or replacing those sections.
    """
    extra = dict(extra or {})
    name = extra.get("name") or Path(str(report["meta"].get("checkpoint") or "arrcoc")).name
    sections = [
        _front_matter(report, name, extra),
        f"# {name}\n\n{_summary(report)}",
        _comparison(report),
        _intended_use(extra),
        _usage(),
        _architecture(report, extra),
        "## Training\n\n" + (extra.get("training") or "_Not provided with this evaluation._"),
        "## Training data\n\n" + (extra.get("data") or "_Not provided with this evaluation._"),
        _evaluation(report),
        _limitations(report, extra),
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(section for section in sections if section).rstrip() + "\n")
    return path


# ----------------------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------------------


def _front_matter(report, name, extra) -> str:
    meta = report["meta"]
    metadata = {
        "license": extra.get("license", DEFAULT_LICENSE),
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "tags": list(DEFAULT_TAGS) + [t for t in extra.get("tags", []) if t not in DEFAULT_TAGS],
    }
    if extra.get("base_model"):
        metadata["base_model"] = extra["base_model"]
    datasets = extra.get("datasets") or _hub_datasets(meta)
    if datasets:
        metadata["datasets"] = list(datasets)
    metadata["metrics"] = [meta["metric"]]
    metadata["model-index"] = [{"name": name, "results": [_model_index_result(report)]}]
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---"


def _hub_datasets(meta) -> list:
    source = meta.get("dataset_source")
    return [source] if source and "/" in source else []


def _model_index_result(report) -> dict:
    meta = report["meta"]
    methods = report["methods"]
    metrics = [
        {"type": meta["metric"], "value": m["accuracy"], "name": f"{meta['metric']} ({_method_label(n, m)})"}
        for n, m in methods.items() if _is_own(n)
    ]
    if "auto" in methods:
        metrics.append({"type": "mean_visual_tokens", "value": methods["auto"]["mean_visual_tokens"],
                        "name": "mean visual tokens per query (auto)"})
    dataset = {"name": f"{meta.get('dataset')} ({meta.get('split')})", "type": meta.get("dataset_source") or
               meta.get("dataset"), "split": meta.get("split")}
    return {"task": {"type": "image-text-to-text", "name": "Visual question answering"}, "dataset": dataset,
            "metrics": metrics}


def _is_own(name: str) -> bool:
    return name.startswith(OWN_KINDS)


def _method_label(name, method) -> str:
    return f"{name}, {method['mean_visual_tokens']:.1f} visual tokens/query"


# ----------------------------------------------------------------------------------------------------------
# Prose sections
# ----------------------------------------------------------------------------------------------------------


def _summary(report) -> str:
    meta, methods = report["meta"], report["methods"]
    text = (
        "ARR-COC is a vision-language model that decides, per image and per question, how many visual tokens to "
        f"spend and where: an allocator picks one of the tiers {meta['budgets']} out of {meta['num_patches']} "
        "SAM patches and keeps the patches the question needs."
    )
    if "auto" in methods:
        auto = methods["auto"]
        text += (
            f" On {meta.get('dataset')} ({meta.get('split')}, {meta['num_samples']} questions) it scores "
            f"{auto['accuracy']:.3f} {meta['metric']} with {auto['mean_visual_tokens']:.1f} visual tokens per query "
            f"on average ({auto['compression_ratio']:.1f}x fewer than patches)."
        )
    return text


def _intended_use(extra) -> str:
    default = (
        "Question answering over document-like images (pages, forms, charts, infographics) where the cost of "
        "visual tokens matters: the allocator spends few tokens on questions about one small field and many on "
        "questions that need the whole page. It is a research model; it is not meant for decisions about people, "
        "for safety-critical reading (medical, legal, financial documents) without human review, or for "
        "surveillance."
    )
    return "## Intended use\n\n" + extra.get("intended_use", default)


def _usage() -> str:
    return """## How to use

```python
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(checkpoint, trust_remote_code=True).eval()
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the total?"}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
inputs = processor(images=[Image.open("page.png")], text=[prompt], return_tensors="pt")
# budget="auto": the allocator picks the tier; a tier value (e.g. 64) or "full" forces one.
output = model.generate(**inputs, budget="auto", max_new_tokens=32)
print(processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
```"""


def _architecture(report, extra) -> str:
    meta = report["meta"]
    rows, cols = meta["grid_size"]
    # Reports written before the key existed came from folding checkpoints (the old default).
    dropped = ("folded into their most similar kept one" if meta.get("fold_dropped", True)
               else "discarded, not folded into the kept ones")
    text = (
        f"SAM ViT encoder over the whole page ({rows}x{cols} = {meta['num_patches']} patches) -> allocator "
        "(query-independent hotspot detector + question-to-patch cross-attention -> patch scores; budget predictor "
        f"-> one tier of {meta['budgets']}) -> compression heads (top-K patches in raster order, dropped patches "
        f"{dropped}) -> CLIP transformer fed the K selected features with their grid "
        "positions -> quality adapter (tier-conditioned normalization, VET prototypes, Ovis-style probabilistic "
        "visual embedding table) -> Qwen3 language model, with the K embeddings spliced in at the `<image>` token."
    )
    return "## Architecture\n\n" + text + ("\n\n" + extra["architecture"] if extra.get("architecture") else "")


def _limitations(report, extra) -> str:
    meta = report["meta"]
    items = [
        f"Measured on {meta['num_samples']} questions of {meta.get('dataset')} ({meta.get('split')}); other "
        "domains, languages and resolutions are not covered by these numbers.",
        f"A tier larger than the {meta['num_patches']}-patch grid keeps every patch: the token counts above are "
        "measured, not the nominal tier values.",
        "Latency is wall time on the evaluation device with batched greedy decoding; it depends on hardware, batch "
        "size and answer length.",
        "The allocator can under-spend: calibration `under` is the share of answerable questions where it chose a "
        "tier below the smallest one that answers correctly.",
    ]
    text = "\n".join(f"- {item}" for item in items)
    return "## Limitations\n\n" + text + ("\n\n" + extra["limitations"] if extra.get("limitations") else "")


# ----------------------------------------------------------------------------------------------------------
# Measured tables
# ----------------------------------------------------------------------------------------------------------


def _whose_methods(report) -> str:
    """Which rows are this checkpoint and which are others: untrained baselines run through this checkpoint (a
    diagnostic), `trained_*` rows are other checkpoints on the same questions."""
    others = [name for name in report["methods"] if name.startswith("trained_")]
    through = [name for name in report["methods"] if "@" in name and not name.startswith("trained_")]
    parts = []
    if through:
        parts.append(" Baselines without a `trained_` prefix run through this same checkpoint at the same budgets.")
    if others:
        parts.append(" `trained_*` rows are other checkpoints, each trained by the same phases with its own selection, "
                     "evaluated on the same questions.")
    return "".join(parts)


def _evaluation(report) -> str:
    meta = report["meta"]
    header = (
        f"Dataset: {meta.get('dataset')} (`{meta.get('dataset_source')}`), split {meta.get('split')}, "
        f"{meta['num_samples']} questions; metric: {meta['metric']}. Checkpoint `{meta.get('checkpoint')}`, code "
        f"commit `{meta.get('commit')}`, evaluated {meta.get('created')} on {meta.get('device')} (batch "
        f"{meta.get('batch_size')}, greedy, at most {meta.get('max_new_tokens')} new tokens). Visual tokens are the "
        f"model's measured `visual_token_counts`.{_whose_methods(report)}"
    )
    parts = ["## Evaluation", header, _methods_table(report["methods"]), _per_task_table(report["methods"])]
    if report.get("calibration"):
        parts.append(_calibration_table(report["calibration"], meta))
    if report.get("per_tier"):
        parts.append(_per_tier_table(report["per_tier"]))
    if report.get("skipped"):
        parts.append("Not run: " + "; ".join(f"`{n}` ({why})" for n, why in report["skipped"].items()) + ".")
    return "\n\n".join(parts)


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value, spec=".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _methods_table(methods) -> str:
    header = ["method", "accuracy", "mean visual tokens", "p95 visual tokens", "compression", "latency (ms/query)"]
    rows = [
        [f"**{name}**" if name == "auto" else name, _fmt(m["accuracy"]), _fmt(m["mean_visual_tokens"], ".1f"),
         _fmt(m["p95_visual_tokens"], ".1f"), _fmt(m["compression_ratio"], ".1f") + "x",
         _fmt(m["latency_ms_per_query"], ".1f")]
        for name, m in methods.items()
    ]
    return "### Accuracy and visual tokens\n\n" + _table(header, rows) + _from_tiers_note(methods)


def _from_tiers_note(methods) -> str:
    """Why the price sweep has no latency: its answers were read from the forced tiers (eval.py --budget-costs)."""
    if not any(m.get("answers_from_tiers") for m in methods.values()):
        return ""
    check = next((m["answers_match_tiers"] for m in methods.values() if "answers_match_tiers" in m), None)
    tail = (f" auto at the model's own price was generated, and {check['same']} of its {check['n']} answers equal "
            "that reading." if check else "")
    return ("\n\nA token price changes only which tier each question gets, so the answers of auto at a chosen price "
            "(auto(cost=C)) are the forced tiers' answers at the tiers it picks, and it has no latency (n/a);" + tail)


def _per_task_table(methods) -> str:
    own = [name for name in methods if _is_own(name)]
    tasks = sorted({task for name in own for task in methods[name]["per_task"]})
    rows = [[task] + [_fmt(methods[name]["per_task"].get(task)) for name in own] for task in tasks]
    tokens = methods.get("auto", {}).get("per_task_visual_tokens")
    if tokens:  # where auto spends its tokens: the budget predictor's decision per family
        rows = [row + [_fmt(tokens.get(row[0]), ".1f")] for row in rows]
        own = own + ["auto: mean visual tokens"]
    return "### Accuracy per task family\n\n" + _table(["task"] + own, rows)


def _calibration_table(calibration, meta) -> str:
    note = (
        f"The allocator's tier (auto) against the oracle tier, the smallest forced tier that answers correctly "
        f"({meta['metric']} >= {meta.get('correct_threshold')}). Fractions are of the "
        f"{calibration['n'] - calibration['n_no_oracle']} questions that some tier answers; "
        f"{calibration['n_no_oracle']} of {calibration['n']} have no correct tier."
    )
    keys = ("exact", "within_one", "over", "under")
    return "### Budget calibration\n\n" + note + "\n\n" + _table(keys, [[_fmt(calibration[k]) for k in keys]])


def _per_tier_table(per_tier) -> str:
    header = ["tier", "auto chose it", "auto accuracy there", "mean visual tokens", "oracle tier for",
              "accuracy when forced"]
    rows = [
        [value, b["n_predicted"], _fmt(b["accuracy"]), _fmt(b["mean_visual_tokens"], ".1f"),
         "n/a" if b["n_oracle"] is None else b["n_oracle"], _fmt(b["forced_accuracy"])]
        for value, b in per_tier.items()
    ]
    return "### Per tier\n\n" + _table(header, rows)


__all__ = ["RELEVANCE_TAG", "write_model_card"]
