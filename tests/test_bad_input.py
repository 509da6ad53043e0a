"""Bad input gives a ValueError that names the problem, before any tensor reaches torch: never a crash deep
inside the model, a silent wrong answer or a hang."""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from transformers import AutoConfig, AutoProcessor

from conftest import TINY_PRESET
from modeling_arrcoc import ArrCocForConditionalGeneration

SIZE = 64  # the tiny preset's image size
WHITE = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
RED = (np.array([1.0, 0.0, 0.0]) - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def processor():
    return AutoProcessor.from_pretrained(TINY_PRESET)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ArrCocForConditionalGeneration(AutoConfig.from_pretrained(TINY_PRESET)).eval()


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_claiming_size(width, height):
    """A valid PNG header that claims width x height, followed by the pixel data of an 8x8 image."""
    data = bytearray(png_bytes(Image.new("L", (8, 8))))
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts after signature (8) + length + type (8)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def noise_png(size=200):
    return png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)))


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: calls.append(self.size) or original(self))
    return calls


def test_corrupt_and_truncated_files(processor, tmp_path):
    ip = processor.image_processor
    with pytest.raises(ValueError, match="Image 0 is not a readable image file"):
        ip(b"definitely not an image")
    truncated = noise_png()[:2000]
    with pytest.raises(ValueError, match="could not be decoded \\(corrupt or truncated file\\)"):
        ip(truncated)
    path = tmp_path / "truncated.png"
    path.write_bytes(truncated)
    with pytest.raises(ValueError, match="Image 1 could not be decoded"):
        processor(images=[Image.new("RGB", (8, 8)), str(path)], text=["<image>a?", "<image>b?"])
    with pytest.raises(ValueError, match="No such file"):
        ip(str(tmp_path / "missing.png"))


@pytest.mark.parametrize("image", [Image.new("RGB", (0, 0)), Image.new("RGB", (1, 1)), Image.new("L", (200, 2)),
                                   np.zeros((3, 300, 1), np.uint8)], ids=["0x0", "1x1", "200x2", "np-3x300"])
def test_zero_sized_and_one_pixel_images(processor, image):
    with pytest.raises(ValueError, match="each side must be at least 4 px"):
        processor.image_processor(image)


def test_empty_array(processor):
    with pytest.raises(ValueError, match="expected an HxW"):
        processor.image_processor(np.zeros((0, 5, 3), np.uint8))


def test_pixel_limit_is_checked_before_decoding(processor, count_decodes):
    # 100M pixels claimed by the header; decoding would fail (truncated) or eat ~300 MB, so the error proves
    # the refusal came from the header alone.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL's warning must not escape either
        with pytest.raises(ValueError, match="10000x10000 pixels, over the limit of 64000000"):
            processor.image_processor(png_claiming_size(10_000, 10_000))
    assert count_decodes == []
    small_limit = type(processor.image_processor)(size=SIZE, max_pixels=1000)
    with pytest.raises(ValueError, match="over the limit of 1000"):
        small_limit(png_bytes(Image.new("RGB", (40, 40))))
    assert count_decodes == []
    processor.image_processor(png_bytes(Image.new("RGB", (40, 40))))
    assert set(count_decodes) == {(40, 40)}, "the spy sees a decode when one happens"


def test_pil_decompression_bomb_error_is_guarded(processor):
    # Past twice PIL's own limit, Image.open itself raises DecompressionBombError (not an OSError).
    with pytest.raises(ValueError, match="decompression-bomb limit"):
        processor.image_processor(png_claiming_size(20_000, 20_000))


def rgba_half_transparent():
    array = np.zeros((SIZE, SIZE, 4), np.uint8)
    array[:, SIZE // 2:] = (255, 0, 0, 255)  # right half opaque red, left half fully transparent (black)
    return Image.fromarray(array, mode="RGBA")


def test_rgba_and_palette_transparency_become_white_paper(processor):
    rgba = rgba_half_transparent()
    palette = rgba.convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))
    for image in (rgba, palette, rgba.convert("LA")):
        pixels = processor.image_processor(image)["pixel_values"][0].numpy()
        np.testing.assert_allclose(pixels[:, :, 0], np.broadcast_to(WHITE[:, None], (3, SIZE)), atol=1e-4)
    np.testing.assert_allclose(processor.image_processor(rgba)["pixel_values"][0, :, :, -1].numpy(),
                               np.broadcast_to(RED[:, None], (3, SIZE)), atol=1e-4)


