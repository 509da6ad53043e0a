"""Prefill (time to first token) and decode (per new token) timed apart, eager and compiled, at each tier.

The two phases have different limits, so each stands beside its own ideal:
- prefill: pixels to the first token's logits (SAM, the allocator, selection, CLIP, the adapter, the splice and the
  language model over the spliced prompt, with its KV cache built): one `model(**inputs, budget=tier,
  use_cache=True, logits_to_keep=1)` call. Its ideal speed-up over full tokens is the FLOP ratio (bench/flops.py).
- decode: a cached step of the language model (one new token per sample) after that prefill, timed as the mean of
  `DECODE_STEPS` steps back to back, in a static cache the prefill wrote (the route docs/inference.md documents; the
  default dynamic cache copies itself at every step, bench/decode_gqa.py). It reads every weight of the language
  model and the whole KV cache once, and does little arithmetic: its ideal speed-up is the ratio of bytes read per
  step, weights plus the KV cache at the tier's K tokens.
Each call runs eager and compiled (`torch.compile(fullgraph=True)`: at a fixed tier the forward is one graph,
docs/inference.md; with the grouped-query switch on, as that page advises), every variant of every tier interleaved
in the same rounds, so the ratios come from one run.

    python -m bench.prefill_decode [--preset demo] [--repeats 7] [--batch-sizes 1 8] [--tiers 4 64 full]
                                   [--no-compile] [--components]

Random weights: the cost does not depend on them. Writes outputs/bench/prefill_decode.json (demo preset), else
prefill_decode_<preset>.json. The base preset ships no processor offline: it times base_scale's fixed prompt.
"""

import argparse
import time
from pathlib import Path

from bench import common  # first: it pins the thread count before torch starts its pool
from bench.decode_gqa import STATIC_ROOM, DecodeStep
from bench.flops import llm_flops, lm_head_flops, query_flops, visual_tokens
from bench.token_cost import TIMED_STAGES, Query, bench_tiers

import torch

NAME = "prefill_decode"
VARIANTS = ("eager", "compiled")
# Cached steps per timed decode call, reported per step. Back to back, as generate runs them: a single step timed
# right after a 10-second prefill measured the wait after the prefill too (compiled at tier 64 on the base preset:
# 0.67x eager in wall time, level in CPU time; 1.11x faster with its steps back to back, docs/results.md).
DECODE_STEPS = 4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, repeats=7)
    common.add_vision_autocast_arg(parser)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tiers", nargs="+", default=None, help="tiers to time (default: every tier, then full)")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--components", action="store_true",
                        help="also time each component of the prefill and one decode step (SAM, allocator, "
                             "selection, CLIP, adapter, splice, LLM prefill, decode), eager, in the same rounds")
    return parser.parse_args(argv)


def _tier(value):
    return value if value == "full" else int(value)


class Phases:
    """One batch's prefill and decode-step calls at one tier, eager or compiled. Compiled calls run with the
    grouped-query switch on (common.with_switch), the route docs/inference.md documents for compiling. The decode
    steps continue a static cache that an eager multimodal prefill of the same inputs wrote (each Phases its own,
    since steps write it in place), `STATIC_ROOM` positions past the prompt."""

    def __init__(self, model, inputs, tier, compiled=None):
        from transformers import StaticCache

        self.model, self.inputs, self.tier = model, inputs, tier
        self.prompt = without_all_ones_mask(inputs)
        self.forward = model if compiled is None else compiled
        self.switched = compiled is not None
        # The prompt's <image> becomes the tier's K visual tokens in every row (decode_bytes counts the same cache).
        length = inputs["input_ids"].shape[1] - 1 + visual_tokens(model.config, tier)
        cache = StaticCache(config=model.config.get_text_config(), max_cache_len=length + STATIC_ROOM)
        with torch.no_grad():
            first = model(**inputs, budget=tier, cache=cache, use_cache=True, logits_to_keep=1)
        self.decoder = DecodeStep(cache, first.logits[:, -1:].argmax(-1), length, kind="static")

    def prefill(self):
        return self._call(lambda: self.forward(**self.prompt, budget=self.tier, use_cache=True,
                                               logits_to_keep=1).logits)

    def decode_steps(self, steps=DECODE_STEPS):
        """`steps` cached steps back to back (the last one's logits)."""
        return self._call(lambda: [self.decoder.step(self.forward) for _ in range(steps)][-1])

    @torch.no_grad()
    def _call(self, call):
        return common.with_switch(call) if self.switched else call()


