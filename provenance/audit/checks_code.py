"""The check of the code snapshot: code/code.json against code/source.tar."""

from __future__ import annotations

import hashlib
import tarfile

from provenance import formats
from provenance.archive import SafeTarInfo
from provenance.audit.results import CheckResult, sha
from provenance.audit.view import BundleFileError, BundleView, is_hex64


def check_code(view: BundleView, out: CheckResult) -> None:
    f = formats.CODE_JSON
    code = view.json(f)
    if not isinstance(code, dict) or not isinstance(code.get("files"), dict):
        raise BundleFileError(f, "has no 'files' map of per-file digests")
    expected: dict[str, str] = {}
    for name, d in code["files"].items():
        try:
            algo, hexd = formats.parse_digest(d) if isinstance(d, str) else ("", "")
        except ValueError:
            algo, hexd = "", ""
        if algo != "sha256" or not is_hex64(hexd):
            out.error(f"the digest of {name!r} is not 'sha256:<hex>'", file=f, actual=repr(d))
            continue
        expected[name] = hexd
    if not view.has(formats.CODE_SNAPSHOT):
        raise BundleFileError(formats.CODE_SNAPSHOT, "missing")
    if not view.has(formats.CODE_DIFF):
        out.warn("missing (the uncommitted changes are not recorded)", file=formats.CODE_DIFF)
    actual: dict[str, str] = {}
    snap = formats.CODE_SNAPSHOT
    try:
        with tarfile.open(view.path(snap), mode="r:", tarinfo=SafeTarInfo) as tar:  # type: ignore[call-arg]
            for n, m in enumerate(tar, 1):
                if n > view.limits.archive.max_members:
                    out.error(f"more than {view.limits.archive.max_members} members", file=snap)
                    break
                if not m.isfile() or m.issparse():
                    out.error(f"member {m.name!r} is not a regular file (a snapshot holds files only)", file=snap)
                    continue
                if m.name in actual:
                    out.error(f"member {m.name!r} appears twice", file=snap)
                    continue
                src = tar.extractfile(m)
                h = hashlib.sha256()
                while src is not None and (chunk := src.read(1 << 20)):
                    h.update(chunk)
                actual[m.name] = h.hexdigest()
    except Exception as exc:  # tarfile raises ValueError & co. on crafted headers, ArchiveError on hostile ones
        raise BundleFileError(snap, f"not a readable tar ({type(exc).__name__}: {exc})") from None
    for name in sorted(set(expected) - set(actual)):
        out.error(f"{name} is listed in code.json but not in the snapshot", file=snap,
                  expected=sha(expected[name]), actual=None)
    for name in sorted(set(actual) - set(code["files"])):
        out.error(f"{name} is in the snapshot but not listed in code.json", file=snap, actual=sha(actual[name]))
    for name in sorted(set(expected) & set(actual)):
        if expected[name] != actual[name]:
            out.error(f"{name} in the snapshot does not match code.json", file=snap,
                      expected=sha(expected[name]), actual=sha(actual[name]))
    meta = code.get("snapshot")
    count = meta.get("file_count") if isinstance(meta, dict) else None
    if count is not None and count != len(code["files"]):
        out.error("snapshot.file_count disagrees with the files listed", file=f,
                  expected=str(len(code["files"])), actual=str(count))
    out.summary = f"{len(actual)} files match code.json" if not out.errors else f"{len(actual)} files in the snapshot"
