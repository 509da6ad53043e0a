"""Answer-region supervision: which patches hold the answer.

The attention-alignment loss pulls the allocator's patch scores toward the answer's box; a probe found this
signal is what bootstraps the allocator while the reader is still at chance (docs/design.md, "What learns here").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _pair(size) -> tuple:
    # An int is a square image; a pair is (height, width), the order of pixel_values.
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def _rasterise(boxes: Sequence, height: int, width: int) -> np.ndarray:
    """Union of boxes as a pixel mask; a pixel is inside when its centre is (so adjacent boxes never overlap)."""
    mask = np.zeros((height, width), bool)
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        cols = slice(max(int(np.ceil(min(x0, x1) - 0.5)), 0), max(int(np.ceil(max(x0, x1) - 0.5)), 0))
        rows = slice(max(int(np.ceil(min(y0, y1) - 0.5)), 0), max(int(np.ceil(max(y0, y1) - 0.5)), 0))
        mask[rows, cols] = True
    return mask


def answer_patch_targets(boxes: Sequence, image_size, patch_size: int) -> np.ndarray:
    """Fraction of each patch covered by the union of the answer boxes.

    ``boxes``: [x0, y0, x1, y1] in pixels of an image of ``image_size`` (int, or (height, width)).
    Returns float32 [grid_h * grid_w] in [0, 1], patches in raster order (row by row); all zeros when there
    are no boxes. Coverage is counted on whole pixels (pixel centres), exact for pixel-aligned boxes.
    """
    height, width = _pair(image_size)
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {(height, width)} is not a multiple of patch_size {patch_size}")
    mask = _rasterise(boxes, height, width).astype(np.float32)
    grid_h, grid_w = height // patch_size, width // patch_size
    return mask.reshape(grid_h, patch_size, grid_w, patch_size).mean(axis=(1, 3)).reshape(-1)


def scale_boxes(boxes: Sequence, from_size, to_size) -> list:
    """Boxes of an image of ``from_size`` mapped onto the same image resized to ``to_size`` ((height, width))."""
    (h0, w0), (h1, w1) = _pair(from_size), _pair(to_size)
    sx, sy = w1 / w0, h1 / h0
    return [[x0 * sx, y0 * sy, x1 * sx, y1 * sy] for x0, y0, x1, y1 in boxes]


__all__ = ["answer_patch_targets", "scale_boxes"]
