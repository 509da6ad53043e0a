"""Training throughput (samples/s) and padding share: what each of the trainer's speed options is worth.

One phase1-like setup (SAM frozen; allocator and quality adapter trained; loss = answer CE + efficiency +
alignment + VET KL with phase-YAML-like weights), batch 8, a pool of synthetic rows whose per-sample tiers are
phase 0's heuristic (short question -> smallest tier, else largest: the per-sample tiers that `group_by_tier`
groups on), forced per sample so that every variant trains on the same tier mix. A training step is
model forward + backward + gradient clipping at 1.0 + AdamW step, as ArrCocTrainer does, without its logging.

Variants, each one epoch over the pool per round, all interleaved in the same rounds:
- baseline: tier-grouped batches (TierGroupedBatchSampler), cached frozen SAM features, logits on labelled
  positions only (`logits_to_keep` = the answer window): the trainer's fast settings;
- random_batches: the same rows in plain shuffled batches, each padded to its largest tier;
- uncached_sam: SAM recomputed from pixels every step;
- all_logits: the LM head and the loss on every position.
Reported: samples/s min/median/max, each variant's time over the baseline's per round, the padding share of
visual-token slots and of LLM positions, and the LM head's share of the LLM forward FLOPs.

    python -m bench.training_throughput [--preset demo] [--repeats 4] [--rows 32] [--batch-size 8]

Writes outputs/bench/training_throughput.json.
"""

import argparse

from bench import common  # first: it pins the thread count before torch starts its pool
from bench.flops import llm_flops, lm_head_flops

import torch

from modeling_arrcoc.modeling_arrcoc import answer_window

