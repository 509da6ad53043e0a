"""ArrCocProcessor options through transformers' kwargs merging, and ArrCocImageProcessor's image options at init
and per call (issue #15, P1-P5). Bad inputs and their errors are in test_bad_input.py."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from conftest import TINY_PRESET
from modeling_arrcoc.processing_arrcoc import ArrCocImageProcessor, ArrCocProcessorKwargs, prompt_layout_template

SIZE = 64


@pytest.fixture(scope="module")
def processor():
    return AutoProcessor.from_pretrained(TINY_PRESET)


def page(seed=0, shape=(30, 50)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8))


def reference_pixels(image, size=SIZE, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """The image processor's default pipeline as first written: resize, /255, pad with white, normalize."""
    scale = size / max(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resized = np.asarray(image.resize(new_size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    canvas = np.full((size, size, 3), 1.0, dtype=np.float32)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    canvas = (canvas - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return canvas.transpose(2, 0, 1)


def test_default_pixels_are_unchanged(processor):
    images = [page(0), page(1, (70, 20)), page(2, (64, 64)), Image.new("RGB", (9, 5), "white")]
    pixels = processor.image_processor(images)["pixel_values"].numpy()
    for i, image in enumerate(images):
        assert np.array_equal(pixels[i], reference_pixels(image)), i  # bit for bit


def test_byte_table_gives_every_pixel_its_own_value_under_any_options():
    """The processor maps bytes through a table of what rescale and normalize make of each value: the same values,
    bit for bit, as the float steps applied pixel by pixel, with other factors, means, stds and padding too."""
    options = dict(rescale_factor=0.37, image_mean=[0.1, -0.2, 0.3], image_std=[0.7, 1.3, 0.05], pad_value=0.25)
    image = page(3, (40, 17))
    pixels = ArrCocImageProcessor(size=SIZE)(image, **options)["pixel_values"][0].numpy()
    scale = SIZE / max(image.size)
    resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    canvas = np.full((SIZE, SIZE, 3), 0.25 * 255.0, dtype=np.float32)
    canvas[: resized.height, : resized.width] = np.asarray(resized, dtype=np.float32)
    canvas = (canvas.astype(np.float64) * 0.37).astype(np.float32)
    canvas = (canvas - np.array(options["image_mean"], np.float32)) / np.array(options["image_std"], np.float32)
    assert np.array_equal(pixels, canvas.transpose(2, 0, 1))


def test_image_options_at_init_and_per_call(processor):
    image = page()
    raw = ArrCocImageProcessor(size=SIZE, do_normalize=False)(image)["pixel_values"]
    assert raw.min() >= 0 and raw.max() <= 1 and raw[0, :, -1, -1].eq(1.0).all()  # white padding, unnormalized
    negative = ArrCocImageProcessor(size=SIZE, do_rescale=True, rescale_factor=-1.0)(image)["pixel_values"]
    assert negative.mean() <= 0
    # Per-call values override the init ones.
    default = ArrCocImageProcessor(size=SIZE)
    assert torch.equal(default(image, do_normalize=False)["pixel_values"], raw)
    assert torch.equal(ArrCocImageProcessor(size=SIZE, do_normalize=False)(image, do_normalize=True)["pixel_values"],
                       default(image)["pixel_values"])
    assert default(image, size=32)["pixel_values"].shape == (1, 3, 32, 32)
    assert default(image, size={"longest_edge": 32})["pixel_values"].shape == (1, 3, 32, 32)
    unscaled = default(image, do_rescale=False, do_normalize=False)["pixel_values"]
    assert unscaled.max() == 255 and unscaled[0, :, -1, -1].eq(255).all()  # padding follows the rescale
    gray = default(image, image_mean=0.5, image_std=0.5, pad_value=0.0)["pixel_values"]
    assert gray[0, :, -1, -1].eq(-1.0).all()
    square = default(page(3, (40, 40)), do_pad=False)["pixel_values"]
    assert square.shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="without do_pad it must be 64x64"):
        default(image, do_pad=False)
    with pytest.raises(ValueError, match="larger than the 16x16 canvas"):
        default(image, do_resize=False, size=16)
    with pytest.raises(ValueError, match="does not support crop_size"):
        default(image, crop_size={"height": 8, "width": 8})
    with pytest.raises(ValueError, match="unexpected options \\['budget'\\]"):
        default(image, budget=4)
    with pytest.raises(ValueError, match="pads every page to a square"):
        default(image, size={"height": 32, "width": 48})


def test_image_options_through_the_processor(processor):
    image, text = page(), "<image>\nWhat is the total?"
    expected = processor.image_processor(image, do_rescale=True, rescale_factor=-1.0)["pixel_values"]
    flat = processor(images=image, text=text, do_rescale=True, rescale_factor=-1.0)
    nested = processor(images=image, text=text, images_kwargs={"do_rescale": True, "rescale_factor": -1.0})
    assert torch.equal(flat["pixel_values"], expected) and torch.equal(nested["pixel_values"], expected)
    with pytest.raises(ValueError, match="passed two times"):
        processor(images=image, text=text, images_kwargs={"rescale_factor": -1.0}, rescale_factor=-1.0)
    # Tokenizer options, flat or nested, over the processor's defaults (left padding, "pt").
    batch = processor(images=[image, image], text=[text, "<image> Who signed this page at the bottom?"],
                      text_kwargs={"padding": "max_length", "max_length": 40})
    assert batch["input_ids"].shape == (2, 40) and batch["attention_mask"][:, 0].eq(0).all()
    listed = processor(images=image, text=text, return_tensors=None)
    assert isinstance(listed["input_ids"], list)
    assert processor(images=image, text=text, return_tensors="np")["pixel_values"].dtype == np.float32


def test_model_arguments_are_refused_not_dropped(processor):
    image, text = page(), "<image>a?"
    for kwargs in ({"budget": 16}, {"text_kwargs": {"budget": 16}}, {"common_kwargs": {"selection": "uniform"}}):
        with pytest.raises(ValueError, match="unexpected arguments .*go to the model's forward/generate"):
            processor(images=image, text=text, **kwargs)
    with pytest.raises(ValueError, match="videos and audio are not supported"):
        processor(text="a?", audio=[np.zeros(1600, np.float32)])


def test_chat_template_kwargs_are_accepted(processor):
    """apply_chat_template passes video options (and offset requests) on every call: accepted, and unused."""
    chat = [{"role": "user", "content": [{"type": "image", "image": page()}, {"type": "text", "text": "Total?"}]}]
    plain = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    framed = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           processor_kwargs={"num_frames": 2, "fps": None})
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(plain[key], framed[key]), key
    out = processor(images=[page(), page(1)], text=["<image> a?", "b <image>?"], return_text_replacement_offsets=True,
                    return_mm_token_type_ids=True, do_sample_frames=False)
    assert out["text_replacement_offsets"] == [[], []]  # <image> is never expanded
    types = out["mm_token_type_ids"]
    types = torch.as_tensor(types)
    assert torch.equal(types == 1, out["input_ids"] == processor.image_token_id)
    assert set(ArrCocProcessorKwargs.__annotations__["images_kwargs"].__annotations__) >= {"max_pixels", "pad_value"}


def test_chat_messages_as_objects(processor):
    @dataclasses.dataclass
    class Message:
        role: str
        content: list

    @dataclasses.dataclass
    class TextBlock:
        text: str
        type: str = "text"

    objects = [Message("user", [{"type": "image"}, TextBlock("What is the total?")])]
    dicts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the total?"}]}]
    assert processor.apply_chat_template(objects, tokenize=False) == processor.apply_chat_template(dicts, tokenize=False)
    with pytest.raises(ValueError, match="conversation has no text"):
        processor.apply_chat_template([Message("user", [{"type": "image"}, TextBlock("  ")])])


def test_question_first_prompt_layout(processor, tmp_path):
    """The question-first chat template puts each turn's question before its image, saves with the processor, and
    yields the same tokens as the default layout apart from where the image token sits."""
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What digit is red?"}]}]
    image_first = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    question_first = AutoProcessor.from_pretrained(TINY_PRESET)
    question_first.chat_template = prompt_layout_template("question_first", question_first.image_token)
    text = question_first.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    image = question_first.image_token
    assert text.index("What digit is red?") < text.index(image) and text.count(image) == 1
    assert image_first.index(image) < image_first.index("What digit is red?")
    assert text == f"<|im_start|>user\nWhat digit is red?\n{image}<|im_end|>\n<|im_start|>assistant\n"
    assert sorted(text) == sorted(image_first)  # the same characters, the image moved
    later_turn = [{"role": "user", "content": [{"type": "text", "text": "What digit is blue?"}]}]
    assert question_first.apply_chat_template(later_turn, tokenize=False) == processor.apply_chat_template(
        later_turn, tokenize=False)  # turns without an image do not change
    question_first.save_pretrained(tmp_path)
    assert AutoProcessor.from_pretrained(tmp_path).apply_chat_template(
        chat, add_generation_prompt=True, tokenize=False) == text
    with pytest.raises(ValueError, match="prompt_layout must be one of"):
        prompt_layout_template("image_last")
