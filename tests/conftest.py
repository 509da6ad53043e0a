import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent  # on sys.path through setup.cfg's `pythonpath = .`
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread: on a shared 2-core machine, small ops with two threads ran 10-100x slower under load.
torch.set_num_threads(1)

TINY_PRESET = ROOT / "configs" / "model" / "tiny"


class ArrCocModelTester:
    """The tiny model's config (hidden 32, 2 layers; tools/make_presets.py) and inputs, in the transformers test
    style."""

    def __init__(self, batch_size=3, image_size=64, patch_size=8, vocab_size=99, image_token_id=5, budgets=(4, 16, 100)):
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.vocab_size = vocab_size
        self.image_token_id = image_token_id
        self.budgets = list(budgets)
        self.pad_token_id = 0

    @property
    def num_patches(self):
        return (self.image_size // self.patch_size) ** 2

    def get_config(self, **overrides):
        """The tiny model (tools/make_presets.py's one definition) at this tester's geometry, vocabulary and tiers."""
        from modeling_arrcoc import ArrCocConfig
        from tools.make_presets import tiny_parts, tiny_text_config

        text_config = dict(tiny_text_config(self.vocab_size, max_positions=512), pad_token_id=self.pad_token_id,
                           eos_token_id=2)
        kwargs = dict(**tiny_parts(self.image_size, self.patch_size), text_config=text_config, budgets=self.budgets,
                      image_token_id=self.image_token_id, visual_vocab_size=64)
        kwargs.update(overrides)
        return ArrCocConfig(**kwargs)

    def get_model(self, seed=0, **overrides):
        from modeling_arrcoc import ArrCocForConditionalGeneration

        torch.manual_seed(seed)
        return ArrCocForConditionalGeneration(self.get_config(**overrides)).eval()

    def prepare_inputs(self, seed=0, prompt_lengths=(3, 5, 4), answer_length=2):
        """Left-padded prompts with one <image> each, answers after them, labels -100 on prompt and padding."""
        generator = torch.Generator().manual_seed(seed)
        lengths = [p + 1 + answer_length for p in prompt_lengths[: self.batch_size]]
        width = max(lengths)
        input_ids = torch.full((self.batch_size, width), self.pad_token_id)
        labels = torch.full((self.batch_size, width), -100)
        for b, (prompt, length) in enumerate(zip(prompt_lengths, lengths)):
            tokens = torch.randint(6, self.vocab_size, (length,), generator=generator)
            tokens[1] = self.image_token_id
            input_ids[b, width - length:] = tokens
            labels[b, width - answer_length:] = tokens[-answer_length:]
        attention_mask = (input_ids != self.pad_token_id).long()
        pixel_values = torch.randn(self.batch_size, 3, self.image_size, self.image_size, generator=generator)
        return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, labels=labels)


@pytest.fixture
def tester():
    return ArrCocModelTester()


@pytest.fixture(scope="module")
def tiny():
    """A random-weight model of the shipped tiny preset, with its processor."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    import modeling_arrcoc  # noqa: F401  (registers the Auto classes)

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(TINY_PRESET)).eval()
    return model, AutoProcessor.from_pretrained(TINY_PRESET)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on a shared 2-core machine two threads make tiny ops ~100x slower under load.
    Modules that train use it for every test: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
