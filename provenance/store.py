"""A bundle store: a folder of sealed bundles, indexed by root digest, offline.

    <store>/<run_id>/manifest.json ...   one sealed bundle per sub-folder

The index is built from each bundle's own seal (manifest.json) every time a store is
opened, so it can never be stale: there is no second source of truth to keep in sync.
Reads are bounded and never follow symlinks (a store may hold a hostile bundle); what the
seal claims is only a claim: `prov audit --lineage` checks every file against it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance import formats, reader
from provenance.bundle import BundleError, list_files

MAX_MANIFEST_BYTES = 64 << 20
MAX_RUN_JSON_BYTES = 4 << 20
STORE_ENV = "PROV_STORE"  # extra stores to search, separated by os.pathsep


class StoreError(ValueError):
    """A store or a bundle in it is unusable as asked; the message names the folder."""


@dataclass
class StoredBundle:
    """What a store knows of one bundle: its claimed root digest and file digests (from its seal)."""

    path: Path
    root: str  # hex
    resources: dict[str, str]  # name -> hex
    run: dict[str, Any] = field(default_factory=dict)
    previous: list[str] = field(default_factory=list)  # root digests (hex) it had before re-seals (reseals.jsonl)

    @property
    def digest(self) -> str:
        return formats.digest_str(self.root)

    @property
    def run_id(self) -> str:
        rid = self.run.get("run_id")
        return rid if isinstance(rid, str) else self.path.name

    @property
    def name(self) -> str:
        n = self.run.get("name")
        return n if isinstance(n, str) else "?"

    @property
    def status(self) -> str:
        s = self.run.get("status")
        return s if isinstance(s, str) else "?"

    def produced(self) -> Iterator[tuple[str, str]]:
        """(path, hex) of the files this bundle produced (outputs/, checkpoints/, model/)."""
        for name, hexd in self.resources.items():
            if name.startswith(formats.PRODUCED_PREFIXES):
                yield name, hexd


def read_bundle(path: Path) -> StoredBundle:
    """A bundle's seal and run facts; StoreError names the folder and what is wrong."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        raise StoreError(f"{path}: not a bundle folder")
    # the seal and run.json through the one reader: bounded, never through a link
    with reader.Bundle.of_files(path, [formats.MANIFEST, formats.RUN_JSON]) as b:
        if not b.has(formats.MANIFEST):
            raise StoreError(f"{path}: not sealed ({formats.MANIFEST} is missing)")
        try:
            root, resources = formats.parse_oms_statement(reader.load_json(
                b.read_bytes(formats.MANIFEST, MAX_MANIFEST_BYTES), formats.MANIFEST))
        except (formats.FormatError, reader.BundleFileError) as exc:
            raise StoreError(f"{path}: {exc}") from None
        if len(root) != 64 or any(c not in "0123456789abcdef" for c in root):
            raise StoreError(f"{path}: {formats.MANIFEST}: the root digest is not 64 hex digits")
        run: dict[str, Any] = {}
        if b.has(formats.RUN_JSON):
            try:
                obj = reader.load_json(b.read_bytes(formats.RUN_JSON, MAX_RUN_JSON_BYTES), formats.RUN_JSON)
                run = obj if isinstance(obj, dict) else {}
            except reader.BundleFileError:
                run = {}
    return StoredBundle(path, root, resources, run, _previous_roots(path, resources))


MAX_RESEALS_BYTES = 4 << 20


def _previous_roots(path: Path, resources: dict[str, str]) -> list[str]:
    """The root digests a bundle had before each recorded re-seal (a note added after another run
    consumed its files changes its root digest, not those files). Read only if the seal covers it."""
    rel = formats.RESEALS
    if rel not in resources:
        return []
    out = []
    try:
        with reader.Bundle.of_files(path, [rel], reader.ReadLimits(max_jsonl_bytes=MAX_RESEALS_BYTES)) as b:
            recs = b.records(rel)  # strict (a torn last line skipped), bounded, never through a link
        for rec in recs:
            prev = rec.get("previous_root_digest")
            if isinstance(prev, str):
                hexd = prev.removeprefix(f"{formats.ALGORITHM}:")
                if len(hexd) == 64 and all(c in "0123456789abcdef" for c in hexd):
                    out.append(hexd)
    except (reader.Refused, reader.BundleFileError):
        return []
    return out


