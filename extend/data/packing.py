"""Pack drawn documents into rows of exactly `length` tokens that keep documents apart.

Packers take the drawn documents as spans (source index, start, stop) of their source's flat token
array (see mixture.draw_stage). A row is a list of pieces of the same form, each a contiguous span of one
document. Materialised, every row carries:
- input_ids, labels: labels are -100 on padding, on non-target tokens (prompts), and on the first token of
  every piece, so no loss term predicts one document's token from another's;
- position_ids: 0, 1, ... restarting at every piece (and at the padding), which is what keeps attention
  inside a document in transformers (with use_cache=False) and flash-attention's varlen kernels; in a PoSE
  stage (extend/data/pose.py) each piece's ids start at 0 and skip ahead between chunks instead;
- seq_lens: the length of every piece and of the trailing padding, summing to `length` (cumulative sums
  give cu_seqlens).

Two strategies, registered in PACKERS:
- pretrain: concatenate documents and cut every `length` tokens; documents are split across rows and no
  token is padding.
- sft: atomic documents (conversations, task items) are never split: best-fit decreasing puts each,
  longest first, into the fullest row it still fits; plain text then fills the gaps and further rows,
  cut wherever a row ends.
"""

from __future__ import annotations

import bisect
from typing import Callable

import numpy as np

from extend.data.pose import PoseDraw
from extend.data.tokenize import TokenizedSource

Piece = tuple[int, int, int]


def pack_pretrain(order: list[Piece], sources: list[TokenizedSource], length: int, rows: int,
                  rng: np.random.Generator) -> list[list[Piece]]:
    """The first `rows` rows of the concatenation of the spans in `order`, cut every `length` tokens."""
    packed, row, free = [], [], length
    for s, start, stop in order:
        while start < stop:
            take = min(free, stop - start)
            row.append((s, start, start + take))
            start += take
            free -= take
            if free == 0:
                packed.append(row)
                if len(packed) == rows:
                    return packed
                row, free = [], length
    raise ValueError(f"drew too few tokens for {rows} rows of {length}")


def _best_fit_decreasing(pieces: list[Piece], length: int) -> tuple[list[list[Piece]], list[int]]:
    """Bins of capacity `length` and their free space: each piece, longest first, goes into the bin with the
    least free space that still holds it (a new bin if none does)."""
    # Ties keep the given order (a stable sort), so the result depends on the seed only.
    pieces = sorted(pieces, key=lambda p: p[1] - p[2])
    bins: list[list[Piece]] = []
    free: list[int] = []
    # Free space -> bins with exactly that much left; `spaces` lists the keys in increasing order.
    by_space: dict[int, list[int]] = {}
    spaces: list[int] = []
    for piece in pieces:
        size = piece[2] - piece[1]
        i = bisect.bisect_left(spaces, size)
        if i < len(spaces):
            space = spaces[i]
            b = by_space[space].pop()
            if not by_space[space]:
                del by_space[space]
                spaces.pop(i)
        else:
            b, space = len(bins), length
            bins.append([])
            free.append(length)
        bins[b].append(piece)
        free[b] = space - size
        if free[b] > 0:
            if free[b] not in by_space:
                by_space[free[b]] = []
                bisect.insort(spaces, free[b])
            by_space[free[b]].append(b)
    return bins, free


def _fill(bins: list[list[Piece]], free: list[int], text: list[Piece], length: int, max_rows: int) -> list[list[Piece]]:
    """Pour the text pieces, in order, into the bins' free space, then into new rows of `length`, up to
    `max_rows` rows; text is cut wherever a row ends (as in pretraining packing)."""
    rows = [list(b) for b in bins]
    spaces = list(free)
    stream = iter(text)
    piece = next(stream, None)
    r = 0
    while piece is not None and r < max_rows:
        if r == len(rows):
            rows.append([])
            spaces.append(length)
        if spaces[r] == 0:
            r += 1
            continue
        s, a, b = piece
        take = min(spaces[r], b - a)
        rows[r].append((s, a, a + take))
        spaces[r] -= take
        piece = (s, a + take, b) if a + take < b else next(stream, None)
    return rows


