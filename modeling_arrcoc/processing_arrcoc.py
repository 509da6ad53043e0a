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

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin, TextKwargs

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

# Modes whose values are not 8-bit: their own range is stretched to 8 bits instead of being clipped to white.
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Processor-level keys that `apply_chat_template` may pass along; empty or false values carry nothing for ArrCoc.
IGNORED_WHEN_EMPTY = ("images_kwargs", "videos_kwargs", "audio_kwargs", "audio_from_video_indices",
                      "load_audio_from_video", "return_mm_token_type_ids", "return_text_replacement_offsets")


class ArrCocImageProcessor(BaseImageProcessor):
    """Resize the longest side to `size`, pad to a square (bottom/right, as SAM), normalize.

    Accepts PIL images, paths, bytes, http(s) URLs, base64 strings, numpy HWC/CHW arrays and torch CHW tensors.
    RGBA/LA/palette images are composited on white, grayscale and CMYK converted, 16-bit and float images
    stretched from their own range, EXIF rotation applied: every input becomes an upright RGB page.

    Args:
        size: the SAM input resolution (the vision config's `image_size`).
        image_mean / image_std: per-channel normalization.
        max_pixels: images with more pixels are refused before their pixels are decoded (decompression bombs).
        min_side: images with a side shorter than this are refused: there is nothing to read in them.
        pad_value: fill of the padded area, in [0, 1] before normalization.
    """

    model_input_names = ["pixel_values"]

    def __init__(self, size=1024, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, max_pixels=64_000_000,
                 min_side=4, pad_value=1.0, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.max_pixels = int(max_pixels)
        self.min_side = int(min_side)
        self.pad_value = float(pad_value)

    def __call__(self, images, return_tensors="pt", **kwargs):
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def preprocess(self, images, return_tensors="pt", **kwargs):
        if kwargs:
            raise ValueError(f"ArrCocImageProcessor takes no per-call options; got {sorted(kwargs)}. Set them at init.")
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("No images were given.")
        arrays = [self._to_array(self.load(image, i)) for i, image in enumerate(images)]
        pixel_values = np.stack(arrays)
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    def load(self, image, index: int = 0) -> Image.Image:
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
        self._check_size(image.size, index)
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

    def _check_size(self, size, index):
        width, height = size
        if width * height > self.max_pixels:
            raise ValueError(
                f"Image {index} has {width}x{height} pixels, over the limit of {self.max_pixels} (max_pixels); it "
                "was refused before decoding (a decompression bomb, or a page to downscale first)."
            )
        if min(width, height) < self.min_side:
            raise ValueError(f"Image {index} is {width}x{height}; each side must be at least {self.min_side} px.")

    def _to_array(self, image: Image.Image) -> np.ndarray:
        scale = self.size / max(image.size)
        new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        resized = np.asarray(image.resize(new_size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
        canvas = np.full((self.size, self.size, 3), self.pad_value, dtype=np.float32)
        canvas[: resized.shape[0], : resized.shape[1]] = resized
        canvas = (canvas - np.array(self.image_mean, dtype=np.float32)) / np.array(self.image_std, dtype=np.float32)
        return canvas.transpose(2, 0, 1)


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
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token="<image>", **kwargs):
        self.image_token = image_token
        if chat_template is None:
            # The default template writes the processor's own image token (e.g. Qwen's <|image_pad|>).
            chat_template = CHAT_TEMPLATE.replace("<image>", image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {image_token!r} token.")

    def __call__(self, images=None, text=None, videos=None, audio=None, return_tensors="pt", **kwargs):
        if videos is not None or audio is not None:
            raise ValueError("ArrCoc reads images and text; videos and audio are not supported.")
        texts = self._check_texts(text)
        flat_images, images_per_sample = _split_images(images)
        text_kwargs = self._text_kwargs(kwargs)
        encoded = self.tokenizer(texts, return_tensors=return_tensors, **text_kwargs)
        self._check_image_tokens(encoded, len(flat_images), images_per_sample)
        data = dict(encoded)
        if flat_images:
            data.update(self.image_processor(flat_images, return_tensors=return_tensors))
        return BatchFeature(data, tensor_type=return_tensors)

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

    def _text_kwargs(self, kwargs):
        """Tokenizer options, flat or in `text_kwargs`; anything unknown is an error, not silently dropped."""
        kwargs = dict(kwargs)
        text_kwargs = {**kwargs.pop("text_kwargs", {}), **kwargs.pop("common_kwargs", {})}
        for key in IGNORED_WHEN_EMPTY:
            if kwargs.get(key):
                raise ValueError(f"ArrCocProcessor does not support {key}={kwargs[key]!r}.")
            kwargs.pop(key, None)
        unknown = set(kwargs) - set(TextKwargs.__annotations__)
        if unknown:
            raise ValueError(
                f"ArrCocProcessor got unexpected arguments {sorted(unknown)}. Tokenizer options are accepted; "
                "`budget`, `selection` and generation options go to the model's forward/generate."
            )
        text_kwargs.update(kwargs)
        text_kwargs.pop("return_tensors", None)
        text_kwargs.setdefault("padding", True)
        text_kwargs.setdefault("padding_side", "left")
        return text_kwargs

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
    """One conversation (a list of messages) or a batch of them -> a list of conversations."""
    if conversation and isinstance(conversation[0], (list, tuple)):
        return list(conversation)
    return [conversation]


def _has_text(message):
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return bool(content.strip())
    return any(isinstance(item, dict) and item.get("type") == "text" and str(item.get("text", "")).strip()
               for item in content or [])


__all__ = ["ArrCocImageProcessor", "ArrCocProcessor", "CHAT_TEMPLATE"]
