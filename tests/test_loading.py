"""Every loading path: save/load, Auto classes, trust_remote_code, from_components, dtype, attention per sub-config."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    CLIPVisionModel,
    Qwen3Config,
    Qwen3ForCausalLM,
    SamVisionConfig,
    SamVisionModel,
)

from modeling_arrcoc import ArrCocConfig, ArrCocForConditionalGeneration, ArrCocModel


def forward_logits(model, inputs):
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}, budget=[4, 16, 100]).logits


def test_save_pretrained_writes_safetensors_only_and_reloads_exactly(tester, tmp_path):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    model.save_pretrained(tmp_path)
    files = os.listdir(tmp_path)
    assert "model.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files), files
    reloaded = ArrCocForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert torch.equal(forward_logits(model, inputs), forward_logits(reloaded, inputs))
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert isinstance(auto, ArrCocForConditionalGeneration)
    assert torch.equal(forward_logits(model, inputs), forward_logits(auto, inputs))
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ArrCocConfig)


def test_auto_model_gives_base_model(tester, tmp_path):
    tester.get_config().save_pretrained(tmp_path)
    base = AutoModel.from_config(AutoConfig.from_pretrained(tmp_path))
    assert isinstance(base, ArrCocModel)


def test_trust_remote_code_loads_without_the_package(tester, tmp_path):
    model, inputs = tester.get_model(), tester.prepare_inputs()
    model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageTextToText"].endswith("ArrCocForConditionalGeneration")
    torch.save({k: v for k, v in inputs.items() if k != "labels"}, tmp_path.parent / "inputs.pt")
    expected = forward_logits(model, inputs)
    script = f"""
import sys, torch
from transformers import AutoModelForImageTextToText
model = AutoModelForImageTextToText.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
assert "modeling_arrcoc" not in sys.modules, "the package must not be imported"
inputs = torch.load({str(tmp_path.parent / 'inputs.pt')!r})
with torch.no_grad():
    logits = model(**inputs, budget=[4, 16, 100]).logits
