"""Which files of a folder are data: regular files, sorted, VCS and cache folders skipped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from provenance import formats

SKIP = frozenset({".git", ".dvc", "__pycache__", ".cache"})


def list_data_files(path: Path) -> list[str]:
    """Regular files under a folder, relative posix paths, sorted (VCS and cache folders, symlinks and
    DVC pointer files skipped). One scandir a folder: the entries' types come from the directory itself,
    so listing 100,000 files costs no stat of any of them."""
    found: list[str] = []
    stack = [(os.fspath(path), "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in SKIP:
                        stack.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.is_file(follow_symlinks=False) and not entry.name.endswith(".dvc"):
                    found.append(prefix + entry.name)
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
    env = os.environ.get(formats.DATA_ROOT_ENV)
    if env:
        cands.append(Path(env) / rel)
    local = (manifest.get("source") or {}).get("local_path")
    if isinstance(local, str):
        cands.append(Path(local) / rel)
    return next((c for c in cands if c.is_file()), None), cands
