"""Data manifests: every file of a dataset with size, sha256 and record count.

A manifest is what makes sample ids stable: `samples` names the file whose
records the ids index (0-based record number).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance.formats import DATA_MANIFEST_SCHEMA, FormatError, read_json
from provenance.hashing import hash_files

_LINE_FORMATS = (".jsonl", ".txt", ".csv", ".tsv")


class DataMismatch(RuntimeError):
    """Data on disk does not match its manifest; the message names the file and both digests."""


@dataclass
class DatasetSpec:
    """What a training script declares about one dataset."""

    name: str
    root: Path  # folder the file paths are relative to
    files: list[str]  # relative paths, posix
    source: dict[str, Any]  # {"type": "generated"|"local"|"hub"|"dvc"|"derived", ...}
    license: str | None = None
    samples_file: str | None = None  # the file whose records sample ids index
    expected: dict[str, Any] | None = None  # a manifest the files must match (committed or recorded)
    in_bundle: bool = True  # copy the files into the bundle (small datasets)
    extra: dict[str, Any] = field(default_factory=dict)


def count_records(path: Path) -> int | None:
    if path.suffix not in _LINE_FORMATS:
        return None
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def build_manifest(spec: DatasetSpec, workers: int | None = None) -> dict[str, Any]:
    paths = [spec.root / f for f in spec.files]
    for f, p in zip(spec.files, paths, strict=True):
        if not p.is_file():
            raise DataMismatch(f"dataset '{spec.name}': file {f} is missing (looked in {spec.root})")
    digests = hash_files(paths, workers=workers)
    files = []
    for f, p in zip(spec.files, paths, strict=True):
        entry: dict[str, Any] = {"path": f, "size": p.stat().st_size, "sha256": digests[p]}
        records = count_records(p)
        if records is not None:
            entry["records"] = records
        files.append(entry)
    manifest: dict[str, Any] = {
        "schema": DATA_MANIFEST_SCHEMA,
        "name": spec.name,
        "source": spec.source,
        "license": spec.license,
        "files": sorted(files, key=lambda e: e["path"]),
        **spec.extra,
    }
    if spec.samples_file is not None:
        rec = next(e for e in files if e["path"] == spec.samples_file).get("records")
        manifest["samples"] = {"file": spec.samples_file, "id": "0-based record (line) number", "count": rec}
    return manifest


def compare_manifests(expected: dict[str, Any], actual: dict[str, Any], where: str = "") -> None:
    """Raise DataMismatch on the first file whose size or digest differs, naming both digests."""
    name = expected.get("name", "?")
    label = f"dataset '{name}'" + (f" ({where})" if where else "")
    exp_files = {e["path"]: e for e in expected.get("files", [])}
    act_files = {e["path"]: e for e in actual.get("files", [])}
    for path, e in sorted(exp_files.items()):
        a = act_files.get(path)
        if a is None:
            raise DataMismatch(f"{label}: file {path} is missing; expected sha256:{e['sha256']}")
        if a["sha256"] != e["sha256"] or a["size"] != e["size"]:
            raise DataMismatch(
                f"{label}: file {path} does not match its manifest: expected sha256:{e['sha256']} "
                f"({e['size']} bytes), found sha256:{a['sha256']} ({a['size']} bytes)")
    extra = sorted(set(act_files) - set(exp_files))
    if extra:
        raise DataMismatch(f"{label}: files not in the manifest: {', '.join(extra)}")


def load_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    m = read_json(path)
    if not isinstance(m, dict) or m.get("schema") != DATA_MANIFEST_SCHEMA:
        raise FormatError(f"{path}: not a data manifest (schema {DATA_MANIFEST_SCHEMA})")
    return m


def verified_manifest(spec: DatasetSpec, workers: int | None = None) -> dict[str, Any]:
    """Build the manifest of spec's files and check it against spec.expected when given."""
    actual = build_manifest(spec, workers)
    if spec.expected is not None:
        compare_manifests(spec.expected, actual, where=str(spec.root))
    return actual
