"""Sources of documents, one loader per `data.sources.<name>.type`, registered in `LOADERS`.

A loader returns the source's documents in a deterministic order, as one of three kinds:
- text: a string, trained on in full, which pretraining-style packing may split across rows;
- chat: a list of {role, content} messages, rendered with the tokenizer's chat template; never split
  (format `sharegpt` reads ShareGPT's {from, value} turns into the same messages);
- qa:   a (prompt, answer) pair from a synthetic task; never split.
`check_sources` validates the config without reading anything but file names, so bad input fails before
any heavy work.

Documents are streamed, never held all at once: a loader reads its inputs once to check every record,
count the documents and hash them (`RawSource.digest`, updated document by document), and returns a
`Documents` stream that reads the inputs again, in the same order, each time it is iterated (only
synthetic items, whose number the config bounds, are a list).
"""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator

from extend.config import SourceConfig
from extend.corpus import python_version, read_document, stdlib_training_files
from extend.tasks import synthetic

# What a record holds -> the kind of document it becomes.
FORMATS = {"text": "text", "chat": "chat", "sharegpt": "chat"}
# ShareGPT speakers -> chat roles (FastChat's conversion, which Vicuna and Entropy-ABF trained with).
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "system": "system"}
# Fields every type reads; each type adds its own in FIELDS_READ.
_COMMON = {"type", "weight", "upsample", "max_documents"}
_RECORDS = {"path", "format", "text_field", "messages_field", "mask_prompt"}
FIELDS_READ: dict[str, set[str]] = {
    "stdlib": set(),
    "text": {"path"},
    "jsonl": _RECORDS,
    "parquet": _RECORDS,
    "hf": _RECORDS | {"subset", "split", "revision", "streaming"},
    "synthetic": {"task", "lengths", "num_items", "depths", "distractors", "distractor_keys", "mask_prompt"},
}


class SourceError(ValueError):
    """A source whose documents cannot be read: names the source key, the file or dataset, and the fix."""


@dataclass
class RawSource:
    """A source's documents before tokenisation, and what the manifest records about where they came from."""

    name: str
    kind: str  # text | chat | qa
    # Iterable more than once, in the same order each time: a list, or a Documents stream.
    docs: Iterable
    # A hash of the inputs (file contents, dataset identity, generator settings): a rerun after the
    # inputs changed is not a no-op.
    digest: str
    info: dict = field(default_factory=dict)
    # How many documents `docs` yields (None: count them by iterating).
    documents: int | None = None

    def __post_init__(self):
        if self.documents is None:
            self.documents = len(self.docs) if isinstance(self.docs, (list, tuple)) else sum(1 for _ in self.docs)

    @property
    def atomic(self) -> bool:
        """Whether a document must stay in one row (conversations and task items)."""
        return self.kind != "text"


class Documents:
    """A source's documents as a stream: each iteration calls `make` and reads the inputs afresh."""

    def __init__(self, make: Callable[[], Iterator]):
        self._make = make

    def __iter__(self) -> Iterator:
        return self._make()


class _Hash:
    """`_digest(*parts)` computed part by part, and a part that is the JSON dump of a list computed item by
    item, so a digest needs no list of the documents and equals what hashing the whole list gave."""

    def __init__(self):
        self._h = hashlib.sha256()
        self._items = 0

    def part(self, value) -> None:
        self._h.update(value if isinstance(value, bytes) else str(value).encode())
        self._h.update(b"\0")

    def open_list(self) -> None:
        self._h.update(b"[")
        self._items = 0

    def item(self, value) -> None:
        # json.dumps(list) is "[" + ", ".join(json.dumps(item)) + "]"
        self._h.update((", " if self._items else "").encode() + json.dumps(value).encode())
        self._items += 1

    def close_list(self) -> None:
        self._h.update(b"]\0")

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@dataclass
class LoadContext:
    tokenizer: object
    seed: int


