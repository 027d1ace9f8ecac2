"""PoSE position ids (positional skip-wise training, Zhu et al., ICLR 2024): a row of the stage's length whose
position ids span up to the target `span`, so the model sees relative distances up to the span while
computing only the row.

Each document piece of a row (a packed row holds several; each gets its own ids) of m tokens is cut into
`chunks` contiguous chunks; chunk i's ids continue the previous chunk's count shifted by a skip u_i:

    ids of chunk i = (tokens before chunk i) + u_i + [0, 1, ..., len_i - 1],    u_0 = 0 <= u_1 <= ... <= span - m

so the first chunk starts at 0, ids increase within the piece and the last id is < span. As in the reference
code (dwzhu-pku/PoSE, train_pose.py, 2 chunks): the first chunk's length is uniform on [1, (m + 1) // 2] and the
skip uniform on [0, span - m]. With more chunks the cut points are distinct and uniform on [1, m - 1] and each
skip is uniform on [u_(i-1), span - m] (the paper's u_i ~ U({u_(i-1), ..., L_c - L})). The tokens stay
contiguous text (the reference also skips text between its two chunks; here the packer decides the text).
A piece shorter than `chunks` gets one chunk per token; a piece of one token is position 0.

Draws are reproducible: row r of stage s uses numpy's generator seeded with (data.seed, s, POSE_STREAM, r),
independent of how rows are sharded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEME = "pose-zhu2024"
# Stream number in the seed sequence (data.seed, stage, stream, row); packing uses streams 0 and 1.
POSE_STREAM = 2


@dataclass(frozen=True)
class PoseDraw:
    """PoSE ids for one stage: rows span up to `span` positions in `chunks` chunks."""

    span: int
    chunks: int
    seed: int
    stage: int

    def rng(self, row: int) -> np.random.Generator:
        """The generator of the stage's row `row` (its index in the stage, not in a shard)."""
        return np.random.default_rng([self.seed, self.stage, POSE_STREAM, row])

    def positions(self, m: int, rng: np.random.Generator) -> np.ndarray:
        return pose_positions(m, self.span, self.chunks, rng)

    def record(self) -> dict:
        """What the manifest keeps of it."""
        return {"scheme": SCHEME, "span": self.span, "chunks": self.chunks}


def pose_positions(m: int, span: int, chunks: int, rng: np.random.Generator) -> np.ndarray:
    """int32 position ids of one document piece of `m` tokens (see the module docstring); needs m <= span."""
    if m > span:
        raise ValueError(f"a piece of {m} tokens cannot span only {span} positions")
    n = min(chunks, m)
    if n <= 1:
        return np.arange(m, dtype=np.int32)
    if n == 2:
        cuts = np.array([rng.integers(1, (m + 1) // 2, endpoint=True)])
    else:
        cuts = np.sort(rng.choice(np.arange(1, m), size=n - 1, replace=False))
    room = span - m
    skips = np.zeros(n, dtype=np.int64)
    for i in range(1, n):
        skips[i] = rng.integers(skips[i - 1], room, endpoint=True)
    chunk_of = np.zeros(m, dtype=np.int64)
    chunk_of[cuts] = 1
    return (np.arange(m) + skips[np.cumsum(chunk_of)]).astype(np.int32)
