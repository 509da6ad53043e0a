"""Prefill of a mixed-tier batch: generate grouped by tier vs one batch padded to the largest tier.

Both run side by side in one process on the demo preset (random weights: the cost does not depend on them),
batch 8, the tiers forced per sample so that the mix is the same every run (a trained allocator's "auto"
decisions give such mixes). "Prefill" is generate(max_new_tokens=1): SAM, allocator, CLIP, adapter and the LLM
prefill, i.e. the time to the first token. A second measurement starts from cached SAM features, the case
where grouping changes the largest share of the work.

    python -m bench.prefill_grouping [--repeats 9] [--tiers 4 4 8 8 16 16 64 256] [--threads 1]

One thread by default (see bench/common.py). Prints min/median/max per mode, in wall time and in process CPU
time (steadier on a shared machine), and the speed-up (padded / grouped) per round as min/median/max; writes
outputs/bench/prefill_grouping.json.
"""

import argparse

from bench import common  # first: it pins the thread count before torch starts its pool

import numpy as np
import torch
from PIL import Image

from modeling_arrcoc.data.collator import chat_prompt

NAME = "prefill_grouping"
MODES = ("grouped", "padded")
QUESTIONS = (
    "What is the digit in row 2, column 5?",
    "What colour is the square at the top left?",
    "How many red circles are on the page?",
    "Which shape is below the blue triangle?",
    "Read the number in the box.",
    "Is there a green star anywhere on the page?",
    "What is written in the third row of the table, second column, next to the total?",
    "Count every digit on the page that is larger than five.",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, repeats=9)
    parser.add_argument("--tiers", type=int, nargs="+", default=None,
                        help="one tier per sample (the batch size is their number); default: the preset's mix")
    args = parser.parse_args(argv)
    args.tiers = args.tiers or mixed_tiers(args.preset)
    return args


def mixed_tiers(preset) -> list[int]:
    """Two samples at each tier but the largest, one at the largest: the preset's own budgets."""
    from transformers import AutoConfig

    import modeling_arrcoc  # noqa: F401

    budgets = AutoConfig.from_pretrained(common.preset_path(preset)).budgets
    return [b for b in budgets[:-1] for _ in range(2)] + [budgets[-1]]


def build(preset, tiers):
    model, processor = common.load_model(preset)
    size = model.config.vision_config.image_size
    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in tiers]
    texts = [chat_prompt(processor, QUESTIONS[i % len(QUESTIONS)]) for i in range(len(tiers))]
    return model, processor(images=pages, text=texts)


def llm_positions(model, inputs, tiers) -> dict:
    """(batch x length) positions each mode feeds the LLM in its prefill(s)."""
    positions = {}
    for mode in MODES:
        shapes = []
        hook = model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: shapes.append(kwargs["inputs_embeds"].shape[:2]), with_kwargs=True
        )
        model.generate(**inputs, budget=tiers, max_new_tokens=1, group_by_tier=mode == "grouped")
        hook.remove()
        positions[mode] = sum(b * length for b, length in shapes)
    return positions


def measure(model, inputs, tiers, repeats) -> dict:
    """Both modes interleaved in the same rounds; speed-up = padded / grouped per round."""
    calls = {mode: lambda mode=mode: model.generate(**inputs, budget=tiers, max_new_tokens=1, do_sample=False,
                                                    group_by_tier=mode == "grouped")
             for mode in MODES}
    times = common.interleaved(calls, repeats)
    result = {mode: common.clock_stats(times[mode]) for mode in MODES}
    result["speedup"] = common.clock_ratios(times["padded"], times["grouped"])
    return result


def run(preset="demo", tiers=None, repeats=9, threads=1) -> dict:
    common.use_threads(threads)
    tiers = list(tiers or mixed_tiers(preset))
    model, inputs = build(preset, tiers)
    with torch.no_grad():
        grouped = model.generate(**inputs, budget=tiers, max_new_tokens=4, do_sample=False)
        padded = model.generate(**inputs, budget=tiers, max_new_tokens=4, do_sample=False, group_by_tier=False)
        if not torch.equal(grouped, padded):
            raise RuntimeError("grouping must not change any sample's tokens")
        features = model.model.get_patch_features(inputs["pixel_values"])
        cached = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
                  "patch_features": features}
        return {
            "preset": str(preset), "batch_size": len(tiers), "tiers": tiers, "repeats": repeats,
            "prompt_tokens": inputs["attention_mask"].sum(-1).tolist(),
            "llm_prefill_positions": llm_positions(model, inputs, tiers),
            "time_to_first_token": measure(model, inputs, tiers, repeats),
            "after_cached_sam_features": measure(model, cached, tiers, repeats),
        }


def markdown(result: dict) -> str:
    rows = []
    for name, label in (("time_to_first_token", "time to first token (SAM included)"),
                        ("after_cached_sam_features", "from cached SAM features")):
        part = result[name]
        rows.append([label, common.fmt_range(part["grouped"]["wall"]), common.fmt_range(part["padded"]["wall"]),
                     common.fmt_range(part["speedup"]["wall"], 2, "x"), f"{part['speedup']['cpu']['median']:.2f}x"])
    headers = ["", "grouped ms median [min-max]", "padded ms", "speed-up (wall)", "(CPU time)"]
    positions = result["llm_prefill_positions"]
    return "\n".join([
        f"**Prefill grouping** (`bench/prefill_grouping.py`, {result['preset']} preset, batch {result['batch_size']}, "
        f"tiers {'/'.join(map(str, result['tiers']))}, generate(max_new_tokens=1), {result['repeats']} interleaved "
        f"rounds; {common.machine_line(result)}):", "", common.markdown_table(headers, rows), "",
        f"LLM prefill positions: {positions['grouped']} grouped, {positions['padded']} padded.",
    ])


def main(argv=None):
    args = parse_args(argv)
    result = run(args.preset, args.tiers, args.repeats, args.threads)
    common.publish(NAME, result, args.output_dir, markdown)


if __name__ == "__main__":
    main()


__all__ = ["markdown", "measure", "run"]