NAME = "training_throughput"
LOSS_WEIGHTS = {"answer": 1.0, "efficiency": 0.001, "alignment": 0.5, "vet_kl": 0.01}
VARIANTS = {
    "baseline": {"batches": "grouped", "cached": True, "labels_only": True},
    "random_batches": {"batches": "random", "cached": True, "labels_only": True},
    "uncached_sam": {"batches": "grouped", "cached": False, "labels_only": True},
    "all_logits": {"batches": "grouped", "cached": True, "labels_only": False},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, repeats=4)
    parser.add_argument("--rows", type=int, default=32, help="rows in the pool (one epoch per variant per round)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--phase", default="phase1", help="which components train (phases.py)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# Data: one pool, two batchings, cached features
# ---------------------------------------------------------------------------------------------------------------


class Pool:
    """Collated batches of one row pool, tier-grouped and random, with each row's heuristic tier."""

    def __init__(self, model, processor, rows, batch_size, seed=0):
        from modeling_arrcoc.data.collator import ArrCocCollator
        from modeling_arrcoc.data.sampler import TierGroupedBatchSampler, question_tiers, random_batches

        config = model.config
        self.tiers = question_tiers([row["question"] for row in rows], len(config.budgets))
        self.tokens = [min(config.budgets[t], config.num_patches) for t in self.tiers]
        collator = ArrCocCollator(processor, config.vision_config.patch_size)
        self.indices = {"grouped": list(TierGroupedBatchSampler(self.tiers, batch_size, seed=seed)),
                        "random": random_batches(len(rows), batch_size, seed)}
        self.batches = {name: [(index, collator([rows[i] for i in index])) for index in batches]
                        for name, batches in self.indices.items()}
        self.budgets = config.budgets
        with torch.no_grad():  # a frozen SAM's features, computed once per row as SamFeatureCache does
            pixels = collator(rows)["pixel_values"]
            self.features = model.model.get_patch_features(pixels)

    def budget(self, index) -> list:
        return [self.budgets[self.tiers[i]] for i in index]

    def padding(self, name) -> dict:
        """Padded share of visual-token slots and of LLM positions when each batch pads to its longest row."""
        from modeling_arrcoc.data.sampler import padding_share

        slots = used = 0
        for index, batch in self.batches[name]:
            lengths = [int(n) - 1 + self.tokens[i] for i, n in zip(index, batch["attention_mask"].sum(-1))]
            slots += len(lengths) * max(lengths)
            used += sum(lengths)
        return {"visual_tokens": padding_share(self.tokens, self.indices[name]),
                "llm_positions": (slots - used) / slots, "llm_positions_computed": slots}


# ---------------------------------------------------------------------------------------------------------------
# Training steps
# ---------------------------------------------------------------------------------------------------------------


def make_optimizer(model):
    from modeling_arrcoc.training.phases import COMPONENTS
    from modeling_arrcoc.training.optim import component_param_groups

    groups = component_param_groups(model, dict.fromkeys(COMPONENTS, 1e-5), 0.0, set())
    return torch.optim.AdamW(groups)


def train_step(model, optimizer, inputs, budget, labels_only):
    out = model(**inputs, budget=budget, loss_weights=LOSS_WEIGHTS, logits_to_keep=answer_window(inputs["labels"]) if labels_only else 0)
    out.loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.loss.detach()


def epoch(model, optimizer, pool: Pool, variant: dict):
    """One pass over the pool's batches of `variant`; the cache lookup is inside the step, as in the trainer."""
    for index, batch in pool.batches[variant["batches"]]:
        inputs = dict(batch)
        if variant["cached"]:
            inputs.pop("pixel_values")
            inputs["patch_features"] = pool.features[index]
        train_step(model, optimizer, inputs, pool.budget(index), variant["labels_only"])


def lm_head_share(config, pool: Pool) -> dict:
    """The LM head's FLOPs over all positions vs labelled ones, as a share of the LLM forward (grouped batches)."""
    tc, llm = config.text_config, 0
    head = {"all": 0, "labels_only": 0}
    for index, batch in pool.batches["grouped"]:
        length = batch["input_ids"].shape[1] - 1 + max(pool.tokens[i] for i in index)
        positions, labelled = len(index) * length, int((batch["labels"][:, 1:] != -100).sum())
        llm += len(index) * llm_flops(tc, length, length)
        head["all"] += lm_head_flops(tc, positions)
        head["labels_only"] += lm_head_flops(tc, labelled)
    return {name: value / (llm + value) for name, value in head.items()}


# ---------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------


def run(preset="demo", repeats=4, rows=32, batch_size=8, phase="phase1", threads=1) -> dict:
    from modeling_arrcoc.training.phases import apply_phase

    common.use_threads(threads)
    model, processor = common.load_model(preset)
    pool = Pool(model, processor, common.synthetic_rows(model.config, rows), batch_size)
    apply_phase(model, phase)
    model.train()
    optimizer = make_optimizer(model)
    calls = {name: lambda v=variant: epoch(model, optimizer, pool, v) for name, variant in VARIANTS.items()}
    times = common.interleaved(calls, repeats, warmup=1)
    return {
        "preset": str(preset), "phase": phase, "batch_size": batch_size, "rows": rows, "repeats": repeats,
        "loss_weights": LOSS_WEIGHTS,
        "tier_mix": {str(t): pool.tokens.count(t) for t in sorted(set(pool.tokens))},
        "batches_per_epoch": {name: len(b) for name, b in pool.batches.items()},
        "variants": {name: variant_report(name, times, rows) for name in VARIANTS},
        "padding_share": {name: pool.padding(name) for name in pool.batches},
        "lm_head_share_of_llm_forward_flops": lm_head_share(model.config, pool),
    }


def variant_report(name, times, rows) -> dict:
    """Samples/s per round, and the variant's epoch time over the baseline's in the same round."""
    samples = {clock: common.stats([rows / s for s in times[name][clock]]) for clock in common.CLOCKS}
    return {**VARIANTS[name], "samples_per_s": samples,
            "time_over_baseline": common.clock_ratios(times[name], times["baseline"])}


def markdown(result: dict) -> str:
    rows = []
    for name, v in result["variants"].items():
        padding = result["padding_share"][v["batches"]]
        steps = result["batches_per_epoch"][v["batches"]]
        rows.append([name, f"{v['batches']} ({steps} steps)", "yes" if v["cached"] else "no",
                     "labelled" if v["labels_only"] else "all", common.fmt_range(v["samples_per_s"]["wall"], 2),
                     common.fmt_range(v["time_over_baseline"]["wall"], 2, "x"),
                     f"{v['time_over_baseline']['cpu']['median']:.2f}x",
                     f"{100 * padding['visual_tokens']:.0f}% / {100 * padding['llm_positions']:.0f}%"])
    headers = ["variant", "batches (per epoch)", "cached SAM", "logits", "samples/s median [min-max]",
               "time / baseline (wall)", "(CPU time)", "padding: visual slots / LLM positions"]
    mix = ", ".join(f"K={k}: {n}" for k, n in result["tier_mix"].items())
    head = result["lm_head_share_of_llm_forward_flops"]
    return "\n".join([
        f"**Training throughput** (`bench/training_throughput.py`, {result['preset']} preset, {result['phase']} "
        f"trainable set, batch {result['batch_size']}, forward + backward + clip + AdamW, one epoch of "
        f"{result['rows']} rows per variant per round, {result['repeats']} interleaved rounds; tier mix {mix}; "
        f"{common.machine_line(result)}):", "", common.markdown_table(headers, rows), "",
        f"LM head share of the LLM forward FLOPs: {100 * head['all']:.1f}% on all positions, "
        f"{100 * head['labels_only']:.1f}% on labelled positions only.",
    ])


def main(argv=None):
    args = parse_args(argv)
    result = run(args.preset, args.repeats, args.rows, args.batch_size, args.phase, args.threads)
    common.publish(NAME, result, args.output_dir, markdown)


if __name__ == "__main__":
    main()


__all__ = ["LOSS_WEIGHTS", "Pool", "VARIANTS", "markdown", "run", "train_step"]
