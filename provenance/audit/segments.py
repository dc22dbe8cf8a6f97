"""The chain of segments of a restarted run: each resumed bundle names the previous one (run id and
root digest) and the checkpoint it continued from (path, step, digest) in run.json's `segment`.

verify_chain walks back to the first segment (the one that started at step 0): every previous
bundle is found next to the audited one or in a folder given (`prov audit --segments DIR`), its
integrity is verified (every file against its seal), its root digest must be the one the next
segment recorded, and the checkpoint must be in its index with the recorded digest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance import formats, reader
from provenance.audit.results import CheckResult, SkipCheck
from provenance.audit.view import BundleView

SEGMENTS_ENV = "PROV_SEGMENTS"  # folders holding previous segments (os.pathsep separated); --segments sets it


@dataclass
class Chain:
    segments: list[dict[str, Any]] = field(default_factory=list)  # newest first: run_id, path, from_step
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file or segment, message)

    @property
    def ok(self) -> bool:
        return not self.errors


def _find(run_id: str, recorded: str | None, dirs: Sequence[Path]) -> Path | None:
    for d in dirs:
        p = d / run_id
        if (p / formats.RUN_JSON).is_file():
            return p
    if recorded and (Path(recorded) / formats.RUN_JSON).is_file() and Path(recorded).name == run_id:
        return Path(recorded)
    return None


def verify_chain(root: str | os.PathLike[str], dirs: Sequence[str | os.PathLike[str]] = (),
                 max_segments: int = 1000) -> Chain:
    """Verify every previous segment of the run at `root`, back to the first one."""
    from provenance.audit import audit

    root = Path(root)
    search = [Path(d) for d in dirs] + [root.parent]
    chain = Chain()
    info = _run_json(root)
    seen = {info.get("run_id")}
    while isinstance(info.get("segment"), dict) and len(chain.segments) < max_segments:
        seg = info["segment"]
        prev, ck = seg.get("previous") or {}, seg.get("checkpoint") or {}
        run_id = prev.get("run_id")
        if not isinstance(run_id, str) or run_id in seen:
            chain.errors.append((str(root), f"segment of {info.get('run_id')}: a malformed or circular link"))
            break
        seen.add(run_id)
        where = _find(run_id, prev.get("path"), search)
        if where is None:
            chain.errors.append((run_id, f"the previous segment {run_id} (continued by {info.get('run_id')}) is "
                                         "not found: give its folder with --segments DIR"))
            break
        report = audit(where, checks=[])  # integrity only: every file against the seal, each byte read once
        integ = report.integrity
        if not integ.ok:
            bad = [d.name for d in (*integ.changed, *integ.missing, *integ.extra)]
            detail = f": {', '.join(bad[:5])} changed, missing or added" if bad else ""
            chain.errors.append((str(where), f"segment {run_id} does not verify against its seal{detail}"))
        root_now = f"sha256:{integ.root_actual}" if integ.root_actual else None
        if prev.get("root_digest") and root_now != prev["root_digest"]:
            chain.errors.append((str(where), f"segment {run_id} has root digest {root_now}; the next segment "
                                             f"{info.get('run_id')} recorded {prev['root_digest']} (changed since)"))
        seg_files = reader.Bundle.of_files(where, [formats.CHECKPOINT_INDEX])
        try:
            entries = seg_files.json(formats.CHECKPOINT_INDEX).get("checkpoints", []) \
                if seg_files.has(formats.CHECKPOINT_INDEX) else []
        except reader.BundleFileError as exc:
            raise formats.FormatError(f"{where}: {exc}") from None
        entry = next((e for e in entries if isinstance(e, dict) and e.get("path", "").rstrip("/") ==
                      str(ck.get("path", "")).rstrip("/")), None)
        if entry is None:
            chain.errors.append((str(where), f"segment {run_id}: checkpoint {ck.get('path')} is not in its index"))
        elif f"sha256:{entry.get('sha256')}" != ck.get("sha256") or entry.get("step") != ck.get("step"):
            chain.errors.append((str(where / str(ck.get("path"))), f"segment {run_id}: checkpoint {ck.get('path')} "
                                 f"is step {entry.get('step')} sha256:{entry.get('sha256')} in its index; the next "
                                 f"segment resumed from step {ck.get('step')} {ck.get('sha256')}"))
        chain.segments.append({"run_id": run_id, "path": str(where), "from_step": ck.get("step"),
                               "status": prev.get("status")})
        info = _run_json(where)
    return chain


def _run_json(root: Path) -> Any:
    """A segment's run.json, through reader.Bundle (bounded, never a link; FormatError names it)."""
    try:
        return reader.Bundle.of_files(root, [formats.RUN_JSON]).json(formats.RUN_JSON)
    except reader.BundleFileError as exc:
        raise formats.FormatError(f"{root}: {exc}") from None


def check_segments(view: BundleView, out: CheckResult) -> None:
    """the chain of restarted segments back to step 0"""
    seg = view.run_info.get("segment")
    if not isinstance(seg, dict):
        raise SkipCheck("not a resumed segment")
    dirs = [d for d in os.environ.get(SEGMENTS_ENV, "").split(os.pathsep) if d]
    chain = verify_chain(view.root, dirs)
    for where, msg in chain.errors:
        out.error(msg, file=where)
    n = len(chain.segments)
    out.summary = (f"{n} previous segment(s) verified back to step 0" if chain.ok
                   else f"{len(chain.errors)} problem(s) in {n} previous segment(s)")
