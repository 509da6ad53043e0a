"""Shared helpers of the benchmarks: one thread, interleaved repeats, min/median/max, ratios, machine info, output.

Conventions every benchmark follows (docs/design.md, "What things cost here"):
- Absolute times swing by +-30% between runs on this shared 2-core machine, so every claim is a ratio of two
  things measured side by side, in one process, in interleaved rounds (round i runs every variant once, in an
  order that alternates between rounds, so a burst of load on the machine hits all variants alike).
- Ratios are taken per round (variant A's time in round i over variant B's time in round i) and reported as
  min/median/max over the rounds, next to the ratio of the medians.
- One torch thread by default: with two threads, a process that shares the 2 cores with another one spin-waits
  for the core it lost and timings swing by 10x; one thread stays within ~10%. The ratios are a property of the
  work (tokens, FLOPs), which the thread count does not change.
- Both clocks are kept: wall time (what a user waits) and process CPU time (steadier when another process takes
  the core for a moment: waiting does not count). On a GPU only wall time means anything.
"""

import os

# Before torch is imported anywhere: OpenMP reads this once, when its thread pool starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from modeling_arrcoc.provenance import REPO_ROOT as ROOT  # noqa: E402  (the checkout: presets, outputs)

OUTPUT_DIR = ROOT / "outputs" / "bench"
PRESETS = ROOT / "configs" / "model"
CLOCKS = ("wall", "cpu")


# ---------------------------------------------------------------------------------------------------------------
# Setup and arguments
# ---------------------------------------------------------------------------------------------------------------


# transformers' SDPA path lays a grouped-query model's query heads over its key/value heads only in eager mode; traced,
# it repeats every key/value head per query head (a copy of the KV cache) unless this is set when the graph is traced
# (docs/inference.md). Compiled benchmarks trace and call with it on.
FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


def with_switch(call):
    """Run `call` with FORCE_GQA on, then restore the environment, so eager runs as shipped. Every call of a switched
    compiled function goes through here: Dynamo guards on the environment variables a trace read, so a call without
    the switch would trace it again without it."""
    before = os.environ.get(FORCE_GQA)
    os.environ[FORCE_GQA] = "1"
    try:
        return call()
    finally:
        if before is None:
            os.environ.pop(FORCE_GQA)
        else:
            os.environ[FORCE_GQA] = before


def use_threads(threads: int = 1) -> int:
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def preset_path(preset) -> Path:
    """A preset name under configs/model (tiny, demo, base) or a directory."""
    path = Path(preset)
    return path if path.is_dir() else PRESETS / str(preset)


def add_common_args(parser, repeats: int):
    parser.add_argument("--preset", default="demo", help="model preset under configs/model, or a directory")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds (one warm-up round extra)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see bench/common.py)")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR)
    return parser


def add_vision_autocast_arg(parser):
    """The benchmarks that time SAM take `--vision-autocast` (the others do not: they would ignore it)."""
    from modeling_arrcoc.configuration_arrcoc import VISION_AUTOCAST_DTYPES

    parser.add_argument("--vision-autocast", choices=VISION_AUTOCAST_DTYPES, default=None,
                        help="run SAM under autocast to this dtype (config.vision_autocast_dtype); the result is "
                             "written apart, <name>_sam_<dtype>.json")
    return parser


def autocast_suffix(vision_autocast) -> str:
    """What a result run with SAM under autocast adds to its name (and nothing for the plain run)."""
    return f"_sam_{vision_autocast}" if vision_autocast else ""


def precision(vision_autocast) -> str:
    """The result's dtype line: float32 weights, SAM computing in `vision_autocast` when set."""
    return "float32" + (f", SAM under {vision_autocast} autocast" if vision_autocast else "")


def load_model(preset, device="cpu", dtype=None, attn_implementation=None, seed: int = 0,
               needs_processor: bool = True, vision_autocast=None):
    """A random-weight model and its processor from a preset: costs do not depend on trained weights. A preset of
    pretrained components (components.json: the base) ships no processor files (its tokenizer would be the text
    checkpoint's): a benchmark that can build its own inputs passes `needs_processor=False` and gets None (see
    prefill_decode's `query_inputs`); any other gets a clear error. `vision_autocast`: the model's
    `vision_autocast_dtype` (SAM's compute dtype)."""
    import modeling_arrcoc  # noqa: F401  registers the Auto classes
    from modeling_arrcoc.components import is_components_preset
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    path = preset_path(preset)
    no_processor = is_components_preset(path)
    if needs_processor and no_processor:
        raise ValueError(f"preset {preset}: a preset of pretrained components ships no processor, and this benchmark "
                         "needs one; time it with bench.prefill_decode or bench.base_scale, which build its inputs.")
    config = AutoConfig.from_pretrained(path)
    config.vision_autocast_dtype = vision_autocast
    torch.manual_seed(seed)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    if dtype is not None:
        kwargs["dtype"] = dtype  # at construction: flash attention checks the dtype when it is chosen
    model = AutoModelForImageTextToText.from_config(config, **kwargs).to(device)
    processor = None if no_processor else AutoProcessor.from_pretrained(path)
    return model.eval(), processor


