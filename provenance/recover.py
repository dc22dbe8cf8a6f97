"""Seal a run folder after the fact: a run killed with SIGKILL, or a note added to a sealed run."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from provenance import formats
from provenance.bundle import BundleError, clean_temp_files, seal_folder
from provenance.hashing import sha256_file


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _trim_jsonl(path: Path) -> bool:
    """Drop a torn (unterminated) last line; return whether the file changed."""
    if not path.exists():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    cut = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(cut)
    return True


def _trim_order(root: Path) -> list[str]:
    """Make each rank's order files agree: whole step records, and exactly their ids."""
    repaired = []
    for steps_path in sorted((root / formats.ORDER_DIR).glob("rank*.steps.bin")):
        ids_path = steps_path.with_name(steps_path.name.replace(".steps.bin", ".ids.u32"))
        raw = steps_path.read_bytes()
        usable = len(raw) - len(raw) % formats.ORDER_STEP_RECORD.size
        n_ids = sum(n for _s, n, _c in formats.ORDER_STEP_RECORD.iter_unpack(raw[:usable]))
        if usable != len(raw):
            with open(steps_path, "r+b") as f:
                f.truncate(usable)
            repaired.append(steps_path.relative_to(root).as_posix())
        if ids_path.exists() and ids_path.stat().st_size != 4 * n_ids:
            if ids_path.stat().st_size < 4 * n_ids:
                raise BundleError(f"{ids_path.name}: holds fewer sample ids than its step records claim")
            with open(ids_path, "r+b") as f:
                f.truncate(4 * n_ids)
            repaired.append(ids_path.relative_to(root).as_posix())
    return repaired


def _reconcile_checkpoints(root: Path) -> list[str]:
    """Add checkpoints whose hashing had not finished when the run died to the index."""
    index_path = root / formats.CHECKPOINT_INDEX
    entries: list[dict[str, Any]] = []
    if index_path.exists():
        entries = list(formats.read_json(index_path).get("checkpoints", []))
    known = {e["path"] for e in entries}
    added = []
    for p in sorted((root / formats.CHECKPOINT_DIR).glob("step-*.safetensors")):
        rel = p.relative_to(root).as_posix()
        if rel in known:
            continue
        step = int(p.stem.split("-")[1])
        from provenance.capture.state import read_checkpoint_meta

        meta = read_checkpoint_meta(p)
        entries.append({"step": step, "path": rel, "sha256": sha256_file(p), "size": p.stat().st_size,
                        "tokens_seen": int(meta.get("tokens_seen", 0)), "time": formats.utc_now(),
                        "indexed_by": "prov seal"})
        added.append(rel)
    if added:
        formats.atomic_write_json(index_path, formats.checkpoint_index(entries))
    return added


def seal_run(root: str | os.PathLike[str], force: bool = False) -> dict[str, Any]:
    """Seal a run folder. A run left `running` by a dead process is marked `interrupted`.

    Returns {"root_digest", "status", "repaired", "indexed"}. Refuses a run whose
    process is still alive on this host unless force is set.
    """
    root = Path(root)
    run_json = root / formats.RUN_JSON
    if not run_json.is_file():
        raise BundleError(f"{root}: not a run folder ({formats.RUN_JSON} is missing)")
    info = formats.read_json(run_json)
    repaired: list[str] = []
    indexed: list[str] = []
    if info.get("status") == "running":
        pid = info.get("pid")
        if not force and info.get("host") == socket.gethostname() and isinstance(pid, int) and _pid_alive(pid):
            raise BundleError(f"{root}: the run is still going (pid {pid}); not sealing a live run")
        repaired += clean_temp_files(root)
        for rel in (formats.METRICS, formats.EVALS, formats.EVENTS, formats.NOTES):
            if _trim_jsonl(root / rel):
                repaired.append(rel)
        repaired += _trim_order(root)
        indexed = _reconcile_checkpoints(root)
        from provenance.capture import wrapped  # a captured command's records: torn tails, its own seeds

        info.update(wrapped.finalize(root))
        info.update({"status": "interrupted", "ended_at": formats.utc_now(), "exit_status": 137,
                     "error": {"type": "Killed", "message": "the run's process ended without sealing "
                               "(SIGKILL, power loss or OOM); sealed afterwards by `prov seal`",
                               "traceback": None},
                     "sealed_by": {"command": "prov seal", "time": formats.utc_now(), "repaired": repaired,
                                   "indexed_checkpoints": indexed}})
        metrics = list(formats.read_jsonl(root / formats.METRICS))
        info["last_step"] = metrics[-1]["step"] if metrics else None
        formats.atomic_write_json(run_json, info)
    digest = seal_folder(root)
    return {"root_digest": digest, "status": info.get("status"), "repaired": repaired, "indexed": indexed}