def check_sources(sources: dict[str, SourceConfig]) -> list[str]:
    """Every problem in `data.sources` that can be found without reading documents."""
    problems = []
    if not sources:
        problems.append("data.sources is empty: list at least one source (see conf/data/)")
    defaults = SourceConfig()
    for name, src in sources.items():
        key = f"data.sources.{name}"
        if src.type not in LOADERS:
            problems.append(f"{key}.type={src.type!r} is unknown; choose one of {', '.join(LOADERS)}")
            continue
        read = _COMMON | FIELDS_READ[src.type]
        for f in fields(SourceConfig):
            if f.name not in read and getattr(src, f.name) != getattr(defaults, f.name):
                problems.append(f"{key}.{f.name} is not read by type {src.type!r}; remove it")
        if src.weight < 0:
            problems.append(f"{key}.weight={src.weight} is negative; weights are token shares, use >= 0")
        for min_len, factor in src.upsample.items():
            if min_len < 0 or factor <= 0:
                problems.append(f"{key}.upsample: {min_len}: {factor} needs a length >= 0 and a factor > 0")
        if src.max_documents is not None and src.max_documents < 1:
            problems.append(f"{key}.max_documents={src.max_documents} must be >= 1 (or null for all)")
        if "format" in read and src.format not in FORMATS:
            problems.append(f"{key}.format={src.format!r} is unknown; choose one of {', '.join(FORMATS)}")
        if "path" in read and not src.path:
            problems.append(f"{key}.path is not set; give a file, a glob{' or a dataset id' if src.type == 'hf' else ''}")
        elif src.type in ("text", "jsonl", "parquet") and not _match(src.path):
            problems.append(f"{key}.path={src.path!r}: no such file (relative to {Path.cwd()})")
        if src.type == "synthetic":
            if src.task not in synthetic.TASKS:
                problems.append(f"{key}.task={src.task!r} is unknown; choose one of {', '.join(synthetic.TASKS)}")
            if not src.lengths or min(src.lengths) < 2:
                problems.append(f"{key}.lengths={src.lengths} needs at least one target length, each >= 2 tokens")
            if src.num_items < 1:
                problems.append(f"{key}.num_items={src.num_items} must be >= 1")
            if not 0 <= src.distractors < 1:
                problems.append(f"{key}.distractors={src.distractors} must be >= 0 and < 1 (a share of filler sentences)")
            elif src.distractors and src.task != "passkey":
                problems.append(f"{key}.distractors is a passkey option; remove it from this {src.task} source")
            if not 0 <= src.distractor_keys <= 1:
                problems.append(f"{key}.distractor_keys={src.distractor_keys} must be >= 0 and <= 1 (a share of the "
                                "near misses)")
            elif src.distractor_keys and not src.distractors:
                problems.append(f"{key}.distractor_keys={src.distractor_keys} numbers the near misses, and there are "
                                "none: set distractors > 0 as well, or remove distractor_keys")
    if sources and sum(s.weight for s in sources.values()) <= 0:
        problems.append("data.sources: every weight is 0, so the mixture is empty; give at least one source a weight > 0")
    return problems


def load_source(name: str, src: SourceConfig, ctx: LoadContext) -> RawSource:
    """The source's documents, empty ones dropped, cut to max_documents."""
    return LOADERS[src.type](name, src, ctx)


def _match(pattern: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())


def _limit(docs: Iterable, src: SourceConfig) -> Iterator:
    kept = 0
    for doc in docs:
        if src.max_documents is not None and kept >= src.max_documents:
            return
        if doc:  # an empty string or conversation has nothing to learn from
            kept += 1
            yield doc


def _listed(name: str, kind: str, make: Callable[[], Iterator], digest: _Hash, info: dict, head=()) -> RawSource:
    """A source whose digest ends with the JSON dump of its documents: one reading pass checks every record,
    counts and hashes the documents; `make` streams them again for tokenisation."""
    for part in head:
        digest.part(part)
    digest.open_list()
    count = 0
    for doc in make():
        digest.item(doc)
        count += 1
    digest.close_list()
    return RawSource(name, kind, Documents(make), digest.hexdigest(), info, count)


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()


def _load_stdlib(name: str, src: SourceConfig, ctx: LoadContext) -> RawSource:
    files = stdlib_training_files()
    if src.max_documents is not None:
        files = files[: src.max_documents]
    digest, count = _Hash(), 0
    digest.part(python_version())
    for p in files:
        doc = read_document(p)
        digest.part(doc)
        count += bool(doc)
    make = lambda: _limit((read_document(p) for p in files), src)  # noqa: E731
    return RawSource(name, "text", Documents(make), digest.hexdigest(),
                     {"python_version": python_version(), "files": len(files)}, count)


def _load_text(name: str, src: SourceConfig, ctx: LoadContext) -> RawSource:
    files = _match(src.path)
    if src.max_documents is not None:
        files = files[: src.max_documents]

    def read(p: Path) -> str:
        try:
            return p.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise SourceError(f"data.sources.{name}: {p} is not UTF-8 text ({err.reason} at byte {err.start})") from err

    digest, count = _Hash(), 0
    for p in files:
        doc = read(p)
        digest.part(f"{p}\0{doc}")
        count += bool(doc)
    make = lambda: _limit((read(p) for p in files), src)  # noqa: E731
    return RawSource(name, "text", Documents(make), digest.hexdigest(), {"files": len(files)}, count)


def _record_doc(record: dict, src: SourceConfig, where: str):
    """The text or the messages of one record; a record without the field is an error naming it."""
    column = src.text_field if src.format == "text" else src.messages_field
    if column not in record:
        raise SourceError(f"{where}: record has no field {column!r} (fields: {', '.join(map(str, record))}); "
                         f"set {'text_field' if src.format == 'text' else 'messages_field'}")
    value = record[column]
    if src.format == "chat":
        if not isinstance(value, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in value):
            raise SourceError(f"{where}: field {column!r} must be a list of {{role, content}} messages")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    if src.format == "sharegpt":
        return _sharegpt_messages(value, column, where)
    if not isinstance(value, str):
        raise SourceError(f"{where}: field {column!r} must be a string, got {type(value).__name__}")
    return value


