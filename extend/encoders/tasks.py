"""LongEmbed-style retrieval sets for encoders (Zhu et al. 2024), generated from a seed, plus local files.

A set has queries, candidate documents and, for every query, the documents that answer it. The synthetic
sets have `candidates` documents of exactly `length` tokens each (special tokens included) and one query
per document, whose only relevant document is that one:

- passkey: the project's filler sentences (extend.tasks.synthetic.FILLER) with
  "The pass key is NNNNN. Remember it. NNNNN is the pass key." at a sentence boundary at a uniformly drawn
  depth; query: "What is the pass key? The pass key is NNNNN." Documents differ only in key and depth.
- needle: a window of held-out Python standard-library text (a different window per document) with one
  fact "The secret <thing> of <place> is <value>." inside; query: "What is the secret <thing> of <place>?"
  Every document holds a different (thing, place) pair, so the haystack alone never identifies it.
- line: the fine-tuning task (train.py) on held-out text: one window of held-out standard-library lines
  shared by every document, each with a different held-out line inserted at a random line boundary; query:
  that line. Not LongEmbed's; in-domain for a model trained with encoder.train, it measures whether an
  extension keeps what that training taught (bench/studies/rope_encoder_study.py).

Documents are built from token ids (sentences tokenised one by one and concatenated, which for WordPiece
equals tokenising the whole text), so every document has exactly the target length.

Local sets: a folder with `corpus.jsonl` ({"id", "text"}), `queries.jsonl` ({"id", "text"}) and
`qrels.jsonl` ({"query_id", "doc_id"}; one line per relevant pair), as in BEIR, or the same rows built in
memory (extend/encoders/docstrings.py: `stdlib-docstrings`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from extend.config import ConfigError
from extend.corpus import read_document, stdlib_heldout_files, stdlib_training_files
from extend.tasks.synthetic import FILLER

PLACES = ("Velmora Arkhan Brisca Doventh Elsmire Farrowick Galdun Hestria Iskavel Jorvath Kelmoor Lunaris "
          "Mardell Norwyn Orlesque Pellacor Quenmark Rostavel Sundrell Tarvosk Ulmerin Vantris Wexhollow "
          "Yarrowind Zephyrine").split()
THINGS = "recipe password colour animal river song flower mountain number festival".split()
VALUES = "amber basin cedar delta ember falcon garnet harbor island jasper kettle lantern meadow nectar".split()


@dataclass
class RetrievalSet:
    """Queries and documents as token ids with special tokens, and the relevant documents per query."""

    name: str
    queries: list[list[int]]
    docs: list[list[int]]
    relevant: list[set[int]]
    length: int | None = None


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _special_parts(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single text (BERT: [CLS], [SEP])."""
    plain, full = token_ids(tokenizer, "a"), tokenizer("a")["input_ids"]
    start = next(i for i in range(len(full)) if full[i:i + len(plain)] == plain)
    return full[:start], full[start + len(plain):]


def special_tail(tokenizer) -> int:
    """How many special tokens close a single text (BERT: 1, [SEP]; Llama-style tokenizers: 0)."""
    return len(_special_parts(tokenizer)[1])


def with_specials(tokenizer, ids: list[int]) -> list[int]:
    head, tail = _special_parts(tokenizer)
    return head + ids + tail


def _specials(tokenizer) -> int:
    return len(with_specials(tokenizer, []))


def _document(tokenizer, sentences: list[list[int]], needle: list[int], length: int, depth: float,
              prefix: list[int]) -> list[int]:
    """`prefix` + haystack sentences cut to fill `length` tokens, the needle at the sentence boundary
    nearest `depth` of the haystack."""
    budget = length - _specials(tokenizer) - len(needle) - len(prefix)
    if budget < 0:
        raise ValueError(f"length {length} is too short for the needle ({len(needle)} tokens)")
    hay: list[int] = []
    starts = [0]
    for sentence in sentences:
        if len(hay) >= budget:
            break
        hay += sentence
        starts.append(len(hay))
    if len(hay) < budget:
        raise ValueError("the haystack text is too short for this length")
    hay = hay[:budget]
    cut = min((s for s in starts if s <= budget), key=lambda s: abs(s - depth * budget))
    return with_specials(tokenizer, prefix + hay[:cut] + needle + hay[cut:])


