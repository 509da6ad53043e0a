"""bench/base_scale.py and bench/gpu_check.py on tiny shapes: the code paths of the base-scale runs, in seconds.

No timing assertions (times on this machine swing by +-30%); the weight-equality check, the JSON fields, and the
GPU check's skip on a machine without CUDA."""

import json
import math
import subprocess
import sys

import pytest
import torch

from bench import base_scale, common, gpu_check

from conftest import ROOT, ArrCocModelTester

RESULT_KEYS = {"preset_shapes", "dtype", "threads", "rounds", "batch_size", "prompt_tokens", "answer_tokens",
               "new_tokens", "tiers", "items", "full_train_step", "checkpoints", "parameters", "errors",
               "trainable_parameters_phase1", "weight_check", "config_differs_from_preset", "ovis2_vet_check",
               "results", "smallest_vs_full", "full_train_step_estimate", "seconds", "memory_method"}
ENTRY_KEYS = {"visual_tokens", "ms", "cpu_ms", "peak_rss_mib", "rss_before_mib", "peak_over_before_mib", "gflops",
              "flop_ratio_vs_full", "speedup_vs_full", "peak_reset"}


def tiny_config():
    return ArrCocModelTester(batch_size=1).get_config(text_config=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        intermediate_size=64, vocab_size=99, pad_token_id=0, eos_token_id=2, max_position_embeddings=512,
        tie_word_embeddings=True), tie_word_embeddings=True)


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    root = tmp_path_factory.mktemp("base_scale")
    threads = torch.get_num_threads()
    result = base_scale.run(tiny_config(), root / "components", rounds=1, threads=1, full_train_step="checkpointed")
    torch.set_num_threads(threads)
    result["preset"] = "tiny"
    path = common.write_result(base_scale.NAME, result, root)
    return json.loads(path.read_text()), root


def test_every_checkpoint_weight_arrives_unchanged(tiny_result):
    result, root = tiny_result
    check = result["weight_check"]
    assert check["all_equal"] is True and check["lm_head_tied_to_embeddings"] is True
    for name, component in check["components"].items():
        assert not component["mismatched"] and not component["missing"], name
        assert component["equal"] == component["tensors"] - len(component["not_used_by_design"]) > 0, name
    assert sorted(check["components"]["clip"]["not_used_by_design"]) == sorted(base_scale.CLIP_UNUSED)
    assert check["arrcoc_own_parameters"] > 0  # allocator, adapter, CLIP input projection: not from checkpoints
    assert result["config_differs_from_preset"] == {}
    assert result["ovis2_vet_check"]["ok"] is True
    assert not (root / "components").exists(), "checkpoints are deleted unless --keep-checkpoints"


def test_weight_check_catches_a_changed_weight(tmp_path):
    config = tiny_config()
    digests, info = base_scale.save_components(config, tmp_path)
    assert set(info) == set(base_scale.COMPONENT_NAMES)
    assert all((tmp_path / name / "model.safetensors").exists() for name in info)
    model = base_scale.assemble(config, tmp_path)
    assert base_scale.check_weights(model, digests)["all_equal"]
    with torch.no_grad():
        model.model.clip_encoder.encoder.layers[0].mlp.fc1.weight[0, 0] += 1e-6
    check = base_scale.check_weights(model, digests)
    assert not check["all_equal"]
    assert check["components"]["clip"]["mismatched"] == ["vision_model.encoder.layers.0.mlp.fc1.weight"] or \
        check["components"]["clip"]["mismatched"] == ["encoder.layers.0.mlp.fc1.weight"]


def test_result_json_fields(tiny_result):
    result, _ = tiny_result
    assert RESULT_KEYS <= set(result) and result["errors"] == {}
    assert result["tiers"] == ["4", "16", "full"]
    assert set(result["results"]) == {"forward", "generate", "train_step", "train_step_checkpointed"}
    for label, tiers in result["results"].items():
        for tier, entry in tiers.items():
            assert ENTRY_KEYS <= set(entry), (label, tier)
            assert entry["ms"]["median"] > 0 and entry["peak_rss_mib"]["median"] > 0
            # the growth is the peak minus the RSS before, so it can never exceed the peak itself
            assert entry["peak_over_before_mib"]["median"] <= entry["peak_rss_mib"]["median"]
            if tier != "full" and entry["speedup_vs_full"] is not None:
                assert entry["speedup_vs_full"]["median"] > 0 and entry["flop_ratio_vs_full"] > 1
    # the plain step at full tokens is not measured in this mode: checkpointed at full and at the smallest tier
    assert set(result["results"]["train_step"]) == {"4", "16"}
    assert set(result["results"]["train_step_checkpointed"]) == {"4", "full"}
    assert set(result["smallest_vs_full"]) == {"forward", "generate", "train_step_checkpointed"}
    assert result["full_train_step_estimate"]["visual_tokens"] == 64
    assert all(math.isfinite(loss) for loss in result["train_losses"])
    text = base_scale.markdown(result)
    assert "| call | tier |" in text and "speed-up vs full" in text


