"""The dataset folder's self-description, its shards, and the check training runs before using it.

Layout of `data.output_dir`:
    stage-00-L256/part-00000.parquet ...   rows of one curriculum stage, in training order
    manifest.json                          written last: its presence marks the folder complete
    .work/                                 only while a run is in progress (token cache, run identity)

Every file is written to a temporary name and renamed into place, so a killed run leaves only whole
files; a rerun with the same identity skips the shards already there and ends with the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from extend.config import ConfigError, ExtendConfig

# Part of every fingerprint: bump it whenever sampling, packing or the shard layout changes, so datasets
# made by older code are rebuilt instead of being reported up to date.
FORMAT = "extend-data/1"
MANIFEST = "manifest.json"
WORK = ".work"
# DataConfig fields that change how a dataset is made, not what it holds: left out of the fingerprint.
RUNTIME_FIELDS = ("num_proc", "output_dir", "overwrite", "cache_dir")


class DatasetMismatchError(ConfigError):
    """A dataset folder that is incomplete or was not made from the config at hand."""


def dataset_config(cfg: ExtendConfig) -> dict:
    """The part of the config that decides the dataset's bytes, as it reads back from JSON (int keys of
    `upsample` become strings), so the stored copy and a fresh one compare equal."""
    data = {k: v for k, v in asdict(cfg.data).items() if k not in RUNTIME_FIELDS}
    curriculum = asdict(cfg.curriculum)
    for stage in curriculum["stages"]:
        stage.pop("rope_theta", None)  # a training setting: the rows do not depend on it
    return json.loads(json.dumps({"format": FORMAT, "data": data, "curriculum": curriculum}))


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


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
    return sorted(folder.glob("stage-*")) + [p for p in (folder / MANIFEST, folder / WORK) if p.exists()]


def clear(folder: Path) -> None:
    for entry in owned_entries(folder):
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def config_differences(stored: dict, current: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested config dicts, as `key: stored -> current`."""
    out = []
    for key in sorted(set(stored) | set(current), key=str):
        a, b = stored.get(key, "<absent>"), current.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


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
    current = dataset_config(cfg)
    if manifest["config_fingerprint"] != fingerprint(current):
        diffs = config_differences(manifest["config"], current) or ["(same keys, different serialisation)"]
        problems.append(f"{folder} was made from a different config; differences (dataset -> config): "
                        + "; ".join(diffs) + ". Rebuild it with this config (`python -m data_prep` with the same "
                        "recipe and overrides plus data.overwrite=true) or point data.output_dir elsewhere")
    if tokenizer is not None:
        from extend.models.tokenizer import tokenizer_fingerprint

        if manifest["tokenizer"]["fingerprint"] != tokenizer_fingerprint(tokenizer):
            problems.append(f"{folder} was tokenised with a different tokenizer than the one given "
                            f"(dataset: {manifest['tokenizer']['name']!r})")
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
