"""What LM-Infinite's and SelfExtend's attention cost next to causal SDPA, one layer's call at a time.

    python -m bench.studies.remapped_attention                                  # SmolLM2-135M's shape, 4k-16k
    python -m bench.studies.remapped_attention --model tiny-llama --lengths 64 --out /tmp/remapped.json

Both methods rotate each (query, key) pair at a remapped relative position, so their attention
(extend/rope/remapped.py) computes scores with explicit matmuls in chunks of queries instead of one fused
kernel. This times one attention call per method and length on random q, k, v with the model's head layout
(query heads, KV heads, head size, rotary dimensions) and training-free x2 parameters at the model's own
length, next to `torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)` on the same tensors:
the floor any exact attention meets. The best of --repeats calls is kept. Default model: SmolLM2-135M
converted by bench/studies/eval_smollm2.py (its config only; no weights are read). Writes --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import extend  # noqa: F401  (registers lm_infinite and self_extend)
from bench.lib.paths import RESULTS
from extend.config import ModelConfig, RopeConfig
from extend.models import load_base_config
from extend.rope import apply_rope, resolve_rope
from extend.rope.remapped import remapped_attention

METHODS = ("lm_infinite", "self_extend")


def best_of(repeats: int, call) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def measure(model: str, lengths: list[int], factor: float, repeats: int) -> dict:
    base = load_base_config(ModelConfig(name_or_path=model))
    heads, kv_heads = base.num_attention_heads, base.num_key_value_heads
    head_dim = getattr(base, "head_dim", None) or base.hidden_size // heads
    rows = []
    for length in lengths:
        gen = torch.Generator().manual_seed(0)
        q = torch.randn(1, heads, length, head_dim, generator=gen)
        k, v = (torch.randn(1, kv_heads, length, head_dim, generator=gen) for _ in range(2))
        row = {"length": length}
        for method in METHODS:
            config = apply_rope(base, resolve_rope(RopeConfig(type=method, factor=factor), base))
            module = SimpleNamespace(config=config, training=False, is_causal=True)
            row[method] = round(best_of(repeats, lambda: remapped_attention(module, q, k, v, None)), 6)
        k_rep, v_rep = (x.repeat_interleave(heads // kv_heads, dim=1) for x in (k, v))
        row["sdpa"] = round(best_of(repeats, lambda: torch.nn.functional.scaled_dot_product_attention(
            q, k_rep, v_rep, is_causal=True)), 6)
        rows.append(row)
        print(" | ".join(f"{key} {value}" for key, value in row.items()), flush=True)
    return {"model": Path(model).name, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
            "factor": factor, "threads": torch.get_num_threads(), "repeats": repeats, "seconds": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint folder or model name whose config gives the shape "
                                        "(default: SmolLM2-135M converted under .cache/)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "eval_smollm2_training_free" / "attention_cost.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model is None:
        from bench.studies.eval_smollm2 import convert_smollm2

        args.model = str(convert_smollm2())
    record = measure(args.model, args.lengths, args.factor, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
