"""Smoke tests of the benchmarks on the tiny preset, one round each: the JSON fields exist and ratios are
positive. No timing assertions: times on this machine swing by +-30% (docs/design.md, "What things cost here")."""

import json
import os
import shutil
import subprocess
import sys
import types

import pytest
import torch

from bench import (allocator_cost, common, flops, gpu_token_cost, memory, prefill_decode, prefill_grouping, run_all,
                   sam_attention,
                   token_cost)
from bench import training_throughput
from bench.decode_gqa import STATIC_ROOM, DecodeStep

from conftest import ROOT

TINY = "tiny"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every benchmark run once on the tiny preset, written where run_all's summary reads them."""
    out = tmp_path_factory.mktemp("bench")
    tokens = token_cost.run(TINY, repeats=1, batch_sizes=(1, 2), new_tokens=2)
    produced = {
        "token_cost": tokens,
        "allocator_cost": allocator_cost.run(TINY, token_cost_result={**tokens, "created": "test"}),
        "prefill_grouping": prefill_grouping.run(TINY, tiers=[4, 16, 100, 4], repeats=1),
        "training_throughput": training_throughput.run(TINY, repeats=1, rows=8, batch_size=4),
        "memory": memory.run(TINY, repeats=1, phases=("phase1",), steps=1, batch_size=2),
        "gpu_token_cost": {"skipped": "no CUDA device"},
        "prefill_decode": prefill_decode.run(TINY, repeats=1, batch_sizes=(2,), tiers=[4], backend="aot_eager",
                                             components=True),
        run_all.TOKEN_COST_SAM_BF16: token_cost.run(TINY, repeats=1, batch_sizes=(2,), new_tokens=2,
                                                    vision_autocast="bfloat16"),
        "sam_attention": sam_attention.run(TINY, batch=2, repeats=1, compiled=True, backend="aot_eager"),
    }
    for name, result in produced.items():
        common.write_result(name, result, out)
    return out, produced


def _positive_ratio(r):
    assert 0 < r["min"] <= r["median"] <= r["max"]
    assert r["of_medians"] > 0 and r["runs"] >= 1


def test_common_ratio_is_per_round():
    r = common.ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0])
    assert (r["min"], r["median"], r["max"], r["runs"]) == (2.0, 3.0, 4.0, 3)
    assert r["of_medians"] == 4.0


def test_common_interleaved_alternates_order():
    order = []
    times = common.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=2, warmup=1)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert all(len(times[name][clock]) == 2 for name in "ab" for clock in common.CLOCKS)


def test_machine_info_names_cores_threads_commit():
    info = common.machine_info()
    assert info["cpu_count"] >= 1 and info["torch_threads"] >= 1
    assert "commit" in info and "dirty" in info


def test_flop_model_matches_torch_counter():
    """The ideal speed-ups are only as good as the FLOP model: it must count what the code computes."""
    model, processor = common.load_model(TINY)
    rows = common.synthetic_rows(model.config, 3)
    query = token_cost.Query(model, processor, rows)
    for tier in token_cost.bench_tiers(model.config):
        check = token_cost.check_flop_model(query, tier, new_tokens=3)
        assert check["modelled_over_counted"] == pytest.approx(1.0, rel=0.01), (tier, check)


def test_flop_model_clamps_tiers_and_grows_with_k():
    model, _ = common.load_model(TINY)
    config = model.config
    assert flops.visual_tokens(config, 100) == config.num_patches == flops.visual_tokens(config, "full")
    small, full = (sum(flops.query_flops(config, t, 20, 4, 2).values()) for t in (4, "full"))
    assert 0 < small < full
    assert flops.query_flops(config, 4, 20, 4)["sam"] == flops.query_flops(config, "full", 20, 4)["sam"]


def test_token_cost_fields(results):
    _, produced = results
    result = produced["token_cost"]
    assert result["decode_matches_generate"] is True
    for batch in ("1", "2"):
        part = result["batch_sizes"][batch]
        assert set(part["tiers"]) == {"4", "16", "full"}
        assert {"fixed_ms", "ms_per_gflop", "fixed_share_at_smallest_tier"} <= set(part["fit"])
        for tier, r in part["tiers"].items():
            for clock in common.CLOCKS:
                _positive_ratio(r["speedup_vs_full"][clock])
                assert r["end_to_end_ms"][clock]["median"] > 0
            assert r["ideal_speedup"] >= 1.0 and r["share_of_ideal"] > 0
            assert set(r["stages_ms"]) == set(token_cost.TIMED_STAGES)
            assert set(r["flops"]) == set(flops.STAGES)
        assert part["tiers"]["full"]["ideal_speedup"] == 1.0


