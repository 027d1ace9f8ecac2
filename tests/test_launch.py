"""launch.sh: the exact torchrun command per node, clear errors for settings that cannot work, and a config
checked once before any process starts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = "python3 -m torch.distributed.run"
STAGES = "curriculum.stages=[{length: 64, steps: 3}]"
STAGES_QUOTED = r"curriculum.stages=\[\{length:\ 64\,\ steps:\ 3\}\]"


def launch(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "MAIN_", "NNODES", "NODE_RANK"))}
    return subprocess.run(["bash", "launch.sh", *args], cwd=REPO, env={**clean, **env}, capture_output=True, text=True)


def test_single_node():
    out = launch("--processes", "2", "--dry-run", "--", "recipe=tiny", STAGES)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{RUN} --nproc-per-node 2 --standalone --nnodes 1 extend/train.py recipe=tiny {STAGES_QUOTED}\n"


def test_multi_node_prints_every_nodes_command():
    out = launch("--nodes", "2", "--node-rank", "1", "--processes", "8", "--main-addr", "10.0.0.1", "--main-port", "29400",
                 "--dry-run", "recipe=giraffe_16k", "accelerate=zero3")
    assert out.returncode == 0, out.stderr
    node = f"{RUN} --nproc-per-node 4 --nnodes 2 --node-rank {{}} --master-addr 10.0.0.1 --master-port 29400 extend/train.py recipe=giraffe_16k accelerate=zero3"
    assert out.stdout.splitlines() == [f"node 0: {node.format(0)}", f"node 1: {node.format(1)}"]


def test_multi_node_reads_the_environment():
    out = launch("--processes", "2", "--dry-run", "recipe=tiny", NNODES="2", NODE_RANK="1", MASTER_ADDR="host0", MASTER_PORT="1234")
    assert out.returncode == 0, out.stderr
    assert "node 1: " + f"{RUN} --nproc-per-node 1 --nnodes 2 --node-rank 1 --master-addr host0 --master-port 1234" in out.stdout


def test_slurm_ranks_are_evaluated_on_each_node(tmp_path):
    # A stand-in scontrol that expands the node list as SLURM's does.
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\nprintf 'gpu-a17\\ngpu-a18\\n'\n")
    fake.chmod(0o755)
    out = launch("--slurm", "--processes", "16", "--dry-run", "recipe=giraffe_16k",
                 SLURM_JOB_ID="4242", SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu-a[17-18]", PATH=f"{tmp_path}:{os.environ['PATH']}")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        "srun --nodes 2 --ntasks-per-node 1 --kill-on-bad-exit=1 bash -c "
        f"'exec {RUN} --nproc-per-node 8 --nnodes 2 --node-rank $SLURM_NODEID --rdzv-backend c10d "
        "--rdzv-endpoint gpu-a17:29500 --rdzv-id $SLURM_JOB_ID extend/train.py recipe=giraffe_16k'\n"
    )


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--nodes", "2", "--processes", "3", "--main-addr", "h"], {}, "--processes 3 does not divide evenly over --nodes 2"),
        (["--nodes", "2", "--processes", "4"], {}, "--nodes 2 needs node 0's address"),
        (["--nodes", "2", "--node-rank", "2", "--processes", "4", "--main-addr", "h"], {}, "--node-rank 2 is out of range"),
        (["--processes", "0"], {}, "--processes must be a positive whole number"),
        (["--main-port", "99999"], {}, "--main-port must be a port number"),
        (["--script", "nope.py"], {}, "training script nope.py not found"),
        (["--bogus"], {}, "unknown option --bogus"),
    ],
)
def test_inconsistent_settings_are_refused(args, env, message):
    out = launch(*args, "--dry-run", **env)
    assert out.returncode == 2
    assert message in out.stderr
    assert out.stdout == ""


def test_slurm_dry_run_from_a_login_node_shows_each_nodes_command():
    # No SLURM variables: what each node will run, with what the allocation decides as placeholders.
    out = launch("--slurm", "--nodes", "4", "--processes", "32", "--dry-run", "recipe=giraffe_16k")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        "srun --nodes 4 --ntasks-per-node 1 --kill-on-bad-exit=1 bash -c "
        f"'exec {RUN} --nproc-per-node 8 --nnodes 4 --node-rank $SLURM_NODEID --rdzv-backend c10d "
        "--rdzv-endpoint <node-0-host>:29500 --rdzv-id $SLURM_JOB_ID extend/train.py recipe=giraffe_16k'\n"
    )
    assert "outside a SLURM allocation" in out.stderr and "--main-addr" in out.stderr
    bare = launch("--slurm", "--dry-run", "recipe=tiny")
    assert bare.returncode == 0, bare.stderr
    assert "--nodes <nodes>" in bare.stdout and "--nproc-per-node <GPUs per node>" in bare.stdout
    assert "--nodes, --main-addr, --processes fill them in" in bare.stderr


def test_slurm_without_an_allocation_runs_nothing(tmp_path):
    python, calls = stand_in_python(tmp_path)
    out = launch("--slurm", "recipe=tiny", PYTHON=str(python))
    assert out.returncode == 2 and "--slurm needs a SLURM allocation" in out.stderr
    assert not calls.exists()


def stand_in_python(tmp_path: Path) -> tuple[Path, Path]:
    """An interpreter that logs its arguments; `--check` fails with one problem line when FAIL_CHECK is set."""
    calls = tmp_path / "calls"
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'case " $* " in *" --check "*)\n'
        '  [ -n "$FAIL_CHECK" ] && { echo "error: train.lr_schedule=\'bogus\' is unknown; choose one of constant" >&2; exit 2; }\n'
        "  exit 0 ;;\n"
        "esac\n"
        "echo torchrun started\n")
    python.chmod(0o755)
    return python, calls


def test_a_bad_config_stops_before_any_process_starts(tmp_path):
    python, calls = stand_in_python(tmp_path)
    out = launch("--processes", "2", "recipe=tiny", "train.lr_schedule=bogus", PYTHON=str(python), FAIL_CHECK="1")
    assert out.returncode == 2
    assert out.stderr == "error: train.lr_schedule='bogus' is unknown; choose one of constant\n"  # once
    assert out.stdout == ""
    assert calls.read_text().splitlines() == ["-m extend.train --check --processes 2 recipe=tiny train.lr_schedule=bogus"]


def test_a_good_config_is_checked_then_launched(tmp_path):
    python, calls = stand_in_python(tmp_path)
    out = launch("--processes", "2", "--", "recipe=tiny", STAGES, PYTHON=str(python))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "torchrun started\n"
    assert calls.read_text().splitlines() == [
        f"-m extend.train --check --processes 2 recipe=tiny {STAGES}",
        f"-m torch.distributed.run --nproc-per-node 2 --standalone --nnodes 1 extend/train.py recipe=tiny {STAGES}",
    ]


def test_another_script_is_not_checked(tmp_path):
    python, calls = stand_in_python(tmp_path)
    script = tmp_path / "mine.py"
    script.write_text("")
    out = launch("--processes", "1", "--script", str(script), "x=1", PYTHON=str(python), FAIL_CHECK="1")
    assert out.returncode == 0, out.stderr
    assert calls.read_text().splitlines() == [f"-m torch.distributed.run --nproc-per-node 1 --standalone --nnodes 1 {script} x=1"]


@pytest.mark.slow  # starts Python processes
def test_the_real_check_prints_a_config_error_once(tmp_path):
    # extend.train --check: compose and validate, write nothing, one line per problem, exit 2.
    out = launch("--processes", "2", "recipe=tiny", "train.lr_schedule=bogus", f"output_dir={tmp_path}/run",
                 f"data.output_dir={tmp_path}/data")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("train.lr_schedule") == 1, out.stderr
    assert "Traceback" not in out.stderr and "ChildFailedError" not in out.stderr
    assert len(out.stderr.splitlines()) <= 2 and out.stdout == ""
    assert not any(tmp_path.iterdir()), "the check writes nothing"
