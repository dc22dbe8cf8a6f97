"""DVC: datasets tracked by DVC, fetched through DVC, and bundles kept in a DVC remote.

* A dataset tracked by DVC (a `<path>.dvc` file next to it, or an output in `dvc.lock`)
  is manifested with its DVC md5 as well as sha256: the data manifest's source is
  {"type": "dvc", "dvc_file", "dvc_path", "md5", ...} and its `dvc` entry lists each
  file's md5. The files are checked against DVC's md5 first (DVC 3 `hash: md5`: the md5
  of the bytes; for a folder, md5 of DVC's sorted JSON listing, plus ".dir"), so a
  workspace that differs from what DVC tracks is refused like any other data mismatch.
* A tracked dataset that is missing from the workspace is fetched with `dvc pull`
  (`fetch`); a reproduction calls it with the recorded source.
* `push_bundle` / `pull_bundle` keep a sealed bundle in a DVC remote:
  `dvc add --to-remote -o bundles/<run_id> runs/<run_id>` writes `bundles/<run_id>.dvc`
  (the pointer to commit) and uploads the files; `dvc pull bundles/<run_id>.dvc` brings
  them back, and the seal is checked.

DVC runs as the `dvc` command (the one next to this interpreter when there is one),
always with DVC_NO_ANALYTICS=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from provenance.capture.data import DataMismatch
from provenance.datasets.files import list_data_files

BUNDLES_DIR = "bundles"


class DvcError(RuntimeError):
    """A DVC command failed or a path is not in a DVC repository; the message says which."""


def dvc_env() -> dict[str, str]:
    env = dict(os.environ)
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def dvc_command() -> list[str]:
    local = Path(sys.executable).with_name("dvc")
    if local.is_file():
        return [str(local)]
    found = shutil.which("dvc")
    if found:
        return [found]
    return [sys.executable, "-m", "dvc"]


def run_dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*dvc_command(), *args], cwd=cwd, env=dvc_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise DvcError(f"dvc {' '.join(args)} (in {cwd}) failed with status {proc.returncode}:\n"
                       f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def repo_root(path: Path) -> Path | None:
    """The nearest folder at or above `path` holding a .dvc/ folder."""
    p = Path(path).resolve()
    for d in (p, *p.parents):
        if (d / ".dvc").is_dir():
            return d
    return None


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def dir_md5(file_md5s: dict[str, str]) -> str:
    """DVC's md5 of a folder: md5 of the sorted JSON listing of {md5, relpath}, then '.dir'."""
    listing = sorted(({"md5": m, "relpath": r} for r, m in file_md5s.items()), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode("utf-8"), usedforsecurity=False).hexdigest() + ".dir"


def _tracked_entry(path: Path, root: Path) -> tuple[Path, dict[str, Any]] | None:
    """(the file that tracks `path`, its out entry): `<path>.dvc`, or an output in a dvc.lock."""
    dvc_file = path.with_name(path.name + ".dvc")
    if dvc_file.is_file():
        data = yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}
        for out in data.get("outs") or []:
            if (dvc_file.parent / str(out.get("path", ""))).resolve() == path:
                return dvc_file, out
    folders = [p for p in path.parents if p == root or root in p.parents]
    for lock in (d / "dvc.lock" for d in folders):
        if not lock.is_file():
            continue
        data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
        for stage in (data.get("stages") or {}).values():
            for out in stage.get("outs") or []:
                if (lock.parent / str(out.get("path", ""))).resolve() == path:
                    return lock, out
    return None


def tracking_info(path: Path) -> dict[str, Any] | None:
    """DVC facts of a tracked file or folder (checked against DVC's md5), or None when DVC does not track it."""
    path = Path(path).resolve()
    root = repo_root(path.parent if path.is_file() else path)
    if root is None:
        return None
    found = _tracked_entry(path, root)
    if found is None:
        return None
    tracker, out = found
    expected = str(out.get("md5") or "")
    hash_name = out.get("hash", "md5-dos2unix")
    if path.is_file():
        md5s = {path.name: md5_file(path)}
        actual = md5s[path.name]
    else:
        md5s = {rel: md5_file(path / rel) for rel in list_data_files(path)}
        actual = dir_md5(md5s)
    if hash_name == "md5" and expected and actual != expected:
        raise DataMismatch(f"{path}: does not match what DVC tracks in {tracker.relative_to(root).as_posix()}: "
                           f"expected md5:{expected}, found md5:{actual} (run `dvc status`, `dvc checkout` or "
                           f"`dvc add`)")
    source = {"dvc_file": tracker.relative_to(root).as_posix(), "dvc_path": path.relative_to(root).as_posix(),
              "md5": expected or None, "hash": hash_name, "size": out.get("size"), "nfiles": out.get("nfiles"),
              "repo_root_name": root.name, "remote": _default_remote(root)}
    return {"source": source,
            "manifest": {"md5": expected or None, "verified": hash_name == "md5" and bool(expected),
                         "files_md5": dict(sorted(md5s.items()))}}


