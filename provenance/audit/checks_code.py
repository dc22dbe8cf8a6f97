"""The check of the code snapshot: code/code.json against code/source.tar, read like an archive."""

from __future__ import annotations

from provenance import formats
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
    # read like an archive (provenance.archive.TarReader): a member that escapes ('../x'), is absolute, a link,
    # a device, a FIFO, or clashes with another (a file and a folder of one name, twice the same name) is an
    # error naming it, as `prov reproduce` would refuse to unpack it
    for m in view.tar_members(snap):
        if m.is_dir:
            out.error(f"member {m.name!r} is a folder (a snapshot holds files only)", file=snap)
            continue
        actual[m.name] = m.sha256
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
