"""`prov seal` and `prov note` (issue 18 items 1, 2, 7): a killed run seals at once, hostile folders are
refused with one line and nothing written anywhere, a tampered bundle is never sealed over, and a
legitimate re-seal is recorded and audited."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, TINY, offline_env
from hostile import tree as snapshot

from provenance import formats
from provenance.capture.process import process_identity, process_state
from provenance.recover import verify_reseals

TIMEOUT = 60  # a hang fails the test instead of blocking the suite


def prov(*args: str, env_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provenance.cli", *args], cwd=REPO, env=offline_env(env_dir),
                          capture_output=True, text=True, timeout=TIMEOUT)




def assert_one_line_refusal(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def killed_copy(tiny_bundle: Path, box: Path) -> Path:
    """A copy of a real bundle as a SIGKILL leaves it: status running, no seal, process gone."""
    root = box / "runs" / tiny_bundle.name
    shutil.copytree(tiny_bundle, root)
    (root / formats.MANIFEST).unlink()
    info = json.loads((root / formats.RUN_JSON).read_text())
    info.update({"status": "running", "ended_at": None, "exit_status": None, "host": "a-host-that-is-gone"})
    (root / formats.RUN_JSON).write_text(json.dumps(info))
    return root


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """The folder every command may touch; a canary beside it and another inside, both compared byte for byte."""
    b = tmp_path / "box"
    (b / "outside").mkdir(parents=True)
    (b / "outside" / "canary.txt").write_text("the canary\n")
    (tmp_path / "canary.txt").write_text("the parent's canary\n")
    return b


def _checked(tmp_path: Path, box: Path, run: Callable[[], subprocess.CompletedProcess[str]],
             *words: str) -> None:
    before, parent_before = snapshot(box), (tmp_path / "canary.txt").read_bytes()
    t0 = time.monotonic()
    proc = run()
    assert time.monotonic() - t0 < TIMEOUT
    assert_one_line_refusal(proc, *words)
    assert snapshot(box) == before, "the command changed files although it refused"
    assert (tmp_path / "canary.txt").read_bytes() == parent_before
    assert {p.name for p in tmp_path.iterdir()} - {"env"} == {"box", "canary.txt"}


def _plant_fifo(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists():
        p.unlink()
    os.mkfifo(p)


def _outside_link(root: Path, rel: str, box: Path, content: bytes) -> None:
    target = box / "outside" / Path(rel).name
    target.write_bytes(content)
    (root / rel).unlink()
    (root / rel).symlink_to(target)


HOSTILE: dict[str, Callable[[Path, Path], None]] = {
    "safetensors header of 2^60 bytes": lambda root, box: (root / "checkpoints" / "step-00000099.safetensors")
    .write_bytes(struct.pack("<Q", 2**60) + b'{"a":1}'),
    "deeply nested run.json": lambda root, box: (root / formats.RUN_JSON).write_bytes(b"[" * 100_000 + b"]" * 100_000),
    "deeply nested metrics line": lambda root, box: (root / formats.METRICS).write_bytes(
        b"[" * 50_000 + b"]" * 50_000 + b"\n" + (root / formats.METRICS).read_bytes()),
    "a 5,000-digit integer in a metrics line": lambda root, box: (root / formats.METRICS).write_bytes(
        (root / formats.METRICS).read_bytes() + b'{"step": ' + b"9" * 5000 + b', "loss": 1.0}\n'),
    "step-abc.safetensors": lambda root, box: shutil.copyfile(
        next((root / "checkpoints").glob("step-*.safetensors")), root / "checkpoints" / "step-abc.safetensors"),
    "a non-UTF-8 file name": lambda root, box: (Path(os.fsdecode(os.fsencode(root / "logs") + b"/bad-\xff.log"))
                                                .write_bytes(b"x")),
    "a .x.tmp leftover that is a symlink to a folder": lambda root, box: (root / "checkpoints" / ".x.tmp")
    .symlink_to(box / "outside", target_is_directory=True),
    "a FIFO where a log would be": lambda root, box: _plant_fifo(root / formats.STDOUT),
    "a FIFO where an unindexed checkpoint would be": lambda root, box: _plant_fifo(
        root / "checkpoints" / "step-00000099.safetensors"),
    "metrics.jsonl symlinked outside": lambda root, box: _outside_link(
        root, formats.METRICS, box, b'{"step": 1, "loss": 2.0}\n{"step": 2, "lo'),
    "the order file symlinked outside": lambda root, box: _outside_link(
        root, "order/rank0.steps.bin", box, (root / "order" / "rank0.steps.bin").read_bytes() + b"12345678"),
}
WORDS = {
    "safetensors header of 2^60 bytes": ("step-00000099.safetensors", "header"),
    "deeply nested run.json": ("run.json", "nested"),
    "deeply nested metrics line": ("metrics.jsonl", "nested"),
    "a 5,000-digit integer in a metrics line": ("metrics.jsonl", "digits"),
    "step-abc.safetensors": ("step-abc.safetensors",),
    "a non-UTF-8 file name": ("bad-\\xff.log", "UTF-8"),
    "a .x.tmp leftover that is a symlink to a folder": (".x.tmp", "symbolic link"),
    "a FIFO where a log would be": ("stdout.log", "FIFO"),
    "a FIFO where an unindexed checkpoint would be": ("step-00000099.safetensors", "FIFO"),
    "metrics.jsonl symlinked outside": ("metrics.jsonl", "symbolic link"),
    "the order file symlinked outside": ("rank0.steps.bin", "symbolic link"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_prov_seal_refuses_hostile_run_folders(case: str, tiny_bundle: Path, tmp_path: Path, box: Path) -> None:
    root = killed_copy(tiny_bundle, box)
    HOSTILE[case](root, box)
    _checked(tmp_path, box, lambda: prov("seal", str(root), env_dir=tmp_path / "env"), *WORDS[case])


NOTE_CASES = ["deeply nested run.json", "a 5,000-digit integer in a metrics line", "a non-UTF-8 file name",
              "metrics.jsonl symlinked outside", "a FIFO where a log would be"]


@pytest.mark.parametrize("case", NOTE_CASES)
def test_prov_note_refuses_hostile_run_folders(case: str, tiny_bundle: Path, tmp_path: Path, box: Path) -> None:
    root = box / tiny_bundle.name
    shutil.copytree(tiny_bundle, root)
    HOSTILE[case](root, box)
    _checked(tmp_path, box, lambda: prov("note", str(root), "looks fine", env_dir=tmp_path / "env"), *WORDS[case])


def test_prov_note_never_writes_through_a_notes_symlink(tiny_bundle: Path, tmp_path: Path, box: Path) -> None:
    root = box / tiny_bundle.name
    shutil.copytree(tiny_bundle, root)
    (box / "outside" / "notes.jsonl").write_bytes(b"")
    (root / formats.NOTES).unlink(missing_ok=True)
    (root / formats.NOTES).symlink_to(box / "outside" / "notes.jsonl")
    _checked(tmp_path, box, lambda: prov("note", str(root), "x", env_dir=tmp_path / "env"), "notes.jsonl",
             "symbolic link")
    _plant_fifo(root / formats.NOTES)
    _checked(tmp_path, box, lambda: prov("note", str(root), "x", env_dir=tmp_path / "env"), "notes.jsonl", "FIFO")


# --- tampering is never laundered; a legitimate re-seal is recorded -----------------------------------


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def test_a_sealed_bundle_is_refused_and_a_tampered_one_never_resealed(bundle_copy: Path, tmp_path: Path) -> None:
    env = tmp_path / "env"
    again = prov("seal", str(bundle_copy), env_dir=env)
    assert_one_line_refusal(again, "already sealed", "--force")
    forced = prov("seal", "--force", str(bundle_copy), env_dir=env)
    assert forced.returncode == 0 and "existing seal verifies" in forced.stdout, forced.stderr
    _flip_byte(bundle_copy / formats.CODE_SNAPSHOT)
    (bundle_copy / "logs" / "planted.txt").write_text("planted")
    manifest = (bundle_copy / formats.MANIFEST).read_bytes()
    notes = (bundle_copy / formats.NOTES).read_bytes() if (bundle_copy / formats.NOTES).exists() else None
    for args in (("seal", "--force", str(bundle_copy)), ("note", str(bundle_copy), "looks fine")):
        proc = prov(*args, env_dir=env)
        assert_one_line_refusal(proc, "changed since it was sealed", "code/source.tar", "logs/planted.txt")
        assert (bundle_copy / formats.MANIFEST).read_bytes() == manifest
        assert ((bundle_copy / formats.NOTES).read_bytes() if notes is not None else None) == notes
        assert not (bundle_copy / formats.RESEALS).exists()
    audit = prov("audit", str(bundle_copy), env_dir=env)
    assert audit.returncode != 0


def test_notes_on_a_sealed_bundle_are_recorded_reseals_the_audit_checks(bundle_copy: Path, tmp_path: Path) -> None:
    env = tmp_path / "env"
    first_root = json.loads((bundle_copy / formats.MANIFEST).read_text())["subject"][0]["digest"]["sha256"]
    for text in ("looks fine", "checked the eval split"):
        proc = prov("note", str(bundle_copy), text, "--category", "evaluation", env_dir=env)
        assert proc.returncode == 0, proc.stderr
        assert formats.RESEALS in proc.stdout
    st = json.loads((bundle_copy / formats.MANIFEST).read_text())
    root_hex, resources = formats.parse_oms_statement(st)
    records, problems = verify_reseals(resources, root_hex, (bundle_copy / formats.RESEALS).read_bytes())
    assert problems == []
    assert len(records) == 2 and records[0]["previous_root_digest"] == f"sha256:{first_root}"
    assert records[0]["new_root_digest"] == records[1]["previous_root_digest"]
    assert records[1]["new_root_digest"] == f"sha256:{root_hex}"
    assert all(r["changed"] == [formats.NOTES] for r in records)
    audit = prov("audit", str(bundle_copy), env_dir=env)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "re-sealed 2 times" in audit.stdout
    # a record that does not lead back to the seal it names is an audit error
    lines = (bundle_copy / formats.RESEALS).read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[0])
    rec["changes"][0]["sha256_before"] = "sha256:" + "0" * 64
    forged = lines[:]
    forged[0] = (json.dumps(rec, sort_keys=True) + "\n").encode()
    _, problems = verify_reseals(resources, root_hex, b"".join(forged))
    assert problems and all("undoing its changes" in p for p in problems)


# --- liveness: zombies, reused pids -------------------------------------------------------------------


def test_process_identity_tells_a_reused_pid_from_the_run(bundle_copy: Path, tmp_path: Path) -> None:
    info = json.loads((bundle_copy / formats.RUN_JSON).read_text())
    (bundle_copy / formats.MANIFEST).unlink()
    me = process_identity()
    assert isinstance(me["start_ticks"], int) and me["boot_id"]
    assert process_state(os.getpid(), me) == "alive"
    # this very process, named by the run: alive, refused
    info.update({"status": "running", "host": socket.gethostname(), "pid": os.getpid(), "process": me})
    (bundle_copy / formats.RUN_JSON).write_text(json.dumps(info))
    proc = prov("seal", str(bundle_copy), env_dir=tmp_path / "env")
    assert_one_line_refusal(proc, "still going")
    # the same pid with another start time: a stranger that reused the pid, so the run is dead
    info["process"] = dict(me, start_ticks=me["start_ticks"] - 1)
    (bundle_copy / formats.RUN_JSON).write_text(json.dumps(info))
    assert process_state(os.getpid(), info["process"]) == "other"
    proc = prov("seal", str(bundle_copy), env_dir=tmp_path / "env")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((bundle_copy / formats.RUN_JSON).read_text())["status"] == "interrupted"


def _stat_state(pid: int) -> str:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return raw[raw.rfind(b")") + 2:].split()[0].decode()


def test_prov_seal_right_after_kill_9_of_a_real_training_seals_the_zombie(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "training.train", "--config", str(REPO / "configs" / "tiny-lm.yaml"), *TINY,
            f"run.runs_dir={runs}", f"data.root={tmp_path / 'data'}", "train.steps=100000"]
    child = subprocess.Popen(args, cwd=REPO, env=offline_env(tmp_path), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while not list(runs.glob("*/checkpoints/index.json")):
            assert child.poll() is None, "training ended before it was killed"
            assert time.monotonic() - t0 < 240, "training did not reach its first checkpoint"
            time.sleep(0.05)
        root = next(runs.iterdir())
        assert json.loads((root / formats.RUN_JSON).read_text())["process"]["pid"] == child.pid
        os.kill(child.pid, signal.SIGKILL)
        # not reaped: the parent (this test) has not waited, so the killed process is a zombie
        t0 = time.monotonic()
        while _stat_state(child.pid) != "Z":
            assert time.monotonic() - t0 < 10
            time.sleep(0.01)
        sealed = prov("seal", str(root), env_dir=tmp_path / "env")
        assert _stat_state(child.pid) == "Z", "the zombie was reaped before the seal: the test proves nothing"
        assert sealed.returncode == 0, sealed.stderr
        info = json.loads((root / formats.RUN_JSON).read_text())
        assert info["status"] == "interrupted" and info["exit_status"] == 137
        audit = prov("audit", str(root), env_dir=tmp_path / "env")
        assert "INTEGRITY" in audit.stdout and "Traceback" not in audit.stderr
        assert audit.returncode == 0, audit.stdout
    finally:
        child.kill()
        child.wait(timeout=60)


def test_the_python_add_note_never_seals_over_a_tampered_bundle(bundle_copy: Path) -> None:
    from provenance.bundle import BundleError, add_note

    _, digest = add_note(bundle_copy, "checked by hand", "evaluation")
    root_hex, resources = formats.parse_oms_statement(json.loads((bundle_copy / formats.MANIFEST).read_text()))
    assert digest == root_hex
    records, problems = verify_reseals(resources, root_hex, (bundle_copy / formats.RESEALS).read_bytes())
    assert problems == [] and records[0]["changed"] == [formats.NOTES]
    _flip_byte(bundle_copy / formats.CODE_SNAPSHOT)
    notes = (bundle_copy / formats.NOTES).read_bytes()
    with pytest.raises(BundleError, match=r"code/source\.tar"):
        add_note(bundle_copy, "looks fine", "other")
    assert (bundle_copy / formats.NOTES).read_bytes() == notes


def _is_utc_iso(text: object) -> bool:
    from datetime import datetime

    if not isinstance(text, str):
        return False
    offset = datetime.fromisoformat(text.replace("Z", "+00:00")).utcoffset()
    return offset is not None and not offset


@pytest.mark.parametrize("stale", [False, True])
def test_prov_seal_of_an_ended_unsealed_run_records_sealed_by(stale: bool, tiny_bundle: Path, tmp_path: Path) -> None:
    """A run that ended but has no seal (rank 0's detached sealer killed after it wrote run.json, before the
    seal; or no sealer): `prov seal` seals it and says so in run.json, a stale `sealed_by` kept under `replaces`."""
    root = tmp_path / "runs" / tiny_bundle.name
    shutil.copytree(tiny_bundle, root)
    (root / formats.MANIFEST).unlink()
    info = json.loads((root / formats.RUN_JSON).read_text())
    assert info["status"] == "completed" and "sealed_by" not in info
    old = {"command": "rank 0's detached sealer", "time": "2026-12-01T15:00:00Z", "waited_for_ranks": [1]}
    if stale:
        info["sealed_by"] = old
    info["host"] = "a-host-that-is-gone"
    (root / formats.RUN_JSON).write_text(json.dumps(info))
    proc = prov("seal", str(root), env_dir=tmp_path / "env")
    assert proc.returncode == 0, proc.stderr
    after = json.loads((root / formats.RUN_JSON).read_text())
    by = after["sealed_by"]
    assert by["command"] == "prov seal" and by["status_before"] == "completed" and _is_utc_iso(by["time"])
    assert by.get("replaces") == (old if stale else None)
    assert after["status"] == "completed" and after["ended_at"] == info["ended_at"]  # nothing else changed
    assert {k: v for k, v in after.items() if k != "sealed_by"} == {k: v for k, v in info.items() if k != "sealed_by"}
    audit = prov("audit", str(root), env_dir=tmp_path / "env")  # run.json as sealed: the seal covers sealed_by
    assert audit.returncode == 0 and "Traceback" not in audit.stderr, audit.stdout
    # a killed run (status running) records the status it found, too
    killed = killed_copy(tiny_bundle, tmp_path / "k")
    assert prov("seal", str(killed), env_dir=tmp_path / "env").returncode == 0
    by = json.loads((killed / formats.RUN_JSON).read_text())["sealed_by"]
    assert (by["command"], by["status_before"], "replaces" in by) == ("prov seal", "running", False)
    assert _is_utc_iso(by["time"]) and by["repaired"] == [] and by["indexed_checkpoints"] == []


def test_a_prov_seal_that_fails_puts_run_json_back(tiny_bundle: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No `sealed_by` claims a seal that was not made: run.json is as it was found, for the next `prov seal`."""
    from provenance import recover
    from provenance.bundle import BundleError

    root = tmp_path / "runs" / tiny_bundle.name
    shutil.copytree(tiny_bundle, root)
    (root / formats.MANIFEST).unlink()
    info = json.loads((root / formats.RUN_JSON).read_text())
    info["host"] = "a-host-that-is-gone"
    (root / formats.RUN_JSON).write_text(json.dumps(info))

    def fail(*_: object, **__: object) -> str:
        raise BundleError("the disk is full")

    monkeypatch.setattr(recover, "seal_folder_locked", fail)
    with pytest.raises(BundleError, match="disk is full"):
        recover.seal_run(root)
    assert json.loads((root / formats.RUN_JSON).read_text()) == info
    assert not (root / formats.MANIFEST).exists()