def _sharegpt_messages(turns, column: str, where: str) -> list[dict]:
    """ShareGPT {from, value} turns as chat messages. Turns before the first human one are dropped, as FastChat
    does: chat templates (Llama 2's among them) require the conversation to open with the user."""
    if not isinstance(turns, list) or not all(isinstance(t, dict) and {"from", "value"} <= set(t) for t in turns):
        raise SourceError(f"{where}: field {column!r} must be a list of ShareGPT {{from, value}} turns")
    unknown = sorted({str(t["from"]) for t in turns} - set(SHAREGPT_ROLES))
    if unknown:
        raise SourceError(f"{where}: ShareGPT speaker(s) {', '.join(map(repr, unknown))} not one of "
                          f"{', '.join(SHAREGPT_ROLES)}; convert the records to format chat")
    messages = [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in turns]
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), len(messages))
    return messages[first_user:]


def _load_jsonl(name: str, src: SourceConfig, ctx: LoadContext) -> RawSource:
    def records():
        for path in _match(src.path):
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"data.sources.{name}: {path}:{i}"
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise SourceError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
                    yield _record_doc(record, src, where)

    return _listed(name, FORMATS[src.format], lambda: _limit(records(), src), _Hash(), {"files": len(_match(src.path))})


def _load_parquet(name: str, src: SourceConfig, ctx: LoadContext) -> RawSource:
    import pyarrow.parquet as pq

    column = src.text_field if src.format == "text" else src.messages_field

    def records():
        for path in _match(src.path):
            i = 0
            for batch in pq.ParquetFile(path).iter_batches(columns=[column], batch_size=1024):
                for value in batch.column(0).to_pylist():
                    yield _record_doc({column: value}, src, f"data.sources.{name}: {path} row {i}")
                    i += 1

    return _listed(name, FORMATS[src.format], lambda: _limit(records(), src), _Hash(), {"files": len(_match(src.path))})


def _load_hf(name: str, src: SourceConfig, ctx: LoadContext) -> RawSource:
    import datasets

    try:
        ds = datasets.load_dataset(src.path, name=src.subset, split=src.split, revision=src.revision,
                                   streaming=src.streaming)

        def make() -> Iterator:
            return _limit((_record_doc(r, src, f"data.sources.{name}: {src.path} record {i}") for i, r in enumerate(ds)), src)

        info = {"dataset": src.path, "subset": src.subset, "split": src.split, "streaming": src.streaming}
        head = (src.path, src.subset, src.split, src.revision, src.max_documents)
        if not src.streaming:
            return _listed(name, FORMATS[src.format], make, _Hash(), info, head)
        # A streamed dataset is identified by its name and settings, not its records.
        digest = _Hash()
        for part in (*head, ""):
            digest.part(part)
        return RawSource(name, FORMATS[src.format], Documents(make), digest.hexdigest(), info,
                         sum(1 for _ in make()))
    except SourceError:
        raise
    except (OSError, ValueError) as err:
        subset = f", {src.subset!r}" if src.subset else ""
        raise SourceError(
            f"data.sources.{name}: Hugging Face dataset {src.path!r} (subset {src.subset}, split {src.split}) could "
            f"not be loaded: {err.__class__.__name__}: {str(err)[:200]}. Without network, pre-download it where the "
            f"Hub is reachable with `python -c \"import datasets; datasets.load_dataset({src.path!r}{subset})\"` "
            f"(or `hf download --repo-type dataset {src.path}`), copy ~/.cache/huggingface over, and set "
            "HF_HUB_OFFLINE=1; or export it to JSONL/Parquet and use a jsonl/parquet source"
        ) from err


def _load_synthetic(name: str, src: SourceConfig, ctx: LoadContext) -> RawSource:
    # The source's name enters the seed, so two sources of the same task draw different items.
    seed = synthetic.cell_seed(ctx.seed, name, 0, None, 0)
    items = synthetic.generate(src.task, ctx.tokenizer, list(src.lengths), src.num_items, seed,
                               list(src.depths) if src.depths is not None else None, src.distractors,
                               src.distractor_keys)
    over = sorted({(item.target_length, item.num_tokens) for item in items if item.num_tokens > item.target_length})
    if over:
        target, tokens = over[0]
        raise SourceError(f"data.sources.{name}.lengths: a {src.task} item needs at least {tokens} tokens with this "
                          f"tokenizer, more than the target {target}; use lengths of at least {tokens}")
    docs = list(_limit(((item.prompt, item.answer) for item in items), src))
    info = {"task": src.task, "lengths": list(src.lengths)}
    if src.distractors:
        info["distractors"] = src.distractors
    if src.distractor_keys:
        info["distractor_keys"] = src.distractor_keys
    return RawSource(name, "qa", docs, _digest(json.dumps(docs)), info)


LOADERS: dict[str, Callable[[str, SourceConfig, LoadContext], RawSource]] = {
    "stdlib": _load_stdlib,
    "text": _load_text,
    "jsonl": _load_jsonl,
    "parquet": _load_parquet,
    "hf": _load_hf,
    "synthetic": _load_synthetic,
}
