"""Tokenise a source into one flat array of ids with EOS after every document, in parallel, streaming.

Documents become lists of (text, is_target) segments first: a text document is one target segment, a
synthetic item a prompt and an answer, a conversation the chat template's pieces per message. Segments
are tokenised separately (so a target never shares a token with its prompt) and concatenated.

`tokenize_to_disk` streams: documents are read from the source, cut into batches (the unit of work of
the `num_proc` worker processes, at most 2 x num_proc of them in flight) and blocks (the unit of
completion: consecutive documents up to BLOCK_DOCS documents or BLOCK_CHARS characters). A finished
block's token ids, target flags and document lengths are renamed into place, then its marker is written;
a rerun skips every block with a marker, and a node with `shard_index` set tokenises only the blocks
b with b % num_shards == shard_index. Once every block of a source is done, the blocks are joined into
ids.bin / targets.bin / offsets.npy, which the packer reads piece by piece (`OnDisk`). Block boundaries
depend on the documents alone (not on num_proc or the number of nodes), so every split of the work gives
the same bytes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import weakref
from collections import deque
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from extend.data.sources import RawSource, SourceError

# A batch (sent to one worker): up to BATCH_DOCS documents or BATCH_CHARS characters.
BATCH_DOCS = 256
BATCH_CHARS = 4 << 20
# A block (the unit of completion and of the split over nodes): up to BLOCK_DOCS documents or BLOCK_CHARS
# characters. Changing either changes no output byte, only how much a killed run redoes.
BLOCK_DOCS = 4096
BLOCK_CHARS = 32 << 20
TOKENS_DONE = "tokens.json"


class OnDisk:
    """A flat array in a file, read by contiguous slices (`a[start:stop]`) with positioned reads.

    Not a memory map: the packer reads a stage's pieces from all over a source, and the kernel maps pages
    around every page a memory map touches, so a stage of 8M tokens drawn from a 1 GB corpus left most of
    the corpus's token files in the process's resident memory. A read copies only the slice asked for."""

    def __init__(self, path: Path, dtype: np.dtype, length: int):
        self.path, self.dtype, self.length = path, np.dtype(dtype), length
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError(f"{self.path.name}: read contiguous slices (a[start:stop]), not {key!r}")
        start, stop, _ = key.indices(self.length)
        out = np.empty(max(stop - start, 0), self.dtype)
        view, done, offset = memoryview(out).cast("B"), 0, start * self.dtype.itemsize
        while done < len(view):  # one read returns at most ~2 GB on Linux
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n == 0:
                raise EOFError(f"{self.path}: the file ends before element {stop} of {self.length}")
            done += n
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


@dataclass
class TokenizedSource:
    """All documents of one source back to back; `offsets[i]:offsets[i+1]` is document i (EOS included).

    `ids` and `targets` are arrays in memory or, from `open_tokenized`, files read slice by slice (`OnDisk`);
    only `offsets` (8 bytes per document) is always in memory."""

    name: str
    ids: np.ndarray | OnDisk  # int32
    targets: np.ndarray | OnDisk  # bool: the token is a training target (its label is kept)
    offsets: np.ndarray  # int64, one more than there are documents
    atomic: bool  # documents must stay in one row

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])


def chat_segments(messages: list[dict], tokenizer, mask_prompt: bool) -> list[tuple[str, bool]]:
    """The chat template's text cut at message boundaries; assistant content (not its header) is a target.

    Each prefix of the conversation is rendered and must extend the previous rendering; a template that
    rewrites earlier turns (some drop past reasoning) cannot be masked this way and is an error.
    """
    segments, done = [], ""
    for i, message in enumerate(messages):
        is_assistant = message["role"] == "assistant"
        renders = []
        if is_assistant:
            renders.append((tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True), False))
        renders.append((tokenizer.apply_chat_template(messages[: i + 1], tokenize=False), is_assistant))
        for text, target in renders:
            if not text.startswith(done):
                raise SourceError("the tokenizer's chat template renders earlier turns differently once later turns "
                                  "are added, so assistant turns cannot be masked; use a prefix-stable template")
            segments.append((text[len(done):], target or not mask_prompt))
            done = text
    return [(text, target) for text, target in segments if text]


def _segments(kind: str, doc, tokenizer, mask_prompt: bool) -> list[tuple[str, bool]]:
    if kind == "text":
        return [(doc, True)]
    if kind == "qa":
        prompt, answer = doc
        return [(prompt, not mask_prompt), (answer, True)]
    return chat_segments(doc, tokenizer, mask_prompt)


# Set in each worker (and in this process when num_proc is 1) by _init.
_STATE: dict = {}


def _init(tokenizer, kind: str, mask_prompt: bool, add_bos: bool) -> None:
    _STATE.update(tokenizer=tokenizer, kind=kind, mask_prompt=mask_prompt, add_bos=add_bos)


def _init_worker(*args) -> None:
    # Each forked worker runs one tokenizer thread: the pool is the parallelism (this also silences the
    # tokenizers library's warning about forking after its thread pool was used).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _init(*args)


def _encode(batch: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, targets, document lengths) of a batch of documents."""
    tokenizer, add_bos = _STATE["tokenizer"], _STATE["add_bos"]
    docs = [_segments(_STATE["kind"], doc, tokenizer, _STATE["mask_prompt"]) for doc in batch]
    encodings = tokenizer.backend_tokenizer.encode_batch_fast([t for segs in docs for t, _ in segs], add_special_tokens=False)
    bos, eos = [tokenizer.bos_token_id], [tokenizer.eos_token_id]
    pieces, flags, doc_lengths = [], [], []
    it = iter(encodings)
    for segs in docs:
        n = 0
        if add_bos:
            pieces.append(bos), flags.append(False)
            n += 1
        for _, target in segs:
            ids = next(it).ids
            pieces.append(ids), flags.append(target)
            n += len(ids)
        pieces.append(eos), flags.append(True)  # predicting the end of a document is learnt everywhere
        doc_lengths.append(n + 1)
    piece_lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    ids = np.fromiter(chain.from_iterable(pieces), dtype=np.int32, count=int(piece_lengths.sum()))
    targets = np.repeat(np.array(flags, dtype=bool), piece_lengths)
    return ids, targets, np.array(doc_lengths, dtype=np.int64)