torch.save(logits, {str(tmp_path.parent / 'logits.pt')!r})
print(type(model).__module__)
"""
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path.parent, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers_modules" in result.stdout
    assert torch.equal(torch.load(tmp_path.parent / "logits.pt"), expected)


def test_bfloat16_load(tester, tmp_path):
    tester.get_model().save_pretrained(tmp_path)
    model = ArrCocForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    inputs = tester.prepare_inputs()
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    pixel_values=inputs["pixel_values"].bfloat16(), budget=16)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()


def test_attn_implementation_per_sub_config(tester, tmp_path):
    tester.get_model().save_pretrained(tmp_path)
    choice = {"vision_config": "eager", "clip_config": "eager", "text_config": "sdpa"}
    model = ArrCocForConditionalGeneration.from_pretrained(tmp_path, attn_implementation=choice)
    assert model.config.vision_config._attn_implementation == "eager"
    assert model.config.clip_config._attn_implementation == "eager"
    assert model.config.text_config._attn_implementation == "sdpa"
    eager = forward_logits(model.eval(), tester.prepare_inputs())
    sdpa = forward_logits(ArrCocForConditionalGeneration.from_pretrained(tmp_path).eval(), tester.prepare_inputs())
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-4)


def test_flash_attention_refused_for_sam(tester):
    config = tester.get_config()
    config.vision_config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="SAM vision tower cannot use flash_attention_2"):
        ArrCocForConditionalGeneration(config)


def save_tiny_components(root, tester):
    torch.manual_seed(1)
    sam = SamVisionModel(SamVisionConfig(**tester.get_config().vision_config.to_dict()))
    clip = CLIPVisionModel(CLIPVisionConfig(**tester.get_config().clip_config.to_dict()))
    text = Qwen3ForCausalLM(Qwen3Config(**tester.get_config().text_config.to_dict()))
    for name, component in (("sam", sam), ("clip", clip), ("text", text)):
        component.save_pretrained(root / name)
    return sam, clip, text


def test_from_components_loads_every_weight(tester, tmp_path):
    sam, clip, text = save_tiny_components(tmp_path, tester)
    model = ArrCocForConditionalGeneration.from_components(
        sam=str(tmp_path / "sam"), clip=str(tmp_path / "clip"), llm=str(tmp_path / "text"),
        budgets=tester.budgets, image_token_id=tester.image_token_id, allocator_hidden_size=32, allocator_num_heads=2,
        adapter_num_layers=1, adapter_num_heads=2, num_vet_prototypes=8, visual_vocab_size=64,
    )
    for name, value in sam.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[name], value), name
    encoder = model.model.clip_encoder
    assert torch.equal(encoder.position_embedding.weight, clip.embeddings.position_embedding.weight)
    for name, value in clip.encoder.state_dict().items():
        assert torch.equal(encoder.encoder.state_dict()[name], value), name
    for name, value in text.model.state_dict().items():
        assert torch.equal(model.model.language_model.state_dict()[name], value), name
    assert torch.equal(model.lm_head.weight, text.lm_head.weight)
    inputs = tester.prepare_inputs()
    assert torch.isfinite(forward_logits(model.eval(), inputs)).all()


def test_from_components_loads_ovis2_vet(tester, tmp_path):
    from transformers import Ovis2Config, Ovis2ForConditionalGeneration

    save_tiny_components(tmp_path, tester)
    text = tester.get_config().text_config.to_dict()
    ovis_config = Ovis2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, vocab_size=40, hidden_stride=1),
        text_config={**{k: text[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                             "num_attention_heads", "num_key_value_heads", "vocab_size")},
                     "model_type": "qwen2"},
        hidden_size=32, vocab_size=tester.vocab_size,
    )
    torch.manual_seed(2)
    ovis = Ovis2ForConditionalGeneration(ovis_config)
    ovis.save_pretrained(tmp_path / "ovis")
    model = ArrCocForConditionalGeneration.from_components(
        sam=str(tmp_path / "sam"), clip=str(tmp_path / "clip"), llm=str(tmp_path / "ovis"),
        budgets=tester.budgets, image_token_id=tester.image_token_id, allocator_hidden_size=32, allocator_num_heads=2,
        adapter_num_layers=1, adapter_num_heads=2, num_vet_prototypes=8,
    )
    vet = model.model.quality_adapter.visual_embedding_table.weight
    assert model.config.visual_vocab_size == 40
    assert torch.equal(vet, ovis.model.visual_embeddings_table.weight)
    assert torch.equal(model.lm_head.weight, ovis.lm_head.weight)


# --- sub-configs: each loads from its own entry of an ArrCoc checkpoint (issue #15, D7) -----------------------------

DEMO_BASE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained", "demo-base")
MODEL_PRESETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "model")


def test_sub_configs_load_from_their_own_entry(tester, tmp_path, caplog):
    from modeling_arrcoc.configuration_arrcoc import ArrCocClipVisionConfig

    config = tester.get_config()
    config.save_pretrained(tmp_path)
    assert isinstance(config.clip_config, ArrCocClipVisionConfig) and isinstance(config.clip_config, CLIPVisionConfig)
    assert SamVisionConfig.from_pretrained(tmp_path).to_dict() == config.vision_config.to_dict()
    assert ArrCocClipVisionConfig.from_pretrained(tmp_path).to_dict() == config.clip_config.to_dict()
    assert Qwen3Config.from_pretrained(tmp_path).to_dict() == config.text_config.to_dict()
    # The stock CLIPVisionConfig reads `vision_config` whatever the checkpoint (its base_config_key is fixed by
    # transformers), which in ArrCoc is SAM: transformers says so rather than building CLIP from SAM silently.
    with caplog.at_level("WARNING"):
        CLIPVisionConfig.from_pretrained(tmp_path)
    assert "model of type `sam_vision_model` to instantiate a model of type `clip_vision_model`" in caplog.text
    # ArrCoc's class also reads a plain CLIP checkpoint, as CLIPVisionConfig does.
    CLIPVisionModel(CLIPVisionConfig(**config.clip_config.to_dict())).save_pretrained(tmp_path / "clip")
    plain = ArrCocClipVisionConfig.from_pretrained(tmp_path / "clip").to_dict()
    assert {k: plain[k] for k in config.clip_config.to_diff_dict()} == config.clip_config.to_diff_dict()


@pytest.mark.parametrize("path", [DEMO_BASE, *sorted(os.path.join(MODEL_PRESETS, n) for n in os.listdir(MODEL_PRESETS))])
def test_shipped_configs_load_and_round_trip_unchanged(path, tmp_path):
    from modeling_arrcoc.configuration_arrcoc import ArrCocClipVisionConfig

    with open(os.path.join(path, "config.json")) as file:
        original = json.load(file)
    config = AutoConfig.from_pretrained(path)
    assert type(config.clip_config) is ArrCocClipVisionConfig
    for key in ("vision_config", "clip_config", "text_config"):
        loaded = getattr(config, key).to_dict()
        assert {k: loaded[k] for k in original[key]} == original[key], key
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("vision_config", "clip_config", "text_config"):
        assert saved[key] == original[key], key  # the checkpoint format is unchanged
    assert AutoConfig.from_pretrained(tmp_path).to_json_string() == config.to_json_string()


def test_clip_config_class_does_not_change_the_model(tmp_path):
    """demo-base loaded with ArrCoc's CLIP config class and with the stock CLIPVisionConfig: bit-identical logits."""
    from PIL import Image
    from transformers import AutoProcessor

    config = AutoConfig.from_pretrained(DEMO_BASE)
    stock = AutoConfig.from_pretrained(DEMO_BASE)
    stock.clip_config = CLIPVisionConfig(**config.clip_config.to_dict())
    processor = AutoProcessor.from_pretrained(DEMO_BASE)
    inputs = processor(images=Image.new("RGB", (90, 60), "white"), text="<image>\nWhat is the total?")
    logits = []
    for cfg in (config, stock):
        model = ArrCocForConditionalGeneration.from_pretrained(DEMO_BASE, config=cfg, dtype=torch.float32).eval()
        with torch.no_grad():
            logits.append(model(**inputs).logits)
    assert type(model.config.clip_config) is CLIPVisionConfig
    assert torch.equal(logits[0], logits[1])
