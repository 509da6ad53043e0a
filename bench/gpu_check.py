"""One command for one GPU (under 10 minutes on an H100): the base preset at its real shapes, bf16, random weights.

    python -m bench.gpu_check [--output-dir outputs/bench] [--parts forward engine trainer] [--budget-s 540]

Nothing is downloaded (the GPU machine has no network): the model is built from configs/model/base/config.json
with random weights, directly on the GPU. Three parts, in this order; each one that fails prints
"FAILED <part>: <why>" with the tail of its error and the others still run, so one broken part does not waste
the run. A time budget (--budget-s, default 540 s) caps the subprocesses so that the whole command ends in time.

1. forward: bf16, attention `sdpa` for every sub-model, then, when `flash_attn` imports, `flash_attention_2` for
   CLIP and the LLM (SAM stays on sdpa: its decomposed relative-position bias is an additive mask that flash
   attention cannot take, and the model refuses it). Per tier of config.budgets and at full tokens (4096), batch 1
   and 8 (one synthetic 1024 px page and a 24-token prompt per sample, as bench/base_scale.py), `forward` without
   labels: 3 warm-up rounds, then 20 interleaved rounds, every clock read after `torch.cuda.synchronize()`;
   median latency, speed-up over full tokens per round next to the FLOP ratio of bench/flops.py, the peak GPU
   memory of one call per tier, and SAM alone (`get_patch_features`) in the same rounds: its cost is the same at
   every tier, so it bounds what a small tier can save.
2. engine: 5 phase-1 optimizer steps under DeepSpeed ZeRO-2 on one GPU with `deepspeed.initialize` (ZeRO stage 2,
   bf16, gradient clipping 1.0, torch AdamW over the trainable parameters as the client optimizer: no fused op
   to compile), batch 4 at the budget the allocator picks ("auto", as phase 1 trains), each step timed with
   synchronization. Runs in a subprocess (one process group of size 1).
3. trainer: the repository's own path, `accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml
   --num_processes 1 ...` running train.py's recipe (`modeling_arrcoc.training.recipe.main(<yaml>)`):
   ArrCocTrainer with its phase-1 losses and budget calibration, bf16
   mixed precision, 5 steps of batch 4 on synthetic 1024 px pages. The model preset is the base config.json next
   to the shipped tiny/demo tokenizer (Qwen's tokenizer cannot be downloaded there; its `<image>` id replaces
   Qwen's image token id). Reports that the run really was DeepSpeed at ZeRO stage 2, the losses, the runtime
   and peak GPU memory.
Both DeepSpeed paths are kept because they fail for different reasons (the engine path needs only deepspeed; the
trainer path also needs accelerate's and the Trainer's DeepSpeed integration and the data pipeline), so one of
them still gives step timings if the other breaks.

Without CUDA it prints "skipped: no CUDA device", writes a JSON that says so and exits 0. `--device cpu --tiny`
runs every part on the tiny preset on the CPU (float32 training, DeepSpeed on CPU), which is how the code is
checked on a machine without a GPU.

Writes outputs/bench/gpu_check.json.
"""

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import common  # first: it pins the thread count before torch starts its pool

import torch