def without_all_ones_mask(inputs) -> dict:
    """The prefill's inputs as a caller compiling the forward passes them (docs/inference.md): an attention mask
    with nothing masked is left out, read here once on the host, so the compiled prefill runs the language model
    with SDPA's `is_causal` instead of an [L, L] mask. Eager and compiled get the same inputs."""
    if bool(inputs["attention_mask"].all()):
        return {key: value for key, value in inputs.items() if key != "attention_mask"}
    return inputs


def decode_bytes(config, tier, text_width, batch, bytes_per_value=4) -> int:
    """Bytes one decode step reads: every matrix of the language model and its head once (the FLOP model's own
    layer structure, GQA included: one position's matmul FLOPs are 2 x their weights; the embedding lookup reads a
    single row and is left out), and its KV cache at K visual tokens."""
    text = config.text_config
    weights = (llm_flops(text, 1, 0) + lm_head_flops(text, 1)) // 2
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    length = text_width - 1 + visual_tokens(config, tier)
    cache = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * length * batch
    return bytes_per_value * (weights + cache)


COMPONENTS = tuple(stage for stage in TIMED_STAGES if stage != "processor")  # the model's own, inputs built once


def measure_batch(model, inputs, tiers, repeats, compile_model, warmup=1, backend="inductor",
                  components=False) -> dict:
    """{(phase, variant, tier): clock times}, every call interleaved in the same rounds; with `components`, also
    each tier's stage-by-stage pipeline (token_cost's `Query.stages`: the prefill's components, then one decode
    step), its seconds per stage kept per round."""
    # Each tier and phase is its own graph (static shapes): room for all of them, or Dynamo falls back to eager.
    torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
    calls, compile_seconds = {}, {}
    for tier in tiers:
        variants = {"eager": Phases(model, inputs, tier)}
        if compile_model:
            compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=backend)
            variants["compiled"] = Phases(model, inputs, tier, compiled)
            start = time.perf_counter()
            variants["compiled"].prefill()
            variants["compiled"].decode_steps(1)
            compile_seconds[str(tier)] = time.perf_counter() - start
        for variant, phases in variants.items():
            calls[("prefill", variant, tier)] = phases.prefill
            calls[("decode", variant, tier)] = phases.decode_steps
    staged = {tier: [] for tier in tiers}
    if components:
        query = Query(model, inputs=inputs)
        for tier in tiers:  # new_tokens=2: the prefill's first token, then one cached decode step
            calls[("components", "eager", tier)] = lambda tier=tier: staged[tier].append(query.stages(tier, 2)[1])
    times = common.interleaved(calls, repeats, warmup=warmup)
    for (phase, _, _), clocks in times.items():
        if phase == "decode":  # per step
            for clock, values in clocks.items():
                clocks[clock] = [value / DECODE_STEPS for value in values]
    return {"times": times, "compile_seconds": compile_seconds,
            "components": {tier: rounds[warmup:] for tier, rounds in staged.items() if rounds}}


def component_report(rounds: list) -> dict:
    """{stage: ms stats over the rounds} of one tier's stage-by-stage pipeline, and each stage's share of their
    sum (medians)."""
    report = {stage: common.ms([r[stage] for r in rounds]) for stage in COMPONENTS}
    total = sum(entry["median"] for entry in report.values())
    return {"ms": report, "share": {stage: report[stage]["median"] / total for stage in COMPONENTS}}


