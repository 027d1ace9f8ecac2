"""Two processes on CPU (gloo) under DDP, ZeRO-2 and ZeRO-3: each interrupted by SIGTERM (as a cluster
preempts a job), resumed, and ending on the loss trajectory of an uninterrupted run; resuming on another
process count does what the docs say; two "nodes" on 127.0.0.1 train and checkpoint together, and when one
of them dies or hangs the other stops within a minute naming it.

All runs start from the same saved base, so every strategy computes the same numbers (ZeRO-3 would
initialise a random base differently while partitioning it)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from extend.config import ModelConfig
from extend.models.loading import build_random, load_base_config
from extend.models.tokenizer import load_tokenizer
from extend.train import train
from extend.training.nodes import MARKER

from training_fixtures import BASE_OVERRIDES, compose_typed

pytestmark = pytest.mark.slow  # two-process launches, each ~10 s of imports per process before any step

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# 12 steps, so a SIGTERM sent after step 2 always arrives before the end.
STAGES = "curriculum.stages=[{length: 64, steps: 6}, {length: 128, steps: 6}]"
# The lost-node runs must still be training when a node is lost: 12 steps take under a second once both nodes
# are up, less than the test's polling takes to notice step 2.
LONG_STAGES = "curriculum.stages=[{length: 64, steps: 300}]"


def prepared(tmp_path_factory, stages: str) -> Path:
    from extend.data.prepare import prepare

    folder = tmp_path_factory.mktemp("data") / "tiny"
    prepare(compose_typed(stages, f"data.output_dir={folder}"), log=lambda _: None)
    return folder


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return prepared(tmp_path_factory, STAGES)


@pytest.fixture(scope="module")
def long_dataset_dir(tmp_path_factory) -> Path:
    return prepared(tmp_path_factory, LONG_STAGES)


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base")
    config = load_base_config(ModelConfig(name_or_path="tiny-llama"), tokenizer=load_tokenizer("tiny"))
    build_random(config, seed=0).save_pretrained(folder)
    return folder


def overrides(base: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [*BASE_OVERRIDES, "model=hf", f"model.name_or_path={base}", STAGES, f"data.output_dir={data}",
            f"output_dir={output}", "train.checkpoint_every=4", *extra]


def launch(processes: int, args: list[str], *launcher: str) -> list[str]:
    return ["bash", "launch.sh", "--processes", str(processes), *launcher, "--", *args]


def losses(run: Path) -> list[float]:
    return json.loads((run / "final" / "run_card.json").read_text())["losses"]


def run_to_end(cmd: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def interrupt_with_sigterm(cmd: list[str], after_step: int) -> str:
    """Run `cmd`, send its launcher SIGTERM once step `after_step` is logged; returns the output."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if f"step {after_step:>6}/" in line:
            proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    return "".join(lines)


@pytest.fixture(scope="module")
def reference(saved_base, dataset_dir, tmp_path_factory) -> list[float]:
    """The uninterrupted trajectory, one process, in this process."""
    out = tmp_path_factory.mktemp("reference")
    return losses(train(compose_typed(*overrides(saved_base, dataset_dir, out)[len(BASE_OVERRIDES):])).parent)


# LoFiT across its two stages (the stop lands in stage 1, the resume crosses into stage 2).
LOFIT = ["adapter=lofit", "adapter.lofit.heads=3", "adapter.lofit.select_steps=4"]


@pytest.fixture(scope="module")
def lofit_reference(saved_base, dataset_dir, tmp_path_factory) -> list[float]:
    out = tmp_path_factory.mktemp("lofit_reference")
    return losses(train(compose_typed(*overrides(saved_base, dataset_dir, out, *LOFIT)[len(BASE_OVERRIDES):])).parent)


def assert_same_trajectory(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want)
    # Two processes sum the loss in another order than one: equal to float32 rounding.
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6)