def _chars(kind: str, doc) -> int:
    """A document's size in characters, which closes batches and blocks."""
    if kind == "text":
        return len(doc)
    if kind == "qa":
        return len(doc[0]) + len(doc[1])
    return sum(len(m["content"]) if isinstance(m["content"], str) else 1 for m in doc)


def _batches(docs: Iterable, kind: str) -> Iterator[tuple[int, list, bool]]:
    """(block index, batch of documents, whether the batch ends its block), in document order."""
    block, batch, block_docs, block_chars, batch_chars = 0, [], 0, 0, 0
    for doc in docs:
        n = _chars(kind, doc)
        batch.append(doc)
        block_docs, block_chars, batch_chars = block_docs + 1, block_chars + n, batch_chars + n
        if block_docs >= BLOCK_DOCS or block_chars >= BLOCK_CHARS:
            yield block, batch, True
            block, batch, block_docs, block_chars, batch_chars = block + 1, [], 0, 0, 0
        elif len(batch) >= BATCH_DOCS or batch_chars >= BATCH_CHARS:
            yield block, batch, False
            batch, batch_chars = [], 0
    if batch:
        yield block, batch, True


def _encoded(jobs: Iterable[tuple[object, list]], args: tuple, num_proc: int) -> Iterator[tuple[object, tuple]]:
    """(tag, _encode(batch)) for every (tag, batch) of `jobs`, in order; with num_proc > 1 on forked workers,
    holding at most 2 x num_proc batches in flight, so memory does not grow with the source."""
    if num_proc == 1:
        _init(*args)
        for tag, batch in jobs:
            yield tag, _encode(batch)
        return
    # fork: workers inherit the tokenizer without pickling it, and start in milliseconds.
    with multiprocessing.get_context("fork").Pool(num_proc, initializer=_init_worker, initargs=args) as pool:
        pending: deque = deque()
        for tag, batch in jobs:
            pending.append((tag, pool.apply_async(_encode, (batch,))))
            if len(pending) >= 2 * num_proc:
                tag, result = pending.popleft()
                yield tag, result.get()
        while pending:
            tag, result = pending.popleft()
            yield tag, result.get()


def _check_bos(tokenizer, add_bos: bool) -> None:
    if tokenizer.bos_token_id is None and add_bos:
        raise SourceError("data.add_bos is true but the tokenizer has no BOS token; set data.add_bos=false")


def tokenize_source(raw: RawSource, tokenizer, *, mask_prompt: bool, add_bos: bool, num_proc: int) -> TokenizedSource:
    """Tokenise every document of `raw`, in document order, with `num_proc` forked workers, in memory."""
    _check_bos(tokenizer, add_bos)
    args = (tokenizer, raw.kind, mask_prompt, add_bos)
    bar = tqdm(total=raw.documents, desc=f"tokenize {raw.name}", unit="doc", leave=False)
    results = []
    for _, result in _encoded(((None, batch) for _, batch, _ in _batches(raw.docs, raw.kind)), args, num_proc):
        results.append(result)
        bar.update(len(result[2]))
    bar.close()
    ids = np.concatenate([r[0] for r in results]) if results else np.zeros(0, np.int32)
    targets = np.concatenate([r[1] for r in results]) if results else np.zeros(0, bool)
    lengths = np.concatenate([r[2] for r in results]) if results else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedSource(raw.name, ids, targets, offsets, raw.atomic)


