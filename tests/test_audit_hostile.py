"""Hostile input: an audit refuses it, names what it refused, runs nothing from it, writes nothing outside."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from provenance import formats
from provenance.archive import Limits
from provenance.audit import AuditLimits, AuditRefused, audit
from provenance.bundle import seal_folder

REPO = Path(__file__).resolve().parents[1]


def edit_json(path: Path, fn: Any) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(formats.dumps(obj))


# --- folders --------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["outside", "inside", "folder"])
def test_symlinks_are_refused(bundle_copy: Path, tmp_path: Path, where: str) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    if where == "outside":
        (bundle_copy / "logs" / "leak.txt").symlink_to(outside)
        name, says = "logs/leak.txt", "outside the bundle"
    elif where == "inside":
        (bundle_copy / "alias.json").symlink_to(bundle_copy / "run.json")
        name, says = "alias.json", "inside the bundle"
    else:
        (bundle_copy / "data" / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
        name, says = "data/elsewhere", "outside the bundle"
    with pytest.raises(AuditRefused) as exc:
        audit(bundle_copy)
    assert name in str(exc.value) and says in str(exc.value) and "refused" in str(exc.value)


def test_fifo_is_refused(bundle_copy: Path) -> None:
    os.mkfifo(bundle_copy / "logs" / "pipe")
    with pytest.raises(AuditRefused, match=r"logs/pipe: a FIFO"):
        audit(bundle_copy)


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/passwd", "logs/../../x", "a//b", "./run.json"])
def test_manifest_names_that_escape_are_refused(bundle_copy: Path, name: str) -> None:
    edit_json(bundle_copy / formats.MANIFEST,
              lambda m: m["predicate"]["resources"].append({"name": name, "algorithm": "sha256", "digest": "0" * 64}))
    with pytest.raises(AuditRefused) as exc:
        audit(bundle_copy)
    assert "manifest.json" in str(exc.value) and repr(name) in str(exc.value)


def test_malformed_manifest_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / formats.MANIFEST).write_text('{"_type": "https://in-toto.io/Statement/v1", ')
    with pytest.raises(AuditRefused, match=r"manifest.json: malformed JSON"):
        audit(bundle_copy)
    (bundle_copy / formats.MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AuditRefused, match=r"manifest.json: JSON nested too deeply"):
        audit(bundle_copy)
    (bundle_copy / formats.MANIFEST).write_text('{"_type": "something else"}')
    with pytest.raises(AuditRefused, match=r"manifest.json: not an in-toto Statement"):
        audit(bundle_copy)


def test_oversized_manifest_is_refused_without_reading_it(bundle_copy: Path) -> None:
    with open(bundle_copy / formats.MANIFEST, "r+b") as f:  # sparse: 65 MB on paper, nothing on disk
        f.truncate(formats.MAX_JSON_BYTES + 1)
    with pytest.raises(AuditRefused, match=r"manifest.json: \d+ bytes is larger than the \d+-byte limit"):
        audit(bundle_copy)


def test_malformed_and_oversized_bundle_json_fail_naming_the_file(bundle_copy: Path) -> None:
    (bundle_copy / formats.RUN_JSON).write_text("[" * 4000 + "]" * 4000)  # 8 KB, 4000 levels deep
    (bundle_copy / formats.CONFIG_JSON).write_text(json.dumps({"config": {"x": "y" * 20_000}, "digest": "z"}))
    seal_folder(bundle_copy)
    assert (bundle_copy / formats.MANIFEST).stat().st_size < 10_000
    r = audit(bundle_copy, limits=AuditLimits(max_json_bytes=10_000))
    assert r.integrity.ok and not r.ok and r.exit_status == 1
    lines = r.failures()
    assert "run: run.json: JSON nested too deeply; refused" in lines, lines
    assert any(line.startswith("config: config.json:") and "larger than the 10000-byte limit" in line
               for line in lines), lines


def test_nothing_from_the_bundle_is_executed_or_unpickled(bundle_copy: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    evil = pickle.dumps(Payload())
    (bundle_copy / "model" / "pytorch_model.bin").write_bytes(evil)
    (bundle_copy / "checkpoints" / "optimizer.pt").write_bytes(evil)
    (bundle_copy / "model" / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    edit_json(bundle_copy / "model" / "config.json",
              lambda c: c.update(auto_map={"AutoModelForCausalLM": "modeling_evil.EvilModel"}, model_type="evil"))
    seal_folder(bundle_copy)
    calls: list[str] = []
    for attr in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, attr, lambda *a, _n=attr, **k: calls.append(_n))
    r = audit(bundle_copy)
    assert not marker.exists() and calls == []
    assert "checkpoints/optimizer.pt is not in the checkpoint index" in "\n".join(r.failures())
    # the unknown model type is counted from safetensors, never imported
    assert "no parameter formula for model_type 'evil'" in r.check("model").findings[0].message
    # in a fresh interpreter: no model class is imported either
    code = ("import sys; from provenance.audit import audit; audit(sys.argv[1]); "
            "assert 'transformers' not in sys.modules, 'transformers was imported'; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code, str(bundle_copy)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()


# --- archives -------------------------------------------------------------------------------


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "",
          pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    info.pax_headers = pax or {}
    return info


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, size=len(data)), data


HOSTILE_MEMBERS = {
    "symlink": ([(_info("run/evil", tarfile.SYMTYPE, link="/etc/passwd"), None)], "'run/evil' is a symbolic link"),
    "hardlink": ([_file("run/a"), (_info("run/b", tarfile.LNKTYPE, link="/etc/shadow"), None)],
                 "'run/b' is a hard link to '/etc/shadow'"),
    "char device": ([(_info("run/tty", tarfile.CHRTYPE), None)], "'run/tty' is a character device"),
    "block device": ([(_info("run/sda", tarfile.BLKTYPE), None)], "'run/sda' is a block device"),
    "fifo": ([(_info("run/fifo", tarfile.FIFOTYPE), None)], "'run/fifo' is a FIFO"),
    "dotdot": ([_file("run/../../escaped.txt")], "'run/../../escaped.txt' escapes the destination"),
    "absolute": ([_file("/tmp/prov-absolute-escape.txt")], "'/tmp/prov-absolute-escape.txt' has an absolute path"),
    "duplicate": ([_file("run/run.json"), _file("run/run.json", b"again")], "'run/run.json' appears more than once"),
    "file then folder": ([_file("run/x"), _file("run/x/y")], "needs 'run/x' to be a folder"),
    "huge declared size": ([(_info("run/huge.bin", size=300 << 30), None)],
                           "declares 322122547200 bytes, more than the"),
    "huge pax header": ([(_info("run/p", size=1, pax={"comment": "x" * (2 << 20)}), b"x")],
                        "extended header is larger than"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MEMBERS))
@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
def test_hostile_archive_members_are_refused(tmp_path: Path, case: str, gz: bool) -> None:
    members, says = HOSTILE_MEMBERS[case]
    arc = tmp_path / ("bad.tar.gz" if gz else "bad.tar")
    arc.write_bytes(_tar(members, gz))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(AuditRefused) as exc:
        audit(arc, tmp_dir=scratch)
    assert says in str(exc.value), str(exc.value)
    assert list(scratch.iterdir()) == []  # the temporary folder is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([arc.name, "scratch"])  # nothing escaped
    assert not Path("/tmp/prov-absolute-escape.txt").exists()


def test_sparse_and_crafted_headers_are_refused(tmp_path: Path) -> None:
    sparse = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "run/sp",
              "GNU.sparse.realsize": "1000000"}
    good_map = b"1\n0\n4\n"
    cases = {
        "sparse.tar": ([(_info("run/sp", size=516, pax=sparse), good_map + bytes(512 - len(good_map)) + b"abcd")],
                       "'run/sp' is a sparse file"),
        # a crafted sparse map: refused as a sparse file from its pax keys, before the map is read
        "crafted.tar": ([(_info("run/sp", size=4, pax=sparse), b"1\n0\n")], "'run/sp' is a sparse file"),
    }
    for name, (members, says) in cases.items():
        arc = tmp_path / name
        arc.write_bytes(_tar(members))
        with pytest.raises(AuditRefused) as exc:
            audit(arc, tmp_dir=tmp_path)
        assert says in str(exc.value), str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(cases)


def test_decompression_bomb_is_refused_at_its_header(tmp_path: Path) -> None:
    size = 80 << 20  # 80 MiB of zeros: ~80 KB compressed, far past the ratio limit
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info("run/zeros.bin", size=size), io.BytesIO(bytes(size)))
    arc = tmp_path / "bomb.tar.gz"
    arc.write_bytes(buf.getvalue())
    assert arc.stat().st_size < size // 100
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(AuditRefused, match=r"'run/zeros.bin' takes the unpacked size past 200 times"):
        audit(arc, tmp_dir=scratch)
    assert list(scratch.iterdir()) == []


def test_member_count_and_total_size_are_bounded(tmp_path: Path) -> None:
    arc = tmp_path / "many.tar"
    arc.write_bytes(_tar([_file(f"run/f{i}", b"0123456789") for i in range(50)]))
    with pytest.raises(AuditRefused, match=r"more than 20 members"):
        audit(arc, limits=AuditLimits(archive=Limits(max_members=20)))
    with pytest.raises(AuditRefused, match=r"members add up to more than the 100-byte limit \(at 'run/f10'\)"):
        audit(arc, limits=AuditLimits(archive=Limits(max_total_bytes=100)))
    with pytest.raises(AuditRefused, match=r"'run/f0' declares 10 bytes, more than the 5-byte limit"):
        audit(arc, limits=AuditLimits(archive=Limits(max_file_bytes=5)))


def test_unreadable_or_truncated_archives_are_refused(tmp_path: Path, tiny_bundle: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b" + os.urandom(4000))
    with pytest.raises(AuditRefused, match=r"junk.tar.gz: not a readable tar.gz archive"):
        audit(junk)
    plain = tmp_path / "notes.txt"
    plain.write_text("hello")
    with pytest.raises(AuditRefused, match=r"not a run folder or a release archive"):
        audit(plain)
    from provenance.archive import pack

    good = pack(tiny_bundle, tmp_path / "good.tar.gz").path
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(AuditRefused, match=r"cut.tar.gz"):
        audit(cut, tmp_dir=scratch)
    assert list(scratch.iterdir()) == []
    with pytest.raises(AuditRefused, match=r"no such file or folder"):
        audit(tmp_path / "absent")


def test_archive_without_a_bundle_is_refused(tmp_path: Path) -> None:
    arc = tmp_path / "other.tar"
    arc.write_bytes(_tar([_file("project/README.md", b"# hi\n")]))
    with pytest.raises(AuditRefused, match=r"not a run bundle"):
        audit(arc)


def test_cli_refuses_with_exit_status_two(tmp_path: Path) -> None:
    arc = tmp_path / "evil.tar"
    arc.write_bytes(_tar([(_info("run/evil", tarfile.SYMTYPE, link="../../../etc/passwd"), None)]))
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "audit", str(arc), "--json",
                           "--tmp-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "refused" in proc.stderr and "'run/evil' is a symbolic link to '../../../etc/passwd'" in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["verdict"] == "refused" and doc["exit_status"] == 2 and "run/evil" in doc["refused"]["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar"]


def _snapshot(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    return _tar(members)


@pytest.mark.parametrize("case,says", [
    ("escape", "'../x' escapes the destination"),
    ("absolute", "'/tmp/x' has an absolute path"),
    ("symlink", "is a symbolic link"),
    ("device", "is a character device"),
    ("clash", "needs 'train.py' to be a folder, but it is a file"),
])
def test_code_snapshot_is_checked_like_an_archive(bundle_copy: Path, case: str, says: str) -> None:
    """A snapshot member that `prov reproduce` could not unpack safely fails the audit's code check."""
    snap = bundle_copy / formats.CODE_SNAPSHOT
    with tarfile.open(snap) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]  # type: ignore[union-attr]
    extra = {"escape": _file("../x"), "absolute": _file("/tmp/x"),
             "symlink": (_info("evil", tarfile.SYMTYPE, link="/etc/passwd"), None),
             "device": (_info("dev", tarfile.CHRTYPE), None),
             "clash": _file("train.py/inner.py")}[case]
    if case == "clash":
        members = [m for m in members if m[0].name != "train.py"] + [_file("train.py"), extra]
    else:
        members.append(extra)
    snap.write_bytes(_snapshot(members))
    # code.json lists exactly the snapshot's regular files with their digests: only the tar's shape is wrong
    import hashlib

    files = {m.name: f"sha256:{hashlib.sha256(d).hexdigest()}" for m, d in members if d is not None}
    edit_json(bundle_copy / formats.CODE_JSON, lambda c: c.update(files=files, snapshot={
        **(c.get("snapshot") or {}), "file_count": len(files)}))
    seal_folder(bundle_copy)
    r = audit(bundle_copy)
    assert not r.ok and r.check("code").status == "fail"
    msgs = [f.message for f in r.check("code").errors]
    assert any(says in m for m in msgs), msgs
    assert all(f.file == formats.CODE_SNAPSHOT for f in r.check("code").errors)
