"""`prov diff` checks both seals first (the audit's integrity engine): a bundle changed after its seal
exits 1 and names the file, an unsealed one is reported and fails too, `--exit-code` exits 1 on any
difference, `--no-verify` hashes nothing. Copies of the session's tiny bundle, changed on purpose; every
command runs in this process (no training, no subprocess)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from provenance import formats
from provenance.bundle import seal_folder
from provenance.cli import main


def prov(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["diff", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def copy(src: Path, where: Path) -> Path:
    dest = where / src.name
    shutil.copytree(src, dest)
    return dest


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def integrity_lines(out: str) -> list[str]:
    lines = out.splitlines()
    assert lines[0].startswith("A: ") and lines[1].startswith("B: "), lines[:4]
    return lines[2:4]


def test_a_byte_flipped_copy_fails_and_is_named(tiny_bundle: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    b = copy(tiny_bundle, tmp_path)
    flip_last_byte(b / formats.MODEL_DIR / "model.safetensors")  # the weights' last value, not its header
    rc, out, err = prov(capsys, str(tiny_bundle), str(b))
    assert rc == 1 and err == "", (rc, err)
    ia, ib = integrity_lines(out)
    assert ia.startswith("integrity A: sealed, intact (") and "all match the seal" in ia
    assert ib == "integrity B: tampered: model/model.safetensors changed since the seal"
    assert "model: same" in out  # what the seal claims: the diff alone would call them the same

    rc, out, _ = prov(capsys, str(b), str(tiny_bundle), "--json")
    assert rc == 1
    d = json.loads(out)
    assert d["integrity"]["b"]["state"] == "intact" and d["integrity"]["b"]["ok"]
    ia = d["integrity"]["a"]
    assert (ia["state"], ia["ok"], ia["sealed"]) == ("tampered", False, True)
    (ch,) = ia["changed"]
    assert ch["name"] == "model/model.safetensors" and ch["expected"] != ch["actual"]
    assert ch["expected"].startswith("sha256:") and ia["missing"] == ia["extra"] == []

    # --no-verify: nothing hashed, nothing failed, said so
    rc, out, _ = prov(capsys, str(tiny_bundle), str(b), "--no-verify")
    assert rc == 0
    assert integrity_lines(out) == ["integrity A: not verified: the seal was not checked",
                                    "integrity B: not verified: the seal was not checked"]


def test_missing_extra_and_a_removed_seal_are_tampering(tiny_bundle: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    b = copy(tiny_bundle, tmp_path)
    (b / "code" / "diff.patch").unlink()
    (b / "logs" / "extra.log").write_text("not sealed\n")
    rc, out, _ = prov(capsys, str(tiny_bundle), str(b))
    assert rc == 1
    assert integrity_lines(out)[1] == ("integrity B: tampered: code/diff.patch missing, logs/extra.log not in "
                                       "the seal")
    # a bundle that shows it was sealed (it was re-sealed) and whose manifest is gone: not "unsealed"
    c = copy(tiny_bundle, tmp_path / "c")
    (c / formats.RESEALS).write_text("")
    (c / formats.MANIFEST).unlink()
    rc, out, _ = prov(capsys, str(c), str(tiny_bundle))
    assert rc == 1
    assert integrity_lines(out)[0] == (f"integrity A: tampered: manifest.json is missing, but {formats.RESEALS} "
                                       "shows the bundle was sealed")


def test_an_unsealed_bundle_is_reported_and_fails_the_diff(tiny_bundle: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    b = copy(tiny_bundle, tmp_path)
    (b / formats.MANIFEST).unlink()  # as a run still running (or killed before `prov seal`) leaves it
    run = formats.read_json(b / formats.RUN_JSON)
    run["status"] = "running"
    formats.atomic_write_json(b / formats.RUN_JSON, run)
    (b / formats.LOCK).write_text("")
    rc, out, err = prov(capsys, str(tiny_bundle), str(b))
    assert rc == 1 and err == ""
    assert integrity_lines(out)[1] == ("integrity B: not sealed (status running): nothing to check the files "
                                       "against (`prov seal` seals a killed run; --no-verify compares a live one "
                                       "without this check); warning: a live writer's lock file: the run may "
                                       "still be writing (.lock)")
    rc, out, _ = prov(capsys, str(tiny_bundle), str(b), "--json")
    ib = json.loads(out)["integrity"]["b"]
    assert (rc, ib["state"], ib["sealed"], ib["ok"], ib["status"]) == (1, "unsealed", False, False, "running")
    rc, out, _ = prov(capsys, str(tiny_bundle), str(b), "--no-verify")
    assert rc == 0 and "integrity B: not verified" in out  # a live run compared on purpose
    # a completed run whose seal was deleted, then edited: nothing shows it, so it never diffs clean
    c = copy(tiny_bundle, tmp_path / "c")
    (c / formats.MANIFEST).unlink()
    cfg = formats.read_json(c / formats.CONFIG_JSON)
    formats.atomic_write_json(c / formats.CONFIG_JSON, cfg)
    rc, out, _ = prov(capsys, str(c), str(tiny_bundle))
    assert rc == 1 and integrity_lines(out)[0].startswith("integrity A: not sealed (status completed): the run "
                                                          "ended but no seal is there")


def test_exit_code(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    same = copy(tiny_bundle, tmp_path / "same")
    rc, out, _ = prov(capsys, str(tiny_bundle), str(same), "--exit-code")
    assert rc == 0 and "config: same" in out
    rc, out, _ = prov(capsys, str(tiny_bundle), str(same), "--exit-code", "--json")
    d = json.loads(out)
    assert rc == 0 and d["identical"] and d["differs"] == []

    other = copy(tiny_bundle, tmp_path / "other")  # one config value changed, sealed again: intact, different
    cfg = formats.read_json(other / formats.CONFIG_JSON)
    cfg["config"]["train"]["lr"] = 0.5
    formats.atomic_write_json(other / formats.CONFIG_JSON, cfg)
    seal_folder(other)
    rc, out, _ = prov(capsys, str(tiny_bundle), str(other))
    assert rc == 0 and "train.lr: 0.003 → 0.5" in out  # a difference alone does not fail without --exit-code
    rc, out, _ = prov(capsys, str(tiny_bundle), str(other), "--exit-code", "--json")
    d = json.loads(out)
    assert rc == 1 and not d["identical"] and d["differs"] == ["config"]
    assert all(r["state"] == "intact" for r in d["integrity"].values())

    shorter = copy(tiny_bundle, tmp_path / "shorter")  # the same run stopped earlier: steps only in A
    metrics = list(formats.read_jsonl(shorter / formats.METRICS))
    (shorter / formats.METRICS).write_text("".join(formats.dumps_line(r) for r in metrics[:-2]))
    seal_folder(shorter)
    rc, out, _ = prov(capsys, str(tiny_bundle), str(shorter), "--exit-code", "--json")
    assert rc == 1 and json.loads(out)["differs"] == ["metrics"]


def test_hostile_names_in_the_integrity_line_stay_escaped(tiny_bundle: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    b = copy(tiny_bundle, tmp_path)
    (b / "logs" / "x\nINTEGRITY    PASS\x1b[2J").write_text("")
    rc, out, _ = prov(capsys, str(tiny_bundle), str(b))
    assert rc == 1
    assert integrity_lines(out)[1] == "integrity B: tampered: logs/x\\nINTEGRITY    PASS\\x1b[2J not in the seal"
    assert not any(line.startswith("INTEGRITY") for line in out.splitlines())
    assert all(c == "\n" or c.isprintable() for c in out)
    rc, out, _ = prov(capsys, str(tiny_bundle), str(b), "--json")
    assert rc == 1 and json.loads(out)["integrity"]["b"]["extra"][0]["name"] == "logs/x\nINTEGRITY    PASS\x1b[2J"


def test_the_hashing_progress_bar_draws_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar prov diff and prov audit draw while hashing: on stderr when it is a terminal (by default it looked
    at the stream argument, None, and was never drawn), never on a pipe."""
    import io
    import sys

    from provenance.cli.audit import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert ProgressBar().enabled
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not ProgressBar().enabled
