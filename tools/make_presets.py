"""Write the model presets under configs/model/: tiny (tests), demo (the embedded CPU default), base (real
checkpoints). Run `python -m tools.make_presets`; the output is committed, so tests and the demo load it offline.
"""

import argparse
import json
from pathlib import Path

from modeling_arrcoc import ArrCocConfig, ArrCocImageProcessor, ArrCocProcessor
from modeling_arrcoc.provenance import REPO_ROOT
from modeling_arrcoc.tokenization_arrcoc import build_tokenizer

ROOT = REPO_ROOT / "configs" / "model"

# Hub checkpoints the base preset is assembled from (ArrCocForConditionalGeneration.from_components).
BASE_COMPONENTS = {
    "sam": "facebook/sam-vit-base",
    "clip": "openai/clip-vit-large-patch14",
    "llm": "Qwen/Qwen3-0.6B",
}


def tokenizer_corpus() -> list[str]:
    """Every question template and answer of the synthetic suite, in chat format."""
    from modeling_arrcoc.data.synthetic import corpus_text

    lines = corpus_text().splitlines()
    return [f"<|im_start|>user\n<image>\n{line}<|im_end|>\n<|im_start|>assistant\n" for line in lines] + lines


def sam(hidden, layers, heads, image_size, patch_size, channels, window, global_layers):
    return dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, image_size=image_size,
        patch_size=patch_size, output_channels=channels, window_size=window, global_attn_indexes=global_layers,
        mlp_dim=4 * hidden, initializer_range=0.02,
    )


def clip(hidden, layers, heads, image_size, patch_size):
    return dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden,
        image_size=image_size, patch_size=patch_size,
    )


def qwen3(hidden, layers, heads, kv_heads, vocab, max_positions):
    return dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=hidden // heads, intermediate_size=3 * hidden, vocab_size=vocab, max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )


# The tiny model, defined once: SAM, CLIP and a Qwen3 of hidden 32 and 2 layers, the ArrCoc parts at their smallest.
# The tiny preset on disk (configs/model/tiny) is written from it, and the tests' in-memory configs
# (tests/conftest.py's ArrCocModelTester, tests/test_transformers_common.py's tester) are built with it.
TINY_TEXT = (32, 2, 2, 1)  # Qwen3: hidden, layers, attention heads, key/value heads


def tiny_parts(image_size: int = 64, patch_size: int = 8) -> dict:
    """ArrCocConfig arguments of the tiny model but its text config, budgets and vocabularies: the SAM and CLIP
    configs for `image_size` pages on a `patch_size` grid, and the allocator / adapter sizes."""
    return dict(
        vision_config=sam(32, 2, 2, image_size, patch_size, 16, 4, [1]),
        clip_config=clip(32, 2, 2, image_size, patch_size),
        allocator_hidden_size=32, allocator_num_heads=2, adapter_num_layers=1, adapter_num_heads=2,
        num_vet_prototypes=8,
        # The fold is off by default (ARR-COC reads better without it); the tests keep its path covered.
        fold_dropped=True,
    )


def tiny_text_config(vocab_size: int, max_positions: int = 2048) -> dict:
    """The tiny model's Qwen3 config for a `vocab_size` tokenizer."""
    return qwen3(*TINY_TEXT, vocab_size, max_positions)


PRESETS = {
    # Tests: 64 px pages, 8x8 = 64 patches; the 100 tier is larger than the grid on purpose (keeps all patches).
    "tiny": dict(
        image_size=64, vocab=512,
        config=dict(**tiny_parts(64, 8), budgets=[4, 16, 100], visual_vocab_size=128),
        text=(*TINY_TEXT, 512),
    ),
    # The embedded default: 256 px pages, 16 px glyph cells aligned to a 16x16 = 256 patch grid. Sized from
    # docs/design.md's measured costs ("What things cost here") so a training step at full tokens stays around a second on 2 cores.
    # Tiers from 4: a local question needs 1-2 cells, counting up to 9 squares needs 8-16, so the calibrated
    # predictor has a real reason to differ by question (with 8 as the smallest tier, 8 sufficed for everything
    # the demo model could answer and the predictor rightly used one tier: measured, see the training issue).
    "demo": dict(
        image_size=256, vocab=512,
        config=dict(
            vision_config=sam(128, 4, 4, 256, 16, 128, 8, [1, 3]), clip_config=clip(128, 2, 4, 256, 16),
            budgets=[4, 8, 16, 64, 256], allocator_hidden_size=128, allocator_num_heads=4, adapter_num_layers=1,
            adapter_num_heads=4, num_vet_prototypes=64, visual_vocab_size=1024,
        ),
        text=(256, 4, 4, 2, 512),
    ),
}


def write_embedded(name: str, spec: dict, corpus: list[str]):
    out = ROOT / name
    tokenizer = build_tokenizer(corpus, vocab_size=spec["vocab"])
    hidden, layers, heads, kv, vocab = spec["text"]
    text_config = qwen3(hidden, layers, heads, kv, len(tokenizer), 2048)
    text_config.update(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    config = ArrCocConfig(text_config=text_config, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                          **spec["config"])
    config.save_pretrained(out)
    processor = ArrCocProcessor(ArrCocImageProcessor(size=spec["image_size"]), tokenizer)
    processor.save_pretrained(out)


def write_base():
    out = ROOT / "base"
    out.mkdir(parents=True, exist_ok=True)
    config = ArrCocConfig(
        vision_config=sam(768, 12, 12, 1024, 16, 256, 14, [2, 5, 8, 11]),
        clip_config=clip(1024, 24, 16, 224, 14) | {"intermediate_size": 4096, "hidden_act": "quick_gelu"},
        text_config=dict(
            hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
            intermediate_size=3072, vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6,
            tie_word_embeddings=True, eos_token_id=151645, pad_token_id=151643,
        ),
        image_token_id=151655,  # Qwen's <|image_pad|>: the processor uses it as its image token
        tie_word_embeddings=True,
    )
    config.save_pretrained(out)
    (out / "components.json").write_text(json.dumps(BASE_COMPONENTS, indent=2) + "\n")


def strip_remote_code(out: Path):
    """Presets are read with the package imported: copies of its source beside them would only go stale."""
    for source in out.glob("*.py"):
        source.unlink()
    for path in out.glob("*.json"):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and _drop_auto_map(data):
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _drop_auto_map(data: dict) -> bool:
    changed = data.pop("auto_map", None) is not None
    for value in data.values():
        if isinstance(value, dict):
            changed = _drop_auto_map(value) or changed
    return changed


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["tiny", "demo", "base"], nargs="*")
    args = parser.parse_args()
    corpus = tokenizer_corpus()
    for name, spec in PRESETS.items():
        if not args.only or name in args.only:
            write_embedded(name, spec, corpus)
            strip_remote_code(ROOT / name)
    if not args.only or "base" in args.only:
        write_base()
        strip_remote_code(ROOT / "base")


if __name__ == "__main__":
    main()
