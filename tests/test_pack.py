"""prov pack: deterministic release archives that audit like the folder they came from."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from provenance import formats
from provenance.archive import PackError, pack, unpacked
from provenance.audit import audit
from provenance.cli import main as prov_main

REPO = Path(__file__).resolve().parents[1]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_same_bundle_same_bytes(tiny_bundle: Path, tmp_path: Path, suffix: str) -> None:
    a = pack(tiny_bundle, tmp_path / f"a{suffix}")
    # a copy elsewhere, every file with another mtime, and a leftover of an interrupted write
    other = tmp_path / "elsewhere" / tiny_bundle.name
    shutil.copytree(tiny_bundle, other)
    for p in other.rglob("*"):
        os.utime(p, (1_234_567_890, 1_234_567_890))
    (other / "logs" / ".metrics.jsonl.x.tmp").write_text("torn")
    b = pack(other, tmp_path / f"b{suffix}")
    assert a.sha256 == b.sha256 == sha(a.path) == sha(b.path)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.root_digest == json.loads((tiny_bundle / formats.MANIFEST).read_text())["subject"][0]["digest"]["sha256"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_members_are_normalised(tiny_bundle: Path, tmp_path: Path) -> None:
    result = pack(tiny_bundle, tmp_path / "r.tar.gz")
    raw = result.path.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip with mtime 0
    with tarfile.open(result.path, "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    prefix = tiny_bundle.name + "/"
    assert names[0] == prefix + formats.MANIFEST
    rest = [n[len(prefix):] for n in names[1:]]
    assert rest == sorted(rest, key=formats.resource_sort_key)
    expected = sorted(p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file())
    assert sorted([formats.MANIFEST, *rest]) == expected and result.files == len(expected)
    for m in members:
        assert m.isreg() and m.mtime == 0 and m.uid == m.gid == 0 and m.uname == m.gname == "" and m.mode == 0o644


def test_archive_audits_like_the_folder(tiny_bundle: Path, tmp_path: Path) -> None:
    folder = audit(tiny_bundle)
    for suffix in (".tar", ".tar.gz"):
        arc = pack(tiny_bundle, tmp_path / f"r{suffix}").path
        scratch = tmp_path / f"scratch{suffix}"
        scratch.mkdir()
        r = audit(arc, tmp_dir=scratch)
        assert r.ok, r.failures()
        assert r.kind == "archive" and r.archive_sha256 == sha(arc)
        assert r.integrity.root_actual == folder.integrity.root_actual == r.integrity.root_manifest
        assert [c.status for c in r.checks] == [c.status for c in folder.checks]
        assert r.openness.to_dict() == folder.openness.to_dict()
        assert list(scratch.iterdir()) == []  # the unpacked copy is removed


def test_unpacked_hashes_while_it_writes(tiny_bundle: Path, tmp_path: Path) -> None:
    arc = pack(tiny_bundle, tmp_path / "r.tar").path
    with unpacked(arc, tmp_dir=tmp_path) as u:
        assert u.root.name == tiny_bundle.name
        for rel, d in u.digests.items():
            assert d == sha(tiny_bundle / rel) == sha(u.root / rel)
        tmp = u.tmp
    assert not tmp.exists()


def test_pack_refuses_a_bundle_that_does_not_match_its_seal(bundle_copy: Path, tmp_path: Path) -> None:
    target = bundle_copy / "model" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[100] ^= 1
    target.write_bytes(bytes(data))
    out = tmp_path / "out" / "r.tar.gz"
    with pytest.raises(PackError, match=r"model/model.safetensors: does not match the seal: expected sha256:"):
        pack(bundle_copy, out)
    assert list(out.parent.iterdir()) == []  # no archive, no temporary file
    target.unlink()
    with pytest.raises(PackError, match=r"missing: model/model.safetensors"):
        pack(bundle_copy, out)
    (bundle_copy / formats.MANIFEST).unlink()
    with pytest.raises(PackError, match=r"not sealed"):
        pack(bundle_copy, out)


def test_pack_refuses_other_archive_names(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(PackError, match=r"must end in .tar, .tar.gz or .tgz"):
        pack(tiny_bundle, tmp_path / "r.zip")
    assert list(tmp_path.iterdir()) == []


def test_tampered_archive_fails_the_audit_naming_the_file(tiny_bundle: Path, tmp_path: Path) -> None:
    good = pack(tiny_bundle, tmp_path / "good.tar").path
    victim = f"{tiny_bundle.name}/logs/metrics.jsonl"
    buf = io.BytesIO()
    with tarfile.open(good) as src, tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name == victim:
                data = data.replace(b'"step":2', b'"step":9', 1)
            dst.addfile(m, io.BytesIO(data))
    bad = tmp_path / "bad.tar"
    bad.write_bytes(buf.getvalue())
    r = audit(bad)
    assert not r.ok and [d.name for d in r.integrity.changed] == ["logs/metrics.jsonl"]
    assert "changed: logs/metrics.jsonl" in "\n".join(r.failures())


def test_cli_pack_then_audit(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "release.tar.gz"
    assert prov_main(["pack", str(tiny_bundle), "-o", str(out), "--no-progress"]) == 0
    assert f"archive sha256:{sha(out)}" in capsys.readouterr().out
    assert prov_main(["pack", str(tiny_bundle), "-o", str(out)]) == 2  # exists: not overwritten without --force
    assert "pass --force" in capsys.readouterr().err
    assert prov_main(["pack", str(tiny_bundle), "-o", str(out), "--force", "--no-progress"]) == 0
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "audit", str(out), "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["target"]["kind"] == "archive" and doc["target"]["archive_sha256"] == f"sha256:{sha(out)}"
    assert doc["verdict"] == "pass"
