"""Time of a reproduction against the original's training time (issue 5: at most 1.1x).

    .venv/bin/python bench/bench_reproduce.py [--steps 200] [--reps 1] [--json out.json]

Trains the default config (configs/tiny-lm.yaml: GPT-2, 4 layers, n_embd 128, batch 32)
for --steps steps, exactly as `make train` does (`python -m training.train`), then runs
`prov reproduce` on its bundle, and times both in the same process, one after the other:

  original       wall time and CPU time of the training command; run.json duration_s
                 (inside start_run); the median step time (logs/metrics.jsonl step_time)
  reproduction   wall time and CPU time of the whole `prov reproduce` (audit, code,
                 environment, data verification, the re-run, verdict, report and re-seal);
                 the re-run's own run.json duration_s and median step time; the time spent
                 outside the training child

On a shared machine wall times swing with the load of other processes (a 200-step run
took from 55 s to 560 s on the 2-core development VM while other test suites ran), so
the CPU-time ratio (getrusage of the children: user + system) and the ratio of median
step times are printed too; they are what to read when the load average is high.

The corpus is generated before the original starts, so that neither side pays for
generating it (a reproduction copies the bundled files). A reproduction needs its
original, so each pair is (train, reproduce); with --reps R there are R pairs and the
ratios are reported per pair and as medians. The verdict must be `reproduced (bitwise)`;
the benchmark checks it.

A ratio, never a timed assertion: nothing here fails because the machine is slow.

Segment verification (issue 15, items 4 and 8):

    .venv/bin/python bench/bench_reproduce.py --segments [--steps 240 --checkpoint-every 60] [--json out.json]

trains the default config with a checkpoint every --checkpoint-every steps at ONE thread
(run.threads=1, so that two intervals fit two cores), then runs, one after the other on that
original, `prov reproduce` (whole), `--segments --jobs 1`, `--segments --jobs 2` and
`--sample 1 --seed 0`, and prints each one's wall and CPU time (getrusage of the children, the
training children included), the load average before and after, and the ratios to the whole
reproduction. Every verdict must be `reproduced (bitwise)`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def offline_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "DVC_NO_ANALYTICS": "1",
                "HF_HOME": str(tmp / ".hf"), "HF_DATASETS_CACHE": str(tmp / ".hf" / "datasets"),
                "WANDB_DIR": str(tmp / ".wandb"), "TORCHINDUCTOR_CACHE_DIR": str(tmp / ".inductor")})
    return env


def prepare_data(root: Path) -> None:
    from provenance.config import load
    from training.config import Config
    from training.data import prepare_corpus

    cfg = load(Config, REPO / "configs" / "tiny-lm.yaml", [f"data.root={root}"])
    prepare_corpus(cfg.data)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _median_step(bundle: Path) -> float:
    times = [json.loads(x)["step_time"] for x in (bundle / "logs" / "metrics.jsonl").read_text().splitlines() if x]
    return statistics.median(times)


def one_pair(tmp: Path, steps: int, i: int) -> dict[str, Any]:
    env = offline_env(tmp)
    runs = tmp / f"runs{i}"
    cmd = [sys.executable, "-m", "training.train", "--config", "configs/tiny-lm.yaml", f"train.steps={steps}",
           f"run.runs_dir={runs}", f"data.root={tmp / 'data'}"]
    t0, c0 = time.perf_counter(), _cpu()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    train_wall, train_cpu = time.perf_counter() - t0, _cpu() - c0
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    (bundle,) = [p for p in runs.iterdir() if p.is_dir()]
    original = json.loads((bundle / "run.json").read_text())

    cmd = [sys.executable, "-m", "provenance.cli", "reproduce", str(bundle), "--workdir", str(tmp / f"w{i}"),
           "--json", "--quiet"]
    t0, c0 = time.perf_counter(), _cpu()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
    repro_wall, repro_cpu = time.perf_counter() - t0, _cpu() - c0
    if not proc.stdout.strip():
        raise SystemExit(f"prov reproduce printed nothing ({proc.returncode}):\n{proc.stderr[-3000:]}")
    doc = json.loads(proc.stdout)
    if proc.returncode != 0 or doc["verdict"] != "reproduced (bitwise)":
        raise SystemExit(f"not reproduced ({proc.returncode}): {doc.get('headline')}")
    d = doc["durations"]
    step_a, step_b = _median_step(bundle), _median_step(Path(doc["bundle"]))
    return {
        "original_cpu_s": round(train_cpu, 3),
        "reproduce_cpu_s": round(repro_cpu, 3),
        "ratio_cpu": round(repro_cpu / train_cpu, 4),
        "original_median_step_s": round(step_a, 5),
        "reproduction_median_step_s": round(step_b, 5),
        "ratio_median_step": round(step_b / step_a, 4),
        "original_wall_s": round(train_wall, 3),
        "original_run_s": original["duration_s"],
        "reproduce_wall_s": round(repro_wall, 3),
        "reproduction_run_s": d["reproduction_s"],
        "reproduction_child_wall_s": d["training_wall_s"],
        "reproduce_overhead_s": round(repro_wall - d["training_wall_s"], 3),
        "ratio_wall": round(repro_wall / train_wall, 4),
        "ratio_run": round(d["reproduction_s"] / original["duration_s"], 4),
        "steps_checked": doc["scope"]["steps_checked"],
        "checkpoints_checked": doc["scope"]["checkpoints_checked"],
        "verdict": doc["verdict"],
    }


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    load = _load()
    t0, c0 = time.perf_counter(), _cpu()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    if not proc.stdout.strip():
        raise SystemExit(f"{' '.join(cmd[3:6])}: printed nothing ({proc.returncode}):\n{proc.stderr[-3000:]}")
    doc = json.loads(proc.stdout)
    if proc.returncode != 0 or doc["verdict"] != "reproduced (bitwise)":
        raise SystemExit(f"not reproduced ({proc.returncode}): {doc.get('headline')}")
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "load_before": load, "load_after": _load(),
            "steps_checked": doc["scope"]["steps_checked"], "verdict": doc["verdict"]}


def segments_bench(tmp: Path, steps: int, every: int) -> dict[str, Any]:
    env = offline_env(tmp)
    runs = tmp / "runs"
    cmd = [sys.executable, "-m", "training.train", "--config", "configs/tiny-lm.yaml", f"train.steps={steps}",
           f"train.checkpoint_every={every}", "run.threads=1", f"run.runs_dir={runs}", f"data.root={tmp / 'data'}"]
    t0, c0 = time.perf_counter(), _cpu()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    original = {"wall_s": round(time.perf_counter() - t0, 3), "cpu_s": round(_cpu() - c0, 3)}
    (bundle,) = [p for p in runs.iterdir() if p.is_dir()]
    prov = [sys.executable, "-m", "provenance.cli", "reproduce", str(bundle), "--json", "--quiet"]
    variants = {"whole": [], "segments_jobs1": ["--segments", "--jobs", "1"],
                "segments_jobs2": ["--segments", "--jobs", "2"], "sample1": ["--sample", "1", "--seed", "0"]}
    out: dict[str, Any] = {"steps": steps, "checkpoint_every": every, "intervals": -(-steps // every),
                           "threads": 1, "original": original}
    for name, flags in variants.items():
        r = _timed([*prov, *flags, "--workdir", str(tmp / name)], tmp, env)
        out[name] = r
        print(f"{name}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, {r['steps_checked']} steps, load "
              f"{r['load_before']} -> {r['load_after']}", flush=True)
    whole = out["whole"]
    for name in variants:
        out[name]["ratio_wall"] = round(out[name]["wall_s"] / whole["wall_s"], 3)
        out[name]["ratio_cpu"] = round(out[name]["cpu_s"] / whole["cpu_s"], 3)
    print("ratios to the whole reproduction (wall, CPU): " + "; ".join(
        f"{n} {out[n]['ratio_wall']:.3f}, {out[n]['ratio_cpu']:.3f}" for n in variants))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="training steps (default 200; 240 with --segments)")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--segments", action="store_true",
                   help="time whole vs --segments --jobs 1 / --jobs 2 vs --sample 1 instead")
    p.add_argument("--checkpoint-every", type=int, default=60, help="with --segments: the interval length")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()
    if args.segments:
        with tempfile.TemporaryDirectory(prefix="bench-segments-") as t:
            prepare_data(Path(t) / "data")
            res = segments_bench(Path(t), args.steps or 240, args.checkpoint_every)
        res["cpus"] = os.cpu_count()
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        return 0
    args.steps = args.steps or 200
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    with tempfile.TemporaryDirectory(prefix="bench-reproduce-") as t:
        tmp = Path(t)
        prepare_data(tmp / "data")
        pairs = []
        for i in range(args.reps):
            r = one_pair(tmp, args.steps, i)
            pairs.append(r)
            print(f"pair {i + 1}: original {r['original_wall_s']:.1f} s wall, {r['original_cpu_s']:.1f} s CPU "
                  f"({r['original_run_s']:.1f} s in the run, median step {r['original_median_step_s'] * 1e3:.1f} ms); "
                  f"reproduce {r['reproduce_wall_s']:.1f} s wall, {r['reproduce_cpu_s']:.1f} s CPU "
                  f"({r['reproduction_run_s']:.1f} s in the run, median step "
                  f"{r['reproduction_median_step_s'] * 1e3:.1f} ms, {r['reproduce_overhead_s']:.1f} s outside the "
                  f"child); ratios: wall {r['ratio_wall']:.3f}, CPU {r['ratio_cpu']:.3f}, median step "
                  f"{r['ratio_median_step']:.3f}; {r['steps_checked']} steps and {r['checkpoints_checked']} "
                  f"checkpoints bitwise", flush=True)
    result = {"steps": args.steps, "reps": args.reps, "cpus": os.cpu_count(), "loadavg_before": load, "pairs": pairs,
              "median_ratio_wall": statistics.median(r["ratio_wall"] for r in pairs),
              "median_ratio_run": statistics.median(r["ratio_run"] for r in pairs),
              "median_ratio_cpu": statistics.median(r["ratio_cpu"] for r in pairs),
              "median_ratio_step": statistics.median(r["ratio_median_step"] for r in pairs)}
    try:
        result["loadavg_after"] = os.getloadavg()
    except OSError:
        pass
    print(f"reproduction / original (median of {args.reps}): wall {result['median_ratio_wall']:.3f}, inside the run "
          f"{result['median_ratio_run']:.3f}, CPU {result['median_ratio_cpu']:.3f}, median step "
          f"{result['median_ratio_step']:.3f}; target <= 1.1; load average before {load}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
