"""The task registry: every evaluation task registers itself here under the name `eval.tasks` uses.

A task is split in two so that everything cheap happens before any model is loaded, and so that every
compared model sees exactly the same items:
- `prepare(tokenizer, cfg, max_lengths)` builds the items (or perplexity windows) once;
- `run(model, tokenizer, prepared, cfg, served_length)` scores one model on them and returns the
  task's block of eval.json (see docs/evaluation.md for its schema).
"""

from __future__ import annotations

from typing import Any, Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from extend.config import EvalConfig


class EvalTask(Protocol):
    name: str
    # The headline metric of `value` in every cell: "accuracy" (0..1) or "perplexity".
    metric: str

    def prepare(self, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig) -> Any: ...

    def longest(self, prepared: Any) -> int:
        """The most tokens one input of this task needs (checked against each model's length)."""
        ...

    def run(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prepared: Any, cfg: EvalConfig,
            served_length: int) -> dict[str, Any]: ...


TASKS: dict[str, EvalTask] = {}


def register(task: EvalTask) -> EvalTask:
    if task.name in TASKS:
        raise ValueError(f"evaluation task {task.name!r} is registered twice")
    TASKS[task.name] = task
    return task
