"""The lineage observer: a run records lineage.json (its edges by content digest) before its seal.

    with start_run(config, ..., callbacks=[LineageCallback(init=cfg.run.init_from)]) as run:
        ...

On start it hashes the files the run will load (warm start, resume, merge inputs) — the bytes
as they were when the run began; a checkpoint the run restored (run.restore, e.g. the previous
attempt's that run.resume_point() gives a torchrun relaunch) is a `resume` input too, with the
digest the restore verified. On finish it matches them, and every data manifest the
bundle holds, against the stored bundles' produced files and writes lineage.json, which the
seal then covers. The store is the run's own runs folder (its siblings), $PROV_STORE and
any folders given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from provenance import formats
from provenance.bundle import write_lineage
from provenance.lineage.edges import Consumed, file_digest, infer_edges
from provenance.run import Callback, Run
from provenance.store import Store


def _weights_path(path: Path) -> Path:
    return path / "model.safetensors" if path.is_dir() else path


class LineageCallback(Callback):
    """Records lineage.json for the run it observes (rank 0 only)."""

    def __init__(self, *, init: str | os.PathLike[str] | None = None,
                 resume: str | os.PathLike[str] | None = None,
                 merge: Sequence[tuple[str | os.PathLike[str], float]] = (),
                 inputs: Sequence[tuple[str, str | os.PathLike[str]]] = (),
                 declared: Sequence[dict[str, Any]] = (), stores: Sequence[str | os.PathLike[str]] = ()) -> None:
        self._files: list[tuple[str, Path, str, float | None]] = []
        if init:
            self._files.append(("init", Path(init), "run.init_from", None))
        if resume:
            self._files.append(("resume", Path(resume), "run.resume_from", None))
        for i, (path, weight) in enumerate(merge):
            self._files.append(("merge", Path(path), f"merge[{i}]", float(weight)))
        for i, (kind, path) in enumerate(inputs):
            if kind not in formats.EDGE_KINDS:
                raise ValueError(f"lineage input #{i}: kind {kind!r} is not one of {', '.join(formats.EDGE_KINDS)}")
            self._files.append((kind, Path(path), f"input[{i}]:{Path(path).name}", None))
        self.declared = list(declared)
        self.stores = [Path(s) for s in stores]
        self.consumed: list[Consumed] = []
        self.edges: list[dict[str, Any]] = []

    def on_start(self, run: Run) -> None:
        self.consumed = [Consumed(kind, file_digest(path), what, weight, str(_weights_path(path)))
                         for kind, path, what, weight in self._files]

    def restored(self, run: Run) -> list[Consumed]:
        """The inputs as consumed: a checkpoint the run restored (run.restore, e.g. from run.resume_point()
        after a torchrun relaunch) is a `resume` input, as run.resume_from is; it replaces a `resume` given
        here that the run did not restore (a relaunch of a resumed job continues its previous attempt). A
        restored file already given here under another kind (`init=` the checkpoint run.restore loads) is one
        input, as given: one edge, not an `init` and a `resume` edge to the same file."""
        done = [Consumed("resume", r["sha256"], r["consumed"], None, str(_weights_path(Path(r["path"]))))
                for r in getattr(run, "restored", [])]
        if not done:
            return list(self.consumed)
        hexes = {c.hexd for c in done}
        kept = [c for c in self.consumed if c.kind != "resume" or c.hexd in hexes]
        have = {c.hexd for c in kept}
        return kept + [c for c in done if c.hexd not in have]

    def on_finish(self, run: Run) -> None:
        if run.rank != 0 or run.writer is None:
            return
        warnings: list[str] = []
        store = Store.default(self.stores, near=run.root)
        self.edges = infer_edges(run.root, store, self.restored(run), self.declared, warnings)
        write_lineage(run.writer, self.edges, warnings)
