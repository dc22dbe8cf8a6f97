"""Which files of a folder are data: regular files, sorted, VCS and cache folders skipped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SKIP = frozenset({".git", ".dvc", "__pycache__", ".cache"})


def list_data_files(path: Path) -> list[str]:
    """Regular files under a folder, relative posix paths, sorted (VCS and cache folders, symlinks and
    DVC pointer files skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP and not (Path(dirpath) / d).is_symlink())
        for f in filenames:
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink() and not f.endswith(".dvc"):
                found.append(p.relative_to(path).as_posix())
    return sorted(found)


def data_file_candidates(bundle_root: Path, manifest: dict[str, Any], rel: str,
                         data_root: str | None = None) -> tuple[Path | None, list[Path]]:
    """Where the bytes of a dataset file `rel` are, in order: an explicit data root, the files shipped in
    the bundle, $PROV_DATA_ROOT, the manifest's recorded local path. (the first that exists, every place
    looked at)."""
    cands = []
    if data_root:
        cands.append(Path(data_root) / rel)
    if isinstance(manifest.get("bundled_files"), str):
        cands.append(bundle_root / manifest["bundled_files"] / rel)
    env = os.environ.get("PROV_DATA_ROOT")
    if env:
        cands.append(Path(env) / rel)
    local = (manifest.get("source") or {}).get("local_path")
    if isinstance(local, str):
        cands.append(Path(local) / rel)
    return next((c for c in cands if c.is_file()), None), cands
