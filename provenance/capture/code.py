"""Capture the code that runs: git facts, uncommitted changes, and a source snapshot."""

from __future__ import annotations

import fnmatch
import io
import os
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance.archive import TarReader
from provenance.hashing import sha256_bytes
from provenance.redact import Redactor, strip_url_credentials

# Outside a git repository, the snapshot walks the folder and skips these.
_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "runs", "data", "wandb", ".cache", ".pytest_cache",
              ".ruff_cache", "node_modules", ".mypy_cache", ".dvc", ".idea", ".vscode"}
MAX_SNAPSHOT_FILE = 8 << 20  # larger files are not source: listed as skipped, not archived
# Files that hold secrets by convention: never archived nor put in the patch, in git or not (code.json
# lists the ones it left out). Matched against each file's name, case-insensitively.
SECRET_FILE_PATTERNS = (".env", ".env.*", ".envrc", "*.pem", "*.key", "*.p12", "*.pfx", "*.keystore", "*.jks",
                        "credentials", "credentials.*", "credentials-*", "credentials_*", ".netrc", "_netrc",
                        ".pypirc", ".git-credentials", ".npmrc", "id_rsa*", "id_dsa*", "id_ecdsa*",
                        "id_ed25519*", "*.ppk", "service-account*.json")


def is_secret_file(name: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatchcase(base, pat) for pat in SECRET_FILE_PATTERNS)


