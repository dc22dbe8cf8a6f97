"""Audit check for what the capture layer of `prov run` records (provenance.capture.inject).

A captured command's checkpoints/index.json lists the files the command itself saved
(`captured: true`): they lie outside the bundle, at their recorded path, unless
`prov run --outputs` copied them. The check verifies the index's shape, that every file
hashed (capture/checkpoints.rank0.jsonl) is listed with the same digest, that each step
lies within the logged steps, and, for a file copied into outputs/, that its digest is one
of the copied files'. A native index is checked by the built-in check.
"""

from __future__ import annotations

import re

from provenance import audit, formats
from provenance.integrations.layout import OUTPUTS_INDEX
from provenance.records import CheckpointIndex

_HEX64 = re.compile(r"[0-9a-f]{64}")


def captured_checkpoints(native: audit.CheckFunc) -> audit.CheckFunc:
    def check(view: audit.BundleView, out: audit.CheckResult) -> None:
        try:
            idx = view.checkpoint_index()  # typed and strict; a malformed index is the native check's to name
        except audit.BundleFileError:
            idx = None
        if idx is None or idx.extra.get("captured") is not True:
            native(view, out)
            return
        _check(view, out, idx)

    check.__doc__ = native.__doc__
    check._captured = True  # type: ignore[attr-defined]
    return check


def _check(view: audit.BundleView, out: audit.CheckResult, idx: CheckpointIndex) -> None:
    rel = formats.CHECKPOINT_INDEX
    steps = view.metric_steps() or []
    last = steps[-1] if steps else 0
    copied: set[str] = set()
    outputs = view.try_json(OUTPUTS_INDEX) if view.has(OUTPUTS_INDEX) else None
    if isinstance(outputs, dict):
        for o in outputs.get("outputs") or []:
            for f in (o.get("files") or []) if isinstance(o, dict) else []:
                if isinstance(f, dict) and isinstance(f.get("sha256"), str):
                    copied.add(f["sha256"])
    listed: set[tuple[int, str, str]] = set()
    for i, e in enumerate(idx.checkpoints):
        if not _HEX64.fullmatch(e.sha256):
            out.error(f"checkpoints[{i}] needs a step, a path and a hex sha256", file=rel)
            continue
        role = e.extra.get("role")
        if role not in formats.CAPTURE_CHECKPOINT_ROLES:
            out.error(f"checkpoints[{i}] has role {role!r}, not one of "
                      f"{', '.join(formats.CAPTURE_CHECKPOINT_ROLES)}", file=rel)
        if not 0 <= e.step <= last:
            out.error(f"checkpoints[{i}] ({e.path}) was written after step {e.step}, but the run logged "
                      f"steps up to {last}", file=rel)
        listed.add((e.step, e.path, e.sha256))
    hashed_rel = formats.capture_paths(0).checkpoints
    if view.has(hashed_rel):
        records, problems = view.jsonl(hashed_rel)
        for p in problems:
            out.error(p, file=hashed_rel)
        for line, r in records:
            key = (r.get("step"), r.get("path"), r.get("sha256"))
            if key not in listed:
                out.error(f"line {line}: {r.get('path')} (step {r.get('step')}, sha256:{r.get('sha256')}) was hashed "
                          "but is not in the checkpoint index", file=hashed_rel)
    n_copied = sum(1 for _s, _p, h in listed if h in copied)
    out.summary = (f"{len(listed)} files saved by the command, hashed off the training thread; "
                   f"{n_copied} of them copied into outputs/")
