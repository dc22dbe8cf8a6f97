"""Step-by-step comparison of a live run against a recorded bundle (the engine of `prov reproduce`).

A run started with PROV_REPLAY=<original bundle> replays the original's data order
and compares, as it goes, each step's batch (sample ids and batch digest), the
loss (bitwise) and the sha256 of every checkpoint the original saved. What it
finds is appended to reproduction/steps.jsonl and summed up in
reproduction/summary.json inside the new bundle.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from provenance import formats, reader, records

REPLAY_ENV = "PROV_REPLAY"  # path of the original bundle
STOP_ENV = "PROV_REPLAY_STOP_AFTER"  # stop after this step (inclusive)
STEPS_LOG = formats.REPRO_STEPS
SUMMARY = formats.REPRO_SUMMARY


# The first divergent step: ONE definition, used by the replay (its summary), the verdict of
# `prov reproduce` and `prov diff` (docs/reproduce.md). What is compared at each training step, in
# this order: the batch (sample ids: "order"), the loss (bit for bit: "loss"), the sha256 of the
# checkpoint saved at that step ("checkpoint"; one the original saved at a step the other run
# reached but did not save: "checkpoint missing"). The first divergence is the smallest
# (step, kind) in that order, whatever order the comparisons were made in (checkpoint digests are
# computed off the training thread, after later steps' losses). Evaluations are computed from the
# weights the checkpoints cover: an evaluation that differs ("eval") counts only when no step
# diverged, and then the first such evaluation is named.
DIVERGENCE_ORDER = {"order": 0, "loss": 1, "checkpoint": 2, "checkpoint missing": 2}


def divergence_key(d: dict[str, Any]) -> tuple[int, int, int]:
    """Where a divergence {step, kind, ...} sorts under the definition above."""
    kind = str(d.get("kind"))
    if kind in DIVERGENCE_ORDER:
        return 0, int(d["step"]), DIVERGENCE_ORDER[kind]
    return 1, int(d["step"]), 0


def first_divergence(candidates: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The first divergence of `candidates` (None entries skipped; the first listed wins a tie)."""
    found = [c for c in candidates if c is not None]
    return min(found, key=divergence_key) if found else None


class StopRun(Exception):
    """Raised by the run when a replay reached the last step it was asked to check."""


class WorldSizeMismatch(ValueError):
    """A reproduction runs on another number of processes than the original did."""


def check_world_size(original: str | os.PathLike[str], world_size: int) -> None:
    """Raise WorldSizeMismatch unless `world_size` is the original run's (run.json world_size, default 1).

    Each rank's data order and the reduction of gradients across ranks depend on the
    world size: another world size cannot reproduce the run, so it is refused up front.
    """
    try:
        with reader.Bundle(original) as b:
            recorded = b.run_record().world_size if b.has(formats.RUN_JSON) else 1  # typed and strict
    except (reader.Refused, reader.BundleFileError) as exc:
        raise formats.FormatError(str(exc)) from None
    if recorded != world_size:
        how = (f"torchrun --nproc_per_node={recorded} (or WORLD_SIZE={recorded} processes)" if recorded > 1
               else "a single process (no torchrun)")
        raise WorldSizeMismatch(
            f"{Path(original).name}: the original run trained on {recorded} process(es) (world size {recorded}), "
            f"this reproduction runs on {world_size}: each rank's data order and the gradient reduction depend on "
            f"the world size, so it cannot reproduce; run it with {how}")