def _excluded_prefixes(root: Path, exclude: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The folders and files to keep out, as paths relative to root (those outside root do not matter)."""
    out = set()
    for e in exclude:
        try:
            rel = Path(e).resolve().relative_to(root)
        except (ValueError, OSError):
            continue
        if rel.parts:  # the code root itself (e.g. data read from the working folder) is never excluded
            out.add(rel.as_posix())
    return sorted(out)


def _bundle_folders(names: Sequence[str]) -> set[str]:
    """Folders that hold a run bundle (run.json beside code/code.json): earlier runs are never code."""
    present = set(names)
    return {n[: -len("/run.json")] for n in names
            if n.endswith("/run.json") and f"{n[: -len('/run.json')]}/code/code.json" in present}


def _kept(name: str, prefixes: Sequence[str]) -> bool:
    return not any(name == p or name.startswith(p + "/") for p in prefixes)


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


def _list_files(root: Path, in_git: bool, prefixes: Sequence[str] = ()) -> list[str]:
    return [n for n in _all_files(root, in_git, prefixes) if _kept(n, prefixes)]


def _all_files(root: Path, in_git: bool, prefixes: Sequence[str]) -> list[str]:
    if in_git:
        out = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        names = [n for n in (out or "").split("\0") if n]
        return sorted({n for n in names if (root / n).is_file() and not (root / n).is_symlink()})
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath).relative_to(root).as_posix()
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")
                             and _kept(d if here == "." else f"{here}/{d}", prefixes))
        for f in filenames:
            p = Path(dirpath) / f
            if p.is_symlink() or f.endswith((".pyc", ".tmp")):
                continue
            found.append(p.relative_to(root).as_posix())
    return sorted(found)


def deterministic_tar(root: Path, names: list[str], redactor: Redactor | None = None,
                      redacted: list[str] | None = None,
                      as_patch: set[str] | None = None) -> tuple[bytes, dict[str, str], list[str]]:
    """A tar whose bytes depend only on the files' names, contents and exec bits.

    With a redactor, the secret values it knows are masked in every file, and the files that
    the patch also holds (`as_patch`: untracked or changed; None: all) get the patch's whole
    redaction, URL credentials included. Such files are appended to `redacted`; the digests
    are those of the archived bytes.
    """
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
            if redactor is not None:
                clean = redactor.bytes(data) if as_patch is None or name in as_patch else redactor.values_bytes(data)
                if clean != data and redacted is not None:
                    redacted.append(name)
                data = clean
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o755 if st.st_mode & 0o111 else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
            digests[name] = sha256_bytes(data)
    return buf.getvalue(), digests, skipped


def capture_code(path: str | os.PathLike[str] | None = None, *, redactor: Redactor | None = None,
                 exclude: Sequence[str | os.PathLike[str]] = ()) -> CodeCapture:
    """Capture the repository containing `path` (default: cwd), or the folder itself outside git.

    Files named like secrets (SECRET_FILE_PATTERNS) and everything under `exclude` (the runs
    folder, declared data and outputs) are left out of the snapshot and the patch; with a
    redactor, secret values inside the archived files are masked as they are in the patch.
    """
    start = Path(path or Path.cwd()).resolve()
    top = git_toplevel(start)
    root = top or start
    prefixes = _excluded_prefixes(root, exclude)
    prefixes = sorted(set(prefixes) | _bundle_folders(_all_files(root, top is not None, prefixes)))
    facts: dict[str, Any] = {"root_name": root.name, "in_git": top is not None}
    diff = b""
    secret_files: set[str] = set()
    if top is not None:
        commit = (_git(root, "rev-parse", "HEAD") or "").strip() or None
        branch = (_git(root, "rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None
        remote = (_git(root, "config", "--get", "remote.origin.url") or "").strip() or None
        status = _git(root, "status", "--porcelain", "-z", "--untracked-files=all") or ""
        untracked = [e[3:] for e in status.split("\0") if e.startswith("?? ") and _kept(e[3:], prefixes)]
        secret_files |= {n for n in untracked if is_secret_file(n)}
        untracked = [n for n in untracked if not is_secret_file(n)]
        keep_out = [f":(exclude,glob)**/{pat}" for pat in SECRET_FILE_PATTERNS] + \
                   [f":(exclude,literal){p}" for p in prefixes]
        tracked_diff = (_git(root, "diff", "HEAD", "--binary", "--", ".", *keep_out) if commit else "") or ""
        changed = (_git(root, "diff", "HEAD", "--name-only", "-z") if commit else "") or ""
        secret_files |= {n for n in changed.split("\0") if n and is_secret_file(n)}
        diff = tracked_diff.encode("utf-8", "surrogateescape") + _untracked_patch(root, untracked)
        as_patch: set[str] | None = set(untracked) | {n for n in changed.split("\0") if n}
        facts.update({
            "commit": commit,
            "branch": branch,
            "remote_url": strip_url_credentials(remote) if remote else None,
            "dirty": bool(status.strip()),
            "untracked_files": sorted(untracked),
        })
    else:
        as_patch = None  # outside git every file is as the patch would show it
        facts.update({"commit": None, "branch": None, "remote_url": None, "dirty": None, "untracked_files": []})
    names = _list_files(root, top is not None, prefixes)
    secret_files |= {n for n in names if is_secret_file(n)}
    names = [n for n in names if not is_secret_file(n)]
    redacted: list[str] = []
    snapshot, digests, skipped = deterministic_tar(root, names, redactor, redacted, as_patch)
    facts["snapshot"] = {"format": "tar (pax, mtime 0, uid/gid 0)", "file_count": len(digests),
                         "skipped_files": skipped,
                         "secret_files_excluded": sorted(secret_files),
                         "secret_file_patterns": list(SECRET_FILE_PATTERNS),
                         "redacted_files": sorted(redacted),
                         "excluded_paths": prefixes}
    facts["files"] = {n: f"sha256:{d}" for n, d in sorted(digests.items())}
    return CodeCapture(facts=facts, diff=diff, snapshot=snapshot, files=digests)


def read_snapshot(tar_bytes: bytes) -> dict[str, bytes]:
    """Read the snapshot's regular files through archive.TarReader (the reader the audit's code check uses),
    refusing links, devices, folders, escaping, absolute and clashing names (ArchiveError, a ValueError)."""
    out: dict[str, bytes] = {}
    chunks = iter([tar_bytes])
    reader = TarReader(lambda: next(chunks, b""), "code snapshot")
    for m in reader:
        if m.is_dir:
            raise ValueError(f"code snapshot member {m.name!r} is not a regular file")
        out[m.name] = reader.read()
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
