"""A decode step at a long cache: dynamic vs static cache, eager vs compiled, and the grouped-query switch (#23).

transformers' default dynamic cache grows by concatenation, a copy of the whole cache in every layer at every step;
a static cache is written in place. At a decode step (one query position) transformers' SDPA path also lays a
grouped-query model's query heads over its key/value heads, so attention reads the cache as it is stored, but only
in eager mode (`is_torchdynamo_compiling()`): traced, it repeats every key/value head once per query head it serves,
one more copy of the cache. `TRANSFORMERS_SDPA_FORCE_GQA=1` makes SDPA take the grouped heads itself (`enable_gqa`),
compiled or not; transformers reads it when the step is traced, and Dynamo traces again if it changes.

This times the preset's language model (random weights) for one decode step with a cache as long as the prompt plus
a tier's visual tokens, for each cache kind: eager, compiled, and compiled with the switch, all interleaved in one
run (the two compiled steps are two functions, so each keeps its own graph).

    python -m bench.decode_gqa [--preset base] [--tiers 64 full] [--repeats 5] [--threads 2]
"""

import argparse
import functools
import os

from bench import common  # first: it pins the thread count before torch starts its pool
from bench.flops import visual_tokens

import torch

NAME = "decode_gqa"
TEXT_WIDTH = 32  # prompt positions besides the visual tokens
VARIANTS = ("eager", "compiled", "compiled_gqa")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, repeats=5)
    parser.add_argument("--tiers", nargs="+", default=["64", "full"])
    parser.add_argument("--layers", type=int, default=None, help="fewer language-model layers (tests)")
    parser.add_argument("--backend", default="inductor")
    return parser.parse_args(argv)


