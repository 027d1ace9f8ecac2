"""LM-Infinite and SelfExtend: attention whose relative positions are remapped per (query, key) pair,
through transformers' extension points, never by reassigning library methods.

Both methods rotate a pair at a relative position other than m - n: LM-Infinite (Han et al., NAACL 2024) at a
ceiling d for keys beyond its local window, SelfExtend (Jin et al., ICML 2024) at floor-divided positions
beyond its neighbour window. One rotation per token cannot express that, so each score is computed from one
of two rotations of q and k (as SelfExtend's flash implementation does):

    near pairs:  q rotated at m,      k at n        -> relative position m - n
    far pairs:   q rotated at m_far,  k at n_far    -> the method's position (d, or the grouped one)

and merged per pair before one softmax. Registrations, done by `import extend`:
- rope types `lm_infinite` and `self_extend` in ROPE_INIT_FUNCTIONS whose rotation in the model is the identity
  (zero frequencies: cos 1, sin 0 leave q and k exactly as they are), so attention receives unrotated q and k
  and rotates them itself with the base's frequencies (config.json's rope_theta). The init refuses a model
  built without the attention below, so such a checkpoint never runs with its positions missing;
- the attention function `extend_remapped` (AttentionInterface) and its mask function (AttentionMaskInterface:
  transformers' sdpa mask, always materialised, never skipped for `is_causal`).

The attention is computed in chunks of queries (explicit matmul, softmax in float32): memory is
O(chunk x keys) per layer and time quadratic in length, also for LM-Infinite, whose Λ-mask the reference
exploits for linear time. A chunk scores only the keys up to its last query (causal decoders), near only
from its first key inside the window and far only up to the last key a far pair can see (LM-Infinite: its
global tokens), so each costs about one causal score matmul (LM-Infinite less: its window). The rotation
follows the rotate-half convention (Llama, Mistral, Qwen, SmolLM2). With a KV cache, cached keys are taken
to sit at consecutive positions ending at the newest query's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformers import AttentionInterface, PreTrainedConfig
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from extend.rope.export import LM_INFINITE_ROPE_TYPE, SELF_EXTEND_ROPE_TYPE
from extend.rope.methods import LmInfiniteParams, SelfExtendParams, ScaleParams, default_inv_freq

ATTENTION_NAME = "extend_remapped"
# Score elements (batch x heads x queries x keys) per chunk: 2^24 float32 = 64 MiB per score tensor.
CHUNK_ELEMENTS = 2**24

Tensor = torch.Tensor


@dataclass(frozen=True)
class Layout:
    """How a method places pairs. `far(p, q_pos, k_pos)` -> the positions of the far rotation (q_far (b, Q),
    k_far (b, K)); `pairs(p, q_pos, k_pos)` -> (near (b, Q, K): rotated at m - n, visible (b, Q, K));
    `far_keys(p, k_pos)` -> (b, K): the keys a far pair can be visible at (only those are scored far)."""

    params: type
    far: Callable[[Any, Tensor, Tensor], tuple[Tensor, Tensor]]
    pairs: Callable[[Any, Tensor, Tensor], tuple[Tensor, Tensor]]
    far_keys: Callable[[Any, Tensor], Tensor]


def _distance(q_pos: Tensor, k_pos: Tensor) -> Tensor:
    return q_pos[:, :, None] - k_pos[:, None, :]


def lm_infinite_far(p: LmInfiniteParams, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
    """Beyond the window: the query rotated at d, the key at 0, so every such pair is at distance d
    (the reference rotates the query at its distance limit and leaves the key unrotated)."""
    return torch.full_like(q_pos, p.effective_distance_limit), torch.zeros_like(k_pos)


def lm_infinite_pairs(p: LmInfiniteParams, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
    """The Λ: the last `local_window` tokens (m - n < L_local) and the first `global_tokens` (n < n_global)."""
    near = _distance(q_pos, k_pos) < p.effective_local_window
    return near, near | (k_pos < p.global_tokens)[:, None, :]


def lm_infinite_far_keys(p: LmInfiniteParams, k_pos: Tensor) -> Tensor:
    """Beyond the window only the first `global_tokens` are seen."""
    return k_pos < p.global_tokens


def self_extend_far(p: SelfExtendParams, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
    """Grouped positions: queries at floor(m / G) + w - floor(w / G), keys at floor(n / G) (Jin et al., 2024)."""
    window, group = p.effective_neighbor_window, p.effective_group_size
    return q_pos // group + window - window // group, k_pos // group


def self_extend_pairs(p: SelfExtendParams, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
    """Neighbours (m - n < w) at exact positions; every key visible."""
    near = _distance(q_pos, k_pos) < p.effective_neighbor_window
    return near, torch.ones_like(near)


def self_extend_far_keys(p: SelfExtendParams, k_pos: Tensor) -> Tensor:
    return torch.ones_like(k_pos, dtype=torch.bool)


LAYOUTS: dict[str, Layout] = {
    LM_INFINITE_ROPE_TYPE: Layout(LmInfiniteParams, lm_infinite_far, lm_infinite_pairs, lm_infinite_far_keys),
    SELF_EXTEND_ROPE_TYPE: Layout(SelfExtendParams, self_extend_far, self_extend_pairs, self_extend_far_keys),
}


def uses_remapped_attention(config: PreTrainedConfig) -> bool:
    rope = getattr(config, "rope_parameters", None) or {}
    return rope.get("rope_type") in LAYOUTS


def params_from_config(rope: dict[str, Any], max_position_embeddings: int) -> ScaleParams:
    """The method's parameters as config.json carries them (its exports write every effective value)."""
    layout = LAYOUTS[rope["rope_type"]]
    length = int(rope["original_max_position_embeddings"])
    names = {f.name for f in dataclasses.fields(layout.params)} - {"factor", "original_max_position_embeddings"}
    return layout.params(factor=max_position_embeddings / length, original_max_position_embeddings=length,
                         **{k: int(rope[k]) for k in names})