# Files of a block / of a joined source, and the dtype each holds.
PARTS = {"ids": np.int32, "targets": np.bool_, "lengths": np.int64}


def _tmp(path: Path) -> Path:
    """A temporary name no other process (on this or another node) uses."""
    return path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def _write_json(obj, path: Path) -> None:
    tmp = _tmp(path)
    tmp.write_text(json.dumps(obj, sort_keys=True) + "\n")
    os.replace(tmp, path)


def open_tokenized(name: str, folder: Path) -> TokenizedSource | None:
    """The joined source in `folder`, read from its files (`OnDisk`); None while it is not complete."""
    done = folder / TOKENS_DONE
    if not done.exists():
        return None
    info = json.loads(done.read_text())
    offsets = np.load(folder / "offsets.npy")
    ids, targets = (OnDisk(folder / f"{part}.bin", PARTS[part], info["tokens"]) for part in ("ids", "targets"))
    return TokenizedSource(name, ids, targets, offsets, info["atomic"])


def tokenize_to_disk(raw: RawSource, tokenizer, folder: Path, *, mask_prompt: bool, add_bos: bool, num_proc: int,
                     shard_index: int | None = None, num_shards: int = 1) -> TokenizedSource | None:
    """Tokenise `raw` into `folder` block by block (see the module docstring), skipping blocks already done;
    the joined source read from disk, or None when `shard_index` is set (this node's blocks are done, the
    source is joined by a run without shard_index)."""
    _check_bos(tokenizer, add_bos)
    if (joined := open_tokenized(raw.name, folder)) is not None:
        return joined
    folder.mkdir(parents=True, exist_ok=True)
    args = (tokenizer, raw.kind, mask_prompt, add_bos)
    mine = (lambda b: True) if shard_index is None else (lambda b: b % num_shards == shard_index)
    marker = lambda b: folder / f"block-{b:06d}.json"  # noqa: E731
    blocks: list[int] = []
    todo: dict[int, bool] = {}

    def jobs() -> Iterator[tuple[tuple[int, bool], list]]:
        for block, batch, last in _batches(raw.docs, raw.kind):
            if last:
                blocks.append(block)
            if block not in todo:  # decided once per block, at its first batch
                todo[block] = mine(block) and not marker(block).exists()
            if todo[block]:
                yield (block, last), batch

    bar = tqdm(total=raw.documents, desc=f"tokenize {raw.name}", unit="doc", leave=False)
    files, counts = None, [0, 0]
    for (block, last), (ids, targets, lengths) in _encoded(jobs(), args, num_proc):
        if files is None:
            files = {part: open(_tmp(folder / f"block-{block:06d}.{part}"), "wb") for part in PARTS}
        files["ids"].write(ids.tobytes())
        files["targets"].write(targets.tobytes())
        files["lengths"].write(lengths.tobytes())
        counts[0] += len(lengths)
        counts[1] += len(ids)
        bar.update(len(lengths))
        if last:
            for part, f in files.items():
                f.close()
                os.replace(f.name, folder / f"block-{block:06d}.{part}")
            _write_json({"documents": counts[0], "tokens": counts[1]}, marker(block))
            files, counts = None, [0, 0]
    bar.close()
    if shard_index is not None:
        return None
    _join(folder, blocks, raw.atomic)
    return open_tokenized(raw.name, folder)


def _join(folder: Path, blocks: list[int], atomic: bool) -> None:
    """Concatenate the blocks into ids.bin, targets.bin and offsets.npy; the marker last, then drop the blocks."""
    tokens = 0
    for part in ("ids", "targets"):
        with open(_tmp(folder / f"{part}.bin"), "wb") as out:
            for b in blocks:
                with open(folder / f"block-{b:06d}.{part}", "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
            tokens = out.tell() // np.dtype(PARTS[part]).itemsize
        os.replace(out.name, folder / f"{part}.bin")
    lengths = [np.fromfile(folder / f"block-{b:06d}.lengths", dtype=np.int64) for b in blocks]
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths) if lengths else np.zeros(0, np.int64))]).astype(np.int64)
    assert offsets[-1] == tokens, (offsets[-1], tokens)
    with open(_tmp(folder / "offsets.npy"), "wb") as f:
        np.save(f, offsets)
    os.replace(f.name, folder / "offsets.npy")
    _write_json({"documents": len(offsets) - 1, "tokens": tokens, "atomic": atomic}, folder / TOKENS_DONE)
    for path in folder.glob("block-*"):
        path.unlink()
