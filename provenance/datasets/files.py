"""Which files of a folder are data: regular files, sorted, VCS and cache folders skipped."""

from __future__ import annotations

import os
from pathlib import Path

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
