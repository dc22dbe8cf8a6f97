"""The rank layout of a run: which process writes which file, and where the ranks meet.

Every rank decision of a run is here. Rank 0 creates the bundle, writes the shared
files and seals; every rank writes its own order, events and captured output; the
ranks agree on one run id and meet before the seal.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

from provenance import formats
from provenance.bundle import BundleWriter
from provenance.redact import Redactor

RANK_GRACE_ENV = "PROV_RANK_GRACE_S"  # how long rank 0 of an unfinished run waits for the other ranks' end
RANK_GRACE_S = 5.0


def rank_file(rel: str, rank: int) -> str:
    """A shared file's per-rank name: rank 0 keeps the name, rank R writes <stem>.rank<R><suffix>."""
    if rank == 0:
        return rel
    stem, dot, suffix = rel.rpartition(".")
    return f"{stem}.rank{rank}{dot}{suffix}"


def _dist() -> Any:
    """torch.distributed when a process group is up, else None."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


class RankLayout:
    """This process's rank and world size (RANK, WORLD_SIZE) and what follows from them."""

    def __init__(self, rank: int | None = None, world_size: int | None = None) -> None:
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
        self._procs: dict[int, dict[str, Any]] = {}  # every rank's process facts (facts() gathers them)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def writes_shared(self) -> bool:
        """Only rank 0 writes shared files (config, code, environment, metrics, checkpoints, model, seal)."""
        return self.rank == 0

    def own(self, rel: str) -> str:
        """This rank's copy of a per-rank file (rank 0 keeps the plain name)."""
        return rank_file(rel, self.rank)

    def per_rank(self, rel: str) -> str:
        """Logs every process writes (events, stdout, stderr): `.rank<R>` suffixed in a distributed run."""
        if not self.distributed:
            return rel
        return formats.rank_log(rel, self.rank)

    def agree_run_id(self, run_id: str, given: bool) -> str:
        """One run id on every rank: rank 0's, unless one was given (argument or PROV_RUN_ID)."""
        if not self.distributed or given:
            return run_id
        dist = _dist()
        if dist is None:
            raise RuntimeError("a run with WORLD_SIZE > 1 needs one run id on every rank: call "
                               "torch.distributed.init_process_group() before start_run, or set PROV_RUN_ID")
        box = [run_id]
        dist.broadcast_object_list(box, src=0)
        return str(box[0])

    def open_bundle(self, root: Path, redactor: Redactor) -> BundleWriter:
        """Rank 0 creates the run folder; the other ranks wait for it and write their own files into it."""
        if not self.distributed:
            return BundleWriter.create(root, redactor)
        if self.rank == 0:
            BundleWriter.create(root, redactor)
        self.barrier(root)
        return BundleWriter(root, redactor)

    def meet_before_seal(self, status: str, root: Path) -> list[int]:
        """Every rank closed its files; rank 0 seals after this. A completed run meets at a barrier. A
        failed or interrupted run must not hang on ranks that are gone: rank 0 waits (at most
        PROV_RANK_GRACE_S, default 5 s) for every rank's end event, the last record a rank writes, and
        returns the ranks that never wrote one (lost: killed, or on a node that died)."""
        if not self.distributed:
            return []
        if status == "completed":
            self.barrier(None)
            return []
        if not self.writes_shared:
            return []
        try:
            grace = float(os.environ.get(RANK_GRACE_ENV, RANK_GRACE_S))
        except ValueError:
            grace = RANK_GRACE_S
        deadline = time.monotonic() + grace
        waiting = [r for r in range(self.world_size) if r != self.rank]
        while waiting:
            waiting = [r for r in waiting if not rank_ended(root, r, self.world_size)]
            if not waiting or time.monotonic() > deadline or all(self.process_gone(r) for r in waiting):
                break
            time.sleep(0.1)
        return [r for r in waiting if not rank_ended(root, r, self.world_size)]

    def seal_after_exit(self, root: Path, ranks: list[int]) -> bool:
        """Start a detached sealer (its own session: a launcher stopping this job's processes spares it)
        that waits for this process to exit and `ranks` to write their end events (or die), then seals
        the bundle. False when it cannot be started (the caller seals now)."""
        import subprocess

        code = ("import sys; from provenance.run.ranks import seal_when_ended; "
                "seal_when_ended(sys.argv[1], int(sys.argv[2]), [int(r) for r in sys.argv[3].split(',')], "
                "int(sys.argv[4]), float(sys.argv[5]))")
        try:
            grace = float(os.environ.get(RANK_GRACE_ENV, RANK_GRACE_S))
        except ValueError:
            grace = RANK_GRACE_S
        try:
            subprocess.Popen([sys.executable, "-c", code, str(root), str(os.getpid()), ",".join(map(str, ranks)),
                              str(self.world_size), str(max(grace, 30.0))], start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             close_fds=True)
        except OSError:
            return False
        return True

    def process_gone(self, rank: int) -> bool:
        """Whether a rank's process is known to be gone: it ran on this machine (same host and boot) and
        its pid names no live process of that start time. A rank on another machine is never known gone."""
        from provenance.capture.process import process_identity, process_state

        p = self._procs.get(rank)
        ident = p.get("process") if p else None
        if not isinstance(ident, dict) or p.get("host") != socket.gethostname() \
                or ident.get("boot_id") != process_identity().get("boot_id"):
            return False
        return process_state(int(p["pid"]), ident) != "alive"

    def collective_failed(self, exc: BaseException, tb: TracebackType | None) -> bool:
        """Whether this distributed run's exception came out of a torch.distributed collective (or its
        store): a peer rank stopped or was lost, as when its node dies. Such a run is `interrupted`."""
        if not self.distributed:
            return False
        dist = sys.modules.get("torch.distributed")
        dist_error = getattr(dist, "DistError", None)
        if isinstance(dist_error, type) and isinstance(exc, dist_error):
            return True
        if not isinstance(exc, RuntimeError):
            return False
        files = [Path(f.filename).as_posix() for f in (traceback.extract_tb(tb) if tb is not None else [])]
        if files and files[-1].endswith("torch/distributed/distributed_c10d.py"):
            return True
        # a collective reached another way (DTensor redistribute, functional collectives: the last frame is
        # torch/_ops.py) that failed in the transport: a peer's connection closed or reset
        return any("/torch/distributed/" in f for f in files) and any(m in str(exc) for m in _TRANSPORT_LOST)

    @staticmethod
    def barrier(folder: Path | None, timeout_s: float = 600.0) -> None:
        """Wait for every rank (torch.distributed); without a process group, wait for `folder` to exist."""
        dist = _dist()
        if dist is not None:
            dist.barrier()
            return
        deadline = time.monotonic() + timeout_s
        while folder is not None and not folder.is_dir():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{folder}: rank 0 did not create the run folder within {timeout_s:.0f} s")
            time.sleep(0.05)

    def process_facts(self) -> dict[str, Any]:
        """This process's place in the job: host, node (torchrun's GROUP_RANK), local rank, launcher facts."""
        env = os.environ
        launcher = {k.lower(): env[k] for k in _LAUNCHER_VARS if k in env}
        from provenance.capture.env import node_facts
        from provenance.capture.process import process_identity

        return {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(), "node": node_facts(),
                "process": process_identity(),
                "node_rank": int(env.get("GROUP_RANK", env.get("NODE_RANK", "0"))),
                "local_rank": int(env.get("LOCAL_RANK", self.rank)),
                "local_world_size": int(env.get("LOCAL_WORLD_SIZE", self.world_size)), "launcher": launcher}

    def facts(self) -> dict[str, Any] | None:
        """run.json's `distributed` record (None for a single process). Collective under a process group:
        every rank's process facts are gathered, and `nodes` lists every node with its ranks."""
        if not self.distributed:
            return None
        dist = _dist()
        own = self.process_facts()
        procs = [own]
        if dist is not None:
            procs = [None] * self.world_size  # type: ignore[list-item]
            dist.all_gather_object(procs, own)
        self._procs = {p["rank"]: p for p in procs}
        nodes: dict[int, dict[str, Any]] = {}
        for p in sorted(procs, key=lambda p: p["rank"]):
            n = nodes.setdefault(p["node_rank"], {"node_rank": p["node_rank"], "host": p["host"], "ranks": [],
                                                  "local_ranks": [], "pids": [], "launcher": p["launcher"],
                                                  "facts": p["node"]})
            n["ranks"].append(p["rank"])
            n["local_ranks"].append(p["local_rank"])
            n["pids"].append(p["pid"])
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        return {"backend": dist.get_backend() if dist is not None else None, "world_size": self.world_size,
                "local_world_size": local, "nnodes": len(nodes) if dist is not None else
                max(1, self.world_size // max(1, local)),
                "launcher": "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else None,
                "nodes": [nodes[k] for k in sorted(nodes)],
                "order": "order/rank<R>.*: each rank's own batches", "logs": "logs/*.rank<R>.*: each rank's own"}


def seal_when_ended(root: str | os.PathLike[str], pid: int, ranks: list[int], world_size: int,
                    grace_s: float) -> None:
    """The detached sealer of a run whose rank 0 ended while other ranks were still alive: wait for rank
    0's process (`pid`) to exit, then up to `grace_s` for `ranks` to write their end events, record the
    ranks still without one in run.json, and seal.

    The check and the seal are one step under the folder lock that `prov seal`, `prov note` and the
    bundle writer's seal take: a bundle sealed meanwhile (a `prov seal`, a torchrun relaunch sealing its
    previous attempt) is left as it is. If anything fails, run.json is put back as rank 0 left it and
    nothing is sealed: the bundle stays unsealed, for `prov seal`."""
    from provenance.bundle import folder_lock, seal_folder_locked, write_run_info
    from provenance.capture.process import process_state

    root = Path(root)
    deadline = time.monotonic() + 3600
    while process_state(pid) == "alive" and time.monotonic() < deadline:
        time.sleep(0.1)
    deadline = time.monotonic() + grace_s
    waiting = list(ranks)
    while waiting and time.monotonic() < deadline:
        waiting = [r for r in waiting if not rank_ended(root, r, world_size)]
        time.sleep(0.1)
    with folder_lock(root):
        if (root / formats.MANIFEST).exists():
            return  # sealed meanwhile: never sealed twice, never run.json changed under a seal
        left = formats.read_json(root / formats.RUN_JSON)  # as rank 0 left it
        info = dict(left)
        before = [r for r in info.get("ranks_without_end") or [] if r not in ranks]
        still = sorted(before + [r for r in ranks if not rank_ended(root, r, world_size)])
        if still:
            info["ranks_without_end"] = still
        else:
            info.pop("ranks_without_end", None)
        info["sealed_by"] = {"command": "rank 0's detached sealer", "time": formats.utc_now(),
                             "waited_for_ranks": ranks}
        write_run_info(root, info)
        try:
            seal_folder_locked(root)
        except BaseException:
            if not (root / formats.MANIFEST).exists():
                write_run_info(root, left)  # unsealed, as rank 0 left it: `prov seal` seals it
            raise


def last_event(root: Path, rank: int, world_size: int) -> dict[str, Any] | None:
    """The last whole record of a rank's event log (its tail only is read), or None."""
    rel = formats.EVENTS if world_size <= 1 else formats.rank_log(formats.EVENTS, rank)
    try:
        with open(root / rel, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 8192))
            tail = f.read()
    except OSError:
        return None
    lines = [x for x in tail.split(b"\n")[:-1] if x.strip()]  # an unterminated last line is torn
    if not lines:
        return None
    try:
        rec = json.loads(lines[-1])
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def rank_ended(root: Path, rank: int, world_size: int) -> bool:
    """Whether a rank wrote its end event (the last thing a rank writes before closing its files)."""
    rec = last_event(root, rank, world_size)
    return rec is not None and rec.get("event") in formats.END_EVENTS


# how gloo and NCCL say that a peer is gone, in the RuntimeError a collective raises
_TRANSPORT_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
                   "NCCL communicator was aborted", "remote process exited or there was a network error")

# what torchrun tells each process about the job (no secrets: ids, sizes, rendezvous endpoint)
_LAUNCHER_VARS = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "GROUP_RANK",
                  "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "LOCAL_WORLD_SIZE", "TORCHELASTIC_USE_AGENT_STORE")
