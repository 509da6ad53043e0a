"""A small byte-level BPE tokenizer for the embedded presets, built locally (no download)."""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>")


def digit_splitting_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Byte-level words, every digit its own piece, as Qwen's tokenizers split numbers. Without the split, BPE learns
    digit pairs ("583" -> "58", "3"), so the first token of a row of digits must read two cells at once
    (docs/demo_model.md, "Region rows")."""
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False)])


def build_tokenizer(corpus: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `corpus`. Byte-level means any text encodes, even words never seen."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = digit_splitting_pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>", unk_token=None,
        extra_special_tokens=["<image>", "<|im_start|>", "<|endoftext|>"], padding_side="left",
    )


__all__ = ["SPECIAL_TOKENS", "build_tokenizer", "digit_splitting_pre_tokenizer"]
