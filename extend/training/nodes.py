"""What a run over several nodes needs beyond one node: an output folder every node sees, and knowing when a
peer is gone.

Shared folder. Checkpoints and the export are written into `output_dir` by several processes at once
(DeepSpeed: every rank its own shards, then the main process commits the folder), and a resume reads them
back on every rank; that only works when every node sees the same folder, as on a cluster's shared
filesystem (NFS, Lustre, GPFS). `check_shared_folder` proves it at start: the main process writes a marker
with a fresh token, every process reads it back, and a node that cannot see it stops the run with one line
naming the node and the path, before anything else is written.

Lost peers. A node that dies mid-run closes its sockets, and gloo/NCCL usually fail the next collective with
"Connection closed by peer" and an address, not a rank; a node that hangs or drops off the network closes
nothing, and the others wait in the collective for the process group's timeout (30 minutes by default).
`PeerWatch` adds a heartbeat through the launcher's store (MASTER_ADDR:MASTER_PORT, the store torch.distributed
rendezvoused with): every process counts up its own key every `interval`, the first process of each node
watches every other process's count, and one that has not moved for `accelerate.peer_timeout` seconds
stops the run on every node with one line naming the lost rank, its host and its node. A short process-group
timeout would do the same without naming anyone, and would also kill healthy runs: the other ranks wait at
a barrier while the main process writes a checkpoint, which may take minutes.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from extend.config import ConfigError

MARKER = ".extend-shared-folder-check"
# The exit status of a process stopped because a peer was lost (EX_UNAVAILABLE in sysexits.h).
LOST_PEER_EXIT = 69


@dataclass(frozen=True)
class Seen:
    """What one process found: its host, its node (the launcher's GROUP_RANK), and whether it read the token."""

    host: str
    node: int
    saw: bool


def node_rank() -> int:
    """This process's node, as torchrun numbers them (GROUP_RANK); 0 when not launched."""
    return int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", "0")))


def several_nodes() -> bool:
    """Whether the launcher spread this run over more than one node."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world))) < world


def shared_folder_problems(folder: Path, seen: list[Seen]) -> list[str]:
    """One line naming the nodes (and hosts) whose processes could not read the main process's marker."""
    blind = sorted({(s.node, s.host) for s in seen if not s.saw})
    if not blind:
        return []
    where = ", ".join(f"node {node} ({host})" for node, host in blind)
    return [f"output_dir={folder}: {where} cannot see the files node 0 writes there ({MARKER}); a run on several "
            "nodes needs output_dir on a filesystem every node mounts at the same path (NFS, Lustre, GPFS): set "
            "output_dir (and data.output_dir) to such a path"]


def check_shared_folder(folder: Path, rank: int) -> None:
    """Raise ConfigError on every process when some node does not see what the main process writes in
    `folder`. A collective: every process of the run calls it (after the process group is up)."""
    folder = Path(folder)
    marker = folder / MARKER
    token = [uuid.uuid4().hex if rank == 0 else None]
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(token[0])
    dist.broadcast_object_list(token, src=0)
    saw = marker.is_file() and marker.read_text() == token[0]
    seen: list = [None] * dist.get_world_size()
    dist.all_gather_object(seen, Seen(socket.gethostname(), node_rank(), saw))
    if rank == 0:
        marker.unlink()
    problems = shared_folder_problems(folder, seen)
    if problems:
        raise ConfigError(problems)


def describe(rank: int, hosts: dict[int, str]) -> str:
    """`rank 3 (host gpu-07, node 1)`: a peer as a person looking for it needs it."""
    host, _, node = hosts.get(rank, "?/?").partition("/")
    return f"rank {rank} (host {host}, node {node})"


class PeerWatch:
    """The heartbeat of one process (see the module's docstring); a context manager around the part of the
    run during which every process must be alive. Leaving it normally (or by a requested stop) marks this
    process finished, so that peers do not mistake its exit for a loss.

    Active under torchrun (launch.sh, `accelerate launch`), whose store outlives the workers
    (TORCHELASTIC_USE_AGENT_STORE), with more than one process and `timeout` > 0; otherwise it does nothing.
    """

    def __init__(self, timeout: float, interval: float | None = None, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        self.rank, self.world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
        self.timeout = timeout
        self.watching = env.get("LOCAL_RANK", "0") == "0"  # one watcher per node: nodes x processes reads
        self.interval = interval if interval is not None else max(0.5, timeout / 6)
        self.prefix = f"extend/peers/{env.get('TORCHELASTIC_RUN_ID', 'run')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.enabled = timeout > 0 and self.world > 1 and env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        self.address = f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}"
        self.me = f"{socket.gethostname()}/{env.get('GROUP_RANK', '0')}"
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _store(self) -> dist.Store:
        host, _, port = self.address.rpartition(":")
        store = dist.TCPStore(host, int(port), is_master=False, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=max(self.timeout, 1)))
        return dist.PrefixStore(self.prefix, store)

    def __enter__(self) -> PeerWatch:
        if not self.enabled:
            return self
        self.store = self._store()
        self.store.set(f"host/{self.rank}", self.me)
        self.store.add(f"beat/{self.rank}", 1)
        self._thread = threading.Thread(target=self._run, name="extend-peer-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind, err, tb) -> None:
        if self._thread is None:
            return
        if kind is None or issubclass(kind, (SystemExit, KeyboardInterrupt)):
            self._stop.set()
            self._thread.join()
            self.store.set(f"done/{self.rank}", "1")
            return
        if not isinstance(err, RuntimeError):  # this process's own error: the peers see it leave
            return
        # torch.distributed's errors are RuntimeErrors, e.g. a collective that failed with "Connection closed
        # by peer" and an address: wait (at most the timeout) for the heartbeat to name the peer that is
        # gone, so the log says who.
        deadline = time.monotonic() + self.timeout + 2 * self.interval
        while self.lost is None and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _run(self) -> None:
        store = self._store()  # a connection of this thread's own
        peers = [r for r in range(self.world) if r != self.rank]
        keys = [f"beat/{r}" for r in peers]
        last: dict[int, tuple[int, float]] = {}  # peer -> (count, when it last moved), on this clock
        while not self._stop.wait(self.interval):
            try:
                store.add(f"beat/{self.rank}", 1)
                if store.check(["abort"]):
                    self._fail(store.get("abort").decode())
                if not self.watching:
                    continue
                now = time.monotonic()
                # A peer that has not started its heartbeat yet counts as 0 from the first look.
                beats = ([int(b) for b in store.multi_get(keys)] if store.check(keys)
                         else [int(store.get(k)) if store.check([k]) else 0 for k in keys])
                for r, beat in zip(peers, beats):
                    if r not in last or beat != last[r][0]:
                        last[r] = (beat, now)
                    elif now - last[r][1] > self.timeout and not store.check([f"done/{r}"]):
                        host = store.get(f"host/{r}").decode() if store.check([f"host/{r}"]) else "?/?"
                        message = (f"lost peer: {describe(r, {r: host})} sent no heartbeat for {now - last[r][1]:.0f} s "
                                   f"(accelerate.peer_timeout={self.timeout:g}): its processes died or its node is "
                                   f"unreachable. {describe(self.rank, {self.rank: self.me})} stops the run; rerun the "
                                   "same command on every node to resume from the last checkpoint")
                        store.set("abort", message)
                        self._fail(message)
            except (RuntimeError, OSError) as err:  # the store is gone, and node 0's launcher with it
                if self._stop.is_set():
                    return
                self._fail(f"lost peer: the launcher's store at {self.address} (node 0) stopped answering "
                           f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}): node 0 died "
                           "or is unreachable. Stopping; rerun the same command on every node to resume from the last "
                           "checkpoint")

    def _fail(self, message: str) -> None:
        """Stop this process now: its main thread may be blocked inside a collective that never returns."""
        self.lost = message
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(LOST_PEER_EXIT)
