"""The built-in corpus: this Python's standard library sources, present on every machine with Python.

It lets the tiny recipe and the `tiny` tokenizer work with no network. The file list is sorted, so the
corpus is deterministic for a given Python version (recorded in the manifest). Test suites and the
`encodings` package (mostly code-page tables) are left out.
"""

from __future__ import annotations

import os
import platform
import sysconfig
from pathlib import Path

EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings", "__pycache__"})


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """Every `.py` file of the standard library except tests and codec tables, in sorted order."""
    root = stdlib_root()
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in EXCLUDED_DIRS]  # prune: site-packages alone can be huge
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


# Every HELDOUT_EVERY-th file (by sorted position) is held out of the `stdlib` data source, so that
# perplexity on the built-in corpus (eval.perplexity.source=stdlib_heldout) is measured on unseen text.
HELDOUT_EVERY = 16


def stdlib_training_files() -> list[Path]:
    """The files the `stdlib` data source reads: all but the held-out ones."""
    return [p for i, p in enumerate(stdlib_files()) if i % HELDOUT_EVERY]


def stdlib_heldout_files() -> list[Path]:
    """The files no `stdlib` data source ever reads, for held-out perplexity."""
    return stdlib_files()[::HELDOUT_EVERY]


def read_document(path: Path) -> str:
    # errors="replace" keeps the corpus identical on a machine whose stdlib holds a stray non-UTF-8 byte.
    return path.read_text(encoding="utf-8", errors="replace")


def python_version() -> str:
    """The version whose standard library the corpus is: the corpus changes with it."""
    return platform.python_version()
