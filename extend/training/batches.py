"""Rows of a prepared dataset, served stage by stage and step by step in their stored order.

data_prep already drew, packed and shuffled every stage deterministically, so an optimizer step's rows
are a pure function of (stage, step): resuming needs only those two numbers, and any number of processes
split one step's rows the same way (process r takes micro-batches r, r + W, ...).

Every batch carries `document_ids` next to the stored columns: for each token, the index of its document
piece (or trailing padding) in its row, from the shards' `seq_lens`. Training attention keeps documents
apart by these ids, never by guessing from position ids, which PoSE stages skip (extend/data/pose.py).
Shards without `seq_lens` fall back to a new document wherever the position id is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

COLUMNS = ("input_ids", "labels", "position_ids")
SEQ_LENS = "seq_lens"
DOCUMENT_IDS = "document_ids"


def documents_from_seq_lens(seq_lens: list[np.ndarray], length: int) -> np.ndarray:
    """(rows, length) int32: token t of row r belongs to segment k of seq_lens[r] (which sum to length)."""
    out = np.empty((len(seq_lens), length), dtype=np.int32)
    for r, lens in enumerate(seq_lens):
        if int(np.sum(lens)) != length:
            raise ValueError(f"row {r}: seq_lens sum to {int(np.sum(lens))}, not the row length {length}")
        out[r] = np.repeat(np.arange(len(lens), dtype=np.int32), lens)
    return out


def documents_from_positions(position_ids: np.ndarray) -> np.ndarray:
    """The fallback for shards without seq_lens: a new document wherever the position id is 0."""
    return np.cumsum(position_ids == 0, axis=-1, dtype=np.int32)


@dataclass(frozen=True)
class Stage:
    index: int
    length: int
    steps: int
    rows_per_step: int
    shards: tuple[Path, ...]


class StageRows:
    """Random access to one stage's rows, reading one parquet shard at a time."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self._sizes = [pq.ParquetFile(p).metadata.num_rows for p in stage.shards]
        self._starts = np.cumsum([0] + self._sizes)
        self._cache: tuple[int, dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, k: int) -> dict[str, np.ndarray]:
        if self._cache is None or self._cache[0] != k:
            path = self.stage.shards[k]
            has_lens = SEQ_LENS in pq.ParquetFile(path).schema_arrow.names
            table = pq.read_table(path, columns=list(COLUMNS) + ([SEQ_LENS] if has_lens else []))
            arrays = {c: np.stack(table.column(c).to_numpy(zero_copy_only=False)) for c in COLUMNS}
            arrays[DOCUMENT_IDS] = (documents_from_seq_lens(table.column(SEQ_LENS).to_numpy(zero_copy_only=False),
                                                            arrays["input_ids"].shape[1])
                                    if has_lens else documents_from_positions(arrays["position_ids"]))
            self._cache = (k, arrays)
        return self._cache[1]

    def rows(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        if stop > len(self):
            raise IndexError(f"stage {self.stage.index} has {len(self)} rows; step needs rows up to {stop}")
        columns = COLUMNS + (DOCUMENT_IDS,)
        parts = {c: [] for c in columns}
        i = start
        while i < stop:
            k = int(np.searchsorted(self._starts, i, side="right")) - 1
            lo, hi = i - self._starts[k], min(stop, self._starts[k + 1]) - self._starts[k]
            shard = self._shard(k)
            for c in columns:
                parts[c].append(shard[c][lo:hi])
            i = int(self._starts[k] + hi)
        return {c: torch.from_numpy(np.concatenate(parts[c]).astype(np.int64)) for c in columns}

    def step_rows(self, step: int) -> dict[str, torch.Tensor]:
        n = self.stage.rows_per_step
        return self.rows(step * n, (step + 1) * n)


def micro_batches(rows: dict[str, torch.Tensor], micro_batch_size: int, rank: int, world: int) -> list[dict[str, torch.Tensor]]:
    """This process's micro-batches of one step's rows."""
    n = next(iter(rows.values())).shape[0]
    starts = list(range(0, n, micro_batch_size))[rank::world]
    return [{c: t[s : s + micro_batch_size] for c, t in rows.items()} for s in starts]


def stages_from_manifest(folder: Path, manifest: dict) -> list[Stage]:
    return [
        Stage(
            index=i,
            length=int(entry["length"]),
            steps=int(entry["steps"]),
            rows_per_step=int(entry["rows_per_step"]),
            shards=tuple(folder / s["file"] for s in entry["shards"]),
        )
        for i, entry in enumerate(manifest["stages"])
    ]
