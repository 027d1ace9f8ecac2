"""Data preparation at scale: peak memory and tokens/s of `python -m data_prep` on 100 MB to >= 1 GB of text,
against `datasets.map` (batched tokenisation) + `group_texts` at the same num_proc, and a SIGKILL resume.

    python -m bench.studies.data_prep_scale corpus --dir DIR --sizes-mb 100 500 1024
    python -m bench.studies.data_prep_scale ours --dir DIR --size-mb 100 --num-proc 2
    python -m bench.studies.data_prep_scale baseline --dir DIR --size-mb 100 --num-proc 2
    python -m bench.studies.data_prep_scale resume --dir DIR --size-mb 100 --num-proc 2

Corpus (built offline, deterministic): copy k (k = 0, 1, ...) of the `stdlib` source's files (extend/corpus.py,
the standard library minus tests and the held-out files), in the order of random.Random(k).shuffle, each
file's lines in the order of random.Random(k * 100003 + file index).shuffle, one JSONL file
`copy-<k>.jsonl` of {"text": ...} records per copy. A size of S MB is the first copies whose text (UTF-8
bytes of the documents, not of the JSON) reaches S x 10^6 bytes, linked into `DIR/<S>mb/`.

ours: `data=jsonl` on that folder, tokenizer `tiny`, one pretraining stage of a fixed size
(--stage-tokens, default 8M tokens at length 1024) whatever the corpus size, so what grows is the input
alone. Memory is sampled every 0.2 s as the sum of PSS (proportional set size, /proc/<pid>/smaps_rollup)
over the process and its workers, the same sum of anonymous PSS (Pss_Anon: without the page cache of
memory-mapped files, which the kernel drops under pressure), and the largest single process's RSS.
baseline: `datasets.load_dataset("json")` of the same files, `map(tokenize, batched=True, num_proc)` with the
same tokenizer, then `map(group_texts, batched=True, num_proc)` (transformers' run_clm recipe), Arrow cache
in a fresh folder; measured the same way.
resume: the same run as `ours`, SIGKILLed after --kill-after seconds, rerun to completion, and compared byte
for byte with an uninterrupted run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from extend.corpus import read_document, stdlib_training_files

BYTES_PER_MB = 10**6


def build_corpus(folder: Path, sizes_mb: list[int]) -> dict[int, dict]:
    """Write copies until the largest size is reached; link the copies of each size into <folder>/<S>mb/."""
    folder.mkdir(parents=True, exist_ok=True)
    files = stdlib_training_files()
    texts = [read_document(p) for p in files]
    written, total, k, out = [], 0, 0, {}
    for size in sorted(sizes_mb):
        while total < size * BYTES_PER_MB:
            path = folder / f"copy-{k:04d}.jsonl"
            order = list(range(len(texts)))
            random.Random(k).shuffle(order)
            copy_bytes = 0
            with open(path.with_suffix(".tmp"), "w", encoding="utf-8") as f:
                for i in order:
                    lines = texts[i].splitlines(keepends=True)
                    random.Random(k * 100003 + i).shuffle(lines)
                    doc = "".join(lines)
                    copy_bytes += len(doc.encode())
                    f.write(json.dumps({"text": doc}) + "\n")
            os.replace(path.with_suffix(".tmp"), path)
            written.append((path, copy_bytes))
            total += copy_bytes
            k += 1
        sub = folder / f"{size}mb"
        shutil.rmtree(sub, ignore_errors=True)
        sub.mkdir()
        for path, _ in written:
            (sub / path.name).symlink_to(path.resolve())
        out[size] = {"copies": len(written), "text_bytes": total, "jsonl_bytes": sum(p.stat().st_size for p, _ in written)}
    (folder / "sizes.json").write_text(json.dumps(out, indent=1))
    return out


def _rollup(pid: int) -> dict[str, int]:
    """/proc/<pid>/smaps_rollup in bytes: Rss, Pss and Pss_Anon (its share of the memory no file backs, what
    the kernel cannot drop under pressure, unlike the page cache of memory-mapped files) among others."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:  # after the address line
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return fields