def test_allocator_cost_fields(results):
    _, produced = results
    result = produced["allocator_cost"]
    assert result["target_share"] == allocator_cost.TARGET_SHARE
    for tiers in result["batch_sizes"].values():
        for entry in tiers.values():
            assert 0 < entry["time_share"]["median"] < 1 and 0 < entry["flop_share"] < 1
            assert isinstance(entry["within_target"], bool)
    calls = result["scorer_calls_per_generate"]
    assert calls["forced"] == 1 and calls["auto"] >= 1


def test_training_throughput_fields(results):
    _, produced = results
    result = produced["training_throughput"]
    assert set(result["variants"]) == set(training_throughput.VARIANTS)
    for variant in result["variants"].values():
        assert variant["samples_per_s"]["wall"]["median"] > 0
        _positive_ratio(variant["time_over_baseline"]["wall"])
    padding = result["padding_share"]
    assert padding["grouped"]["visual_tokens"] == 0.0  # a tier-grouped batch pads no visual token
    assert padding["random"]["visual_tokens"] >= padding["grouped"]["visual_tokens"]
    share = result["lm_head_share_of_llm_forward_flops"]
    assert 0 <= share["labels_only"] < share["all"] < 1


def test_memory_phase1_keeps_state_for_allocator_and_adapter_only(results):
    _, produced = results
    phase = produced["memory"]["phases"]["phase1"]
    assert phase["components_with_state"] == ["allocator", "quality_adapter"]
    assert phase["peak_rss_mib"]["median"] >= phase["baseline_rss_mib"]["median"] > 0
    # the growth is the peak minus a positive baseline: never more than the peak itself
    assert phase["peak_over_baseline_mib"]["median"] <= phase["peak_rss_mib"]["median"]
    assert phase["moments_over_expected"] > 0
    assert phase["moments_over_expected_with_gradient"] == pytest.approx(1.0)


def test_memory_in_process_matches_two_moments_per_parameter():
    """Each phase: AdamW moments = 2 x 4 B x every trainable parameter that gets a gradient; frozen ones none."""
    for phase, trained in (("phase0", ["quality_adapter"]), ("phase2", ["clip_encoder", "quality_adapter"])):
        result = memory.phase_memory(TINY, phase, steps=1, batch_size=2)
        state = result["optimizer_state_by_component"]
        assert sorted(state) == trained
        with_gradient = result["trainable_parameters"] - result["trainable_without_gradient_numel"]
        assert sum(s["moments"] for s in state.values()) == 8 * with_gradient


def test_prefill_grouping_fields(results):
    _, produced = results
    result = produced["prefill_grouping"]
    for name in ("time_to_first_token", "after_cached_sam_features"):
        _positive_ratio(result[name]["speedup"]["wall"])
    positions = result["llm_prefill_positions"]
    assert positions["grouped"] <= positions["padded"]