class Replay:
    def __init__(self, original: str | os.PathLike[str], rank: int = 0, stop_after: int | None = None) -> None:
        self.original = Path(original)
        self.stop_after = stop_after
        try:  # the original's records, read through the one bundle reader (bounded, typed)
            self._bundle = reader.Bundle(self.original)
            b = self._bundle
            self.order = {s.step: s.sample_ids for s in b.order(rank)}
            self.metrics = {int(m["step"]): m for m in b.records(formats.METRICS)}
            index = b.checkpoint_index()
        except (reader.Refused, reader.BundleFileError) as exc:
            raise formats.FormatError(str(exc)) from None
        self.checkpoints = {e.step: e.sha256 for e in index.checkpoints} if index is not None else {}
        self.first_divergence: dict[str, Any] | None = None
        self._lock = threading.Lock()  # checkpoint digests arrive from the hashing thread
        self.divergences: dict[str, int] = {"order": 0, "loss": 0, "checkpoint": 0}
        self.max_loss_diff = 0.0
        self.steps_checked = 0
        self.checkpoints_checked = 0
        self.first_step: int | None = None
        self.last_step: int | None = None

    def _json(self, rel: str) -> Any:
        try:
            return self._bundle.json(rel)
        except reader.BundleFileError as exc:
            raise formats.FormatError(str(exc)) from None

    def data_manifest(self, name: str) -> dict[str, Any] | None:
        """The original's manifest of dataset `name` (None if it had no such dataset)."""
        rel = formats.data_manifest_path(name)
        if not self._bundle.has(rel):
            return None
        try:
            self._bundle.data_manifest(name)  # typed and strict
        except reader.BundleFileError as exc:
            raise formats.FormatError(str(exc)) from None
        return self._json(rel)

    @classmethod
    def from_env(cls, rank: int = 0) -> Replay | None:
        path = os.environ.get(REPLAY_ENV)
        if not path:
            return None
        check_world_size(path, int(os.environ.get("WORLD_SIZE", "1")))
        stop = os.environ.get(STOP_ENV)
        return cls(path, rank, int(stop) if stop else None)

    def _diverged(self, kind: str, step: int, **detail: Any) -> None:
        with self._lock:
            self.divergences[kind] += 1
            self.first_divergence = first_divergence([self.first_divergence, {"step": step, "kind": kind, **detail}])

    def batch(self, step: int, computed: list[int]) -> tuple[list[int], dict[str, Any]]:
        """The ids to train on (the recorded ones when known) and the comparison record."""
        if self.stop_after is not None and step > self.stop_after:
            raise StopRun(f"replay checked steps up to {self.stop_after}")
        if self.first_step is None:
            self.first_step = step
        self.last_step = step
        recorded = self.order.get(step)
        rec: dict[str, Any] = {"step": step, "batch_digest": formats.batch_digest(computed)}
        if recorded is None:
            rec["order"] = "not recorded"
            self._diverged("order", step, detail="the original recorded no batch for this step")
            return computed, rec
        recorded_list = list(recorded)
        rec["recorded_batch_digest"] = formats.batch_digest(recorded_list)
        if recorded_list == list(computed):
            rec["order"] = "match"
        else:
            rec["order"] = "differs"
            changed = [i for i, (a, b) in enumerate(zip(recorded_list, computed, strict=False)) if a != b]
            first = changed[0] if changed else min(len(recorded_list), len(computed))
            self._diverged("order", step, position=first,
                           recorded_sample=recorded_list[first] if first < len(recorded_list) else None,
                           computed_sample=computed[first] if first < len(computed) else None)
        return recorded_list, rec

    def log(self, step: int, metrics: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
        self.steps_checked += 1
        orig = self.metrics.get(step)
        loss = metrics.get("loss")
        recorded = formats.as_float(orig.get("loss")) if orig is not None else None  # "NaN": a NaN, strict JSON
        if recorded is None or not isinstance(loss, float):
            rec["loss"] = "not compared"
            return rec
        a, b = recorded, loss
        rec.update({"loss_recorded": a, "loss": b})
        if formats.same_loss(a, b):
            rec["loss_match"] = True
        else:
            diff = abs(a - b)
            self.max_loss_diff = max(self.max_loss_diff, diff)
            rec.update({"loss_match": False, "loss_abs_diff": diff})
            self._diverged("loss", step, loss_recorded=a, loss=b, abs_diff=diff,
                           order_matched=rec.get("order") == "match")
        return rec

    def checkpoint(self, step: int, hexd: str) -> dict[str, Any] | None:
        expected = self.checkpoints.get(step)
        if expected is None:
            return None
        self.checkpoints_checked += 1
        match = expected == hexd
        if not match:
            self._diverged("checkpoint", step, expected=f"sha256:{expected}", actual=f"sha256:{hexd}")
        return {"step": step, "checkpoint": formats.checkpoint_name(step), "sha256_recorded": expected,
                "sha256": hexd, "checkpoint_match": match}

    def summary(self, original_root_digest: str | None) -> dict[str, Any]:
        expected_steps = [s for s in sorted(self.metrics)
                          if (self.first_step is None or s >= self.first_step)
                          and (self.last_step is None or s <= self.last_step)]
        return {
            "schema": formats.REPRODUCTION_SCHEMA,
            "original": {"root_digest": original_root_digest, "run_id": self.original.name},
            "steps_checked": self.steps_checked,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "steps_expected": len(expected_steps),
            "checkpoints_checked": self.checkpoints_checked,
            "divergences": self.divergences,
            "first_divergence": self.first_divergence,
            "max_loss_abs_diff": self.max_loss_diff,
            "bitwise": self.first_divergence is None and self.steps_checked == len(expected_steps)
                       and self.steps_checked > 0,
        }


def merge_rank_summaries(summary: dict[str, Any], root: Path, world_size: int) -> dict[str, Any]:
    """Rank 0's summary with every other rank's divergences folded in (reproduction/summary.rank<R>.json).

    The counts (steps_checked, checkpoints_checked) stay rank 0's, as in reproduction/steps.jsonl;
    `ranks` lists each rank's summary, and `bitwise` holds only if every rank's does.
    """
    out = dict(summary)
    out["divergences"] = dict(summary["divergences"])
    ranks = [{"rank": 0, "bitwise": summary["bitwise"], "steps_checked": summary["steps_checked"],
              "first_divergence": summary["first_divergence"]}]
    rels = {r: SUMMARY.replace(".json", f".rank{r}.json") for r in range(1, world_size)}
    try:
        with reader.Bundle.of_files(root, list(rels.values())) as b:  # the other ranks' summaries, typed
            others = {r: b.record(records.ReproductionSummary, rel) for r, rel in rels.items() if b.has(rel)}
    except (reader.Refused, reader.BundleFileError) as exc:
        raise formats.FormatError(str(exc)) from None
    for r, rel in rels.items():
        other = others.get(r)
        if other is None:
            ranks.append({"rank": r, "bitwise": False, "missing": rel.rsplit("/", 1)[-1]})
            out["bitwise"] = False
            continue
        for k, v in other.divergences.items():
            out["divergences"][k] = out["divergences"].get(k, 0) + v
        first = other.first_divergence
        if first is not None and first_divergence([out["first_divergence"], first]) is first:
            out["first_divergence"] = {**first, "rank": r}
        out["bitwise"] = bool(out["bitwise"] and other.bitwise)
        ranks.append({"rank": r, "bitwise": other.bitwise, "steps_checked": other.steps_checked,
                      "first_divergence": first})
    out["world_size"] = world_size
    out["ranks"] = ranks
    return out


def original_root_digest(original: Path) -> str | None:
    """The root digest the original's seal states (None when it has no readable seal)."""
    try:
        with reader.Bundle.of_files(original, [formats.MANIFEST]) as b:
            return formats.parse_oms_statement(b.json(formats.MANIFEST))[0] if b.has(formats.MANIFEST) else None
    except (reader.Refused, reader.BundleFileError, formats.FormatError):
        return None
