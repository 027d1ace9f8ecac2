"""Evaluation that shows whether the context really got longer: perplexity vs length, passkey over
lengths x depths, line / key-value retrieval, numeric QA, Giraffe's Hub sets; several models compared on
the same items. `run_eval(cfg, model=..., tokenizer=...)` is what training calls at the end of a run."""

# Importing the task modules registers them.
from extend.eval import hub, kv, lines, numeric_qa, passkey, perplexity  # noqa: F401
from extend.eval.registry import TASKS, register
from extend.eval.runner import prepare, run_eval

__all__ = ["TASKS", "prepare", "register", "run_eval"]
