"""Does a PoSE-trained model lose passkey retrieval with the distances or with the length of the text?

    python -m bench.studies.pose_probe outputs/tiny_pose/final                          # the default cells
    python -m bench.studies.pose_probe outputs/tiny_pose/final --cells 256+1792 1024+1024 2048
    python -m bench.studies.pose_probe outputs/tiny_pose/final --cells 2048 --attention-factor 1.4

PoSE trains on short rows whose position ids span the target length, so after training a long passkey item
differs from a short one in two ways: its question reads the needle from far away, and there are many more
tokens between them. A cell LENGTH+GAP separates the two: passkey items of LENGTH tokens (the eval's passkey
task, extend.tasks.synthetic, the same depths) whose question ("What is the pass key? ...") and answer are
read GAP positions further on than the text before it, as PoSE's chunks are; the answer is decoded greedily
(exact match, as extend.eval scores it). A short item with a large gap has the long item's distances with
the short item's length; LENGTH alone is the item as the eval reads it.

LENGTH@OFFSET reads the whole item at position ids OFFSET, OFFSET + 1, ...: a check of the harness, since
rotary attention depends on position differences only and such a cell must score as LENGTH does.

Per cell it also reports the accuracy at each depth and how the misses are wrong: how many have every digit
right but the first, and the wrong first digit most of those share (a model that finds the needle and still
guesses its first digit falls back to one digit, whatever the key).

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
from dataclasses import dataclass
from pathlib import Path

import torch

import extend  # noqa: F401  (registers the position methods a checkpoint may use)
from extend.eval.generation import encode_items
from extend.eval.loading import load_tokenizer
from extend.eval.scoring import exact
from extend.models import load_pretrained
from extend.tasks import synthetic

DEFAULT_CELLS = ["256", "256+1792", "512+1536", "1024", "1024+1024", "1536", "1792", "1920", "2048", "2048@1000"]
DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
CELL = re.compile(r"^([1-9][0-9]*)(?:@([0-9]+)|\+([0-9]+))?$")


@dataclass(frozen=True)
class Cell:
    length: int
    offset: int = 0  # every position id shifted by this
    gap: int = 0  # the question's position ids shifted by this more than the text before it

    def __str__(self) -> str:
        return f"{self.length}" + (f"@{self.offset}" if self.offset else "") + (f"+{self.gap}" if self.gap else "")


def parse_cell(text: str) -> Cell:
    match = CELL.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"cell {text!r} is not LENGTH, LENGTH+GAP or LENGTH@OFFSET (e.g. 256+1792)")
    return Cell(int(match[1]), int(match[2] or 0), int(match[3] or 0))


def question_start(tokenizer, prompt: str) -> int:
    """Index of the passkey question's first token in the encoded prompt (which ends with the question)."""
    assert prompt.endswith(synthetic.PASSKEY_QUESTION)
    return len(tokenizer(prompt[: -len(synthetic.PASSKEY_QUESTION)].rstrip())["input_ids"])


def position_ids(n: int, cell: Cell, cut: int) -> list[int]:
    """Position ids of an n-token prompt: offset + index, plus the gap from index `cut` on."""
    return [cell.offset + i + (cell.gap if i >= cut else 0) for i in range(n)]


@torch.no_grad()
def greedy(model, ids: list[int], positions: list[int], steps: int) -> list[int]:
    """`steps` greedy tokens after `ids` read at `positions`; generated tokens take the next positions on.

    The explicit all-ones mask keeps the text one causal sequence: without a mask and a cache, transformers
    reads a jump in position ids as the start of another packed document and masks across it."""
    mask = torch.ones(1, len(ids), dtype=torch.long)
    out = model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]), attention_mask=mask,
                use_cache=True)
    cache, produced = out.cache, []
    for step in range(steps):
        token = int(out.logits[0, -1].argmax())
        produced.append(token)
        if step + 1 == steps:
            break
        position = torch.tensor([[positions[-1] + 1 + step]])
        out = model(input_ids=torch.tensor([[token]]), position_ids=position, cache=cache, use_cache=True)
        cache = out.cache
    return produced


def probe(model, tokenizer, cell: Cell, per_depth: int, seed: int) -> dict:
    items = synthetic.generate("passkey", tokenizer, [cell.length], per_depth, seed, depths=DEPTHS)
    records, last = [], 0
    for prompt in encode_items(tokenizer, items):
        positions = position_ids(len(prompt.input_ids), cell, question_start(tokenizer, prompt.item.prompt))
        last = max(last, positions[-1])
        prediction = tokenizer.decode(greedy(model, prompt.input_ids, positions, prompt.answer_tokens)).strip()
        records.append({"depth": prompt.item.depth, "tokens": len(prompt.input_ids),
                        "answer": prompt.item.answer.strip(), "prediction": prediction,
                        "correct": exact(prediction, prompt.item.answer)[0]})
    by_depth = {depth: [r["correct"] for r in records if r["depth"] == depth] for depth in DEPTHS}
    return {"cell": str(cell), "length": cell.length, "offset": cell.offset, "gap": cell.gap, "last_position": last,
            "accuracy": sum(r["correct"] for r in records) / len(records),
            "by_depth": {str(d): sum(hits) / len(hits) for d, hits in by_depth.items() if hits},
            "misses": misses(records), "items": records}


def misses(records: list[dict]) -> dict:
    """How the wrong answers are wrong: how many have every digit right but the first (the answer's length
    kept), and which wrong first digit is the most common among those, with its count."""
    first_only = [r for r in records if not r["correct"] and len(r["prediction"]) == len(r["answer"])
                  and r["prediction"][0] != r["answer"][0] and r["prediction"][1:] == r["answer"][1:]]
    digits = [r["prediction"][0] for r in first_only]
    common = max(sorted(set(digits)), key=digits.count) if digits else None
    return {"total": sum(not r["correct"] for r in records), "first_digit_only": len(first_only),
            "common_first_digit": common, "common_first_digit_count": digits.count(common) if common else 0}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("model", type=Path, help="a checkpoint folder (an export, e.g. outputs/tiny_pose/final)")
    parser.add_argument("--cells", nargs="+", type=parse_cell, default=[parse_cell(c) for c in DEFAULT_CELLS],
                        metavar="CELL", help=f"LENGTH, LENGTH+GAP or LENGTH@OFFSET; default: {' '.join(DEFAULT_CELLS)}")
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
    depths = " ".join(f"{d:>5g}" for d in DEPTHS)
    print(f"{'cell':>10} {'tokens':>7} {'last position':>14} {'passkey':>8}   by depth: {depths}   "
          f"{'misses':>6} {'first digit only':>16} {'seconds':>8}")
    for spec in opts.cells:
        start = time.perf_counter()
        cell = probe(model, tokenizer, spec, opts.items_per_depth, opts.seed)
        cell["seconds"] = round(time.perf_counter() - start, 1)
        record["cells"].append(cell)
        by_depth = " ".join(f"{cell['by_depth'][str(d)]:>5.0%}" for d in DEPTHS)
        miss = cell["misses"]
        first = f"{miss['first_digit_only']}" + (f" ({miss['common_first_digit_count']}x '{miss['common_first_digit']}')"
                                                  if miss["common_first_digit"] else "")
        print(f"{cell['cell']:>10} {spec.length:>7} {cell['last_position']:>14} {cell['accuracy']:>8.0%}   "
              f"          {by_depth}   {miss['total']:>6} {first:>16} {cell['seconds']:>8}", flush=True)
    if opts.out:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    sys.exit(main() and 0)
