"""Sources of documents, one loader per `data.sources.<name>.type`, registered in `LOADERS`.

A loader returns the source's documents in a deterministic order, as one of three kinds:
- text: a string, trained on in full, which pretraining-style packing may split across rows;
- chat: a list of {role, content} messages, rendered with the tokenizer's chat template; never split
  (format `sharegpt` reads ShareGPT's {from, value} turns into the same messages);
- qa:   a (prompt, answer) pair from a synthetic task; never split.
`check_sources` validates the config without reading anything but file names, so bad input fails before
any heavy work.
"""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

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
    "synthetic": {"task", "lengths", "num_items", "depths", "mask_prompt"},
}


class SourceError(ValueError):
    """A source whose documents cannot be read: names the source key, the file or dataset, and the fix."""


@dataclass
class RawSource:
    """A source's documents before tokenisation, and what the manifest records about where they came from."""

    name: str
    kind: str  # text | chat | qa
    docs: list
    # A hash of the inputs (file contents, dataset identity, generator settings): a rerun after the
    # inputs changed is not a no-op.
    digest: str
    info: dict = field(default_factory=dict)

    @property
    def atomic(self) -> bool:
        """Whether a document must stay in one row (conversations and task items)."""
        return self.kind != "text"


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
    if sources and sum(s.weight for s in sources.values()) <= 0:
        problems.append("data.sources: every weight is 0, so the mixture is empty; give at least one source a weight > 0")
    return problems


def load_source(name: str, src: SourceConfig, ctx: LoadContext) -> RawSource:
    """The source's documents, empty ones dropped, cut to max_documents."""
    return LOADERS[src.type](name, src, ctx)


def _match(pattern: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())


def _limit(docs, src: SourceConfig) -> list:
    out = []
    for doc in docs:
        if src.max_documents is not None and len(out) >= src.max_documents:
            break
        if doc:  # an empty string or conversation has nothing to learn from
            out.append(doc)
    return out


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
    docs = [read_document(p) for p in files]
    return RawSource(name, "text", _limit(docs, src), _digest(python_version(), *docs),
                     {"python_version": python_version(), "files": len(files)})


def _load_text(name: str, src: SourceConfig, ctx: LoadContext) -> RawSource:
    files = _match(src.path)
    if src.max_documents is not None:
        files = files[: src.max_documents]
    docs = []
    for p in files:
        try:
            docs.append(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise SourceError(f"data.sources.{name}: {p} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    return RawSource(name, "text", _limit(docs, src), _digest(*[f"{p}\0{d}" for p, d in zip(files, docs)]),
                     {"files": len(files)})


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

    docs = _limit(records(), src)
    return RawSource(name, FORMATS[src.format], docs, _digest(json.dumps(docs)), {"files": len(_match(src.path))})


def _load_parquet(name: str, src: SourceConfig, ctx: LoadContext) -> RawSource:
    import pyarrow.parquet as pq

    column = src.text_field if src.format == "text" else src.messages_field

    def records():
        for path in _match(src.path):
            for i, value in enumerate(pq.read_table(path, columns=[column]).column(0).to_pylist()):
                yield _record_doc({column: value}, src, f"data.sources.{name}: {path} row {i}")

    docs = _limit(records(), src)
    return RawSource(name, FORMATS[src.format], docs, _digest(json.dumps(docs)), {"files": len(_match(src.path))})


def _load_hf(name: str, src: SourceConfig, ctx: LoadContext) -> RawSource:
    import datasets

    try:
        ds = datasets.load_dataset(src.path, name=src.subset, split=src.split, revision=src.revision,
                                   streaming=src.streaming)
        docs = _limit((_record_doc(r, src, f"data.sources.{name}: {src.path} record {i}") for i, r in enumerate(ds)), src)
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
    return RawSource(name, FORMATS[src.format], docs, _digest(src.path, src.subset, src.split, src.revision, src.max_documents,
                                                    json.dumps(docs) if not src.streaming else ""),
                     {"dataset": src.path, "subset": src.subset, "split": src.split, "streaming": src.streaming})


def _load_synthetic(name: str, src: SourceConfig, ctx: LoadContext) -> RawSource:
    # The source's name enters the seed, so two sources of the same task draw different items.
    seed = synthetic.cell_seed(ctx.seed, name, 0, None, 0)
    items = synthetic.generate(src.task, ctx.tokenizer, list(src.lengths), src.num_items, seed,
                               list(src.depths) if src.depths is not None else None)
    over = sorted({(item.target_length, item.num_tokens) for item in items if item.num_tokens > item.target_length})
    if over:
        target, tokens = over[0]
        raise SourceError(f"data.sources.{name}.lengths: a {src.task} item needs at least {tokens} tokens with this "
                          f"tokenizer, more than the target {target}; use lengths of at least {tokens}")
    docs = _limit(((item.prompt, item.answer) for item in items), src)
    return RawSource(name, "qa", docs, _digest(json.dumps(docs)), {"task": src.task, "lengths": list(src.lengths)})


LOADERS: dict[str, Callable[[str, SourceConfig, LoadContext], RawSource]] = {
    "stdlib": _load_stdlib,
    "text": _load_text,
    "jsonl": _load_jsonl,
    "parquet": _load_parquet,
    "hf": _load_hf,
    "synthetic": _load_synthetic,
}
