"""Hostile bundles against `prov audit` on the command line, each in its own temporary copy.

For every case: a non-zero exit (2 refused, 1 failed), one clear line naming the file on
stderr when refused, never a traceback, a bounded time (the harness's timeout fails a hang),
and nothing written outside the temporary folder (a canary file in its parent and the parent's
listing are checked; archives unpack under the test's own TMPDIR, which must end up empty).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hostile as h
import pytest
from conftest import offline_env

TIMEOUT = h.TIMEOUT


# case -> (make it hostile, exit status, what the one line / the report must say)
CASES: dict[str, tuple[Callable[[Path], None], int, str]] = {
    "symlink": (h.symlink, 2, "logs/evil.jsonl: a symbolic link to '/etc/passwd'"),
    "fifo": (h.fifo, 2, "logs/pipe.log: a FIFO"),
    "tmp link to a folder": (h.tmp_link_to_folder, 2, ".x.tmp: a symbolic link"),
    "non-UTF-8 name": (h.non_utf8_name, 2, "a file name that is not UTF-8"),
    "deep manifest": (h.deep_manifest, 2, "manifest.json: JSON nested too deeply"),
    "5000-digit integer": (h.huge_int_metrics, 1, "logs/metrics.jsonl: line"),
    "deep run.json": (h.deep_run_json, 1, "run.json: JSON nested too deeply"),
    "header claims 2**60 bytes": (h.header_claims_2_60, 1, "lie outside the file"),
    "checkpoint step-abc": (h.checkpoint_step_abc, 1, "step-abc.safetensors is not in the checkpoint index"),
    "index points outside": (h.index_points_outside, 1, "escapes the bundle"),
    "forged INTEGRITY line": (h.forged_pass_line, 1, "x\\nINTEGRITY    PASS"),
    "tampered command": (h.tampered_command, 1, "does not match its command_digest"),
    "escaping snapshot": (h.escaping_snapshot, 1, "'../escaped.py' escapes the destination"),
    "archive with a link": (h.archive_with_link, 2, "'run/evil' is a symbolic link"),
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
