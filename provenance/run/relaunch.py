"""torchrun relaunches: workers started again by torch elastic after a failure (`--max-restarts N`,
TORCHELASTIC_RESTART_COUNT > 0) continue the previous attempt's record as its next segment.

Every run under torchrun records `torchelastic` in run.json (torch elastic's run id, restart count,
max restarts). A relaunched run finds the previous attempt's bundle in its runs folder (same
torch elastic run id, restart count one less, and the same job: world size, config digest and
command digest as recorded, started before it; an attempt that shares the run id but not the job
is not linked, and run.json says why), seals it as `prov seal` would if it was left
running (its rank 0 killed before it could seal), and offers its latest valid checkpoint
(`Run.resume_point()`) for the script to restore: the restore links the segment (root digest,
checkpoint digest) and writes the `restart` note.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
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


def _record(p: Path, rel: str) -> dict[str, Any] | None:
    """A bundle's JSON record (run.json, config.json) as a dict; None when missing, unreadable or not an object."""
    try:
        doc = formats.read_json(p / rel)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _info(p: Path) -> dict[str, Any] | None:
    return _record(p, formats.RUN_JSON)


# what a relaunch of the same job shares with the attempt before it: torch elastic starts the same command
# (same config, same world size) again. Two jobs that reuse one `--rdzv-id` in one runs folder differ here.
MATCH_KEYS = ("world_size", "config_digest", "command_digest")


def attempt_identity(world_size: Any, config: dict[str, Any] | None) -> dict[str, Any]:
    """The facts a relaunch must share with its previous attempt (MATCH_KEYS), from run.json's world size
    and config.json's record (its `digest` and `command_digest`); a missing one is None."""
    config = config if isinstance(config, dict) else {}
    return {"world_size": world_size, "config_digest": config.get("digest"),
            "command_digest": config.get("command_digest")}


@dataclass
class AttemptMatch:
    """The previous attempt found for a relaunch: `path` (None when none matched), the run ids of every
    attempt that matched (newest first: the first is taken), and the attempts that share torch elastic's
    run id and restart count but not the job (`not_linked`: run id, path, and what differs)."""

    path: Path | None = None
    matched: list[str] = field(default_factory=list)
    not_linked: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """run.json `relaunch.match`: what was compared and what was found."""
        return {"on": ["torchelastic.run_id", "torchelastic.restart_count", *MATCH_KEYS, "started before"],
                "matched": list(self.matched), "not_linked": [dict(c) for c in self.not_linked]}

    def text(self) -> str:
        """How the previous attempt was chosen, for the restart note ('' when plain)."""
        out = ""
        if len(self.matched) > 1:
            out += (f"; {len(self.matched)} earlier attempts match (same torch elastic run id and restart count, "
                    f"config, command and world size): the latest, {self.matched[0]}, is taken")
        for c in self.not_linked:
            out += f"; {c['run_id']} shares the torch elastic run id but is another job ({_differs(c)}): not linked"
        return out


def _differs(c: dict[str, Any]) -> str:
    return ", ".join(f"{d['what']} {d['previous']!r} there, {d['this']!r} here" for d in c["differs"])


def find_previous_attempt(runs_dir: Path, facts: dict[str, Any] | None, this: dict[str, Any] | None = None,
                          started_at: str | None = None, exclude: str | None = None) -> AttemptMatch:
    """The bundle of the attempt torch elastic ran before this one: same torch elastic run id, restart count
    one less, and — given `this` (attempt_identity of this run) and `started_at` — the same world size,
    config digest and command digest, started before this run. Several match: the latest started."""
    match = AttemptMatch()
    if not facts or not facts.get("restart_count") or not runs_dir.is_dir():
        return match
    want = facts["restart_count"] - 1
    found: list[tuple[str, str, Path]] = []
    for i, p in enumerate(sorted(runs_dir.iterdir(), reverse=True)):  # run ids start with their UTC time: newest first
        if i >= MAX_SCANNED:
            break
        if p.name == exclude or not (p / formats.RUN_JSON).is_file():
            continue
        info = _info(p)
        te = (info or {}).get("torchelastic")
        if not (isinstance(te, dict) and te.get("run_id") == facts["run_id"] and te.get("restart_count") == want):
            continue
        assert info is not None
        started = str(info.get("started_at") or "")
        differs: list[dict[str, Any]] = []
        if this is not None:
            config = _record(p, formats.CONFIG_JSON)
            theirs = attempt_identity(info.get("world_size", 1), config)
            differs = [{"what": k.replace("_", " "), "previous": theirs[k], "this": this[k]}
                       for k in MATCH_KEYS if theirs[k] != this.get(k)]
            if config is None:
                differs.insert(0, {"what": formats.CONFIG_JSON, "previous": "missing or unreadable", "this": "written"})
        if started_at is not None and not started < started_at:
            differs.append({"what": "started at", "previous": started, "this": f"{started_at} (it must be earlier)"})
        if differs:
            match.not_linked.append({"run_id": str(info.get("run_id") or p.name), "path": str(p), "differs": differs})
        else:
            found.append((started, p.name, p))
    found.sort(reverse=True)
    match.matched = [str((_info(p) or {}).get("run_id") or p.name) for _, _, p in found]
    match.path = found[0][2] if found else None
    return match


def previous_attempt(runs_dir: Path, facts: dict[str, Any] | None, exclude: str | None = None) -> Path | None:
    """The bundle of the attempt torch elastic ran before this one by run id and restart count only
    (find_previous_attempt also checks that it is the same job)."""
    return find_previous_attempt(runs_dir, facts, exclude=exclude).path


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
