"""Giraffe's published evaluation sets, loaded by their Hub names and scored like the synthetic tasks.

- `abacusai/LongChat-Lines`: splits named by the number of lines; columns `prompt`, `expected_number`;
  scored on the first number generated (as Giraffe does).
- `abacusai/WikiQA-Free_Form_QA`, `abacusai/WikiQA-Altered_Numeric_QA`: splits 2k / 4k / 8k / 16k;
  `conversations[0].value` is the document and question, `conversations[1].value` the answer; scored by
  presence of the answer in the generation ("presence accuracy", Giraffe's metric).

Prompts are fed as the sets store them (Giraffe wraps them in a Vicuna chat template). A split is kept
when its longest prompt fits the longest of `eval.lengths`; cells are the split names. Offline, asking for
one of these is a ConfigError before any model is loaded, never a silent skip.
"""

from __future__ import annotations

import os
import random
from typing import Callable

from transformers import PreTrainedTokenizerBase

from extend.config import ConfigError, EvalConfig
from extend.eval.generation import GenerationTask, Prompt, encode_items, items_per_cell
from extend.eval.registry import register
from extend.tasks.synthetic import TaskItem

_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def _lines_row(row: dict) -> tuple[str, str]:
    return row["prompt"], f" {row['expected_number']}"


def _wikiqa_row(row: dict) -> tuple[str, str]:
    return row["conversations"][0]["value"], " " + row["conversations"][1]["value"]


def load_splits(repo: str) -> dict[str, list[dict]]:
    """Every split of a Hub dataset as rows; a ConfigError naming the fix when the Hub cannot be reached."""
    offline = [v for v in _OFFLINE_VARIABLES if os.environ.get(v, "").lower() in ("1", "true", "yes", "on")]
    if offline:
        raise ConfigError([f"eval task {repo} loads a Hub dataset, but {' and '.join(offline)} is set: unset it "
                           "where the Hub is reachable, or drop the task (offline, use passkey / lines / kv / "
                           "numeric_qa)"])
    from datasets import load_dataset

    try:
        data = load_dataset(repo)
    except (OSError, ValueError) as err:  # unreachable Hub: ConnectionError; unknown name: FileNotFoundError
        raise ConfigError([f"eval task {repo} could not load the Hub dataset ({err.__class__.__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); run where the Hub is reachable or "
                           "drop the task (offline, use passkey / lines / kv / numeric_qa)"]) from err
    return {split: list(data[split]) for split in data}


def hub_prompts(tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig, repo: str, splits: dict[str, list[dict]],
                to_pair: Callable[[dict], tuple[str, str]]) -> list[Prompt]:
    """`items_per_cell` rows per split, drawn with the seed; splits whose prompts fit max(eval.lengths)."""
    budget = max(cfg.lengths)
    prompts: list[Prompt] = []
    skipped = []
    for split, rows in splits.items():
        rng = random.Random(f"{cfg.seed}:{repo}:{split}")
        chosen = sorted(rng.sample(range(len(rows)), min(items_per_cell(cfg), len(rows))))
        items = []
        for index in chosen:
            prompt, answer = to_pair(rows[index])
            n = len(tokenizer.encode(prompt + answer, add_special_tokens=False))
            items.append(TaskItem(repo, prompt, answer, n, n, None, index))
        if max(i.num_tokens for i in items) > budget:
            skipped.append(split)
            continue
        prompts += encode_items(tokenizer, items, cells=[split] * len(items), lengths=[i.num_tokens for i in items])
    if not prompts:
        raise ConfigError([f"eval task {repo}: no split fits max(eval.lengths)={budget} tokens (splits: "
                           f"{', '.join(skipped)}); raise eval.lengths"])
    return prompts


def _task(repo: str, to_pair: Callable[[dict], tuple[str, str]], scorer: str) -> GenerationTask:
    def build(tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig) -> list[Prompt]:
        return hub_prompts(tokenizer, cfg, repo, load_splits(repo), to_pair)

    return GenerationTask(repo, build, scorer=scorer)


register(_task("abacusai/LongChat-Lines", _lines_row, "first_number"))
register(_task("abacusai/WikiQA-Free_Form_QA", _wikiqa_row, "presence"))
register(_task("abacusai/WikiQA-Altered_Numeric_QA", _wikiqa_row, "presence"))
