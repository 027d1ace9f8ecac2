"""Throughput and packing efficiency of data_prep against the usual recipe, on the same corpus and tokenizer.

    python -m bench.studies.data_prep [--max-files N] [--length 1024] [--num-proc 1] [--repeats 3]

Corpus: the built-in standard-library corpus (text), and for SFT packing conversations made from its
docstrings ("What does `name(signature)` do?" -> the docstring), which have a natural spread of lengths.
Tokenizer: the built-in `tiny`.

- baseline: `datasets.Dataset.map(tokenize)` then `map(group_texts)`, the recipe of transformers'
  language-modeling example (run_clm): concatenate everything, cut blocks, drop the remainder. It
  keeps no document boundaries (no EOS between documents, positions run across documents).
- ours, pretrain: tokenise with EOS per document, pack pretraining-style, materialise input_ids, labels,
  position_ids and seq_lens (what the shards hold), in memory.
- ours, sft: the same for the docstring conversations, chat template and assistant-only labels, packed
  best-fit decreasing (no conversation split).
- ours, end to end: `prepare()` with one stage covering the corpus once: sampling, packing and zstd
  parquet shards with checksums on disk.
Efficiency = non-padding tokens / token slots. Times are the best of --repeats runs.
"""

from __future__ import annotations

import argparse
import ast
import tempfile
import time
from itertools import chain

import numpy as np

from extend.config import CurriculumConfig, DataConfig, ExtendConfig, SourceConfig, StageConfig
from extend.corpus import read_document, stdlib_files
from extend.data.packing import materialize, pack_pretrain, pack_sft
from extend.data.prepare import prepare
from extend.data.sources import RawSource
from extend.data.tokenize import tokenize_source
from extend.models.tokenizer import DEFAULT_CACHE_DIR, load_tokenizer


def docstring_chats(texts: list[str]) -> list[list[dict]]:
    """One conversation per documented function or class of the given module sources."""
    chats = []
    for text in texts:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and ast.get_docstring(node):
                signature = f"({ast.unparse(node.args)})" if not isinstance(node, ast.ClassDef) else ""
                chats.append([{"role": "user", "content": f"What does `{node.name}{signature}` do?"},
                              {"role": "assistant", "content": ast.get_docstring(node)}])
    return chats


