"""The dataset folder's name and self-description, its shards, and the check training runs before using it.

Layout of `data.output_dir` (default `data/<tokenizer>-<sources>-<fingerprint>`, see `dataset_name`):
    stage-00-L256/part-00000.parquet ...   rows of one curriculum stage, in training order
    summary.md                             the summary table data_prep prints, with a legend of its columns
    manifest.json                          written last: its presence marks the folder complete
    .work/                                 only while a run is in progress (token blocks and their markers,
                                           joined token files, run identity)

Every file is written to a temporary name and renamed into place, so a killed run leaves only whole
files; a rerun with the same identity skips the shards already there and ends with the same bytes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, ListConfig, OmegaConf

from extend.config import ConfigError, ExtendConfig

# Part of every fingerprint: bump it whenever sampling, packing or the shard layout changes, so datasets
# made by older code are rebuilt instead of being reported up to date.
FORMAT = "extend-data/1"
MANIFEST = "manifest.json"
SUMMARY = "summary.md"
WORK = ".work"
# DataConfig fields that change how a dataset is made, not what it holds: left out of the fingerprint.
RUNTIME_FIELDS = ("num_proc", "output_dir", "overwrite", "cache_dir", "num_shards", "shard_index")
# Source options added after datasets existed: left out of the fingerprint while off, so those keep theirs.
OPTIONAL_SOURCE_KEYS = ("distractors", "distractor_keys")
# DataConfig.output_dir's default: an interpolation that resolves to data/<dataset_name(...)> of the config
# it sits in, so data_prep and training compute the same folder from the same keys.
DATASET_DIR_RESOLVER = "dataset_dir"
DEFAULT_OUTPUT_DIR = "${" + DATASET_DIR_RESOLVER + ":}"
# How many differing keys a refusal names before it says "and N more".
NAMED_KEYS = 4


class DatasetMismatchError(ConfigError):
    """A dataset folder that is incomplete or was not made from the config at hand."""


def dataset_config(cfg: ExtendConfig) -> dict:
    """The part of the config that decides the dataset's bytes, as it reads back from JSON (int keys of
    `upsample` become strings), so the stored copy and a fresh one compare equal."""
    return _identity_config(asdict(cfg.data), asdict(cfg.curriculum))


def _identity_config(data: dict, curriculum: dict) -> dict:
    data = {k: v for k, v in data.items() if k not in RUNTIME_FIELDS}
    data["sources"] = {name: {k: v for k, v in src.items() if not (k in OPTIONAL_SOURCE_KEYS and not v)}
                       for name, src in data.get("sources", {}).items()}
    curriculum = copy.deepcopy(curriculum)
    curriculum.pop("pose_temperature", None)  # a training setting: the rows do not depend on it
    for stage in curriculum["stages"]:
        stage.pop("rope_theta", None)  # a training setting: the rows do not depend on it
        if stage.get("span") is None:
            stage.pop("span", None)  # plain positions: datasets made before PoSE keep their fingerprint
    if not any("span" in stage for stage in curriculum["stages"]):
        curriculum.pop("pose_chunks", None)  # read only by PoSE stages
    return json.loads(json.dumps({"format": FORMAT, "data": data, "curriculum": curriculum}))


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def dataset_name(config: dict) -> str:
    """`<tokenizer>-<sources>-<fingerprint>`: a name a reader recognises, made unique by the first 10 hex
    digits of the fingerprint of `config` (dataset_config), so different data never shares a folder and the
    same data (whatever the run is called) is found again. E.g. `tiny-copy+passkey+stdlib-3f1c0a9b2e`."""
    data = config["data"]
    tokenizer = Path(str(data["tokenizer"]).rstrip("/")).name or "tokenizer"
    label = re.sub(r"[^A-Za-z0-9._+-]+", "-", f"{tokenizer}-{'+'.join(sorted(data['sources'])) or 'empty'}")
    return f"{label[:60].strip('-.')}-{fingerprint(config)[:10]}"


def default_dataset_dir(config: dict) -> str:
    return f"data/{dataset_name(config)}"


def dataset_dir(cfg: ExtendConfig) -> Path:
    """The dataset folder of `cfg`: data.output_dir, with the default worked out for a config built in
    Python (where the interpolation was never resolved)."""
    given = cfg.data.output_dir
    return Path(default_dataset_dir(dataset_config(cfg)) if given == DEFAULT_OUTPUT_DIR else given)


def _resolve_dataset_dir(*, _root_: DictConfig) -> str:
    """The `${dataset_dir:}` resolver: data/<dataset_name> of the composed config it is resolved in."""
    if "data" not in _root_ or "curriculum" not in _root_:
        raise ValueError(f"{DEFAULT_OUTPUT_DIR} resolves only in a whole run config (with data and curriculum)")

    def plain(value):
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value

    data = {key: plain(_root_.data[key]) for key in _root_.data if key not in RUNTIME_FIELDS}
    return default_dataset_dir(_identity_config(data, plain(_root_.curriculum)))


def register_resolver() -> None:
    OmegaConf.register_new_resolver(DATASET_DIR_RESOLVER, _resolve_dataset_dir, replace=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomically(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomically(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    os.replace(tmp, path)


def write_shard(arrays: dict[str, np.ndarray], path: Path) -> None:
    """One parquet shard (list<int32> columns, loadable with `datasets.load_dataset("parquet", ...)`),
    written under a temporary name and renamed."""
    n, length = arrays["input_ids"].shape
    row_offsets = pa.array(np.arange(0, (n + 1) * length, length, dtype=np.int32))

    def rows(a: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(row_offsets, pa.array(a.reshape(-1)))

    table = pa.table({
        "input_ids": rows(arrays["input_ids"]),
        "labels": rows(arrays["labels"]),
        "position_ids": rows(arrays["position_ids"]),
        "seq_lens": pa.ListArray.from_arrays(pa.array(arrays["seq_offsets"]), pa.array(arrays["seq_lens"])),
    })
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def owned_entries(folder: Path) -> list[Path]:
    """What data_prep writes in a dataset folder (and may therefore delete)."""
    return sorted(folder.glob("stage-*")) + [p for p in (folder / SUMMARY, folder / MANIFEST, folder / WORK) if p.exists()]


def clear(folder: Path) -> None:
    for entry in owned_entries(folder):
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def differing_keys(stored: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted names of the keys whose values differ between two nested config dicts (a list is one key)."""
    out = []
    for key in sorted(set(stored) | set(current), key=str):
        a, b = stored.get(key, "<absent>"), current.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing_keys(a, b, name + ".")
        elif a != b:
            out.append(name)
    return out


