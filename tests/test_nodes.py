"""A run over several nodes (extend/training/nodes.py): the shared-folder check's verdict, and the heartbeat
that names a lost peer, run here with two watchers in one process on a real TCPStore (the processes and
nodes are stand-ins; tests/test_train_distributed.py kills a real node)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from extend.training import nodes
from extend.training.nodes import PeerWatch, Seen, describe, shared_folder_problems


def test_a_folder_every_node_sees_passes():
    assert shared_folder_problems(Path("/shared/run"), [Seen("a", 0, True), Seen("b", 1, True)]) == []


def test_nodes_that_cannot_see_the_folder_are_named_in_one_line():
    seen = [Seen("a", 0, True), Seen("b", 1, False), Seen("b", 1, False), Seen("c", 2, False)]
    problems = shared_folder_problems(Path("/local/run"), seen)
    assert len(problems) == 1
    assert problems[0].startswith("output_dir=/local/run: node 1 (b), node 2 (c) cannot see the files node 0 writes")
    assert "filesystem every node mounts at the same path" in problems[0]


def test_a_peer_is_described_by_rank_host_and_node():
    assert describe(3, {3: "gpu-07/1"}) == "rank 3 (host gpu-07, node 1)"


@pytest.fixture
def store():
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    yield server


@pytest.fixture
def exits(monkeypatch):
    """os._exit replaced: the messages a watcher would have died with."""
    calls = []
    monkeypatch.setattr(os, "_exit", lambda code: calls.append(code))
    return calls


INTERVAL = 0.1  # the watchers' beat, in seconds


@pytest.fixture
def watch(store, exits):
    """Makes a watcher of rank `rank` on the test's store. Every watcher a test made is stopped when the test
    ends, pass or fail, before os._exit is restored: one left beating would end the test session."""
    made: list[PeerWatch] = []

    def make(rank: int, run_id: str, timeout: float = 1.0) -> PeerWatch:
        env = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "GROUP_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True",
               "TORCHELASTIC_RUN_ID": run_id}
        made.append(PeerWatch(timeout, interval=INTERVAL, env=env))
        return made[-1]

    yield make
    for watcher in made:
        watcher._stop.set()
        if watcher._thread is not None:
            watcher._thread.join()


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_silent_peer_stops_the_run_naming_it(watch, exits, capsys):
    node0, node1 = watch(0, "silent"), watch(1, "silent")
    node0.__enter__(), node1.__enter__()
    time.sleep(0.5)
    assert exits == []  # both beating
    node1._stop.set()  # node 1 stops beating without saying it finished: dead, or hung, or unreachable
    node1._thread.join()
    started = time.monotonic()
    assert wait_for(lambda: exits, 5), "the watcher never noticed"
    # The timeout runs from node 1's last beat, up to one beat before it stopped; then within a beat or two.
    assert 1.0 - INTERVAL <= time.monotonic() - started < 2.5
    assert exits[0] == nodes.LOST_PEER_EXIT
    assert f"lost peer: rank 1 (host {socket.gethostname()}, node 1) sent no heartbeat" in node0.lost
    assert "error: lost peer: rank 1" in capsys.readouterr().err


def test_a_peer_that_finished_is_not_lost(watch, exits):
    node0, node1 = watch(0, "finished"), watch(1, "finished")
    node0.__enter__(), node1.__enter__()
    node1.__exit__(None, None, None)  # left the watched part of the run normally
    time.sleep(2.0)
    assert exits == []
    node0.__exit__(None, None, None)


def test_the_other_processes_stop_with_the_watchers_message(store, watch, exits):
    node0, node1 = watch(0, "abort"), watch(1, "abort")
    node1.watching = False  # not its node's first process: it only listens
    node0.__enter__(), node1.__enter__()
    dist.PrefixStore(node0.prefix, store).set("abort", "lost peer: rank 7 (host x, node 3) ...")
    assert wait_for(lambda: len(exits) >= 2, 3)
    assert node1.lost == node0.lost == "lost peer: rank 7 (host x, node 3) ..."


def test_off_on_one_process_or_without_torchrun(store):
    assert not PeerWatch(30, env={"WORLD_SIZE": "1", "TORCHELASTIC_USE_AGENT_STORE": "True"}).enabled
    assert not PeerWatch(30, env={"WORLD_SIZE": "4"}).enabled
    assert not PeerWatch(0, env={"WORLD_SIZE": "4", "TORCHELASTIC_USE_AGENT_STORE": "True"}).enabled
