"""Edges by content: what a bundle consumed, matched by sha256 against what stored bundles produced.

A bundle *produces* the files under outputs/, checkpoints/ and model/; a file elsewhere in
it (data/<dataset>/files/...) is a copy of an input. A consumed file whose digest no stored
bundle produced is recorded as an input without a parent (a root: raw or generated data, a
from-scratch init).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provenance import formats, reader
from provenance.hashing import sha256_file
from provenance.store import Store, StoredBundle, normalise_digest

MAX_DATA_MANIFEST_BYTES = 16 << 20


class LineageError(ValueError):
    """Lineage cannot be recorded or followed as asked; the message names the edge or file."""


@dataclass(frozen=True)
class Consumed:
    """One file a run consumed: its kind, sha256 (hex) and what consumed it."""

    kind: str
    hexd: str
    consumed: str  # 'data/<dataset>/<path>', 'run.init_from', 'merge[0]', ...
    weight: float | None = None
    location: str | None = None  # where it was read from: a producer holding it at that place is preferred


def file_digest(path: str | Path) -> str:
    """sha256 hex of a consumed file; a model folder means its model.safetensors, a sharded (DCP)
    checkpoint folder its rank-0 shard file (a file its producer's bundle lists)."""
    p = Path(path)
    if p.is_dir():
        p = p / ("__0_0.distcp" if (p / formats.DCP_METADATA).is_file() else "model.safetensors")
    if not p.is_file():
        raise LineageError(f"{path}: no such file to record as a lineage input")
    return sha256_file(p)


def consumed_data(root: Path) -> list[Consumed]:
    """The files of every data manifest a bundle holds (data/<dataset>/manifest.json)."""
    out: list[Consumed] = []
    base = Path(root) / formats.DATA_DIR
    if not base.is_dir():
        return out
    names = sorted(mf.parent.name for mf in base.glob("*/manifest.json"))
    rels = [formats.data_manifest_path(ds) for ds in names]
    with reader.Bundle.of_files(root, rels, reader.ReadLimits(max_json_bytes=MAX_DATA_MANIFEST_BYTES)) as b:
        for ds in names:
            try:
                m = b.data_manifest(ds)  # typed, through the one reader (bounded, never a link)
            except reader.BundleFileError:
                continue  # the audit's data check names a malformed manifest (or one that is a link)
            src = m.extra.get("source") if isinstance(m.extra.get("source"), dict) else {}
            local = src.get("local_path") if isinstance(src.get("local_path"), str) else None
            kind = "tokenizer" if ds == "tokenizer" or src.get("type") == "tokenizer" else "data"
            for f in m.files:
                if _is_hex(f.sha256):
                    where = str(Path(local) / f.path) if local else None
                    out.append(Consumed(kind, f.sha256, f"{formats.DATA_DIR}/{ds}/{f.path}", location=where))
    return out


def _is_hex(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _preference(candidate: tuple[StoredBundle, str], location: str | None) -> tuple[Any, ...]:
    """The producer holding the file where it was read from, then an original before a reproduction
    of it, then the earliest, then by digest: deterministic."""
    b, path = candidate
    started = b.run.get("started_at")
    here = location is not None and _same_file(b.path / path, Path(location))
    return (not here, b.run.get("reproduces") is not None, started if isinstance(started, str) else "~", b.root, path)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def resolve(c: Consumed, store: Store, exclude: Path | None = None,
            warnings: list[str] | None = None) -> dict[str, Any]:
    """The edge for one consumed file. Several producers of the same digest: their bytes are
    compared; producers whose file does not hash to the digest they claim are a conflict
    (LineageError when `warnings` is None, else dropped with a warning)."""
    ex = exclude.resolve() if exclude is not None else None
    cands = [(b, p) for b, p in store.producers(c.hexd) if ex is None or b.path.resolve() != ex]
    if len({b.root for b, _ in cands}) > 1:
        good = []
        for b, p in cands:
            actual = sha256_file(b.path / p) if (b.path / p).is_file() else None
            if actual == c.hexd:
                good.append((b, p))
                continue
            msg = (f"conflict: bundles {', '.join(sorted({x.run_id for x, _ in cands}))} all claim to produce "
                   f"sha256:{c.hexd}, but {b.run_id}'s {p} has "
                   + (f"sha256:{actual}" if actual else "no such file"))
            if warnings is None:
                raise LineageError(msg)
            warnings.append(msg)
        cands = good
    digest = formats.digest_str(c.hexd)
    if not cands:
        return formats.lineage_edge(c.kind, digest, None, None, c.consumed, weight=c.weight)
    b, p = sorted(cands, key=lambda cand: _preference(cand, c.location))[0]
    return formats.lineage_edge(c.kind, digest, b.digest, p, c.consumed, weight=c.weight, parent_run_id=b.run_id)


def declared_edge(kind: str, parent: str, parent_path: str, store: Store | None = None,
                  digest: str | None = None, consumed: str | None = None,
                  weight: float | None = None) -> dict[str, Any]:
    """An edge declared by hand. The file digest is taken from the parent's seal when the
    parent is in a store; otherwise it must be given."""
    phex = normalise_digest(parent)
    parent_b = store.find(phex) if store is not None else None
    if parent_b is not None:
        phex = parent_b.root
        sealed = parent_b.resources.get(parent_path)
        if sealed is None:
            raise LineageError(f"declared {kind} edge: bundle {parent_b.run_id} has no sealed file {parent_path!r}")
        if digest is not None and normalise_digest(digest) != sealed:
            raise LineageError(f"declared {kind} edge: {parent_path} is sealed in {parent_b.run_id} as "
                               f"sha256:{sealed}, not {digest}")
        digest = formats.digest_str(sealed)
    elif len(phex) != 64:
        raise LineageError(f"declared {kind} edge: no store holds a bundle with root digest {parent}; "
                           "give the full digest")
    if digest is None:
        raise LineageError(f"declared {kind} edge: no store holds sha256:{phex}, so --digest is required")
    try:
        return formats.lineage_edge(kind, formats.digest_str(normalise_digest(digest)), formats.digest_str(phex),
                                    parent_path, consumed or f"declared:{parent_path}", how="declared",
                                    weight=weight, parent_run_id=parent_b.run_id if parent_b else None)
    except formats.FormatError as exc:
        raise LineageError(str(exc)) from None


def infer_edges(root: Path, store: Store, inputs: Sequence[Consumed] = (),
                declared: Sequence[dict[str, Any]] = (), warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """Every edge of a bundle: its data manifests and the given inputs matched against the store,
    plus the declared edges (a declared edge replaces an automatic one for the same file)."""
    edges = [resolve(c, store, exclude=Path(root), warnings=warnings) for c in [*consumed_data(root), *inputs]]
    keys = {(d["kind"], d["digest"]) for d in declared}
    return [e for e in edges if (e["kind"], e["digest"]) not in keys] + [dict(d) for d in declared]
