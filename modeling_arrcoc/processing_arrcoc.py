"""ArrCoc processor: one `<image>` token per image, pixel values at the SAM resolution."""

import io
import os

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin

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


class ArrCocImageProcessor(BaseImageProcessor):
    """Resize the longest side to `size`, pad to a square (bottom/right, as SAM), normalize.

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
        return self.preprocess(images, return_tensors=return_tensors)

    def preprocess(self, images, return_tensors="pt", **kwargs):
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("No images were given.")
        arrays = [self._to_array(self.load(image, i)) for i, image in enumerate(images)]
        pixel_values = np.stack(arrays)
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    def load(self, image, index: int = 0) -> Image.Image:
        """Any accepted input (path, bytes, PIL, numpy HWC, torch CHW) -> an RGB PIL image, with checks."""
        if isinstance(image, (str, os.PathLike, bytes)):
            image = self._open(image, index)
        elif isinstance(image, torch.Tensor):
            image = _tensor_to_pil(image, index)
        elif isinstance(image, np.ndarray):
            image = _array_to_pil(image, index)
        elif not isinstance(image, Image.Image):
            raise ValueError(f"Image {index}: unsupported type {type(image).__name__}; pass PIL, numpy, torch or a path.")
        self._check_size(image.size, index)
        try:
            return _to_rgb(image)
        except (OSError, SyntaxError) as error:  # truncated files fail only when the pixels are decoded
            raise ValueError(f"Image {index} could not be decoded (corrupt or truncated file): {error}") from error

    def _open(self, source, index):
        try:
            return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"Image {index} is not a readable image file: {error}") from error

    def _check_size(self, size, index):
        width, height = size
        if width * height > self.max_pixels:
            raise ValueError(f"Image {index} has {width}x{height} pixels, over the limit of {self.max_pixels}.")
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


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float images: stretch their own range to 8 bits rather than clipping to white.
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(array.astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return ImageOps.exif_transpose(image).convert("RGB") if image.mode != "RGB" else image


def _array_to_pil(array: np.ndarray, index: int) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or array.size == 0:
        raise ValueError(f"Image {index}: expected an HxW or HxWxC array, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"Image {index} contains NaN or infinite values.")
    if array.dtype != np.uint8:
        # Floats are taken as [0, 1]; other integer types (e.g. uint16) are scaled from their own range.
        array = array * 255.0 if np.issubdtype(array.dtype, np.floating) else array / max(1, array.max()) * 255.0
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _tensor_to_pil(tensor: torch.Tensor, index: int) -> Image.Image:
    array = tensor.detach().cpu().numpy()
    if array.ndim == 3 and array.shape[0] in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    return _array_to_pil(array, index)


class ArrCocProcessor(ProcessorMixin):
    """Pairs the image processor with a tokenizer that has `<image>` as a special token.

    `processor(images=..., text=...)` needs one `<image>` in each text per image, in order; use the chat
    template (`apply_chat_template`) to place it. Text without images gives a text-only batch.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token="<image>", **kwargs):
        self.image_token = image_token
        if chat_template is None:
            chat_template = CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {image_token!r} token.")

    def __call__(self, images=None, text=None, return_tensors="pt", padding=True, **kwargs):
        if text is None:
            raise ValueError("ArrCocProcessor needs text: the question (with one <image> per image).")
        texts = [text] if isinstance(text, str) else list(text)
        images = None if images is None else (list(images) if isinstance(images, (list, tuple)) else [images])
        images = _flatten_nested(images)
        self._check_image_tokens(texts, images)
        kwargs.setdefault("padding_side", "left")
        encoded = self.tokenizer(texts, return_tensors=return_tensors, padding=padding, **kwargs)
        data = dict(encoded)
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors))
        return BatchFeature(data, tensor_type=return_tensors)

    def _check_image_tokens(self, texts, images):
        counts = [t.count(self.image_token) for t in texts]
        if any(not t.strip() for t in texts):
            raise ValueError("Empty text: every sample needs a question.")
        n_images = 0 if images is None else len(images)
        if sum(counts) != n_images:
            raise ValueError(
                f"The texts contain {sum(counts)} {self.image_token} tokens ({counts} per sample) but "
                f"{n_images} images were given; each image needs exactly one {self.image_token} token."
            )

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]


def _flatten_nested(images):
    """Pipelines pass one list of images per sample; the model takes one image per sample, in order."""
    if images is None:
        return None
    flat = []
    for item in images:
        flat.extend(item if isinstance(item, (list, tuple)) else [item])
    return flat


__all__ = ["ArrCocImageProcessor", "ArrCocProcessor", "CHAT_TEMPLATE"]
