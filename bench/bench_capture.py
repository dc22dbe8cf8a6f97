"""Overhead of `prov run`'s capture layer on the default model's training step (issue 12).

    .venv/bin/python bench/bench_capture.py [--steps 200] [--data loader|randint|both] [--json out.json]

Three processes run bench/capture_train.py (the default model's step in a plain script that
imports nothing of this project) side by side, interleaved step by step so that drift of the
machine cancels out: the driver sends each a byte through a FIFO, it runs one step and answers
with that step's wall time; only one process runs at a time, and the order rotates every step.

  bare     python bench/capture_train.py ...
  wrapped  prov run -- python bench/capture_train.py ...   (the capture layer injected)
  control  a second bare process: control/bare is the noise floor

The figure of merit is the median over steps (after --warmup) of the paired per-step ratio
wrapped/bare, next to control/bare. It also checks that the three computed the same losses bit
for bit, that the wrapped bundle's exact losses are the script's, and that every checkpoint hash
ran off the training thread (the capture records the thread that hashed each file).

A ratio, never a timed assertion: nothing here fails because the machine is slow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "bench" / "capture_train.py"


def _one(data: str, steps: int, warmup: int, checkpoint_every: int, tmp: Path) -> dict[str, Any]:
    from provenance import formats

    names = ("bare", "wrapped", "control")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    fifos: dict[str, tuple[Path, Path]] = {}
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    work, pipes = tmp / "work", tmp / "fifo"  # the wrapper snapshots its working folder: no FIFO in it
    work.mkdir()
    pipes.mkdir()
    for n in names:
        ctl, ack = pipes / f"{n}.ctl", pipes / f"{n}.ack"
        os.mkfifo(ctl)
        os.mkfifo(ack)
        fifos[n] = (ctl, ack)
        cmd = [sys.executable, str(WORKER), "--ctl", str(ctl), "--ack", str(ack), "--out", str(tmp / n),
               "--steps", str(steps), "--data", data, "--checkpoint-every", str(checkpoint_every)]
        if n == "wrapped":
            cmd = [sys.executable, "-m", "provenance.cli", "run", "--runs-dir", str(tmp / "runs"), "--", *cmd]
        procs[n] = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ctls, acks = {}, {}
    for n in names:
        ctls[n] = open(fifos[n][0], "wb", buffering=0)  # closed below
        acks[n] = open(fifos[n][1])
    times: dict[str, list[float]] = {n: [] for n in names}
    saves: dict[str, list[float]] = {n: [] for n in names}
    t0 = time.monotonic()
    for step in range(steps):
        k = step % len(names)
        for n in names[k:] + names[:k]:
            ctls[n].write(b"s")
            dt, save_dt = acks[n].readline().split()
            times[n].append(float(dt))
            if float(save_dt):
                saves[n].append(float(save_dt))
    for n in names:
        ctls[n].close()
    for n in names:
        procs[n].wait(timeout=600)
        acks[n].close()
        if procs[n].returncode != 0:
            raise SystemExit(f"{n}: exited with {procs[n].returncode}: {procs[n].stderr.read().decode()[-2000:]}")
    wall = time.monotonic() - t0
    losses = {n: json.loads((tmp / n / "losses.json").read_text()) for n in names}
    assert losses["bare"] == losses["wrapped"] == losses["control"], "the capture changed a loss"
    root = next(p for p in (tmp / "runs").iterdir() if p.is_dir())
    metrics = list(formats.read_jsonl(root / formats.METRICS))
    assert [m["loss"] for m in metrics] == losses["wrapped"], "the bundle's losses are not the script's"
    order = list(formats.read_jsonl(root / formats.capture_paths(0).order))
    hashed = list(formats.read_jsonl(root / formats.capture_paths(0).checkpoints))
    on_main = [h for h in hashed if h.get("hashed_on") == "MainThread"]
    ratio = [w / b for w, b in zip(times["wrapped"][warmup:], times["bare"][warmup:], strict=True)]
    noise = [c / b for c, b in zip(times["control"][warmup:], times["bare"][warmup:], strict=True)]
    med = {n: statistics.median(times[n][warmup:]) for n in names}
    return {
        "data": data, "steps": steps, "warmup": warmup, "wall_s": round(wall, 1),
        "median_step_ms": {n: round(1000 * v, 3) for n, v in med.items()},
        "paired_median_ratio_wrapped_bare": round(statistics.median(ratio), 4),
        "paired_median_ratio_control_bare": round(statistics.median(noise), 4),
        "ratio_of_medians_wrapped_bare": round(med["wrapped"] / med["bare"], 4),
        "evidence": sorted({o["evidence"] for o in order}),
        "checkpoint_saves_ms": {n: [round(1000 * s, 2) for s in saves[n]] for n in names},
        "checkpoints_hashed": len(hashed), "hashed_on_training_thread": len(on_main),
        "losses_bitwise_equal": True,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--data", choices=("loader", "randint", "both"), default="both")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    results = []
    for data in (("loader", "randint") if a.data == "both" else (a.data,)):
        with tempfile.TemporaryDirectory(prefix="bench-capture-") as d:
            r = _one(data, a.steps, a.warmup, a.checkpoint_every, Path(d))
        results.append(r)
        print(f"{data:8s} median step bare {r['median_step_ms']['bare']:.2f} ms, wrapped "
              f"{r['median_step_ms']['wrapped']:.2f} ms, control {r['median_step_ms']['control']:.2f} ms; "
              f"paired median ratio wrapped/bare {r['paired_median_ratio_wrapped_bare']:.4f} "
              f"(noise floor control/bare {r['paired_median_ratio_control_bare']:.4f}); evidence {r['evidence']}; "
              f"{r['checkpoints_hashed']} checkpoints hashed, {r['hashed_on_training_thread']} on the training "
              f"thread; losses bitwise equal", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