def _rotary_dim(config: PreTrainedConfig) -> int:
    rope = config.rope_parameters
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(head_dim * rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0))


def rotate(x: Tensor, positions: Tensor, inv_freq: Tensor) -> Tensor:
    """RoPE (rotate-half convention) of x (b, h, T, d) at integer positions (b, T) on the first
    2 * len(inv_freq) dims; angles in float32 as transformers computes them."""
    dim = 2 * inv_freq.numel()
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(positions.device)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    rot, rest = x[..., :dim], x[..., dim:]
    half = dim // 2
    rotated_half = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + rotated_half * sin, rest), dim=-1)


def _positions(query: Tensor, key: Tensor, position_ids: Tensor | None) -> tuple[Tensor, Tensor]:
    """(query positions (b, Q), key positions (b, K)). Without a cache the keys are the queries; with one,
    the cached keys sit at consecutive positions ending at the last query's."""
    batch, q_len, kv_len = query.shape[0], query.shape[2], key.shape[2]
    if position_ids is None:
        position_ids = torch.arange(kv_len - q_len, kv_len, device=query.device)[None]
    q_pos = position_ids.to(query.device).expand(batch, q_len)
    if kv_len == q_len:
        return q_pos, q_pos
    offsets = torch.arange(kv_len - 1, -1, -1, device=query.device)
    return q_pos, q_pos[:, -1:] - offsets[None]


def _allowed(attention_mask: Tensor | None, batch: int, q_len: int, kv_len: int, device) -> Tensor:
    """(b, 1 or heads, Q, K) booleans: where the model's own mask (causal, padding, documents) lets a query look."""
    if attention_mask is None:
        causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)
        return causal[None, None].expand(batch, 1, q_len, kv_len)
    if attention_mask.dtype != torch.bool:  # an additive mask: 0 where allowed, the dtype's minimum elsewhere
        attention_mask = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    return attention_mask[..., :kv_len]


