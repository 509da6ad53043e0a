"""from_components on the checkpoints users have: an Ovis2.5 language side (Qwen3 + its VET) and DeepSeek-OCR2's SAM
as the vision tower, alone and together (issue #25; docs/components.md).

Each source is a tiny random model of the real Transformers class, written with `save_pretrained` (its on-disk
format: Ovis2.5's `vte.weight` as [words, hidden], DeepSeek-OCR2's `sam_model.*` keys) and loaded back by
`from_components`, offline."""

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    DeepseekOcr2Config,
    DeepseekOcr2ForConditionalGeneration,
    Ovis2_5Config,
    Ovis2_5ForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
    SamVisionConfig,
    SamVisionModel,
)

from conftest import ArrCocModelTester
from modeling_arrcoc import ArrCocForConditionalGeneration
from modeling_arrcoc.components import component_sources
from modeling_arrcoc.lora import apply_lora

pytestmark = pytest.mark.usefixtures("one_thread")

TESTER = ArrCocModelTester()
VISUAL_WORDS, INDICATORS = 40, 4
ARRCOC_SETTINGS = dict(budgets=TESTER.budgets, image_token_id=TESTER.image_token_id, allocator_hidden_size=32,
                       allocator_num_heads=2, adapter_num_layers=1, adapter_num_heads=2, num_vet_prototypes=8)
ROUTES = {  # (sam, llm) checkpoint directories
    "ovis2_5": ("sam", "ovis2_5"),
    "deepseek_ocr2": ("deepseek_ocr2", "qwen3"),
    "both": ("deepseek_ocr2", "ovis2_5"),
}


def sub_config(name):
    values = TESTER.get_config().to_dict()[name]
    return {k: v for k, v in values.items() if k not in ("model_type", "transformers_version", "architectures")}


def build_sources():
    """The tiny source models, each of the real class (seeded; SAM / text shapes as tests/conftest.py)."""
    text = sub_config("text_config")
    sam = sub_config("vision_config")
    torch.manual_seed(11)
    sources = {
        "sam": SamVisionModel(SamVisionConfig(**sam)),
        "clip": CLIPVisionModel(CLIPVisionConfig(**sub_config("clip_config"))),
        "qwen3": Qwen3ForCausalLM(Qwen3Config(**text | {"tie_word_embeddings": True})),
        "ovis2_5": Ovis2_5ForConditionalGeneration(Ovis2_5Config(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=8, vocab_size=VISUAL_WORDS + INDICATORS,
                               num_visual_indicator_tokens=INDICATORS),
            text_config=text)),
        "deepseek_ocr2": DeepseekOcr2ForConditionalGeneration(DeepseekOcr2Config(
            vision_config=dict(
                sam_config={k: sam[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                "image_size", "patch_size", "output_channels", "window_size",
                                                "global_attn_indexes", "mlp_dim")} | {"downsample_channels": [24, 32]},
                encoder_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                    num_key_value_heads=1, vocab_size=10)),
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             vocab_size=99, mlp_layer_types=["dense"], n_routed_experts=2, num_experts_per_tok=1,
                             moe_intermediate_size=16, n_shared_experts=1))),
    }
    with torch.no_grad():  # the Ovis2.5 head is untied: make it differ from the embeddings, as a real one can
        sources["ovis2_5"].lm_head.weight.normal_()
    return sources


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("components")
    models = build_sources()
    for name, model in models.items():
        model.save_pretrained(root / name)
    return root, models


def assemble(root, route, **kwargs):
    vision, text = ROUTES[route]
    return ArrCocForConditionalGeneration.from_components(
        sam=str(root / vision), clip=str(root / "clip"), llm=str(root / text), **ARRCOC_SETTINGS, **kwargs)


@pytest.fixture(scope="module")
def assembled(sources):
    root, _ = sources
    return {route: assemble(root, route).eval() for route in ROUTES}


# --- where each source tensor goes ---------------------------------------------------------------------------


def vision_pairs(model, vision, models):
    """(ArrCoc tensor, source tensor) for every vision-tower tensor; DeepSeek-OCR2's `proj` is left out."""
    tower = model.model.vision_tower.state_dict()
    if vision == "sam":
        source = models["sam"].state_dict()
        return {f"vision_tower.{k}": (tower[k], v) for k, v in source.items()}
    source = models["deepseek_ocr2"].model.vision_tower.sam_encoder.state_dict()
    return {f"vision_tower.{k}": (tower.get(f"vision_encoder.{k}"), v) for k, v in source.items()
            if not k.startswith("proj.")}


