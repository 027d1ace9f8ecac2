"""Ours against the trainers users would pick instead, at equal settings: tokens/s and peak memory per length.

    python -m bench.studies.peer_training [--lengths 2048 4096 8192 16384] [--steps 2] [--out FILE]

Every run is a fresh process of bench/lib/training_harness.py (the same ~20M-parameter Llama with a 32k
vocabulary, the same LoRA r=8 on q/k/v/o, the same rows of the standard-library corpus, batch 1, AdamW,
float32, one row per optimizer step; tokens/s over the steps after the first (the only one with --steps 1),
the same per CPU-second of the process (steady when other work shares the cores), memory = the resident
memory the steps added on top of the loaded model). Per length, in this order:

- `ours`: extend's loop with gradient checkpointing (as every recipe runs at long length), train.loss=auto;
- `ours, no checkpointing`;
- `Trainer + peft`: transformers' Trainer on the peft model, no checkpointing (its default);
- `Trainer + peft, checkpointing`;
- `TRL SFTTrainer`: TRL's packing (best-fit decreasing, padding-free, position ids), checkpointing,
  loss on every token.

Before the runs it checks, on a tiny model, whether each peer keeps packed documents apart: the logits of
a packed row as the peer feeds it to the model against each document run alone (ours: per-document SDPA,
extend/models/packed_attention.py, tested in tests/; Trainer + peft: one plain sequence, so documents
attend to each other; TRL: its padding-free collator's batch). Prints a table and writes --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

SYSTEMS = {  # label -> harness arguments
    "ours": ["--system", "ours"],
    "ours, no checkpointing": ["--system", "ours", "--no-checkpointing"],
    "Trainer + peft": ["--system", "baseline"],
    "Trainer + peft, checkpointing": ["--system", "baseline", "--checkpointing"],
    "TRL SFTTrainer, checkpointing": ["--system", "trl"],
}


def harness(args: list[str], workdir: Path, length: int, steps: int) -> dict:
    cmd = [sys.executable, "-m", "bench.lib.training_harness", *args, "--workdir", str(workdir),
           "--length", str(length), "--steps", str(steps)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        return {"length": length, "failed": lines[-1] if lines else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def isolation() -> dict[str, float]:
    """Max |logit difference| between a packed row of two documents, as each system feeds it to the model,
    and the documents run alone (0 = kept apart)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4,
                                         attn_implementation="sdpa")).eval()
    docs = [torch.randint(0, 256, (n,)).tolist() for n in (40, 24)]
    with torch.no_grad():
        alone = torch.cat([model(torch.tensor([d]), use_cache=False).logits[0] for d in docs])
        batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": d} for d in docs])
        batch.pop("labels")
        trl = model(**batch, use_cache=False).logits[0]  # SFTTrainer.compute_loss sets use_cache=False
        trainer = model(torch.tensor([docs[0] + docs[1]])).logits[0]
    return {"TRL SFTTrainer": float((trl - alone).abs().max()), "Trainer + peft": float((trainer - alone).abs().max())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS), metavar="LABEL")
    parser.add_argument("--out", type=Path, default=None)
    opts = parser.parse_args(argv)
    started = time.time()
    kept_apart = isolation()
    print("max |logit difference| packed vs documents alone:", json.dumps(kept_apart), flush=True)
    table: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="extend-peers-") as tmp:
        for length in opts.lengths:
            table[length] = {}
            for label in opts.systems:
                result = harness(SYSTEMS[label], Path(tmp), length, opts.steps)
                table[length][label] = result
                shown = result.get("failed") or (f"{result['tokens_per_s']} tok/s, {result['tokens_per_cpu_s']} tok/CPU-s, "
                                                 f"{result['peak_step_memory_gb']} GB")
                print(f"{length:>6} {label}: {shown}", flush=True)
    print("\n| tokens | system | tokens/s | tokens/CPU-s | step memory (GB) |\n|---|---|---|---|---|")
    for length, rows in table.items():
        for label, r in rows.items():
            print(f"| {length:,} | {label} | {r.get('tokens_per_s', 'failed')} | {r.get('tokens_per_cpu_s', '-')} | "
                  f"{r.get('peak_step_memory_gb', '-')} |")
    report = {"torch": torch.__version__, "python": platform.python_version(), "steps": opts.steps,
              "isolation_max_logit_difference": kept_apart, "table": table, "wall_s": round(time.time() - started)}
    if opts.out:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
