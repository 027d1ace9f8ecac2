"""Where held-out long documents for perplexity come from, registered by `eval.perplexity.source`."""

from __future__ import annotations

import glob
import sysconfig
from pathlib import Path
from typing import Callable

from extend.config import ConfigError, PerplexityDataConfig
from extend.corpus import read_document, stdlib_heldout_files


def python_stdlib(cfg: PerplexityDataConfig) -> list[str]:
    """The largest modules of this interpreter's standard library: long, local, the same on every run
    with the same Python version. Code, not prose, and likely seen in pretraining: use it to compare
    lengths and methods, not models trained on different data."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.glob("*.py") if p.is_file()]
    files.sort(key=lambda p: (-p.stat().st_size, p.name))
    return [p.read_text(encoding="utf-8", errors="replace") for p in files[: cfg.max_documents]]


def stdlib_heldout(cfg: PerplexityDataConfig) -> list[str]:
    """The standard-library files the `stdlib` data source holds out (extend/corpus.py), longest
    first: text that models trained on the built-in corpus (the tiny base and recipe) never saw."""
    heldout = sorted(stdlib_heldout_files(), key=lambda p: (-p.stat().st_size, p.name))
    return [read_document(p) for p in heldout[: cfg.max_documents]]


def files(cfg: PerplexityDataConfig) -> list[str]:
    """Text files matching the globs in `eval.perplexity.paths`, in sorted order."""
    if not cfg.paths:
        raise ConfigError(["eval.perplexity.source=files needs eval.perplexity.paths=[GLOB, ...]"])
    matched = sorted({p for pattern in cfg.paths for p in glob.glob(str(Path(pattern).expanduser()), recursive=True)})
    matched = [p for p in matched if Path(p).is_file()]
    if not matched:
        raise ConfigError([f"eval.perplexity.paths={cfg.paths} matches no file"])
    return [Path(p).read_text(encoding="utf-8", errors="replace") for p in matched[: cfg.max_documents]]


def dataset(cfg: PerplexityDataConfig) -> list[str]:
    """`eval.perplexity.dataset` loaded with `datasets` (a Hub name where reachable, or a local folder)."""
    if not cfg.dataset:
        raise ConfigError(["eval.perplexity.source=dataset needs eval.perplexity.dataset=NAME_OR_FOLDER"])
    from datasets import load_dataset

    try:
        data = load_dataset(cfg.dataset, cfg.dataset_config, split=cfg.split)
    except (OSError, ValueError, ConnectionError) as err:
        raise ConfigError([
            f"eval.perplexity.dataset={cfg.dataset!r} (split {cfg.split!r}) could not be loaded: {err}. "
            "Offline, use source=files with local text files, or source=python_stdlib"
        ]) from err
    if cfg.text_column not in data.column_names:
        raise ConfigError([f"eval.perplexity.text_column={cfg.text_column!r} is not a column of {cfg.dataset} "
                           f"(columns: {', '.join(data.column_names)})"])
    return [row[cfg.text_column] for row in data.select(range(min(cfg.max_documents, len(data))))]


SOURCES: dict[str, Callable[[PerplexityDataConfig], list[str]]] = {
    "python_stdlib": python_stdlib,
    "stdlib_heldout": stdlib_heldout,
    "files": files,
    "dataset": dataset,
}


def load_documents(cfg: PerplexityDataConfig) -> list[str]:
    if cfg.source not in SOURCES:
        raise ConfigError([f"eval.perplexity.source={cfg.source!r} is not a text source; choose one of "
                           f"{', '.join(SOURCES)}"])
    return SOURCES[cfg.source](cfg)
