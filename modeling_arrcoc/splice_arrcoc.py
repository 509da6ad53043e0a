"""The splice: each sample's K_i visual embeddings put in place of its one `<image>` token, rows left-padded to the
longest, with the checks on the prompt it relies on. Pure tensor functions (no model), shared by `forward` and
`generate` (docs/design.md, "Data flow").
"""

import torch
from transformers.utils.import_utils import is_tracing


def splice(image_mask, attention_mask, text_embeds, visual_embeds, visual_mask, labels=None, shift_labels=None,
           static_tokens=None):
    """Per sample: text before <image>, its K_i visual embeddings, text after; then left-pad to the longest.

    Returns (inputs_embeds, attention_mask, position_ids, labels, shift_labels). Labels get -100 on the visual
    tokens. Pre-shifted `shift_labels` (position t's target) get -100 on the token before the image and on the
    visual tokens but the last, which predicts the token after the image: they equal the spliced labels shifted.
    Vectorized (one scatter per tensor, no per-sample loop); the only data-dependent value is the output length.
    With `static_tokens` (every sample keeps that many) the length is known on the host instead: the prompt's
    padded length - 1 + K, which is the longest row's whenever one row is unpadded (as a processor pads); a batch
    whose every row is padded keeps a padding column more. No tensor is read back, so the splice compiles whole.
    """
    keep = attention_mask.bool()
    is_image = keep & image_mask  # exactly one per row (checked by check_image_tokens)
    is_text = keep & ~image_mask
    counts = visual_mask.sum(-1)
    rank = keep.long().cumsum(-1) - 1  # each kept position's index among its row's kept positions
    image_rank = (rank * is_image).sum(-1)
    lengths = keep.sum(-1) - 1 + counts
    length = int(lengths.max()) if static_tokens is None else attention_mask.shape[1] - 1 + static_tokens
    offset = length - lengths  # left padding of each row
    after_image = rank > image_rank[:, None]
    # Where each text / visual token goes; everything else goes to a dump column `length`, dropped at the end.
    text_at = offset[:, None] + rank + after_image * (counts[:, None] - 1)
    text_at = torch.where(is_text, text_at, length)
    visual_rank = visual_mask.long().cumsum(-1) - 1
    visual_at = torch.where(visual_mask, offset[:, None] + image_rank[:, None] + visual_rank, length)

    batch, dim = text_embeds.shape[0], text_embeds.shape[-1]
    embeds = text_embeds.new_zeros(batch, length + 1, dim)
    embeds = embeds.scatter(1, text_at.unsqueeze(-1).expand(-1, -1, dim), text_embeds)
    visual = visual_embeds.to(text_embeds.dtype)
    embeds = embeds.scatter(1, visual_at.unsqueeze(-1).expand(-1, -1, dim), visual)[:, :length].contiguous()
    positions = torch.arange(length, device=text_embeds.device)
    mask = (positions[None] >= offset[:, None]).long()

    def scattered(values, extra=None):
        out = torch.full((batch, length + 1), -100, dtype=torch.long, device=text_embeds.device)
        out = out.scatter(1, text_at, values.long().to(out.device))
        if extra is not None:
            out = out.scatter(1, *extra)
        return out[:, :length].contiguous()

    spliced_labels = None if labels is None else scattered(labels)
    spliced_shift_labels = None
    if shift_labels is not None:
        before_image = keep & (rank == image_rank[:, None] - 1)
        last_visual = torch.where(counts > 0, offset + image_rank + counts - 1, length)
        image_target = (shift_labels * is_image).sum(-1)
        spliced_shift_labels = scattered(shift_labels.masked_fill(before_image, -100),
                                         (last_visual[:, None], image_target[:, None].long()))
    return embeds, mask, position_ids(mask), spliced_labels, spliced_shift_labels


def position_ids(attention_mask):
    # Left padding must not shift positions: the first real token is position 0 in every row.
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def ones_mask(reference):
    """An all-ones attention mask for [B, L] ids or [B, L, D] embeddings."""
    return torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)


def check_image_tokens(image_mask, attention_mask, image_token_id, images, found_in="input_ids"):
    """Exactly one `<image>` placeholder per sample (`image_mask`, found in `found_in`) and one image each."""
    per_sample = (image_mask & attention_mask.bool()).sum(-1)
    if not is_tracing(image_mask) and (per_sample != 1).any():  # eager only: under tracing a read-back would break
        hint = ("; with inputs_embeds alone, the placeholder is the position holding the <image> token's own "
                "embedding: pass input_ids as well to mark it" if found_in == "inputs_embeds" else "")
        raise ValueError(
            f"Each sample needs exactly one <image> token (id {image_token_id}); found {per_sample.tolist()} in "
            f"{found_in}{hint}. Several images per sample are not supported."
        )
    if images is None:
        raise ValueError(f"{found_in} contain <image> tokens but no pixel_values were given.")
    if images.shape[0] != image_mask.shape[0]:
        raise ValueError(f"Got {images.shape[0]} images for {image_mask.shape[0]} samples with one <image> each.")


def check_context_length(length, text_config, max_new_tokens=0):
    """RoPE language models run past max_position_embeddings without an error and answer garbage; refuse."""
    limit = text_config.max_position_embeddings
    if limit is not None and length > limit:
        extra = f" + max_new_tokens {max_new_tokens}" if max_new_tokens else ""
        raise ValueError(
            f"The input needs {length} positions (question and visual tokens{extra}) but the language model's "
            f"context is {limit} (text_config.max_position_embeddings). Shorten the question, use a smaller budget "
            "or generate fewer tokens."
        )


__all__ = ["check_context_length", "check_image_tokens", "ones_mask", "position_ids", "splice"]