def synthetic_rows(config, count: int, seed: int = 0) -> list[dict]:
    """`count` synthetic rows cycling through the task families, rendered at the preset's resolution."""
    from modeling_arrcoc.data.synthetic import FAMILIES, render_sample

    size, patch = config.vision_config.image_size, config.vision_config.patch_size
    return [render_sample(FAMILIES[i % len(FAMILIES)], np.random.default_rng([seed, i]), size, patch)
            for i in range(count)]


def chat_texts(processor, rows) -> list[str]:
    from modeling_arrcoc.data.collator import chat_prompt

    return [chat_prompt(processor, row["question"]) for row in rows]


# ---------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------


def no_sync():
    pass


def timed(fn, sync=no_sync):
    """(result, wall seconds, CPU seconds) of one call; `sync` waits for an accelerator before each clock read."""
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    sync()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def interleaved(calls: dict, repeats: int, warmup: int = 1, sync=no_sync) -> dict:
    """{name: {"wall": [s, ...], "cpu": [s, ...]}} over `repeats` rounds after `warmup` untimed ones.

    Each round runs every call once; the order reverses every other round so that no call always runs right
    after the same neighbour (caches, allocator state, a load burst)."""
    times = {name: {clock: [] for clock in CLOCKS} for name in calls}
    names = list(calls)
    for round_index in range(warmup + repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            _, wall, cpu = timed(calls[name], sync)
            if round_index >= warmup:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
    return times


def stats(values, scale: float = 1.0) -> dict:
    """min/median/max (and the number of runs) of `values` times `scale`."""
    values = [scale * v for v in values]
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "runs": len(values)}


def ms(seconds) -> dict:
    return stats(seconds, 1e3)


def ratio(numerator, denominator) -> dict:
    """Per-round ratios numerator[i] / denominator[i] as min/median/max, plus the ratio of the two medians."""
    per_round = [a / b for a, b in zip(numerator, denominator)]
    result = stats(per_round)
    result["of_medians"] = statistics.median(numerator) / statistics.median(denominator)
    return result


def clock_stats(times: dict, scale: float = 1e3) -> dict:
    """{clock: min/median/max} for one entry of `interleaved`'s result (milliseconds by default)."""
    return {clock: stats(times[clock], scale) for clock in CLOCKS}


def clock_ratios(numerator: dict, denominator: dict) -> dict:
    return {clock: ratio(numerator[clock], denominator[clock]) for clock in CLOCKS}


def linear_fit(x, y) -> dict:
    """Least-squares y = intercept + slope * x: splits a cost into a fixed part and a part proportional to x."""
    slope, intercept = np.polyfit(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 1)
    return {"intercept": float(intercept), "slope": float(slope)}


# ---------------------------------------------------------------------------------------------------------------
# Machine and output
# ---------------------------------------------------------------------------------------------------------------


def git(*args) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_info(device: str = "cpu") -> dict:
    import transformers

    info = {
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": git("rev-parse", "HEAD"),
        # Uncommitted changes mean the commit alone does not reproduce the numbers.
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_result(name: str, payload: dict, output_dir=OUTPUT_DIR, device: str = "cpu") -> Path:
    """outputs/bench/<name>.json with the machine, the commit and the time of the run added."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {"bench": name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": machine_info(device), **payload}
    path = output_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def read_result(name: str, output_dir=OUTPUT_DIR) -> dict | None:
    path = Path(output_dir) / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def publish(name: str, result: dict, output_dir, markdown, device: str = "cpu") -> Path:
    """Write a script's JSON, then print its table as read back from disk (what run_all and docs/results.md use)."""
    path = write_result(name, result, output_dir, device=device)
    print(markdown(read_result(name, output_dir)))
    print(f"wrote {path}")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------------------------


def fmt_range(s: dict, digits: int = 1, unit: str = "") -> str:
    """'median [min-max]' of a stats dict."""
    return f"{s['median']:.{digits}f}{unit} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def markdown_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(result: dict) -> str:
    m = result["machine"]
    commit = (m.get("commit") or "unknown")[:10] + ("+dirty" if m.get("dirty") else "")
    return (f"{m['cpu_count']} cores ({m['usable_cores']} usable), {m['torch_threads']} torch thread(s), "
            f"torch {m['torch']}, commit `{commit}`, device {m.get('gpu', m['device'])}")


__all__ = [
    "FORCE_GQA",
    "CLOCKS",
    "OUTPUT_DIR",
    "ROOT",
    "add_common_args",
    "add_vision_autocast_arg",
    "autocast_suffix",
    "chat_texts",
    "clock_ratios",
    "clock_stats",
    "fmt_range",
    "interleaved",
    "linear_fit",
    "load_model",
    "machine_info",
    "machine_line",
    "publish",
    "markdown_table",
    "ms",
    "no_sync",
    "precision",
    "preset_path",
    "ratio",
    "read_result",
    "stats",
    "synthetic_rows",
    "timed",
    "use_threads",
    "with_switch",
    "write_result",
]
