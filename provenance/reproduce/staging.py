"""Data staging: locate every dataset of the original, verify each file against its manifest before
anything runs, and place the verified files in the work folder."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from provenance import diff as pdiff
from provenance.capture.data import local_digests
from provenance.reproduce.options import PATH_KEYS, Options, Refused, Say
from provenance.reproduce.plan import Original

COPY_LIMIT = 256 << 20  # datasets larger than this are linked into the work folder, not copied

def _placement(local_path: str | None, recorded_root: Any, name: str) -> str:
    """Where a dataset goes under the new data root: its path relative to the recorded one."""
    if isinstance(local_path, str) and local_path:
        if isinstance(recorded_root, str) and recorded_root:
            try:
                rel = PurePath(local_path).relative_to(PurePath(recorded_root))
                if rel.parts and ".." not in rel.parts:
                    return rel.as_posix()
            except ValueError:
                pass
        return PurePath(local_path).name
    return name


@dataclass
class StagedData:
    name: str
    how: str  # data-root | bundle | recorded path | regenerated | derived
    source: Path | None = None
    rel: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.name, "located": self.how, "path": str(self.source) if self.source else None,
                "placed_at": self.rel, "files": len(self.files), "note": self.note,
                "verified_before_run": self.how in ("data-root", "bundle", "recorded path")}


def _mismatch_message(orig: Original, name: str, man: dict[str, Any], entry: dict[str, Any], found: Path,
                      found_hex: str, how: str) -> str:
    msg = (f"dataset '{name}': file {entry['path']} ({how}: {found}) does not match the original's data manifest: "
           f"expected sha256:{entry['sha256']} ({entry.get('size')} bytes), found sha256:{found_hex} "
           f"({found.stat().st_size} bytes)")
    ref = pdiff.bundled_file(orig.root, man, entry["path"])
    if ref is not None and ref.resolve() != found.resolve():
        rec = pdiff.first_differing_record(ref, found)
        if rec is not None:
            where = pdiff.describe_record(man, entry["path"], rec, orig.root)
            if "sample" in where:
                msg += f"; first differing sample {where['sample']} (line {where['line']})"
                if where.get("first_step_using_sample") is not None:
                    msg += f", first used at step {where['first_step_using_sample']}"
            else:
                msg += f"; first differing line {where['line']}"
    return msg


def locate_data(orig: Original, opts: Options, say: Say) -> list[StagedData]:
    flat = pdiff.flatten(orig.config)
    recorded_root = flat.get("data.root")
    out: list[StagedData] = []
    for name, man in orig.manifests.items():
        src = man.get("source") or {}
        kind = src.get("type")
        local = src.get("local_path")
        rel = _placement(local, recorded_root, name)
        declared = (orig.run.get("data_roots") or {}).get(name) if isinstance(orig.run, dict) else None
        if recorded_root is None and isinstance(declared, str) and declared and \
                not PurePath(declared).is_absolute() and ".." not in PurePath(declared).parts:
            # no data.root key to redirect: the script's relative DatasetSpec root resolves at $PROV_DATA_ROOT/<root>
            rel = PurePath(declared).as_posix()
        files = [e for e in man.get("files", []) if isinstance(e, dict) and isinstance(e.get("path"), str)]
        if kind == "derived":
            out.append(StagedData(name, "derived", rel=rel, files=files,
                                  note="rebuilt by the training script from its inputs; the run verifies it "
                                       "against the manifest before step 0"))
            continue
        candidates: list[tuple[str, Path]] = []
        if opts.data_root is not None:
            dr = opts.data_root
            for p in (dr / rel, dr / PurePath(rel).name, dr / name, dr):
                candidates.append(("data-root", p))
        if isinstance(man.get("bundled_files"), str):
            candidates.append(("bundle", orig.root / man["bundled_files"]))
        if isinstance(local, str) and local:
            candidates.append(("recorded path", Path(local) if Path(local).is_absolute() else Path.cwd() / local))
        found = next(((how, p) for how, p in candidates if any((p / e["path"]).is_file() for e in files)), None)
        if found is None:
            if kind == "generated":
                out.append(StagedData(name, "regenerated", rel=rel, files=files,
                                      note=f"regenerated by the training script (generator {src.get('generator')} "
                                           f"version {src.get('version')}, seed {src.get('seed')}); the run "
                                           "verifies it against the manifest before step 0"))
                continue
            looked = ", ".join(str(p) for _, p in candidates) or "nowhere"
            hint = " It is tracked by DVC: `dvc pull` it and pass --data-root." if kind == "dvc" else \
                " Pass --data-root DIR."
            raise Refused(f"dataset '{name}': its files were not found (looked in {looked}).{hint}")
        how, folder = found
        paths = []
        for e in files:
            p = folder / e["path"]
            if not p.is_file():
                raise Refused(f"dataset '{name}': file {e['path']} is missing from {folder} ({how}); "
                              f"expected sha256:{e.get('sha256')}")
            paths.append(p)
        digests = local_digests(files, folder)  # through the hash cache: unchanged data is not read again
        for e, p in zip(files, paths, strict=True):
            if digests[p] != e.get("sha256") or p.stat().st_size != e.get("size"):
                raise Refused(_mismatch_message(orig, name, man, e, p, digests[p], how), dataset=name,
                              file=e["path"], expected=f"sha256:{e.get('sha256')}", found=f"sha256:{digests[p]}")
        out.append(StagedData(name, how, source=folder, rel=rel, files=files))
        say(f"data: {name}: {len(files)} files from {how} {folder}, every file matches the manifest")
    for s in out:
        if s.how in ("regenerated", "derived"):
            say(f"data: {s.name}: {s.note}")
    return out


_PATHLIKE = ("path", "dir", "root", "folder", "file")


def dataset_keys(orig: Original, staged: list[StagedData], data_dir: Path) -> list[tuple[str, Path]]:
    """Config keys that name a staged dataset's recorded folder (e.g. data.path of a local corpus),
    each with the staged folder to point them at. data.root is redirected apart (generated data)."""
    flat = pdiff.flatten(orig.config)
    out: list[tuple[str, Path]] = []
    for s in staged:
        if s.source is None or s.rel is None:
            continue
        src = (orig.manifests.get(s.name) or {}).get("source") or {}
        targets = [PurePath(v) for v in (src.get("path"), src.get("local_path")) if isinstance(v, str) and v]
        for key, value in flat.items():
            last = key.rsplit(".", 1)[-1]
            if key in PATH_KEYS or not isinstance(value, str) or not value or not any(w in last for w in _PATHLIKE):
                continue
            v = PurePath(value)
            if any(v == t or (not v.is_absolute() and t.parts[-len(v.parts):] == v.parts) for t in targets):
                out.append((key, data_dir / s.rel))
    return out


def stage(staged: list[StagedData], data_dir: Path) -> None:
    for s in staged:
        if s.source is None or s.rel is None:
            continue
        dest = data_dir / s.rel
        dest.mkdir(parents=True, exist_ok=True)
        total = sum(int(e.get("size") or 0) for e in s.files)
        for e in s.files:
            src, dst = s.source / e["path"], dest / e["path"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            if total <= COPY_LIMIT:
                shutil.copyfile(src, dst)
            else:
                os.symlink(src.resolve(), dst)