def passkey(tokenizer, length: int, candidates: int, seed: int, prefixes: tuple[str, str] = ("", "")) -> RetrievalSet:
    """`prefixes`: text put before every (query, document), e.g. E5's ("query: ", "passage: ")."""
    query_prefix, doc_prefix = token_ids(tokenizer, prefixes[0]), token_ids(tokenizer, prefixes[1])
    rng = random.Random(seed)
    filler = [token_ids(tokenizer, s.strip() + ".") for s in FILLER.split(".") if s.strip()]
    sentences = filler * (length // sum(map(len, filler)) + 2)
    keys = rng.sample(range(10000, 100000), candidates)
    docs, queries = [], []
    for key in keys:
        needle = token_ids(tokenizer, f"The pass key is {key}. Remember it. {key} is the pass key.")
        docs.append(_document(tokenizer, sentences, needle, length, rng.random(), doc_prefix))
        queries.append(with_specials(tokenizer, query_prefix + token_ids(tokenizer, f"What is the pass key? The pass key is {key}.")))
    return RetrievalSet("passkey", queries, docs, [{i} for i in range(candidates)], length)


_LINES: dict[str, list[str]] = {}


def haystack_lines(split: str, max_files: int = 40) -> list[str]:
    """Non-empty lines of standard-library files: `heldout` (evaluation) or `training` (fine-tuning), which
    never share a file. Cached per process."""
    if split not in _LINES:
        files = {"heldout": stdlib_heldout_files, "training": stdlib_training_files}[split]()
        lines = [line.strip() for path in files[:max_files] for line in read_document(path).splitlines()]
        _LINES[split] = [line for line in lines if line]
    return _LINES[split]


def line_window(tokenizer, lines: list[str], start: int, tokens: int) -> list[list[int]]:
    """Consecutive lines from `start` (wrapping around), tokenised, until they hold at least `tokens` tokens."""
    out, total = [], 0
    while total < tokens:
        ids = token_ids(tokenizer, lines[(start + len(out)) % len(lines)])
        out.append(ids)
        total += len(ids)
    return out


def needle(tokenizer, length: int, candidates: int, seed: int, prefixes: tuple[str, str] = ("", ""),
           split: str = "heldout") -> RetrievalSet:
    """`split`: `heldout` haystack text for evaluation, `training` for fine-tuning pairs."""
    query_prefix, doc_prefix = token_ids(tokenizer, prefixes[0]), token_ids(tokenizer, prefixes[1])
    rng = random.Random(seed)
    pairs = rng.sample([(t, p) for t in THINGS for p in PLACES], candidates)
    lines = haystack_lines(split)
    docs, queries = [], []
    for thing, place in pairs:
        fact = token_ids(tokenizer, f"The secret {thing} of {place} is {rng.choice(VALUES)}.")
        hay = line_window(tokenizer, lines, rng.randrange(len(lines)), length)
        docs.append(_document(tokenizer, hay, fact, length, rng.random(), doc_prefix))
        queries.append(with_specials(tokenizer, query_prefix + token_ids(tokenizer, f"What is the secret {thing} of {place}?")))
    return RetrievalSet("needle", queries, docs, [{i} for i in range(candidates)], length)


def line(tokenizer, length: int, candidates: int, seed: int, prefixes: tuple[str, str] = ("", ""),
         min_tokens: int = 8, max_tokens: int = 48) -> RetrievalSet:
    """The fine-tuning task (train.make_batch) on held-out text: every document is the same window of
    held-out standard-library lines with a different held-out line (min_tokens..max_tokens tokens, found
    nowhere in the window) inserted at its own random line boundary; the query is that line. In-domain for
    a model trained with encoder.train, so it measures whether an extension keeps what training taught."""
    query_prefix, doc_prefix = token_ids(tokenizer, prefixes[0]), token_ids(tokenizer, prefixes[1])
    rng = random.Random(seed)
    lines = haystack_lines("heldout")
    hay = line_window(tokenizer, lines, rng.randrange(len(lines)), length)
    taken = {tuple(ids) for ids in hay}
    needles: list[list[int]] = []
    while len(needles) < candidates:
        ids = token_ids(tokenizer, lines[rng.randrange(len(lines))])
        if min_tokens <= len(ids) <= max_tokens and tuple(ids) not in taken:
            taken.add(tuple(ids))
            needles.append(ids)
    docs = [_document(tokenizer, hay, ids, length, rng.random(), doc_prefix) for ids in needles]
    queries = [with_specials(tokenizer, query_prefix + ids) for ids in needles]
    return RetrievalSet("line", queries, docs, [{i} for i in range(candidates)], length)


# task name -> generator(tokenizer, length, candidates, seed)
SYNTHETIC: dict[str, Callable[..., RetrievalSet]] = {"passkey": passkey, "needle": needle, "line": line}


LOCAL_FILES = ("corpus.jsonl", "queries.jsonl", "qrels.jsonl")


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConfigError([f"encoder.eval.local_sets: {path} is missing; a local set is a folder with corpus.jsonl, "
                           "queries.jsonl and qrels.jsonl"])
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def local_set(tokenizer, folder: str, prefixes: tuple[str, str] = ("", "")) -> RetrievalSet:
    """A BEIR-like folder of jsonl files, tokenised (truncation happens when a model reads it)."""
    root = Path(folder)
    corpus, queries, qrels = (_jsonl(root / f) for f in LOCAL_FILES)
    return rows_set(tokenizer, root.name, corpus, queries, qrels, prefixes, str(root / "qrels.jsonl"))


def rows_set(tokenizer, name: str, corpus: list[dict], queries: list[dict], qrels: list[dict],
             prefixes: tuple[str, str] = ("", ""), source: str = "qrels") -> RetrievalSet:
    """A local set from its rows (as the jsonl files hold them), named `local:<name>`; `source` names the
    qrels in an error."""
    doc_index = {d["id"]: i for i, d in enumerate(corpus)}
    query_index = {q["id"]: i for i, q in enumerate(queries)}
    relevant: list[set[int]] = [set() for _ in queries]
    for row in qrels:
        if row["query_id"] not in query_index or row["doc_id"] not in doc_index:
            raise ConfigError([f"encoder.eval.local_sets: {source} names query {row['query_id']!r} "
                               f"/ document {row['doc_id']!r}, which queries.jsonl / corpus.jsonl do not hold"])
        relevant[query_index[row["query_id"]]].add(doc_index[row["doc_id"]])
    keep = [i for i, r in enumerate(relevant) if r]
    return RetrievalSet(f"local:{name}",
                        [with_specials(tokenizer, token_ids(tokenizer, prefixes[0] + queries[i]["text"])) for i in keep],
                        [with_specials(tokenizer, token_ids(tokenizer, prefixes[1] + d["text"])) for d in corpus],
                        [relevant[i] for i in keep])