NAME = "gpu_check"
SKIPPED = "skipped: no CUDA device"
PARTS = ("forward", "engine", "trainer")
MODULE = "bench.gpu_check"  # the children run this module again (python -m, from the repository root)
LOSS_WEIGHTS = {"answer": 1.0, "efficiency": 0.001, "alignment": 0.5, "vet_kl": 0.01}
TOKENIZER_PRESET = common.PRESETS / "tiny"  # the shipped tokenizer (the demo preset has the same one)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=common.OUTPUT_DIR)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=20, help="timed forward rounds (after 3 warm-up rounds)")
    parser.add_argument("--steps", type=int, default=5, help="phase-1 optimizer steps of each DeepSpeed part")
    parser.add_argument("--train-batch-size", type=int, default=4)
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of the whole command")
    parser.add_argument("--threads", type=int, default=4, help="CPU threads (data, the CPU check)")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the tiny preset: a CPU check
    parser.add_argument("--child", choices=("engine", "trainer"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, default=None, help=argparse.SUPPRESS)  # the child's JSON in and out
    return parser.parse_args(argv)


def on_gpu(device: str) -> bool:
    return device.startswith("cuda")


def sync_of(device: str):
    return torch.cuda.synchronize if on_gpu(device) else common.no_sync


def preset_config(tiny: bool):
    import modeling_arrcoc  # noqa: F401
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(common.PRESETS / ("tiny" if tiny else "base"))


def flash_available() -> tuple:
    """(usable, why not): flash_attn must import, not merely be found."""
    if importlib.util.find_spec("flash_attn") is None:
        return False, "flash_attn is not installed"
    try:
        import flash_attn  # noqa: F401
    except Exception as error:  # a wheel built for another torch / CUDA fails here
        return False, f"flash_attn does not import: {type(error).__name__}: {error}"
    return True, None


def build_model(config, device, dtype, attention=None):
    """Random weights at the config's shapes, created on `device` directly (no CPU copy of a 1B model)."""
    from transformers import AutoModelForImageTextToText

    kwargs = {"dtype": dtype}
    if attention is not None:
        kwargs["attn_implementation"] = attention
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, **kwargs)
    return model


def batch_inputs(config, batch_size, device, dtype, train=False) -> dict:
    """bench/base_scale.py's batch-1 page and prompt, repeated `batch_size` times, on `device`; floating inputs
    in `dtype` (what the Trainer does under DeepSpeed: pixels and patch targets in the engine's dtype)."""
    from bench.base_scale import make_inputs

    one = make_inputs(config)["train" if train else "query"]
    out = {}
    for key, value in one.items():
        value = value.expand(batch_size, *value.shape[1:]).contiguous().to(device)
        out[key] = value.to(dtype) if value.is_floating_point() else value
    return out


def failure(part: str, error) -> dict:
    """Print and return a failure; its message is the exception line of the traceback (the child's own one, not
    the launcher's ChildFailedError), else the last line of output."""
    text = error if isinstance(error, str) else "".join(traceback.format_exception(error))
    lines = text.strip().splitlines()
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b.*", line)
              and "ChildFailedError" not in line]
    last = raised[-1] if raised else lines[-1] if lines else "no output"
    print(f"FAILED {part}: {last}\n{text[-3000:]}", flush=True)
    return {"ok": False, "error": last, "detail": text[-6000:]}


# ---------------------------------------------------------------------------------------------------------------
# Part 1: forward latency per tier
# ---------------------------------------------------------------------------------------------------------------


def attention_variants(device) -> tuple:
    """[(name, per-sub-config attention)], and a note on flash attention."""
    variants = [("sdpa", {"vision_config": "sdpa", "clip_config": "sdpa", "text_config": "sdpa"})]
    usable, why = flash_available() if on_gpu(device) else (False, "not on a GPU")
    if usable:
        variants.append(("flash_attention_2", {"vision_config": "sdpa", "clip_config": "flash_attention_2",
                                               "text_config": "flash_attention_2"}))
    return variants, why