# --- the Ovis2.5 + DeepSeek-OCR2 preset (base_ovis25) ------------------------------------------------------------

TINY_OVIS_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                        image_size=32, patch_size=8)
OVIS25_SOURCES = {"sam": "deepseek_ocr2", "text": "ovis2_5"}
MACHINE = {"cpu_count": 2, "usable_cores": 2, "torch_threads": 1, "torch": torch.__version__, "device": "cpu"}


def test_the_ovis25_route_checks_every_weight_on_tiny_shapes(tmp_path):
    """The benchmark's loading path in the base_ovis25 formats: DeepSeek-OCR2 (SAM) and Ovis2.5 (Qwen3 + VET)."""
    config = tiny_config()
    threads = torch.get_num_threads()
    result = base_scale.run(config, tmp_path / "components", items=[], threads=1, sources=OVIS25_SOURCES,
                            ovis_vision=TINY_OVIS_VISION)
    torch.set_num_threads(threads)
    check = result["weight_check"]
    assert check["all_equal"] is True and result["config_differs_from_preset"] == {}
    assert result["ovis2_vet_check"] is None and result["results"] == {}
    sam, text = check["components"]["sam"], check["components"]["text"]
    assert sam["equal"] == len(sam_keys(config)) and not sam["missing"]
    assert any(".sam_encoder.proj." in k for k in sam["not_used_by_design"])
    assert base_scale.OVIS2_5_TABLE not in text["not_used_by_design"]  # the VET is compared, transposed
    assert any(k.startswith("model.vision_tower.") for k in text["not_used_by_design"])
    assert result["checkpoints"]["text"]["format"] == "ovis2_5"
    assert "DeepSeek-OCR2 / CLIP / Ovis2.5 checkpoints" in base_scale.markdown({**result, "machine": MACHINE})


def sam_keys(config):
    from transformers import SamVisionConfig, SamVisionModel

    return SamVisionModel(SamVisionConfig(**base_scale._sub(config.vision_config))).state_dict()


def test_the_ovis25_weight_check_catches_a_changed_vet_row(tmp_path):
    config = tiny_config()
    digests, _ = base_scale.save_components(config, tmp_path, sources=OVIS25_SOURCES, ovis_vision=TINY_OVIS_VISION)
    model = base_scale.assemble(config, tmp_path)
    assert base_scale.check_weights(model, digests, OVIS25_SOURCES)["all_equal"]
    with torch.no_grad():
        model.model.quality_adapter.visual_embedding_table.weight[-1, 0] += 1e-6
    check = base_scale.check_weights(model, digests, OVIS25_SOURCES)
    assert check["components"]["text"]["mismatched"] == [base_scale.OVIS2_5_TABLE]


def test_the_ovis25_preset_has_ovis2_5_2b_and_deepseek_ocr2_shapes():
    """Shapes only (no weights): the LLM is Qwen3-1.7B's, the VET has Ovis2.5's visual words without its indicator
    words, the SAM is DeepSeek-OCR2's as Transformers defines it; the parameters are counted on the meta device."""
    from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import DeepseekOcr2SamVisionConfig
    from transformers.models.ovis2_5.configuration_ovis2_5 import Ovis2_5VisionConfig

    config = base_scale.preset_config("base_ovis25")
    text, sam, ovis = config.text_config, DeepseekOcr2SamVisionConfig(), Ovis2_5VisionConfig()
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads,
            text.head_dim, text.intermediate_size, text.vocab_size) == (2048, 28, 16, 8, 128, 6144, 151936)
    assert text.rope_parameters["rope_theta"] == 1e6 and text.tie_word_embeddings and config.tie_word_embeddings
    assert config.visual_vocab_size == ovis.vocab_size - ovis.num_visual_indicator_tokens == 65532
    for key in base_scale.SHAPE_KEYS["vision_config"]:
        want = getattr(sam, key)
        assert getattr(config.vision_config, key) == (list(want) if isinstance(want, tuple) else want), key
    assert base_scale.preset_sources("base_ovis25") == OVIS25_SOURCES
    assert base_scale.preset_sources("base") == base_scale.DEFAULT_SOURCES
    counts = base_scale.preset_parameters(config, OVIS25_SOURCES)
    assert counts["arrcoc"]["language_model"] == 1_720_574_976 and counts["arrcoc"]["lm_head"] == 0  # tied
    assert counts["arrcoc"]["vision_tower"] == counts["sources"]["sam"]["taken"]
    assert counts["sources"]["text"]["taken"] == 1_720_574_976 + 65532 * 2048  # body + VET rows; head tied


