"""SAM alone, the fixed cost of every query: transformers' attention against ArrCoc's, float32 against bf16.

SAM runs once per page whatever the tier, so at small tiers it is most of the prefill (#23). Two things change its
cost without changing what it computes:
- the relative-position bias: transformers builds it whole as a broadcast sum of row and column terms; ArrCoc's SAM
  attention (modeling_arrcoc/layers_arrcoc.py) in inference sums it for a block of queries at a time and runs
  SDPA on each block while its bias is in cache ("arrcoc"), and in training builds it whole by one matmul with the
  keys' one-hot rows and columns ("one-hot": that path timed in inference), the same values each way;
- the compute dtype: `vision_autocast_dtype="bfloat16"` runs SAM under bf16 autocast (AMX where the CPU has it).
The five variants (attention x dtype) run on the same weights and pages, interleaved in the same rounds, so their
ratios come from one run; each variant's largest difference from transformers' float32 output is reported. With
--compiled, three more, float32 under `torch.compile`: ArrCoc's attention as shipped (compiled, inference calls the
eager blocks as one operator), with transformers' broadcast sum instead (`blockwise_when_compiled=False`, which
inductor fuses) and with the one-hot matmul (`one_hot_when_compiled`): the measurements behind that choice.

    python -m bench.sam_attention [--preset demo] [--batch 8] [--repeats 11] [--compiled]

Random weights, with relative positions drawn non-zero (a trained SAM's are). Writes outputs/bench/sam_attention.json
(sam_attention_<preset>.json for another preset).
"""

import argparse
import contextlib
from pathlib import Path

from bench import common  # first: it pins the thread count before torch starts its pool

import torch

NAME = "sam_attention"
VARIANTS = {  # name: (ArrCoc's attention: "blockwise" / "one-hot" / None for transformers', autocast dtype)
    "transformers_float32": (None, None),
    "one-hot_float32": ("one-hot", None),
    "arrcoc_float32": ("blockwise", None),
    "transformers_bfloat16": (None, torch.bfloat16),
    "arrcoc_bfloat16": ("blockwise", torch.bfloat16),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, repeats=11)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--compiled", action="store_true", help="also the two compiled float32 variants")
    return parser.parse_args(argv)


def sam_model(preset, seed: int = 0):
    """The preset's SAM (transformers' SamVisionModel, SDPA) with random weights and non-zero relative positions."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(common.preset_path(preset)).vision_config
    torch.manual_seed(seed)
    model = AutoModel.from_config(config).eval()
    for name, parameter in model.named_parameters():
        if "rel_pos" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    return model


def _variant_call(model, pixels, arrcoc: str | None, dtype):
    from transformers.models.sam.modeling_sam import SamVisionAttention, SamVisionSdpaAttention

    from modeling_arrcoc.layers_arrcoc import ArrCocSamSdpaAttention, use_sam_attention

    def call():
        # The attention class is swapped in place before each call (the weights are shared), as the model does once.
        if arrcoc:
            use_sam_attention(model, "sdpa")
            for module in model.modules():
                if isinstance(module, ArrCocSamSdpaAttention):
                    module.blockwise_in_inference = arrcoc == "blockwise"
        else:
            for module in model.modules():
                if isinstance(module, SamVisionAttention):
                    module.__class__ = SamVisionSdpaAttention
        autocast = torch.autocast(pixels.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            return model(pixel_values=pixels).last_hidden_state.float()

    return call


def _compiled_call(preset, pixels, one_hot: bool, backend: str, blockwise: bool = True):
    """A copy of the SAM with ArrCoc's attention, compiled whole; `blockwise` (as shipped) calls the eager blocks as
    one operator, else the bias is built whole: transformers' broadcast sum, or with `one_hot` the matmul."""
    from modeling_arrcoc.layers_arrcoc import use_sam_attention

    model = sam_model(preset)  # the same seed: the same weights as the eager variants'
    use_sam_attention(model, "sdpa", one_hot_when_compiled=one_hot, blockwise_when_compiled=blockwise)
    compiled = torch.compile(model, fullgraph=True, backend=backend)

    def call():
        with torch.no_grad():
            return compiled(pixel_values=pixels).last_hidden_state.float()

    return call


def run(preset="demo", batch=8, repeats=11, threads=1, compiled=False, backend="inductor") -> dict:
    """compiled: also time the two compiled float32 variants (backend: torch.compile's; the tests use aot_eager)."""
    common.use_threads(threads)
    model = sam_model(preset)
    size = model.config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    calls = {name: _variant_call(model, pixels, *spec) for name, spec in VARIANTS.items()}
    if compiled:
        calls["arrcoc_float32_compiled"] = _compiled_call(preset, pixels, False, backend)
        calls["broadcast_float32_compiled"] = _compiled_call(preset, pixels, False, backend, blockwise=False)
        calls["one-hot_float32_compiled"] = _compiled_call(preset, pixels, True, backend, blockwise=False)
    reference = calls["transformers_float32"]()
    differences = {name: (call() - reference).abs().max().item() for name, call in calls.items()}
    times = common.interleaved(calls, repeats)
    base = times["transformers_float32"]["wall"]
    return {
        "preset": str(preset), "batch": batch, "repeats": repeats, "image_size": size,
        "grid": size // model.config.patch_size, "layers": model.config.num_hidden_layers,
        "global_layers": list(model.config.global_attn_indexes), "window": model.config.window_size,
        "variants": {name: {"ms": common.clock_stats(times[name]),
                            "speedup_vs_transformers_float32": common.ratio(base, times[name]["wall"]),
                            "max_abs_difference": differences[name]} for name in calls},
    }


def markdown(result: dict) -> str:
    rows = [[name.replace("_", ", "), common.fmt_range(v["ms"]["wall"], 1),
             common.fmt_range(v["speedup_vs_transformers_float32"], 2, "x"), f"{v['max_abs_difference']:.1e}"]
            for name, v in result["variants"].items()]
    return "\n".join([
        f"**SAM alone** (`bench/sam_attention.py`, {result['preset']} preset's SAM: {result['layers']} layers over a "
        f"{result['grid']}x{result['grid']} grid, windows of {result['window']}, global layers "
        f"{result['global_layers']}; batch {result['batch']}, {result['repeats']} interleaved rounds; "
        f"{common.machine_line(result)}). ArrCoc's attention in eager inference sums the relative-position bias "
        "for a block of queries at a time and runs SDPA on each block (arrcoc); one-hot: its training path, the "
        "whole bias by a one-hot matmul; compiled: inference calls the blocks as one operator (broadcast, "
        "compiled: transformers' sum instead, fused by inductor; one-hot, compiled: the matmul); bfloat16 = under autocast (`vision_autocast_dtype`); difference = "
        "largest absolute difference from transformers' float32 output.", "",
        common.markdown_table(["attention, dtype", "ms", "speed-up", "max difference"], rows)])


def result_name(preset) -> str:
    name = Path(str(preset)).name
    return NAME if name == "demo" else f"{NAME}_{name}"


def main(argv=None):
    args = parse_args(argv)
    result = run(args.preset, args.batch, args.repeats, args.threads, args.compiled)
    common.publish(result_name(args.preset), result, args.output_dir, markdown)


if __name__ == "__main__":
    main()


__all__ = ["VARIANTS", "markdown", "run", "sam_model"]
