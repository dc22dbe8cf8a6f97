"""Datasets named by a path: a local file or folder (possibly tracked by DVC), described for the manifest."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from provenance.capture.data import DatasetSpec
from provenance.datasets.files import list_data_files
from provenance.integrations import dvc

__all__ = ["dataset_name", "files_dataset", "hub_dataset", "list_data_files", "local_dataset"]

_LINE_SUFFIXES = (".jsonl", ".txt", ".csv", ".tsv")


def dataset_name(path: Path, taken: set[str] | None = None) -> str:
    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in path.name).strip(".-") or "data"
    name, i = base, 2
    while taken is not None and name in taken:
        name, i = f"{base}-{i}", i + 1
    if taken is not None:
        taken.add(name)
    return name


def local_dataset(path: str | os.PathLike[str], name: str | None = None, *, license: str | None = None,
                  in_bundle: bool = False, taken: set[str] | None = None,
                  source: dict[str, Any] | None = None) -> DatasetSpec:
    """A DatasetSpec for a local file or folder; DVC-tracked paths get their DVC facts too."""
    p = Path(path).resolve()
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
    src: dict[str, Any] = {"type": "local", "path": str(p), "local_path": str(root)}
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


def files_dataset(name: str, root: str | os.PathLike[str], files: list[str], *, license: str | None = None,
                  samples_file: str | None = None, in_bundle: bool = False,
                  expected: dict[str, Any] | None = None) -> DatasetSpec:
    """Named files of a local folder (exactly the files training reads: the manifest lists those).

    A folder tracked by DVC that is missing is fetched with `dvc pull`; a tracked folder is
    described with its DVC md5 (see provenance.integrations.dvc).
    """
    folder = Path(root).resolve()
    fetched = not folder.exists() and dvc.pull_if_tracked(folder)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"dataset '{name}': {', '.join(missing)} not found in {root}")
    src: dict[str, Any] = {"type": "local", "path": str(folder), "local_path": str(folder), "files_read": list(files)}
    extra: dict[str, Any] = {}
    tracked = dvc.tracking_info(folder)
    if tracked is not None:
        src = {**src, "type": "dvc", **tracked["source"], "fetched": "dvc pull" if fetched else None}
        extra["dvc"] = tracked["manifest"]
    return DatasetSpec(name=name, root=folder, files=list(files), source=src, license=license,
                       samples_file=samples_file, in_bundle=in_bundle, expected=expected, extra=extra)


HUB_REVISION = re.compile(r"[0-9a-f]{40}")


def hub_dataset(name: str, repo_id: str, revision: str, files: list[str], *, license: str | None = None,
                samples_file: str | None = None, in_bundle: bool = False, cache_dir: str | None = None,
                expected: dict[str, Any] | None = None) -> DatasetSpec:
    """Files of a Hugging Face Hub dataset at a pinned commit, downloaded (or found in the cache) and described.

    Only a full commit sha is accepted as the revision: a branch or a tag can move, and the
    manifest must name what was actually read. Needs network unless the files are cached.
    """
    if not HUB_REVISION.fullmatch(revision or ""):
        raise ValueError(f"dataset '{name}': the hub revision must be a full commit sha (40 hex digits), "
                         f"got {revision!r}: a branch or tag can move")
    from huggingface_hub import snapshot_download

    local = Path(snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision,
                                   allow_patterns=list(files), cache_dir=cache_dir))
    missing = [f for f in files if not (local / f).is_file()]
    if missing:
        raise FileNotFoundError(f"dataset '{name}': {', '.join(missing)} not in {repo_id}@{revision}")
    src = {"type": "hub", "repo_id": repo_id, "repo_type": "dataset", "revision": revision,
           "files_read": list(files), "url": f"https://huggingface.co/datasets/{repo_id}/tree/{revision}",
           "local_path": str(local)}
    return DatasetSpec(name=name, root=local, files=list(files), source=src, license=license,
                       samples_file=samples_file, in_bundle=in_bundle, expected=expected)