def normalise_digest(value: str) -> str:
    """'sha256:<hex>' or '<hex>' (a prefix of at least 8 digits is allowed) -> lowercase hex."""
    v = value.strip().lower()
    if v.startswith(formats.ALGORITHM + ":"):
        v = v.split(":", 1)[1]
    if len(v) < 8 or len(v) > 64 or any(c not in "0123456789abcdef" for c in v):
        raise StoreError(f"{value!r} is not a sha256 digest (or a prefix of at least 8 hex digits)")
    return v


class Store:
    """One or more store folders searched together (the first that holds a digest wins)."""

    def __init__(self, folders: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.folders = [Path(f) for f in folders]
        self.bundles: list[StoredBundle] = []
        self.skipped: list[str] = []  # 'folder: why' for sub-folders that are not usable bundles
        seen: set[Path] = set()
        for folder in self.folders:
            if not folder.is_dir():
                raise StoreError(f"{folder}: the store folder does not exist")
            for sub in sorted(folder.iterdir()):
                if sub.name.startswith(".") or not sub.is_dir() or sub.is_symlink():
                    continue
                key = sub.resolve()
                if key in seen:
                    continue
                seen.add(key)
                try:
                    self.bundles.append(read_bundle(sub))
                except StoreError as exc:
                    self.skipped.append(str(exc))
        self._by_root: dict[str, StoredBundle] = {}
        self._by_file: dict[str, list[tuple[StoredBundle, str]]] = {}
        for b in self.bundles:
            self._by_root.setdefault(b.root, b)
            for name, hexd in b.produced():
                self._by_file.setdefault(hexd, []).append((b, name))
        self._by_previous: dict[str, StoredBundle] = {}
        for b in self.bundles:  # a re-sealed bundle is still found by the root digest an edge names
            for prev in b.previous:
                self._by_previous.setdefault(prev, b)

    @classmethod
    def default(cls, extra: Iterable[str | os.PathLike[str]] = (), near: Path | None = None) -> Store:
        """The given folders, then $PROV_STORE, then the folder holding `near` (a bundle's siblings)."""
        folders: list[Path] = [Path(f) for f in extra]  # named explicitly: must exist
        implicit = [Path(p) for p in os.environ.get(STORE_ENV, "").split(os.pathsep) if p]
        if near is not None:
            implicit.append(Path(near).resolve().parent)
        return cls(folders + [f for f in implicit if f.is_dir()])

    def find(self, digest: str) -> StoredBundle | None:
        """The bundle whose root digest is (or starts with) `digest`; StoreError if a prefix is ambiguous."""
        hexd = normalise_digest(digest)
        if len(hexd) == 64:
            return self._by_root.get(hexd) or self._by_previous.get(hexd)
        hits = [b for r, b in self._by_root.items() if r.startswith(hexd)]
        if len(hits) > 1:
            raise StoreError(f"digest prefix {hexd} matches {len(hits)} bundles; give more digits")
        return hits[0] if hits else None

    def producers(self, file_hex: str) -> list[tuple[StoredBundle, str]]:
        """Every (bundle, path) whose seal lists a produced file with this sha256."""
        return list(self._by_file.get(file_hex, []))


def add(store: str | os.PathLike[str], bundle: str | os.PathLike[str]) -> tuple[StoredBundle, bool]:
    """Copy a sealed bundle into the store as <store>/<run_id>; returns (entry, copied).

    A bundle already there (same root digest) is not copied again; a different bundle
    under the same name is refused. The copy is made under a temporary name, then renamed.
    """
    src = read_bundle(Path(bundle))
    dest_root = Path(store)
    dest_root.mkdir(parents=True, exist_ok=True)
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in src.run_id).lstrip(".") or src.root[:16]
    dest = dest_root / name
    for have in Store([dest_root]).bundles:
        if have.root == src.root:
            return have, False
    if dest.exists():
        raise StoreError(f"{dest}: a different bundle with this name is already in the store")
    try:
        files = list_files(src.path)  # refuses symlinks, names them
    except BundleError as exc:
        raise StoreError(f"{src.path}: {exc}") from None
    tmp = dest_root / f".{name}.adding.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for rel in files:
            if rel == formats.LOCK:
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.path / rel, tmp / rel)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_bundle(dest), True
