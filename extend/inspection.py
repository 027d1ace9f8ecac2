"""`extend inspect` (`python -m extend.rope`): a plain-text report of what a position method does to a model,
before any GPU hour is spent. It reads the model's config (extend.models), so it sits above models and rope."""

from __future__ import annotations

import json
import math

from extend.config import ExtendConfig
from extend.models import load_base_config
from extend.rope import apply_rope, config_served_lengths, resolve_rope
from extend.rope.export import FACTOR_OVER_MAX_POSITION, scaled_rope_parameters
from extend.rope.methods import default_inv_freq


def _wavelength(inv_freq: float) -> float:
    return math.inf if inv_freq == 0 else 2 * math.pi / inv_freq


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:,.1f}"


def rope_report(cfg: ExtendConfig) -> str:
    """Per-dimension wavelengths before and after, the attention factor, the lengths transformers, the
    tokenizer and vLLM will read, and the exact config export writes."""
    base_config = load_base_config(cfg.model)
    resolved = resolve_rope(cfg.rope, base_config)
    if resolved is None:
        return f"rope.type is none: {cfg.model.name_or_path} keeps its own positions ({base_config.rope_parameters})."

    exported = apply_rope(base_config, resolved)
    length, extended = resolved.original_length, resolved.extended_length
    before = default_inv_freq(resolved.rotary_dim, resolved.base).tolist()
    # Dynamic methods are shown at the extended length, where they differ most from the base.
    after, attention = resolved.inv_freq(seq_len=extended)
    lines = [
        f"{resolved.method.name} ({resolved.method.summary}) on {cfg.model.name_or_path}",
        f"  rotary dim {resolved.rotary_dim}, base {resolved.base:g}"
        + (f", {resolved.attention_type} layers only (the other attention types keep theirs)" if resolved.attention_type else ""),
        f"  original length L = {length}, factor s = {resolved.params.factor:g} -> extended length {extended}",
        f"  attention factor (scales cos and sin) = {attention:.6f}",
        *resolved.method.notes(resolved.params, extended),
        "",
        f"  {'dim':>4} {'wavelength before':>18} {'wavelength after':>17} {'after/before':>13} {'turns in L after':>17}",
    ]
    for i, (b, a) in enumerate(zip(before, after.tolist())):
        wb, wa = _wavelength(b), _wavelength(a)
        ratio = "inf" if math.isinf(wa) else f"{wa / wb:.4f}"
        turns = "0" if math.isinf(wa) else f"{length / wa:,.3f}"
        lines.append(f"  {i:>4} {_fmt(wb):>18} {_fmt(wa):>17} {ratio:>13} {turns:>17}")

    served = config_served_lengths(exported, extended)
    by_factor = scaled_rope_parameters(exported.to_dict()).get("rope_type") in FACTOR_OVER_MAX_POSITION
    lines += [
        "",
        "  context length as each reader will derive it from the exported checkpoint:",
        f"    transformers (max_position_embeddings{' x factor' if by_factor else ''}): {served['transformers']}",
        f"    tokenizer model_max_length:  {served['tokenizer']}",
        f"    vLLM max_model_len:          {served['vllm']}",
    ]
    written = {
        "max_position_embeddings": exported.max_position_embeddings,
        "rope_parameters": exported.rope_parameters,
        "tokenizer_config.json model_max_length": extended,
    }
    lines += ["", "  config.json fields export writes:", json.dumps(written, indent=2)]
    return "\n".join(lines)
