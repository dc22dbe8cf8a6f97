"""Hashing throughput against coreutils `sha256sum` and `dvc add` on the same 1 GiB (issue 3).

    .venv/bin/python bench/bench_hashing.py [--size-mib 1024] [--files 8] [--reps 3] [--json out.json]

Two cases over the same amount of random data, written under a temporary folder (removed at
the end):
  multi   --files files of size/files each (default 8 x 128 MiB);
  single  one file of the whole size (1 x 1 GiB).

Timed side by side, the order rotating between repetitions, the median reported:
  sha256sum         coreutils `sha256sum f1 f2 ...`: one process, one core;
  dvc add           `dvc add` in a fresh `git init` + `dvc init` repository each repetition
                    (DVC_NO_ANALYTICS=1, DVC_SITE_CACHE_DIR in the temporary folder): it hashes
                    (md5) and copies the data into .dvc/cache, as `dvc add` always does;
  hash_files        provenance.hashing.hash_files, every core (whole-file sha256, what every
                    manifest records), in this process;
and, for information: hash_files with one worker, hash_shards (per-shard sha256 of
--shard-mib slices on every core, the optional sharded digest), and sha256sum run as one
process a file in parallel (xargs -P <cores>).

The page cache is warmed before every timing by reading every file once, for every tool
alike, so that all of them hash from memory. The digests of hash_files are checked against
those of sha256sum. Besides wall times it records each tool's CPU seconds (its threads and
the children it waited for) and an "idle projection" of the ratios: CPU seconds divided by
the cores each tool can use (1 for sha256sum and dvc add, min(cores, files) for hash_files,
min(cores, shards) for hash_shards), i.e. what an idle machine shows when this one was busy.
Ratios, never timed assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from provenance.hashing import default_workers, hash_files, hash_shards

MIB = 1 << 20
BIN = Path(sys.executable).parent


def write_random(path: Path, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(rng.bytes(n))
            left -= n


def warm(paths: list[Path]) -> None:
    """Read every file once so that every tool hashes from the page cache."""
    buf = bytearray(4 * MIB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def sha256sum(paths: list[Path]) -> dict[Path, str]:
    out = subprocess.run(["sha256sum", *map(str, paths)], check=True, capture_output=True, text=True).stdout
    got = {}
    for line in out.splitlines():
        hexd, name = line.split(maxsplit=1)
        got[Path(name.lstrip("*"))] = hexd
    return got


def sha256sum_parallel(paths: list[Path]) -> None:
    subprocess.run(["xargs", "-0", "-n1", "-P", str(default_workers()), "sha256sum"], check=True,
                   input="\0".join(map(str, paths)).encode(), capture_output=True)


def dvc_env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(site), "GIT_CONFIG_NOSYSTEM": "1",
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"})
    return env


def dvc_reset(repo: Path, site: Path) -> None:
    """A fresh git + dvc repository around the data: no cache, no state, no .dvc files."""
    for name in (".git", ".dvc", ".dvcignore", ".gitignore"):
        p = repo / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for p in repo.rglob("*.dvc"):
        p.unlink()
    for p in (repo / "data").rglob(".gitignore"):
        p.unlink()
    shutil.rmtree(site, ignore_errors=True)
    env = dvc_env(site)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run([str(BIN / "dvc"), "config", "core.autostage", "false"], cwd=repo, check=True, env=env)


def dvc_add(repo: Path, target: str, site: Path) -> None:
    subprocess.run([str(BIN / "dvc"), "add", "-q", target], cwd=repo, check=True, env=dvc_env(site),
                   capture_output=True)


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process's threads and of the children it waited for)."""
    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - t0, cpu() - c0


