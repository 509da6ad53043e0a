"""ArrCoc processor: one `<image>` token per image, pixel values at the SAM resolution.

Bad input fails here with a ValueError that names the problem and the sample, before any tensor reaches the
model: unreadable or truncated files, images too small or too large (checked from the header, before the pixels
are decoded), NaN/inf pixels, `<image>` tokens that do not match the images, and empty questions.
"""

import base64
import binascii
import io
import os
import urllib.request
import warnings
from typing import Unpack

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import ImageInput, PILImageResampling
from transformers.processing_utils import (
    AudioKwargs,
    ImagesKwargs,
    ProcessingKwargs,
    ProcessorMixin,
    TextKwargs,
    VideosKwargs,
)
from transformers.tokenization_utils_base import TextInput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The same chat with the question before the image in each turn ("What digit is red?\n<image>"). In a causal language
# model the visual tokens then see the question, so each could mark itself as relevant on the way in, and the answer
# position would look for marked tokens instead of matching the question against every token. Measured on the demo's
# reader stage it reads no better than the default (docs/demo_model.md, probe reader_question_first), so the default
# stays image first. A prompt layout is the same for every method; a checkpoint's processor stores the template it
# was trained with (chat_template.jinja).
QUESTION_FIRST_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '\\n' }}<image>{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)  # ('\\n' as an expression: the renderer's trim_blocks drops a newline that follows a tag)
PROMPT_LAYOUTS = {"image_first": CHAT_TEMPLATE, "question_first": QUESTION_FIRST_CHAT_TEMPLATE}


def prompt_layout_template(layout: str, image_token: str = "<image>") -> str:
    """The chat template of a prompt layout (`PROMPT_LAYOUTS`), with the tokenizer's image token in place."""
    if layout not in PROMPT_LAYOUTS:
        raise ValueError(f"prompt_layout must be one of {list(PROMPT_LAYOUTS)}, got {layout!r}.")
    return PROMPT_LAYOUTS[layout].replace("<image>", image_token)


# Modes whose values are not 8-bit: their own range is stretched to 8 bits instead of being clipped to white.
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Keys that omni-modal callers of `apply_chat_template` may pass along; empty or false values carry nothing here.
IGNORED_WHEN_EMPTY = ("audio_from_video_indices", "load_audio_from_video")
# `ImagesKwargs` options that have no meaning for ArrCoc's one fixed square canvas, with the value that is a no-op.
UNSUPPORTED_IMAGE_OPTIONS = {"crop_size": None, "do_center_crop": False, "pad_size": None, "default_to_square": True,
                             "input_data_format": None, "image_seq_length": None}


class ArrCocImagesKwargs(ImagesKwargs, total=False):
    """`ImagesKwargs` plus ArrCoc's own image options (see `ArrCocImageProcessor`)."""

    max_pixels: int | None
    min_side: int | None
    pad_value: int | float | None


class ArrCocProcessorKwargs(ProcessingKwargs, total=False):
    """The processor's options: tokenizer (`text_kwargs`) and image (`images_kwargs`) options, flat or nested.

    Video and audio options are accepted because `apply_chat_template` passes some of them on every call; they have
    nothing to act on (ArrCoc refuses video and audio inputs)."""

    images_kwargs: ArrCocImagesKwargs


