"""The token-cost benchmark on a CUDA GPU: bf16, flash_attention_2 where flash-attn is installed.

The same measurement as bench/token_cost.py (end to end and stage by stage at each forced tier and at full
tokens, batch 1 and 8, speed-ups next to the FLOP model's ideal), with the GPU settings a user would serve with:
bf16 weights and activations; `flash_attention_2` for the CLIP encoder and the LLM when the flash-attn package
is installed, `sdpa` otherwise; SAM always on `sdpa` (the model refuses flash attention for SAM: its
relative-position bias is an additive mask flash attention cannot take). Every clock read waits for the GPU
(`torch.cuda.synchronize`), two warm-up rounds absorb kernel selection and the CUDA caching allocator's growth,
and the peak GPU memory is reported too.

On a machine without CUDA it prints "skipped: no CUDA device", writes a JSON that says so, and exits 0, so
`make bench` runs it everywhere. `--device cpu` runs the same code path on the CPU (bf16, sdpa), which is how
the tests check it without a GPU.

    python -m bench.gpu_token_cost [--preset demo] [--repeats 10] [--batch-sizes 1 8] [--device cuda]

Writes outputs/bench/gpu_token_cost.json.
"""

import argparse
import importlib.util
import sys

from bench import common  # first: it pins the thread count before torch starts its pool
from bench import token_cost

import torch

NAME = "gpu_token_cost"
SKIPPED = "skipped: no CUDA device"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, repeats=10)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to test the code path")
    return parser.parse_args(argv)


def attention_implementations(device: str) -> dict:
    """Per sub-config attention: flash-attn for CLIP and the LLM when it is installed on a GPU, else sdpa."""
    fast = "flash_attention_2" if device.startswith("cuda") and importlib.util.find_spec("flash_attn") else "sdpa"
    return {"vision_config": "sdpa", "clip_config": fast, "text_config": fast}


def device_sync(device: str):
    return torch.cuda.synchronize if device.startswith("cuda") else common.no_sync


def run(preset="demo", repeats=10, batch_sizes=(1, 8), new_tokens=8, device="cuda", threads=1) -> dict:
    common.use_threads(threads)
    attention = attention_implementations(device)
    model, processor = common.load_model(preset, device=device, dtype=torch.bfloat16, attn_implementation=attention)
    rows = common.synthetic_rows(model.config, max(batch_sizes))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    # torch's FLOP counter cannot see flash-attn's own kernels, so the FLOP check runs only on sdpa.
    result = token_cost.measure(model, processor, rows, list(batch_sizes), new_tokens, repeats, device,
                                torch.bfloat16, device_sync(device), warmup=2,
                                check_flops="flash_attention_2" not in attention.values())
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None
    return {"preset": str(preset), "dtype": "bfloat16", "attention": attention, "peak_gpu_memory_mib": peak, **result}


def markdown(result: dict) -> str:
    if result.get("skipped"):
        return (f"**GPU token cost** (`bench/gpu_token_cost.py`): skipped, {result['skipped']} on the machine that "
                "ran `make bench`.")
    attention = ", ".join(f"{k.split('_')[0]} {v}" for k, v in result["attention"].items())
    text = token_cost.markdown(result).replace("**Token cost** (`bench/token_cost.py`",
                                               f"**GPU token cost** (`bench/gpu_token_cost.py`, {attention}", 1)
    if result.get("peak_gpu_memory_mib") is not None:
        text += f"\n\nPeak GPU memory allocated: {result['peak_gpu_memory_mib']:.0f} MiB."
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(SKIPPED)
        common.write_result(NAME, {"skipped": SKIPPED.split(": ", 1)[1]}, args.output_dir)
        return 0
    result = run(args.preset, args.repeats, args.batch_sizes, args.new_tokens, args.device, args.threads)
    common.publish(NAME, result, args.output_dir, markdown, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SKIPPED", "attention_implementations", "markdown", "run"]
