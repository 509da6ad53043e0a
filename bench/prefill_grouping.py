"""Prefill of a mixed-tier batch: generate grouped by tier vs one batch padded to the largest tier.

Both run side by side in one process on the demo preset (random weights: the cost does not depend on them),
batch 8, the tiers forced per sample so that the mix is the same every run (a trained allocator's "auto"
decisions give such mixes). "Prefill" is generate(max_new_tokens=1): SAM, allocator, CLIP, adapter and the LLM
prefill, i.e. the time to the first token. A second measurement starts from cached SAM features, the case
where grouping changes the largest share of the work.

    python bench/prefill_grouping.py [--repeats 9] [--tiers 8 8 16 16 32 32 64 256] [--threads 1]

One thread by default: on this shared 2-core machine, two torch threads spin-wait for each other whenever another
process holds a core, and timings then swing by 10x between repeats; one thread stays within ~10%. The speed-up is
a property of the work (positions, tokens), which the thread count does not change.

Prints min/median/max per mode, in wall time and in process CPU time (steadier on a shared machine), and the
speed-up (padded / grouped, of medians and of minimums); writes outputs/bench/prefill_grouping.json.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transformers import AutoConfig, AutoProcessor  # noqa: E402

from modeling_arrcoc import ArrCocForConditionalGeneration  # noqa: E402

PRESET = ROOT / "configs" / "model" / "demo"
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


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiers", type=int, nargs="+", default=[8, 8, 16, 16, 32, 32, 64, 256],
                        help="one tier per sample (the batch size is their number)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "outputs" / "bench" / "prefill_grouping.json")
    return parser.parse_args()


def build(tiers):
    torch.manual_seed(0)
    model = ArrCocForConditionalGeneration(AutoConfig.from_pretrained(PRESET)).eval()
    processor = AutoProcessor.from_pretrained(PRESET)
    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)) for _ in tiers]
    chats = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]}]
             for i in range(len(tiers))]
    texts = processor.apply_chat_template(chats, add_generation_prompt=True)
    return model, processor(images=pages, text=texts)


def time_modes(model, inputs, tiers, repeats):
    """Wall and process-CPU seconds per call, the two modes interleaved so that load on the machine hits both
    alike. CPU time is the steadier of the two on a shared machine: waiting for a core does not count."""
    times = {(mode, clock): [] for mode in ("grouped", "padded") for clock in ("wall", "cpu")}
    for step in range(repeats + 1):  # the first round warms up
        for mode in ("grouped", "padded") if step % 2 == 0 else ("padded", "grouped"):
            wall, cpu = time.perf_counter(), time.process_time()
            model.generate(**inputs, budget=tiers, max_new_tokens=1, do_sample=False,
                           group_by_tier=mode == "grouped")
            if step:
                times[mode, "wall"].append(time.perf_counter() - wall)
                times[mode, "cpu"].append(time.process_time() - cpu)
    return times


def llm_positions(model, inputs, tiers):
    """(batch x length) positions each mode feeds the LLM in its prefill(s)."""
    positions = {}
    for mode in ("grouped", "padded"):
        shapes = []
        hook = model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: shapes.append(kwargs["inputs_embeds"].shape[:2]), with_kwargs=True
        )
        model.generate(**inputs, budget=tiers, max_new_tokens=1, group_by_tier=mode == "grouped")
        hook.remove()
        positions[mode] = sum(b * length for b, length in shapes)
    return positions


def summary(seconds):
    return {"min_ms": 1e3 * min(seconds), "median_ms": 1e3 * statistics.median(seconds), "max_ms": 1e3 * max(seconds),
            "runs": len(seconds)}


def measure(model, inputs, tiers, repeats):
    times = time_modes(model, inputs, tiers, repeats)
    result = {}
    for clock in ("wall", "cpu"):
        part = {mode: summary(times[mode, clock]) for mode in ("grouped", "padded")}
        part["speedup_of_medians"] = part["padded"]["median_ms"] / part["grouped"]["median_ms"]
        part["speedup_of_minimums"] = part["padded"]["min_ms"] / part["grouped"]["min_ms"]  # least disturbed
        result[clock] = part
    return result


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    model, inputs = build(args.tiers)
    with torch.no_grad():
        grouped = model.generate(**inputs, budget=args.tiers, max_new_tokens=4, do_sample=False)
        padded = model.generate(**inputs, budget=args.tiers, max_new_tokens=4, do_sample=False, group_by_tier=False)
        assert torch.equal(grouped, padded), "grouping must not change any sample's tokens"
        features = model.model.get_patch_features(inputs["pixel_values"])
        cached = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "patch_features": features}
        report = {
            "preset": "demo", "batch_size": len(args.tiers), "tiers": args.tiers,
            "prompt_tokens": inputs["attention_mask"].sum(-1).tolist(),
            "llm_prefill_positions": llm_positions(model, inputs, args.tiers),
            "time_to_first_token": measure(model, inputs, args.tiers, args.repeats),
            "after_cached_sam_features": measure(model, cached, args.tiers, args.repeats),
            "machine": {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                        "processor": platform.processor() or platform.machine(), "torch": torch.__version__},
        }
    for name in ("time_to_first_token", "after_cached_sam_features"):
        for clock in ("wall", "cpu"):
            part = report[name][clock]
            for mode in ("grouped", "padded"):
                t = part[mode]
                print(f"{name:26s} {clock:4s} {mode:8s} min {t['min_ms']:7.1f} ms  median {t['median_ms']:7.1f} ms  "
                      f"max {t['max_ms']:7.1f} ms  ({t['runs']} runs)")
            print(f"{name:26s} {clock:4s} speed-up (padded / grouped): medians {part['speedup_of_medians']:.2f}x, "
                  f"minimums {part['speedup_of_minimums']:.2f}x")
    print(f"LLM prefill positions: {report['llm_prefill_positions']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()


__all__ = ["main", "measure"]
