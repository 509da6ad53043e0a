"""The presets' tokenizer: every digit its own token, and the taught families' text encoded as before the split."""

import itertools
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoTokenizer

from modeling_arrcoc.data.synthetic import corpus_text, render_sample
from modeling_arrcoc.tokenization_arrcoc import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "configs/model/tiny", ROOT / "configs/model/demo", ROOT / "pretrained/demo-base"]
# The families the shipped base was taught; their questions hold no digit and their answers are one digit or letter.
TAUGHT = ("local_color", "local_key", "global_count", "chart")


def _byte_level_only(tokenizer_file: Path) -> Tokenizer:
    """The same vocabulary and merges with the pre-tokenizer the presets had before the digit split."""
    backend = Tokenizer.from_file(str(tokenizer_file))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return backend


def _texts(family: str, pages: int = 12) -> list[str]:
    texts = []
    for seed, variant in itertools.product(range(pages), ("standard", "heldout")):
        row = render_sample(family, np.random.default_rng([seed, 5]), variant=variant)
        texts += [row["question"], *row["answers"], *row["extra_questions"], *row["extra_answers"]]
    return texts


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_tokenizers_split_digits(path):
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.tokenize("583") == ["5", "8", "3"]
    assert tokenizer.decode(tokenizer("Read the 3 digits after the red square. 583")["input_ids"]) == \
        "Read the 3 digits after the red square. 583"


def test_built_tokenizer_splits_digits_and_learns_no_digit_merges():
    tokenizer = build_tokenizer(corpus_text().splitlines(), vocab_size=320)
    assert tokenizer.tokenize("Read the 3 digits after the red square. 583")[-3:] == ["5", "8", "3"]
    merged = [token for token in tokenizer.get_vocab() if sum(ch.isdigit() for ch in token) > 1]
    assert merged == []


@pytest.mark.parametrize("family", TAUGHT)
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_taught_families_encode_as_before_the_digit_split(path, family):
    """The split is behaviour-preserving for the shipped base: what it was trained and evaluated on encodes to the
    same ids. Only region rows (a digit in the question, three in the answer) change."""
    before, after = _byte_level_only(path / "tokenizer.json"), Tokenizer.from_file(str(path / "tokenizer.json"))
    for text in _texts(family):
        assert after.encode(text).ids == before.encode(text).ids, text


def test_region_rows_now_read_one_cell_a_token():
    path = ROOT / "configs/model/demo/tokenizer.json"
    before, after = _byte_level_only(path), Tokenizer.from_file(str(path))
    answer = render_sample("region_row", np.random.default_rng([0, 5]))["answers"][0]
    assert len(answer) == 3 and len(after.encode(answer).ids) == 3
    assert len(before.encode(answer).ids) < 3  # the pair merges the split retires
