"""Run every benchmark, one at a time, and write the performance section of docs/results.md (`make bench`).

Each benchmark runs as its own subprocess (a fresh process: no benchmark inherits another's memory peak or
allocator state), prints its full tables and writes outputs/bench/<name>.json. Then this script reads the JSONs
and writes
- outputs/bench/summary.json: the headline figures of every benchmark, the machine, the commit, and how long
  each benchmark and the whole run took;
- outputs/bench/summary.md: a short markdown section generated from summary.json (`make readme` puts it in the
  Performance section of docs/results.md, which the README links).
The demo preset's benchmarks take about 7 minutes on the 2-core machine (prefill_decode's compiling most of it);
the base preset's take longer: base_scale about 8 minutes, prefill_decode_base about 15 (and as long again with SAM
in bf16) and decode_gqa about 3 (each run's bench_seconds in summary.json), so `make bench` takes about 50 minutes;
--quick runs one round of each (a smoke run, not a measurement).

    python -m bench.run_all [--preset demo] [--quick] [--only token_cost memory ...]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import common

from modeling_arrcoc.training.phases import COMPONENTS

FROM_TOKEN_COST = ["--from-json", "{output_dir}/token_cost.json"]
OVIS25_SCALE = "base_scale_base_ovis25_llm1layers"
PREFILL_DECODE_BASE = "prefill_decode_base"
# The same two measurements with SAM under bf16 autocast (config.vision_autocast_dtype): SAM is the fixed cost of
# every query, and the CPUs with AMX run it 2.2-2.7x faster in bf16 (bench/sam_attention.py).
SAM_BF16 = ["--vision-autocast", "bfloat16"]
TOKEN_COST_SAM_BF16 = "token_cost_sam_bfloat16"
SAM_ATTENTION_BASE = "sam_attention_base"
PREFILL_DECODE_BASE_SAM_BF16 = "prefill_decode_base_sam_bfloat16"
BASE_PREFILL = ["--preset", "base", "--threads", "2", "--batch-sizes", "1", "--tiers", "64", "full"]
# (name, extra arguments, --quick arguments). token_cost runs before allocator_cost, which reuses its timings.
BENCHES = (
    ("token_cost", ["--repeats", "15"], ["--repeats", "1", "--new-tokens", "2"]),
    (TOKEN_COST_SAM_BF16, ["--repeats", "15", *SAM_BF16], ["--repeats", "1", "--new-tokens", "2", *SAM_BF16]),
    # SAM alone: transformers' attention and ArrCoc's, float32 and bf16, eager and compiled, the demo preset's and the
    # base's (about 5 min).
    ("sam_attention", ["--repeats", "11", "--compiled"], ["--repeats", "1"]),
    (SAM_ATTENTION_BASE, ["--preset", "base", "--threads", "2", "--batch", "1", "--repeats", "3", "--compiled"],
     ["--preset", "base", "--threads", "2", "--batch", "1", "--repeats", "1"]),
    ("allocator_cost", FROM_TOKEN_COST, FROM_TOKEN_COST),
    ("prefill_grouping", ["--repeats", "11"], ["--repeats", "1"]),
    # Prefill and decode apart, eager and compiled at three tiers (about 4 minutes, most of it compiling).
    ("prefill_decode", ["--repeats", "5", "--tiers", "4", "64", "full", "--components"],
     ["--repeats", "1", "--tiers", "4", "full", "--batch-sizes", "1", "--no-compile"]),
    ("training_throughput", ["--repeats", "7"], ["--repeats", "1", "--rows", "16"]),
    ("memory", ["--repeats", "3"], ["--repeats", "1"]),
    ("gpu_token_cost", ["--repeats", "10"], ["--repeats", "1", "--new-tokens", "2"]),
    # The base preset at its true sizes (about 8 minutes on 2 cores with the checkpointed full-token train step); its
    # own thread count and preset come after (and override) the common arguments.
    ("base_scale", ["--preset", "base", "--threads", "2", "--full-train-step", "checkpointed"],
     ["--preset", "base", "--threads", "2", "--items", "forward", "--tiers", "64", "full", "--skip-ovis2"]),
    # Prefill at the base preset's true sizes, batch 1, tier 64 against full tokens, eager and compiled, with each
    # component's time (#23's CPU target: tier 64's prefill speed-up at least 80% of its FLOP ratio; about 15 minutes
    # on 2 cores; batch 8 at full tokens would take 10 minutes a call).
    (PREFILL_DECODE_BASE, [*BASE_PREFILL, "--repeats", "3", "--components"],
     [*BASE_PREFILL, "--repeats", "1", "--no-compile"]),
    # The same with SAM in bf16 (about 15 minutes): what the fixed cost becomes when SAM runs at AMX's rate.
    (PREFILL_DECODE_BASE_SAM_BF16, [*BASE_PREFILL, "--repeats", "3", "--components", *SAM_BF16],
     [*BASE_PREFILL, "--repeats", "1", "--no-compile", *SAM_BF16]),
    # The base preset's decode step at tier 64 and full tokens: dynamic and static cache, eager, compiled and compiled
    # with the grouped-query switch (why compiled decode at full tokens ran slower than eager; about 3 minutes).
    ("decode_gqa", ["--preset", "base", "--threads", "2", "--tiers", "64", "full", "--repeats", "5"],
     ["--tiers", "4", "full", "--repeats", "1", "--backend", "aot_eager"]),
    # The 2026 preset (DeepSeek-OCR2's SAM, CLIP-L, Ovis2.5-2B): loaded from checkpoints in those formats with its LLM
    # cut to one layer, every other part at its true size (the whole preset peaks near 18 GiB), and every
    # component's parameters counted at the true size (about 2 minutes, 8 GiB).
    (OVIS25_SCALE, ["--preset", "base_ovis25", "--text-layers", "1", "--load-only", "--threads", "1"],
     ["--preset", "base_ovis25", "--text-layers", "1", "--load-only", "--threads", "1"]),
)
# Results named apart from the script that writes them.
SCRIPTS = {OVIS25_SCALE: "base_scale", PREFILL_DECODE_BASE: "prefill_decode", TOKEN_COST_SAM_BF16: "token_cost",
           PREFILL_DECODE_BASE_SAM_BF16: "prefill_decode", SAM_ATTENTION_BASE: "sam_attention"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--output-dir", type=Path, default=common.OUTPUT_DIR)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one round of each: checks that everything runs")
    parser.add_argument("--only", nargs="+", default=None,
                        help="run these benchmarks only (then summarize all)")
    return parser.parse_args(argv)


def run_bench(name, extra, preset, output_dir, threads) -> float:
    """Run bench/<name>.py in a fresh process (`python -m bench.<name>` from the repository root); its output
    streams through. Returns its wall seconds."""
    args = [a.format(output_dir=output_dir) for a in extra]
    command = [sys.executable, "-m", f"bench.{SCRIPTS.get(name, name)}", "--preset", str(preset), "--output-dir", str(output_dir), "--threads",
               str(threads), *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=common.ROOT)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------------
# Headline figures (summary.json) and the docs/results.md section (summary.md)
# ---------------------------------------------------------------------------------------------------------------


def headline_tokens(token_cost, allocator) -> dict:
    out = {}
    for batch, part in token_cost["batch_sizes"].items():
        out[batch] = {}
        for tier, r in part["tiers"].items():
            shares = allocator["batch_sizes"][batch][tier] if allocator else {}
            out[batch][tier] = {
                "visual_tokens": r["visual_tokens"], "per_query_ms": r["per_query_ms"]["wall"],
                "speedup_vs_full": r["speedup_vs_full"]["wall"],
                "speedup_vs_full_cpu_time": r["speedup_vs_full"]["cpu"],
                "ideal_speedup": r["ideal_speedup"], "share_of_ideal": r["share_of_ideal"],
                "allocator_time_share": shares.get("time_share"), "allocator_flop_share": shares.get("flop_share"),
            }
    return out


def headline_training(result) -> dict:
    return {name: {"samples_per_s": v["samples_per_s"]["wall"], "time_over_baseline": v["time_over_baseline"]["wall"],
                   "time_over_baseline_cpu_time": v["time_over_baseline"]["cpu"],
                   "padding_share": result["padding_share"][v["batches"]]}
            for name, v in result["variants"].items()}


def headline_memory(result) -> dict:
    keys = ("trainable_parameters", "optimizer_moment_bytes", "expected_moment_bytes", "moments_over_expected",
            "components_with_state", "trainable_without_gradient", "peak_rss_mib", "peak_over_baseline_mib")
    return {phase: {key: p[key] for key in keys} for phase, p in result["phases"].items()}


def summarize(output_dir, seconds: dict, total_seconds: float | None) -> dict:
    results = {name: common.read_result(name, output_dir) for name, _, _ in BENCHES}
    token_cost, allocator = results["token_cost"], results["allocator_cost"]
    gpu = results["gpu_token_cost"]
    summary = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": common.machine_info(),
        # Each result's own commit: a `--only` rerun leaves the others' results from an earlier commit.
        "commits": {name: (r.get("machine") or {}).get("commit") for name, r in results.items() if r},
        "total_seconds": total_seconds,
        "bench_seconds": seconds,
        "preset": token_cost["preset"] if token_cost else None,
        "new_tokens": token_cost["new_tokens"] if token_cost else None,
        "repeats": {name: r.get("repeats") for name, r in results.items() if r},
        "tokens": headline_tokens(token_cost, allocator) if token_cost else None,
        "tokens_sam_bfloat16": (headline_tokens(results[TOKEN_COST_SAM_BF16], None)
                                if results[TOKEN_COST_SAM_BF16] else None),
        "flop_model_check": token_cost.get("flop_model_check") if token_cost else None,
        "allocator_target_share": allocator["target_share"] if allocator else None,
        "allocator_scorer_calls": allocator["scorer_calls_per_generate"] if allocator else None,
        "training": headline_training(results["training_throughput"]) if results["training_throughput"] else None,
        "training_setup": _training_setup(results["training_throughput"]),
        "memory": headline_memory(results["memory"]) if results["memory"] else None,
        "prefill_grouping": _prefill(results["prefill_grouping"]),
        "gpu": _gpu(gpu),
        "base_scale": results.get("base_scale"),
        "prefill_decode": results.get("prefill_decode"),
        PREFILL_DECODE_BASE: results.get(PREFILL_DECODE_BASE),
        PREFILL_DECODE_BASE_SAM_BF16: results.get(PREFILL_DECODE_BASE_SAM_BF16),
        "decode_gqa": results.get("decode_gqa"),
        "sam_attention": results.get("sam_attention"),
        SAM_ATTENTION_BASE: results.get(SAM_ATTENTION_BASE),
        "base_scale_ovis25": results.get(OVIS25_SCALE),
    }
    return summary


def _training_setup(result):
    if not result:
        return None
    keys = ("phase", "batch_size", "rows", "tier_mix", "batches_per_epoch", "lm_head_share_of_llm_forward_flops")
    return {key: result[key] for key in keys}


def _prefill(result):
    if not result:
        return None
    return {"tiers": result["tiers"], "speedup": result["time_to_first_token"]["speedup"]["wall"],
            "speedup_cached_sam": result["after_cached_sam_features"]["speedup"]["wall"],
            "llm_prefill_positions": result["llm_prefill_positions"]}


def _gpu(result):
    if not result:
        return None
    if result.get("skipped"):
        return {"skipped": result["skipped"]}
    largest = max(result["batch_sizes"], key=int)
    tiers = result["batch_sizes"][largest]["tiers"]
    return {"device": result["machine"].get("gpu"), "attention": result["attention"], "batch": int(largest),
            "tiers": {t: {"per_query_ms": r["per_query_ms"]["wall"], "speedup_vs_full": r["speedup_vs_full"]["wall"],
                          "ideal_speedup": r["ideal_speedup"]} for t, r in tiers.items()}}


def markdown(summary: dict) -> str:
    lines = [_intro(summary)]
    if summary["tokens"]:
        lines += ["", *_token_section(summary)]
    if summary.get("tokens_sam_bfloat16"):
        lines += ["", *_sam_bf16_token_section(summary)]
    if summary["training"]:
        lines += ["", *_training_section(summary)]
    if summary["memory"]:
        lines += ["", *_memory_section(summary)]
    if summary["prefill_grouping"]:
        p = summary["prefill_grouping"]
        lines += ["", f"**Generate grouped by tier** (a batch of tiers {'/'.join(map(str, p['tiers']))}): speed-up "
                      f"of grouping over one batch padded to the largest tier, time to first token "
                      f"{common.fmt_range(p['speedup'], 2, 'x')}, from cached SAM features "
                      f"{common.fmt_range(p['speedup_cached_sam'], 2, 'x')} (LLM prefill positions "
                      f"{p['llm_prefill_positions']['grouped']} vs {p['llm_prefill_positions']['padded']})."]
    for name in ("sam_attention", SAM_ATTENTION_BASE):
        if summary.get(name):
            from bench.sam_attention import markdown as sam_attention_markdown

            lines += ["", sam_attention_markdown(summary[name]).rstrip()]
    for name in ("prefill_decode", PREFILL_DECODE_BASE, PREFILL_DECODE_BASE_SAM_BF16):
        if summary.get(name):
            from bench.prefill_decode import markdown as prefill_decode_markdown

            lines += ["", prefill_decode_markdown(summary[name]).rstrip()]
    if summary.get("decode_gqa"):
        from bench.decode_gqa import markdown as decode_gqa_markdown

        lines += ["", decode_gqa_markdown(summary["decode_gqa"]).rstrip()]
    if summary["gpu"]:
        lines += ["", *_gpu_section(summary["gpu"])]
    if summary.get("base_scale"):
        from bench.base_scale import markdown as base_scale_markdown

        lines += ["", base_scale_markdown(summary["base_scale"]).rstrip()]
    if summary.get("base_scale_ovis25"):
        from bench.base_scale import markdown as base_scale_markdown

        lines += ["", base_scale_markdown(summary["base_scale_ovis25"]).rstrip()]
    lines += ["", "Full tables: `python -m bench.<name>` prints each; numbers in `outputs/bench/*.json`."]
    return "\n".join(lines) + "\n"


def _commits(summary) -> str:
    """`abc` when every result ran at one commit, else each commit with the results it ran."""
    by_commit = {}
    for name, commit in (summary.get("commits") or {}).items():
        by_commit.setdefault((commit or "unknown")[:10], []).append(name)
    if len(by_commit) == 1:
        return f"commit `{next(iter(by_commit))}`"
    if not by_commit:
        m = summary["machine"]
        return "commit `" + (m.get("commit") or "unknown")[:10] + ("+dirty" if m.get("dirty") else "") + "`"
    return "commits " + "; ".join(f"`{commit}` ({', '.join(names)})" for commit, names in by_commit.items())


def _intro(summary) -> str:
    m = summary["machine"]
    took = f" in {summary['total_seconds'] / 60:.1f} min" if summary["total_seconds"] else ""
    return (f"Measured by `make bench`{took} on {m['cpu_count']} CPU cores, {m['torch_threads']} torch thread, "
            f"float32, torch {m['torch']}, {_commits(summary)}; {summary['preset']} preset with random weights (cost "
            "does not depend on them). Each figure is median [min-max] over interleaved rounds; ratios are taken "
            "per round, variants side by side in one process, because absolute times on this shared machine "
            "vary by +-30% between runs.")


def _token_section(summary) -> list:
    batches = sorted(summary["tokens"], key=int)
    largest = batches[-1]
    rows = []
    for tier, r in summary["tokens"][largest].items():
        cells = [tier, r["visual_tokens"], common.fmt_range(r["per_query_ms"]),
                 common.fmt_range(r["speedup_vs_full"], 2, "x"), f"{r['ideal_speedup']:.2f}x",
                 f"{100 * r['share_of_ideal']:.0f}%"]
        cells += [f"{summary['tokens'][b][tier]['speedup_vs_full']['median']:.2f}x "
                  f"(ideal {summary['tokens'][b][tier]['ideal_speedup']:.2f}x)" for b in batches[:-1]]
        if r["allocator_time_share"]:
            cells.append(f"{100 * r['allocator_time_share']['median']:.1f}% / {100 * r['allocator_flop_share']:.1f}%")
        rows.append(cells)
    headers = ["tier", "visual tokens", f"ms/query (batch {largest})", "speed-up vs full", "ideal (FLOPs)",
               "of ideal", *[f"speed-up, batch {b}" for b in batches[:-1]], "allocator: time / FLOPs"]
    check = summary["flop_model_check"]
    calls = summary["allocator_scorer_calls"]
    matches = f", which matches torch's FLOP counter on the real code to {check['modelled_over_counted']:.4f}"
    notes = [f"**Visual tokens vs time** (processor + `generate` of {summary['new_tokens']} new tokens at a forced "
             f"tier; ideal = FLOPs at full / FLOPs at the tier from `bench/flops.py`{matches if check else ''}; "
             f"allocator target <= {100 * summary['allocator_target_share']:.0f}%):", "",
             common.markdown_table(headers, rows)]
    if calls:
        notes += ["", f"Allocator scorer runs per `generate` call on a batch of {largest} (counted by a forward hook): "
                      f"{calls['auto']} with `budget=\"auto\"` (tier groups follow one allocation plan), "
                      f"{calls['forced']} at a forced tier."]
    return notes


def _sam_bf16_token_section(summary) -> list:
    """The token-cost table again with SAM under bf16 autocast, beside float32's speed-ups of the same run
    configuration (each column's ratios are taken within its own run)."""
    tokens, plain = summary["tokens_sam_bfloat16"], summary["tokens"]
    largest = max(tokens, key=int)
    rows = [[tier, common.fmt_range(r["per_query_ms"]), common.fmt_range(r["speedup_vs_full"], 2, "x"),
             f"{r['ideal_speedup']:.2f}x", f"{100 * r['share_of_ideal']:.0f}%",
             f"{plain[largest][tier]['speedup_vs_full']['median']:.2f}x" if plain and tier in plain[largest] else "-"]
            for tier, r in tokens[largest].items()]
    headers = ["tier", f"ms/query (batch {largest})", "speed-up vs full", "ideal (FLOPs)", "of ideal",
               "float32's speed-up"]
    return [f"**Visual tokens vs time, SAM in bf16** (the same `generate` with `vision_autocast_dtype=\"bfloat16\"`: "
            "SAM computes under bf16 autocast, everything after it in float32; bench/token_cost.py "
            "`--vision-autocast bfloat16`):", "", common.markdown_table(headers, rows)]


def _training_section(summary) -> list:
    setup = summary["training_setup"]
    rows = []
    for name, v in summary["training"].items():
        rows.append([name, common.fmt_range(v["samples_per_s"], 2), common.fmt_range(v["time_over_baseline"], 2, "x"),
                     f"{100 * v['padding_share']['visual_tokens']:.0f}%"])
    mix = ", ".join(f"K={k}: {n}" for k, n in setup["tier_mix"].items())
    head = setup["lm_head_share_of_llm_forward_flops"]
    return [f"**Training throughput** ({setup['phase']} trainable set, SAM frozen, batch {setup['batch_size']}, "
            f"forward + backward + AdamW; {setup['rows']} rows with phase 0's heuristic tiers, {mix}; baseline = "
            "tier-grouped batches, cached SAM features, logits on labelled positions only; each other row changes "
            "one of the three):", "",
            common.markdown_table(["variant", "samples/s", "step time / baseline", "visual-token padding"], rows), "",
            f"The LM head is {100 * head['all']:.1f}% of the LLM forward FLOPs on every position and "
            f"{100 * head['labels_only']:.2f}% on labelled positions only: what `logits_to_keep` (the answer window) can save "
            "grows with the vocabulary."]


def _memory_section(summary) -> list:
    rows = []
    for phase, p in summary["memory"].items():
        ratio = "-" if p["moments_over_expected"] is None else f"{p['moments_over_expected']:.3f}"
        held = "all" if set(p["components_with_state"]) == set(COMPONENTS) else ", ".join(p["components_with_state"])
        rows.append([phase, f"{p['trainable_parameters'] / 1e6:.2f}M", held,
                     f"{p['optimizer_moment_bytes'] / 2**20:.1f}", f"{p['expected_moment_bytes'] / 2**20:.1f}", ratio,
                     common.fmt_range(p["peak_rss_mib"], 0)])
    missing = sorted({n for p in summary["memory"].values() for n in p["trainable_without_gradient"]})
    note = ([f"A ratio below 1: {', '.join(missing)} never get a gradient, so AdamW keeps no state for them."]
            if missing else [])
    headers = ["phase", "trainable", "optimizer state in", "AdamW state MiB", "2 x params x 4 B MiB", "ratio",
               "peak RSS MiB"]
    return ["**Memory per phase** (a fresh process per phase, AdamW steps at batch 8 at the largest tier; peak RSS "
            "from the end of the imports, whose own transient peak is reset):", "",
            common.markdown_table(headers, rows), *([""] + note if note else [])]


def _gpu_section(gpu) -> list:
    if gpu.get("skipped"):
        return [f"**GPU** (`bench/gpu_token_cost.py`, bf16, flash-attn where installed): skipped, {gpu['skipped']} "
                "on the machine that ran `make bench`."]
    rows = [[t, common.fmt_range(r["per_query_ms"], 2), common.fmt_range(r["speedup_vs_full"], 2, "x"),
             f"{r['ideal_speedup']:.2f}x"] for t, r in gpu["tiers"].items()]
    attention = ", ".join(f"{k.split('_')[0]} {v}" for k, v in gpu["attention"].items())
    return [f"**GPU** ({gpu['device']}, bf16, {attention}, batch {gpu['batch']}):", "",
            common.markdown_table(["tier", "ms/query", "speed-up vs full", "ideal (FLOPs)"], rows)]


def main(argv=None):
    args = parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    start, seconds = time.perf_counter(), {}
    for name, extra, quick in BENCHES:
        if name in (args.only or [n for n, _, _ in BENCHES]):
            seconds[name] = run_bench(name, quick if args.quick else extra, args.preset, args.output_dir, args.threads)
    total = time.perf_counter() - start
    summary = summarize(args.output_dir, seconds, total if args.only is None else None)
    (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    text = markdown(summary)
    (args.output_dir / "summary.md").write_text(text)
    print("\n=== summary (outputs/bench/summary.md)\n")
    print(text)
    print("bench seconds: " + ", ".join(f"{name} {s:.0f}" for name, s in seconds.items()) + f"; total {total:.0f} s")


if __name__ == "__main__":
    main()


__all__ = ["BENCHES", "OVIS25_SCALE", "PREFILL_DECODE_BASE", "PREFILL_DECODE_BASE_SAM_BF16", "SAM_ATTENTION_BASE",
           "SCRIPTS", "TOKEN_COST_SAM_BF16", "markdown", "summarize"]