class ArrCocImageProcessor(BaseImageProcessor):
    """Resize the longest side to `size`, pad to a square (bottom/right, as SAM), rescale, normalize.

    Accepts PIL images, paths, bytes, http(s) URLs, base64 strings, numpy HWC/CHW arrays and torch CHW tensors.
    RGBA/LA/palette images are composited on white, grayscale and CMYK converted, 16-bit and float images
    stretched from their own range, EXIF rotation applied: every input becomes an upright RGB page.

    Every option can be set at init and overridden per call (`image_processor(images, do_normalize=False)`, or
    through the processor, flat or in `images_kwargs`):

    Args:
        size: the SAM input resolution (the vision config's `image_size`): the side of the square output. An int,
            or `{"longest_edge": n}` / `{"height": n, "width": n}`.
        do_resize / resample: resize the longest side to `size` (PIL resampling filter, bicubic by default).
            Without resizing, the image must fit in `size` x `size`.
        do_pad / pad_value: pad to `size` x `size` at the bottom/right with `pad_value` (a fraction of full
            intensity, 1.0 = white paper), before rescaling. Without padding, the image must be square.
        do_rescale / rescale_factor: multiply the 8-bit values by `rescale_factor` (1/255 by default).
        do_normalize / image_mean / image_std: per-channel normalization.
        max_pixels: images with more pixels are refused before their pixels are decoded (decompression bombs).
        min_side: images with a side shorter than this are refused: there is nothing to read in them.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = ArrCocImagesKwargs

    def __init__(self, size=1024, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, max_pixels=64_000_000,
                 min_side=4, pad_value=1.0, do_resize=True, resample=PILImageResampling.BICUBIC, do_pad=True,
                 do_rescale=True, rescale_factor=1 / 255, do_normalize=True, **kwargs):
        super().__init__(**kwargs)
        self.size = _square_size(size)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.max_pixels = int(max_pixels)
        self.min_side = int(min_side)
        self.pad_value = float(pad_value)
        self.do_resize = bool(do_resize)
        self.resample = int(resample)
        self.do_pad = bool(do_pad)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)

    def __call__(self, images, **kwargs: Unpack[ArrCocImagesKwargs]) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess(self, images, **kwargs: Unpack[ArrCocImagesKwargs]) -> BatchFeature:
        """`images` (one or a list) -> `pixel_values` [N, 3, size, size]. Keyword options override the init ones."""
        return_tensors = kwargs.pop("return_tensors", "pt")
        options = self._options(kwargs)
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("No images were given.")
        size = options["size"]
        pixel_values = np.empty((len(images), 3, size, size), dtype=np.float32)
        for i, image in enumerate(images):
            self._to_array(self.load(image, i, max_pixels=options["max_pixels"], min_side=options["min_side"]),
                           options, i, out=pixel_values[i])
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    def _options(self, kwargs):
        """Per-call options over the init ones; anything ArrCoc cannot honour is an error, not silently ignored."""
        known = set(ArrCocImagesKwargs.__annotations__)
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"ArrCocImageProcessor got unexpected options {unknown}; it accepts {sorted(known)}.")
        for name, no_op in UNSUPPORTED_IMAGE_OPTIONS.items():
            if kwargs.get(name, no_op) not in (None, no_op):
                raise ValueError(
                    f"ArrCocImageProcessor does not support {name}={kwargs[name]!r}: every image becomes one "
                    "size x size page (resized on its longest side, then padded)."
                )
        if kwargs.get("do_convert_rgb") is False:
            raise ValueError("ArrCocImageProcessor always converts to RGB (the model reads 3-channel pages).")
        data_format = kwargs.get("data_format")
        if data_format is not None and str(getattr(data_format, "value", data_format)) != "channels_first":
            raise ValueError(f"ArrCocImageProcessor returns channels_first pixel values, got data_format={data_format!r}.")
        device = kwargs.get("device")
        if device is not None and str(device) != "cpu":
            raise ValueError(f"ArrCocImageProcessor runs on the CPU (PIL), got device={device!r}.")
        names = ("size", "do_resize", "resample", "do_pad", "pad_value", "do_rescale", "rescale_factor",
                 "do_normalize", "image_mean", "image_std", "max_pixels", "min_side")
        options = {name: kwargs[name] if kwargs.get(name) is not None else getattr(self, name) for name in names}
        options["size"] = _square_size(options["size"])
        for name in ("image_mean", "image_std"):
            value = options[name]
            options[name] = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
            if len(options[name]) != 3:
                raise ValueError(f"{name} needs one value per RGB channel (3), got {value!r}.")
        return options

    def load(self, image, index: int = 0, max_pixels=None, min_side=None) -> Image.Image:
        """Any accepted input -> an upright RGB PIL image, with checks; the size is checked before decoding."""
        if isinstance(image, (str, os.PathLike, bytes)):
            image = self._open(image, index)
        elif isinstance(image, torch.Tensor):
            image = _tensor_to_pil(image, index)
        elif isinstance(image, np.ndarray):
            image = _array_to_pil(image, index)
        elif not isinstance(image, Image.Image):
            raise ValueError(
                f"Image {index}: unsupported type {type(image).__name__}; pass PIL, numpy, torch, a path, bytes, "
                "a URL or a base64 string."
            )
        self._check_size(image.size, index, max_pixels, min_side)
        try:
            image.load()  # lazily opened files decode here, after the size check
            return _to_rgb(image, index)
        except (OSError, SyntaxError) as error:  # truncated files fail only when the pixels are decoded
            raise ValueError(f"Image {index} could not be decoded (corrupt or truncated file): {error}") from error

    def _open(self, source, index):
        source = _read_source(source, index)
        try:
            with warnings.catch_warnings():
                # PIL warns above its own limit; ours (`max_pixels`) is checked right after, from the header.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except Image.DecompressionBombError as error:
            raise ValueError(
                f"Image {index} is over PIL's decompression-bomb limit and was not decoded: {error}"
            ) from error
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise ValueError(f"Image {index} is not a readable image file: {error}") from error

    def _check_size(self, size, index, max_pixels=None, min_side=None):
        max_pixels = self.max_pixels if max_pixels is None else int(max_pixels)
        min_side = self.min_side if min_side is None else int(min_side)
        width, height = size
        if width * height > max_pixels:
            raise ValueError(
                f"Image {index} has {width}x{height} pixels, over the limit of {max_pixels} (max_pixels); it "
                "was refused before decoding (a decompression bomb, or a page to downscale first)."
            )
        if min(width, height) < min_side:
            raise ValueError(f"Image {index} is {width}x{height}; each side must be at least {min_side} px.")

    def _to_array(self, image: Image.Image, options=None, index: int = 0, out=None) -> np.ndarray:
        """One upright RGB page -> [3, size, size] float32 (into `out` when given): resized on its longest side,
        padded, rescaled and normalized. The page's bytes go through a table of what those steps make of each byte
        value per channel (`_pixel_values` on 0..255), so every pixel gets the value the steps would give it one by
        one, at a gather's cost (the per-pixel float steps were 1.3 ms a demo page, most of the processor's time)."""
        options = self._options({}) if options is None else options
        size = options["size"]
        if options["do_resize"]:
            scale = size / max(image.size)
            new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(new_size, Image.Resampling(options["resample"]))
        if image.width > size or image.height > size:
            raise ValueError(
                f"Image {index} is {image.width}x{image.height}, larger than the {size}x{size} canvas: resize it "
                "first or keep do_resize=True."
            )
        if not options["do_pad"] and (image.height, image.width) != (size, size):
            raise ValueError(
                f"Image {index} is {image.width}x{image.height} after resizing; without do_pad it must be "
                f"{size}x{size} (the model reads square pages)."
            )
        out = np.empty((3, size, size), dtype=np.float32) if out is None else out
        if options["do_pad"]:
            out[:] = _pixel_values(np.full((1, 3), options["pad_value"] * 255.0, dtype=np.float32), options).T[..., None]
        table = _pixel_values(np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1), options)  # [256, 3]
        page = np.asarray(image, dtype=np.uint8)  # [H, W, 3]: load() made it 8-bit RGB
        for channel in range(3):
            np.take(table[:, channel], page[..., channel], out=out[channel, : image.height, : image.width])
        return out


def _pixel_values(pixels: np.ndarray, options) -> np.ndarray:
    """Rescale and normalize float32 pixels [..., 3] (0..255) as the options say."""
    if options["do_rescale"]:
        # In float64 and back, as transformers' `rescale` does: with 1/255 this equals dividing by 255 in float32.
        pixels = (pixels.astype(np.float64) * options["rescale_factor"]).astype(np.float32)
    if options["do_normalize"]:
        mean = np.array(options["image_mean"], dtype=np.float32)
        std = np.array(options["image_std"], dtype=np.float32)
        pixels = (pixels - mean) / std
    return pixels


def _square_size(size) -> int:
    """ArrCoc's `size` (the side of the square canvas) from an int or a transformers size dict."""
    if isinstance(size, dict):
        sides = {size.get("longest_edge"), size.get("height"), size.get("width")} - {None}
        if len(sides) != 1 or set(size) - {"longest_edge", "height", "width"}:
            raise ValueError(
                f"ArrCoc pads every page to a square: size must be an int, {{'longest_edge': n}} or "
                f"{{'height': n, 'width': n}}, got {size!r}."
            )
        size = sides.pop()
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive int (the side of the square page), got {size!r}.")
    return int(size)


