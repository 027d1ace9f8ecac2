"""Streaming preparation: the bytes it produces are those the in-memory preparation produced (golden values
recorded before streaming replaced it), tokenisation splits over nodes by shard, and a run killed while
tokenising resumes to the bytes of a clean run."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from extend.config import CONF_DIR, REPO_ROOT
from extend.data.manifest import MANIFEST, WORK
from extend.data.prepare import prepare

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon "
         "phi chi psi omega").split()
# The columns whose content the golden values pin (other columns may be added without changing these).
COLUMNS = ("input_ids", "labels", "position_ids", "seq_lens")


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Text files, JSONL and Parquet text, JSONL chats, and a tokenizer trained on them (a byte-level BPE made
    the way `tiny` is trained, on this corpus, so the golden values do not depend on the Python version)."""
    from extend.models.tokenizer import _train_tiny

    root = tmp_path_factory.mktemp("golden")
    rng = random.Random(1234)
    (root / "text").mkdir()
    texts = []
    for i in range(24):
        texts.append(words(rng, rng.randint(5, 900)))
        (root / "text" / f"doc{i:02d}.txt").write_text(texts[-1])
    with open(root / "docs.jsonl", "w") as f:
        for i in range(400):
            texts.append(words(rng, rng.randint(3, 150)))
            f.write(json.dumps({"text": texts[-1]}) + "\n")
    pq.write_table(pa.table({"body": [words(rng, rng.randint(10, 300)) for _ in range(60)]}), root / "web.parquet")
    with open(root / "chats.jsonl", "w") as f:
        for i in range(80):
            turns = [{"role": r, "content": words(rng, rng.randint(1, 20))} for r in ["user", "assistant"] * rng.randint(1, 3)]
            f.write(json.dumps({"messages": turns}) + "\n")
    _train_tiny(texts).save_pretrained(str(root / "tokenizer"))
    return root


def golden_cfg(corpus: Path, out: Path, packing: str, extra=()):
    sources = {
        "files": {"type": "text", "path": "text/*.txt", "weight": 2.0, "upsample": {300: 3.0}},
        "docs": {"type": "jsonl", "path": "docs.jsonl", "max_documents": 350},
        "web": {"type": "parquet", "path": "web.parquet", "text_field": "body", "weight": 0.5},
        "passkey": {"type": "synthetic", "task": "passkey", "lengths": [240, 250], "num_items": 2},
    }
    if packing == "sft":
        sources["chats"] = {"type": "jsonl", "format": "chat", "path": "chats.jsonl"}
    overrides = ["~data.sources.stdlib", f"data.tokenizer={corpus / 'tokenizer'}", f"data.packing={packing}",
                 "data.rows_per_shard=8", "curriculum.tokens_per_step=1024",
                 "curriculum.stages=[{length: 256, steps: 6}, {length: 512, tokens: 6144}]", f"data.output_dir={out}",
                 *extra]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides)
    OmegaConf.set_struct(cfg, False)
    return OmegaConf.to_object(OmegaConf.merge(cfg, {"data": {"sources": sources}}))


def content_fingerprint(folder: Path) -> dict:
    """Per stage: a sha256 over the decoded values of COLUMNS of every shard in order (independent of the
    parquet writer's version), and the manifest's counts."""
    manifest = json.loads((folder / MANIFEST).read_text())
    stages = {}
    for stage in manifest["stages"]:
        h = hashlib.sha256()
        for shard in stage["shards"]:
            table = pq.read_table(folder / shard["file"])
            for column in COLUMNS:
                chunked = table.column(column).combine_chunks()
                h.update(column.encode())
                h.update(np.asarray(chunked.offsets).astype(np.int64).tobytes())
                h.update(np.asarray(chunked.values).astype(np.int32).tobytes())
        stages[stage["folder"]] = {"content_sha256": h.hexdigest(), "rows": sum(s["rows"] for s in stage["shards"]),
                                   "real_tokens": stage["real_tokens"], "target_tokens": stage["target_tokens"],
                                   "efficiency": stage["efficiency"]}
    return {
        "inputs_fingerprint": manifest["inputs_fingerprint"],
        "sources": {n: [s["documents"], s["unique_tokens"]] for n, s in sorted(manifest["sources"].items())},
        "stages": stages,
    }


