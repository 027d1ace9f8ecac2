"""launch.sh: the exact torchrun command per node, and clear errors for settings that cannot work."""

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
        (["--slurm"], {}, "--slurm needs a SLURM allocation"),
        (["--script", "nope.py"], {}, "training script nope.py not found"),
        (["--bogus"], {}, "unknown option --bogus"),
    ],
)
def test_inconsistent_settings_are_refused(args, env, message):
    out = launch(*args, "--dry-run", **env)
    assert out.returncode == 2
    assert message in out.stderr
    assert out.stdout == ""
