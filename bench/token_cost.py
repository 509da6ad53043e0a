"""End-to-end cost of a query at each forced tier vs full tokens, and where the time goes.

For each batch size (1 and 8) and each tier (every tier of the preset below its patch count, then "full"), two
calls run side by side in interleaved rounds:
- end to end: the processor on PIL pages and questions, then `generate(budget=tier, max_new_tokens=G,
  min_new_tokens=G)` (G = 8 new tokens, EOS suppressed so every tier decodes the same number of steps);
- the stage breakdown: the same work as explicit calls, each timed on its own: processor, SAM
  (`get_patch_features`), allocator (question embeddings + scorer), select (top-K + folding), CLIP encoder,
  quality adapter, splice, LLM prefill (a forward over the spliced embeddings), decode (G - 1 cached steps).
Each tier's speed-up over full tokens (per round, min/median/max) stands next to its ideal speed-up, the ratio of
FLOPs from the configs (bench/flops.py, checked here against torch's FLOP counter on the real code), so the table
says how close the implementation gets to the limit the FLOPs set. A least-squares fit time = a + b x FLOPs over
the tiers separates the fixed per-query cost (Python, dispatch, the processor) from the part that scales.

    python -m bench.token_cost [--preset demo] [--repeats 7] [--batch-sizes 1 8] [--new-tokens 8]

Random weights: the cost does not depend on them. Writes outputs/bench/token_cost.json.
"""

import argparse
import contextlib

from bench import common  # first: it pins the thread count before torch starts its pool
from bench.flops import STAGES, counted_flops, query_flops, visual_tokens

import torch

from modeling_arrcoc.modeling_arrcoc import ArrCocImageFeaturesOutput

NAME = "token_cost"
TIMED_STAGES = ("processor", "sam", "allocator", "select", "clip", "adapter", "splice", "prefill", "decode")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, repeats=7)
    common.add_vision_autocast_arg(parser)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=8)
    return parser.parse_args(argv)


def bench_tiers(config) -> list:
    """Every tier that keeps fewer tokens than the page has, then "full" (a tier >= N is "full" anyway)."""
    return [tier for tier in config.budgets if tier < config.num_patches] + ["full"]


# ---------------------------------------------------------------------------------------------------------------
# The two ways of running a query
# ---------------------------------------------------------------------------------------------------------------


