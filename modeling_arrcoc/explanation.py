"""Where did the question pull visual tokens from? One sample's allocation, and a heatmap of it.

`explain` runs the model's own selection (SAM features -> allocator -> budget -> kept patches) for one image and
question, without the language model, and returns what it decided. `render_heatmap` paints the scores over the
page, outlines the kept patches and writes the tier and token count underneath, so a person sees at a glance which
part of the page the question was spent on.
"""

import textwrap
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps, font_manager
from PIL import Image, ImageDraw, ImageFont

from .data.collator import chat_prompt


OUTLINE_COLOR = (0, 255, 255)  # cyan: visible on white pages and on every colour of the score map
CAPTION_BACKGROUND = (255, 255, 255)
CAPTION_INK = (0, 0, 0)


@dataclass
class Explanation:
    """What the model decided for one image and question.

    tier / tier_value: the tier index used and its value in `config.budgets` ("full" reports the largest tier).
    visual_token_count: tokens actually fed to the language model (the model's `visual_token_counts`).
    kept_positions: (row, col) on the SAM grid of every patch whose own position was kept, in raster order.
    patch_scores: [rows, cols] the scores the selection ranked patches by (the allocator's; the hotspot saliency
        for selection="hotspot"). "uniform" and "random" do not rank by score; the allocator's are shown.
    """

    question: str
    tier: int
    tier_value: int
    visual_token_count: int
    kept_positions: list
    patch_scores: np.ndarray
    grid_size: tuple
    selection: str = "learned"

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def kept_mask(self) -> np.ndarray:
        """[rows, cols] bool, True on kept patches."""
        mask = np.zeros(self.grid_size, dtype=bool)
        for row, col in self.kept_positions:
            mask[row, col] = True
        return mask


def prompt_batch(processor, images, questions) -> dict:
    """Generation prompts (chat template, one <image> each, left-padded) and pixel values, built by the processor
    so its input checks (empty question, image-token count, unreadable image) run here too."""
    texts = [chat_prompt(processor, question) for question in questions]
    return processor(images=list(images), text=texts, add_special_tokens=False, return_tensors="pt")


@torch.no_grad()
def explain(model, processor, image, question: str, budget="auto", selection: str = "learned") -> Explanation:
    """The model's allocation for one image and question: tier, token count, kept patches and their scores.

    Follows the model's own allocation plan (SAM, the allocator and the selection, exactly as `forward` and
    `generate` do) but runs no language model, which the allocation does not depend on.
    """
    batch = prompt_batch(processor, [image], [question])
    input_ids, attention_mask = batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)
    plan = model.plan_allocation(input_ids=input_ids, attention_mask=attention_mask, budget=budget,
                                 selection=selection, pixel_values=batch["pixel_values"].to(model.device, model.dtype))
    kept = model.get_image_features(plan=plan).kept_patch_mask
    # What the selection ranked by; "uniform" and "random" rank by nothing meaningful, so the allocator's are shown.
    scores = plan.hotspot_scores if selection == "hotspot" else plan.patch_scores
    return _explanation(question, plan, kept, scores, model.config, selection)


def _explanation(question, plan, kept, scores, config, selection) -> Explanation:
    rows, cols = config.grid_size
    tier = int(plan.budget_tiers[0])
    positions = kept[0].reshape(rows, cols).nonzero().tolist()
    return Explanation(
        question=question,
        tier=tier,
        tier_value=config.tier_value(tier),
        visual_token_count=int(plan.visual_token_counts[0]),
        kept_positions=[(int(r), int(c)) for r, c in positions],
        patch_scores=scores[0].float().reshape(rows, cols).cpu().numpy(),
        grid_size=(rows, cols),
        selection=selection,
    )


def render_heatmap(image, explanation: Explanation, path=None, alpha: float = 0.5, caption: bool = True,
                   title: str | None = None, cmap: str = "turbo") -> Image.Image:
    """The page with the score map painted over it, kept patches outlined and (optionally) a caption strip below
    (tier, token count, question; `title` as its first line when given).

    The colour's opacity grows with the score (up to `alpha`), so low-scoring areas stay readable and the places
    the question pulled tokens from stand out. Returns an RGB image of the input's size, plus the caption strip's
    height; saved to `path` when given.
    """
    image = image.convert("RGB")
    heat = _heat_map(explanation.patch_scores, image.size)
    pixels = np.asarray(image, dtype=np.float32)
    colours = colormaps[cmap](heat)[..., :3] * 255.0
    weight = alpha * heat[..., None]
    painted = Image.fromarray((pixels * (1 - weight) + colours * weight).round().astype(np.uint8))
    _outline_kept(painted, explanation)
    if caption:
        text = caption_text(explanation)
        painted = _with_caption(painted, text if title is None else f"{title}\n{text}")
    if path is not None:
        painted.save(path)
    return painted