def _tree_memory(proc) -> tuple[int, int, int]:
    """(sum of PSS, largest RSS, sum of anonymous PSS) over `proc` and its descendants, in bytes."""
    import psutil

    pss, rss, anon = 0, 0, 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0, 0
    for p in procs:
        try:
            fields = _rollup(p.pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        pss, rss, anon = pss + fields["Pss"], max(rss, fields["Rss"]), anon + fields.get("Pss_Anon", 0)
    return pss, rss, anon


def measured(cmd: list[str], kill_after: float | None = None, interval: float = 0.2) -> dict:
    """Run `cmd` in its own session, sampling its memory; SIGKILL the whole session after `kill_after` s.
    Besides the peaks, a timeline: every 5 s, the seconds and the PSS and anonymous PSS then (MB)."""
    import psutil

    start = time.perf_counter()
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    proc = psutil.Process(popen.pid)
    peak_pss, peak_rss, peak_anon, timeline = 0, 0, 0, []
    while popen.poll() is None:
        pss, rss, anon = _tree_memory(proc)
        peak_pss, peak_rss, peak_anon = max(peak_pss, pss), max(peak_rss, rss), max(peak_anon, anon)
        now = time.perf_counter() - start
        if not timeline or now - timeline[-1][0] >= 5:
            timeline.append((round(now, 1), round(pss / 2**20), round(anon / 2**20)))
        if kill_after is not None and now > kill_after:
            os.killpg(popen.pid, signal.SIGKILL)  # the process and its workers, as a node failure would
            break
        time.sleep(interval)
    out, err = popen.communicate()
    return {"seconds": time.perf_counter() - start, "returncode": popen.returncode, "peak_pss_mb": peak_pss / 2**20,
            "peak_rss_mb": peak_rss / 2**20, "peak_anon_pss_mb": peak_anon / 2**20,
            "timeline_s_pss_anon_mb": timeline, "stdout": out, "stderr": err[-3000:]}


def ours_cmd(corpus: str, out: Path, num_proc: int, length: int, stage_tokens: int, cache_dir: str) -> list[str]:
    return [sys.executable, "-m", "data_prep", "data=jsonl", f"data.sources.corpus.path={corpus}", "data.tokenizer=tiny",
            f"data.cache_dir={Path(cache_dir).expanduser()}", f"data.num_proc={num_proc}", f"data.output_dir={out}",
            f"curriculum.tokens_per_step={8 * length}", f"curriculum.stages=[{{length: {length}, tokens: {stage_tokens}}}]"]


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def run_ours(corpus: str, num_proc: int, length: int, stage_tokens: int, cache_dir: str, kill_after=None,
             out: Path | None = None) -> dict:
    out = out or Path(tempfile.mkdtemp(prefix="bench-scale-")) / "ds"
    r = measured(ours_cmd(corpus, out, num_proc, length, stage_tokens, cache_dir), kill_after)
    r["out"] = str(out)
    markers = [json.loads(m.read_text()) for m in (out / ".work").rglob("block-*.json")]
    joined = [json.loads(m.read_text()) for m in (out / ".work").rglob("tokens.json")]
    r["tokenised_when_stopped"] = {"blocks": len(markers), "joined_sources": len(joined),
                                   "tokens": sum(m["tokens"] for m in markers + joined)}
    if (out / "manifest.json").exists():
        m = json.loads((out / "manifest.json").read_text())
        r["tokens"] = sum(s["unique_tokens"] for s in m["sources"].values())
        r["documents"] = sum(s["documents"] for s in m["sources"].values())
        r["efficiency"] = [st["efficiency"] for st in m["stages"]]
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
    return r


def baseline_worker(corpus: str, num_proc: int, length: int, cache_dir: str) -> None:
    """In its own process: run_clm's recipe on the JSONL files; prints tokens and seconds as JSON."""
    import glob
    from itertools import chain

    import datasets

    from extend.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("tiny", cache_dir)
    datasets.disable_progress_bars()
    nproc = num_proc if num_proc > 1 else None
    arrow_cache = tempfile.mkdtemp(prefix="bench-hf-")

    def tokenize_function(examples):
        return tokenizer(examples["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total = (len(concatenated["input_ids"]) // length) * length
        result = {k: [t[i : i + length] for i in range(0, total, length)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    start = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=sorted(glob.glob(corpus)), split="train", cache_dir=arrow_cache)
    tokenized = ds.map(tokenize_function, batched=True, num_proc=nproc, remove_columns=["text"])
    grouped = tokenized.map(group_texts, batched=True, num_proc=nproc)
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for batch in tokenized.select_columns("input_ids").iter(batch_size=4096) for ids in batch["input_ids"])
    print(json.dumps({"seconds_in_process": seconds, "tokens": tokens, "rows": len(grouped)}))
    shutil.rmtree(arrow_cache, ignore_errors=True)


def run_baseline(corpus: str, num_proc: int, length: int, cache_dir: str) -> dict:
    r = measured([sys.executable, "-m", "bench.studies.data_prep_scale", "baseline-worker", "--corpus", corpus,
                  "--num-proc", str(num_proc), "--length", str(length), "--cache-dir", cache_dir])
    r.update(json.loads(r["stdout"].strip().splitlines()[-1]))
    r["tokens_per_s"] = r["tokens"] / r["seconds"]
    return r


def run_resume(corpus: str, num_proc: int, length: int, stage_tokens: int, cache_dir: str, kill_after: float) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    killed = run_ours(corpus, num_proc, length, stage_tokens, cache_dir, kill_after=kill_after, out=root / "killed")
    work = root / "killed" / ".work"
    blocks = len(list(work.rglob("block-*.json"))) + 10**6 * len(list(work.rglob("tokens.json")))
    resumed = run_ours(corpus, num_proc, length, stage_tokens, cache_dir, out=root / "killed")
    clean = run_ours(corpus, num_proc, length, stage_tokens, cache_dir, out=root / "clean")
    return {"killed_after_s": killed["seconds"], "killed_returncode": killed["returncode"],
            "blocks_done_at_kill (1e6 per joined source)": blocks, "resumed_s": resumed["seconds"],
            "clean_s": clean["seconds"], "identical": tree_digest(root / "killed") == tree_digest(root / "clean"),
            "digest": tree_digest(root / "clean")}


def main(argv: list[str] | None = None) -> dict:
    from extend.models.tokenizer import DEFAULT_CACHE_DIR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["corpus", "ours", "baseline", "resume", "baseline-worker"])
    p.add_argument("--dir", help="corpus folder (built by the corpus command)")
    p.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 500, 1024], help="corpus: sizes to build")
    p.add_argument("--size-mb", type=int, default=100, help="ours/baseline/resume: which size to read")
    p.add_argument("--corpus", help="baseline-worker: a glob of JSONL files")
    p.add_argument("--num-proc", type=int, default=2)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--stage-tokens", type=int, default=8 * 2**20, help="tokens of the one stage (fixed across sizes)")
    p.add_argument("--kill-after", type=float, default=None,
                   help="resume: seconds before SIGKILL (default 30); ours: stop after this long and report how far "
                        "it got and its peak memory so far")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    a = p.parse_args(argv)
    if a.cmd == "corpus":
        r = build_corpus(Path(a.dir), a.sizes_mb)
    elif a.cmd == "baseline-worker":
        return baseline_worker(a.corpus, a.num_proc, a.length, a.cache_dir)
    else:
        corpus = str(Path(a.dir) / f"{a.size_mb}mb" / "*.jsonl")
        if a.cmd == "ours":
            r = run_ours(corpus, a.num_proc, a.length, a.stage_tokens, a.cache_dir, a.kill_after)
            r.pop("stdout")
        elif a.cmd == "baseline":
            r = run_baseline(corpus, a.num_proc, a.length, a.cache_dir)
            r.pop("stdout")
        else:
            r = run_resume(corpus, a.num_proc, a.length, a.stage_tokens, a.cache_dir, a.kill_after or 30.0)
        r = {"command": a.cmd, "size_mb": a.size_mb, "num_proc": a.num_proc, **r}
    print(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