def baseline(texts: list[str], tokenizer, length: int, num_proc: int) -> dict:
    """run_clm's recipe: tokenize with datasets.map, then concatenate and cut with group_texts."""
    import datasets

    def tokenize_function(examples):
        return tokenizer(examples["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total = (len(concatenated["input_ids"]) // length) * length
        result = {k: [t[i : i + length] for i in range(0, total, length)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    datasets.disable_progress_bars()
    start = time.perf_counter()
    ds = datasets.Dataset.from_dict({"text": texts})
    tokenized = ds.map(tokenize_function, batched=True, num_proc=num_proc if num_proc > 1 else None, remove_columns=["text"])
    grouped = tokenized.map(group_texts, batched=True, num_proc=num_proc if num_proc > 1 else None)
    seconds = time.perf_counter() - start
    tokenized_total = sum(map(len, tokenized["input_ids"]))
    return {"tokens": tokenized_total, "seconds": seconds, "rows": len(grouped), "efficiency": 1.0,
            "kept": len(grouped) * length / tokenized_total}


def ours(kind: str, docs: list, tokenizer, length: int, num_proc: int) -> dict:
    """Tokenise, pack (every document once, in a seeded order) and materialise the rows."""
    start = time.perf_counter()
    source = tokenize_source(RawSource("bench", kind, docs, ""), tokenizer, mask_prompt=True, add_bos=False, num_proc=num_proc)
    permutation = np.random.default_rng(0).permutation(len(source.lengths))
    order = [(0, int(source.offsets[d]), int(source.offsets[d + 1])) for d in permutation]
    if kind == "text":
        rows = source.num_tokens // length
        plan = pack_pretrain(order, [source], length, rows, np.random.default_rng(1))
    else:
        order = [(s, a, b) for s, a, b in order if b - a <= length]
        fitting = sum(b - a for _, a, b in order)
        # as many rows as the conversations fill at 99 %; pack_sft keeps the longest prefix that fits
        rows = int(fitting / length * 0.99)
        plan = pack_sft(order, [source], length, rows, np.random.default_rng(1))
    arrays = materialize(plan, [source], length, tokenizer.pad_token_id)
    seconds = time.perf_counter() - start
    real = sum(b - a for row in plan for _, a, b in row)
    assert arrays["input_ids"].shape == (len(plan), length)
    return {"tokens": source.num_tokens, "seconds": seconds, "rows": len(plan), "efficiency": real / (len(plan) * length),
            "kept": real / source.num_tokens}


def end_to_end(num_files: int, tokens: int, length: int, num_proc: int, cache_dir: str) -> dict:
    """`prepare()` with one pretraining stage of about one pass over the corpus, written to a temp folder."""
    steps = max(1, tokens // (length * 8))
    cfg = ExtendConfig(
        data=DataConfig(sources={"stdlib": SourceConfig(type="stdlib", max_documents=num_files)}, num_proc=num_proc,
                        cache_dir=cache_dir, output_dir=tempfile.mkdtemp(prefix="bench-data-")),
        curriculum=CurriculumConfig(tokens_per_step=8 * length, stages=[StageConfig(length=length, steps=steps)]),
    )
    start = time.perf_counter()
    prepare(cfg, log=lambda _: None)
    return {"tokens": steps * 8 * length, "seconds": time.perf_counter() - start, "rows": steps * 8, "efficiency": 1.0,
            "kept": float("nan")}


def run(max_files: int | None, length: int, num_proc: int, repeats: int, cache_dir: str) -> dict[str, dict]:
    files = stdlib_files()[:max_files]
    texts = [read_document(p) for p in files]
    chats = docstring_chats(texts)
    tokenizer = load_tokenizer("tiny", cache_dir)

    def best(fn, *args):
        return min((fn(*args) for _ in range(repeats)), key=lambda r: r["seconds"])

    results = {
        "baseline: datasets.map(tokenize) + group_texts": best(baseline, texts, tokenizer, length, num_proc),
        "ours, pretrain packing (in memory)": best(ours, "text", texts, tokenizer, length, num_proc),
        "ours, sft packing of docstring chats (in memory)": best(ours, "chat", chats, tokenizer, length, num_proc),
    }
    tokens = results["ours, pretrain packing (in memory)"]["tokens"]
    results["ours, end to end: prepare() incl. parquet shards"] = best(end_to_end, len(files), tokens, length, num_proc, cache_dir)
    return results


def report(results: dict[str, dict], length: int, files: int, num_proc: int) -> str:
    lines = [f"corpus: {files} stdlib files; tokenizer: tiny; length {length}; num_proc {num_proc}", "",
             "| pipeline | tokens | seconds | tokens/s | packing efficiency | tokens kept | document boundaries |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        kept = "n/a (samples)" if r["kept"] != r["kept"] else f"{r['kept']:.2%}"
        lines.append(f"| {name} | {r['tokens']:,} | {r['seconds']:.2f} | {r['tokens'] / r['seconds']:,.0f} | "
                     f"{r['efficiency']:.2%} | {kept} | {'no' if name.startswith('baseline') else 'yes'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-files", type=int, default=None, help="use only the first N stdlib files (default: all)")
    parser.add_argument("--length", type=int, default=1024, help="row length in tokens")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes for both pipelines")
    parser.add_argument("--repeats", type=int, default=3, help="runs per pipeline; the fastest is reported")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="where the tiny tokenizer is cached")
    args = parser.parse_args(argv)
    results = run(args.max_files, args.length, args.num_proc, args.repeats, args.cache_dir)
    print(report(results, args.length, len(stdlib_files()[: args.max_files]), args.num_proc))
    return results


if __name__ == "__main__":
    main()
