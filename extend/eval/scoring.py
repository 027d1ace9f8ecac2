"""Scorers: a model's generated text against the expected answer, registered by name.

Each returns `(correct, partial)`: exact credit (0 or 1) and a partial credit in [0, 1] that shows how
close a wrong answer came (the share of the answer's characters produced before the first mismatch).

- `exact`: the answer, then a boundary. The prediction (leading whitespace dropped) must start with the
  answer, and the next character, if any, must not continue it (`12345` for `1234` is wrong; `12345.` or
  `12345 is the key` is right). Used by the synthetic tasks.
- `first_number`: the first integer in the prediction equals the answer's (LongChat-Lines as Giraffe
  scores it).
- `presence`: the answer appears anywhere in the prediction, case-insensitive ("presence accuracy", how
  Giraffe scores WikiQA).
"""

from __future__ import annotations

import re
from typing import Callable

_NUMBER = re.compile(r"\d+")


def _prefix_share(prediction: str, answer: str) -> float:
    matched = 0
    for p, a in zip(prediction, answer):
        if p != a:
            break
        matched += 1
    return matched / len(answer) if answer else 0.0


def exact(prediction: str, answer: str) -> tuple[bool, float]:
    pred, ans = prediction.lstrip(), answer.strip()
    if not ans:
        raise ValueError("the expected answer is empty")
    starts = pred.startswith(ans)
    # An answer that ends in a word character must not run on into another one ("12345" vs "123456").
    runs_on = len(pred) > len(ans) and ans[-1].isalnum() and pred[len(ans)].isalnum()
    correct = starts and not runs_on
    return correct, 1.0 if correct else _prefix_share(pred, ans)


def first_number(prediction: str, answer: str) -> tuple[bool, float]:
    expected = _NUMBER.findall(answer)
    if not expected:
        raise ValueError(f"the expected answer {answer!r} has no number")
    found = _NUMBER.findall(prediction)
    if not found:
        return False, 0.0
    correct = int(found[0]) == int(expected[0])
    return correct, 1.0 if correct else _prefix_share(found[0], expected[0])


def presence(prediction: str, answer: str) -> tuple[bool, float]:
    ans = answer.strip().lower()
    if not ans:
        raise ValueError("the expected answer is empty")
    correct = ans in prediction.lower()
    return correct, 1.0 if correct else _prefix_share(prediction.lstrip().lower(), ans)


SCORERS: dict[str, Callable[[str, str], tuple[bool, float]]] = {
    "exact": exact,
    "first_number": first_number,
    "presence": presence,
}
