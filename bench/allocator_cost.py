"""The allocator's share of a query's time and FLOPs at each tier (target: at most 5%).

The allocator is two stages of the token-cost breakdown: the scorer (question embeddings, hotspot detector,
question-to-patch cross-attention, budget predictor; independent of K) and the compression heads ("select":
top-K, plus folding the dropped patches into the kept ones when the config folds; O(N K)). Its time share is
(allocator + select) / the sum of all stages, per round, as min/median/max; its FLOP share comes from
bench/flops.py.

The timings are the token-cost run's (`--from-json outputs/bench/token_cost.json`, as `bench/run_all.py` does,
so nothing is measured twice) or a fresh one. Also counted: how many times `generate` runs the scorer per
batch, forced tier vs `budget="auto"` (with `group_by_tier`, auto decides the tiers on the whole batch first,
then each tier group prepares its inputs, which runs the scorer again).

    python -m bench.allocator_cost [--preset demo] [--repeats 7] [--from-json outputs/bench/token_cost.json]
"""

import argparse
import json
from pathlib import Path

from bench import common  # first: it pins the thread count before torch starts its pool
from bench import token_cost
from bench.flops import allocator_flops

import torch

NAME = "allocator_cost"
TARGET_SHARE = 0.05
ALLOCATOR_STAGES = ("allocator", "select")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, repeats=7)
    parser.add_argument("--from-json", type=Path, default=None, help="a token_cost.json to derive the shares from")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    return parser.parse_args(argv)


def tier_shares(report: dict) -> dict:
    """One tier's allocator share of time (per round) and of FLOPs, scorer and compression heads apart."""
    flops = report["flops"]
    total_flops = sum(flops.values())
    return {
        "visual_tokens": report["visual_tokens"],
        "time_share": _time_share(report, ALLOCATOR_STAGES),
        "scorer_time_share": _time_share(report, ("allocator",)),
        "select_time_share": _time_share(report, ("select",)),
        "flop_share": sum(flops[s] for s in ALLOCATOR_STAGES) / total_flops,
        "scorer_flop_share": flops["allocator"] / total_flops,
        "select_flop_share": flops["select"] / total_flops,
        "within_target": None,  # filled below, from the median time share and the FLOP share
    }


def _time_share(report, stages) -> dict:
    """Per round: the stages' time over the sum of all stages of the same round."""
    rounds = report["stage_rounds_ms"]
    totals = [sum(values) for values in zip(*rounds.values())]
    parts = [sum(values) for values in zip(*(rounds[s] for s in stages))]
    return common.stats([part / total for part, total in zip(parts, totals)])


def shares(token_cost_result: dict) -> dict:
    out = {}
    for batch, part in token_cost_result["batch_sizes"].items():
        tiers = {}
        for tier, report in part["tiers"].items():
            entry = tier_shares(report)
            entry["within_target"] = max(entry["time_share"]["median"], entry["flop_share"]) <= TARGET_SHARE
            tiers[tier] = entry
        out[batch] = tiers
    return out


def scorer_calls(model, processor, rows, tier) -> dict:
    """Allocator scorer runs per generate call, forced tier vs "auto", on a batch of `rows`."""
    query = token_cost.Query(model, processor, rows)
    calls = []
    hook = model.model.allocator.register_forward_hook(lambda *args: calls.append(1))
    try:
        counts = {}
        for budget in (tier, "auto"):
            calls.clear()
            with torch.no_grad():
                model.generate(**query.process(), budget=budget, max_new_tokens=1)
            counts["forced" if budget == tier else "auto"] = len(calls)
    finally:
        hook.remove()
    return counts


def auto_flop_share(config, token_cost_result, calls) -> dict:
    """FLOP share at each tier if the scorer runs `calls` times, as `budget="auto"` does on a batch."""
    out = {}
    largest = max(token_cost_result["batch_sizes"], key=int)
    part = token_cost_result["batch_sizes"][largest]
    extra = (calls - 1) * int(largest) * allocator_flops(config, part["text_width"])
    for tier, report in part["tiers"].items():
        flops = report["flops"]
        out[tier] = (flops["allocator"] + flops["select"] + extra) / (sum(flops.values()) + extra)
    return {"batch": int(largest), "scorer_calls": calls, "flop_share": out}


def run(preset="demo", repeats=7, batch_sizes=(1, 8), threads=1, token_cost_result=None) -> dict:
    common.use_threads(threads)
    if token_cost_result is None:
        token_cost_result = token_cost.run(preset, repeats, batch_sizes, threads=threads)
    model, processor = common.load_model(token_cost_result["preset"])
    rows = common.synthetic_rows(model.config, max(int(b) for b in token_cost_result["batch_sizes"]))
    calls = scorer_calls(model, processor, rows, model.config.budgets[0])
    return {
        "preset": token_cost_result["preset"],
        "target_share": TARGET_SHARE,
        "timings_from": token_cost_result.get("created", "this run"),
        "repeats": token_cost_result["repeats"],
        "batch_sizes": shares(token_cost_result),
        "scorer_calls_per_generate": calls,
        "auto_budget": auto_flop_share(model.config, token_cost_result, calls["auto"]),
    }


def markdown(result: dict) -> str:
    lines = [f"**Allocator cost** (`bench/allocator_cost.py`, {result['preset']} preset; timings of the token-cost "
             f"run, {result['repeats']} rounds; {common.machine_line(result)}). Share of a query's time "
             f"(allocator scorer + compression heads, over the sum of all stages) and of its FLOPs; target "
             f"<= {100 * result['target_share']:.0f}%."]
    for batch, tiers in result["batch_sizes"].items():
        rows = [[tier, e["visual_tokens"], common.fmt_range(_percent(e["time_share"]), 1, "%"),
                 f"{100 * e['scorer_time_share']['median']:.1f}% / {100 * e['select_time_share']['median']:.1f}%",
                 f"{100 * e['flop_share']:.1f}%", "yes" if e["within_target"] else "no"]
                for tier, e in tiers.items()]
        headers = ["tier", "visual tokens", "time share median [min-max]", "scorer / select (time)",
                   "FLOP share", "<= target"]
        lines += ["", f"Batch {batch}:", "", common.markdown_table(headers, rows)]
    auto, calls = result["auto_budget"], result["scorer_calls_per_generate"]
    auto_shares = ", ".join(f"{tier}: {100 * share:.1f}%" for tier, share in auto["flop_share"].items())
    lines += ["", f"Scorer runs per generate call (batch {auto['batch']}): forced tier {calls['forced']}, "
                  f"budget=\"auto\" {calls['auto']}. FLOP share with {calls['auto']} scorer runs: {auto_shares}."]
    return "\n".join(lines)


def _percent(s: dict) -> dict:
    return {key: 100 * value for key, value in s.items() if key != "runs"}


def main(argv=None):
    args = parse_args(argv)
    source = json.loads(args.from_json.read_text()) if args.from_json else None
    result = run(args.preset, args.repeats, args.batch_sizes, args.threads, source)
    common.publish(NAME, result, args.output_dir, markdown)


if __name__ == "__main__":
    main()


__all__ = ["TARGET_SHARE", "markdown", "run", "scorer_calls", "shares"]