def _normalized(scores: np.ndarray) -> np.ndarray:
    low, high = float(scores.min()), float(scores.max())
    if high - low < 1e-12:
        return np.zeros_like(scores, dtype=np.float32)  # a flat map says nothing; paint nothing
    return ((scores - low) / (high - low)).astype(np.float32)


def _heat_map(scores: np.ndarray, size: tuple) -> np.ndarray:
    """[height, width] normalized scores at the image's resolution.

    The processor scales the longest side to the SAM input and pads bottom/right, so the grid covers a square of
    side max(width, height) anchored at the top-left corner; the image is the top-left part of that square.
    """
    width, height = size
    side = max(width, height)
    grid = Image.fromarray(_normalized(scores), mode="F")
    # Nearest: one flat block per patch, so the map shows exactly the cells the allocator scored.
    square = np.asarray(grid.resize((side, side), Image.Resampling.NEAREST))
    return square[:height, :width]


def _cell_edges(grid_size: tuple, size: tuple):
    """Pixel boundaries of the grid's rows and columns on the image (see `_heat_map` for the geometry)."""
    side = max(size)
    rows, cols = grid_size
    return np.linspace(0, side, rows + 1), np.linspace(0, side, cols + 1)


def _outline_kept(image: Image.Image, explanation: Explanation) -> None:
    """Draw the border of the kept region: each kept cell's sides that face a dropped cell or the page edge."""
    kept = np.pad(explanation.kept_mask, 1)
    ys, xs = _cell_edges(explanation.grid_size, image.size)
    width = max(1, round((xs[1] - xs[0]) / 8))
    draw = ImageDraw.Draw(image)
    for row, col in explanation.kept_positions:
        top, bottom, left, right = ys[row], ys[row + 1] - 1, xs[col], xs[col + 1] - 1
        sides = {
            (left, top, right, top): kept[row, col + 1],
            (left, bottom, right, bottom): kept[row + 2, col + 1],
            (left, top, left, bottom): kept[row + 1, col],
            (right, top, right, bottom): kept[row + 1, col + 2],
        }
        for line, neighbour_kept in sides.items():
            if not neighbour_kept:
                draw.line(line, fill=OUTLINE_COLOR, width=width)


def caption_text(explanation: Explanation) -> str:
    ratio = explanation.num_patches / max(explanation.visual_token_count, 1)
    return (
        f"tier {explanation.tier} ({explanation.tier_value}): {explanation.visual_token_count} visual tokens "
        f"of {explanation.num_patches} patches ({ratio:.1f}x)\nQ: {explanation.question}"
    )


def _with_caption(image: Image.Image, text: str) -> Image.Image:
    font = _font(max(9, image.width // 24))
    lines = _wrap(text, font, image.width - 4)
    line_height = font.getbbox("Ag")[3] + 2
    strip = Image.new("RGB", (image.width, line_height * len(lines) + 4), CAPTION_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((2, 2 + i * line_height), line, fill=CAPTION_INK, font=font)
    out = Image.new("RGB", (image.width, image.height + strip.height), CAPTION_BACKGROUND)
    out.paste(image, (0, 0))
    out.paste(strip, (0, image.height))
    return out


def _font(size: int):
    # matplotlib ships DejaVu Sans, so captions look the same everywhere; PIL's default font is the fallback.
    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except OSError:
        return ImageFont.load_default(size=size)


def _wrap(text: str, font, max_width: int) -> list:
    """Greedy word wrap by measured width (a character count would overflow narrow pages)."""
    lines = []
    for paragraph in text.split("\n"):
        average = max(font.getlength("x"), 1.0)
        width = max(1, int(max_width / average))
        wrapped = textwrap.wrap(paragraph, width) or [""]
        while width > 1 and any(font.getlength(line) > max_width for line in wrapped):
            width -= 1
            wrapped = textwrap.wrap(paragraph, width, break_long_words=True) or [""]
        lines.extend(wrapped)
    return lines


__all__ = ["Explanation", "caption_text", "explain", "prompt_batch", "render_heatmap"]
