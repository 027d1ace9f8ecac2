"""Retrieval and QA tasks scored on greedy generations: batched, left-padded, with the KV cache.

A `GenerationTask` turns items (prompt, expected answer) into cells of accuracy: one cell per length,
or per length x depth where the task has a depth (passkey). Every compared model answers the same items.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from extend.config import ConfigError, EvalConfig
from extend.eval.scoring import SCORERS
from extend.tasks.synthetic import TaskItem
from extend.models.placement import input_device


@dataclass(frozen=True)
class Prompt:
    """One item, tokenized once for every model: its cell (a length, or a Hub split name)."""

    item: TaskItem
    cell: str
    # The length plotted for the cell: the target length, or the measured prompt length of a Hub item.
    length: int
    input_ids: list[int]
    answer_tokens: int


def items_per_cell(cfg: EvalConfig) -> int:
    return min(cfg.items_per_cell, cfg.limit) if cfg.limit is not None else cfg.items_per_cell


def encode_items(tokenizer: PreTrainedTokenizerBase, items: list[TaskItem], cells: list[str] | None = None,
                 lengths: list[int] | None = None) -> list[Prompt]:
    """Tokenize prompts the way the model will see them (with the tokenizer's special tokens, e.g. BOS)."""
    prompts = []
    for i, item in enumerate(items):
        ids = tokenizer(item.prompt)["input_ids"]
        answer = len(tokenizer.encode(item.answer, add_special_tokens=False))
        cell = cells[i] if cells else str(item.target_length)
        length = lengths[i] if lengths else item.target_length
        prompts.append(Prompt(item, cell, length, list(ids), answer))
    return prompts


@dataclass(frozen=True)
class GenerationTask:
    name: str
    # (tokenizer, cfg) -> the prompts every model answers.
    build: Callable[[PreTrainedTokenizerBase, EvalConfig], list[Prompt]]
    scorer: str = "exact"
    # Report accuracy per (length, depth) as well as per length (needle heatmaps).
    by_depth: bool = False
    metric: str = "accuracy"

    def prepare(self, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig) -> list[Prompt]:
        prompts = self.build(tokenizer, cfg)
        too_short: dict[int, int] = {}
        for p in prompts:
            if p.item.num_tokens > p.length:
                too_short[p.length] = min(p.item.num_tokens, too_short.get(p.length, p.item.num_tokens))
        if too_short:
            raise ConfigError([f"{self.name} at length {length}: its shortest item is {n} tokens with this "
                               "tokenizer; drop that length from eval.lengths"
                               for length, n in sorted(too_short.items())])
        return prompts

    def longest(self, prepared: list[Prompt]) -> int:
        return max(len(p.input_ids) + p.answer_tokens for p in prepared)

    def run(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prepared: list[Prompt],
            cfg: EvalConfig, served_length: int) -> dict[str, Any]:
        predictions = generate_answers(model, tokenizer, prepared, cfg, served_length, desc=self.name)
        score = SCORERS[self.scorer]
        records = []
        for prompt, prediction in zip(prepared, predictions):
            correct, partial = score(prediction, prompt.item.answer)
            records.append({
                "cell": prompt.cell,
                "length": prompt.length,
                "depth": prompt.item.depth if self.by_depth else None,
                "num_tokens": len(prompt.input_ids),
                "seed": prompt.item.seed,
                "answer": prompt.item.answer.strip(),
                "prediction": prediction,
                "correct": bool(correct),
                "partial": float(partial),
            })
        result: dict[str, Any] = {"metric": self.metric, "scorer": self.scorer,
                                  "by_length": _summarise(records, lambda r: r["cell"])}
        if self.by_depth:
            result["by_length_depth"] = {
                cell: _summarise([r for r in records if r["cell"] == cell], lambda r: f"{r['depth']:g}")
                for cell in result["by_length"]
            }
        result["items"] = records
        return result


def _summarise(records: list[dict], key: Callable[[dict], str]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[key(r)].append(r)
    return {
        k: {
            "value": sum(r["correct"] for r in rs) / len(rs),
            "partial": sum(r["partial"] for r in rs) / len(rs),
            "n": len(rs),
            "length": round(sum(r["length"] for r in rs) / len(rs)),
            "mean_tokens": sum(r["num_tokens"] for r in rs) / len(rs),
        }
        for k, rs in groups.items()
    }


@torch.inference_mode()
def generate_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt],
                     cfg: EvalConfig, served_length: int, desc: str = "generate") -> list[str]:
    """Greedy answers, batched by similar length (left padding), decoded without special tokens.

    Each item may generate its answer's length plus `eval.extra_new_tokens`, so text after the answer is
    seen by the scorer; never past `served_length` unless `eval.extrapolate` allows it.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
    answers: list[str] = [""] * len(prompts)
    device = input_device(model)
    batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    for batch in tqdm(batches, desc=desc, leave=False):
        rows = [prompts[i].input_ids for i in batch]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, width - len(r):] = torch.tensor(r)
            mask[j, width - len(r):] = 1
        new_tokens = max(prompts[i].answer_tokens for i in batch) + cfg.extra_new_tokens
        if not cfg.extrapolate:
            new_tokens = max(1, min(new_tokens, served_length - width))
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new_tokens,
            do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
        )
        for j, i in enumerate(batch):
            answers[i] = tokenizer.decode(out[j, width:], skip_special_tokens=True)
    return answers
