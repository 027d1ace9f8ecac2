"""Greedy generation with V2PE positions and a KV cache.

`model.generate` numbers new tokens from the cache length (one per token), which is wrong after a V2PE
prompt: an image of n tokens occupies n * delta positions, not n. Here the prompt is read once with its
V2PE positions (extend.vision.v2pe_position_ids) and every new token sits 1 after the previous token of its
row, so the cached decode sees the same positions as a full forward over prompt + answer would. Rows are
left-padded (the usual layout for batched generation): the last prompt token of every row is then the last
column, and its position is where the answer continues.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from extend.vision.v2pe import v2pe_position_ids


@torch.no_grad()
def generate_v2pe(model: PreTrainedModel, input_ids: torch.Tensor, pixel_values: torch.Tensor, delta: float,
                  *, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 16,
                  eos_token_id: int | None = None, pad_token_id: int = 0) -> torch.Tensor:
    """(batch, new tokens) greedy continuation of `input_ids` (batch, seq; left-padded if padded). A row that
    emits `eos_token_id` is finished: it keeps the EOS and is padded with `pad_token_id` afterwards."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    device = model.device
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    if not mask[:, -1].bool().all():
        raise ValueError("generate_v2pe needs left padding: every row's last column must be a real token "
                         "(tokenizer.padding_side = 'left')")
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = v2pe_position_ids(input_ids, model.config.image_token_id, delta, mask).to(device)
    out = model(input_ids=input_ids, pixel_values=pixel_values.to(device, model.dtype), attention_mask=mask,
                position_ids=positions, use_cache=True)
    last = positions[:, -1:]
    finished = torch.zeros(len(input_ids), dtype=torch.bool, device=device)
    tokens = []
    for step in range(max_new_tokens):
        token = out.logits[:, -1].argmax(-1)  # finished rows still feed it back: any valid id, output ignored
        tokens.append(torch.where(finished, torch.full_like(token, pad_token_id), token))
        if eos_token_id is not None:
            finished |= token == eos_token_id
        if finished.all() or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        last = last + 1
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=last, cache=out.cache, use_cache=True)
    return torch.stack(tokens, dim=1)