def pack_sft(order: list[Piece], sources: list[TokenizedSource], length: int, rows: int,
             rng: np.random.Generator) -> list[list[Piece]]:
    """Atomic documents by best-fit decreasing, text poured into the gaps and then into full rows; of the
    drawn order, the longest prefix that fits in `rows` rows; rows in a seeded random order.

    The prefix is counted in units: an atomic document, or one row-sized piece of a text document. Dropping
    the tail of the (random) drawn order, rather than the emptiest rows, keeps the mixture and the length
    distribution unbiased: BFD's last rows hold the shortest documents.
    """
    units: list[Piece] = []
    is_atomic: list[bool] = []
    for s, start, stop in order:
        if sources[s].atomic:
            assert stop - start <= length, "draw_stage never draws an atomic document longer than a row"
            units.append((s, start, stop))
            is_atomic.append(True)
        else:
            cut = range(start, stop, length)
            units.extend((s, a, min(a + length, stop)) for a in cut)
            is_atomic.extend([False] * len(cut))

    def pack(k: int) -> tuple[list[list[Piece]], list[int], list[Piece]]:
        atomic = [u for u, a in zip(units[:k], is_atomic) if a]
        text = [u for u, a in zip(units[:k], is_atomic) if not a]
        return (*_best_fit_decreasing(atomic, length), text)

    def rows_needed(k: int) -> int:
        bins, free, text = pack(k)
        overflow = sum(b - a for _, a, b in text) - sum(free)
        return len(bins) + max(0, -(-overflow // length))

    # Largest k that fits in `rows` rows. More tokens than rows x length never fit; 90 % of it almost
    # always does (checked), which keeps the binary search short.
    tokens = np.cumsum([b - a for _, a, b in units])
    hi = int(np.searchsorted(tokens, rows * length, side="right")) + 1
    if hi > len(units):
        raise ValueError(f"drew too few tokens for {rows} rows of {length}")
    lo = int(np.searchsorted(tokens, rows * length * 0.9, side="right"))
    if rows_needed(lo) > rows:
        lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if rows_needed(mid) <= rows else (lo, mid)
    # The text after the prefix tops up the last row (text can be cut anywhere).
    bins, free, text = pack(lo)
    packed = _fill(bins, free, text + [u for u, a in zip(units[lo:], is_atomic[lo:]) if not a], length, rows)
    if len(packed) < rows:
        # BFD is not monotone in its input: on the rare prefix that leaves a row empty, pack one more
        # unit and drop the emptiest row instead.
        packed = _fill(*pack(lo + 1), length, rows + 1)
        fill = [sum(b - a for _, a, b in row) for row in packed]
        packed = [packed[i] for i in sorted(sorted(range(len(packed)), key=lambda i: (-fill[i], i))[:rows])]
    return [packed[i] for i in rng.permutation(len(packed))]


PACKERS: dict[str, Callable[..., list[list[Piece]]]] = {"pretrain": pack_pretrain, "sft": pack_sft}
# How many more tokens than the stage's slots to draw, per packer: sft packs the longest prefix that fits.
DRAW_MARGIN: dict[str, float] = {"pretrain": 1.0, "sft": 1.1}


def materialize(rows: list[list[Piece]], sources: list[TokenizedSource], length: int, pad_id: int,
                pose: PoseDraw | None = None, first_row: int = 0) -> dict[str, np.ndarray]:
    """Rows as arrays: input_ids, labels, position_ids of shape (rows, length) and seq_lens as a flat array
    with `seq_offsets` (row r's lengths are seq_lens[seq_offsets[r]:seq_offsets[r + 1]]).

    With `pose`, every document piece gets PoSE ids drawn with the generator of its row, `first_row + r` in
    the stage (the padding keeps plain ids)."""
    n = len(rows)
    input_ids = np.full((n, length), pad_id, dtype=np.int32)
    labels = np.full((n, length), -100, dtype=np.int32)
    position_ids = np.empty((n, length), dtype=np.int32)
    arange = np.arange(length, dtype=np.int32)
    seq_lens, seq_offsets = [], [0]
    for r, row in enumerate(rows):
        at = 0
        rng = pose.rng(first_row + r) if pose is not None else None
        for s, start, stop in row:
            ids, m = sources[s].ids[start:stop], stop - start
            input_ids[r, at : at + m] = ids
            labels[r, at : at + m] = np.where(sources[s].targets[start:stop], ids, -100)
            labels[r, at] = -100
            position_ids[r, at : at + m] = arange[:m] if pose is None else pose.positions(m, rng)
            seq_lens.append(m)
            at += m
        if at < length:
            position_ids[r, at:] = arange[: length - at]
            seq_lens.append(length - at)
        seq_offsets.append(len(seq_lens))
    return {
        "input_ids": input_ids, "labels": labels, "position_ids": position_ids,
        "seq_lens": np.array(seq_lens, dtype=np.int32), "seq_offsets": np.array(seq_offsets, dtype=np.int32),
    }