# Recorded with the in-memory preparation (every document in a Python list, the digest a JSON dump of all of
# them) before it was replaced by the streaming one; the streaming one must reproduce them exactly.
GOLDEN: dict = {'pretrain': {'inputs_fingerprint': 'b48a0efdaea2623a148f68fd40e5cdc8834ad1caee0c7249b18293253943e094',
              'sources': {'docs': [350, 27379], 'files': [24, 11497], 'passkey': [20, 4910], 'web': [60, 9997]},
              'stages': {'stage-00-L256': {'content_sha256': '265c36c11aa3a353a348135a64061baee861097137ed5f6969ca4e0df04fbf8b',
                                           'efficiency': 1.0,
                                           'real_tokens': 6144,
                                           'rows': 24,
                                           'target_tokens': 4882},
                         'stage-01-L512': {'content_sha256': 'abba19cad85c8cd440720994173ed3c1962a46a9d47e07aa52ceb0103dac39ee',
                                           'efficiency': 1.0,
                                           'real_tokens': 6144,
                                           'rows': 12,
                                           'target_tokens': 4657}}},
 'sft': {'inputs_fingerprint': '756433b862fbf0f90e1663997b5f4feb7d7205098b3e6865735161608dcbd53f',
         'sources': {'chats': [80, 4532],
                     'docs': [350, 27379],
                     'files': [24, 11497],
                     'passkey': [20, 4910],
                     'web': [60, 9997]},
         'stages': {'stage-00-L256': {'content_sha256': '59208e929641215869d60d7041df083e062a034e19a30dc9d104ceb9b10c2ef2',
                                      'efficiency': 1.0,
                                      'real_tokens': 6144,
                                      'rows': 24,
                                      'target_tokens': 4305},
                    'stage-01-L512': {'content_sha256': '0d252127c1af03d53a23c308da5585205fc5453ed2fcac61e82e9c43dc3fb420',
                                      'efficiency': 1.0,
                                      'real_tokens': 6144,
                                      'rows': 12,
                                      'target_tokens': 4194}}}}


@pytest.mark.parametrize("packing", ["pretrain", "sft"])
def test_streaming_preparation_reproduces_the_in_memory_golden(corpus, tmp_path, packing, monkeypatch):
    monkeypatch.chdir(corpus)  # relative source paths: the text digest covers file names
    out = prepare(golden_cfg(corpus, tmp_path / "ds", packing), log=lambda _: None)
    got = content_fingerprint(out)
    assert got == GOLDEN[packing]


def test_nodes_split_tokenisation_by_block_and_the_finishing_run_gives_the_same_bytes(corpus, tmp_path, monkeypatch):
    """Two 'nodes' (shard_index 0 and 1 of 2, one with worker processes) each tokenise every other block; the
    run without shard_index then tokenises nothing and packs; the rows are the golden ones."""
    import extend.data.tokenize as tok

    monkeypatch.chdir(corpus)
    monkeypatch.setattr(tok, "BLOCK_DOCS", 64)  # the jsonl source's 350 documents -> 6 blocks
    out = tmp_path / "ds"
    logs = []
    for shard, num_proc in ((0, 1), (1, 2)):
        cfg = golden_cfg(corpus, out, "pretrain", ["data.num_shards=2", f"data.shard_index={shard}",
                                                    f"data.num_proc={num_proc}"])
        assert prepare(cfg, log=logs.append) == out
        assert not (out / MANIFEST).exists() and "run again without data.shard_index" in logs[-1]
        blocks = sorted(int(p.name[6:12]) for p in (out / WORK / "tokens-000").glob("block-*.json"))
        assert blocks == ([0, 2, 4] if shard == 0 else [0, 1, 2, 3, 4, 5])
    encoded = []
    monkeypatch.setattr(tok, "_encode", lambda batch: encoded.append(batch))  # the finishing run encodes nothing
    prepare(golden_cfg(corpus, out, "pretrain"), log=lambda _: None)
    assert encoded == [] and not (out / WORK).exists()
    assert content_fingerprint(out) == GOLDEN["pretrain"]