class Query:
    """A batch of pages and questions on one device, run end to end or stage by stage."""

    def __init__(self, model, processor=None, rows=None, device="cpu", dtype=torch.float32, sync=common.no_sync,
                 inputs=None):
        """`processor` and `rows` build the batch's inputs on every call; or `inputs`, built already (a preset
        without a processor), which `process` hands on."""
        self.model, self.processor, self.sync, self.inputs = model, processor, sync, inputs
        if inputs is None:
            self.images = [row["image"] for row in rows]
            self.texts = common.chat_texts(processor, rows)
        self.device, self.dtype = device, dtype

    def process(self):
        inputs = dict(self.inputs) if self.inputs is not None else self.processor(
            images=self.images, text=self.texts, return_tensors="pt")
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    @torch.no_grad()
    def end_to_end(self, budget, new_tokens):
        return self.model.generate(**self.process(), budget=budget, max_new_tokens=new_tokens,
                                   min_new_tokens=new_tokens, do_sample=False)

    @torch.no_grad()
    def stages(self, budget, new_tokens) -> tuple:
        """(new tokens, {stage: seconds}): the pipeline of `generate`, one explicit call per stage."""
        model, core, seconds = self.model, self.model.model, {}

        def run(stage, fn):
            result, seconds[stage], _ = common.timed(fn, self.sync)
            return result

        inputs = run("processor", self.process)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        features = run("sam", lambda: core.get_patch_features(inputs["pixel_values"]))
        # The allocation plan (question embeddings, scorer, budget), then each stage of what follows it.
        plan = run("allocator", lambda: core.plan_allocation(input_ids=ids, attention_mask=mask,
                                                             patch_features=features, budget=budget))
        chosen = run("select", lambda: core.select(plan))
        hidden = run("clip", lambda: core.clip_encoder(chosen))
        embeds, _ = run("adapter", lambda: core.quality_adapter(hidden, plan.budget_tiers, chosen.token_scores))
        image = ArrCocImageFeaturesOutput(pooler_output=embeds, visual_token_mask=chosen.token_mask)
        spliced = run("splice", lambda: core.splice(ids, mask, image))
        prefill = run("prefill", lambda: model(inputs_embeds=spliced[0], attention_mask=spliced[1],
                                               position_ids=spliced[2], use_cache=True, logits_to_keep=1))
        tokens = run("decode", lambda: self._decode(prefill, spliced[1], spliced[2], new_tokens))
        return tokens, seconds

    def _decode(self, prefill, attention_mask, position_ids, new_tokens):
        """Greedy decoding from the prefill's cache, EOS suppressed as `min_new_tokens` does in generate."""
        eos = self.model.generation_config.eos_token_id
        tokens = [_greedy(prefill.logits[:, -1], eos)]
        cache, position = prefill.cache, position_ids[:, -1:]
        for _ in range(new_tokens - 1):
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], -1)
            position = position + 1
            out = self.model(input_ids=tokens[-1][:, None], attention_mask=attention_mask, position_ids=position,
                             cache=cache, use_cache=True)
            cache = out.cache
            tokens.append(_greedy(out.logits[:, -1], eos))
        return torch.stack(tokens, dim=1)


def _greedy(logits, eos):
    logits = logits.clone()
    for token in [eos] if isinstance(eos, int) else (eos or []):
        logits[:, token] = float("-inf")
    return logits.argmax(-1)


# ---------------------------------------------------------------------------------------------------------------
# Measuring one batch size
# ---------------------------------------------------------------------------------------------------------------


def measure_batch(query: Query, tiers, new_tokens, repeats, sync=common.no_sync, warmup=1) -> dict:
    """Every tier's end-to-end and stage-by-stage calls, all interleaved in the same rounds."""
    stage_log = {tier: [] for tier in tiers}
    calls = {}
    for tier in tiers:
        calls[("e2e", tier)] = lambda tier=tier: query.end_to_end(tier, new_tokens)
        calls[("stages", tier)] = lambda tier=tier: stage_log[tier].append(query.stages(tier, new_tokens)[1])
    times = common.interleaved(calls, repeats, warmup=warmup, sync=sync)
    for tier in tiers:
        stage_log[tier] = stage_log[tier][warmup:]  # the warm-up rounds
    return {"e2e": {tier: times[("e2e", tier)] for tier in tiers}, "stages": stage_log}


def tier_report(config, tier, raw, text_width, batch, new_tokens) -> dict:
    """One tier's times, speed-ups over full tokens, and FLOP-model ideal next to them."""
    e2e, full = raw["e2e"][tier], raw["e2e"]["full"]
    flops, full_flops = (query_flops(config, t, text_width, new_tokens, batch) for t in (tier, "full"))
    ideal = sum(full_flops.values()) / sum(flops.values())
    speedup = common.clock_ratios(full, e2e)
    stage_seconds = {stage: [log[stage] for log in raw["stages"][tier]] for stage in TIMED_STAGES}
    full_stage_seconds = {stage: [log[stage] for log in raw["stages"]["full"]] for stage in TIMED_STAGES}
    return {
        "visual_tokens": visual_tokens(config, tier),
        "end_to_end_ms": common.clock_stats(e2e),
        "per_query_ms": common.clock_stats(e2e, 1e3 / batch),
        "speedup_vs_full": speedup,
        "ideal_speedup": ideal,
        "share_of_ideal": speedup["wall"]["median"] / ideal,
        "flops": flops,
        "gflops_total": sum(flops.values()) / 1e9,
        "stages_ms": {stage: common.ms(values) for stage, values in stage_seconds.items()},
        # Per round, so that shares of the total (bench/allocator_cost.py) can be taken round by round.
        "stage_rounds_ms": {stage: [1e3 * v for v in values] for stage, values in stage_seconds.items()},
        "stage_sum_ms": common.ms([sum(log.values()) for log in raw["stages"][tier]]),
        "stage_speedup_vs_full": {stage: common.ratio(full_stage_seconds[stage], stage_seconds[stage])
                                  for stage in STAGES},
        "stage_ideal_speedup": {stage: full_flops[stage] / flops[stage] if flops[stage] else None
                                for stage in STAGES},
    }