def language_model(preset, layers=None, seed=0):
    """The preset's language model with its head, random weights, SDPA attention."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import modeling_arrcoc  # noqa: F401  registers the Auto classes

    config = AutoConfig.from_pretrained(common.preset_path(preset))
    text = config.text_config
    if layers is not None:
        text.num_hidden_layers = layers
        text.layer_types = text.layer_types[:layers] if getattr(text, "layer_types", None) else None
    torch.manual_seed(seed)
    return config, AutoModelForCausalLM.from_config(text, attn_implementation="sdpa").eval()


CACHES = ("dynamic", "static")
STATIC_ROOM = 64  # static-cache positions past the prompt: one per step of a variant (each has its own cache)


class DecodeStep:
    """One decode step (one new token per row) after a prefill that filled `cache` to `length` positions and chose
    `token` ([B, 1]). A dynamic cache (transformers' default) grows by concatenation, a copy of the whole cache per
    layer and step, and is cropped back after each step so every step sees the same cache; a static cache
    (generate's `cache_implementation="static"`, the documented compiled route) is written in place, one position
    further each step. prefill_decode times the multimodal model's step with it, and this file the bare LM's."""

    def __init__(self, cache, token, length, kind="dynamic"):
        self.cache, self.token, self.kind = cache, token, kind
        self.batch = token.shape[0]
        self.mask = torch.ones(self.batch, length + 1, dtype=torch.long)
        self.length = self.next = length

    @classmethod
    def after_prompt(cls, model, length, kind="dynamic"):
        """The bare language model's step after a prompt of `length` random tokens, in a new cache of `kind`."""
        from transformers import DynamicCache, StaticCache

        cache = (DynamicCache(config=model.config) if kind == "dynamic"
                 else StaticCache(config=model.config, max_cache_len=length + STATIC_ROOM))
        with torch.no_grad():
            ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
            first = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        return cls(cache, first.logits[:, -1:].argmax(-1), length, kind)

    def step(self, forward):
        dynamic = self.kind == "dynamic"
        # One past the longest row (timing, not answers); a static step writes the next free slot.
        position = torch.full((self.batch, 1), self.length if dynamic else self.next)
        if dynamic:
            mask = self.mask
        else:  # the static cache's full width (a fixed shape: one graph), open up to this step's slot
            mask = torch.zeros(self.batch, self.length + STATIC_ROOM, dtype=torch.long)
            mask[:, :self.next + 1] = 1
        with torch.no_grad():
            logits = forward(input_ids=self.token, position_ids=position, cache=self.cache, use_cache=True,
                             logits_to_keep=1, attention_mask=mask).logits
        if dynamic:
            self.cache.crop(-1)
        else:
            self.next += 1
        return logits


def compiled_steps(model, backend):
    """(compiled, compiled with the switch): two functions, so Dynamo caches a graph for each."""
    def plain(**kwargs):
        return model(**kwargs)

    def grouped(**kwargs):
        return model(**kwargs)
    compile_ = dict(fullgraph=True, dynamic=False, backend=backend)
    return torch.compile(plain, **compile_), torch.compile(grouped, **compile_)


def measure_tier(model, length, repeats, backend) -> dict:
    """Every cache kind x variant, interleaved in one set of rounds; each compiled step is traced on first use."""
    torch._dynamo.reset()
    calls, first = {}, {}
    for kind in CACHES:
        plain, grouped = compiled_steps(model, backend)
        shared = DecodeStep.after_prompt(model, length, kind) if kind == "dynamic" else None
        first[kind] = {}
        for name, forward in zip(VARIANTS, (model, plain, grouped)):
            # A static cache is written in place: each variant gets its own, filled by the same prefill.
            decode = shared or DecodeStep.after_prompt(model, length, kind)
            step = functools.partial(decode.step, forward)
            if name == "compiled_gqa":
                step = functools.partial(common.with_switch, step)
            first[kind][name] = step()
            calls[f"{kind}/{name}"] = step
    times = common.interleaved(calls, repeats)
    eager = f"{CACHES[0]}/eager"
    return {
        "cache_length": length,
        "ms": {name: common.clock_stats(values) for name, values in times.items()},
        "over_eager": {name: common.clock_ratios(times[eager], times[name]) for name in calls if name != eager},
        "max_abs_logit_difference": {
            f"{kind}/{name}": float((first[kind][name] - first[CACHES[0]]["eager"]).abs().max())
            for kind in CACHES for name in VARIANTS if (kind, name) != (CACHES[0], "eager")},
    }


def run(preset="base", tiers=("64", "full"), repeats=5, threads=1, layers=None, backend="inductor") -> dict:
    if repeats + 2 > STATIC_ROOM:  # the first step, the warm-up round and the timed ones each fill a static slot
        raise ValueError(f"repeats must be at most {STATIC_ROOM - 2}: the static cache has {STATIC_ROOM} free slots.")
    if os.environ.get(common.FORCE_GQA, "0") == "1":
        raise ValueError(f"unset {common.FORCE_GQA}: with it set, 'compiled' and 'compiled_gqa' would be the same step.")
    common.use_threads(threads)
    config, model = language_model(preset, layers)
    text = model.config
    return {
        "preset": str(preset), "repeats": repeats, "backend": backend, "layers": text.num_hidden_layers,
        "heads": text.num_attention_heads, "key_value_heads": text.num_key_value_heads,
        "tiers": {str(tier): measure_tier(model, TEXT_WIDTH + visual_tokens(config, tier), repeats, backend)
                  for tier in tiers},
    }


def markdown(result: dict) -> str:
    lines = [f"**Decode step: cache kind, compile and grouped heads** (`bench/decode_gqa.py`, {result['preset']} "
             f"preset's language model, {result['layers']} layers, {result['heads']} query / "
             f"{result['key_value_heads']} key-value heads, random weights, {result['repeats']} interleaved rounds, "
             f"medians; {common.machine_line(result)}). Each cell: ms (speed-up over eager with the dynamic cache, "
             f"transformers' default); the switch is `{common.FORCE_GQA}=1` at trace time.", ""]
    rows = []
    for tier, r in result["tiers"].items():
        def cell(name):
            ms = r["ms"][name]["wall"]["median"]
            over = r["over_eager"].get(name)
            return f"{ms:.1f}" + (f" ({over['wall']['median']:.2f}x)" if over else "")
        for kind in CACHES:
            rows.append([tier, r["cache_length"], kind] + [cell(f"{kind}/{name}") for name in VARIANTS])
    lines.append(common.markdown_table(
        ["tier", "cache length", "cache", "eager", "compiled", "compiled, switch on"], rows))
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    result = run(args.preset, args.tiers, args.repeats, args.threads, args.layers, args.backend)
    common.publish(NAME, result, args.output_dir, markdown)


if __name__ == "__main__":
    main()


__all__ = ["CACHES", "NAME", "STATIC_ROOM", "VARIANTS", "DecodeStep", "markdown", "run"]