def run_case(name: str, repo: Path, paths: list[Path], dvc_target: str, reps: int, shard: int,
             site: Path) -> dict[str, Any]:
    size = sum(p.stat().st_size for p in paths)
    # correctness first: our digests are sha256sum's
    warm(paths)
    ref = sha256sum(paths)
    ours = hash_files(paths)
    if {p.resolve(): d for p, d in ours.items()} != {p.resolve(): d for p, d in ref.items()}:
        raise SystemExit(f"{name}: hash_files and sha256sum disagree")

    tools: dict[str, Callable[[], Any]] = {
        "sha256sum": lambda: sha256sum(paths),
        "dvc add": lambda: dvc_add(repo, dvc_target, site),
        "hash_files": lambda: hash_files(paths),
        "hash_files 1 worker": lambda: hash_files(paths, workers=1),
        "hash_shards": lambda: hash_shards(paths, shard),
    }
    if len(paths) > 1:
        tools["sha256sum xargs -P"] = lambda: sha256sum_parallel(paths)
    times: dict[str, list[float]] = {k: [] for k in tools}
    cpus: dict[str, list[float]] = {k: [] for k in tools}
    names = list(tools)
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for tool in order:
            if tool == "dvc add":
                dvc_reset(repo, site)  # not timed
            warm(paths)
            wall, cpu = timed(tools[tool])
            times[tool].append(wall)
            cpus[tool].append(cpu)
        shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
        print(f"{name} rep {r}: " + ", ".join(f"{k} {v[-1]:.2f} s (cpu {cpus[k][-1]:.2f})" for k, v in times.items()),
              flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpus.items()}
    # what an idle machine would show: CPU seconds spread over the cores each tool can use
    parallel = {"sha256sum": 1, "dvc add": 1, "hash_files": min(default_workers(), len(paths)),
                "hash_files 1 worker": 1, "sha256sum xargs -P": min(default_workers(), len(paths)),
                "hash_shards": min(default_workers(), sum(-(-p.stat().st_size // shard) for p in paths))}
    idle = {k: cpu_med[k] / parallel[k] for k in cpu_med}
    return {
        "files": len(paths), "bytes": size,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_cpu_s": {k: round(v, 3) for k, v in cpu_med.items()},
        "cores_usable": parallel,
        "idle_projection_ratio_hash_files_vs_sha256sum": round(idle["sha256sum"] / idle["hash_files"], 2),
        "idle_projection_ratio_hash_shards_vs_sha256sum": round(idle["sha256sum"] / idle["hash_shards"], 2),
        "GB_per_s": {k: round(size / v / 1e9, 3) for k, v in med.items()},
        "ratio_hash_files_vs_sha256sum": round(med["sha256sum"] / med["hash_files"], 2),
        "ratio_hash_files_vs_dvc_add": round(med["dvc add"] / med["hash_files"], 2),
        "ratio_hash_shards_vs_sha256sum": round(med["sha256sum"] / med["hash_shards"], 2),
        "ratio_hash_shards_vs_dvc_add": round(med["dvc add"] / med["hash_shards"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=1024, help="data of each case, MiB")
    p.add_argument("--files", type=int, default=8, help="files of the multi-file case")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--shard-mib", type=int, default=64, help="shard size of hash_shards")
    p.add_argument("--case", choices=("multi", "single", "both"), default="both")
    p.add_argument("--dir", help="parent of the temporary folder (default: the system's)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="prov-bench-hashing-", dir=args.dir))
    load_before = os.getloadavg()
    out: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", *sys.argv]), "cpus": os.cpu_count(), "workers": default_workers(),
        "sha256sum": subprocess.run(["sha256sum", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
        "dvc": subprocess.run([str(BIN / "dvc"), "--version"], capture_output=True, text=True,
                              env=dvc_env(work / "site")).stdout.strip(),
        "page_cache": "warmed before every timing: every file read once, for every tool alike",
    }
    try:
        size = args.size_mib * MIB
        cases = ("multi", "single") if args.case == "both" else (args.case,)
        for case in cases:
            repo = work / f"repo-{case}"
            (repo / "data").mkdir(parents=True)
            if case == "multi":
                paths = [repo / "data" / f"part-{i:02d}.bin" for i in range(args.files)]
                for i, path in enumerate(paths):
                    write_random(path, size // args.files, i)
                target = "data"
            else:
                paths = [repo / "data" / "big.bin"]
                write_random(paths[0], size, 100)
                target = "data/big.bin"
            print(f"{case}: {len(paths)} file(s), {size / MIB:.0f} MiB; load average {os.getloadavg()[0]:.2f}",
                  flush=True)
            out[case] = run_case(case, repo, paths, target, args.reps, args.shard_mib * MIB, work / "site")
            shutil.rmtree(repo)
        out["load_average_1min_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
        print(json.dumps(out, indent=2))
        def verdict(x: float, target: float) -> str:
            return f"{x}x (target {target:g}x: {'MET' if x >= target else 'NOT MET'})"

        for case in cases:
            c = out[case]
            print(f"{case:6s}: hash_files {verdict(c['ratio_hash_files_vs_sha256sum'], 7)} sha256sum, "
                  f"{verdict(c['ratio_hash_files_vs_dvc_add'], 4)} dvc add, idle projection "
                  f"{c['idle_projection_ratio_hash_files_vs_sha256sum']}x sha256sum; hash_shards "
                  f"{c['ratio_hash_shards_vs_sha256sum']}x sha256sum, {c['ratio_hash_shards_vs_dvc_add']}x dvc add, "
                  f"idle projection {c['idle_projection_ratio_hash_shards_vs_sha256sum']}x sha256sum")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