def test_gpu_token_cost_runs_its_code_path_on_cpu():
    result = gpu_token_cost.run(TINY, repeats=1, batch_sizes=(2,), new_tokens=2, device="cpu")
    assert result["dtype"] == "bfloat16"
    assert result["attention"] == {"vision_config": "sdpa", "clip_config": "sdpa", "text_config": "sdpa"}
    for r in result["batch_sizes"]["2"]["tiers"].values():
        _positive_ratio(r["speedup_vs_full"]["wall"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_token_cost_skips_cleanly_without_cuda(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "bench.gpu_token_cost", "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert gpu_token_cost.SKIPPED in done.stdout
    assert json.loads((tmp_path / "gpu_token_cost.json").read_text())["skipped"] == "no CUDA device"


def test_run_all_summary_and_markdown(results):
    out, _ = results
    summary = run_all.summarize(out, {"token_cost": 1.0}, 1.0)
    assert {"commit", "cpu_count", "torch_threads"} <= set(summary["machine"])
    assert set(summary["tokens"]) == {"1", "2"}
    assert summary["tokens"]["2"]["4"]["speedup_vs_full"]["median"] > 0
    assert summary["training"]["random_batches"]["time_over_baseline"]["median"] > 0
    assert summary["memory"]["phase1"]["components_with_state"] == ["allocator", "quality_adapter"]
    assert summary["gpu"] == {"skipped": "no CUDA device"}
    text = run_all.markdown(summary)
    for heading in ("Visual tokens vs time", "Training throughput", "Memory per phase", "Generate grouped by tier",
                    "GPU", "Prefill and decode, timed apart"):
        assert heading in text
    assert summary[run_all.PREFILL_DECODE_BASE] is None and text.count("Prefill and decode, timed apart") == 1
    # The base preset's prefill/decode result, when there, gets its own block beside the demo preset's.
    base = {**common.read_result(prefill_decode.NAME, out), "preset": "base"}
    common.write_result(run_all.PREFILL_DECODE_BASE, base, out)
    text = run_all.markdown(run_all.summarize(out, {"token_cost": 1.0}, 1.0))
    assert text.count("Prefill and decode, timed apart") == 2 and "base preset" in text
    assert text.count("components (eager") == 2
    # One commit behind every result: named once; a result from another commit (a --only rerun): each named.
    assert "commits" not in run_all.markdown(run_all.summarize(out, {}, None)).split("\n")[0]
    rerun = common.read_result("memory", out)
    common.write_result("memory", {**rerun, "machine": {**rerun["machine"], "commit": "f" * 40}}, out)
    assert f"`{'f' * 10}` (memory)" in run_all.markdown(run_all.summarize(out, {}, None)).split("\n")[0]
    common.write_result("memory", rerun, out)
    # SAM alone and the token cost with SAM in bf16 get their blocks.
    assert "SAM alone" in text and "Visual tokens vs time, SAM in bf16" in text
    assert "SAM under bfloat16 autocast" in token_cost.markdown(common.read_result(run_all.TOKEN_COST_SAM_BF16, out))
    # Every benchmark's own report renders from its JSON too.
    for module in (token_cost, allocator_cost, training_throughput, memory, prefill_grouping, gpu_token_cost,
                   prefill_decode):
        assert module.markdown(common.read_result(module.NAME, out))


def test_prefill_decode_fields(results):
    """Prefill and decode apart, eager and compiled, each beside its own ideal (FLOPs; bytes read)."""
    result = results[1]["prefill_decode"]
    part = result["batch_sizes"]["2"]
    assert result["tiers"] == ["4", "full"] and result["variants"] == ["eager", "compiled"]
    assert set(part["compile_seconds"]) == {"4", "full"}
    small, full = part["tiers"]["4"], part["tiers"]["full"]
    assert small["prefill_ideal_speedup"] > 1 and small["decode_ideal_speedup"] > 1
    assert full["prefill_ideal_speedup"] == full["decode_ideal_speedup"] == 1
    for phase in ("prefill", "decode"):
        for variant in ("eager", "compiled"):
            _positive_ratio(small[f"{phase}_{variant}_speedup_vs_full"]["wall"])
        _positive_ratio(small[f"{phase}_compiled_over_eager"]["wall"])
    assert "Batch 2, decode" in prefill_decode.markdown(common.read_result("prefill_decode", results[0]))
    # The components of one prefill and one decode step, per tier, with their shares of the sum.
    components = part["components"]
    assert set(components) == {"4", "full"}
    for tier in components.values():
        assert set(tier["ms"]) == set(prefill_decode.COMPONENTS) and all(v["median"] > 0 for v in tier["ms"].values())
    assert "Batch 2, components" in prefill_decode.markdown(common.read_result("prefill_decode", results[0]))


def test_prefill_decode_builds_inputs_for_a_preset_without_a_processor(tmp_path):
    """A components preset (the base) ships no processor: load_model refuses it to a benchmark that needs one and
    gives None to one that does not; prefill_decode then times base_scale's fixed prompt, one row per sample, which
    the model runs at a tier."""
    preset = tmp_path / "components_preset"
    shutil.copytree(common.preset_path(TINY), preset)
    (preset / "components.json").write_text("{}")
    with pytest.raises(ValueError, match="ships no processor, and this benchmark needs one"):
        common.load_model(preset)
    model, processor = common.load_model(preset, needs_processor=False)
    assert processor is None and common.load_model(TINY)[1] is not None
    inputs = prefill_decode.query_inputs(model, None, common.synthetic_rows(model.config, 3))
    assert inputs["input_ids"].shape[0] == inputs["pixel_values"].shape[0] == 3
    assert (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist() == [1, 1, 1]
    with torch.no_grad():
        logits = model(**inputs, budget=4, use_cache=True, logits_to_keep=1).logits
    assert logits.shape[:2] == (3, 1) and torch.isfinite(logits).all()


def test_prefill_leaves_out_a_mask_that_masks_nothing():
    """The compiled prefill gets `is_causal` only without a mask (tests/test_compile.py): an all-ones mask is left
    out, a padded batch keeps its own."""
    ids = torch.ones(2, 3, dtype=torch.long)
    unpadded = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    assert set(prefill_decode.without_all_ones_mask(unpadded)) == {"input_ids"}
    padded = {"input_ids": ids, "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}
    assert prefill_decode.without_all_ones_mask(padded) is padded


def test_decode_bytes_are_weights_plus_cache(tiny):
    """One decode step reads the weights once and the KV cache at its length: the gap between two tiers is the
    cache of the visual tokens they differ by, nothing else."""
    config = tiny[0].config
    text = config.text_config
    head_dim = text.head_dim or text.hidden_size // text.num_attention_heads
    gap = prefill_decode.decode_bytes(config, 16, 10, 3) - prefill_decode.decode_bytes(config, 4, 10, 3)
    assert gap == 4 * 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * (16 - 4) * 3
    # The weights part is every matrix the step multiplies by: the language model's linear layers and the head.
    model = tiny[0]
    matrices = sum(module.weight.numel() for module in model.model.language_model.modules()
                   if isinstance(module, torch.nn.Linear)) + model.lm_head.weight.numel()
    cache = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * (10 - 1 + 4) * 3
    assert prefill_decode.decode_bytes(config, 4, 10, 3) == 4 * (matrices + cache)


def test_every_bench_entry_names_a_script():
    """run_all runs `python -m bench.<script>` for each entry; a result named apart from its script is mapped to it."""
    for name, _, _ in run_all.BENCHES:
        assert (ROOT / "bench" / f"{run_all.SCRIPTS.get(name, name)}.py").exists(), name
    assert run_all.SCRIPTS[run_all.OVIS25_SCALE] == "base_scale"
    # The base preset's prefill/decode entry reads the file its script writes for that preset.
    extra = dict((name, args) for name, args, _ in run_all.BENCHES)[run_all.PREFILL_DECODE_BASE]
    preset = extra[extra.index("--preset") + 1]
    assert prefill_decode.result_name(preset) == run_all.PREFILL_DECODE_BASE
    assert prefill_decode.result_name("demo") == prefill_decode.NAME
    # The runs with SAM under bf16 autocast are written apart, under the names run_all reads.
    entries = dict((name, args) for name, args, _ in run_all.BENCHES)
    for name, module in ((run_all.TOKEN_COST_SAM_BF16, token_cost), (run_all.PREFILL_DECODE_BASE_SAM_BF16,
                                                                      prefill_decode)):
        args = entries[name]
        autocast = args[args.index("--vision-autocast") + 1]
        preset = args[args.index("--preset") + 1] if "--preset" in args else "demo"
        written = (prefill_decode.result_name(preset, autocast) if module is prefill_decode
                   else module.NAME + common.autocast_suffix(autocast))
        assert written == name
    args = entries[run_all.SAM_ATTENTION_BASE]
    assert sam_attention.result_name(args[args.index("--preset") + 1]) == run_all.SAM_ATTENTION_BASE


def test_sam_attention_variants_compute_the_same_sam(results):
    """ArrCoc's attention gives transformers' float32 output; bf16 differs a little, and every variant is timed."""
    variants = results[1]["sam_attention"]["variants"]
    compiled = ("arrcoc_float32_compiled", "broadcast_float32_compiled", "one-hot_float32_compiled")
    assert set(variants) == {*sam_attention.VARIANTS, *compiled}
    assert variants["transformers_float32"]["max_abs_difference"] == 0.0
    for name in ("arrcoc_float32", "one-hot_float32", *compiled):
        assert variants[name]["max_abs_difference"] < 1e-5, name
    assert 0 < variants["arrcoc_bfloat16"]["max_abs_difference"] < 0.5
    for v in variants.values():
        _positive_ratio(v["speedup_vs_transformers_float32"])


def test_token_cost_with_sam_in_bfloat16_says_so(results):
    result = results[1][run_all.TOKEN_COST_SAM_BF16]
    assert result["vision_autocast"] == "bfloat16" and result["dtype"] == "float32, SAM under bfloat16 autocast"
    assert result["decode_matches_generate"]


def test_decode_gqa_times_every_cache_and_variant_and_they_answer_alike(tmp_path):
    from bench import decode_gqa

    from torch._dynamo.utils import counters

    counters.clear()
    result = decode_gqa.run(TINY, tiers=[4, "full"], repeats=1, backend="aot_eager")
    # One graph per cache kind and compiled step at each tier: the switched step is never traced again without the
    # switch (Dynamo guards on the environment variables a trace read).
    assert counters["stats"]["unique_graphs"] == 2 * len(decode_gqa.CACHES) * 2
    assert result["heads"] > result["key_value_heads"]  # a grouped-query model, or the switch changes nothing
    names = {f"{kind}/{name}" for kind in decode_gqa.CACHES for name in decode_gqa.VARIANTS}
    for tier in ("4", "full"):
        entry = result["tiers"][tier]
        assert set(entry["ms"]) == names
        assert set(entry["over_eager"]) == set(entry["max_abs_logit_difference"]) == names - {"dynamic/eager"}
        for name in entry["over_eager"]:
            _positive_ratio(entry["over_eager"][name]["wall"])
            assert entry["max_abs_logit_difference"][name] < 1e-4
    assert result["tiers"]["full"]["cache_length"] > result["tiers"]["4"]["cache_length"]
    assert common.FORCE_GQA not in os.environ  # the switch is on for the trace only
    common.write_result(decode_gqa.NAME, result, tmp_path)
    assert "| full |" in decode_gqa.markdown(common.read_result(decode_gqa.NAME, tmp_path))


def test_prefill_decode_compiled_calls_run_with_the_switch(monkeypatch):
    """The compiled variant traces and runs with the grouped-query switch (docs/inference.md's compiled route), the
    eager one without it, and the environment is as it was after either."""
    seen = []
    monkeypatch.delenv(common.FORCE_GQA, raising=False)

    class Recorder(torch.nn.Module):
        def forward(self, **kwargs):
            seen.append(os.environ.get(common.FORCE_GQA))
            return types.SimpleNamespace(logits=torch.zeros(1, 1, 3))

    phases = prefill_decode.Phases.__new__(prefill_decode.Phases)
    phases.prompt, phases.tier, phases.forward = {}, 4, Recorder()
    for switched in (False, True):
        phases.switched = switched
        phases.prefill()
    assert seen == [None, "1"] and common.FORCE_GQA not in os.environ


def test_prefill_decode_steps_a_static_cache_the_prefill_wrote(tiny):
    """The timed decode step continues a static cache written by the multimodal prefill (docs/inference.md's route
    at many visual tokens), in place, and answers as a step of transformers' default dynamic cache does."""
    model, processor = tiny
    inputs = prefill_decode.query_inputs(model, processor, common.synthetic_rows(model.config, 2))
    phases = prefill_decode.Phases(model, inputs, 4)
    assert type(phases.decoder.cache).__name__ == "StaticCache"
    start = phases.decoder.next
    static = phases.decode_steps(1)
    assert phases.decoder.next == start + 1  # written in place, one position further
    with torch.no_grad():
        first = model(**inputs, budget=4, use_cache=True, logits_to_keep=1)
    dynamic = DecodeStep(first.cache, first.logits[:, -1:].argmax(-1), first.cache.get_seq_length()).step(model)
    torch.testing.assert_close(static, dynamic, atol=1e-5, rtol=1e-5)
    # A timed decode call is DECODE_STEPS steps back to back, each in the next slot; the room is checked for them.
    phases.decode_steps()
    assert phases.decoder.next == start + 1 + prefill_decode.DECODE_STEPS
    most = (STATIC_ROOM - 1) // prefill_decode.DECODE_STEPS - 1
    with pytest.raises(ValueError, match="static cache"):
        prefill_decode.run(TINY, repeats=most + 1)


def test_prefill_profile_names_the_attention_and_matmul_calls_of_each_variant():
    """bench.prefill_profile: one profiled prefill eager and one compiled (aot_eager here), each with its wall time
    and its attention and matrix-product calls by input shape; the two variants run the same attention calls, with
    the same masks."""
    from bench import prefill_profile

    # Every row: a top-12 cut by time is noisy.
    result = prefill_profile.run(TINY, tier="full", backend="aot_eager", top=100)
    assert set(result["variants"]) == {"eager", "compiled"}
    for variant in result["variants"].values():
        assert variant["wall_s"] > 0 and variant["rows"]
        assert all(any(name in op for name in prefill_profile.SHOWN) and calls > 0 for op, calls, _, _ in variant["rows"])
    # The attention kernels' calls with their input shapes, mask included: compiled runs the very calls eager does.
    # Before the language model got `is_causal` while compiling (#23), its calls carried a [1, 1, L, L] mask here.
    attention = {name: sorted((calls, str(shapes)) for op, calls, _, shapes in variant["rows"]
                              if op.startswith("aten::_scaled_dot_product"))
                 for name, variant in result["variants"].items()}
    assert attention["eager"] == attention["compiled"] and attention["eager"]
    assert "tier full" in prefill_profile.format_report(result)
