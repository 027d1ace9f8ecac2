"""The schema of eval.json, as data, and a validator for it (documented in docs/evaluation.md).

A spec is a Python type (or tuple of types), a dict of `key -> (spec, required)`, `{"*": spec}` for a
mapping with free keys, or `[spec]` for a list of such values.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1
_NUM = (int, float)

CELL = {
    "value": ((int, float, type(None)), True),  # accuracy in [0, 1], or perplexity (null if it overflowed)
    "length": (int, True),  # the length the cell stands for, in tokens
    "n": (int, False),  # items scored (generation tasks)
    "partial": (_NUM, False),  # mean partial credit (generation tasks)
    "mean_tokens": (_NUM, False),  # mean prompt tokens (generation tasks)
    "nll": (_NUM, False),  # mean negative log-likelihood per token (perplexity)
    "tokens": (int, False),  # scored tokens (perplexity)
    "windows": (int, False),  # windows scored (perplexity)
}
ITEM = {
    "cell": (str, True), "length": (int, True), "depth": ((int, float, type(None)), True),
    "num_tokens": (int, True), "seed": (int, True), "answer": (str, True), "prediction": (str, True),
    "correct": (bool, True), "partial": (_NUM, True),
}
TASK_RESULT = {
    "metric": (str, True),  # "accuracy" or "perplexity"
    "scorer": (str, False),  # generation tasks: exact / first_number / presence
    "by_length": ({"*": CELL}, True),
    "by_length_depth": ({"*": {"*": CELL}}, False),  # passkey: length -> depth -> cell
    "items": ([ITEM], False),  # generation tasks: every item with its prediction
}
CONDITION = {
    "name": (str, True), "model": (str, True), "rope": ((dict, type(None)), True),
    "rope_parameters": (dict, True), "served_length": (int, True),
}
EVAL_JSON = {
    "schema_version": (int, True),
    "created": (str, True),
    "model": (str, True),
    "tokenizer": (str, True),
    "config": (dict, True),
    "conditions": ([CONDITION], True),
    "complete": (bool, True),  # false while models are still being evaluated (results has those done)
    "results": ({"*": {"*": TASK_RESULT}}, True),  # condition name -> task name -> task result
}


def validate(data: Any, spec: Any = EVAL_JSON, where: str = "eval.json") -> list[str]:
    """Every place `data` departs from `spec`, as 'path: problem' lines (empty when it conforms)."""
    if isinstance(spec, list):
        if not isinstance(data, list):
            return [f"{where}: expected a list, got {type(data).__name__}"]
        return [p for i, v in enumerate(data) for p in validate(v, spec[0], f"{where}[{i}]")]
    if isinstance(spec, dict) and "*" in spec:
        if not isinstance(data, dict):
            return [f"{where}: expected an object, got {type(data).__name__}"]
        return [p for k, v in data.items() for p in validate(v, spec["*"], f"{where}.{k}")]
    if isinstance(spec, dict):
        if not isinstance(data, dict):
            return [f"{where}: expected an object, got {type(data).__name__}"]
        problems = [f"{where}: unexpected key {k!r}" for k in data if k not in spec]
        for key, (sub, required) in spec.items():
            if key in data:
                problems += validate(data[key], sub, f"{where}.{key}")
            elif required:
                problems.append(f"{where}: missing key {key!r}")
        return problems
    # bool is an int in Python; do not let True pass as a count.
    if isinstance(data, bool) and bool not in (spec if isinstance(spec, tuple) else (spec,)):
        return [f"{where}: expected {spec}, got bool"]
    if not isinstance(data, spec):
        return [f"{where}: expected {spec}, got {type(data).__name__}"]
    return []
