"""Peak memory and optimizer state per training phase, next to 2 x trainable parameters x 4 bytes.

Each phase (pretrain, phase0..3) runs in a fresh subprocess, so that one phase's allocations (the allocator's
free lists, the largest activation peak so far) cannot inflate the next one's peak: the subprocess builds the
model, applies the phase (`apply_phase`, the only place that sets requires_grad), builds AdamW over the
per-component groups of the trainer (`component_param_groups`: trainable parameters only), and runs a few
training steps at batch 8 at the largest tier (the largest activations). It reports
- optimizer state bytes per component: AdamW keeps exp_avg and exp_avg_sq (2 x 4 bytes per float32 trainable
  parameter) plus a one-element `step` per parameter tensor; frozen parameters must hold none (phase 1: the
  allocator and the quality adapter only);
- gradient bytes after backward (frozen parameters get none);
- RSS at a baseline (imports done, one collated batch of data in memory), after building the model and after
  the steps. Importing transformers and its friends peaks higher, for a moment, than a tiny model's whole
  training step, so the high-water mark is reset at the baseline (Linux: `5 > /proc/self/clear_refs` resets
  VmHWM to the current RSS); the phase's own cost is the peak after that minus the baseline RSS. The lifetime
  peak (ru_maxrss) is kept as well.
Repeats run the phases round-robin, one subprocess at a time; RSS figures are min/median/max over them.

    python -m bench.memory [--preset demo] [--repeats 2] [--steps 2] [--phases pretrain phase0 ...]

Writes outputs/bench/memory.json.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from bench import common  # first: it pins the thread count before torch starts its pool

import psutil
import torch

from modeling_arrcoc.modeling_arrcoc import answer_window

NAME = "memory"
PHASES = ("pretrain", "phase0", "phase1", "phase2", "phase3")
MOMENTS = ("exp_avg", "exp_avg_sq")
MIB = 2**20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, repeats=2)
    parser.add_argument("--phases", nargs="+", default=list(PHASES))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one phase, JSON on stdout
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# In the subprocess: one phase
# ---------------------------------------------------------------------------------------------------------------


def lifetime_peak_rss() -> int:
    """The process's RSS high-water mark since it started, in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Reset the high-water mark to the current RSS (Linux); False where the kernel offers no way to."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """RSS high-water mark since the last reset (VmHWM), or since the start where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return lifetime_peak_rss()


def rss_point() -> dict:
    return {"rss": psutil.Process().memory_info().rss, "peak_rss": peak_rss(), "lifetime_peak_rss": lifetime_peak_rss()}


def owners(model) -> dict:
    """{id(parameter): component}, each parameter once (phases.component_parameters' convention)."""
    from modeling_arrcoc.training.phases import component_parameters

    return {id(p): name for name, params in component_parameters(model).items() for p in params}


def state_bytes(optimizer, owner: dict) -> dict:
    """AdamW state per component: {"moments": exp_avg + exp_avg_sq bytes, "step": step-counter bytes}."""
    out = {}
    for param, state in optimizer.state.items():
        entry = out.setdefault(owner[id(param)], {"moments": 0, "step": 0})
        for key, value in state.items():
            if torch.is_tensor(value):
                entry["moments" if key in MOMENTS else "step"] += value.numel() * value.element_size()
    return out


def trainable_bytes(model, owner: dict) -> dict:
    out = {}
    for param in model.parameters():
        if param.requires_grad:
            out[owner[id(param)]] = out.get(owner[id(param)], 0) + param.numel() * param.element_size()
    return out


def phase_memory(preset, phase, steps=2, batch_size=8) -> dict:
    """Build, apply `phase`, train `steps` steps at the largest tier; bytes of everything that matters."""
    from transformers import AutoConfig, AutoProcessor

    from modeling_arrcoc.data.collator import ArrCocCollator
    from modeling_arrcoc.training.phases import apply_phase

    from bench.training_throughput import LOSS_WEIGHTS, make_optimizer

    # The data first (rendering charts imports matplotlib): the baseline holds everything but the model's work.
    config = AutoConfig.from_pretrained(common.preset_path(preset))
    processor = AutoProcessor.from_pretrained(common.preset_path(preset))
    rows = common.synthetic_rows(config, batch_size)
    inputs = ArrCocCollator(processor, config.vision_config.patch_size)(rows)
    reset = reset_peak_rss()
    points = {"baseline": rss_point()}
    model, _ = common.load_model(preset)
    points["after_model"] = rss_point()
    apply_phase(model, phase)
    model.train()
    owner = owners(model)
    optimizer = make_optimizer(model)
    grads, no_grad = 0, []
    for _ in range(steps):
        out = model(**inputs, budget=model.config.budgets[-1], loss_weights=LOSS_WEIGHTS, logits_to_keep=answer_window(inputs["labels"]))
        out.loss.backward()
        grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
        # AdamW creates no state for a parameter that never gets a gradient: name them, they explain a ratio < 1.
        no_grad = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    points["after_steps"] = rss_point()
    trainable = trainable_bytes(model, owner)
    return {
        "phase": phase,
        "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "trainable_bytes_by_component": trainable,
        "optimizer_state_by_component": state_bytes(optimizer, owner),
        "gradient_bytes": grads,
        "trainable_without_gradient": no_grad,
        "trainable_without_gradient_numel": sum(p.numel() for name, p in model.named_parameters() if name in no_grad),
        "rss": points,
        "peak_reset_at_baseline": reset,
    }


# ---------------------------------------------------------------------------------------------------------------
# In the parent: phases in fresh subprocesses
# ---------------------------------------------------------------------------------------------------------------