def fixed_cost_fit(report: dict) -> dict:
    """time = fixed + per-GFLOP x GFLOPs over the tiers (medians, wall): the fixed part caps the speed-up."""
    tiers = list(report)
    fit = common.linear_fit([report[t]["gflops_total"] for t in tiers],
                            [report[t]["end_to_end_ms"]["wall"]["median"] for t in tiers])
    smallest = report[tiers[0]]["end_to_end_ms"]["wall"]["median"]
    return {"fixed_ms": fit["intercept"], "ms_per_gflop": fit["slope"],
            "fixed_share_at_smallest_tier": fit["intercept"] / smallest}


def check_flop_model(query: Query, tier, new_tokens) -> dict:
    """Counted FLOPs of one real generate (torch's counter) vs the FLOP model for the same shapes."""
    model = query.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    with _frozen(trainable):  # the counter's module hooks need parameters without grad under no_grad
        _, counted = counted_flops(lambda: query.end_to_end(tier, new_tokens))
    inputs = query.process()
    batch, width = inputs["input_ids"].shape
    modelled = sum(query_flops(model.config, tier, width, new_tokens, batch).values())
    return {"tier": tier, "batch": batch, "counted": counted, "modelled": modelled,
            "modelled_over_counted": modelled / counted}


@contextlib.contextmanager
def _frozen(params):
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def measure(model, processor, rows, batch_sizes, new_tokens, repeats, device="cpu", dtype=torch.float32,
            sync=common.no_sync, warmup=1, check_flops=True) -> dict:
    """The whole token-cost result for a loaded model (CPU or GPU; `sync` waits for the device).

    check_flops: count one generate's FLOPs with torch's counter (it cannot see flash-attn's kernels)."""
    config, tiers = model.config, bench_tiers(model.config)
    result = {"tiers": [str(t) for t in tiers], "new_tokens": new_tokens, "num_patches": config.num_patches,
              "repeats": repeats, "batch_sizes": {}}
    for batch in batch_sizes:
        query = Query(model, processor, rows[:batch], device, dtype, sync)
        width = query.process()["input_ids"].shape[1]
        raw = measure_batch(query, tiers, new_tokens, repeats, sync, warmup)
        report = {str(t): tier_report(config, t, raw, width, batch, new_tokens) for t in tiers}
        result["batch_sizes"][str(batch)] = {"text_width": width, "tiers": report, "fit": fixed_cost_fit(report)}
    check = Query(model, processor, rows[:max(batch_sizes)], device, dtype, sync)
    result["flop_model_check"] = check_flop_model(check, tiers[0], new_tokens) if check_flops else None
    result["decode_matches_generate"] = _decode_matches(check, tiers[0], new_tokens)
    return result


def _decode_matches(query, tier, new_tokens) -> bool:
    """The stage-by-stage pipeline must produce generate's tokens, or the breakdown times something else."""
    generated = query.end_to_end(tier, new_tokens)[:, -new_tokens:]
    staged, _ = query.stages(tier, new_tokens)
    return bool(torch.equal(generated.cpu(), staged.cpu()))


