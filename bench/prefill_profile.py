"""Where one prefill's time goes, eager against compiled: a torch.profiler summary per operator and input shape.

    python -m bench.prefill_profile --preset base --tier full --threads 2 [--switch]

One prefill (`model(**inputs, budget=tier, use_cache=True, logits_to_keep=1)`, prefill_decode's inputs) eager, then
compiled (`fullgraph=True`), each after a warm call, under torch.profiler. Prints each variant's wall time and the
attention and matrix-product calls grouped by input shape, the rows that name a fixed cost (#23). `--switch` runs the
compiled call with the grouped-query switch on, as prefill_decode does. What it found at full tokens on the base
preset (docs/results.md, "Why compiled lost at full tokens"): compiled, the language model's attention got a
materialized causal mask. An unpadded prompt now runs without one (its inputs leave out an all-ones mask, as
prefill_decode's do), and the two variants' attention calls match.
"""

import argparse
import time

from bench import common  # first: it pins the thread count before torch starts its pool
from bench.prefill_decode import query_inputs, without_all_ones_mask

import torch

SHOWN = ("flash_attention", "scaled_dot_product", "aten::mm", "aten::addmm", "aten::bmm")


def profile_call(call) -> tuple:
    """(wall seconds, [(operator, calls, self seconds, input shapes)] for the rows in SHOWN, largest first)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        call()
        wall = time.perf_counter() - start
    rows = [(event.key, event.count, event.self_cpu_time_total / 1e6, event.input_shapes)
            for event in prof.key_averages(group_by_input_shape=True) if any(name in event.key for name in SHOWN)]
    return wall, sorted(rows, key=lambda row: -row[2])


def run(preset="demo", tier="full", threads=1, switch=False, backend="inductor", top=12) -> dict:
    common.use_threads(threads)
    model, processor = common.load_model(preset, needs_processor=False)
    inputs = without_all_ones_mask(query_inputs(model, processor, common.synthetic_rows(model.config, 1)))
    tier = tier if tier == "full" else int(tier)
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=backend)

    @torch.no_grad()
    def eager():
        return model(**inputs, budget=tier, use_cache=True, logits_to_keep=1).logits

    @torch.no_grad()
    def compiled_call():
        call = lambda: compiled(**inputs, budget=tier, use_cache=True, logits_to_keep=1).logits  # noqa: E731
        return common.with_switch(call) if switch else call()

    result = {"preset": str(preset), "tier": str(tier), "threads": threads, "switch": switch, "variants": {}}
    for name, call in (("eager", eager), ("compiled", compiled_call)):
        call()  # compiles, and warms the allocator
        wall, rows = profile_call(call)
        result["variants"][name] = {"wall_s": wall, "rows": rows[:top]}
    return result


def format_report(result: dict) -> str:
    lines = [f"{result['preset']} preset, tier {result['tier']}, batch 1, {result['threads']} thread(s), compiled "
             f"{'with' if result['switch'] else 'without'} the grouped-query switch"]
    for name, variant in result["variants"].items():
        lines.append(f"{name}: {variant['wall_s']:.2f} s wall")
        lines += [f"  {op[:48]:48s} {calls:5d} calls {seconds:8.3f} s  {shapes}"
                  for op, calls, seconds, shapes in variant["rows"]]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo", help="model preset under configs/model, or a directory")
    parser.add_argument("--tier", default="full", help="a tier's token count, or full")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--switch", action="store_true", help="compiled with TRANSFORMERS_SDPA_FORCE_GQA=1")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (tests: aot_eager)")
    args = parser.parse_args(argv)
    result = run(args.preset, args.tier, args.threads, args.switch, args.backend)
    print(format_report(result))
    return result


__all__ = ["format_report", "main", "profile_call", "run"]


if __name__ == "__main__":
    main()