def stopped_with_checkpoint(output: str, run: Path) -> int:
    assert "stopped at step" in output, output[-3000:]
    assert not (run / "final").exists()
    steps = [int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir() if not p.name.endswith(".tmp")]
    stopped = int(output.split("stopped at step ")[1].split("/")[0])
    assert stopped in steps
    return stopped


def test_ddp_resumes_on_another_process_count(saved_base, dataset_dir, tmp_path, reference):
    run = tmp_path / "ddp"
    args = overrides(saved_base, dataset_dir, run)
    stopped_with_checkpoint(interrupt_with_sigterm(launch(2, args), after_step=2), run)
    # A ddp checkpoint holds only what trains, the same for any process count: continue on one process.
    out = run_to_end([sys.executable, "extend/train.py", *args])
    assert "resumed from" in out.stdout + out.stderr
    assert_same_trajectory(losses(run), reference)


def test_zero2_lofit_resumes_on_the_same_count_and_refuses_another(saved_base, dataset_dir, tmp_path, lofit_reference):
    run = tmp_path / "zero2"
    args = overrides(saved_base, dataset_dir, run, "accelerate=zero2", *LOFIT)
    stopped = stopped_with_checkpoint(interrupt_with_sigterm(launch(2, args), after_step=2), run)
    assert (run / "checkpoints" / f"step-{stopped:06d}" / "deepspeed").is_dir()

    refused = subprocess.run(launch(1, args), cwd=REPO, env=ENV, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "holds DeepSpeed shards of accelerate=zero2 on 2 processes" in refused.stdout + refused.stderr
    assert not (run / "final").exists()

    run_to_end(launch(2, args))
    assert_same_trajectory(losses(run), lofit_reference)
    card = json.loads((run / "final" / "run_card.json").read_text())
    assert len(card["adapter"]["selected_heads"]) == 3


def test_zero3_resumes_and_exports_the_gathered_weights(saved_base, dataset_dir, tmp_path, reference):
    run = tmp_path / "zero3"
    args = overrides(saved_base, dataset_dir, run, "accelerate=zero3")
    stopped_with_checkpoint(interrupt_with_sigterm(launch(2, args), after_step=2), run)
    run_to_end(launch(2, args))
    assert_same_trajectory(losses(run), reference)
    card = json.loads((run / "final" / "run_card.json").read_text())
    assert card["processes"] == 2 and card["accelerate"]["name"] == "zero3"
    # The merged export was gathered from the shards: it loads whole in a fresh process.
    check = subprocess.run(
        [sys.executable, "-c", "import sys; from transformers import AutoModelForCausalLM as M; "
         "m = M.from_pretrained(sys.argv[1]); print(sum(p.numel() for p in m.parameters()))", str(run / "final")],
        capture_output=True, text=True, timeout=300,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    assert int(check.stdout.split()[-1]) > 500_000
    # Gathered one parameter at a time, the export is bit for bit the base with the trained weights of the
    # last checkpoint (step 12, the last step) folded in, as gathering the whole state dict first gave.
    assert_export_is_checkpoint_merged(run, args, "step-000012")
    # The engine's communication buckets were sized from the model (accelerate filled extend's "auto").
    states = next((run / "checkpoints" / "step-000012" / "deepspeed").rglob("zero_pp_rank_0_mp_rank_00_model_states.pt"))
    # DeepSpeed's own model-states file (written by this test's run) holds objects beyond tensors, as DeepSpeed
    # itself loads it.
    zero = torch.load(states, map_location="cpu", weights_only=False)["ds_config"]["zero_optimization"]
    hidden = json.loads((saved_base / "config.json").read_text())["hidden_size"]
    assert zero["reduce_bucket_size"] == hidden * hidden
    assert zero["stage3_param_persistence_threshold"] == 10 * hidden


def assert_export_is_checkpoint_merged(run: Path, args: list[str], step: str) -> None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    from extend.adapters import build_adapter, load_trainable_state
    from extend.models import load_base_model
    from extend.rope import apply_rope, resolve_rope

    cfg = compose_typed(*args[len(BASE_OVERRIDES):])
    state = get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints" / step / "deepspeed"))
    adapter = build_adapter(cfg.adapter)
    base_config = load_base_config(cfg.model, tokenizer=load_tokenizer(cfg.data.tokenizer, cfg.data.cache_dir))
    model = adapter.attach(load_base_model(cfg.model, apply_rope(base_config, resolve_rope(cfg.rope, base_config))))
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    load_trainable_state(model, {name: state[f"model.{name}"] for name in trained})
    expected = adapter.merged(model).state_dict()
    exported = {}
    for shard in sorted((run / "final").glob("*.safetensors")):
        exported.update(load_file(shard))
    assert set(exported) <= set(expected) and len(exported) > 10
    different = [k for k in exported if exported[k].dtype != expected[k].dtype or not exported[k].equal(expected[k])]
    assert different == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One "node" of a two-node run on this machine: launch.sh in a session of its own, its output read by a
    thread (so nothing blocks on a full pipe), and every process under it killed by `kill()`."""

    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def processes(self) -> list[psutil.Process]:
        """The launcher and its workers (torchrun starts each worker in a session of its own)."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def signal(self, sig: int) -> None:
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)  # SIGKILL also ends a stopped process
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def two_nodes(args: list[str]):
    """Nodes 0 and 1 of one run on 127.0.0.1; whatever happens, every process of both is killed on the way out,
    so a test that fails (or a run that hangs) cannot leave processes behind or hold up CI."""
    nodes = ["--nodes", "2", "--main-addr", "127.0.0.1", "--main-port", str(free_port())]
    started = [Node(launch(2, args, *nodes, "--node-rank", str(rank))) for rank in (0, 1)]
    try:
        yield started
    finally:
        for node in started:
            node.kill()


def wait(node: Node, seconds: float) -> int | None:
    """The node's exit status, or None when it is still running after `seconds`."""
    try:
        return node.proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def test_two_nodes_on_one_machine(saved_base, dataset_dir, tmp_path, reference):
    run = tmp_path / "two_nodes"
    with two_nodes(overrides(saved_base, dataset_dir, run)) as nodes:
        codes = [wait(node, 600) for node in nodes]
        outputs = [node.output for node in nodes]
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000008", "step-000012"]
    assert json.loads((run / "final" / "run_card.json").read_text())["processes"] == 2
    assert_same_trajectory(losses(run), reference)
    assert not (run / MARKER).exists()  # the shared-folder check cleaned up after itself


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["node-dies", "node-hangs"])
def test_a_lost_node_stops_the_other_within_a_minute_naming_it(saved_base, long_dataset_dir, tmp_path, how):
    """Node 1 dies (its sockets close) or hangs (nothing closes, as when a machine drops off the network):
    node 0 must stop on its own, well before the process group's 30-minute timeout, and say who is gone.
    A 10 s peer timeout (the default is 30 s) keeps the test short; the watch is the same."""
    run = tmp_path / "lost"
    args = overrides(saved_base, long_dataset_dir, run, LONG_STAGES, "train.checkpoint_every=0",
                     "accelerate.peer_timeout=10")
    with two_nodes(args) as (node0, node1):
        deadline = time.monotonic() + 400
        while "step      2/" not in node0.output and time.monotonic() < deadline and node0.proc.poll() is None:
            time.sleep(0.5)
        assert "step      2/" in node0.output, node0.output[-3000:]
        node1.signal(how)
        lost_at = time.monotonic()
        code = wait(node0, 90)
        took = time.monotonic() - lost_at
        output = node0.output
    assert code is not None, f"node 0 still running 90 s after node 1 was lost:\n{output[-3000:]}"
    assert "step    300/" not in output, "the run ended before node 1 was lost; the test proves nothing"
    assert code != 0 and took < 60, (code, took, output[-3000:])
    assert f"lost peer: rank 1 (host {socket.gethostname()}, node 1)" in output, output[-3000:]
    print(f"node 0 stopped {took:.1f} s after node 1 was lost ({signal.Signals(how).name}), exit status {code}")