def run(preset="demo", repeats=7, batch_sizes=(1, 8), new_tokens=8, threads=1, vision_autocast=None) -> dict:
    common.use_threads(threads)
    model, processor = common.load_model(preset, vision_autocast=vision_autocast)
    rows = common.synthetic_rows(model.config, max(batch_sizes))
    result = measure(model, processor, rows, list(batch_sizes), new_tokens, repeats)
    return {"preset": str(preset), "dtype": common.precision(vision_autocast), "vision_autocast": vision_autocast,
            **result}


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def speedup_table(result: dict, batch) -> str:
    part = result["batch_sizes"][str(batch)]["tiers"]
    rows = []
    for tier, r in part.items():
        rows.append([tier, r["visual_tokens"], common.fmt_range(r["per_query_ms"]["wall"]),
                     common.fmt_range(r["speedup_vs_full"]["wall"], 2, "x"),
                     f"{r['speedup_vs_full']['cpu']['median']:.2f}x", f"{r['ideal_speedup']:.2f}x",
                     f"{100 * r['share_of_ideal']:.0f}%"])
    headers = ["tier", "visual tokens", "ms/query (wall) median [min-max]", "speed-up vs full (wall)",
               "(CPU time)", "ideal (FLOPs)", "of ideal"]
    return common.markdown_table(headers, rows)


def stage_table(result: dict, batch) -> str:
    part = result["batch_sizes"][str(batch)]["tiers"]
    rows = []
    for stage in TIMED_STAGES:
        cells = [stage]
        for r in part.values():
            cell = f"{r['stages_ms'][stage]['median']:.1f}"
            if stage in STAGES and r["flops"][stage]:
                cell += f" ({100 * r['flops'][stage] / sum(r['flops'].values()):.0f}%)"
            cells.append(cell)
        rows.append(cells)
    rows.append(["sum of stages"] + [f"{r['stage_sum_ms']['median']:.1f}" for r in part.values()])
    rows.append(["end to end"] + [f"{r['end_to_end_ms']['wall']['median']:.1f}" for r in part.values()])
    return common.markdown_table(["stage: median ms (share of FLOPs)"] + list(part), rows)


def markdown(result: dict) -> str:
    lines = [f"**Token cost** (`bench/token_cost.py`, {result['preset']} preset, {result['dtype']}, random weights, "
             f"processor + generate of {result['new_tokens']} new tokens, {result['repeats']} interleaved rounds; "
             f"{common.machine_line(result)}). Speed-up = time at full tokens / time at the tier, per round; "
             "ideal = FLOPs at full / FLOPs at the tier (bench/flops.py)."]
    for batch, part in result["batch_sizes"].items():
        fit = part["fit"]
        lines += ["", f"Batch {batch}:", "", speedup_table(result, batch), "",
                  f"Fixed cost (fit over tiers): {fit['fixed_ms']:.0f} ms per batch, "
                  f"{100 * fit['fixed_share_at_smallest_tier']:.0f}% of the smallest tier's time; "
                  f"{fit['ms_per_gflop']:.0f} ms per GFLOP."]
    largest = max(result["batch_sizes"], key=int)
    lines += ["", f"Stage breakdown, batch {largest} (each stage timed on its own, same rounds):", "",
              stage_table(result, largest)]
    check = result["flop_model_check"]
    if check:
        lines += ["", f"FLOP model check: modelled / counted by torch = {check['modelled_over_counted']:.4f} "
                      f"(tier {check['tier']}, batch {check['batch']})."]
    lines += ["", f"Stage pipeline reproduces generate's tokens: {result['decode_matches_generate']}."]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    result = run(args.preset, args.repeats, args.batch_sizes, args.new_tokens, args.threads, args.vision_autocast)
    common.publish(NAME + common.autocast_suffix(args.vision_autocast), result, args.output_dir, markdown)


if __name__ == "__main__":
    main()


__all__ = ["Query", "bench_tiers", "markdown", "measure", "run"]