def test_sixteen_bit_grayscale_and_other_modes_are_converted(processor, tmp_path):
    gradient = (np.tile(np.arange(SIZE, dtype=np.uint16), (SIZE, 1)) * 1000)  # 0..63000: past 8 bits
    path = tmp_path / "scan16.png"
    Image.fromarray(gradient).save(path)
    gray = Image.fromarray((np.arange(SIZE * SIZE) % 256).astype(np.uint8).reshape(SIZE, SIZE), mode="L")
    images = [Image.fromarray(gradient), str(path), gradient, gray, Image.new("P", (9, 7)), Image.new("CMYK", (9, 7)),
              Image.new("1", (9, 7)), Image.new("F", (9, 7)), torch.rand(3, 20, 30, dtype=torch.bfloat16)]
    pixels = processor.image_processor(images)["pixel_values"]
    assert pixels.shape == (len(images), 3, SIZE, SIZE) and torch.isfinite(pixels).all()
    for row in pixels[:3]:  # 16-bit: the gradient survives (stretched from its own range, not clipped to white)
        assert (row[0, 0].diff() >= 0).all() and row[0, 0, -1] - row[0, 0, 0] > 3.5
    std, mean = torch.tensor([0.229, 0.224, 0.225])[:, None, None], torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    gray_rgb = pixels[3] * std + mean  # grayscale -> three equal channels
    torch.testing.assert_close(gray_rgb[0], gray_rgb[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(gray_rgb[0], gray_rgb[2], atol=1e-5, rtol=0)


def test_nan_and_inf_pixels(processor, model):
    inputs = processor(images=Image.new("RGB", (SIZE, SIZE)), text="<image>What is it?")
    for bad in (float("nan"), float("inf")):
        pixel_values = inputs["pixel_values"].clone()
        pixel_values[0, 1, 2, 3] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            model(**{**inputs, "pixel_values": pixel_values})
        with pytest.raises(ValueError, match="NaN or infinite"):
            model.generate(**{**inputs, "pixel_values": pixel_values}, max_new_tokens=2)
        array = np.ones((8, 8, 3), np.float32)
        array[0, 0, 0] = bad
        with pytest.raises(ValueError, match="Image 0 contains NaN or infinite values"):
            processor.image_processor(array)


def test_already_normalized_arrays_are_refused(processor):
    with pytest.raises(ValueError, match="looks already normalized"):
        processor.image_processor(np.random.default_rng(0).standard_normal((3, 16, 16)).astype(np.float32))
    # [0, 255] floats are pixels, not 255x-overexposed [0, 1] values.
    scaled = processor.image_processor(np.full((8, 8, 3), 255.0, np.float32))["pixel_values"]
    unit = processor.image_processor(np.ones((8, 8, 3), np.float32))["pixel_values"]
    assert torch.equal(scaled, unit)


def test_more_image_tokens_than_images_and_the_reverse(processor):
    image = Image.new("RGB", (16, 16))
    with pytest.raises(ValueError, match="2 <image> tokens \\(\\[2\\] per sample\\) but 1 images"):
        processor(images=image, text="<image><image>What?")
    with pytest.raises(ValueError, match="0 <image> tokens .* but 1 images.*Put <image> where the image goes"):
        processor(images=image, text="What?")
    with pytest.raises(ValueError, match="1 <image> tokens .* but 0 images"):
        processor(text="<image>What?")
    with pytest.raises(ValueError, match="2 <image> tokens .* but 3 images"):
        processor(images=[image] * 3, text=["<image>a?", "<image>b?"])
    with pytest.raises(ValueError, match="Images per sample \\[2, 0\\] do not match .* \\[1, 1\\]"):
        processor(images=[[image, image], []], text=["<image>a?", "<image>b?"])
    with pytest.raises(ValueError, match="exactly one <image> token when images are given"):
        processor(images=[image, image], text=["<image><image>a?", "b?"])
    # A truncated prompt that loses its <image> is caught on the ids, not silently mis-spliced.
    with pytest.raises(ValueError, match="0 <image> tokens"):
        processor(images=image, text="word " * 20 + "<image>", truncation=True, max_length=5)


def test_empty_question(processor):
    image = Image.new("RGB", (16, 16))
    for text in ("", "   ", "<image>", "<image>\n "):
        with pytest.raises(ValueError, match="empty question"):
            processor(images=image if "<image>" in text else None, text=text)
    with pytest.raises(ValueError, match="Sample 1 has an empty question"):
        processor(images=[image, image], text=["<image>ok?", "<image>"])
    with pytest.raises(ValueError, match="conversation has no text"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "image", "image": image}]}],
                                      add_generation_prompt=True, tokenize=True, return_dict=True)


