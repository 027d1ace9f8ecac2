"""Bad input, tried as a new user would, across the three programs: each case exits with code 2 after ONE
short line naming the key and the fix, with no traceback, and leaves no file or folder anywhere.

Most cases run in this process through the same entry function the command line uses (a process costs
~9 s to start); a few run as real commands. The run itself is replaced by a function that fails the test,
so a config that wrongly validates cannot start training.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import extend.encoders.__main__ as encode_main
import extend.train as train_module
import extend.vision.__main__ as vision_main
from extend.cli import run_cli
from extend.config import REPO_ROOT
from extend.validation import validate_encoder, validate_vision

TINY = ["recipe=tiny"]
MINILM = ["recipe=minilm_2k"]
INTERNVL = ["recipe=internvl_tiny_v2pe"]

# (program, overrides, what the one line must contain: the key, and a word of the fix)
CASES = [
    ("train", [*TINY, "+rope.nonexistent_key=1"], ("rope.nonexistent_key", "spelling")),
    ("train", [*TINY, "+train.nonexistent_key=1"], ("train.nonexistent_key", "spelling")),
    ("train", [*TINY, "train.learning_rat=1e-4"], ("train.learning_rat", "spelling")),
    ("train", [*TINY, "rope.original_max_position_embeddings=0"], ("rope.original_max_position_embeddings=0", "at least 2")),
    ("train", [*TINY, "train.max_steps=-5"], ("train.max_steps=-5", ">= 1")),
    ("train", [*TINY, "train.micro_batch_size=0"], ("train.micro_batch_size=0", ">= 1")),
    ("train", [*TINY, "train.mixed_precision=fp8"], ("train.mixed_precision='fp8'", "bf16")),
    ("train", [*TINY, "train.max_steps=abc"], ("train.max_steps", "Integer")),
    ("train", [*TINY, "train.lr_schedule=cosin"], ("train.lr_schedule='cosin'", "cosine")),
    ("train", [*TINY, "train.tracker=nope"], ("train.tracker='nope'", "tensorboard")),
    ("train", [*TINY, "train.loss=fused"], ("train.loss='fused'", "chunked")),
    ("train", [*TINY, "train.loss=liger"], ("train.loss=liger", "cuda")),
    ("train", [*TINY, "output_dir={file}/run"], ("output_dir=", "another output_dir")),
    ("train", [*TINY, "output_dir=/proc/extend-validation-test"], ("output_dir=", "another output_dir")),
    ("train", [*TINY, "rope.type=spiral"], ("rope.type='spiral'", "yarn")),
    ("train", [*TINY, "rope.factor=0.5"], ("rope.factor=0.5", ">= 1")),
    ("train", [*TINY, "rope=yarnn"], ("rope=yarnn", "yarn")),
    ("train", [*TINY, "rope=clex", "rope.factor=8", "rope.t_max=1"], ("rope.t_max=1", "> 1")),
    ("train", [*TINY, "rope=clex", "rope.factor=8", "rope.ode_step=0"], ("rope.ode_step=0", "(0, 1]")),
    ("train", [*TINY, "rope=clex", "rope.factor=8", "rope.ode_hidden_factor=0"], ("rope.ode_hidden_factor=0", ">= 1")),
    ("train", [*TINY, "rope=lm_infinite"], ("rope.type=lm_infinite", "extend.eval")),
    ("train", [*TINY, "rope=lm_infinite", "rope.global_tokens=-1"], ("rope.global_tokens=-1", ">= 0")),
    ("train", [*TINY, "rope=lm_infinite", "rope.local_window=0"], ("rope.local_window=0", "> 0")),
    ("train", [*TINY, "rope=lm_infinite", "rope.distance_limit=4096"], ("rope.distance_limit=4096", "at most 128")),
    ("train", [*TINY, "rope=self_extend"], ("rope.type=self_extend", "extend.eval")),
    ("train", [*TINY, "rope=self_extend", "rope.group_size=0"], ("rope.group_size=0", ">= 1")),
    ("train", [*TINY, "rope=self_extend", "rope.neighbor_window=128"], ("rope.neighbor_window=128", "below the original")),
    ("train", [*TINY, "rope=self_extend", "rope.group_size=2"], ("rope.group_size=2", "raise rope.group_size")),
    ("train", [*TINY, "adapter=lora", "adapter.target_modules=[qq_proj]"], ("adapter.target_modules", "q_proj")),
    ("train", [*TINY, "curriculum.tokens_per_step=4608"], ("curriculum.stages[1].length=1024", "tokens_per_step")),
    ("train", [*TINY, "curriculum.stages.1.span=1024"], ("curriculum.stages[1].span=1024", "null")),
    ("train", [*TINY, "curriculum.pose_chunks=0"], ("curriculum.pose_chunks=0", ">= 1")),
    ("train", ["recipe=tiny_pose", "curriculum.pose_temperature=row"], ("curriculum.pose_temperature='row'", "window")),
    ("train", ["recipe=tiny_pose", "rope=linear", "rope.factor=16"], ("curriculum.pose_temperature=window", "rope=yarn")),
    ("train", ["recipe=tiny_pose", "rope.attention_factor=1.2"], ("rope.attention_factor=1.2", "remove one")),
    ("train", [*TINY, "curriculum.pose_temperature=window"], ("curriculum.pose_temperature=window", "add spans")),
    ("train", ["recipe=tiny_pose", "data.sources.passkey.distractors=1.5"], ("data.sources.passkey.distractors=1.5", "< 1")),
    ("train", [*TINY, "eval.lengths=[1]"], ("eval.lengths", ">= 2")),
    ("train", [*TINY, "eval.device=cuda:99"], ("eval.device=cuda:99", "eval.device=")),
    ("train", [*TINY, "eval.device=gpu"], ("eval.device='gpu'", "cuda:N")),
    ("train", [*TINY, "accelerate.peer_timeout=-1"], ("accelerate.peer_timeout=-1", ">= 3 seconds")),
    ("train", [*TINY, "publish.repo_id=not a repo", "publish.dry_run=true"], ("publish.repo_id", "ORG/NAME")),
    ("train", [*TINY, "accelerate.sequence_parallel_size=0"], ("accelerate.sequence_parallel_size=0", ">= 1")),
    ("train", [*TINY, "accelerate.sequence_parallel_size=2"], ("accelerate.sequence_parallel_size=2", "accelerate=zero2 or zero3")),
    ("train", [*TINY, "data.packing=zip"], ("data.packing='zip'", "pretrain")),
    ("train", [*TINY, "data.num_shards=2", "data.shard_index=5"], ("data.shard_index=5", "0..1")),
    ("train", [*TINY, "seed=-1"], ("seed=-1", ">= 0")),
    ("train", [*TINY, "train.attention=s3"], ("train.attention='s3'", "s2")),
    ("train", [*TINY, "train.attention=anchr"], ("train.attention='anchr'", "anchor")),
    # AnchorAttention is plain softmax attention: it cannot replace entropy-aware ABF's query-scaling kernel.
    ("train", [*TINY, "rope=entropy_abf", "rope.factor=8", "train.attention=anchor"],
     ("train.attention=anchor", "train.attention=full")),
    # Positions 0..T-1 across the row would drop PoSE's skipped positions.
    ("train", [*TINY, "curriculum.stages.0.span=1024", "train.attention=anchor"],
     ("curriculum.stages[0].span=1024", "train.attention=full")),
    ("train", [*TINY, "curriculum.stages.0.span=1024", "train.attention=cross_document"],
     ("curriculum.stages[0].span=1024", "train.attention=full")),
    # S²-Attn at 1/1024 of the row: the 512-token stage does not split into 1,024 groups (the 1,024 one does).
    ("train", [*TINY, "train.attention=s2", "train.s2_group_fraction=0.0009765625"],
     ("curriculum.stages[0].length=512", "multiple of 1024")),
    ("train", ["recipe=no_such_recipe"], ("recipe=no_such_recipe", "tiny")),
    ("train", MINILM, ("recipe=minilm_2k", "extend encode recipe=minilm_2k")),
    ("encode", [*MINILM, "encoder.target_length=1000"], ("encoder.target_length", "multiple")),
    ("encode", [*MINILM, "rope.factor=4"], ("rope.factor=4", "encoder.target_length")),
    ("encode", [*MINILM, "+encoder.nonexistent=1"], ("encoder.nonexistent", "spelling")),
    ("encode", TINY, ("recipe=tiny", "extend train recipe=tiny")),
    ("vision", [*INTERNVL, "rope.type=none"], ("vision.target_length=256", "rope.type=yarn")),
    ("vision", [*INTERNVL, "vision.v2pe_delta=0"], ("vision.v2pe_delta=0.0", "> 0")),
    ("vision", [*INTERNVL, "rope.factor=2"], ("rope.factor=2", "vision.target_length")),
    ("vision", TINY, ("recipe=tiny", "extend train recipe=tiny")),
]


def snapshot(*roots: Path) -> set[str]:
    """Every file and folder under `roots` (the roots themselves included)."""
    found = set()
    for root in roots:
        if root.exists():
            found.add(str(root))
            found.update(str(p) for p in root.rglob("*"))
    return found


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working folder, HOME and cache of their own; returns the folders whose contents must not change."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "a_file").write_text("not a folder\n")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    # matplotlib (imported by the evaluation's checks) makes its font cache on first import: not ours.
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    for key in ("LOCAL_RANK", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(key, raising=False)
    watched = (work, home, REPO_ROOT / "outputs", REPO_ROOT / "data", REPO_ROOT / "conf", REPO_ROOT / "recipes")
    return work, watched


def must_not_run(cfg) -> None:
    raise AssertionError("the config validated and the run started")


def entry(program: str, argv: list[str]) -> None:
    """The function the command line calls for `program`, with the run itself replaced."""
    if program == "train":
        return run_cli(must_not_run, job_name="train", argv=argv, program="decoder", validate=train_module.validate_training)
    if program == "encode":
        return run_cli(must_not_run, job_name="encoders", argv=argv, program="encoder", validate=validate_encoder)
    return run_cli(must_not_run, job_name="vision", argv=argv, program="vision", validate=validate_vision)


def assert_one_line(stderr: str, wanted: tuple[str, ...]) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    line = lines[0]
    assert line.startswith("error: ") and len(line) <= 400, line
    assert "Traceback" not in stderr
    for part in wanted:
        assert part in line, f"{part!r} not in {line!r}"


@pytest.mark.parametrize("program, overrides, wanted", CASES, ids=[f"{c[0]}:{c[1][-1]}" for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(program, overrides, wanted, sandbox, monkeypatch):
    work, watched = sandbox
    monkeypatch.setattr(train_module, "run_validated", must_not_run)
    cache = ["model.cache_dir=" + str(work.parent / "cache"), "data.cache_dir=" + str(work.parent / "cache")]
    argv = [o.replace("{file}", str(work / "a_file")) for o in overrides]
    if program == "train" and not any(o.startswith("recipe=no_such") or o == "recipe=minilm_2k" for o in argv):
        argv += cache
    before = snapshot(*watched, work.parent / "cache")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exit_:
        entry(program, argv)
    assert exit_.value.code == 2, err.getvalue()
    assert_one_line(err.getvalue(), wanted)
    assert snapshot(*watched, work.parent / "cache") == before


def test_check_accepts_a_good_config_and_writes_nothing(sandbox, capsys):
    work, watched = sandbox
    before = snapshot(*watched)
    with pytest.raises(SystemExit) as exit_:
        train_module.main(["--check", *TINY, f"data.cache_dir={work}/cache", f"model.cache_dir={work}/cache"])
    assert exit_.value.code == 0
    out = capsys.readouterr()
    assert out.out.strip().startswith("ok: ") and out.err == ""
    assert snapshot(*watched) == before


def test_check_with_a_process_count_sees_the_split(sandbox, capsys):
    """--processes N: the count a launcher is about to start; 4 rows per step do not split over 8 processes."""
    work, _ = sandbox
    with pytest.raises(SystemExit) as exit_:
        train_module.main(["--check", "--processes", "8", *TINY, f"data.cache_dir={work}/cache", f"model.cache_dir={work}/cache"])
    assert exit_.value.code == 2
    assert "on 8 process(es)" in capsys.readouterr().err


def run_command(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT),
           "MPLCONFIGDIR": str(home.parent / "mpl")}  # matplotlib's font cache, made on first import
    env.pop("LOCAL_RANK", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, wanted", [
    ([str(REPO_ROOT / "extend" / "train.py"), *TINY, "train.max_steps=-5"], ("train.max_steps=-5", ">= 1")),
    (["-m", "extend.vision", *TINY], ("recipe=tiny", "extend train recipe=tiny")),
], ids=["train.py", "vision"])
@pytest.mark.slow  # starts Python processes
def test_real_commands_refuse_in_one_line(args, wanted, sandbox):
    work, watched = sandbox
    before = snapshot(*watched)
    proc = run_command(args, work, Path(os.environ["HOME"]))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert_one_line(proc.stderr, wanted)
    assert snapshot(*watched) == before


@pytest.mark.slow  # starts Python processes
def test_real_check_of_a_good_recipe_exits_0(sandbox):
    work, watched = sandbox
    before = snapshot(*watched)
    proc = run_command(["-m", "extend.train", "--check", *TINY, f"data.cache_dir={work}/cache",
                        f"model.cache_dir={work}/cache"], work, Path(os.environ["HOME"]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("ok: ")
    assert snapshot(*watched) == before


def test_a_misspelt_key_in_a_recipe_names_the_file(sandbox, tmp_path, capsys):
    recipes = tmp_path / "extra" / "recipe"
    recipes.mkdir(parents=True)
    (recipes / "typo.yaml").write_text("# @package _global_\nrope:\n  factorr: 2\n")
    with pytest.raises(SystemExit) as exit_:
        train_module.main(["--check", f"hydra.searchpath=[file://{tmp_path / 'extra'}]", "recipe=typo"])
    assert exit_.value.code == 2
    assert_one_line(capsys.readouterr().err, ("recipe/typo.yaml", "rope.factorr", "spelling"))
