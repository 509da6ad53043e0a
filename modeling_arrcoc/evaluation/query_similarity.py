"""The training-free query-similarity baseline (SparseVLM-style): patches ranked by cosine similarity between
their LLM-space embedding and the question's mean token embedding, run through the checkpoint's own path."""

import torch
from torch.nn import functional as F


@torch.no_grad()
def query_similarity_scores(model, patch_features, question_ids, question_mask) -> torch.Tensor:
    """[B, N] cosine similarity between each patch's LLM-space embedding and the mean question-token embedding.

    Every patch goes through the checkpoint's own "full" path (every patch kept in raster order, CLIP encoder,
    quality adapter at the largest tier, no relevance score), so the patch embeddings live where the question's
    token embeddings do. `question_ids` are the question's own tokens (no chat template, whose tokens are the same
    for every question and would blur the query); `question_mask` marks the real ones.
    """
    batch, num_patches = patch_features.shape[:2]
    # Constant scores: every patch is kept and each token's standardized score (its relevance tag) is 0. The
    # selection is named, so a checkpoint whose own selection is another (a trained baseline) takes this path too.
    plan = model.plan_allocation(input_ids=question_ids, attention_mask=question_mask, patch_features=patch_features,
                                 budget="full", selection="full",
                                 selection_scores=patch_features.new_zeros(batch, num_patches))
    patch_embeds = model.get_image_features(plan=plan).pooler_output
    text = model.get_input_embeddings()(question_ids)
    weights = question_mask.unsqueeze(-1).to(text.dtype)
    query = (text * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return F.cosine_similarity(patch_embeds.float(), query[:, None].float(), dim=-1)


__all__ = ["query_similarity_scores"]