def _read_source(source, index):
    """Paths pass through; URLs and base64 strings become bytes (opened lazily, like files)."""
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=30) as response:
                return response.read()
        except OSError as error:
            raise ValueError(f"Image {index} could not be fetched from {source}: {error}") from error
    if isinstance(source, str) and not os.path.exists(source) and (source.startswith("data:") or len(source) > 256):
        try:
            return base64.b64decode(source.split(",", 1)[-1], validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"Image {index} is neither an existing path nor valid base64: {error}") from error
    return source


def _to_rgb(image: Image.Image, index: int) -> Image.Image:
    image = ImageOps.exif_transpose(image)  # phones store the rotation in EXIF; the page must be upright
    if image.mode in HIGH_DEPTH_MODES:
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(array.astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas become white paper, not the black that a plain convert("RGB") gives.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB") if image.mode != "RGB" else image
    except ValueError as error:
        raise ValueError(f"Image {index} has mode {image.mode}, which cannot be converted to RGB: {error}") from error


def _array_to_pil(array: np.ndarray, index: int) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or array.size == 0 or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"Image {index}: expected an HxW, HxWxC or CxHxW array (C = 1, 3 or 4), got {array.shape}.")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if not np.isfinite(array).all():
        raise ValueError(f"Image {index} contains NaN or infinite values.")
    if array.dtype != np.uint8:
        array = _scale_to_uint8(array, index)
    return Image.fromarray(array)