def text_pairs(model, text, models):
    """(ArrCoc tensor, source tensor) for the LLM body, the LM head and (Ovis2.5) the VET's visual-word rows."""
    body = model.model.language_model.state_dict()
    source = models[text].model.language_model if text == "ovis2_5" else models[text].model
    pairs = {f"language_model.{k}": (body.get(k), v) for k, v in source.state_dict().items()}
    pairs["lm_head.weight"] = (model.lm_head.weight, models[text].lm_head.weight)
    if text == "ovis2_5":
        table = models[text].model.multi_modal_projector.visual_embeddings_table.weight
        pairs["vet"] = (model.model.quality_adapter.visual_embedding_table.weight, table.T[:VISUAL_WORDS])
    return pairs


def clip_pairs(model, models):
    clip, encoder = models["clip"], model.model.clip_encoder
    clip = getattr(clip, "vision_model", clip)  # CLIPVisionModel keeps its tower at the top in Transformers 5
    layers = encoder.encoder.state_dict()
    pairs = {f"clip.encoder.{k}": (layers.get(k), v) for k, v in clip.encoder.state_dict().items()}
    for name in ("pre_layrnorm", "post_layernorm"):
        for k, v in getattr(clip, name).state_dict().items():
            pairs[f"clip.{name}.{k}"] = (getattr(encoder, name).state_dict()[k], v)
    pairs["clip.position_embedding"] = (encoder.position_embedding.weight, clip.embeddings.position_embedding.weight)
    return pairs


def loaded_pairs(model, route, models):
    vision, text = ROUTES[route]
    return vision_pairs(model, vision, models) | clip_pairs(model, models) | text_pairs(model, text, models)


def differing(pairs):
    return sorted(name for name, (got, want) in pairs.items() if got is None or not torch.equal(got, want))


# --- the sources' names -------------------------------------------------------------------------------------


def test_the_older_source_names_assemble_the_same_model(sources):
    # vision= / text= are the names before Ovis2.5 and DeepSeek-OCR2 (a SAM either way, a language model either way);
    # one seed, so that the new parts (allocator, adapter) start the same too.
    root, _ = sources
    vision, text = ROUTES["both"]
    torch.manual_seed(0)
    older = ArrCocForConditionalGeneration.from_components(
        vision=str(root / vision), clip=str(root / "clip"), text=str(root / text), **ARRCOC_SETTINGS)
    torch.manual_seed(0)
    newer = assemble(root, "both").state_dict()
    assert all(torch.equal(tensor, newer[name]) for name, tensor in older.state_dict().items())


@pytest.mark.parametrize("kwargs, message", [
    ({"sam": "a", "vision": "b", "clip": "c", "llm": "d"}, "sam checkpoint exactly once"),
    ({"clip": "c", "llm": "d"}, "sam checkpoint exactly once"),
    ({"sam": "a", "clip": "c", "llm": "d", "siglip": "e"}, "unknown source"),
])
def test_a_source_given_twice_missing_or_unknown_is_named(kwargs, message):
    with pytest.raises(TypeError, match=message):
        component_sources(**kwargs)


# --- every loaded tensor, bitwise ----------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_every_loaded_tensor_is_bitwise_its_source(sources, assembled, route):
    _, models = sources
    model = assembled[route]
    pairs = loaded_pairs(model, route, models)
    assert differing(pairs) == []
    # Coverage: every parameter of the tower, the LLM and the head came from a checkpoint.
    covered = {got.data_ptr() for got, _ in pairs.values()}
    for module in (model.model.vision_tower, model.model.language_model, model.lm_head):
        assert all(p.data_ptr() in covered for p in module.parameters())


def test_the_weight_comparison_catches_one_changed_element(sources):
    _, models = sources
    model = assemble(sources[0], "both")
    with torch.no_grad():
        model.model.vision_tower.vision_encoder.layers[1].attn.rel_pos_h[0, 0] += 1e-6
        model.model.quality_adapter.visual_embedding_table.weight[VISUAL_WORDS - 1, 0] += 1e-6
    assert differing(loaded_pairs(model, "both", models)) == ["vet", "vision_tower.layers.1.attn.rel_pos_h"]


# --- Ovis2.5: transpose and indicator tokens -----------------------------------------------------------------


