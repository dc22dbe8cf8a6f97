"""Sharded (DCP) checkpoints under FSDP2: does hashing the shards cost the training thread anything?

Launches itself under torchrun (2 gloo ranks, or --nproc N): an MLP sharded with fully_shard trains STEPS steps and
saves a DCP checkpoint every EVERY steps, either through run.checkpoint (hashed on the checkpoint
thread, indexed by rank 0) or with a bare dcp.save of the same state (the baseline), alternated.
Compared on the training thread: the checkpoint call, and the step right after it (while the
checkpoint thread hashes), vs the baseline's; and what hashing one checkpoint's files takes (what it
would add if hashing ran on the training thread). Medians; nothing here is a test.

    .venv/bin/python bench/bench_dcp.py --width 1536 --steps 80 --every 4 --rounds 3 --json /tmp/dcp.json
    .venv/bin/python bench/bench_dcp.py --nproc 1 ...   # one rank on 2 cores: a core left for the hashing
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


def worker(runs: str, width: int, steps: int, every: int, out: str, plain: bool, nice: int | None) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from provenance import formats, start_run
    from provenance.run import recorder

    if nice is not None:  # the checkpoint thread's priority (the default: recorder.HASH_NICE, the lowest)
        recorder.HASH_NICE = nice

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    times: list[dict[str, float]] = []
    with start_run({"width": width}, name="bench-dcp", runs_dir=runs, seed=0, threads=1,
                   argv=[sys.executable, "bench/bench_dcp.py"]) as run:
        model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width))
        for m in (model[0], model[2]):
            fully_shard(m)
        fully_shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            run.batch(step, lambda s: [s * 2 + rank])
            loss = model(torch.randn(8, width)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            run.log(step, loss=loss.item())
            t1 = time.perf_counter()
            if step % every == 0 and plain:  # the same DCP save, not hashed: the baseline
                import torch.distributed.checkpoint as dcp
                from torch.distributed.checkpoint.state_dict import get_state_dict

                msd, osd = get_state_dict(model, opt)
                dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(Path(runs) / f"plain-{step}"))
            elif step % every == 0:
                run.checkpoint(step, model, opt)
            t2 = time.perf_counter()
            times.append({"step": step, "train_s": t1 - t0, "checkpoint_s": t2 - t1})
        root = run.root
    dist.destroy_process_group()
    if rank == 0:
        ip = root / formats.CHECKPOINT_INDEX
        idx = formats.read_json(ip)["checkpoints"] if ip.is_file() else []
        per_ckpt = idx[0]["size"] if idx else 0
        t0 = time.perf_counter()  # what hashing one checkpoint's files costs (every rank's, here serially)
        from provenance.hashing import sha256_file

        for f in (idx[0]["files"] if idx else []):
            sha256_file(root / f["path"])
        hash_s = time.perf_counter() - t0
        Path(out).write_text(json.dumps({"times": times, "checkpoint_bytes": per_ckpt, "hash_one_checkpoint_s": hash_s,
                                         "checkpoints": len(idx)}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--nice", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=2, help="how many times each variant runs (alternated)")
    ap.add_argument("--nproc", type=int, default=2, help="ranks (one thread each); with fewer ranks than cores "
                    "the checkpoint thread has a core of its own, as on a GPU node")
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], a.width, a.steps, a.every, a.worker[1], a.plain, a.nice)
        return 0

    def medians(times: list[dict[str, float]]) -> tuple[float, float, float]:
        t = [r for r in times if r["step"] > a.every]  # skip the warm-up before the first checkpoint
        after = [r["train_s"] for r in t if (r["step"] - 1) % a.every == 0]
        others = [r["train_s"] for r in t if (r["step"] - 1) % a.every != 0]
        ckpt = [r["checkpoint_s"] for r in times if r["step"] % a.every == 0]
        return statistics.median(after), statistics.median(others), statistics.median(ckpt)

    load0 = os.getloadavg()[0]
    results = {}
    loads = []
    # alternated (the load drifts): a bare dcp.save; run.checkpoint as it is (its checkpoint thread hashes
    # at nice 19); run.checkpoint with the checkpoint thread at the training threads' priority (as first built)
    variants = {"plain": ["--plain"], "prov": [], "prov-normal": ["--nice", "0"]}
    for mode in tuple(variants) * a.rounds:
        loads.append(os.getloadavg()[0])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "times.json"
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}",
                   __file__,
                   "--width", str(a.width), "--steps", str(a.steps), "--every", str(a.every),
                   "--worker", str(Path(tmp) / "runs"), str(out), *variants[mode]]
            subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
            res = json.loads(out.read_text())
        prev = results.setdefault(mode, {"times": [], "checkpoint_bytes": 0, "hash": [], "checkpoints": 0,
                                         "within": []})
        prev["times"] += res["times"]
        ra, ro, _ = medians(res["times"])  # within one run: the step after a checkpoint / the other steps
        prev["within"].append(ra / ro)
        prev["checkpoint_bytes"] = max(prev["checkpoint_bytes"], res["checkpoint_bytes"])
        prev["hash"].append(res["hash_one_checkpoint_s"])
        prev["checkpoints"] += res["checkpoints"]

    pa, po, pc = medians(results["plain"]["times"])
    fa, fo, fc = medians(results["prov"]["times"])
    na, no, nc = medians(results["prov-normal"]["times"])
    summary = {
        "width": a.width, "ranks": a.nproc, "cores": os.cpu_count(), "steps_per_run": a.steps,
        "checkpoint_every": a.every,
        "checkpoint_mb": round(results["prov"]["checkpoint_bytes"] / 1e6, 1),
        "plain_dcp": {"median_step_s_after_checkpoint": round(pa, 4), "median_step_s_other": round(po, 4),
                      "median_checkpoint_call_s": round(pc, 4)},
        "run_checkpoint": {"median_step_s_after_checkpoint": round(fa, 4), "median_step_s_other": round(fo, 4),
                           "median_checkpoint_call_s": round(fc, 4)},
        "run_checkpoint_hash_thread_normal_priority": {
            "median_step_s_after_checkpoint": round(na, 4), "median_step_s_other": round(no, 4),
            "median_checkpoint_call_s": round(nc, 4)},
        "checkpoint_call_ratio": round(fc / pc, 3),
        "step_after_checkpoint_ratio": round(fa / pa, 3),
        "other_steps_ratio": round(fo / po, 3),
        "normal_priority_checkpoint_call_ratio": round(nc / pc, 3),
        "normal_priority_step_after_checkpoint_ratio": round(na / pa, 3),
        "normal_priority_other_steps_ratio": round(no / po, 3),
        "within_run_step_after_checkpoint_over_other_steps": {
            m: round(statistics.median(r["within"]), 3) for m, r in results.items()},
        "hash_one_checkpoint_s": round(statistics.median(results["prov"]["hash"]), 4),
        "load_before": round(load0, 1), "load_after": round(os.getloadavg()[0], 1),
        "load_median": round(statistics.median(loads), 1), "rounds": a.rounds,
    }
    print(json.dumps(summary, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