def test_text_layers_keeps_every_other_shape():
    config = base_scale.preset_config("base_ovis25")
    cut = base_scale.with_text_layers(config, 1)
    assert cut.text_config.num_hidden_layers == 1 and len(cut.text_config.layer_types) == 1
    assert base_scale.check_config(cut, config) == {"text_config.num_hidden_layers": [1, 28]}
    assert base_scale.result_name("base_ovis25", 1) == "base_scale_base_ovis25_llm1layers"
    assert base_scale.result_name("base") == "base_scale"


def test_train_flops_model():
    config = tiny_config()
    small = base_scale.train_flops(config, 4, 28, 5)
    full = base_scale.train_flops(config, "full", 28, 5)
    forward = base_scale.item_flops(config, "forward", "full")
    assert small["sam"] == full["sam"] > 0  # SAM runs forward only, whatever the tier
    assert sum(small.values()) < sum(full.values())
    assert full["clip"] == 2 * base_scale.query_flops(config, "full", 28, 1)["clip"]  # forward + dX
    assert sum(full.values()) > forward


def test_gpu_check_skips_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the skip path does not apply")
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert gpu_check.SKIPPED in done.stdout
    assert json.loads((tmp_path / "gpu_check.json").read_text())["skipped"] == "no CUDA device"


def test_gpu_check_cpu_tiny_runs_every_part(tmp_path):
    """The GPU command's code path on the CPU: forward per tier, DeepSpeed ZeRO-2 through deepspeed.initialize and
    through train.py under accelerate launch (float32, gloo), each part reporting ok."""
    pytest.importorskip("deepspeed")
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--tiny",
                           "--output-dir", str(tmp_path), "--repeats", "1", "--batch-sizes", "1", "2", "--steps", "3",
                           "--threads", "1"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["ok"] is True and result["complete"] is True, json.dumps(result["parts"])[:3000]
    sam = result["parts"]["forward"]["attention"]["sdpa"]["sam_only"]
    assert set(sam) == {"1", "2"} and 0 < sam["1"]["share_of_smallest_tier"]["median"]
    forward = result["parts"]["forward"]["attention"]["sdpa"]["batch_sizes"]
    assert set(forward) == {"1", "2"} and set(forward["1"]) == {"4", "16", "full"}
    assert forward["2"]["4"]["speedup_vs_full"]["median"] > 0 and forward["2"]["4"]["flop_ratio_vs_full"] > 1
    engine, trainer = result["parts"]["engine"], result["parts"]["trainer"]
    assert engine["zero_stage"] == 2 and len(engine["steps"]) == 3
    assert trainer["zero_stage"] == 2 and "DEEPSPEED" in trainer["distributed_type"] and trainer["global_step"] == 3
    assert "FAILED" not in done.stdout


def test_gpu_check_reports_a_failing_part_and_goes_on(tmp_path, monkeypatch):
    """One part raising must not stop the others: its failure is recorded with a message."""
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(gpu_check, "engine_part", broken)
    args = gpu_check.parse_args(["--device", "cpu", "--tiny", "--parts", "engine", "forward", "--repeats", "1",
                                 "--batch-sizes", "1", "--threads", "1"])
    threads = torch.get_num_threads()
    result = gpu_check.run(args)
    torch.set_num_threads(threads)
    engine = result["parts"]["engine"]
    assert engine["ok"] is False and engine["error"] == "RuntimeError: simulated failure"
    assert result["parts"]["forward"]["ok"] is True and result["ok"] is False


def test_gpu_check_child_timeout_is_a_clear_failure(tmp_path):
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    result = gpu_check.run_child("engine", command, tmp_path / "spec.json", 1, None)
    assert result["ok"] is False and "timed out after 1 s" in result["error"]


def test_checkpointing_keeps_frozen_sam_out_of_autograd():
    """transformers' default enable_input_require_grads would hook SAM's patch embedding too; ArrCoc's own hooks only
    the LLM's token embeddings, so neither the model nor the benchmark's switch backpropagates through frozen SAM."""
    torch.manual_seed(0)
    config = tiny_config()
    from modeling_arrcoc import ArrCocForConditionalGeneration

    pixels = base_scale.make_inputs(config)["train"]["pixel_values"]
    plain = ArrCocForConditionalGeneration(config)
    plain.requires_grad_(False)
    plain.activation_checkpointing_enable()
    assert not plain.model.get_patch_features(pixels).requires_grad  # ArrCocPreTrainedModel.enable_input_require_grads
    model = ArrCocForConditionalGeneration(config)
    calls = base_scale.Calls(model, base_scale.make_inputs(config))
    for on in (True, True, False):
        calls.set_checkpointing(on)
        assert not model.model.get_patch_features(pixels).requires_grad, on
