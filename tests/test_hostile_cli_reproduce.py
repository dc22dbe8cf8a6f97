"""Hostile bundles against `prov reproduce` (issue 18 items 2, 3, 7), each in its own copy: exit status 2, one
error line naming the file (escaped), no traceback, a deadline (a hang fails), nothing written outside the
case's folder (a canary, the parent's listing, an empty TMPDIR), the bundle unchanged and no work folder
left behind. The command is called in this process (its argument parsing and printing included); one case
goes through a fresh interpreter, where a traceback or a hang would show at the process boundary."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import hostile as h
import pytest
from conftest import offline_env

# case -> (make it hostile, words the one error line must hold)
CASES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    **h.FOLDER_CASES,
    "newline in a resource name": (h.forged_pass_line, ("x\\nINTEGRITY    PASS",)),
    "recorded command not bound by its digest": (h.tampered_command, ("command_digest", "not running it")),
    "code snapshot with a ../ member": (h.escaping_snapshot, ("'../escaped.py' escapes the destination",)),
    "release archive with a symlink member": (h.archive_with_link, ("'run/evil' is a symbolic link",)),
    "release archive with a ../ member": (h.archive_escaping, ("'run/../../escaped.txt' escapes the destination",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_prov_reproduce_refuses_a_hostile_bundle(tiny_bundle: Path, tmp_path: Path, case: str,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    make, words = CASES[case]
    box = h.Box(tiny_bundle, tmp_path, make)
    rc, out, err = box.call(["reproduce", str(box.bundle)], capsys, monkeypatch)
    assert rc == 2, (rc, out[-2000:], err[-2000:])
    line = h.assert_one_error_line(err, "refused", *words)
    assert "verdict: refused (nothing ran)" in out  # refused before anything was made or run
    h.assert_printable(out + err)
    assert not any(x.startswith(("INTEGRITY", "VERDICT")) for x in (out + err).splitlines()), line
    box.check()


def test_prov_reproduce_refuses_at_the_process_boundary(tiny_bundle: Path, tmp_path: Path) -> None:
    box = h.Box(tiny_bundle, tmp_path, h.fifo)
    env = {**offline_env(tmp_path / "work" / ".env-unused"), "TMPDIR": str(box.tmp)}
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "reproduce", str(box.bundle)], cwd=box.work,
                          env=env, capture_output=True, text=True, timeout=h.TIMEOUT)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    h.assert_one_error_line(proc.stderr, "logs/pipe.log: a FIFO")
    box.check()


# the bundle's claims disagree but nothing in it is unsafe to run: the training runs (a few steps) and the
# verdict is never bitwise (exit 1), the failing check named; slow because each case trains
CONSISTENCY = {
    "safetensors header claiming 2^60 bytes": (h.header_claims_2_60, "model/model.safetensors"),
    "checkpoint named step-abc.safetensors": (h.checkpoint_step_abc, "step-abc.safetensors"),
    "checkpoint index pointing outside": (h.index_points_outside, "escapes the bundle"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CONSISTENCY))
def test_prov_reproduce_of_an_inconsistent_bundle_is_never_bitwise(tiny_bundle: Path, tmp_path: Path, case: str,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    make, names = CONSISTENCY[case]
    box = h.Box(tiny_bundle, tmp_path, make)
    rc, out, err = box.call(["reproduce", str(box.bundle), "--steps", "2", "--workdir", str(box.root / "w")],
                            capsys, monkeypatch)
    assert rc == 1, (rc, out[-2000:], err[-2000:])
    assert "audit: consistency fails" in out and names in out and "Traceback" not in out + err, out
    h.assert_printable(out + err)


def test_a_run_id_that_is_a_path_never_places_the_work_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run.json's run id is the bundle author's: the default work folder (and --chain's per-segment folders)
    stay one folder under .cache/reproduce whatever it says."""
    from provenance.reproduce import default_workdir, safe_name

    monkeypatch.chdir(tmp_path)
    base = (tmp_path / ".cache" / "reproduce").resolve()
    for hostile in ("../../../../tmp/evil", "/etc/x", "..", "a/b\nc", ""):
        w = default_workdir(hostile)
        assert w.parent == base and w.name.endswith("Z"), (hostile, w)
        assert "/" not in safe_name(hostile) and not safe_name(hostile).startswith(".")
