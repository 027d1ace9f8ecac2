"""Synthetic retrieval tasks, generated from a seed at a target length in tokens.

Used both as training mix (data_prep) and for evaluation (extend.eval), so the two always agree on the
protocol. Each item is a prompt that ends where the answer begins, and the answer.

- passkey: the Landmark / LongLoRA protocol. Filler sentences, "The pass key is 12345. Remember it.
  12345 is the pass key." at a chosen depth, then "What is the pass key? The pass key is".
- lines: LongChat-Lines. Numbered lines "line <name>: REGISTER_CONTENT is <number>", then a question
  about one line.
- kv: key-value retrieval (Liu et al., 2023, "Lost in the Middle"): a JSON object of random hex keys and
  values, then the value of one key.
- numeric_qa: in the spirit of Giraffe's AlteredNumericQA: a long record of facts about invented places,
  every number drawn at random (so no model can know it from pretraining), then a question whose answer
  is one of those numbers. Unlike passkey, every sentence is a distractor of the same form.
- copy: a list of random made-up words and numbers, then the same list again as the answer. Predicting
  the repeat needs nothing but looking back (what induction heads do, the mechanism in-context retrieval
  rests on), so it teaches a small model from scratch to retrieve; short lists first is what makes it
  learnable (recipes/tiny_base.yaml).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Callable, Protocol

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
FILLER_WORDS = FILLER.split()
PASSKEY_INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
PASSKEY_QUESTION = "What is the pass key? The pass key is"
# Near misses of the needle for training items (`distractors`): each shares words with "The pass key is" and
# the question, and none holds a number, so only the needle answers it.
PASSKEY_DISTRACTORS = (
    "The door key is red.", "The car key is old.", "The house key is small.", "The old key is lost.",
    "The gate key is new.", "The pass word is blue.", "The pass code is green.", "The pass is open.",
)
# Near misses that state a number of their own (`distractor_keys`): the needle is then not the only number in
# the text, and only its words ("pass key") tell which number answers the question.
PASSKEY_KEYED_DISTRACTORS = (
    "The door key is {}.", "The car key is {}.", "The pass code is {}.", "The old key is {}.",
    "The gate number is {}.", "The pass word is {}.",
)
_FILLER_SENTENCES = [s + "." for s in FILLER.rstrip(".").split(". ")]
_WORDS = (
    "amber basin cedar delta ember falcon garnet harbor island jasper kettle lantern meadow nectar orchid "
    "pebble quartz raven saddle timber umber velvet willow yonder zephyr anchor bramble copper dune fable"
).split()


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class TaskItem:
    task: str
    prompt: str
    answer: str
    # Tokens in prompt + answer (without special tokens), as the given tokenizer counts them.
    num_tokens: int
    target_length: int
    # Where the needle sits, as a fraction of the filler (None where the task has no single depth).
    depth: float | None
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def _count(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def _fit(tokenizer: Tokenizer, target: int, build: Callable[[int], tuple[str, str]]) -> tuple[str, str, int]:
    """The largest n for which build(n) = (prompt, answer) fits in `target` tokens (binary search)."""
    lo, hi = 0, 1
    while _count(tokenizer, "".join(build(hi))) <= target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _count(tokenizer, "".join(build(mid))) <= target:
            lo = mid
        else:
            hi = mid
    prompt, answer = build(lo)
    return prompt, answer, _count(tokenizer, prompt + answer)


def passkey(tokenizer: Tokenizer, length: int, depth: float, seed: int, distractors: float = 0.0,
            distractor_keys: float = 0.0) -> TaskItem:
    """One passkey item: a 5-digit key at `depth` (0 = start, 1 = end) of the filler.

    `distractors` (training data, never the eval): the share of filler sentences that are near misses of the
    needle (PASSKEY_DISTRACTORS); the others are the plain filler's sentences in random order rather than its
    fixed cycle, all drawn per item. With the plain filler every "is" but the needle's is followed by a
    colour in a fixed order, so a model can answer by how the needle differs from the filler; near misses
    make it match the needle's own words, which does not weaken as the filler grows. `distractor_keys`: the
    share of near misses that state a 5-digit number other than the key (PASSKEY_KEYED_DISTRACTORS), so
    that the first digit of the answer, too, has to be found by the needle's words."""
    rng = random.Random(seed)
    key = rng.randint(10000, 99999)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    filler_words = FILLER_WORDS
    if distractors:
        draw = random.Random(f"{seed}:distractors")
        sentences = [_near_miss(draw, key, distractor_keys) if draw.random() < distractors
                     else draw.choice(_FILLER_SENTENCES) for _ in range(length)]
        filler_words = " ".join(sentences).split()  # at least `length` words: more than `length` tokens

    def build(words: int) -> tuple[str, str]:
        # Filler by the word, not by the sentence, so lengths and needle positions vary token by token and
        # a model cannot find the key by its position in a handful of fixed layouts.
        filler = (filler_words * (words // len(filler_words) + 1))[:words]
        before = round(words * depth)
        parts = [PASSKEY_INTRO, " ".join(filler[:before]), needle, " ".join(filler[before:]), PASSKEY_QUESTION]
        return " ".join(p for p in parts if p), f" {key}"

    prompt, answer, n = _fit(tokenizer, length, build)
    return TaskItem("passkey", prompt, answer, n, length, depth, seed)


def _near_miss(draw: random.Random, key: int, keyed: float) -> str:
    """One near miss of the needle; with probability `keyed` one that states a number (never the key)."""
    if not (keyed and draw.random() < keyed):
        return draw.choice(PASSKEY_DISTRACTORS)
    template, number = draw.choice(PASSKEY_KEYED_DISTRACTORS), draw.randint(10000, 99999)
    while number == key:
        number = draw.randint(10000, 99999)
    return template.format(number)


def lines(tokenizer: Tokenizer, length: int, seed: int) -> TaskItem:
    """One LongChat-Lines item: find the number registered in one named line among many."""
    rng = random.Random(seed)
    pool = [(f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}-{i}", rng.randint(10000, 99999)) for i in range(4096)]
    pick = rng.random()

    def build(n_lines: int) -> tuple[str, str]:
        n_lines = max(n_lines, 1)
        chosen = pool[:n_lines]
        name, value = chosen[min(int(pick * n_lines), n_lines - 1)]
        body = "\n".join(f"line {nm}: REGISTER_CONTENT is <{v}>" for nm, v in chosen)
        prompt = (
            "Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and "
            "contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. For each line index, "
            "memorize its corresponding <REGISTER_CONTENT>. At the end of the record, I will ask you to retrieve "
            f"the corresponding <REGISTER_CONTENT> of a certain line index.\n{body}\n"
            f"What is the <REGISTER_CONTENT> in line {name}? The <REGISTER_CONTENT> is"
        )
        return prompt, f" <{value}>"

    prompt, answer, n = _fit(tokenizer, length, build)
    return TaskItem("lines", prompt, answer, n, length, pick, seed)


def kv(tokenizer: Tokenizer, length: int, seed: int) -> TaskItem:
    """One key-value item: the value of one random hex key in a JSON object of such pairs."""
    rng = random.Random(seed)
    pool = [(f"{rng.getrandbits(64):016x}", f"{rng.getrandbits(64):016x}") for _ in range(4096)]
    pick = rng.random()

    def build(n_pairs: int) -> tuple[str, str]:
        n_pairs = max(n_pairs, 1)
        chosen = pool[:n_pairs]
        key, value = chosen[min(int(pick * n_pairs), n_pairs - 1)]
        body = ", ".join(f'"{k}": "{v}"' for k, v in chosen)
        prompt = (
            "Extract the value corresponding to the specified key in the JSON object below.\n"
            f"{{{body}}}\nKey: \"{key}\"\nThe value associated with the specified key is:"
        )
        return prompt, f' "{value}"'

    prompt, answer, n = _fit(tokenizer, length, build)
    return TaskItem("kv", prompt, answer, n, length, pick, seed)


_PLACES = (
    "Arden Brayford Calloway Dunmere Elsworth Farrowby Glenhurst Halcombe Irvale Jessamy Kelderby Lowmarsh "
    "Merriton Northwold Oakhaven Pellingham Quarrendon Rushcombe Stanwick Thornbury Ulverdale Westerleigh"
).split()
# (question about the quantity, sentence that states it, digits of the random value)
_FACTS = (
    ("In which year was {place} founded", "{place} was founded in the year {value}.", 4),
    ("How many people live in {place}", "The population of {place} is {value}.", 5),
    ("How many metres above sea level does {place} lie", "{place} lies {value} metres above sea level.", 3),
    ("How many bridges cross the river at {place}", "The river at {place} is crossed by {value} bridges.", 2),
    ("How many books does the library of {place} hold", "The library of {place} holds {value} books.", 6),
)


def numeric_qa(tokenizer: Tokenizer, length: int, seed: int) -> TaskItem:
    """One numeric QA item: facts with random numbers about invented places, a question about one."""
    rng = random.Random(seed)
    facts = []
    for i in range(4096):
        place = f"{rng.choice(_PLACES)}-{rng.choice(_WORDS)}-{i}"
        question, sentence, digits = _FACTS[rng.randrange(len(_FACTS))]
        value = rng.randint(10 ** (digits - 1), 10 ** digits - 1)
        facts.append((question.format(place=place), sentence.format(place=place, value=value), value))
    pick = rng.random()

    def build(n_facts: int) -> tuple[str, str]:
        n_facts = max(n_facts, 1)
        question, _, value = facts[min(int(pick * n_facts), n_facts - 1)]
        body = " ".join(sentence for _, sentence, _ in facts[:n_facts])
        prompt = (
            "Read the record below and answer the question with a number from the record.\n"
            f"{body}\nQuestion: {question}? Answer with the number only.\nAnswer:"
        )
        return prompt, f" {value}"

    prompt, answer, n = _fit(tokenizer, length, build)
    return TaskItem("numeric_qa", prompt, answer, n, length, pick, seed)


_LETTERS = "abcdefghijklmnopqrstuvwxyz"
COPY_INTRO = "Repeat the words:"
COPY_QUESTION = "\nAgain:"


def copy(tokenizer: Tokenizer, length: int, seed: int) -> TaskItem:
    """One copy item: as many random words (2-6 letters or digits) as fit twice in `length` tokens, then the list
    again."""
    rng = random.Random(seed)
    # A third of the words are numbers, so copying digits is learned too (a passkey is digits). Every word
    # is at least one token, so `length` words are always enough.
    alphabets = (_LETTERS, _LETTERS, "0123456789")
    pool = ["".join(rng.choice(chars) for _ in range(rng.randint(2, 6))) for chars in rng.choices(alphabets, k=length)]

    def build(n_words: int) -> tuple[str, str]:
        words = " " + " ".join(pool[: max(n_words, 1)])
        # Both copies are " word word ...": the same pre-tokens, so the answer repeats the prompt's tokens.
        return f"{COPY_INTRO}{words}{COPY_QUESTION}", words

    prompt, answer, n = _fit(tokenizer, length, build)
    return TaskItem("copy", prompt, answer, n, length, None, seed)


TASKS = ("passkey", "lines", "kv", "numeric_qa", "copy")


def cell_seed(seed: int, task: str, length: int, depth: float | None, index: int) -> int:
    """A seed for one item that depends only on its own cell (string seeding is stable across processes,
    unlike hash())."""
    return random.Random(f"{seed}:{task}:{length}:{depth}:{index}").getrandbits(31)


def generate(
    task: str, tokenizer: Tokenizer, lengths: list[int], num_items: int, seed: int,
    depths: list[float] | None = None, distractors: float = 0.0, distractor_keys: float = 0.0,
) -> list[TaskItem]:
    """`num_items` items per length (per length x depth for passkey), each seeded from `seed` and its cell,
    so one cell's items do not change when other lengths or depths are added. `distractors` and
    `distractor_keys`: passkey only (see `passkey`)."""
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; choose one of {', '.join(TASKS)}")
    items = []
    for length in lengths:
        if task == "passkey":
            for depth in depths or [0.0, 0.25, 0.5, 0.75, 1.0]:
                for i in range(num_items):
                    items.append(passkey(tokenizer, length, depth, cell_seed(seed, task, length, depth, i),
                                         distractors, distractor_keys))
        else:
            fn = {"lines": lines, "kv": kv, "numeric_qa": numeric_qa, "copy": copy}[task]
            for i in range(num_items):
                items.append(fn(tokenizer, length, cell_seed(seed, task, length, None, i)))
    return items