def measure_forward(model, config, device, batch_sizes, repeats, warmup=3) -> tuple:
    """({batch: {tier: entry}}, {batch: SAM alone}): SAM (`get_patch_features`) runs in the same rounds, because
    its cost does not depend on the tier and so bounds the speed-up any tier can give."""
    from bench.base_scale import bench_tiers, budget_of, item_flops

    sync, tiers, out, sam = sync_of(device), bench_tiers(config), {}, {}
    for batch in batch_sizes:
        inputs = batch_inputs(config, batch, device, torch.bfloat16)

        def forward(tier, inputs=inputs):
            with torch.no_grad():
                return model(**inputs, budget=budget_of(tier), use_cache=False).logits.shape

        def sam_alone(inputs=inputs):
            with torch.no_grad():
                return model.model.get_patch_features(inputs["pixel_values"]).shape

        calls = {tier: (lambda tier=tier: forward(tier)) for tier in tiers}
        calls["sam_only"] = sam_alone
        times = common.interleaved(calls, repeats, warmup=warmup, sync=sync)
        sam[str(batch)] = {"ms": common.ms(times["sam_only"]["wall"]),
                           "share_of_smallest_tier": common.ratio(times["sam_only"]["wall"], times[tiers[0]]["wall"])}
        peaks = {}
        for tier in tiers:
            if on_gpu(device):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            forward(tier)
            sync()
            peaks[tier] = torch.cuda.max_memory_allocated(device) / 2**20 if on_gpu(device) else None
        full_flops = item_flops(config, "forward", "full")
        part = {}
        for tier in tiers:
            flops = item_flops(config, "forward", tier)
            entry = {"ms": common.ms(times[tier]["wall"]), "peak_gpu_memory_mib": peaks[tier],
                     "gflops_per_sample": flops / 1e9, "flop_ratio_vs_full": full_flops / flops}
            if tier != "full":
                entry["speedup_vs_full"] = common.ratio(times["full"]["wall"], times[tier]["wall"])
                entry["share_of_flop_ratio"] = entry["speedup_vs_full"]["median"] / entry["flop_ratio_vs_full"]
            part[str(tier)] = entry
        out[str(batch)] = part
        print(f"  batch {batch}: " + ", ".join(f"{t} {e['ms']['median']:.1f} ms" for t, e in part.items())
              + f"; SAM alone {sam[str(batch)]['ms']['median']:.1f} ms", flush=True)
    return out, sam


def forward_part(config, device, batch_sizes, repeats) -> dict:
    variants, flash_note = attention_variants(device)
    result = {"ok": True, "attention": {}, "flash_attention_2": flash_note or "used for CLIP and the LLM",
              "repeats": repeats, "warmup": 3, "dtype": "bfloat16"}
    for name, attention in variants:
        print(f"forward, attention {name}: {attention}", flush=True)
        model = None
        try:
            model = build_model(config, device, torch.bfloat16, attention).eval()
            tiers, sam = measure_forward(model, config, device, batch_sizes, repeats)
            result["attention"][name] = {"per_sub_config": attention, "batch_sizes": tiers, "sam_only": sam}
        except Exception as error:  # one attention failing must not lose the other's numbers
            result["attention"][name] = failure(f"forward ({name})", error)
            result["ok"] = False
        finally:
            del model
            if on_gpu(device):
                torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------------------------
# Part 2: deepspeed.initialize directly (a child process)
# ---------------------------------------------------------------------------------------------------------------


