"""torchrun relaunches: workers started again by torch elastic after a failure (`--max-restarts N`,
TORCHELASTIC_RESTART_COUNT > 0) continue the previous attempt's record as its next segment.

Every run under torchrun records `torchelastic` in run.json (torch elastic's run id, restart count,
max restarts). A relaunched run finds the previous attempt's bundle in its runs folder (same
torch elastic run id, restart count one less), seals it as `prov seal` would if it was left
running (its rank 0 killed before it could seal), and offers its latest valid checkpoint
(`Run.resume_point()`) for the script to restore: the restore links the segment (root digest,
checkpoint digest) and writes the `restart` note.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from provenance import formats

_RUN_ID, _RESTARTS, _MAX = "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS"
MAX_SCANNED = 10_000  # bundles of a runs folder looked at for the previous attempt (the newest)


def elastic_facts() -> dict[str, Any] | None:
    """torch elastic's facts of this worker (None outside torchrun)."""
    env = os.environ
    if _RUN_ID not in env:
        return None

    def num(key: str) -> int | None:
        try:
            return int(env[key])
        except (KeyError, ValueError):
            return None

    return {"run_id": env[_RUN_ID], "restart_count": num(_RESTARTS) or 0, "max_restarts": num(_MAX)}


def _info(p: Path) -> dict[str, Any] | None:
    try:
        info = formats.read_json(p / formats.RUN_JSON)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def previous_attempt(runs_dir: Path, facts: dict[str, Any] | None, exclude: str | None = None) -> Path | None:
    """The bundle of the attempt torch elastic ran before this one (same run id, restart count - 1)."""
    if not facts or not facts.get("restart_count") or not runs_dir.is_dir():
        return None
    want = facts["restart_count"] - 1
    found: list[tuple[str, Path]] = []
    for i, p in enumerate(sorted(runs_dir.iterdir(), reverse=True)):  # run ids start with their UTC time: newest first
        if i >= MAX_SCANNED:
            break
        if p.name == exclude or not (p / formats.RUN_JSON).is_file():
            continue
        info = _info(p)
        te = (info or {}).get("torchelastic")
        if isinstance(te, dict) and te.get("run_id") == facts["run_id"] and te.get("restart_count") == want:
            found.append((str(info.get("started_at") or ""), p))  # type: ignore[union-attr]
    return max(found)[1] if found else None


def seal_if_left_running(prev: Path) -> dict[str, Any] | None:
    """Seal the previous attempt as interrupted when its rank 0 died before sealing (rank 0 only); one
    that ended but is not sealed yet (its seal deferred to a detached sealer) is waited for, at most 60 s,
    then sealed. Returns prov seal's result, or None when it was sealed already (or cannot be: left as it is)."""
    info = _info(prev)
    if info is None:
        return None
    if info.get("status") != "running":  # ended; its seal may still be on its way (rank 0's detached sealer)
        deadline = time.monotonic() + 60
        while not (prev / formats.MANIFEST).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if (prev / formats.MANIFEST).exists():
            return None
    from provenance.bundle import BundleError
    from provenance.recover import seal_run

    try:
        return seal_run(prev)
    except BundleError:
        return None


def latest_checkpoint(prev: Path) -> Path | None:
    """The latest checkpoint of a bundle's index whose files are there (restore verifies their digests)."""
    idx = prev / formats.CHECKPOINT_INDEX
    if not idx.is_file():
        return None
    try:
        entries = formats.read_json(idx).get("checkpoints", [])
    except (OSError, ValueError):
        return None
    for e in sorted((e for e in entries if isinstance(e, dict) and isinstance(e.get("step"), int)
                     and isinstance(e.get("path"), str)), key=lambda e: -e["step"]):
        p = prev / e["path"].rstrip("/")
        files = e.get("files") if e.get("format") == formats.DCP_FORMAT else [{"path": e["path"]}]
        if all(isinstance(f, dict) and (prev / str(f.get("path"))).is_file() for f in files or []) and p.exists():
            return p
    return None


def continued_from(original: Path, info: dict[str, Any]) -> tuple[Path, Path] | None:
    """A torchrun-relaunched segment's previous bundle and the checkpoint in it that it continued from
    (run.json `relaunch` and `segment`), found at the recorded path or next to `original`; None when it
    was no relaunch or the checkpoint is not there."""
    seg, rel = info.get("segment"), info.get("relaunch")
    if not isinstance(seg, dict) or not isinstance(rel, dict):
        return None
    prev, ck = seg.get("previous") or {}, seg.get("checkpoint") or {}
    if not isinstance(prev, dict) or not isinstance(ck, dict) or not isinstance(prev.get("run_id"), str) \
            or not isinstance(ck.get("path"), str):
        return None
    for where in (Path(str(prev.get("path") or "")), original.parent / prev["run_id"]):
        if where.name == prev["run_id"] and (where / ck["path"]).exists():
            return where, where / ck["path"]
    return None
