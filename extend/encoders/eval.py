"""Scoring encoders on retrieval sets: nDCG@1 (binary relevance), and the loop over models and lengths.

With binary relevance nDCG@1 is 1 when the top-ranked document is relevant and 0 otherwise. Ties at the
top (a truncating model sees identical text for every document whose needle it cut off) count as a
uniformly random pick among the tied documents, so a tie never scores by document order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from extend.encoders.encode import Reader, embed
from extend.encoders.docstrings import NAME as DOCSTRINGS, docstring_set
from extend.encoders.tasks import SYNTHETIC, RetrievalSet, local_set, rows_set

TIE_TOLERANCE = 1e-6

# Local sets built in memory, named in encoder.eval.local_sets instead of a folder -> (corpus, queries, qrels).
BUILT_IN_SETS: dict[str, Callable[[], tuple[list[dict], list[dict], list[dict]]]] = {DOCSTRINGS: docstring_set}


def ndcg_at_1_per_query(scores: torch.Tensor, relevant: list[set[int]]) -> list[float]:
    """nDCG@1 of each query; scores is (queries, documents)."""
    values = []
    for row, rel in zip(scores, relevant):
        top = (row >= row.max() - TIE_TOLERANCE).nonzero().flatten().tolist()
        values.append(sum(1 for d in top if d in rel) / len(top))
    return values


@dataclass
class Variant:
    """One model as it is evaluated: a name for the report, the weights, and how it reads inputs."""

    name: str
    model: PreTrainedModel
    reader: Reader
    description: str


def score_set(variant: Variant, data: RetrievalSet, pad_id: int, pooling: str, normalize: bool,
              batch_size: int) -> list[float]:
    """nDCG@1 of every query of `data`, in the set's query order (the same for every variant, so two
    variants can be compared query by query)."""
    docs = embed(variant.model, data.docs, variant.reader, pad_id, pooling, normalize, batch_size)
    queries = embed(variant.model, data.queries, variant.reader, pad_id, pooling, normalize, batch_size)
    return ndcg_at_1_per_query(queries @ docs.T, data.relevant)


def build_sets(tokenizer, tasks: list[str], lengths: list[int], candidates: int, seed: int,
               local_sets: list[str], prefixes: tuple[str, str] = ("", "")) -> list[RetrievalSet]:
    """Every synthetic (task, length) set, each from its own seed, then the local sets (a built-in name or
    a folder)."""
    sets = [SYNTHETIC[task](tokenizer, length, candidates, cell_seed(seed, task, length), prefixes)
            for task in tasks for length in lengths]
    return sets + [rows_set(tokenizer, name, *BUILT_IN_SETS[name](), prefixes, source=name) if name in BUILT_IN_SETS
                   else local_set(tokenizer, name, prefixes) for name in local_sets]


def cell_seed(seed: int, task: str, length: int) -> int:
    """A seed per (task, length), stable across runs and Python processes (no hash())."""
    return seed * 1_000_003 + sum(map(ord, task)) * 7919 + length


def evaluate(variants: list[Variant], sets: list[RetrievalSet], pad_id: int, pooling: str, normalize: bool,
             batch_size: int) -> dict[str, dict[str, dict[str, dict]]]:
    """variant -> set name -> length ("all" for a local set) -> {"value": nDCG@1, "n": queries, ...,
    "per_query": each query's nDCG@1}."""
    results: dict[str, dict[str, dict[str, dict]]] = {}
    steps = tqdm([(v, s) for v in variants for s in sets], desc="encoder eval", unit="set")
    for variant, data in steps:
        steps.set_postfix_str(f"{variant.name} {data.name}@{data.length}")
        per_query = score_set(variant, data, pad_id, pooling, normalize, batch_size)
        cell = {"value": round(sum(per_query) / len(per_query), 4), "n": len(data.queries), "candidates": len(data.docs),
                "length": data.length if data.length is not None else max(len(d) for d in data.docs),
                "read_length": variant.reader.max_length, "per_query": [round(v, 4) for v in per_query]}
        results.setdefault(variant.name, {}).setdefault(data.name, {})[
            str(data.length) if data.length is not None else "all"] = cell
    return results