def child(preset, phase, steps, batch_size, threads) -> dict:
    command = [sys.executable, "-m", "bench.memory", "--child", phase, "--preset", str(preset),
               "--steps", str(steps), "--batch-size", str(batch_size), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=common.ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess for {phase} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize_phase(runs: list) -> dict:
    """Deterministic byte counts from the first run (checked equal across runs), RSS as min/median/max."""
    first = runs[0]
    for other in runs[1:]:
        if other["optimizer_state_by_component"] != first["optimizer_state_by_component"]:
            raise RuntimeError(f"optimizer state of {first['phase']} differs between runs")
    state = first["optimizer_state_by_component"]
    moments = sum(s["moments"] for s in state.values())
    trainable_bytes = 4 * first["trainable_parameters"]
    baselines = [r["rss"]["baseline"]["rss"] for r in runs]
    return {
        "trainable_parameters": first["trainable_parameters"],
        "parameter_bytes": first["parameter_bytes"],
        "gradient_bytes": first["gradient_bytes"],
        "optimizer_moment_bytes": moments,
        "optimizer_step_bytes": sum(s["step"] for s in state.values()),
        "expected_moment_bytes": 2 * trainable_bytes,  # 2 x trainable parameters x 4 bytes
        "moments_over_expected": moments / (2 * trainable_bytes) if trainable_bytes else None,
        "components_with_state": sorted(state),
        "trainable_without_gradient": first["trainable_without_gradient"],
        # What the moments should be for the parameters that do get a gradient: 1.0 exactly.
        "moments_over_expected_with_gradient": moments / (8 * (first["trainable_parameters"]
                                                               - first["trainable_without_gradient_numel"]) or 1),
        "optimizer_state_by_component": state,
        "peak_rss_mib": common.stats([r["rss"]["after_steps"]["peak_rss"] for r in runs], 1 / MIB),
        "baseline_rss_mib": common.stats(baselines, 1 / MIB),
        "rss_after_model_mib": common.stats([r["rss"]["after_model"]["rss"] for r in runs], 1 / MIB),
        "peak_over_baseline_mib": common.stats(
            [r["rss"]["after_steps"]["peak_rss"] - b for r, b in zip(runs, baselines)], 1 / MIB),
        "lifetime_peak_rss_mib": common.stats([r["rss"]["after_steps"]["lifetime_peak_rss"] for r in runs], 1 / MIB),
        "peak_reset_at_baseline": all(r["peak_reset_at_baseline"] for r in runs),
    }


def run(preset="demo", repeats=2, phases=PHASES, steps=2, batch_size=8, threads=1) -> dict:
    runs = {phase: [] for phase in phases}
    for _ in range(repeats):  # round-robin: a slow moment of the machine hits every phase alike
        for phase in phases:
            runs[phase].append(child(preset, phase, steps, batch_size, threads))
    return {"preset": str(preset), "steps": steps, "batch_size": batch_size, "repeats": repeats,
            "tier": "largest", "phases": {phase: summarize_phase(r) for phase, r in runs.items()}}


def markdown(result: dict) -> str:
    rows = []
    for phase, p in result["phases"].items():
        ratio = "-" if p["moments_over_expected"] is None else f"{p['moments_over_expected']:.3f}"
        rows.append([phase, f"{p['trainable_parameters'] / 1e6:.2f}M", ", ".join(p["components_with_state"]) or "-",
                     f"{p['optimizer_moment_bytes'] / MIB:.1f}", f"{p['expected_moment_bytes'] / MIB:.1f}", ratio,
                     f"{p['gradient_bytes'] / MIB:.1f}", common.fmt_range(p["peak_rss_mib"], 0),
                     common.fmt_range(p["peak_over_baseline_mib"], 0)])
    headers = ["phase", "trainable params", "components with optimizer state", "AdamW moments MiB",
               "2 x params x 4 B MiB", "ratio", "grads MiB", "peak RSS MiB median [min-max]",
               "peak - baseline MiB"]
    return "\n".join([
        f"**Memory per phase** (`bench/memory.py`, {result['preset']} preset, a fresh process per phase, "
        f"{result['steps']} AdamW steps at batch {result['batch_size']} at the largest tier, {result['repeats']} "
        f"runs per phase; {common.machine_line(result)}). Peak RSS: the high-water mark from a baseline (imports "
        f"done, one batch of data loaded; reset there) to the end of the steps; peak - baseline: the phase's own "
        f"share (model, activations, gradients, optimizer state). AdamW's `step` counters add a few KiB on top of "
        f"the moments.", "",
        common.markdown_table(headers, rows), "", _no_gradient_note(result),
    ])


def _no_gradient_note(result: dict) -> str:
    """AdamW keeps no state for a trainable parameter that never gets a gradient, so a ratio below 1 names them."""
    missing = sorted({name for p in result["phases"].values() for name in p["trainable_without_gradient"]})
    if not missing:
        return "Every trainable parameter got a gradient, so the moments are exactly 2 x params x 4 B."
    exact = all(abs(p["moments_over_expected_with_gradient"] - 1) < 1e-9 for p in result["phases"].values()
                if p["trainable_parameters"])
    return (f"Trainable but never given a gradient (so no optimizer state; ratio < 1): {', '.join(missing)}. "
            f"Over the parameters that do get one, moments = 2 x params x 4 B {'exactly' if exact else 'NOT exactly'}.")


def main(argv=None):
    args = parse_args(argv)
    common.use_threads(args.threads)
    if args.child:
        print(json.dumps(phase_memory(args.preset, args.child, args.steps, args.batch_size)))
        return
    result = run(args.preset, args.repeats, args.phases, args.steps, args.batch_size, args.threads)
    common.publish(NAME, result, args.output_dir, markdown)


if __name__ == "__main__":
    main()


__all__ = ["PHASES", "markdown", "phase_memory", "run", "state_bytes"]
