"""Does a PoSE-trained model lose passkey retrieval with the positions or with the length of the text?

    python -m bench.studies.pose_probe outputs/tiny_pose/final                          # the default cells
    python -m bench.studies.pose_probe outputs/tiny_pose/final --cells 256@1780 1024@1000 2048@0
    python -m bench.studies.pose_probe outputs/tiny_pose/final --cells 2048@0 --attention-factor 1.4

PoSE trains on short rows whose position ids span the target length, so after training a long passkey item
differs from a short one in two ways: its tokens sit at large positions, and there are many more of them.
Each cell LENGTH@OFFSET separates the two: passkey items of LENGTH tokens (the eval's passkey task,
extend.tasks.synthetic, the same depths) are read at position ids OFFSET ... OFFSET + LENGTH - 1 and the
answer is decoded greedily after them (exact match, as extend.eval scores it). A short item at a large
offset has the long item's positions with the short item's length.

`--attention-factor X` replaces the scale the rotary module puts on cos and sin (YaRN's attention factor;
the logits scale by its square) for every cell, to probe how sharper or flatter attention changes a cell.

Writes --out (JSON: the model, the factor, each cell's items and accuracy) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

import extend  # noqa: F401  (registers the position methods a checkpoint may use)
from extend.eval.generation import encode_items
from extend.eval.loading import load_tokenizer
from extend.eval.scoring import exact
from extend.models import load_pretrained
from extend.tasks import synthetic

DEFAULT_CELLS = ["256@0", "256@1780", "1024@0", "1024@1000", "1536@0", "1792@0", "1920@0", "2048@0"]
DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
CELL = re.compile(r"^([1-9][0-9]*)@([0-9]+)$")


def parse_cell(text: str) -> tuple[int, int]:
    match = CELL.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"cell {text!r} is not LENGTH@OFFSET (e.g. 1024@1000)")
    return int(match[1]), int(match[2])


@torch.no_grad()
def greedy(model, ids: list[int], offset: int, steps: int) -> list[int]:
    """`steps` greedy tokens after `ids` read at position ids offset, offset + 1, ..."""
    out = model(input_ids=torch.tensor([ids]), position_ids=torch.arange(len(ids))[None] + offset, use_cache=True)
    cache, produced = out.cache, []
    for step in range(steps):
        token = int(out.logits[0, -1].argmax())
        produced.append(token)
        if step + 1 == steps:
            break
        position = torch.tensor([[offset + len(ids) + step]])
        out = model(input_ids=torch.tensor([[token]]), position_ids=position, cache=cache, use_cache=True)
        cache = out.cache
    return produced


def probe(model, tokenizer, length: int, offset: int, per_depth: int, seed: int) -> dict:
    items = synthetic.generate("passkey", tokenizer, [length], per_depth, seed, depths=DEPTHS)
    records = []
    for prompt in encode_items(tokenizer, items):
        prediction = tokenizer.decode(greedy(model, prompt.input_ids, offset, prompt.answer_tokens)).strip()
        records.append({"depth": prompt.item.depth, "tokens": len(prompt.input_ids),
                        "answer": prompt.item.answer.strip(), "prediction": prediction,
                        "correct": exact(prediction, prompt.item.answer)[0]})
    positions = max(r["tokens"] for r in records) + offset
    return {"length": length, "offset": offset, "last_position": positions - 1,
            "accuracy": sum(r["correct"] for r in records) / len(records), "items": records}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("model", type=Path, help="a checkpoint folder (an export, e.g. outputs/tiny_pose/final)")
    parser.add_argument("--cells", nargs="+", type=parse_cell, default=[parse_cell(c) for c in DEFAULT_CELLS],
                        metavar="LENGTH@OFFSET", help=f"default: {' '.join(DEFAULT_CELLS)}")
    parser.add_argument("--items-per-depth", type=int, default=4, help="items at each of the 5 depths (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attention-factor", type=float, default=None,
                        help="replace the rotary module's cos/sin scale (default: the checkpoint's own)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: print only)")
    opts = parser.parse_args(argv)
    if not (opts.model / "config.json").is_file():
        parser.error(f"{opts.model} has no config.json: pass a checkpoint folder (e.g. outputs/tiny_pose/final)")
    if opts.items_per_depth < 1:
        parser.error("--items-per-depth must be at least 1")

    model = load_pretrained(opts.model).eval()
    tokenizer = load_tokenizer(str(opts.model))
    tokenizer.model_max_length = 1 << 30  # the item builder tokenizes filler past the model's length; no warning
    rotary = model.model.rotary_emb
    own = float(rotary.attention_scaling)
    if opts.attention_factor is not None:
        rotary.attention_scaling = opts.attention_factor
    record = {"model": opts.model.name if opts.model.name != "final" else str(opts.model.parent.name),
              "attention_factor": float(rotary.attention_scaling), "checkpoint_attention_factor": own,
              "seed": opts.seed, "items_per_depth": opts.items_per_depth, "cells": []}
    print(f"{'length':>7} {'offset':>7} {'last position':>14} {'passkey':>8} {'seconds':>8}")
    for length, offset in opts.cells:
        start = time.perf_counter()
        cell = probe(model, tokenizer, length, offset, opts.items_per_depth, opts.seed)
        cell["seconds"] = round(time.perf_counter() - start, 1)
        record["cells"].append(cell)
        print(f"{length:>7} {offset:>7} {cell['last_position']:>14} {cell['accuracy']:>8.0%} {cell['seconds']:>8}",
              flush=True)
    if opts.out:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    sys.exit(main() and 0)