def tier_report(config, raw, tier, width, batch, variants) -> dict:
    flops, full_flops = (query_flops(config, t, width, 2, batch) for t in (tier, "full"))
    prefill_flops = {t: sum(v for stage, v in f.items() if stage != "decode") for t, f in ((tier, flops),
                                                                                      ("full", full_flops))}
    report = {
        "visual_tokens": visual_tokens(config, tier),
        "prefill_ideal_speedup": prefill_flops["full"] / prefill_flops[tier],
        "decode_ideal_speedup": decode_bytes(config, "full", width, batch) / decode_bytes(config, tier, width, batch),
    }
    for phase in ("prefill", "decode"):
        for variant in variants:
            times, full = raw[(phase, variant, tier)], raw[(phase, variant, "full")]
            report[f"{phase}_{variant}_ms"] = common.clock_stats(times)
            report[f"{phase}_{variant}_speedup_vs_full"] = common.clock_ratios(full, times)
        if "compiled" in variants:
            report[f"{phase}_compiled_over_eager"] = common.clock_ratios(raw[(phase, "eager", tier)],
                                                                         raw[(phase, "compiled", tier)])
    return report


def query_inputs(model, processor, rows) -> dict:
    """The batch's prompts and pixels: chat prompts from the preset's processor (token_cost's `Query`, as every
    benchmark builds them), or, for a preset without one (the base ships none), base_scale's fixed prompt of
    ordinary token ids with one <image>, repeated per row (the same length and image as base_scale times)."""
    if processor is not None:
        return Query(model, processor, rows).process()
    from bench.base_scale import make_inputs

    query = make_inputs(model.config)["query"]
    return {key: value.expand(len(rows), *value.shape[1:]).contiguous() for key, value in query.items()}


def run(preset="demo", repeats=7, batch_sizes=(1, 8), tiers=None, compile_model=True, threads=1,
        backend="inductor", components=False, vision_autocast=None) -> dict:
    """backend: torch.compile's (the tests use "aot_eager": the same graphs, no code generation).
    vision_autocast: SAM's compute dtype (`config.vision_autocast_dtype`), None: float32 throughout."""
    if 1 + (repeats + 1) * DECODE_STEPS > STATIC_ROOM:  # compile's first step, then each round's steps fill slots
        raise ValueError(f"repeats must be at most {(STATIC_ROOM - 1) // DECODE_STEPS - 1}: the decode steps' static "
                         f"cache has {STATIC_ROOM} free positions, {DECODE_STEPS} steps a round.")
    common.use_threads(threads)
    model, processor = common.load_model(preset, needs_processor=False, vision_autocast=vision_autocast)
    config = model.config
    tiers = [_tier(t) for t in tiers] if tiers else bench_tiers(config)
    tiers = tiers if "full" in tiers else [*tiers, "full"]
    rows = common.synthetic_rows(config, max(batch_sizes))
    variants = VARIANTS if compile_model else ("eager",)
    result = {"preset": str(preset), "dtype": common.precision(vision_autocast), "vision_autocast": vision_autocast,
              "repeats": repeats, "tiers": [str(t) for t in tiers],
              "prompt": "chat template" if processor is not None else "base_scale's fixed token ids",
              "compile_backend": backend if compile_model else None,
              "num_patches": config.num_patches, "variants": list(variants), "batch_sizes": {}}
    for batch in batch_sizes:
        inputs = query_inputs(model, processor, rows[:batch])
        width = inputs["input_ids"].shape[1]
        raw = measure_batch(model, inputs, tiers, repeats, compile_model, backend=backend, components=components)
        result["batch_sizes"][str(batch)] = {
            "text_width": width, "compile_seconds": raw["compile_seconds"],
            "prefill_attention_mask": "given" if "attention_mask" in without_all_ones_mask(inputs) else "left out",
            "tiers": {str(t): tier_report(config, raw["times"], t, width, batch, variants) for t in tiers},
        }
        if raw["components"]:
            result["batch_sizes"][str(batch)]["components"] = {
                str(t): component_report(rounds) for t, rounds in raw["components"].items()}
    return result


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def _cells(r, phase, variants):
    cells = []
    for variant in variants:
        ms = r[f"{phase}_{variant}_ms"]["wall"]["median"]
        speedup = r[f"{phase}_{variant}_speedup_vs_full"]["wall"]["median"]
        cells.append(f"{ms:.2f} ({speedup:.2f}x)")
    ideal = r[f"{phase}_ideal_speedup"]
    best = max(r[f"{phase}_{variant}_speedup_vs_full"]["wall"]["median"] for variant in variants)
    cells += [f"{ideal:.2f}x", f"{100 * best / ideal:.0f}%"]
    if "compiled" in variants:
        cells.append(f"{r[f'{phase}_compiled_over_eager']['wall']['median']:.2f}x")
    return cells


