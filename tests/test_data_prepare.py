"""`prepare` end to end on small generated data: exact stages, determinism, no-op reruns, verification,
bad input, and a run killed with SIGKILL then resumed."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from extend.config import CONF_DIR, REPO_ROOT, ConfigError, CurriculumConfig, DataConfig, ExtendConfig
from extend.data import DatasetMismatchError, verify_dataset
from extend.data.prepare import prepare
from extend.data.manifest import MANIFEST, SUMMARY, WORK, dataset_config, dataset_dir, default_dataset_dir
from extend.data.report import SOURCE_COLUMNS, STAGE_COLUMNS
from extend.models.tokenizer import load_tokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()
STAGES = "[{length: 128, steps: 4}, {length: 256, tokens: 4096}]"


@pytest.fixture(scope="module")
def cache(request):
    return str(request.config.cache.mkdir("extend-cache"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    (root / "text").mkdir()
    for i in range(30):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 400))]
        (root / "text" / f"doc{i:02d}.txt").write_text(" ".join(words))
    with open(root / "chats.jsonl", "w") as f:
        for i in range(40):
            turns = [{"role": r, "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))}
                     for r in ["user", "assistant"] * rng.randint(1, 3)]
            f.write(json.dumps({"messages": turns}) + "\n")
    with open(root / "docs.jsonl", "w") as f:
        for i in range(300):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 120)))}) + "\n")
    return root


def make_cfg(overrides, sources=None):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", list(overrides))
    if sources is not None:
        OmegaConf.set_struct(cfg, False)  # new source keys (on the command line they come from a YAML file)
        cfg = OmegaConf.merge(cfg, {"data": {"sources": sources}})
    return OmegaConf.to_object(cfg)


def small_cfg(corpus, out, cache, extra=(), sources=None):
    """The small test dataset; out=None leaves data.output_dir at its default (named after the data)."""
    overrides = ["~data.sources.stdlib", f"data.cache_dir={cache}", "data.packing=sft", "data.rows_per_shard=8",
                 "curriculum.tokens_per_step=1024", f"curriculum.stages={STAGES}", *extra]
    if out is not None:
        overrides.append(f"data.output_dir={out}")
    if sources is None:
        sources = {
            "text": {"type": "text", "path": str(corpus / "text" / "*.txt"), "weight": 2.0, "upsample": {200: 3.0}},
            "chats": {"type": "jsonl", "format": "chat", "path": str(corpus / "chats.jsonl")},
            "passkey": {"type": "synthetic", "task": "passkey", "lengths": [100, 120], "num_items": 2},
        }
    return make_cfg(overrides, sources)


def tree_bytes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(corpus, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "ds"
    cfg = small_cfg(corpus, out, cache)
    prepare(cfg, log=lambda _: None)
    return cfg, out


def test_dataset_has_exact_stages_and_loads_with_datasets(built, cache, tmp_path):
    cfg, out = built
    manifest = verify_dataset(out, cfg, load_tokenizer("tiny", cache))
    assert not (out / WORK).exists()
    stages = manifest["stages"]
    assert [(s["length"], s["steps"], s["rows_per_step"], s["rows"], s["tokens"]) for s in stages] == [
        (128, 4, 8, 32, 4096), (256, 4, 4, 16, 4096)]
    assert sum(s["rows"] for sh in stages for s in sh["shards"]) == 48
    assert abs(sum(s["sampling_proportion"] for s in manifest["sources"].values()) - 1) < 1e-9
    assert manifest["sources"]["text"]["sampling_proportion"] == 0.5
    for stage in stages:
        ds = datasets.load_dataset("parquet", data_files=str(out / stage["folder"] / "*.parquet"), split="train",
                                   cache_dir=str(tmp_path))
        assert len(ds) == stage["rows"]
        for row in ds:
            assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) == stage["length"]
            assert sum(row["seq_lens"]) == stage["length"]
        assert stage["efficiency"] >= 0.95
        assert sum(s["tokens"] for s in stage["sources"].values()) == stage["real_tokens"]


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(built, corpus, cache, tmp_path):
    _, out = built
    prepare(small_cfg(corpus, tmp_path / "again", cache), log=lambda _: None)
    assert tree_bytes(tmp_path / "again") == tree_bytes(out)
    prepare(small_cfg(corpus, tmp_path / "seed1", cache, ["data.seed=1"]), log=lambda _: None)
    shards = lambda f: {k: v for k, v in tree_bytes(f).items() if k.endswith(".parquet")}
    assert shards(tmp_path / "seed1").keys() == shards(out).keys() and shards(tmp_path / "seed1") != shards(out)


def test_rerun_is_a_no_op(built):
    cfg, out = built
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    logs = []
    prepare(cfg, log=logs.append)
    assert any("up to date" in line for line in logs)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps


def test_verify_refuses_another_config_or_a_modified_shard(built, corpus, cache, tmp_path):
    cfg, out = built
    with pytest.raises(DatasetMismatchError, match=r"differs in: data\.seed\)"):
        verify_dataset(out, small_cfg(corpus, out, cache, ["data.seed=7"]))
    with pytest.raises(DatasetMismatchError, match=r"curriculum\.stages"):
        verify_dataset(out, small_cfg(corpus, out, cache, ["curriculum.stages=[{length: 128, steps: 5}]"]))
    with pytest.raises(DatasetMismatchError, match="no manifest.json"):
        verify_dataset(tmp_path, cfg)
    copy = tmp_path / "copy"
    for rel, data in tree_bytes(out).items():
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes(data)
    shard = next(copy.rglob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-1] + b"\0")
    with pytest.raises(DatasetMismatchError, match="does not match its checksum"):
        verify_dataset(copy, cfg)


def test_a_different_config_does_not_overwrite_without_consent(corpus, cache, tmp_path):
    out = tmp_path / "ds"
    prepare(small_cfg(corpus, out, cache), log=lambda _: None)
    with pytest.raises(ConfigError, match=r"differs in: data\.seed\): leave data\.output_dir unset to use this config's "
                                         r"own folder data/tiny-chats\+passkey\+text-[0-9a-f]{10}, or set data\.overwrite=true"):
        prepare(small_cfg(corpus, out, cache, ["data.seed=3"]), log=lambda _: None)
    prepare(small_cfg(corpus, out, cache, ["data.seed=3", "data.overwrite=true"]), log=lambda _: None)
    assert json.loads((out / MANIFEST).read_text())["config"]["data"]["seed"] == 3


def _no_eos_tokenizer(folder: Path) -> str:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
                            unk_token="[UNK]").save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("case, message", [
    ("missing file", "no such file"),
    ("empty source", "holds no documents"),
    ("tokenizer without EOS", "has no EOS token"),
    ("unknown source type", "type='xml' is unknown"),
    ("length < 2", r"curriculum.stages\[0\].length=1 must be >= 2"),
    ("zero-weight mixture", "every weight is 0"),
    ("stage weights name an unknown source", r"curriculum.stages\[1\].weights names 'web'"),
    ("stage weights all zero", r"curriculum.stages\[0\].weights: every weight is 0"),
    ("distractors out of range", r"data.sources.pk.distractors=1.0 must be >= 0 and < 1"),
    ("distractors on another task", r"data.sources.pk.distractors is a passkey option"),
    ("distractor_keys out of range", r"data.sources.pk.distractor_keys=1.5 must be >= 0 and <= 1"),
    ("distractor_keys without distractors", r"data.sources.pk.distractor_keys=0.5 numbers the near misses.*distractors > 0"),
])
def test_bad_input_is_one_clear_error_and_nothing_is_marked_complete(case, message, corpus, cache, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    text = {"type": "text", "path": str(corpus / "text" / "*.txt")}
    extra, sources = [], {"text": text}
    if case == "missing file":
        sources = {"text": {**text, "path": str(tmp_path / "nope" / "*.txt")}}
    elif case == "empty source":
        sources = {"text": text, "blank": {"type": "text", "path": str(tmp_path / "empty.txt")}}
    elif case == "tokenizer without EOS":
        extra = [f"data.tokenizer={_no_eos_tokenizer(tmp_path / 'tok')}"]
    elif case == "unknown source type":
        sources = {"text": {**text, "type": "xml"}}
    elif case == "length < 2":
        extra = ["curriculum.stages=[{length: 1, steps: 1}]"]
    elif case == "zero-weight mixture":
        sources = {"text": {**text, "weight": 0.0}}
    elif case == "stage weights name an unknown source":
        extra = ["curriculum.stages=[{length: 128, steps: 1}, {length: 128, steps: 1, weights: {web: 1.0}}]"]
    elif case == "stage weights all zero":
        extra = ["curriculum.stages=[{length: 128, steps: 1, weights: {text: 0.0}}]"]
    elif case.startswith("distractors"):
        task, share = ("passkey", 1.0) if case.endswith("range") else ("copy", 0.3)
        sources = {"text": text, "pk": {"type": "synthetic", "task": task, "lengths": [120], "distractors": share}}
    elif case.startswith("distractor_keys"):
        options = {"distractors": 0.3, "distractor_keys": 1.5} if case.endswith("range") else {"distractor_keys": 0.5}
        sources = {"text": text, "pk": {"type": "synthetic", "task": "passkey", "lengths": [120], **options}}
    out = tmp_path / "ds"
    with pytest.raises(ConfigError, match=message) as err:
        prepare(small_cfg(corpus, out, cache, extra, sources), log=lambda _: None)
    assert len(err.value.problems) == 1, err.value.problems
    assert not (out / MANIFEST).exists() and not list(out.rglob("*.parquet"))


def test_offline_hub_dataset_names_the_dataset_and_how_to_fetch_it(corpus, cache, tmp_path, monkeypatch):
    # What HF_HUB_OFFLINE=1 sets at import time; the test never touches the network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    sources = {"web": {"type": "hf", "path": "no-such-org/no-such-dataset", "streaming": True}}
    with pytest.raises(ConfigError, match=r"no-such-org/no-such-dataset.*pre-download") as err:
        prepare(small_cfg(corpus, tmp_path / "ds", cache, [], sources), log=lambda _: None)
    assert "data.sources.web" in str(err.value)
    assert not (tmp_path / "ds").exists()


def test_stages_with_their_own_weights_draw_only_their_sources(corpus, cache, tmp_path):
    """A data schedule: stage 0 is text only, stage 1 passkey items only (a source weighted 0 at the top level
    but in a stage's mixture is still read); the manifest's shares follow the stages."""
    stages = ("[{length: 128, steps: 2, weights: {text: 1.0}}, "
              "{length: 128, steps: 2, weights: {passkey: 3.0, text: 0.0}}]")
    sources = {"text": {"type": "text", "path": str(corpus / "text" / "*.txt")},
               "passkey": {"type": "synthetic", "task": "passkey", "lengths": [100, 120], "num_items": 2, "weight": 0.0}}
    out = tmp_path / "ds"
    manifest = json.loads((prepare(small_cfg(corpus, out, cache, [f"curriculum.stages={stages}"], sources),
                                   log=lambda _: None) / MANIFEST).read_text())
    first, second = manifest["stages"]
    assert first["sources"]["text"]["tokens"] == first["real_tokens"] and first["sources"]["passkey"]["tokens"] == 0
    assert second["sources"]["passkey"]["tokens"] == second["real_tokens"] and second["sources"]["text"]["tokens"] == 0
    assert (first["sources"]["text"]["planned_share"], second["sources"]["passkey"]["planned_share"]) == (1.0, 1.0)
    assert manifest["sources"]["text"]["sampling_proportion"] == manifest["sources"]["passkey"]["sampling_proportion"] == 0.5
    rows = datasets.load_dataset("parquet", data_files=str(out / second["folder"] / "*.parquet"), split="train",
                                 cache_dir=str(tmp_path / "hf"))
    tokenizer = load_tokenizer("tiny", cache)
    assert all("pass key" in tokenizer.decode(row["input_ids"]) for row in rows)


@pytest.mark.slow
def test_killed_run_resumes_to_the_bytes_of_a_clean_run(corpus, cache, tmp_path):
    # Many one-row shards, so the kill lands between the first shard and the manifest.
    overrides = ["data=jsonl", f"data.sources.corpus.path={corpus / 'docs.jsonl'}", f"data.cache_dir={cache}",
                 "data.rows_per_shard=1", "curriculum.tokens_per_step=1024",
                 "curriculum.stages=[{length: 64, steps: 8}, {length: 128, steps: 8}]"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen([sys.executable, "-m", "data_prep", *overrides, f"data.output_dir={killed}"],
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(killed.glob("stage-*/part-*.parquet")):
            assert proc.poll() is None and time.monotonic() < deadline, "data_prep ended before writing a shard"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / MANIFEST).exists() and (killed / WORK).exists()
    written = len(list(killed.glob("stage-*/part-*.parquet")))
    assert 0 < written < 192

    prepare(make_cfg(overrides + [f"data.output_dir={killed}"]), log=lambda _: None)
    prepare(make_cfg(overrides + [f"data.output_dir={clean}"]), log=lambda _: None)
    assert tree_bytes(killed) == tree_bytes(clean)
    assert len(list(clean.glob("stage-*/part-*.parquet"))) == 192


def test_datasets_get_folders_named_after_their_data(corpus, cache, tmp_path, monkeypatch):
    """Without data.output_dir: different data -> different folders under data/, the same data -> the same
    folder (found again, whatever the run is called or how it trains); data.output_dir still wins."""
    monkeypatch.chdir(tmp_path)
    logs = []
    first = prepare(small_cfg(corpus, None, cache), log=logs.append)
    other = prepare(small_cfg(corpus, None, cache, ["data.seed=1"]), log=lambda _: None)
    assert first.parent == other.parent == Path("data") and first != other
    assert first.name.startswith("tiny-chats+passkey+text-") and len(first.name.rsplit("-", 1)[1]) == 10
    assert (first / MANIFEST).exists() and (other / MANIFEST).exists()
    # Training composes the same name: keys that do not decide the bytes leave it alone.
    again = small_cfg(corpus, None, cache, ["run_name=another", "train.learning_rate=0.5", "data.num_proc=2"])
    assert Path(again.data.output_dir) == first
    logs.clear()
    assert prepare(again, log=logs.append) == first and any("up to date" in line for line in logs)
    # A config built in Python (the interpolation never resolved) names the same folder.
    typed = ExtendConfig(data=DataConfig(**{**vars(again.data), "output_dir": DataConfig().output_dir}),
                         curriculum=CurriculumConfig(**vars(again.curriculum)))
    assert dataset_dir(typed) == first
    assert prepare(small_cfg(corpus, tmp_path / "mine", cache), log=lambda _: None) == tmp_path / "mine"


@pytest.mark.parametrize("recipe", ["tiny", "tiny_lofit", "giraffe_16k"])
def test_recipes_resolve_the_folder_their_data_names(recipe):
    cfg = make_cfg([f"recipe={recipe}"])
    assert cfg.data.output_dir == default_dataset_dir(dataset_config(cfg))
    assert cfg.data.output_dir != f"data/{cfg.run_name}"


def test_refusals_are_short_and_name_keys_not_values(corpus, cache, tmp_path):
    out = tmp_path / "ds"
    prepare(small_cfg(corpus, out, cache), log=lambda _: None)
    changed = ["data.seed=5", "data.add_bos=true", "data.rows_per_shard=4", "curriculum.tokens_per_step=2048",
               "data.packing=pretrain"]
    with pytest.raises(ConfigError) as err:
        prepare(small_cfg(corpus, out, cache, changed), log=lambda _: None)
    (line,) = err.value.problems
    assert len(line) < 400 and "\n" not in line, line
    assert "differs in: curriculum.tokens_per_step, data.add_bos, data.packing, data.rows_per_shard and 1 more" in line
    assert "2048" not in line and "data.overwrite=true" in line
    with pytest.raises(DatasetMismatchError) as err:
        verify_dataset(out, small_cfg(corpus, out, cache, changed))
    assert len(str(err.value)) < 400 and "and 1 more" in str(err.value)


def test_summary_is_saved_with_a_legend_of_every_column(corpus, cache, tmp_path):
    logs = []
    out = prepare(small_cfg(corpus, tmp_path / "ds", cache), log=logs.append)
    saved = (out / SUMMARY).read_text()
    assert saved.rstrip("\n") in logs  # what is printed is what is saved
    for column, meaning in {**STAGE_COLUMNS, **SOURCE_COLUMNS}.items():
        assert re.search(rf"\| +{re.escape(column)} +\|", saved) and f"- **{column}**: {meaning}" in saved
    assert "| stage-00-L128 |" in saved and "| chats " in saved