def engine_child(spec: dict) -> dict:
    import deepspeed

    from modeling_arrcoc.modeling_arrcoc import answer_window
    from modeling_arrcoc.training.phases import apply_phase

    device, gpu = spec["device"], on_gpu(spec["device"])
    bf16 = spec.get("bf16", gpu)
    if gpu:
        torch.cuda.set_device(0)
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")
    config = preset_config(spec["tiny"])
    model = build_model(config, device, torch.float32)  # DeepSpeed's bf16 mode casts it, keeping fp32 masters
    apply_phase(model, "phase1")
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    ds_config = {
        "train_micro_batch_size_per_gpu": spec["batch_size"], "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0, "zero_optimization": {"stage": 2}, "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True, "steps_per_print": 10**9, "wall_clock_breakdown": False,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(trainable, lr=1e-4),
                                                   config=ds_config)
    dtype = torch.bfloat16 if bf16 else torch.float32
    inputs = batch_inputs(config, spec["batch_size"], device, dtype, train=True)
    window = answer_window(inputs["labels"])
    sync, steps = sync_of(device), []
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(spec["steps"]):
        sync()
        start = time.perf_counter()
        out = engine(**inputs, budget="auto", loss_weights=LOSS_WEIGHTS, logits_to_keep=window)
        engine.backward(out.loss)
        engine.step()
        sync()
        steps.append({"seconds": time.perf_counter() - start, "loss": float(out.loss.detach().float()),
                      "visual_tokens": out.visual_token_counts.tolist()})
    return {
        "ok": all(torch.isfinite(torch.tensor(s["loss"])) for s in steps),
        "zero_stage": engine.zero_optimization_stage(), "optimizer": type(engine.optimizer).__name__,
        "bf16": engine.bfloat16_enabled(), "batch_size": spec["batch_size"],
        "trainable_parameters": sum(p.numel() for p in trainable), "steps": steps,
        "step_seconds_after_first": common.stats([s["seconds"] for s in steps[1:]]) if len(steps) > 1 else None,
        "peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
        "deepspeed": deepspeed.__version__,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_child(part, command, spec_path: Path, timeout, env) -> dict:
    """Run a child that writes its result into spec_path["result"]; a failure becomes a clear message."""
    print(f"{part}: {' '.join(map(str, command))} (timeout {timeout:.0f} s)", flush=True)
    start = time.perf_counter()
    # Its own session: on a timeout the whole group goes (accelerate launch runs the training in a grandchild,
    # which would otherwise keep the GPU and the output pipes).
    child = subprocess.Popen(command, cwd=common.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        return failure(part, f"{out[-1500:]}\n{err[-3000:]}\ntimed out after {timeout:.0f} s (--budget-s)")
    seconds = time.perf_counter() - start
    spec = json.loads(spec_path.read_text())
    if child.returncode != 0 or "result" not in spec:
        return failure(part, f"{out[-1500:]}\n{err[-4000:]}\nexit status {child.returncode}")
    result = spec["result"]
    result["process_seconds"] = seconds
    if not result.get("ok"):
        print(f"FAILED {part}: non-finite loss or wrong setup: {json.dumps(result)[:1500]}", flush=True)
    return result


def child_env(threads) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(common.ROOT), os.environ.get("PYTHONPATH", "")])}


