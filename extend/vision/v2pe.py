"""V2PE (Ge et al. 2024, "V2PE: Improving Multimodal Long-Context Capability of Vision-Language Models with
Variable Visual Position Encoding", eq. 4): visual tokens advance the position by a small increment delta,
text tokens by 1, so a long image-text sequence occupies far fewer positions than it has tokens.

The rule implemented here, per sequence, over the tokens the attention mask keeps:

    p_first = 0
    p_i     = p_{i-1} + (delta if token i is an image-context token else 1)

so the first image-context token sits delta after the text token before it (InternVL's `<img>`), and the
first text token after the image (`</img>`) sits 1 after the last image-context token. This is the paper's
equation. The authors' code instead rounds the position up (ceil) after each image before the next text
token; the two agree whenever delta x (image-context tokens of the image) is a whole number, which holds for
their increments 1/256 ... 1 with 256 tokens per tile, and not for e.g. delta = 1/16 with 4 tokens.

Padding (left or right) advances nothing and gets position 1, the value transformers' generation gives
padded slots; the attention mask hides them anyway. Positions are float32 (computed in float64 first, so
long cumulative sums of binary fractions stay exact): Qwen2's rotary embedding multiplies them by the
inverse frequencies as floats, so fractional positions need no change to the model.
"""

from __future__ import annotations

import torch


def v2pe_position_ids(input_ids: torch.Tensor, image_token_id: int, delta: float | torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, seq) float32 V2PE positions for `input_ids` (batch, seq); see the module docstring. `delta` is
    one increment, or one per row (a (batch,) tensor: the paper's training samples it per sequence)."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    deltas = torch.as_tensor(delta, dtype=torch.float64, device=input_ids.device)
    if not (deltas > 0).all():
        raise ValueError(f"V2PE increment delta={delta} must be > 0")
    if deltas.dim() == 1:
        deltas = deltas[:, None]  # one per row
    keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    step = torch.where(input_ids == image_token_id, deltas, 1.0) * keep
    total = step.cumsum(-1)
    first = keep.to(torch.int64).argmax(-1, keepdim=True)  # the first kept token of each row sits at 0
    positions = total - step.gather(-1, first)
    return positions.masked_fill(~keep, 1.0).to(torch.float32)
