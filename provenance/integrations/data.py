"""Datasets named by a path: a local file or folder (possibly tracked by DVC), described for the manifest."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from provenance.capture.data import DatasetSpec

_SKIP = {".git", ".dvc", "__pycache__", ".cache"}
_LINE_SUFFIXES = (".jsonl", ".txt", ".csv", ".tsv")


def dataset_name(path: Path, taken: set[str] | None = None) -> str:
    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in path.name).strip(".-") or "data"
    name, i = base, 2
    while taken is not None and name in taken:
        name, i = f"{base}-{i}", i + 1
    if taken is not None:
        taken.add(name)
    return name


def list_data_files(path: Path) -> list[str]:
    """Regular files under a folder, relative posix paths, sorted (VCS and cache folders skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP and not (Path(dirpath) / d).is_symlink())
        for f in filenames:
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink() and not f.endswith(".dvc"):
                found.append(p.relative_to(path).as_posix())
    return sorted(found)


def local_dataset(path: str | os.PathLike[str], name: str | None = None, *, license: str | None = None,
                  in_bundle: bool = False, taken: set[str] | None = None,
                  source: dict[str, Any] | None = None) -> DatasetSpec:
    """A DatasetSpec for a local file or folder; DVC-tracked paths get their DVC facts too."""
    p = Path(path).resolve()
    from provenance.integrations import dvc

    fetched = not p.exists() and dvc.pull_if_tracked(p)  # a DVC-tracked dataset not in the workspace
    if fetched:
        print(f"fetched {path} through DVC (dvc pull)", file=sys.stderr)
    if p.is_file():
        root, files = p.parent, [p.name]
    elif p.is_dir():
        root, files = p, list_data_files(p)
        if not files:
            raise FileNotFoundError(f"dataset folder {path} holds no files")
    else:
        raise FileNotFoundError(f"dataset {path} does not exist")
    name = name or dataset_name(p, taken)
    if taken is not None:
        taken.add(name)
    src: dict[str, Any] = {"type": "local", "path": str(p)}
    extra: dict[str, Any] = {}
    tracked = dvc.tracking_info(p)
    if tracked is not None:
        src = {"type": "dvc", "path": str(p), **tracked["source"], "fetched": "dvc pull" if fetched else None}
        extra["dvc"] = tracked["manifest"]
    if source:
        src.update(source)
    samples = files[0] if len(files) == 1 and files[0].endswith(_LINE_SUFFIXES) else None
    return DatasetSpec(name=name, root=root, files=files, source=src, license=license, samples_file=samples,
                       in_bundle=in_bundle, extra=extra)
