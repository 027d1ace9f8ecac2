"""Local paths and credentials: found in any file (verification), replaced in the files publish rewrites.

A published file must neither reveal the machine it was made on nor carry a credential:
- local paths: this machine's home, working, repository, run and temporary folders, wherever they appear;
- tokens: anything shaped like a Hugging Face token (`hf_` and 30 or more letters and digits), and the
  token in use whatever its shape.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from extend.config import REPO_ROOT

TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{30,}")
# What replaces an absolute path in the files publish rewrites: the last component stays, for the reader.
LOCAL_PLACEHOLDER = "<local>"


def machine_paths(*extra: Path) -> list[str]:
    """This machine's folders that must not appear in a published file, longest first."""
    folders = [Path.home(), Path.cwd(), REPO_ROOT, Path(tempfile.gettempdir()), Path("/tmp"), *extra]
    spelled = {str(f) for f in folders} | {str(f.resolve()) for f in folders}
    return sorted((s for s in spelled if s not in ("", os.sep)), key=len, reverse=True)


def local_paths_in(data: bytes, paths: list[str]) -> list[str]:
    """The machine folders `data` mentions (a folder counts when followed by a separator, a quote, space or
    the end, so `/root` does not match `/rootfs`)."""
    found = []
    for path in paths:
        if re.search(re.escape(path.encode()) + rb"(?=[/\\\"'\s]|$)", data):
            found.append(path)
    return found


def has_token(data: bytes, token: str | None) -> bool:
    """Whether `data` holds something shaped like a Hugging Face token, or the given token itself."""
    return bool(TOKEN_PATTERN.search(data)) or (bool(token) and token.encode() in data)


def _public_path(text: str, renames: dict[str, str]) -> str:
    for local, public in renames.items():
        if text == local or text.startswith(local.rstrip("/") + "/"):
            return public + text[len(local.rstrip("/")):]
    if os.path.isabs(text):
        return f"{LOCAL_PLACEHOLDER}/{Path(text).name}"
    key, sep, value = text.partition("=")
    if sep and os.path.isabs(value) and " " not in key:  # a command-line override: data.output_dir=/an/absolute/path
        return f"{key}={_public_path(value, renames)}"
    return text


def scrub_paths(value: Any, renames: dict[str, str]) -> Any:
    """`value` (JSON-like) with every string that is a path in `renames` given its public name, and every other
    absolute path replaced by `<local>/<last component>`."""
    if isinstance(value, dict):
        return {k: scrub_paths(v, renames) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_paths(v, renames) for v in value]
    if isinstance(value, str):
        return _public_path(value, renames)
    return value
