"""Replay as a component of a run: in a reproduction (PROV_REPLAY), every batch, loss and checkpoint
digest is compared with the original's as the run goes (the engine is provenance.replay).

* `run.batch(step, compute)`: the original's recorded ids are returned (and compared with
  what `compute` gave). If they differ and the script never reads the returned list (not
  its length, not an element) before the step's `run.log`, the recorded batch was not
  trained on: a `replayed_batch_unused` event is written and the step's record says
  `"replayed": false` — no claim that the recorded batch was replayed.
* `run.record_batch(step, ids)`: the script chose its batch itself; its ids are compared
  with the original's step (an order change is a divergence) and recorded as given.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsIndex

from provenance.bundle import append_reproduction_steps, write_reproduction_summary
from provenance.replay import REPLAY_ENV, STEPS_LOG, SUMMARY, Replay, merge_rank_summaries, original_root_digest
from provenance.run.callback import Component

if TYPE_CHECKING:
    from provenance.run.core import Run


class ReturnedIds(list[int]):
    """The replayed ids handed back by `run.batch`; remembers whether the script read them."""

    used = False

    def __iter__(self) -> Iterator[int]:
        self.used = True
        return super().__iter__()

    def __getitem__(self, i: Any) -> Any:
        self.used = True
        return super().__getitem__(i)

    def __len__(self) -> int:
        self.used = True
        return super().__len__()

    def __contains__(self, x: object) -> bool:
        self.used = True
        return super().__contains__(x)

    def __eq__(self, other: object) -> bool:
        self.used = True
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def index(self, x: int, *args: SupportsIndex) -> int:
        self.used = True
        return super().index(x, *args)

    def copy(self) -> list[int]:
        self.used = True
        return list.copy(self)


class ReplayComponent(Component):
    def __init__(self, replay: Replay) -> None:
        self.replay = replay
        self._rec: dict[str, Any] | None = None
        self._returned: ReturnedIds | None = None

    @classmethod
    def from_env(cls, rank: int) -> ReplayComponent | None:
        replay = Replay.from_env(rank) if os.environ.get(REPLAY_ENV) else None
        return cls(replay) if replay is not None else None

    def relaunch_checkpoint(self) -> Path | None:
        """The checkpoint the original continued from when torchrun had relaunched it (run.json
        `relaunch` and `segment`): in the previous segment, found at its recorded path or next to the
        original. None when the original was no relaunch."""
        from provenance import formats
        from provenance.run.relaunch import continued_from

        try:
            info = formats.read_json(self.replay.original / formats.RUN_JSON)
        except (OSError, ValueError):
            return None
        found = continued_from(self.replay.original, info) if isinstance(info, dict) else None
        return found[1] if found else None

    def reproduces(self) -> dict[str, Any]:
        return {"run_id": self.replay.original.name, "root_digest": original_root_digest(self.replay.original)}

    def on_start(self, run: Run) -> None:
        if not run.ranks.writes_shared:
            return
        orig = run.reproduces or {}
        stop = self.replay.stop_after
        run.note(f"reproduction of run {orig.get('run_id')} (root digest sha256:{orig.get('root_digest')})"
                 + (f", checking steps up to {stop}" if stop is not None else ""), category="reproduction", step=0,
                 details={"original_run_id": orig.get("run_id"), "original_root_digest": orig.get("root_digest"),
                          "stop_after": stop})

    def on_prepare(self, run: Run) -> None:
        for spec in run.datasets:  # a reproduction checks its data against the original's manifests
            if spec.expected is None:
                spec.expected = self.replay.data_manifest(spec.name)

    def on_batch(self, run: Run, step: int, sample_ids: list[int], *,  # type: ignore[override]
                 replaceable: bool = False) -> Sequence[int] | None:
        self._settle(run)
        recorded, rec = self.replay.batch(step, sample_ids)
        if not replaceable:
            rec["source"] = "record_batch"
            if rec.get("order") == "differs":
                rec["replayed"] = False
                self._mark_first(step, replayed=False)
            self._rec = rec
            return None
        self._rec = rec
        if rec.get("order") != "differs":
            return recorded
        rec["replayed"] = True  # until the script shows it did not read them (see _settle)
        self._mark_first(step, replayed=True)
        self._returned = ReturnedIds(recorded)
        return self._returned

    def _mark_first(self, step: int, replayed: bool) -> None:
        first = self.replay.first_divergence
        if first is not None and first.get("kind") == "order" and first.get("step") == step:
            first["replayed"] = replayed

    def _settle(self, run: Run) -> None:
        """Did the script read the replayed ids handed back for the last step?"""
        returned, self._returned = self._returned, None
        if returned is None or returned.used or self._rec is None:
            return
        step = self._rec["step"]
        self._rec["replayed"] = False
        self._mark_first(step, replayed=False)
        run.event("replayed_batch_unused", step=step,
                  message="run.batch returned the original's recorded batch, which differs from what the script "
                          "computed, but the script never read it: the step trained on other data")
        print(f"prov: warning: step {step}: the replayed batch returned by run.batch was not used", flush=True)

    def on_log(self, run: Run, step: int, metrics: dict[str, Any]) -> None:
        self._settle(run)
        rec = self.replay.log(step, metrics, self._rec or {"step": step})
        self._rec = None
        append_reproduction_steps(_writer(run), rec, run.ranks.own(STEPS_LOG))

    def on_checkpoint_hashed(self, run: Run, step: int, name: str, sha256: str) -> None:
        rec = self.replay.checkpoint(step, sha256)
        if rec is not None:
            append_reproduction_steps(_writer(run), rec)

    def _summary(self, run: Run) -> dict[str, Any]:
        return self.replay.summary(run.reproduces.get("root_digest") if run.reproduces else None)

    def on_close(self, run: Run) -> None:
        self._settle(run)
        if not run.ranks.writes_shared:
            write_reproduction_summary(_writer(run), self._summary(run), run.ranks.own(SUMMARY))

    def on_seal(self, run: Run) -> None:
        if not run.ranks.writes_shared:
            return
        summary = self._summary(run)
        w = _writer(run)
        if run.ranks.distributed:
            summary = merge_rank_summaries(summary, w.root, run.ranks.world_size)
        write_reproduction_summary(w, summary)


def _writer(run: Run) -> Any:
    assert run.writer is not None, "the run is not open"
    return run.writer