def test_question_longer_than_the_context(processor, model):
    limit = model.config.text_config.max_position_embeddings
    inputs = processor(images=Image.new("RGB", (SIZE, SIZE)), text="<image>" + " word" * limit)
    calls = []
    hook = model.model.language_model.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match=f"context is {limit} \\(text_config.max_position_embeddings\\)"):
            model(**inputs, budget=4)
        with pytest.raises(ValueError, match=f"context is {limit}"):
            model.generate(**inputs, budget=4, max_new_tokens=2)
        fits = processor(images=Image.new("RGB", (SIZE, SIZE)), text="<image>" + " word" * (limit // 2))
        with pytest.raises(ValueError, match="\\+ max_new_tokens 2000"):
            model.generate(**fits, budget=4, max_new_tokens=2000)
    finally:
        hook.remove()
    assert calls == [], "refused before the language model ran"


def test_unknown_budget(processor, model):
    inputs = processor(images=Image.new("RGB", (SIZE, SIZE)), text="<image>What is it?")
    for bad in ("big", 7, 2.5, [4, 16]):
        with pytest.raises(ValueError, match="Unknown budget|per-sample budget"):
            model(**inputs, budget=bad)
        with pytest.raises(ValueError, match="Unknown budget|per-sample budget"):
            model.generate(**inputs, budget=bad, max_new_tokens=2)


def test_images_of_different_sizes_share_one_batch(processor, model):
    images = [Image.new("RGB", (300, 100), "red"), Image.new("RGB", (50, 200), "red"), Image.new("RGB", (64, 64), "red")]
    inputs = processor(images=images, text=["<image>a?", "<image>bb?", "<image>ccc?"])
    pixels = inputs["pixel_values"]
    assert pixels.shape == (3, 3, SIZE, SIZE)
    white = torch.tensor(WHITE, dtype=pixels.dtype)[:, None]
    torch.testing.assert_close(pixels[0, :, -1], white.expand(3, SIZE))  # wide page: padded at the bottom
    torch.testing.assert_close(pixels[1, :, :, -1], white.expand(3, SIZE))  # tall page: padded on the right
    assert not torch.allclose(pixels[2, :, -1], white.expand(3, SIZE)), "a square page fills the canvas"
    assert torch.isfinite(model(**inputs, budget=4).logits).all()


def test_pixel_values_at_the_wrong_resolution(processor, model):
    inputs = processor(images=Image.new("RGB", (SIZE, SIZE)), text="<image>What is it?")
    with pytest.raises(ValueError, match="doesn't match model"):
        model(**{**inputs, "pixel_values": torch.zeros(1, 3, SIZE // 2, SIZE // 2)})


def test_unsupported_arguments(processor):
    image = Image.new("RGB", (16, 16))
    with pytest.raises(ValueError, match="unexpected arguments \\['budget'\\]"):
        processor(images=image, text="<image>a?", budget=16)
    with pytest.raises(ValueError, match="videos and audio are not supported"):
        processor(text="a?", videos=[np.zeros((2, 8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="unsupported type"):
        processor.image_processor(None)


def test_every_source_of_the_same_page_gives_the_same_pixels(processor, tmp_path):
    import base64

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    data = png_bytes(image)
    (tmp_path / "page.png").write_bytes(data)
    encoded = base64.b64encode(data).decode()
    sources = [image, data, str(tmp_path / "page.png"), tmp_path / "page.png", encoded, "data:image/png;base64," + encoded,
               np.asarray(image), torch.from_numpy(np.array(image)).permute(2, 0, 1)]
    pixels = processor.image_processor(sources)["pixel_values"]
    for i in range(1, len(sources)):
        assert torch.equal(pixels[i], pixels[0]), i
    with pytest.raises(ValueError, match="neither an existing path nor valid base64"):
        processor.image_processor("data:image/png;base64,@@not-base64@@")
