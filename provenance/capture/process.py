"""Which process a run is: its pid, its start time and the boot it started in.

A pid alone does not name a process: once the run's process is gone the kernel may
hand the same pid to another one. On Linux, field 22 of /proc/<pid>/stat (the start
time in clock ticks since boot) together with the boot id names it for good. run.json
records both at start, so `prov seal` can tell the run's own process from a stranger
that reused its pid, and a zombie (killed, not yet reaped by its parent) from a live run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_PROC = Path("/proc")


def _boot_id() -> str | None:
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip() or None
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards), or None."""
    try:
        raw = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # the command name is in parentheses and may itself hold spaces and parentheses
    end = raw.rfind(b")")
    if end < 0:
        return None
    return raw[end + 1:].decode("ascii", "replace").split()


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """{"pid", "start_ticks", "boot_id"} of a process (default: this one); None where unknown."""
    pid = os.getpid() if pid is None else pid
    fields = _stat_fields(pid)
    start: int | None = None
    if fields is not None and len(fields) > 19:
        try:
            start = int(fields[19])  # field 22: starttime
        except ValueError:
            start = None
    return {"pid": pid, "start_ticks": start, "boot_id": _boot_id()}


def process_state(pid: int, identity: dict[str, Any] | None = None) -> str:
    """'alive', 'zombie', 'gone' or 'other' (the pid now names another process).

    Without /proc (not Linux) a zombie cannot be told from a live process: 'alive'.
    """
    if pid <= 0:
        return "gone"
    if identity is not None and identity.get("boot_id") and _boot_id() and identity["boot_id"] != _boot_id():
        return "gone"  # the machine rebooted since the run started
    if not _PROC.joinpath("self").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "gone"
        except PermissionError:
            return "alive"
        return "alive"
    fields = _stat_fields(pid)
    if fields is None or not fields:
        return "gone"
    if fields[0] in ("Z", "X", "x"):
        return "zombie"
    want = identity.get("start_ticks") if identity else None
    if isinstance(want, int) and len(fields) > 19 and fields[19].isdigit() and int(fields[19]) != want:
        return "other"
    return "alive"
