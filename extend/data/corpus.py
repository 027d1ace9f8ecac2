"""The built-in corpus: this Python's standard library sources, present on every machine with Python.

It lets the tiny recipe and the `tiny` tokenizer work with no network. The file list is sorted, so the
corpus is deterministic for a given Python version (recorded in the manifest). Test suites and the
`encodings` package (mostly code-page tables) are left out.
"""

from __future__ import annotations

import platform
import sysconfig
from pathlib import Path

EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings", "__pycache__"})


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """Every `.py` file of the standard library except tests and codec tables, in sorted order."""
    root = stdlib_root()
    files = [p for p in root.rglob("*.py") if not EXCLUDED_DIRS.intersection(p.relative_to(root).parts[:-1])]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def read_document(path: Path) -> str:
    # errors="replace" keeps the corpus identical on a machine whose stdlib holds a stray non-UTF-8 byte.
    return path.read_text(encoding="utf-8", errors="replace")


def python_version() -> str:
    """The version whose standard library the corpus is: the corpus changes with it."""
    return platform.python_version()