def test_ovis2_5_vet_is_the_saved_table_without_its_indicator_rows(sources, assembled):
    root, models = sources
    with safe_open(root / "ovis2_5" / "model.safetensors", "pt") as f:
        saved = f.get_tensor("vte.weight")  # Ovis' original layout on disk: [words + indicators, hidden]
    table = models["ovis2_5"].model.multi_modal_projector.visual_embeddings_table.weight
    assert saved.shape == (VISUAL_WORDS + INDICATORS, 32) and table.shape == (32, VISUAL_WORDS + INDICATORS)
    model = assembled["ovis2_5"]
    vet = model.model.quality_adapter.visual_embedding_table.weight
    assert model.config.visual_vocab_size == VISUAL_WORDS == model.model.quality_adapter.visual_head.out_features
    assert torch.equal(vet, saved[:VISUAL_WORDS])
    # The dropped rows are the ones Ovis2.5 looks up for its image / video start and end tokens.
    indicator_ids = models["ovis2_5"].model.multi_modal_projector.visual_tokenizer.get_visual_indicator_token_ids("cpu")
    assert indicator_ids.tolist() == list(range(VISUAL_WORDS, VISUAL_WORDS + INDICATORS))
    assert not any(torch.equal(row, indicator) for row in vet for indicator in saved[VISUAL_WORDS:])


def test_a_visual_vocab_size_other_than_the_table_is_refused(sources):
    with pytest.raises(ValueError, match="visual_vocab_size=44, but .* has 40 visual words"):
        assemble(sources[0], "ovis2_5", visual_vocab_size=VISUAL_WORDS + INDICATORS)


def test_a_tied_head_that_differs_from_the_embeddings_is_refused(sources):
    # Ovis2.5's head differs from its embeddings here: tying would silently overwrite the embeddings with it.
    with pytest.raises(ValueError, match="LM head differs from its input embeddings"):
        assemble(sources[0], "ovis2_5", tie_word_embeddings=True)
    model = assemble(sources[0], "deepseek_ocr2", tie_word_embeddings=True)  # Qwen3's head is tied: accepted
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_the_remote_code_ovis2_5_format_is_refused(tmp_path, sources):
    (tmp_path / "config.json").write_text('{"model_type": "ovis2_5", "llm_config": {"model_type": "qwen3"}, '
                                          '"vit_config": {"model_type": "siglip2_navit"}}')
    with pytest.raises(ValueError, match="remote-code format .* ovis-community/Ovis2.5-2B"):
        ArrCocForConditionalGeneration.from_components(sam=str(sources[0] / "sam"), clip=str(sources[0] / "clip"),
                                                       llm=str(tmp_path), **ARRCOC_SETTINGS)


# --- DeepSeek-OCR2: the SAM encoder, its neck kept, its projection dropped -----------------------------------


