"""Tokenise a source into one flat array of ids with EOS after every document, in parallel.

Documents become lists of (text, is_target) segments first: a text document is one target segment, a
synthetic item a prompt and an answer, a conversation the chat template's pieces per message. Segments
are tokenised separately (so a target never shares a token with its prompt) and concatenated.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from itertools import chain

import numpy as np
from tqdm.auto import tqdm

from extend.data.sources import RawSource, SourceError

BATCH_DOCS = 256


@dataclass
class TokenizedSource:
    """All documents of one source back to back; `offsets[i]:offsets[i+1]` is document i (EOS included)."""

    name: str
    ids: np.ndarray  # int32
    targets: np.ndarray  # bool: the token is a training target (its label is kept)
    offsets: np.ndarray  # int64, one more than there are documents
    atomic: bool  # documents must stay in one row

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def save(self, path) -> None:
        np.savez(path, ids=self.ids, targets=self.targets, offsets=self.offsets, atomic=self.atomic)

    @classmethod
    def load(cls, name: str, path) -> "TokenizedSource":
        with np.load(path) as f:
            return cls(name, f["ids"], f["targets"], f["offsets"], bool(f["atomic"]))


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


def tokenize_source(raw: RawSource, tokenizer, *, mask_prompt: bool, add_bos: bool, num_proc: int) -> TokenizedSource:
    """Tokenise every document of `raw`, in document order, with `num_proc` forked workers."""
    if tokenizer.bos_token_id is None and add_bos:
        raise SourceError("data.add_bos is true but the tokenizer has no BOS token; set data.add_bos=false")
    batches = [raw.docs[i : i + BATCH_DOCS] for i in range(0, len(raw.docs), BATCH_DOCS)]
    args = (tokenizer, raw.kind, mask_prompt, add_bos)
    bar = tqdm(total=len(raw.docs), desc=f"tokenize {raw.name}", unit="doc", leave=False)
    results = []
    if num_proc == 1:
        _init(*args)
        for batch in batches:
            results.append(_encode(batch))
            bar.update(len(batch))
    else:
        # fork: workers inherit the tokenizer without pickling it, and start in milliseconds.
        with multiprocessing.get_context("fork").Pool(num_proc, initializer=_init_worker, initargs=args) as pool:
            for batch, result in zip(batches, pool.imap(_encode, batches)):
                results.append(result)
                bar.update(len(batch))
    bar.close()
    ids = np.concatenate([r[0] for r in results]) if results else np.zeros(0, np.int32)
    targets = np.concatenate([r[1] for r in results]) if results else np.zeros(0, bool)
    lengths = np.concatenate([r[2] for r in results]) if results else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedSource(raw.name, ids, targets, offsets, raw.atomic)