def _scale_to_uint8(array, index):
    """Floats in [0, 1] or [0, 255]; unsigned integers scaled from their own maximum (e.g. 16-bit scans)."""
    low, high = float(array.min()), float(array.max())
    if low < 0:
        raise ValueError(
            f"Image {index} has negative values (min {low:.3g}): it looks already normalized. Pass raw pixels "
            "(floats in [0, 1] or [0, 255], or integers), or give the model `pixel_values` directly."
        )
    if np.issubdtype(array.dtype, np.floating):
        if high > 255:
            raise ValueError(f"Image {index} has float values up to {high:.3g}; expected [0, 1] or [0, 255].")
        array = array * 255.0 if high <= 1.0 else array
    else:
        array = array.astype(np.float64) / max(1.0, high) * 255.0
    return np.clip(np.round(array), 0, 255).astype(np.uint8)


def _tensor_to_pil(tensor: torch.Tensor, index: int) -> Image.Image:
    tensor = tensor.detach().cpu()
    array = (tensor.float() if tensor.is_floating_point() else tensor).numpy()  # numpy has no bfloat16
    return _array_to_pil(array, index)


class ArrCocProcessor(ProcessorMixin):
    """Pairs the image processor with a tokenizer that has `<image>` as a special token.

    `processor(images=..., text=...)` needs exactly one `<image>` in each text per image, in order (ArrCoc takes
    one image per sample); use the chat template (`apply_chat_template`) to place it. Text without images gives
    a text-only batch. Texts are left-padded, as generation needs.

    Options go through transformers' kwargs merging (`ArrCocProcessorKwargs`): tokenizer options and image options
    (`ArrCocImageProcessor`'s), flat or nested in `text_kwargs` / `images_kwargs`, over the tokenizer's and image
    processor's own defaults. An option that is neither (e.g. the model's `budget`) is an error, not dropped.
    `<image>` is never expanded in the text (the allocator picks K in the model), so
    `return_text_replacement_offsets=True` gives an empty list per sample.
    """

    valid_processor_kwargs = ArrCocProcessorKwargs
    # The lowest-priority defaults (under the tokenizer's init kwargs and the caller's options): pad, on the left as
    # generation needs (kept left whatever side the tokenizer was saved with, unless the caller asks), to tensors.
    text_kwargs = {"padding": True, "padding_side": "left", "return_tensors": "pt"}

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token="<image>", **kwargs):
        self.image_token = image_token
        if chat_template is None:
            # The default template writes the processor's own image token (e.g. Qwen's <|image_pad|>).
            chat_template = prompt_layout_template("image_first", image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {image_token!r} token.")

    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | list[TextInput] | None = None,
        **kwargs: Unpack[ArrCocProcessorKwargs],
    ) -> BatchFeature:
        """Tokenize `text` (left-padded) and preprocess `images` (one per sample, matching its `<image>` token).

        `kwargs`: tokenizer options (`padding`, `max_length`, `truncation`, ...) and image options (`do_rescale`,
        `size`, `image_mean`, ...), flat or as `text_kwargs` / `images_kwargs`; `return_tensors` ("pt" by
        default); `return_mm_token_type_ids`; `return_text_replacement_offsets` (empty: `<image>` stays one
        token). `videos` / `audio` inputs are refused; video and audio options, which `apply_chat_template` passes
        along, have nothing to act on and are ignored.
        """
        if kwargs.get("videos") is not None or kwargs.get("audio") is not None:
            raise ValueError("ArrCoc reads images and text; videos and audio are not supported.")
        self._check_kwargs(kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("videos", "audio", *IGNORED_WHEN_EMPTY)}
        texts = self._check_texts(text)
        flat_images, images_per_sample = _split_images(images)
        merged = self._merge_kwargs(ArrCocProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs, images_kwargs = merged["text_kwargs"], merged["images_kwargs"]
        caller_options = (kwargs, kwargs.get("text_kwargs") or {}, kwargs.get("common_kwargs") or {})
        if not any("padding_side" in options for options in caller_options):
            text_kwargs["padding_side"] = "left"
        return_tensors = text_kwargs.pop("return_tensors", None)
        # transformers 5.24 mirrors these two between the flat options and text_kwargs; the tokenizer takes neither.
        return_mm_token_type_ids = text_kwargs.pop("return_mm_token_type_ids", merged.get("return_mm_token_type_ids"))
        return_offsets = text_kwargs.pop("return_text_replacement_offsets",
                                         merged.get("return_text_replacement_offsets"))
        encoded = self.tokenizer(texts, return_tensors=return_tensors, **text_kwargs)
        self._check_image_tokens(encoded, len(flat_images), images_per_sample)
        data = dict(encoded)
        if return_mm_token_type_ids:
            data["mm_token_type_ids"] = self.create_mm_token_type_ids(encoded["input_ids"])
        if return_offsets:
            data["text_replacement_offsets"] = [[] for _ in texts]  # no placeholder is expanded
        if flat_images:
            images_kwargs["return_tensors"] = return_tensors
            data.update(self.image_processor(flat_images, **images_kwargs))
        return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=self.skip_tensor_conversion)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        for messages in _conversations(conversation):
            if not any(_has_text(message) for message in messages):
                raise ValueError(
                    "The conversation has no text: ARR-COC chooses its visual tokens from the question, so every "
                    "conversation needs one (e.g. {'type': 'text', 'text': 'What is the total?'})."
                )
        return super().apply_chat_template(conversation, chat_template, **kwargs)

    def _check_texts(self, text):
        if text is None:
            raise ValueError("ArrCocProcessor needs text: the question (with one <image> per image).")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"text must be a string or a non-empty list of strings, got {type(text).__name__}.")
        for i, t in enumerate(texts):
            if not t.replace(self.image_token, "").strip():
                raise ValueError(
                    f"Sample {i} has an empty question ({t!r}): ARR-COC chooses its visual tokens from the question."
                )
        return texts

    def _check_kwargs(self, kwargs):
        """Every option must be a processor, tokenizer, image, video or audio option. transformers' merging would
        drop any other with a log line, and a misplaced model argument (`budget=`) must not vanish silently."""
        nested = {
            "text_kwargs": set(TextKwargs.__annotations__),
            "images_kwargs": set(ArrCocImagesKwargs.__annotations__)
            | set(getattr(self.image_processor, "valid_kwargs", ImagesKwargs).__annotations__),
            "videos_kwargs": set(VideosKwargs.__annotations__),
            "audio_kwargs": set(AudioKwargs.__annotations__),
        }
        flat = set(ArrCocProcessorKwargs.__annotations__) | {"common_kwargs", "videos", "audio", *IGNORED_WHEN_EMPTY}
        unknown = set(kwargs) - flat - set().union(*nested.values())
        for key in IGNORED_WHEN_EMPTY:
            if kwargs.get(key):
                raise ValueError(f"ArrCocProcessor does not support {key}={kwargs[key]!r}.")
        for key, valid in (*nested.items(), ("common_kwargs", set().union(*nested.values()))):
            value = kwargs.get(key)
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{key} must be a dict of options, got {type(value).__name__}.")
            unknown |= {f"{key}[{name!r}]" for name in (value or {}) if name not in valid}
        if unknown:
            raise ValueError(
                f"ArrCocProcessor got unexpected arguments {sorted(unknown)}. Tokenizer and image-processor options "
                "are accepted; `budget`, `selection` and generation options go to the model's forward/generate."
            )

    def _check_image_tokens(self, encoded, n_images, images_per_sample):
        counts = _image_token_counts(encoded, self.image_token_id)
        token = self.image_token
        if sum(counts) != n_images:
            hint = f" Put {token} where the image goes (e.g. '{token}\\nWhat is the total?') or use the chat format."
            raise ValueError(
                f"The texts contain {sum(counts)} {token} tokens ({counts} per sample) but {n_images} images were "
                f"given; each image needs exactly one {token} token.{hint if sum(counts) < n_images else ''}"
            )
        if images_per_sample is not None and images_per_sample != counts:
            raise ValueError(f"Images per sample {images_per_sample} do not match the {token} tokens per sample {counts}.")
        if n_images and any(c != 1 for c in counts):
            raise ValueError(
                f"Each sample needs exactly one {token} token when images are given (ArrCoc takes one image per "
                f"sample); found {counts} per sample."
            )

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]


