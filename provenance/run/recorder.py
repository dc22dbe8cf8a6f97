"""The recorder of a run: events, metrics, evaluations, data order, checkpoints and their index, notes.

One writer for each of these files (formats.py names them). Checkpoints are hashed
off the training thread; a hashed checkpoint is reported back through `on_hashed`.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from provenance import bundle, formats
from provenance.bundle import BundleWriter, append_metrics, append_order_step, write_order_header
from provenance.capture.sharded import is_sharded, save_sharded
from provenance.capture.state import save_checkpoint
from provenance.hashing import sha256_file
from provenance.run.ranks import RankLayout

HASH_NICE = 19  # the checkpoint thread's nice value: it yields the cores to the training threads


def _yield_to_training() -> None:
    """Run the checkpoint (hashing) thread at the lowest priority. Linux schedules every thread as its
    own task, so this lowers this thread only: on a node whose cores are all busy training, hashing
    takes only idle time (it still finishes: the run waits for it at close, and a DCP checkpoint is
    indexed when every rank's hash is done). Elsewhere (no per-thread nice) nothing changes."""
    if not HASH_NICE or not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICE)
    except OSError:
        pass


class Recorder:
    def __init__(self, writer: BundleWriter, ranks: RankLayout,
                 on_hashed: Callable[[int, str, str], None] | None = None) -> None:
        self.writer = writer
        self.ranks = ranks
        self.on_hashed = on_hashed
        self.last_step: int | None = None
        self._order_chain = formats.ORDER_CHAIN_SEED
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prov-ckpt-hash",
                                        initializer=_yield_to_training)
        self._pending: list[Future[None]] = []
        self._index: list[dict[str, Any]] = []
        self._index_lock = threading.Lock()
        self._giving_up: float | None = None  # when the run ended without completing (rank 0 stops waiting)

    # --- events -------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        self.writer.log(self.ranks.per_rank(formats.EVENTS)).write_line(
            {"time": formats.utc_now(), "event": kind, **fields})

    # --- data order ---------------------------------------------------------------------
    def order_header(self, sampler: dict[str, Any], dataset: str) -> None:
        write_order_header(self.writer, self.ranks.rank, self.ranks.world_size, sampler, dataset)

    def batch(self, step: int, sample_ids: Sequence[int]) -> str:
        """Append one step's ids to this rank's order files; returns the batch digest."""
        _, ids_rel, steps_rel = formats.order_paths(self.ranks.rank)
        ids_bytes = formats.encode_ids(sample_ids)
        self._order_chain = formats.chain_next(self._order_chain, step, ids_bytes)
        append_order_step(self.writer.raw_log(ids_rel), self.writer.raw_log(steps_rel), step, ids_bytes,
                          len(sample_ids), self._order_chain)
        return formats.ids_digest(ids_bytes)  # the ids were encoded once, above

    # --- metrics and evaluations --------------------------------------------------------
    def metrics(self, step: int, clean: dict[str, Any]) -> None:
        self.last_step = step
        if self.ranks.writes_shared:
            append_metrics(self.writer, {"step": step, "time": formats.utc_now(), **clean})

    def evaluation(self, step: int, clean: dict[str, Any]) -> None:
        if self.ranks.writes_shared:
            self.writer.log(formats.EVALS).write_line({"step": step, "time": formats.utc_now(), **clean})

    # --- checkpoints --------------------------------------------------------------------
    def checkpoint(self, step: int, model: Any, optimizer: Any, tokens_seen: int,
                   extra: dict[str, Any] | None) -> str | None:
        """Write the full training state (rank 0); its sha256 is computed off the training thread.
        Returns the checkpoint's bundle path, None on the other ranks.

        A distributed state (an FSDP2 model, any DCP state_dict) is saved by every rank with
        torch.distributed.checkpoint into checkpoints/step-<N>/ (see _sharded_checkpoint)."""
        if is_sharded(model):
            return self._sharded_checkpoint(step, model, optimizer, tokens_seen, extra)
        if not self.ranks.writes_shared:
            return None
        rel = formats.checkpoint_name(step)
        path = self.writer.path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_checkpoint(tmp, step, model, optimizer, tokens_seen, extra)
        os.replace(tmp, path)
        self._pending.append(self._pool.submit(self._index_checkpoint, rel, step, tokens_seen))
        return rel

    def _index_checkpoint(self, rel: str, step: int, tokens_seen: int) -> None:
        path = self.writer.path(rel)
        hexd = sha256_file(path)
        self.writer.record_digest(rel, hexd)
        with self._index_lock:
            self._index = [e for e in self._index if e["step"] != step]
            self._index.append({"step": step, "path": rel, "sha256": hexd, "size": path.stat().st_size,
                                "tokens_seen": tokens_seen, "time": formats.utc_now()})
            bundle.write_checkpoint_index(self.writer, self._index)
        self.event("checkpoint", step=step, path=rel, sha256=hexd)
        if self.on_hashed is not None:
            self.on_hashed(step, rel, hexd)

    # --- sharded checkpoints (DCP) -------------------------------------------------------
    def _sharded_checkpoint(self, step: int, model: Any, optimizer: Any, tokens_seen: int,
                            extra: dict[str, Any] | None) -> str:
        """Collective (every rank): DCP writes each rank's shards, then each rank hashes its own files
        off the training thread and leaves a shard record; rank 0 indexes the checkpoint once every
        rank's record is there (a file barrier, off the training thread: no collective from a thread)."""
        rel = formats.dcp_checkpoint_dir(step)
        folder = self.writer.path(rel)
        facts = save_sharded(folder, model, optimizer, self.ranks.rank)
        self._pending.append(self._pool.submit(self._hash_shards, rel, step, tokens_seen, facts, extra or {}))
        return rel

    def _hash_shards(self, rel: str, step: int, tokens_seen: int, facts: dict[str, Any],
                     extra: dict[str, Any]) -> None:
        folder = self.writer.path(rel)
        rank = self.ranks.rank
        rng_name, rec_name = formats.dcp_rank_files(rank)
        names = [*sorted(p.name for p in folder.iterdir() if formats.dcp_is_shard_of(p.name, rank)), rng_name]
        if rank == 0:
            names.append(formats.DCP_METADATA)
        files = []
        for name in names:
            frel = f"{rel}/{name}"
            hexd = sha256_file(folder / name)
            self.writer.record_digest(frel, hexd)
            files.append({"path": frel, "size": (folder / name).stat().st_size, "sha256": hexd, "rank": rank})
        self.writer.write_json(f"{rel}/{rec_name}", {
            "schema": formats.DCP_SHARDS_SCHEMA, "rank": rank, "step": step, "host": socket.gethostname(),
            "local_rank": int(os.environ.get("LOCAL_RANK", rank)), "files": files})
        if not self.ranks.writes_shared:
            return
        records = self._wait_for_ranks(rel, step)
        if records is None:
            self.event("checkpoint_incomplete", step=step, path=rel,
                       reason="not every rank recorded its shards: the checkpoint is not indexed")
            return
        all_files = sorted((f for r in records for f in r["files"]), key=lambda f: f["path"])
        for f in all_files:
            if f["rank"] != rank:
                self.writer.record_digest(f["path"], f["sha256"])
        digest = formats.dcp_content_digest(all_files)
        entry = {"step": step, "path": rel, "format": formats.DCP_FORMAT, "sha256": digest,
                 "size": sum(int(f["size"]) for f in all_files), "files": all_files,
                 "world_size": self.ranks.world_size,
                 "ranks": [{"rank": r["rank"], "host": r["host"], "local_rank": r["local_rank"],
                            "rng": f"{rel}/{formats.dcp_rank_files(r['rank'])[0]}",
                            "record": f"{rel}/{formats.dcp_rank_files(r['rank'])[1]}"} for r in records],
                 "sharding": facts, "tokens_seen": tokens_seen, "extra": extra, "time": formats.utc_now()}
        with self._index_lock:
            self._index = [e for e in self._index if e["step"] != step]
            self._index.append(entry)
            bundle.write_checkpoint_index(self.writer, self._index)
        self.event("checkpoint", step=step, path=rel, sha256=digest, format=formats.DCP_FORMAT,
                   files=len(all_files))
        if self.on_hashed is not None:
            self.on_hashed(step, rel, digest)

    def _wait_for_ranks(self, rel: str, step: int, grace_s: float = 5.0,
                        timeout_s: float = 3600.0) -> list[dict[str, Any]] | None:
        """Every rank's shard record of this checkpoint, or None when a rank never wrote it (the run
        ended without completing and `grace_s` passed, or `timeout_s`)."""
        folder = self.writer.path(rel)
        deadline = time.monotonic() + timeout_s
        want = [folder / formats.dcp_rank_files(r)[1] for r in range(self.ranks.world_size)]
        while True:
            if all(p.is_file() for p in want):
                recs = [formats.read_json(p) for p in want]
                if all(r.get("rank") == i and r.get("step") == step for i, r in enumerate(recs)):
                    return recs
                return None
            now = time.monotonic()
            if now > deadline or (self._giving_up is not None and now - self._giving_up > grace_s):
                return None
            if self._giving_up is not None and any(self.ranks.process_gone(r) for r, p in enumerate(want)
                                                   if not p.is_file()):
                return None  # a rank without its record is gone (killed on this machine): it never writes it
            time.sleep(0.02)

    def drain(self, completed: bool = True) -> None:
        """Wait for every checkpoint hash. A failed hash must not lose the bundle: it is an event (seal re-hashes).
        A run that did not complete stops waiting for other ranks' shard records after a grace period."""
        if not completed:
            self._giving_up = time.monotonic()
        for f in self._pending:
            try:
                f.result()
            except Exception as e:
                self.event("checkpoint_hash_failed", error=repr(e))
        self._pending.clear()
        self._pool.shutdown(wait=True)

    # --- notes ----------------------------------------------------------------------------
    def note(self, text: str, category: str, author: str | None, links: Sequence[str], step: int | None,
             details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Append a decision note (append-only; safe against concurrent writers, `prov note` included)."""
        rec = formats.note_record(text, category, author, links, self.last_step if step is None else step,
                                  details=details)
        bundle.append_note(self.writer, rec)
        return rec