def test_the_deepseek_tower_computes_deepseeks_neck_features(sources, assembled):
    _, models = sources
    encoder = models["deepseek_ocr2"].model.vision_tower.sam_encoder
    neck = []
    hook = encoder.neck.register_forward_hook(lambda module, args, output: neck.append(output))
    pixels = TESTER.prepare_inputs()["pixel_values"]
    with torch.no_grad():
        final = encoder(pixels).last_hidden_state
        hook.remove()
        features = assembled["deepseek_ocr2"].model.get_patch_features(pixels)
    rows = TESTER.image_size // TESTER.patch_size
    assert features.shape == (pixels.shape[0], rows * rows, 16)  # the neck's grid and channels
    assert final.shape[1:] == (32, rows // 4, rows // 4)  # what `proj` would have given: 896-like, 16x fewer
    torch.testing.assert_close(features, neck[0].flatten(2).transpose(1, 2), atol=1e-6, rtol=0)
    config = assembled["deepseek_ocr2"].config.vision_config
    assert config.model_type == "sam_vision_model" and not hasattr(config, "downsample_channels")


def test_each_vision_source_gets_the_normalization_it_was_trained_with(sources):
    """DeepSeek-OCR2 maps pixels to [-1, 1] (mean = std = 0.5); SAM keeps the processor's ImageNet defaults."""
    from modeling_arrcoc import ArrCocImageProcessor
    from modeling_arrcoc.components import component_sources, vision_normalization

    root, _ = sources
    assert vision_normalization(str(root / "deepseek_ocr2")) == {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    assert vision_normalization(str(root / "sam")) == {}
    processor = ArrCocImageProcessor(size=64, **vision_normalization(str(root / "deepseek_ocr2")))
    white = processor(images=[np.full((64, 64, 3), 255, dtype=np.uint8)], return_tensors="pt")["pixel_values"]
    assert torch.allclose(white, torch.ones_like(white))


def test_a_deepseek_checkpoint_without_sam_weights_is_refused(sources, tmp_path):
    root, _ = sources
    for path in (root / "deepseek_ocr2").iterdir():
        if path.name != "model.safetensors":
            (tmp_path / path.name).write_bytes(path.read_bytes())
    tensors = load_file(root / "deepseek_ocr2" / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "sam_model.blocks.1." not in k}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match="no weights for DeepSeek-OCR2's SAM encoder"):
        ArrCocForConditionalGeneration.from_components(sam=str(tmp_path), clip=str(root / "clip"),
                                                       llm=str(root / "qwen3"), **ARRCOC_SETTINGS)


def test_a_vision_checkpoint_that_is_not_sam_is_refused(sources):
    root, _ = sources
    with pytest.raises(ValueError, match="'clip_vision_model' checkpoint"):
        ArrCocForConditionalGeneration.from_components(sam=str(root / "clip"), clip=str(root / "clip"),
                                                       llm=str(root / "qwen3"), **ARRCOC_SETTINGS)


# --- forward, generate at each tier, save / reload -----------------------------------------------------------


def query_inputs():
    inputs = TESTER.prepare_inputs()
    inputs.pop("labels")
    return inputs


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("tier", TESTER.budgets + ["full"])
def test_forward_and_generate_at_each_tier(assembled, route, tier):
    model, inputs = assembled[route], query_inputs()
    with torch.no_grad():
        out = model(**inputs, budget=tier)
    tokens = TESTER.num_patches if tier == "full" else min(tier, TESTER.num_patches)
    assert out.visual_token_counts.tolist() == [tokens] * TESTER.batch_size
    assert torch.isfinite(out.logits).all()
    generated = model.generate(**inputs, budget=tier, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                               pad_token_id=0)
    width = inputs["input_ids"].shape[1]
    assert generated.shape == (TESTER.batch_size, width + 3)
    assert torch.equal(generated[:, :width], inputs["input_ids"])
    # Greedy: the first new token is the forward's argmax at the last prompt position, at the same tier.
    assert torch.equal(generated[:, width], out.logits[:, -1].argmax(-1))


@pytest.mark.parametrize("route", ROUTES)
def test_save_and_reload_gives_the_same_logits(assembled, route, tmp_path):
    model, inputs = assembled[route], query_inputs()
    model.save_pretrained(tmp_path)
    reloaded = ArrCocForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = model(**inputs, budget=TESTER.budgets).logits
        assert torch.equal(reloaded(**inputs, budget=TESTER.budgets).logits, expected)
    saved, loaded = model.config.to_dict(), reloaded.config.to_dict()
    saved.pop("_name_or_path"), loaded.pop("_name_or_path")
    assert loaded == saved


# --- PEFT LoRA on the Ovis2.5 language layers ----------------------------------------------------------------


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs, budget=TESTER.budgets).logits


def test_lora_on_the_ovis2_5_language_layers(sources):
    model = assemble(sources[0], "ovis2_5")
    batch = TESTER.prepare_inputs()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    base = logits(model.eval(), inputs)
    peft_model = apply_lora(model, last_n_layers=2, modules_to_save=None)
    trainable = {name: p for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".language_model.layers." in name and "lora_" in name for name in trainable)
    assert {name for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    before = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    peft_model.train()
    peft_model(**batch, budget=TESTER.budgets).loss.backward()
    optimizer.step()
    changed = {name for name, p in peft_model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and changed <= set(trainable)
    assert any("lora_B" in name for name in changed)  # B starts at zero: the step turned the adapter on
    peft_model.eval()
    adapted = logits(peft_model, inputs)
    assert not torch.allclose(adapted, base, atol=1e-4)
    peft_model.merge_adapter()
    torch.testing.assert_close(logits(peft_model, inputs), adapted, atol=1e-5, rtol=1e-5)
    peft_model.unmerge_adapter()
    torch.testing.assert_close(logits(peft_model, inputs), adapted, atol=1e-5, rtol=1e-5)
    with peft_model.disable_adapter():  # unmerged, the base weights are back
        torch.testing.assert_close(logits(peft_model, inputs), base, atol=1e-5, rtol=1e-5)