def test_invalid_shard_keys_are_refused(corpus, tmp_path, monkeypatch):
    from extend.config import ConfigError

    monkeypatch.chdir(corpus)
    for extra, message in ((["data.num_shards=0"], "data.num_shards=0 must be >= 1"),
                           (["data.num_shards=2", "data.shard_index=2"], r"data.shard_index=2 must be in 0..1")):
        with pytest.raises(ConfigError, match=message):
            prepare(golden_cfg(corpus, tmp_path / "ds", "pretrain", extra), log=lambda _: None)
        assert not (tmp_path / "ds").exists()


@pytest.mark.slow
def test_run_killed_while_tokenising_resumes_to_the_bytes_of_a_clean_run(tmp_path):
    """SIGKILL to data_prep and its tokenising workers once the first block of a multi-block source is done:
    the rerun keeps the finished blocks, redoes the rest, and ends with the bytes of an uninterrupted run."""
    rng = random.Random(7)
    docs = tmp_path / "docs.jsonl"
    with open(docs, "w") as f:  # ~30k short documents: 8 blocks of BLOCK_DOCS
        for _ in range(30000):
            f.write(json.dumps({"text": words(rng, rng.randint(3, 40))}) + "\n")
    overrides = ["data=jsonl", f"data.sources.corpus.path={docs}", "data.num_proc=2", "data.rows_per_shard=4",
                 "curriculum.tokens_per_step=512", "curriculum.stages=[{length: 64, steps: 16}]"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    work = killed / WORK / "tokens-000"
    proc = subprocess.Popen([sys.executable, "-m", "data_prep", *overrides, f"data.output_dir={killed}"], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not list(work.glob("block-*.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "data_prep ended before finishing a block"
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(p.name for p in work.glob("block-*.json"))
    assert done and not (work / "tokens.json").exists() and not (killed / MANIFEST).exists()

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        resume = OmegaConf.to_object(compose("config", overrides + [f"data.output_dir={killed}"]))
        fresh = OmegaConf.to_object(compose("config", overrides + [f"data.output_dir={clean}"]))
    prepare(resume, log=lambda _: None)
    prepare(fresh, log=lambda _: None)
    files = lambda folder: {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    assert files(killed) == files(clean) and len(files(clean)) == 2 + 32


def test_tokens_on_disk_read_as_slices_without_growing_resident_memory(tmp_path):
    """A stage draws pieces from all over a source: reading them must not leave the source in memory (a
    memory map did: the kernel maps the pages around every touched page)."""
    from bench.lib.training_harness import rss_gb
    from extend.data.tokenize import OnDisk

    ids = np.random.default_rng(0).integers(0, 50_000, 32 << 20, dtype=np.int32)  # 128 MB of token ids
    ids.tofile(tmp_path / "ids.bin")
    disk = OnDisk(tmp_path / "ids.bin", np.int32, len(ids))
    assert len(disk) == len(ids)
    np.testing.assert_array_equal(disk[5:9], ids[5:9])
    np.testing.assert_array_equal(disk[len(ids) - 3 :], ids[-3:])
    assert disk[7:7].shape == (0,) and disk[10:5].shape == (0,)
    np.testing.assert_array_equal(np.asarray(OnDisk(tmp_path / "ids.bin", np.int32, 10)), ids[:10])
    with pytest.raises(TypeError, match="contiguous slices"):
        disk[[1, 2]]
    starts = np.random.default_rng(1).integers(0, len(ids) - 256, 4000)
    before = rss_gb()
    total = sum(int(disk[a : a + 256].sum()) for a in starts)
    assert total == sum(int(ids[a : a + 256].sum()) for a in starts)
    assert rss_gb() - before < 16 / 1024  # 4,000 pieces of 1 KB: a memory map kept all 128 MB resident here


def test_a_token_file_shorter_than_its_record_is_an_error(tmp_path):
    from extend.data.tokenize import OnDisk

    np.arange(10, dtype=np.int32).tofile(tmp_path / "ids.bin")
    with pytest.raises(EOFError, match="ends before element 12 of 12"):
        OnDisk(tmp_path / "ids.bin", np.int32, 12)[8:12]
