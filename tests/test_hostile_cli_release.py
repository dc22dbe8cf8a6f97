"""Hostile bundles against `prov release` (issue 18 items 2, 7), each in its own copy: exit status 2, one
error line naming the file (escaped; the warning that no key was given aside), no traceback, a deadline,
nothing written outside the case's folder, the bundle unchanged, and with `-o DIR` no half-made release
left behind. Called in this process; one case through a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import hostile as h
import pytest
from conftest import offline_env

CASES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    **h.FOLDER_CASES,
    "safetensors header claiming 2^60 bytes": (h.header_claims_2_60, ("model/model.safetensors", "outside the file")),
    "checkpoint named step-abc.safetensors": (h.checkpoint_step_abc, ("step-abc.safetensors",)),
    "checkpoint index pointing outside": (h.index_points_outside, ("escapes the bundle",)),
    "newline in a resource name": (h.forged_pass_line, ("x\\nINTEGRITY    PASS",)),
    "recorded command not bound by its digest": (h.tampered_command, ("command_digest",)),
    "code snapshot with a ../ member": (h.escaping_snapshot, ("'../escaped.py' escapes the destination",)),
    "a release archive instead of a folder": (h.archive_with_link, ("not a run folder",)),
}


@pytest.mark.parametrize("out_dir", [False, True], ids=["in place", "-o DIR"])
@pytest.mark.parametrize("case", list(CASES))
def test_prov_release_refuses_a_hostile_bundle(tiny_bundle: Path, tmp_path: Path, case: str, out_dir: bool,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    make, words = CASES[case]
    box = h.Box(tiny_bundle, tmp_path, make)
    argv = ["release", str(box.bundle), "--no-progress"] + (["-o", str(box.work / "released")] if out_dir else [])
    rc, out, err = box.call(argv, capsys, monkeypatch)
    assert rc == 2, (rc, out[-2000:], err[-2000:])
    h.assert_one_error_line(err, *words)
    h.assert_printable(out + err)
    assert not any(x.startswith(("INTEGRITY", "VERDICT")) for x in (out + err).splitlines())
    box.check()  # in place: nothing added to the bundle; -o DIR: no DIR left


def test_prov_release_refuses_at_the_process_boundary(tiny_bundle: Path, tmp_path: Path) -> None:
    box = h.Box(tiny_bundle, tmp_path, h.fifo)
    env = {**offline_env(tmp_path / "work" / ".env-unused"), "TMPDIR": str(box.tmp)}
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "release", str(box.bundle), "--no-progress"],
                          cwd=box.work, env=env, capture_output=True, text=True, timeout=h.TIMEOUT)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    h.assert_one_error_line(proc.stderr, "logs/pipe.log: a FIFO")
    box.check()