def name_some(names: list[str], limit: int = NAMED_KEYS) -> str:
    """`a, b, c, d and 3 more`: a list short enough for a one-line error."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def made_differently(stored: dict, current: dict) -> list[str]:
    """What differs between a manifest's identity and this run's (same keys as the manifest's top level):
    the config keys by name; only when the config is the same, the tokenizer or the inputs (a changed config
    changes them too, e.g. data.seed the generated items, and naming them then would only be noise)."""
    out = differing_keys(stored["config"], current["config"])
    if stored["config_fingerprint"] != current["config_fingerprint"] and not out:
        out.append("the config's serialisation")
    if out:
        return out
    for key, what in (("tokenizer_fingerprint", "the tokenizer's files"),
                      ("inputs_fingerprint", "the inputs (source files or generated items)")):
        if key in current and stored.get(key) != current[key]:
            out.append(what)
    return out


def refusal(folder: Path, differences: list[str], config: dict) -> str:
    """One short line: the folder, what differs (names only), and the two ways out."""
    own = default_dataset_dir(config)
    elsewhere = (f"leave data.output_dir unset to use this config's own folder {own}"
                 if Path(own) != Path(folder) else "set another data.output_dir")
    return (f"{folder} holds a dataset that was made from a different config (differs in: {name_some(differences)}): "
            f"{elsewhere}, "
            "or set data.overwrite=true to replace it")


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def verify_dataset(path: str | os.PathLike, cfg: ExtendConfig, tokenizer=None, check_checksums: bool = True) -> dict:
    """The manifest of the dataset at `path`, after checking that it is complete, was made from `cfg`
    (and from `tokenizer`, when given), and that every shard has its recorded checksum.

    Training calls this before reading any row; a mismatch raises DatasetMismatchError listing every
    difference.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    if manifest is None:
        raise DatasetMismatchError([f"{folder}: no {MANIFEST}, so the dataset is missing or incomplete; run "
                                    "`python -m data_prep` with the same recipe and overrides"])
    problems = []
    current = {"config": dataset_config(cfg)}
    current["config_fingerprint"] = fingerprint(current["config"])
    if tokenizer is not None:
        from extend.models.tokenizer import tokenizer_fingerprint

        current["tokenizer_fingerprint"] = tokenizer_fingerprint(tokenizer)
    differences = made_differently(manifest, current)
    if differences:
        problems.append(refusal(folder, differences, current["config"]))
    if check_checksums:
        for stage in manifest["stages"]:
            for shard in stage["shards"]:
                file = folder / shard["file"]
                if not file.exists():
                    problems.append(f"{file} is missing")
                elif file_sha256(file) != shard["sha256"]:
                    problems.append(f"{file} does not match its checksum in {MANIFEST} (modified or corrupt)")
    if problems:
        raise DatasetMismatchError(problems)
    return manifest