def engine_part(args, work: Path, timeout) -> dict:
    spec = work / "engine.json"
    spec.write_text(json.dumps({"device": args.device, "tiny": args.tiny, "steps": args.steps,
                                "batch_size": args.train_batch_size}))
    env = {**child_env(args.threads), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    return run_child("engine", [sys.executable, "-m", MODULE, "--child", "engine", "--spec", str(spec)], spec, timeout,
                     env)


# ---------------------------------------------------------------------------------------------------------------
# Part 3: train.py's path under accelerate launch + DeepSpeed ZeRO-2
# ---------------------------------------------------------------------------------------------------------------


def training_preset(config, directory: Path) -> Path:
    """A config-only preset train.py builds with from_config: the preset's config.json, the shipped tokenizer and
    processor (image size set to the preset's), and the tokenizer's <image> id as the image token."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(TOKENIZER_PRESET)
    processor.image_processor.size = config.vision_config.image_size
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    if len(processor.tokenizer) > config.text_config.vocab_size:
        raise ValueError(f"the tokenizer has {len(processor.tokenizer)} tokens, the LLM "
                         f"{config.text_config.vocab_size}")
    config = config.__class__.from_dict({**config.to_dict(), "image_token_id": image_token_id})
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def trainer_yaml(args, config, work: Path) -> Path:
    import yaml

    gpu, rows = on_gpu(args.device), args.steps * args.train_batch_size
    values = dict(
        model_preset=str(training_preset(config, work / "preset")), dataset="synthetic", synthetic_num_train=rows,
        synthetic_num_validation=4, synthetic_cache_dir=str(work / "synthetic"), phase="phase1",
        max_steps=args.steps, per_device_train_batch_size=args.train_batch_size, gradient_accumulation_steps=1,
        learning_rate=1e-4, bf16=gpu, calibration_every=2, calibration_samples=2, cache_sam_features=False,
        logging_steps=1, eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=gpu, seed=0, output_dir=str(work / "trainer_out"),
    )
    if not gpu:
        values["use_cpu"] = True
    path = work / "phase1.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def accelerate_config(args, work: Path) -> Path:
    """configs/accelerate/deepspeed_zero2.yaml as shipped; on the CPU check, with use_cpu and no mixed precision
    (as tests/test_training.py runs it)."""
    import yaml

    shipped = common.ROOT / "configs" / "accelerate" / "deepspeed_zero2.yaml"
    if on_gpu(args.device):
        return shipped
    config = yaml.safe_load(shipped.read_text())
    path = work / "deepspeed_zero2_cpu.yaml"
    path.write_text(yaml.safe_dump({**config, "use_cpu": True, "mixed_precision": "no"}))
    return path


def trainer_child(spec: dict) -> dict:
    from accelerate.utils import DistributedType

    from modeling_arrcoc.training.recipe import main as train_main

    if on_gpu(spec["device"]):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer = train_main([spec["yaml"]])
    seconds = time.perf_counter() - start
    state = trainer.accelerator.state
    plugin = getattr(state, "deepspeed_plugin", None)
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    final = next((h for h in reversed(history) if "train_runtime" in h), {})
    deepspeed = trainer.accelerator.distributed_type == DistributedType.DEEPSPEED
    zero_stage = plugin.zero_stage if plugin is not None else None
    finite = bool(losses) and all(torch.isfinite(torch.tensor(float(v))) for v in losses)
    return {
        "ok": deepspeed and zero_stage == 2 and finite and trainer.state.global_step == spec["steps"],
        "distributed_type": str(trainer.accelerator.distributed_type), "zero_stage": zero_stage,
        "num_processes": trainer.accelerator.num_processes, "global_step": trainer.state.global_step,
        "mixed_precision": str(trainer.accelerator.mixed_precision), "losses": losses,
        "budget_losses": [h["budget_loss"] for h in history if "budget_loss" in h],
        "train_runtime_s": final.get("train_runtime"), "train_steps_per_second": final.get("train_steps_per_second"),
        "train_samples_per_second": final.get("train_samples_per_second"), "main_seconds": seconds,
        "peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if on_gpu(spec["device"]) else None,
    }


def trainer_part(args, config, work: Path, timeout) -> dict:
    spec = work / "trainer.json"
    spec.write_text(json.dumps({"device": args.device, "yaml": str(trainer_yaml(args, config, work)),
                                "steps": args.steps}))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config(args, work)),
               "--num_processes", "1", "--num_machines", "1", "--mixed_precision",
               "bf16" if on_gpu(args.device) else "no", "--dynamo_backend", "no", "--main_process_port",
               str(free_port()), "--module", MODULE, "--child", "trainer", "--spec", str(spec)]
    return run_child("trainer", command, spec, timeout, child_env(args.threads))


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------


def run(args, on_part=None) -> dict:
    """Every part of args.parts within args.budget_s; `on_part(result so far)` after each (a partial JSON)."""
    deadline = time.perf_counter() + args.budget_s
    common.use_threads(args.threads)
    config = preset_config(args.tiny)
    result = {"preset": "tiny" if args.tiny else "base", "device": args.device, "parts": {}, "seconds": {},
              "budget_s": args.budget_s, "torch": torch.__version__,
              "cuda": torch.version.cuda, "shapes": {"num_patches": config.num_patches,
                                                     "budgets": list(config.budgets)}}
    for name in ("deepspeed", "accelerate", "flash_attn"):
        result[name] = _version(name)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        for part in args.parts:
            left = deadline - time.perf_counter()
            if left < 30:
                result["parts"][part] = failure(part, f"not run: {left:.0f} s of the --budget-s left")
                continue
            start = time.perf_counter()
            print(f"\n=== {part} ({left:.0f} s of the budget left)", flush=True)
            try:
                if part == "forward":
                    result["parts"][part] = forward_part(config, args.device, args.batch_sizes, args.repeats)
                elif part == "engine":
                    result["parts"][part] = engine_part(args, work, min(240.0, left - 10))
                else:
                    result["parts"][part] = trainer_part(args, config, work, left - 10)
            except Exception as error:
                result["parts"][part] = failure(part, error)
            result["seconds"][part] = time.perf_counter() - start
            if on_part is not None:
                on_part(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["ok"] = all(p.get("ok") for p in result["parts"].values())
    return result


def _version(module) -> str | None:
    try:
        return __import__(module).__version__
    except Exception as error:
        return f"unavailable ({type(error).__name__})"


def markdown(result: dict) -> str:
    if result.get("skipped"):
        return f"**GPU check** (`bench/gpu_check.py`): skipped, {result['skipped']}."
    gpu = result["machine"].get("gpu", result["device"])
    lines = [f"**GPU check** (`bench/gpu_check.py`, {result['preset']} preset, random weights, {gpu}, torch "
             f"{result['torch']}, deepspeed {result['deepspeed']}, flash_attn {result['flash_attn']}): "
             f"{'every part ok' if result['ok'] else 'SOME PARTS FAILED'}."]
    forward = result["parts"].get("forward")
    if forward:
        lines.append(f"\nForward, bf16 (flash_attention_2: {forward['flash_attention_2']}), median of "
                     f"{forward['repeats']} rounds after {forward['warmup']} warm-up rounds:")
        for name, variant in forward["attention"].items():
            if "batch_sizes" not in variant:
                lines.append(f"\n{name}: FAILED, {variant['error']}")
                continue
            rows = []
            for batch, tiers in variant["batch_sizes"].items():
                for tier, e in tiers.items():
                    rows.append([name, batch, tier, f"{e['ms']['median']:.2f}",
                                 f"{e['speedup_vs_full']['median']:.2f}x" if "speedup_vs_full" in e else "-",
                                 "-" if tier == "full" else f"{e['flop_ratio_vs_full']:.2f}x",
                                 "-" if e["peak_gpu_memory_mib"] is None else f"{e['peak_gpu_memory_mib']:.0f}"])
            lines += ["", common.markdown_table(["attention", "batch", "tier", "ms", "speed-up vs full", "FLOP ratio",
                                                 "peak GPU MiB"], rows)]
            for batch, r in variant.get("sam_only", {}).items():
                lines.append(f"\nSAM alone ({name}, batch {batch}): {r['ms']['median']:.2f} ms, "
                             f"{100 * r['share_of_smallest_tier']['median']:.0f}% of the smallest tier's forward.")
    for part in ("engine", "trainer"):
        r = result["parts"].get(part)
        if r is None:
            continue
        if not r.get("ok") and "error" in r:
            lines.append(f"\n{part}: FAILED, {r['error']}")
        elif part == "engine":
            step = r["step_seconds_after_first"]
            losses = ", ".join(f"{s['loss']:.3f}" for s in r["steps"])
            timing = "-" if step is None else f"{step['median']:.2f} s (median after the first)"
            lines.append(f"\nengine (deepspeed.initialize, ZeRO stage {r['zero_stage']}, {r['optimizer']}, bf16 "
                         f"{r['bf16']}, batch {r['batch_size']}): losses {losses}; step {timing}; peak GPU memory "
                         f"{r['peak_gpu_memory_mib'] or 0:.0f} MiB; ok {r['ok']}.")
        else:
            losses = ", ".join(f"{float(v):.3f}" for v in r["losses"])
            lines.append(f"\ntrainer (train.py under accelerate, {r['distributed_type']}, ZeRO stage {r['zero_stage']},"
                         f" {r['mixed_precision']}, {r['global_step']} steps): losses {losses}; train_runtime "
                         f"{r['train_runtime_s']} s; peak GPU memory {r['peak_gpu_memory_mib'] or 0:.0f} MiB; "
                         f"ok {r['ok']}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.spec.read_text())
        spec["result"] = engine_child(spec) if args.child == "engine" else trainer_child(spec)
        if int(os.environ.get("RANK", "0")) == 0:
            args.spec.write_text(json.dumps(spec))
        return 0
    if on_gpu(args.device) and not torch.cuda.is_available():
        print(SKIPPED)
        common.write_result(NAME, {"skipped": SKIPPED.split(": ", 1)[1]}, args.output_dir)
        return 0
    def partial(result):  # what is done so far survives if the whole command is killed
        common.write_result(NAME, {**result, "complete": False}, args.output_dir, device=args.device)

    result = run(args, partial)
    common.publish(NAME, {**result, "complete": True}, args.output_dir, markdown, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["PARTS", "SKIPPED", "markdown", "run"]
