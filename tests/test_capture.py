"""The capture layer of `prov run` (provenance.capture.inject) on unmodified training scripts.

The fixture scripts in tests/scripts/ import nothing of this project; each writes what it
computed (every micro-step's loss, and the sample indices it trained on) to side files,
which the bundle's records must equal exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import offline_env
from test_integrations_common import assert_sealed, only_run, prov

from provenance import formats
from provenance.capture import inject
from provenance.hashing import sha256_file

SCRIPTS = Path(__file__).parent / "scripts"


def _work(tmp: Path) -> Path:
    work = tmp / "work"
    work.mkdir()
    for name in ("capture_nanogpt.py", "capture_dataloader.py", "capture_failing_hook.py", "capture_ddp.py"):
        shutil.copy(SCRIPTS / name, work / name)
    rng = np.random.default_rng(0)
    rng.integers(0, 64, size=3000).astype(np.uint16).tofile(work / "tokens.bin")
    (work / "points.csv").write_text("".join(f"{i / 10},{2 * i / 10 + 1}\n" for i in range(40)))
    return work


def _wrapped(work: Path, tmp: Path, *command: str, check: bool = True) -> tuple[subprocess.CompletedProcess[str], Path]:
    proc = prov("run", "--runs-dir", "runs", "--", sys.executable, *command, cwd=work, env=offline_env(tmp))
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, only_run(work / "runs")


def _metrics(root: Path) -> list[dict]:
    return list(formats.read_jsonl(root / formats.METRICS))


def _micro(metrics: list[dict]) -> list[float]:
    return [v for m in metrics for v in m.get("micro_losses", [m["loss"]])]


def test_nanogpt_style_loop_is_captured(tmp_path: Path) -> None:
    work = _work(tmp_path)
    _, root = _wrapped(work, tmp_path, "capture_nanogpt.py", "tokens.bin", "out", "--iters", "8")
    side = json.loads((work / "out" / "losses.json").read_text())
    metrics = _metrics(root)
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert _micro(metrics) == side  # every micro-step's loss, exactly as the script computed it
    for m in metrics:
        assert m["micro_steps"] == 2
        assert m["loss"] == m["micro_losses"][0] + m["micro_losses"][1]
        assert m["loss_bits"] == formats.float_bits(m["loss"])
    assert metrics[0]["lr"] == 3e-3 * 1 / 8 and metrics[-1]["lr"] == 3e-3
    # no DataLoader: each step carries the content digests of its two micro-batches' inputs
    order = list(formats.read_jsonl(root / formats.capture_paths(0).order))
    assert [o["evidence"] for o in order] == [formats.EVIDENCE_CONTENT] * 8
    assert all(len(o["content"]) == 2 for o in order)
    assert len({c for o in order for c in o["content"]}) == 16  # torch.randint offsets: all different
    # the script's seed, not the wrapper's
    info = formats.read_json(root / formats.RUN_JSON)
    assert info["seed"] == 1337 and info["seeds"]["torch"] == 1337
    assert info["determinism"]["num_threads"] == 1
    seeds = list(formats.read_jsonl(root / formats.capture_paths(0).seeds))
    assert [(s["function"], s["value"], s["before_step"]) for s in seeds] == [("torch.manual_seed", 1337, 1)]
    # ckpt.pt is overwritten: both versions hashed, each after its step; the last one is the file on disk
    index = formats.read_json(root / formats.CHECKPOINT_INDEX)
    entries = index["checkpoints"]
    assert [(e["step"], e["path"], e["role"]) for e in entries] == [(4, "out/ckpt.pt", "full-state"),
                                                                      (8, "out/ckpt.pt", "full-state")]
    assert entries[1]["sha256"] == sha256_file(work / "out" / "ckpt.pt") != entries[0]["sha256"]
    assert_sealed(root)


def test_dataloader_loop_with_accumulation_is_captured(tmp_path: Path) -> None:
    work = _work(tmp_path)
    _, root = _wrapped(work, tmp_path, "capture_dataloader.py", "points.csv", "out")
    side_losses = json.loads((work / "out" / "losses.json").read_text())
    side_order = json.loads((work / "out" / "order.json").read_text())
    metrics = _metrics(root)
    assert len(metrics) == len(side_order) == 6
    # the last micro-batch of an epoch is accumulated into the next epoch's first step, as the script does
    assert _micro(metrics) == side_losses[: sum(m["micro_steps"] for m in metrics)]
    order = [list(s.sample_ids) for s in formats.read_order(*(root / p for p in formats.order_paths(0)[1:]))]
    assert order == side_order
    evidence = list(formats.read_jsonl(root / formats.capture_paths(0).order))
    assert {o["evidence"] for o in evidence} == {formats.EVIDENCE_IDS}
    assert [m["lr"] for m in metrics] == [0.05, 0.05, 0.05, 0.025, 0.025, 0.025]  # StepLR, read at each step
    seeds = [(s["function"], s["value"]) for s in formats.read_jsonl(root / formats.capture_paths(0).seeds)]
    assert seeds == [("random.seed", 7), ("numpy.random.seed", 7), ("torch.manual_seed", 7)]
    index = {e["path"]: e for e in formats.read_json(root / formats.CHECKPOINT_INDEX)["checkpoints"]}
    assert {p: (e["role"], e["writer"]) for p, e in index.items()} == {
        "out/weights-epoch0.pt": ("weights", "torch.save"), "out/weights-epoch1.pt": ("weights", "torch.save"),
        "out/model.safetensors": ("weights", "safetensors.save_file")}
    assert index["out/weights-epoch0.pt"]["step"] == 3 and index["out/model.safetensors"]["step"] == 6
    for p, e in index.items():
        assert e["sha256"] == sha256_file(work / p)
    assert_sealed(root)


def test_capture_changes_no_number_and_needs_prov_run(tmp_path: Path) -> None:
    """The same script with the hook on its path but without PROV_CAPTURE writes nothing extra, and the
    captured run computed bit for bit what the bare one did."""
    work = _work(tmp_path)
    _, root = _wrapped(work, tmp_path, "capture_nanogpt.py", "tokens.bin", "out", "--iters", "4")
    env = offline_env(tmp_path)
    env["PYTHONPATH"] = str(inject.HOOK_DIR)
    env.pop(inject.ENV, None)
    subprocess.run([sys.executable, "capture_nanogpt.py", "tokens.bin", "bare", "--iters", "4"], cwd=work, env=env,
                   check=True, capture_output=True)
    assert (work / "bare" / "losses.json").read_bytes() == (work / "out" / "losses.json").read_bytes()
    assert sorted(p.name for p in (work / "bare").iterdir()) == ["ckpt.pt", "losses.json"]
    assert sha256_file(work / "bare" / "ckpt.pt") == sha256_file(work / "out" / "ckpt.pt")
    assert len(_metrics(root)) == 4


def test_failing_hook_is_recorded_and_training_goes_on(tmp_path: Path) -> None:
    work = _work(tmp_path)
    _, root = _wrapped(work, tmp_path, "capture_failing_hook.py", "out")
    assert (work / "out" / "done.txt").read_text() == "5 steps\n"
    events = list(formats.read_jsonl(root / formats.capture_paths(0).events))
    failed = [e for e in events if e["event"] == "observer_failed"]
    assert failed and failed[0]["hook"] == "optimizer-step" and "TypeError" in failed[0]["error"]
    assert len(failed) == 3  # switched off after three failures
    wrapper_events = [e for e in formats.read_jsonl(root / formats.EVENTS) if e["event"] == "observer_failed"]
    assert len(wrapper_events) == 3
    assert_sealed(root)


def test_killed_command_still_audits(tmp_path: Path) -> None:
    """SIGKILL mid-training: the wrapper seals what was captured; killing the wrapper too leaves it to
    `prov seal`, which finishes the captured records the same way."""
    work = _work(tmp_path)
    proc, root = _wrapped(work, tmp_path, "capture_dataloader.py", "points.csv", "out", "--kill-at", "2",
                          check=False)
    assert proc.returncode == 128 + signal.SIGKILL
    assert [m["step"] for m in _metrics(root)] == [1, 2]
    assert formats.read_json(root / formats.RUN_JSON)["seed"] == 7
    assert_sealed(root)

    # the wrapper itself killed: nothing sealed the bundle; `prov seal` does
    env = offline_env(tmp_path)
    shutil.rmtree(work / "runs")
    wrapper = subprocess.Popen([sys.executable, "-m", "provenance.cli", "run", "--runs-dir", "runs", "--",
                                sys.executable, "capture_dataloader.py", "points.csv", "out3", "--epochs", "200"],
                               cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = 60.0
        import time

        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline:
            runs = list((work / "runs").glob("*/logs/metrics.jsonl")) if (work / "runs").is_dir() else []
            if runs and len(runs[0].read_bytes().splitlines()) >= 3:
                break
            time.sleep(0.05)
        root = only_run(work / "runs")
        child = next(e["pid"] for e in formats.read_jsonl(root / formats.EVENTS) if e["event"] == "child_started")
        os.kill(wrapper.pid, signal.SIGKILL)
        os.killpg(child, signal.SIGKILL)
    finally:
        wrapper.wait(timeout=30)
    time.sleep(0.2)
    assert not (root / formats.MANIFEST).exists()
    sealed = prov("seal", str(root), cwd=work, env=env)
    assert sealed.returncode == 0, sealed.stderr
    info = assert_sealed(root)
    assert info["status"] == "interrupted" and info["seed"] == 7
    steps = [m["step"] for m in _metrics(root)]
    order = list(formats.read_order(*(root / p for p in formats.order_paths(0)[1:])))
    assert steps == [s.step for s in order] == list(range(1, len(steps) + 1)) and len(steps) >= 3


def test_torchrun_workers_are_captured_per_rank(tmp_path: Path) -> None:
    work = _work(tmp_path)
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = prov("run", "--runs-dir", "runs", "--", str(torchrun), "--standalone", "--nproc_per_node=2",
                "capture_ddp.py", "out", cwd=work, env=offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = only_run(work / "runs")
    for rank in (0, 1):
        side = json.loads((work / "out" / f"rank{rank}.json").read_text())
        _, ids, steps, _v = formats.order_files(root, rank)
        assert [list(s.sample_ids) for s in formats.read_order(root / ids, root / steps)] == side["order"]
        metrics = formats.capture_paths(rank).metrics
        assert [m["loss"] for m in formats.read_jsonl(root / metrics)] == side["losses"]
    assert not (root / formats.capture_paths(2).order).exists()  # the launcher stepped nothing
    index = formats.read_json(root / formats.CHECKPOINT_INDEX)["checkpoints"]
    assert [(e["step"], e["path"], e["role"]) for e in index] == [(4, "out/weights.pt", "weights")]
    assert_sealed(root)


def test_no_capture_leaves_the_command_alone(tmp_path: Path) -> None:
    work = _work(tmp_path)
    proc = prov("run", "--runs-dir", "runs", "--no-capture", "--", sys.executable, "capture_failing_hook.py", "out",
                cwd=work, env=offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = only_run(work / "runs")
    assert not (root / formats.CAPTURE_DIR).exists() and not (root / formats.METRICS).exists()
    added = formats.read_json(root / "command.json")["env_added"]
    assert inject.ENV not in added and "PYTHONPATH" not in added
    assert_sealed(root)
