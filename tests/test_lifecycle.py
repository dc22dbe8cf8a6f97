"""Issue 3: run status however a run ends, fd-level capture, secrets, notes, sealing after SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, offline_env, only_run

from provenance import formats

SCRIPT = REPO / "tests" / "scripts" / "lifecycle.py"
# made at random here, so that no file of the repository (hence of a code snapshot) holds them
SECRETS = {name: f"{name.lower()}-{secrets.token_hex(8)}"
           for name in ("MY_API_TOKEN", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "DB_PASSWORD")}
URL_PASSWORD = f"urlpw{secrets.token_hex(6)}"


def _start(mode: str, tmp: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = offline_env(tmp)
    env.update(extra_env or {})
    return subprocess.Popen([sys.executable, str(SCRIPT), mode, str(tmp / "runs")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(pred, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.1)


def _verify_seal(root: Path) -> str:
    """Independent check of manifest.json: every file listed, every digest right, root digest right."""
    st = json.loads((root / "manifest.json").read_text())
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"manifest.json"}
    names = [r["name"] for r in st["predicate"]["resources"]]
    assert set(names) == files
    h = hashlib.sha256()
    for r in st["predicate"]["resources"]:
        assert hashlib.sha256((root / r["name"]).read_bytes()).hexdigest() == r["digest"], r["name"]
        h.update(bytes.fromhex(r["digest"]))
    assert st["subject"][0]["digest"]["sha256"] == h.hexdigest()
    return h.hexdigest()


def _prov(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provenance.cli", *args], cwd=REPO, env=offline_env(tmp),
                          capture_output=True, text=True, timeout=120)


def test_completed_run_captures_output_at_fd_level(tmp_path: Path) -> None:
    proc = _start("ok", tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "printf from C" in out  # the terminal still sees everything
    root = only_run(tmp_path / "runs")
    stdout = (root / "logs" / "stdout.log").read_text()
    for line in ("python-level stdout", "fd-level stdout", "printf from C", "checkpoint 10"):
        assert line in stdout
    assert "fd-level stderr" in (root / "logs" / "stderr.log").read_text()
    info = json.loads((root / "run.json").read_text())
    assert info["status"] == "completed" and info["exit_status"] == 0
    events = [json.loads(x)["event"] for x in open(root / "logs" / "events.jsonl")]
    assert events[0] == "started" and events[-1] == "completed" and events.count("checkpoint") == 2
    _verify_seal(root)


def test_failure_is_recorded_with_traceback_and_sealed(tmp_path: Path) -> None:
    proc = _start("fail", tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "boom at step 3" in err
    root = only_run(tmp_path / "runs")
    info = json.loads((root / "run.json").read_text())
    assert info["status"] == "failed" and info["exit_status"] == 1
    assert info["error"]["type"] == "RuntimeError" and "boom at step 3" in info["error"]["traceback"]
    assert "boom at step 3" in (root / "logs" / "stderr.log").read_text()
    _verify_seal(root)


def test_sigterm_while_the_failure_is_recorded_still_seals(tmp_path: Path) -> None:
    """A launcher's SIGTERM that lands inside the run's exit handler (here: while it formats the error)
    is noted, not raised: the bundle is sealed as failed, not left `running` for `prov seal`; once it is
    sealed the SIGTERM is delivered again, and the process ends by it (SIGTERM's default action)."""
    proc = _start("term-while-failing", tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGTERM, err
    root = only_run(tmp_path / "runs")
    info = json.loads((root / "run.json").read_text())
    assert info["status"] == "failed" and info["error"]["type"] == "SigtermWhenFormatted", info
    _verify_seal(root)


def test_sigterm_while_a_completed_run_seals_stops_the_process_after_the_seal(tmp_path: Path) -> None:
    """A SIGTERM while the run seals (here: sent from an observer's on_finish) waits for the seal and the
    on_end observers, then stops the process: the script's tail after the `with` block never runs (before,
    the signal was dropped and the process went on although its launcher asked it to stop)."""
    proc = _start("term-while-sealing", tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGTERM, err
    root = only_run(tmp_path / "runs")
    info = json.loads((root / "run.json").read_text())
    assert info["status"] == "completed" and info["exit_status"] == 0, info
    root_hex = _verify_seal(root)
    assert f"on_end ran: completed {root_hex}" in out and "done" not in out, out


def test_a_failure_whose_str_raises_is_still_recorded_and_the_sigterm_still_delivered(tmp_path: Path) -> None:
    """A SIGTERM while the failure is formatted, and then str() of the exception raises: the bundle is still
    sealed as failed (named by the exception's type and repr), and the SIGTERM is delivered once it is (before,
    __exit__ raised before finish(): the bundle stayed `running` and the SIGTERM was swallowed for good)."""
    proc = _start("term-then-str-raises", tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGTERM, err
    root = only_run(tmp_path / "runs")
    info = json.loads((root / "run.json").read_text())
    assert info["status"] == "failed" and info["exit_status"] == 1, info
    assert info["error"]["type"] == "SigtermThenStrRaises", info
    assert info["error"]["message"] == "SigtermThenStrRaises('not shown')", info
    assert "formatting it failed: ValueError" in info["error"]["traceback"], info
    _verify_seal(root)


def test_a_seal_that_fails_while_a_sigterm_waits_prints_its_error_before_the_sigterm(tmp_path: Path) -> None:
    """A SIGTERM while the run seals, and the seal raises: the error is written to stderr first, then the
    SIGTERM ends the process (before, the re-sent SIGTERM killed it before the error was printed)."""
    proc = _start("term-then-seal-fails", tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGTERM, err
    assert "did not finish sealing" in err and "OSError: disk full while sealing" in err, err
    root = only_run(tmp_path / "runs")
    assert not (root / formats.MANIFEST).exists()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_seal_as_interrupted(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    proc = _start("slow", tmp_path)
    _wait_for(lambda: (tmp_path / "runs").exists() and any((tmp_path / "runs").glob("*/checkpoints/index.json")))
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    root = only_run(tmp_path / "runs")
    info = json.loads((root / "run.json").read_text())
    assert info["status"] == "interrupted" and info["exit_status"] == code
    assert info["error"]["message"] == sig.name
    _verify_seal(root)


def test_sigkill_then_prov_seal_gives_an_interrupted_bundle(tmp_path: Path) -> None:
    proc = _start("slow", tmp_path)
    _wait_for(lambda: (tmp_path / "runs").exists() and any((tmp_path / "runs").glob("*/checkpoints/index.json")))
    root = only_run(tmp_path / "runs")
    note = _prov("note", str(root), "lowered lr after a spike", "--category", "hyperparameter", tmp=tmp_path)
    assert note.returncode == 0, note.stderr
    time.sleep(0.3)
    proc.kill()
    proc.communicate(timeout=60)
    assert json.loads((root / "run.json").read_text())["status"] == "running"
    assert not (root / "manifest.json").exists()
    sealed = _prov("seal", str(root), tmp=tmp_path)
    assert sealed.returncode == 0, sealed.stderr
    info = json.loads((root / "run.json").read_text())
    assert info["status"] == "interrupted" and info["ended_at"] and info["last_step"] >= 5
    assert f"root digest sha256:{_verify_seal(root)}" in sealed.stdout
    # what the run wrote before it died is intact and consistent
    metrics = list(formats.read_jsonl(root / "logs" / "metrics.jsonl"))
    assert [m["step"] for m in metrics] == list(range(1, len(metrics) + 1))
    order = list(formats.read_order(root / "order" / "rank0.ids.u32", root / "order" / "rank0.steps.bin"))
    assert formats.verify_order_chain(order) is None and len(order) >= len(metrics)
    notes = [json.loads(x) for x in open(root / "notes.jsonl")]
    assert notes[0]["text"] == "lowered lr after a spike" and notes[0]["category"] == "hyperparameter"
    index = json.loads((root / "checkpoints" / "index.json").read_text())["checkpoints"]
    on_disk = {p.relative_to(root).as_posix() for p in root.glob("checkpoints/*.safetensors")}
    assert {e["path"] for e in index} == on_disk


def test_prov_seal_refuses_a_live_run(tmp_path: Path) -> None:
    proc = _start("slow", tmp_path)
    try:
        _wait_for(lambda: (tmp_path / "runs").exists() and any((tmp_path / "runs").glob("*/logs/metrics.jsonl")))
        sealed = _prov("seal", str(only_run(tmp_path / "runs")), tmp=tmp_path)
        assert sealed.returncode == 2 and "still going" in sealed.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def test_planted_secrets_never_reach_the_bundle(tmp_path: Path) -> None:
    env = dict(SECRETS, PIP_INDEX_URL=f"https://alice:{URL_PASSWORD}@pypi.example.invalid/simple")
    proc = _start("secrets", tmp_path, env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    root = only_run(tmp_path / "runs")
    planted = [v.encode() for v in SECRETS.values()] + [URL_PASSWORD.encode()]
    checked = 0
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            checked += 1
            for secret in planted:
                assert secret not in data, f"{secret!r} leaked into {p.relative_to(root)}"
    assert checked > 10
    stdout = (root / "logs" / "stdout.log").read_text()
    assert "MY_API_TOKEN=[REDACTED]" in stdout and "https://[REDACTED]@pypi.example.invalid" in stdout
    env_json = json.loads((root / "env" / "environment.json").read_text())
    assert env_json["env_vars"]["HF_TOKEN"] == "[REDACTED]"


def test_concurrent_note_writers_lose_nothing(tmp_path: Path) -> None:
    proc = _start("ok", tmp_path)
    proc.communicate(timeout=120)
    root = only_run(tmp_path / "runs")
    writer = ("import sys\nfrom provenance.cli import main\n"
              "for i in range(25):\n"
              "    assert main(['note', sys.argv[1], f'writer {sys.argv[2]} note {i}', '--category', 'data']) == 0\n")
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(root), str(w)], cwd=REPO, env=offline_env(tmp_path),
                              stdout=subprocess.DEVNULL) for w in range(4)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    notes = [json.loads(x) for x in open(root / "notes.jsonl")]
    assert sorted(n["text"] for n in notes) == sorted(f"writer {w} note {i}" for w in range(4) for i in range(25))
    assert all(n["step"] == 10 and n["category"] == "data" for n in notes)
    _verify_seal(root)  # a note on a sealed run reseals it


def test_note_rejects_bad_category(tmp_path: Path) -> None:
    proc = _start("ok", tmp_path)
    proc.communicate(timeout=120)
    root = only_run(tmp_path / "runs")
    bad = _prov("note", str(root), "x", "--category", "gossip", tmp=tmp_path)
    assert bad.returncode == 2 and "gossip" in bad.stderr
    assert not (root / "notes.jsonl").exists()
    missing = _prov("note", str(tmp_path / "nope"), "x", tmp=tmp_path)
    assert missing.returncode == 2 and "not a run folder" in missing.stderr


def test_data_mismatch_stops_the_run_before_step_0(tmp_path: Path) -> None:
    from conftest import train

    train(tmp_path / "a")
    first = only_run(tmp_path / "a" / "runs")
    manifest = first / "data" / "tiny-corpus" / "manifest.json"
    data_dir = Path(json.loads(manifest.read_text())["source"]["local_path"])
    target = data_dir / "validation.jsonl"
    raw = bytearray(target.read_bytes())
    raw[10] ^= 0x01
    target.write_bytes(bytes(raw))
    proc = subprocess.run([sys.executable, "-m", "training.train", "--config", str(REPO / "configs" / "tiny-lm.yaml"),
                           *__import__("conftest").TINY, f"run.runs_dir={tmp_path / 'b' / 'runs'}",
                           f"data.root={tmp_path / 'a' / 'data'}", f"data.manifest={manifest}"],
                          cwd=REPO, env=offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "validation.jsonl" in proc.stderr
    expected = next(e["sha256"] for e in json.loads(manifest.read_text())["files"] if e["path"] == "validation.jsonl")
    assert f"expected sha256:{expected}" in proc.stderr
    assert f"found sha256:{hashlib.sha256(bytes(raw)).hexdigest()}" in proc.stderr
    assert not (tmp_path / "b" / "runs").exists() or not any((tmp_path / "b" / "runs").iterdir())


def test_run_outside_git_still_snapshots_code(tmp_path: Path) -> None:
    from provenance.capture.code import capture_code, read_snapshot

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "train.py").write_text("print('hi')\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "old.txt").write_text("not code")
    cap = capture_code(tmp_path)
    assert cap.facts["in_git"] is False and cap.facts["commit"] is None
    files = read_snapshot(cap.snapshot)
    assert files == {"pkg/train.py": b"print('hi')\n"}
    assert cap.facts["files"]["pkg/train.py"] == "sha256:" + hashlib.sha256(b"print('hi')\n").hexdigest()


def test_git_capture_records_dirty_state_untracked_files_and_strips_credentials(tmp_path: Path) -> None:
    from provenance.capture.code import capture_code, read_snapshot

    def git(*a: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})

    git("init", "-q", "-b", "main")
    (tmp_path / "train.py").write_text("lr = 0.1\n")
    (tmp_path / ".gitignore").write_text("ignored.txt\n")
    git("add", ".")
    git("commit", "-qm", "init")
    git("remote", "add", "origin", "https://bob:hunter2secret@git.example.invalid/lab/repo.git")
    (tmp_path / "train.py").write_text("lr = 0.2\n")
    (tmp_path / "new_module.py").write_text("X = 1\n")
    (tmp_path / "ignored.txt").write_text("secret stuff\n")
    cap = capture_code(tmp_path)
    f = cap.facts
    assert f["in_git"] and f["dirty"] is True and f["branch"] == "main" and len(f["commit"]) == 40
    assert f["remote_url"] == "https://[REDACTED]@git.example.invalid/lab/repo.git"
    assert f["untracked_files"] == ["new_module.py"]
    assert b"+lr = 0.2" in cap.diff and b"+X = 1" in cap.diff and b"secret stuff" not in cap.diff
    files = read_snapshot(cap.snapshot)
    assert files["train.py"] == b"lr = 0.2\n" and files["new_module.py"] == b"X = 1\n" and "ignored.txt" not in files
