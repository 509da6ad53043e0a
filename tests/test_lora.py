"""LoRA on the LLM's last layers: exactly the intended modules, adapter save/reload, merge, generate."""

import os

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper

from modeling_arrcoc.lora import apply_lora, lora_config_for_language_model

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
TIERS = [4, 16, 100]


def lora_modules(peft_model):
    prefix = "base_model.model."
    return {name.removeprefix(prefix) for name, module in peft_model.named_modules() if isinstance(module, LoraLayer)}


def saved_modules(peft_model):
    prefix = "base_model.model."
    return {name.removeprefix(prefix) for name, module in peft_model.named_modules()
            if isinstance(module, ModulesToSaveWrapper)}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs, budget=TIERS).logits


def train_a_little(peft_model):
    """Give every trainable tensor a non-zero update, as training would (LoRA B starts at zero)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


@pytest.fixture
def inputs(tester):
    inputs = tester.prepare_inputs()
    inputs.pop("labels")
    return inputs


def test_the_clip_encoder_has_layers_of_the_same_names(tester):
    # Why the target is a regex scoped to the LLM: layer index + projection name alone also match CLIP.
    names = [name for name, _ in tester.get_model().named_modules()]
    assert "model.clip_encoder.encoder.layers.1.self_attn.q_proj" in names
    assert "model.language_model.layers.1.self_attn.q_proj" in names


@pytest.mark.parametrize("last_n_layers, layers", [(1, [1]), (2, [0, 1])])
def test_only_the_last_llm_layers_get_lora(tester, last_n_layers, layers):
    peft_model = apply_lora(tester.get_model(), last_n_layers=last_n_layers, modules_to_save=None)
    expected = {f"model.language_model.layers.{i}.self_attn.{p}" for i in layers for p in PROJECTIONS}
    assert lora_modules(peft_model) == expected
    assert saved_modules(peft_model) == set()
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)


def test_modules_to_save_and_custom_targets(tester):
    peft_model = apply_lora(tester.get_model(), last_n_layers=1, target_modules=("q_proj", "v_proj"))
    assert lora_modules(peft_model) == {"model.language_model.layers.1.self_attn.q_proj",
                                        "model.language_model.layers.1.self_attn.v_proj"}
    assert saved_modules(peft_model) == {"model.allocator", "model.quality_adapter"}
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any(".allocator.modules_to_save." in name for name in trainable)
    assert not any("vision_tower" in name or "clip_encoder" in name for name in trainable)


def test_config_validation(tester):
    model = tester.get_model()
    config = lora_config_for_language_model(model, last_n_layers=1, r=4, alpha=8)
    assert (config.r, config.lora_alpha, config.modules_to_save) == (4, 8, ["allocator", "quality_adapter"])
    assert isinstance(config.target_modules, str) and config.target_modules.startswith(r"model\.language_model")
    with pytest.raises(ValueError, match="last_n_layers must be in 1..2"):
        lora_config_for_language_model(model, last_n_layers=3)
    with pytest.raises(ValueError, match="No module .* named any of \\['qkv'\\]"):
        lora_config_for_language_model(model, target_modules=("qkv",))


def test_adapter_save_and_reload_gives_identical_logits(tester, inputs, tmp_path):
    base_logits = logits(tester.get_model(), inputs)
    peft_model = apply_lora(tester.get_model(), last_n_layers=1).eval()
    train_a_little(peft_model)
    trained = logits(peft_model, inputs)
    assert not torch.allclose(trained, base_logits), "the adapter changes the model"
    peft_model.save_pretrained(tmp_path)
    assert "adapter_model.safetensors" in os.listdir(tmp_path)
    # Onto a fresh base with the same weights (seed 0); trainable, as the saved model was: bit-identical.
    reloaded = PeftModel.from_pretrained(tester.get_model(), tmp_path, is_trainable=True).eval()
    assert lora_modules(reloaded) == lora_modules(peft_model)
    assert saved_modules(reloaded) == {"model.allocator", "model.quality_adapter"}
    assert torch.equal(logits(reloaded, inputs), trained)
    # For inference nothing requires grad, so torch's MultiheadAttention (allocator) takes its fused fast path:
    # the same numbers up to float32 rounding.
    frozen = PeftModel.from_pretrained(tester.get_model(), tmp_path).eval()
    torch.testing.assert_close(logits(frozen, inputs), trained, atol=1e-6, rtol=0)


def test_merge_and_unload_matches_the_unmerged_adapter(tester, inputs):
    peft_model = apply_lora(tester.get_model(), last_n_layers=2).eval()
    train_a_little(peft_model)
    unmerged = logits(peft_model, inputs)
    merged = peft_model.merge_and_unload()
    assert lora_modules(merged) == set() and not isinstance(merged, PeftModel)
    torch.testing.assert_close(logits(merged, inputs), unmerged, atol=1e-5, rtol=1e-5)


def test_generate_through_the_peft_model(tester, inputs):
    peft_model = apply_lora(tester.get_model(), last_n_layers=1).eval()
    train_a_little(peft_model)
    kwargs = dict(budget=TIERS, max_new_tokens=4, do_sample=False, pad_token_id=0)
    out = peft_model.generate(**inputs, **kwargs)
    assert out.shape == (tester.batch_size, inputs["input_ids"].shape[1] + 4)
    merged = peft_model.merge_and_unload()
    assert torch.equal(out, merged.generate(**inputs, **kwargs)), "the adapter is active during generate"
    assert not torch.equal(out, tester.get_model().generate(**inputs, **kwargs))
