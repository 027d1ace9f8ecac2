"""Our packing (extend/data/packing.py) against TRL's `pack_dataset` on the same documents: rows, fill, whole
documents, boundaries and time.

    python -m bench.studies.trl_packing [--documents 50000] [--length 8192] [--seed 0]

The documents are token-id arrays of seeded log-normal lengths (median ~600 tokens, a tail past the row
length, as in chat/SFT sets mixed with long texts). Compared, each timed from token arrays to packed rows:

- ours, sft: best-fit decreasing on the atomic documents (extend.data.packing._best_fit_decreasing, the
  core of `pack_sft`) plus `materialize` (rows of exactly --length tokens with labels, position ids and
  sequence lengths); documents longer than a row are first cut into row-sized pieces, as pack_sft does
  with plain text (an atomic document that long is skipped at the draw, data.md), which is what TRL's
  bfd_split does;
- ours, pretrain: `pack_pretrain` + `materialize` (concatenate and cut);
- TRL bfd / bfd_split / wrapped: `trl.data_utils.pack_dataset` on a `datasets.Dataset` of input_ids (its
  default `map` batches of 1,000 documents, and once with the whole set as one batch).

Reported per method: rows, fill (tokens kept / (rows x length)), tokens dropped, documents split across
rows, whether every row's position ids restart exactly at document starts, and seconds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def documents(n: int, length: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = np.clip(rng.lognormal(mean=np.log(600), sigma=1.2, size=n).astype(int), 8, 4 * length)
    return [rng.integers(0, 32000, size=s, dtype=np.int32) for s in sizes]


def ours(docs: list[np.ndarray], length: int, strategy: str) -> dict:
    from extend.data import packing
    from extend.data.tokenize import TokenizedSource

    started = time.process_time()
    flat = np.concatenate(docs)
    bounds = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    source = TokenizedSource("docs", flat, np.ones(len(flat), dtype=bool), bounds, atomic=strategy == "sft")
    spans = [(0, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    if strategy == "sft":
        pieces = [(0, a, min(a + length, b)) for _, start, b in spans for a in range(start, b, length)]
        rows, _ = packing._best_fit_decreasing(pieces, length)
    else:
        rows = packing.pack_pretrain(spans, [source], length, int(bounds[-1]) // length, np.random.default_rng(0))
    arrays = packing.materialize(rows, [source], length, pad_id=0)
    seconds = time.process_time() - started
    kept = sum(b - a for row in rows for _, a, b in row)
    pieces_of = np.bincount([int(np.searchsorted(bounds, a, side="right")) - 1 for row in rows for _, a, _ in row],
                            minlength=len(docs))
    restart = all(arrays["position_ids"][r, at] == 0 and (at == 0 or arrays["position_ids"][r, at - 1] != -1)
                  for r, row in enumerate(rows) for at in np.cumsum([0] + [b - a for _, a, b in row])[:-1])
    return {"rows": len(rows), "fill": kept / (len(rows) * length), "dropped": int(bounds[-1]) - kept,
            "split_documents": int((pieces_of > 1).sum()), "positions_restart_at_starts": bool(restart),
            "seconds": seconds}


def trl(docs: list[np.ndarray], length: int, strategy: str, batch_size: int | None) -> dict:
    import datasets
    from trl.data_utils import pack_dataset

    dataset = datasets.Dataset.from_dict({"input_ids": [d.tolist() for d in docs]})  # what TRL starts from
    started = time.process_time()
    packed = pack_dataset(dataset, length, strategy=strategy, map_kwargs={"batch_size": batch_size})
    table = packed.with_format("arrow")[:]
    seconds = time.process_time() - started
    lengths = table["input_ids"].combine_chunks().value_lengths().to_numpy()
    kept = int(lengths.sum())
    long = int(sum(len(d) > length for d in docs))
    out = {"rows": len(lengths), "fill": kept / (len(lengths) * length), "dropped": sum(len(d) for d in docs) - kept,
           "seconds": seconds}
    if strategy == "wrapped":
        out["split_documents"], out["positions_restart_at_starts"] = "boundaries ignored", "no (no seq_lengths)"
    else:  # bfd truncates the documents longer than a row; bfd_split cuts them into row-sized fragments
        out["split_documents"] = long if strategy == "bfd_split" else f"0 ({long} truncated)"
        out["positions_restart_at_starts"] = "yes (collator, from seq_lengths)"
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args(argv)
    docs = documents(opts.documents, opts.length, opts.seed)
    print(f"{len(docs)} documents, {sum(len(d) for d in docs):,} tokens, "
          f"{sum(len(d) > opts.length for d in docs)} longer than a row of {opts.length}", flush=True)
    results = {
        "ours sft (BFD)": ours(docs, opts.length, "sft"),
        "ours pretrain": ours(docs, opts.length, "pretrain"),
        "TRL bfd": trl(docs, opts.length, "bfd", 1000),
        "TRL bfd, one batch": trl(docs, opts.length, "bfd", None),
        "TRL bfd_split": trl(docs, opts.length, "bfd_split", 1000),
        "TRL bfd_split, one batch": trl(docs, opts.length, "bfd_split", None),
        "TRL wrapped": trl(docs, opts.length, "wrapped", 1000),
    }
    print("\n| method | rows | fill | tokens dropped | documents split | position ids restart at starts | CPU seconds |"
          "\n|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['rows']:,} | {r['fill']:.4f} | {r['dropped']:,} | {r.get('split_documents', '-')} | "
              f"{r.get('positions_restart_at_starts', '-')} | {r['seconds']:.2f} |")
    return results


if __name__ == "__main__":
    main()
