"""The recorder of a run: events, metrics, evaluations, data order, checkpoints and their index, notes.

One writer for each of these files (formats.py names them). Checkpoints are hashed
off the training thread; a hashed checkpoint is reported back through `on_hashed`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from provenance import formats
from provenance.bundle import BundleWriter
from provenance.capture.state import save_checkpoint
from provenance.hashing import sha256_file
from provenance.run.ranks import RankLayout


class Recorder:
    def __init__(self, writer: BundleWriter, ranks: RankLayout,
                 on_hashed: Callable[[int, str, str], None] | None = None) -> None:
        self.writer = writer
        self.ranks = ranks
        self.on_hashed = on_hashed
        self.last_step: int | None = None
        self._order_chain = formats.ORDER_CHAIN_SEED
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prov-ckpt-hash")
        self._pending: list[Future[None]] = []
        self._index: list[dict[str, Any]] = []
        self._index_lock = threading.Lock()

    # --- events -------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        self.writer.log(self.ranks.per_rank(formats.EVENTS)).write_line(
            {"time": formats.utc_now(), "event": kind, **fields})

    # --- data order ---------------------------------------------------------------------
    def order_header(self, sampler: dict[str, Any], dataset: str) -> None:
        hdr, _, _ = formats.order_paths(self.ranks.rank)
        self.writer.write_json(hdr, formats.order_header(self.ranks.rank, self.ranks.world_size, sampler, dataset))

    def batch(self, step: int, sample_ids: Sequence[int]) -> str:
        """Append one step's ids to this rank's order files; returns the batch digest."""
        _, ids_rel, steps_rel = formats.order_paths(self.ranks.rank)
        ids_bytes = formats.encode_ids(sample_ids)
        self._order_chain = formats.chain_next(self._order_chain, step, ids_bytes)
        self.writer.raw_log(ids_rel).write(ids_bytes)
        self.writer.raw_log(steps_rel).write(formats.ORDER_STEP_RECORD.pack(step, len(sample_ids), self._order_chain))
        return formats.ids_digest(ids_bytes)  # the ids were encoded once, above

    # --- metrics and evaluations --------------------------------------------------------
    def metrics(self, step: int, clean: dict[str, Any]) -> None:
        self.last_step = step
        if self.ranks.writes_shared:
            self.writer.log(formats.METRICS).write_line({"step": step, "time": formats.utc_now(), **clean})

    def evaluation(self, step: int, clean: dict[str, Any]) -> None:
        if self.ranks.writes_shared:
            self.writer.log(formats.EVALS).write_line({"step": step, "time": formats.utc_now(), **clean})

    # --- checkpoints --------------------------------------------------------------------
    def checkpoint(self, step: int, model: Any, optimizer: Any, tokens_seen: int,
                   extra: dict[str, Any] | None) -> str | None:
        """Write the full training state (rank 0); its sha256 is computed off the training thread.
        Returns the checkpoint's bundle path, None on the other ranks."""
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
            self.writer.write_json(formats.CHECKPOINT_INDEX, formats.checkpoint_index(self._index))
        self.event("checkpoint", step=step, path=rel, sha256=hexd)
        if self.on_hashed is not None:
            self.on_hashed(step, rel, hexd)

    def drain(self) -> None:
        """Wait for every checkpoint hash. A failed hash must not lose the bundle: it is an event (seal re-hashes)."""
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
        formats.append_line(self.writer.path(formats.NOTES), self.writer.redactor.text(formats.dumps_line(rec)))
        return rec