def remapped_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                       dropout: float = 0.0, scaling: float | None = None, **kwargs) -> tuple[Tensor, None]:
    """AttentionInterface entry: q, k unrotated (the model's rotation is the identity), shaped (b, heads, T, d);
    returns (b, Q, heads, d) like transformers' kernels."""
    config = module.config
    rope = config.rope_parameters
    layout = LAYOUTS[rope["rope_type"]]
    params = params_from_config(rope, config.max_position_embeddings)
    inv_freq = default_inv_freq(_rotary_dim(config), float(rope["rope_theta"])).to(torch.float32)
    batch, heads, q_len, _ = query.shape
    kv_len = key.shape[2]
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling

    q_pos, k_pos = _positions(query, key, kwargs.get("position_ids"))
    q_far_pos, k_far_pos = layout.far(params, q_pos, k_pos)
    repeats = heads // key.shape[1]
    keys = [rotate(key, k_pos, inv_freq), rotate(key, k_far_pos, inv_freq)]
    k_near, k_far = (k.repeat_interleave(repeats, dim=1) if repeats > 1 else k for k in keys)
    value = value.repeat_interleave(repeats, dim=1) if repeats > 1 else value
    q_near, q_far = (rotate(query, pos, inv_freq) * scaling for pos in (q_pos, q_far_pos))
    allowed = _allowed(attention_mask, batch, q_len, kv_len, query.device)

    # Only the keys a chunk can see are scored: none past its last query (a causal decoder's mask hides them),
    # rotated near only from the chunk's first near key on (the neighbour or local window), rotated far only
    # up to the last key a far pair can be visible at (LM-Infinite: its global tokens).
    causal = getattr(module, "is_causal", True)
    far_keys = layout.far_keys(params, k_pos).any(dim=0).nonzero()
    far_end = int(far_keys[-1]) + 1 if far_keys.numel() else 0
    out = query.new_empty(batch, heads, q_len, value.shape[-1])
    chunk = max(1, CHUNK_ELEMENTS // max(1, batch * heads * kv_len))
    for start in range(0, q_len, chunk):
        rows = slice(start, min(start + chunk, q_len))
        end = min(kv_len, kv_len - q_len + rows.stop) if causal else kv_len
        near, visible = layout.pairs(params, q_pos[:, rows], k_pos[:, :end])
        # A visible pair is near (a key from the chunk's first near one on) or far (a key before far_end):
        # the keys in neither are masked below, so their zero scores never count.
        near_keys = near.any(dim=1).any(dim=0).nonzero()
        first_near = int(near_keys[0]) if near_keys.numel() else end
        far = min(far_end, end)
        scores = q_near.new_empty(batch, heads, rows.stop - rows.start, end)
        scores[..., far:first_near] = 0.0
        scores[..., first_near:] = q_near[:, :, rows] @ k_near[:, :, first_near:end].transpose(-1, -2)
        if far:
            scores[..., :far] = torch.where(near[:, None, :, :far], scores[..., :far],
                                            q_far[:, :, rows] @ k_far[:, :, :far].transpose(-1, -2))
        scores = scores.float()
        keep = visible[:, None] & allowed[:, :, rows, :end]
        probs = scores.masked_fill(~keep, float("-inf")).softmax(dim=-1).nan_to_num(0.0)  # rows with no key: 0
        probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
        out[:, :, rows] = probs.to(value.dtype) @ value[:, :, :end]
    return out.transpose(1, 2).contiguous(), None


def _identity_rope_init(config, device=None, seq_len=None, layer_type=None):
    """ROPE_INIT_FUNCTIONS entry: zero frequencies (the model's rotation does nothing; attention rotates)."""
    attn = getattr(config, "_attn_implementation", None) or ""
    rope_type = config.rope_parameters["rope_type"]
    if attn != ATTENTION_NAME:
        raise ValueError(
            f"this checkpoint uses rope_type {rope_type!r}, whose relative positions are remapped in attention, but "
            f"the model was built with attn_implementation={attn!r}: load it with extend.models.load_pretrained(path), "
            f"or pass attn_implementation={ATTENTION_NAME!r} after `import extend`"
        )
    inv_freq = torch.zeros(_rotary_dim(config) // 2, dtype=torch.float32)
    return inv_freq.to(device) if device is not None else inv_freq, 1.0


def _materialised_sdpa_mask(*args, **kwargs):
    """transformers' sdpa mask, never replaced by None for plain causal inputs: the remapped attention needs it."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register() -> None:
    """Idempotent: make `lm_infinite`, `self_extend` and their attention known to transformers."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for rope_type in LAYOUTS:
        ROPE_INIT_FUNCTIONS[rope_type] = _identity_rope_init
    AttentionInterface.register(ATTENTION_NAME, remapped_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, _materialised_sdpa_mask)
