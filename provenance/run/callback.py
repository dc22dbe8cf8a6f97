"""The hooks of a run's lifecycle: `Callback` for users and integrations, `Component` for the run's own parts.

A Callback observes; its failures are contained and recorded as `observer_failed`
events. A Component is one of the run's own parts (recorder, replay, the capture
layer of `prov run`): its errors propagate, and its `on_batch` may steer which
sample ids a step trains on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from provenance.run.core import Run


class Callback:
    """Observer of a run's lifecycle. Every hook is a no-op; failures are contained and recorded."""

    def on_start(self, run: Run) -> None:
        """The bundle is open: capture is written and output is captured."""

    def on_batch(self, run: Run, step: int, sample_ids: list[int]) -> None:
        """A step's batch is known (from `run.batch` or `run.record_batch`), just before it is recorded."""

    def on_log(self, run: Run, step: int, metrics: dict[str, Any]) -> None:
        """A step's metrics were recorded (`run.log`)."""

    def on_eval(self, run: Run, step: int, metrics: dict[str, Any]) -> None:
        """An evaluation was recorded (`run.log_eval`)."""

    def on_checkpoint(self, run: Run, step: int, name: str) -> None:
        """A checkpoint file was written (its sha256 is computed off the training thread)."""

    def on_finish(self, run: Run) -> None:
        """The run is ending (run.status is final) and its files are still open: last chance to add files."""

    def on_end(self, run: Run, status: str, root_digest: str | None) -> None:
        """The bundle is sealed (root_digest is None on ranks other than 0)."""


class Component(Callback):
    """One of the run's own parts. Hooks are called in order, before the callbacks; errors propagate."""

    def on_prepare(self, run: Run) -> None:
        """Before anything is captured or written (e.g. set the manifests the data must match)."""

    def on_batch(self, run: Run, step: int, sample_ids: list[int], *,  # type: ignore[override]
                 replaceable: bool = False) -> Sequence[int] | None:
        """Return ids to train on instead (honoured only when `replaceable`: from `run.batch`)."""
        return None

    def on_checkpoint_hashed(self, run: Run, step: int, name: str, sha256: str) -> None:
        """A checkpoint's digest is known. Called from the hashing thread."""

    def on_close(self, run: Run) -> None:
        """Every rank: the last files of this rank, before the ranks meet and rank 0 seals."""

    def on_seal(self, run: Run) -> None:
        """Rank 0, after every rank closed: the last shared files, before run.json and the seal."""