def _split_images(images):
    """(flat list, images per sample or None). Pipelines and chat templates pass one list of images per sample."""
    if images is None:
        return [], None
    if not isinstance(images, (list, tuple)):
        return [images], None
    if any(isinstance(item, (list, tuple)) for item in images):
        groups = [list(item) if isinstance(item, (list, tuple)) else [item] for item in images]
        return [image for group in groups for image in group], [len(group) for group in groups]
    return list(images), None


def _image_token_counts(encoded, image_token_id):
    """Real image tokens per sample, counted on the ids: a truncated or escaped `<image>` does not count."""
    ids = encoded["input_ids"]
    ids = ids.tolist() if hasattr(ids, "tolist") else ids
    mask = encoded.get("attention_mask")
    mask = mask.tolist() if hasattr(mask, "tolist") else mask
    mask = mask if mask is not None else [[1] * len(row) for row in ids]
    return [sum(1 for t, m in zip(row, row_mask) if m and t == image_token_id) for row, row_mask in zip(ids, mask)]


def _conversations(conversation):
    """One conversation (a list of messages) or a batch of them -> a list of lists of messages. As in
    `ProcessorMixin`, a conversation may also be an object with `.messages`, and a message an object with `.content`."""
    conversation = getattr(conversation, "messages", conversation)
    if conversation and (isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages")):
        return [list(getattr(item, "messages", item)) for item in conversation]
    return [conversation]


def _field(item, name, default=None):
    """A message's or content block's field, whether it is a dict or an object with attributes."""
    return item.get(name, default) if isinstance(item, dict) else getattr(item, name, default)


def _has_text(message):
    content = _field(message, "content")
    if isinstance(content, str):
        return bool(content.strip())
    return any(_field(item, "type") == "text" and str(_field(item, "text", "") or "").strip()
               for item in content or [])


__all__ = ["ArrCocImageProcessor", "ArrCocImagesKwargs", "ArrCocProcessor", "ArrCocProcessorKwargs", "CHAT_TEMPLATE",
           "PROMPT_LAYOUTS", "QUESTION_FIRST_CHAT_TEMPLATE", "prompt_layout_template"]
