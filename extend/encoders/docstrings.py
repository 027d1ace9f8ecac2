"""`stdlib-docstrings`: a short natural-language retrieval set from the docstrings of the held-out
standard-library files (extend.corpus.stdlib_heldout_files), which no fine-tune reads.

It checks that an extension keeps short-input embedding quality, on a task the contrastive fine-tune
(find an inserted line in a long haystack) does not teach: match a function's one-sentence summary to the
rest of its documentation.

Query: the first sentence of a function's, method's or class's docstring. Document: the rest of the
docstring's prose: doctest examples, indented blocks (code, parameter tables), reST field lines
(`:param x:`), underlines and bare headings ("Usage::", "Args:") are dropped. A docstring counts when its
document has at least MIN_SENTENCES sentences and MIN_WORDS words, at most MAX_WORDS (so a 512-token
encoder reads it whole), and does not repeat the summary. Identical pairs count once; a query or document
text that two different pairs share is dropped, so every query has exactly one relevant document. Every
document is a candidate; `count` queries are drawn from them with `seed` (all by default). The set
changes with the Python version whose standard library it reads.

    python -m extend.encoders.docstrings OUT_DIR [--count N] [--seed S]

writes it as a local set (corpus.jsonl, queries.jsonl, qrels.jsonl) for encoder.eval.local_sets=[OUT_DIR];
encoder.eval.local_sets=[stdlib-docstrings] builds the same set, every query, in memory.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from extend.corpus import python_version, read_document, stdlib_heldout_files, stdlib_root
from extend.encoders.tasks import LOCAL_FILES

NAME = "stdlib-docstrings"
MIN_SENTENCES, MIN_WORDS, MAX_WORDS = 2, 25, 300
QUERY_WORDS = (3, 40)  # a longer first sentence is a paragraph, not a summary

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'`*])")
FIELD = re.compile(r":(param|type|returns?|rtype|raises?|var|ivar|cvar)\b")
HEADING = re.compile(r"\w+(\s+\w+){0,2}\s*::?")  # "Usage::", "For example::", "Args:"


@dataclass(frozen=True)
class Pair:
    id: str  # "<file in the standard library>:<line>:<qualified name>"
    query: str
    doc: str


def prose_paragraphs(docstring: str) -> list[str]:
    """The prose of a cleaned docstring (ast.get_docstring), one string per paragraph."""
    paragraphs, current, in_doctest = [], [], False
    for line in docstring.splitlines() + [""]:
        text = line.strip()
        if not text:
            in_doctest = False
            if current:
                paragraphs.append(" ".join(current))
                current = []
        elif text.startswith(">>>") or in_doctest:
            in_doctest = True  # a doctest example and its output run to the next blank line
        elif line[0].isspace() or FIELD.match(text) or HEADING.fullmatch(text) or set(text) <= set("-=~^"):
            continue
        else:
            current.append(text[:-1] if text.endswith("::") else text)  # reST's "::" ends a lead-in sentence
    return paragraphs


def split_docstring(docstring: str) -> tuple[str, str] | None:
    """(summary sentence, the rest of the prose), or None when the docstring does not qualify."""
    paragraphs = prose_paragraphs(docstring)
    if not paragraphs:
        return None
    first = SENTENCE_END.split(paragraphs[0], maxsplit=1)
    query, doc = first[0], " ".join(first[1:] + paragraphs[1:])
    words = len(doc.split())
    if not QUERY_WORDS[0] <= len(query.split()) <= QUERY_WORDS[1] or not MIN_WORDS <= words <= MAX_WORDS:
        return None
    if len(SENTENCE_END.split(doc)) < MIN_SENTENCES or _plain(query) in _plain(doc):
        return None
    return query, doc


def _plain(text: str) -> str:
    return " ".join(text.lower().split())


def _documented(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    """(qualified name, node) of every function, method and class under `node`, in source order."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield prefix + child.name, child
            yield from _documented(child, f"{prefix}{child.name}.")
        else:
            yield from _documented(child, prefix)


def all_pairs() -> list[Pair]:
    """Every qualifying (summary, document) pair of the held-out files, in sorted file and source order."""
    root, found = stdlib_root(), []
    for path in stdlib_heldout_files():
        for name, node in _documented(ast.parse(read_document(path))):
            docstring = ast.get_docstring(node)
            pair = split_docstring(docstring) if docstring else None
            if pair:
                found.append(Pair(f"{path.relative_to(root).as_posix()}:{node.lineno}:{name}", *pair))
    return unambiguous(found)


def unambiguous(pairs: list[Pair]) -> list[Pair]:
    """Identical pairs once (the first), then no pair whose query or document another pair shares."""
    first: dict[tuple[str, str], Pair] = {}
    for item in pairs:
        first.setdefault((item.query, item.doc), item)
    unique = list(first.values())
    queries, docs = Counter(p.query for p in unique), Counter(p.doc for p in unique)
    return [p for p in unique if queries[p.query] == 1 and docs[p.doc] == 1]


def docstring_set(count: int | None = None, seed: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """(corpus, queries, qrels) rows as a local set holds them: every document, `count` queries (None: all)."""
    pairs = all_pairs()
    if count is not None and not 1 <= count <= len(pairs):
        raise ValueError(f"count {count}: must lie in [1, {len(pairs)}] (the held-out docstrings of Python "
                         f"{python_version()} give {len(pairs)} queries)")
    chosen = range(len(pairs)) if count is None else sorted(random.Random(seed).sample(range(len(pairs)), count))
    return ([{"id": p.id, "text": p.doc} for p in pairs],
            [{"id": pairs[i].id, "text": pairs[i].query} for i in chosen],
            [{"query_id": pairs[i].id, "doc_id": pairs[i].id} for i in chosen])


def write_set(out: Path, count: int | None = None, seed: int = 0) -> tuple[int, int]:
    """Write the set into `out` through a temporary sibling folder, so `out` is never half written; an
    existing `out` is replaced only when it holds nothing but a local set's files. Returns (queries,
    documents)."""
    if out.exists() and (not out.is_dir() or {p.name for p in out.iterdir()} - set(LOCAL_FILES)):
        raise ValueError(f"{out}: exists and is not a folder holding only {', '.join(LOCAL_FILES)}; "
                         "choose a new OUT_DIR")
    corpus, queries, qrels = docstring_set(count, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, rows in zip(LOCAL_FILES, (corpus, queries, qrels)):
            (tmp / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    except BaseException:
        shutil.rmtree(tmp)
        raise
    if out.exists():
        shutil.rmtree(out)  # a previous set (checked above)
    tmp.rename(out)
    return len(queries), len(corpus)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m extend.encoders.docstrings", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="folder to write (a previous set there is replaced)")
    parser.add_argument("--count", type=int, default=None, help="queries to draw (default: every qualifying docstring)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw of --count queries")
    opts = parser.parse_args(argv)
    try:
        queries, docs = write_set(opts.out, opts.count, opts.seed)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {opts.out}: {queries} queries, {docs} candidate documents")


if __name__ == "__main__":
    main()
