"""Generation by tier: a batch whose samples got different tiers is generated one tier group at a time (no sample
padded to another's token count), and the groups' new tokens are put back in input order behind each prompt.
`ArrCocForConditionalGeneration.generate` plans once and hands each group to its own spliced generate.
"""

import torch


def generate_by_tier(generate_group, input_ids, attention_mask, plan, group_by_tier=True, one_piece=False,
                     pad_token_id=0):
    """`input_ids` followed by the new tokens of each sample.

    generate_group: (input_ids, attention_mask, plan) -> generate's own output (new tokens only) for one batch.
    group_by_tier: generate each tier group of `plan` as its own batch; one_piece: never split (per-step scores of
        `return_dict_in_generate` are batch-shaped). A plan of one tier is always one static batch.
    pad_token_id: what groups that stopped early are right-padded with (as generate pads finished rows).
    """
    groups = plan.tier_groups()
    if len(groups) == 1:
        plan = plan.tier_group(next(iter(groups.values())))  # one tier for all: static shapes
    if not group_by_tier or one_piece or len(groups) == 1:
        return prepend_prompt(input_ids, generate_group(input_ids, attention_mask, plan))
    pieces = [(index, generate_group(input_ids[index], attention_mask[index], plan.tier_group(index)))
              for index in groups.values()]
    return prepend_prompt(input_ids, reassemble(pieces, input_ids.shape[0], pad_token_id))


def prepend_prompt(input_ids, outputs):
    """generate from embeddings returns only the new tokens; put the prompt back in front of each row."""
    sequences = outputs if isinstance(outputs, torch.Tensor) else outputs.sequences
    prompts = input_ids.repeat_interleave(sequences.shape[0] // input_ids.shape[0], dim=0)
    sequences = torch.cat([prompts, sequences.to(input_ids.device)], dim=-1)
    if isinstance(outputs, torch.Tensor):
        return sequences
    outputs.sequences = sequences
    return outputs


def reassemble(pieces, batch_size, pad_token_id):
    """New tokens of each tier group back in input order; groups that stopped early are right-padded."""
    first = pieces[0][1]
    per_sample = first.shape[0] // pieces[0][0].numel()  # num_return_sequences
    length = max(tokens.shape[1] for _, tokens in pieces)
    out = first.new_full((batch_size, per_sample, length), pad_token_id)
    for index, tokens in pieces:
        tokens = tokens.view(index.numel(), per_sample, -1)
        out[index.to(out.device), :, : tokens.shape[-1]] = tokens
    return out.flatten(0, 1)


def generation_pad_token_id(kwargs, generation_config, text_config):
    """The id generate itself pads finished rows with: pad_token_id, else the (first) eos_token_id."""
    generation_config = kwargs.get("generation_config") or generation_config
    for value in (kwargs.get("pad_token_id"), generation_config.pad_token_id, kwargs.get("eos_token_id"),
                  generation_config.eos_token_id, text_config.pad_token_id):
        if value is not None:
            return value[0] if isinstance(value, (list, tuple)) else int(value)
    return 0


def check_no_assisted_decoding(kwargs, default_config):
    """Assisted decoding (an assistant model, prompt lookup or early exit) cannot run with images: generate
    continues from spliced `inputs_embeds`, and a candidate generator has neither the prompt's ids nor the images
    to hand to its draft model. Refuse it clearly instead of failing deep inside transformers."""
    config = kwargs.get("generation_config") or default_config
    asked = [name for name in ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")
             if kwargs.get(name) is not None or getattr(config, name, None) is not None]
    if asked:
        raise ValueError(
            f"Assisted decoding ({', '.join(asked)}) is not supported with images: ArrCoc generates from spliced "
            "inputs_embeds, which no candidate generator can hand to a draft model. Generate without it (text-only "
            "prompts can use it)."
        )


__all__ = [
    "check_no_assisted_decoding",
    "generate_by_tier",
    "generation_pad_token_id",
    "prepend_prompt",
    "reassemble",
]