def _default_remote(root: Path) -> str | None:
    """core.remote of the repository's .dvc/config (config.local wins), without running dvc."""
    import configparser

    found = None
    for name in ("config", "config.local"):
        cp = configparser.ConfigParser(interpolation=None)
        try:
            cp.read(root / ".dvc" / name, encoding="utf-8")
        except configparser.Error:
            continue
        found = cp.get("core", "remote", fallback=found)
    return found


def fetch(repo: Path, source: dict[str, Any], remote: str | None = None) -> Path:
    """Bring a DVC-tracked dataset into `repo` with `dvc pull` (the recorded .dvc file or dvc.lock output)."""
    repo = Path(repo)
    if not (repo / ".dvc").is_dir():
        raise DvcError(f"{repo}: not a DVC repository (no .dvc/ folder)")
    if not (repo / ".git").exists():  # e.g. a code snapshot materialised for a reproduction
        run_dvc(["config", "--local", "core.no_scm", "true"], repo)
    target = source["dvc_file"] if source["dvc_file"].endswith(".dvc") else source["dvc_path"]
    run_dvc(["pull", *(["-r", remote] if remote else []), target], repo)
    path = repo / source["dvc_path"]
    if not path.exists():
        raise DvcError(f"dvc pull {target} did not bring {source['dvc_path']}")
    return path


def pull_if_tracked(path: Path) -> bool:
    """Fetch a missing path that a `<path>.dvc` file tracks; True if it was pulled."""
    path = Path(path).absolute()
    dvc_file = path.with_name(path.name + ".dvc")
    root = repo_root(path.parent) if path.parent.exists() else None
    if path.exists() or root is None or not dvc_file.is_file():
        return False
    run_dvc(["pull", dvc_file.resolve().relative_to(root).as_posix()], root)
    return path.exists()


def push_bundle(bundle: Path, remote: str | None = None, dest: str | None = None) -> Path:
    """Upload a sealed bundle to a DVC remote; return the pointer file (bundles/<run_id>.dvc) to commit."""
    bundle = Path(bundle).resolve()
    if not (bundle / "manifest.json").is_file():
        raise DvcError(f"{bundle}: not a sealed bundle (manifest.json is missing)")
    root = repo_root(Path.cwd()) or repo_root(bundle)
    if root is None:
        raise DvcError("not inside a DVC repository: run `dvc init` and `dvc remote add -d NAME URL` first")
    out = Path(dest) if dest else Path(BUNDLES_DIR) / bundle.name
    out_abs = out if out.is_absolute() else root / out
    out_abs.parent.mkdir(parents=True, exist_ok=True)
    args = ["add", "--to-remote", *(["-r", remote] if remote else []), "-o", str(out_abs.relative_to(root)),
            str(bundle)]
    run_dvc(args, root)
    return out_abs.with_name(out_abs.name + ".dvc")


def pull_bundle(pointer: Path, remote: str | None = None) -> Path:
    """Download a bundle from a DVC remote by its pointer (.dvc) file and check its seal; return its folder."""
    pointer = Path(pointer).resolve()
    if pointer.suffix != ".dvc":
        pointer = pointer.with_name(pointer.name + ".dvc")
    root = repo_root(pointer.parent)
    if root is None or not pointer.is_file():
        raise DvcError(f"{pointer}: no such DVC pointer file in a DVC repository")
    run_dvc(["pull", *(["-r", remote] if remote else []), pointer.relative_to(root).as_posix()], root)
    folder = pointer.with_suffix("")
    from provenance import formats
    from provenance.bundle import sealable_files
    from provenance.hashing import hash_files

    _, resources = formats.parse_oms_statement(formats.read_json(folder / formats.MANIFEST))
    names = sealable_files(folder)
    if sorted(names) != sorted(resources):
        raise DvcError(f"{folder}: the pulled files are not the files its seal lists")
    digests = hash_files([folder / n for n in names])
    bad = [n for n in names if digests[folder / n] != resources[n]]
    if bad:
        raise DvcError(f"{folder}: pulled files do not match the seal: {', '.join(bad[:5])}")
    return folder