def phase_table(part, phase, variants) -> str:
    headers = ["tier", "visual tokens"] + [f"{v} ms (speed-up vs full)" for v in variants]
    headers += ["ideal" + (" (FLOPs)" if phase == "prefill" else " (bytes read)"), "best of ideal"]
    headers += ["compiled vs eager"] if "compiled" in variants else []
    rows = [[tier, r["visual_tokens"], *_cells(r, phase, variants)] for tier, r in part["tiers"].items()]
    return common.markdown_table(headers, rows)


def components_table(components: dict) -> str:
    rows = [[tier] + [f"{c['ms'][stage]['median']:.1f} ({100 * c['share'][stage]:.0f}%)" for stage in COMPONENTS]
            for tier, c in components.items()]
    return common.markdown_table(["tier", *COMPONENTS], rows)


def markdown(result: dict) -> str:
    variants = result["variants"]
    lines = [f"**Prefill and decode, timed apart** (`bench/prefill_decode.py`, {result['preset']} preset, "
             f"{result['dtype']}, random weights, {result['repeats']} interleaved rounds, medians; "
             f"{common.machine_line(result)}). Prefill = pixels to the first token (vision, allocation, LLM over "
             "the prompt, cache built); its ideal speed-up is the FLOP ratio. Decode = one cached step in a static "
             f"cache (the mean of {DECODE_STEPS} back to back); its ideal is the ratio of bytes read (LLM weights + "
             "KV cache at K tokens). Compiled = "
             f"`torch.compile(fullgraph=True)` at the tier, traced and run with `{common.FORCE_GQA}=1` "
             "(docs/inference.md)."
             + (f" Prompt: {result['prompt']}." if result.get("prompt") else "")]
    for batch, part in result["batch_sizes"].items():
        for phase in ("prefill", "decode"):
            mask = part.get("prefill_attention_mask")
            note = ("" if phase == "decode" or mask is None else
                    " (no padding: attention mask left out, SDPA causal)" if mask == "left out" else " (padded)")
            lines += ["", f"Batch {batch}, {phase}{note}:", "", phase_table(part, phase, variants)]
        if part.get("components"):
            lines += ["", f"Batch {batch}, components (eager, ms, share of their sum):", "",
                      components_table(part["components"])]
        if part["compile_seconds"]:
            seconds = ", ".join(f"{t}: {s:.0f} s" for t, s in part["compile_seconds"].items())
            lines += ["", f"Compile time (first prefill + first decode step, per tier): {seconds}."]
    return "\n".join(lines)


def result_name(preset, vision_autocast=None) -> str:
    """outputs/bench/<name>.json: prefill_decode for the demo preset (the default), else one per preset; a run
    with SAM under autocast apart from the plain one."""
    name = Path(str(preset)).name
    return (NAME if name == "demo" else f"{NAME}_{name}") + common.autocast_suffix(vision_autocast)


def main(argv=None):
    args = parse_args(argv)
    result = run(args.preset, args.repeats, args.batch_sizes, args.tiers, not args.no_compile, args.threads,
                 components=args.components, vision_autocast=args.vision_autocast)
    common.publish(result_name(args.preset, args.vision_autocast), result, args.output_dir, markdown)


if __name__ == "__main__":
    main()


__all__ = ["COMPONENTS", "DECODE_STEPS", "NAME", "Phases", "component_report", "components_table", "decode_bytes",
           "markdown", "measure_batch", "query_inputs", "result_name", "run", "without_all_ones_mask"]
