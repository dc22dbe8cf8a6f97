"""Capture the code that runs: git facts, uncommitted changes, and a source snapshot."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance.hashing import sha256_bytes
from provenance.redact import strip_url_credentials

# Outside a git repository, the snapshot walks the folder and skips these.
_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "runs", "data", "wandb", ".cache", ".pytest_cache",
              ".ruff_cache", "node_modules", ".mypy_cache", ".dvc", ".idea", ".vscode"}
MAX_SNAPSHOT_FILE = 8 << 20  # larger files are not source: listed as skipped, not archived


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=True,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.decode("utf-8", "surrogateescape")


def git_toplevel(path: Path) -> Path | None:
    out = _git(path, "rev-parse", "--show-toplevel")
    return Path(out.strip()) if out else None


@dataclass
class CodeCapture:
    """What was captured: facts for code.json, the patch, and the snapshot tar bytes."""

    facts: dict[str, Any]
    diff: bytes
    snapshot: bytes
    files: dict[str, str] = field(default_factory=dict)  # relative path -> hex sha256


def _untracked_patch(root: Path, names: list[str]) -> bytes:
    parts = []
    for n in names:
        p = root / n
        if not p.is_file() or p.stat().st_size > MAX_SNAPSHOT_FILE:
            continue
        out = subprocess.run(["git", "-C", str(root), "diff", "--no-index", "--binary", "--", "/dev/null", n],
                             capture_output=True)
        parts.append(out.stdout)
    return b"".join(parts)


def _list_files(root: Path, in_git: bool) -> list[str]:
    if in_git:
        out = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        names = [n for n in (out or "").split("\0") if n]
        return sorted({n for n in names if (root / n).is_file() and not (root / n).is_symlink()})
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for f in filenames:
            p = Path(dirpath) / f
            if p.is_symlink() or f.endswith((".pyc", ".tmp")):
                continue
            found.append(p.relative_to(root).as_posix())
    return sorted(found)


def deterministic_tar(root: Path, names: list[str]) -> tuple[bytes, dict[str, str], list[str]]:
    """A tar whose bytes depend only on the files' names, contents and exec bits."""
    buf = io.BytesIO()
    digests: dict[str, str] = {}
    skipped: list[str] = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            p = root / name
            try:
                st = p.stat()
                if st.st_size > MAX_SNAPSHOT_FILE:
                    skipped.append(name)
                    continue
                data = p.read_bytes()
            except OSError:
                skipped.append(name)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o755 if st.st_mode & 0o111 else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
            digests[name] = sha256_bytes(data)
    return buf.getvalue(), digests, skipped


def capture_code(path: str | os.PathLike[str] | None = None) -> CodeCapture:
    """Capture the repository containing `path` (default: cwd), or the folder itself outside git."""
    start = Path(path or Path.cwd()).resolve()
    top = git_toplevel(start)
    root = top or start
    facts: dict[str, Any] = {"root_name": root.name, "in_git": top is not None}
    diff = b""
    if top is not None:
        commit = (_git(root, "rev-parse", "HEAD") or "").strip() or None
        branch = (_git(root, "rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None
        remote = (_git(root, "config", "--get", "remote.origin.url") or "").strip() or None
        status = _git(root, "status", "--porcelain", "-z", "--untracked-files=all") or ""
        untracked = [e[3:] for e in status.split("\0") if e.startswith("?? ")]
        tracked_diff = (_git(root, "diff", "HEAD", "--binary") if commit else "") or ""
        diff = tracked_diff.encode("utf-8", "surrogateescape") + _untracked_patch(root, untracked)
        facts.update({
            "commit": commit,
            "branch": branch,
            "remote_url": strip_url_credentials(remote) if remote else None,
            "dirty": bool(status.strip()),
            "untracked_files": sorted(untracked),
        })
    else:
        facts.update({"commit": None, "branch": None, "remote_url": None, "dirty": None, "untracked_files": []})
    names = _list_files(root, top is not None)
    snapshot, digests, skipped = deterministic_tar(root, names)
    facts["snapshot"] = {"format": "tar (pax, mtime 0, uid/gid 0)", "file_count": len(digests),
                         "skipped_files": skipped}
    facts["files"] = {n: f"sha256:{d}" for n, d in sorted(digests.items())}
    return CodeCapture(facts=facts, diff=diff, snapshot=snapshot, files=digests)


def read_snapshot(tar_bytes: bytes) -> dict[str, bytes]:
    """Read the snapshot's regular files, refusing links, devices and escaping names."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        for m in tar.getmembers():
            name = m.name
            if not m.isfile():
                raise ValueError(f"code snapshot member {name!r} is not a regular file")
            if name.startswith("/") or ".." in Path(name).parts:
                raise ValueError(f"code snapshot member {name!r} escapes the snapshot")
            f = tar.extractfile(m)
            out[name] = f.read() if f else b""
    return out


def materialise_snapshot(tar_bytes: bytes, dest: Path) -> dict[str, str]:
    """Write the snapshot's files under dest; return {name: hex sha256}."""
    digests = {}
    for name, data in read_snapshot(tar_bytes).items():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        digests[name] = sha256_bytes(data)
    return digests
