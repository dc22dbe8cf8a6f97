"""Audit time against `sha256sum -c` and against bundle creation, on a bundle of >= 1 GB and >= 10,000 files (issue 4).

    .venv/bin/python bench/bench_audit.py [--small-files 10000] [--big-files 8] [--big-mib 128] [--reps 3]
                                          [--bundle runs/<run_id>] [--keep] [--json out.json]

Builds, in a temporary folder (removed at the end unless --keep):
  a real bundle: the default training script on a tiny config (or a copy of --bundle), plus
  --small-files files of 8 KiB and --big-files files of --big-mib MiB (random bytes) in
  extras/, sealed with seal_folder so that the audit sees one sealed bundle;
then times, side by side in one run, every repetition in a rotated order:
  sha256sum -c   coreutils, one core, on a checksum file of exactly the sealed files;
  creation       seal_folder(root): what `prov seal` / the end of a run does when nothing
                 is known yet (hash_files over every file, on every core, then the manifest);
  audit          provenance.audit.audit(root), in this process: scan, hash every file
                 (hash_files, every core), the consistency checks and openness;
  prov audit     the command line, `prov audit ROOT --json`, in a fresh process (imports included).
Every file was just written or read, so every figure is with a warm page cache. It prints
the median of --reps and the ratio to sha256sum -c. A ratio, not a test: nothing fails
because the machine is slow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provenance import formats  # noqa: E402
from provenance.audit import audit  # noqa: E402
from provenance.bundle import seal_folder, sealable_files  # noqa: E402
from provenance.hashing import default_workers  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from conftest import TINY  # noqa: E402  (the tests' tiny configuration: a real bundle in seconds)


def env_for(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "DVC_NO_ANALYTICS": "1",
                "HF_HOME": str(tmp / ".hf"), "WANDB_DIR": str(tmp / ".wandb"), "PYTHONHASHSEED": "0"})
    return env


def make_bundle(tmp: Path, source: Path | None) -> Path:
    if source is not None:
        dest = tmp / "runs" / source.name
        shutil.copytree(source, dest)
        return dest
    cmd = [sys.executable, "-m", "training.train", "--config", str(REPO / "configs" / "tiny-lm.yaml"), *TINY,
           f"run.runs_dir={tmp / 'runs'}", f"data.root={tmp / 'data'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env_for(tmp), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    (run,) = [p for p in (tmp / "runs").iterdir() if p.is_dir()]
    return run


def add_filler(root: Path, small: int, big: int, big_mib: int) -> None:
    rnd = os.urandom
    for i in range(big):
        path = root / "extras" / "big" / f"blob-{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for _ in range(big_mib):
                f.write(rnd(1 << 20))
    for i in range(small):
        path = root / "extras" / "small" / f"{i // 1000:02d}" / f"file-{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rnd(8 << 10))


def sha256sum_file(root: Path, dest: Path) -> None:
    manifest = json.loads((root / formats.MANIFEST).read_text())
    lines = [f"{r['digest']}  {r['name']}\n" for r in manifest["predicate"]["resources"]]
    dest.write_text("".join(lines))


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small-files", type=int, default=10_000)
    p.add_argument("--big-files", type=int, default=8)
    p.add_argument("--big-mib", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--bundle", type=Path, default=None, help="copy this bundle instead of training one")
    p.add_argument("--tmp", type=Path, default=None, help="parent of the temporary folder (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    if shutil.which("sha256sum") is None:
        raise SystemExit("sha256sum (coreutils) is not installed")

    tmp = Path(tempfile.mkdtemp(prefix="prov-bench-audit-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        root = make_bundle(tmp, args.bundle)
        add_filler(root, args.small_files, args.big_files, args.big_mib)
        seal_folder(root)
        names = sealable_files(root)
        total = sum((root / n).stat().st_size for n in names)
        sums = tmp / "SHA256SUMS"
        sha256sum_file(root, sums)
        print(f"bundle: {root.name}: {len(names):,} sealed files, {total / 1e9:.2f} GB "
              f"(prepared in {time.perf_counter() - t0:.1f} s); {default_workers()} cores for hashing; warm page cache")

        def run_sha256sum() -> None:
            proc = subprocess.run(["sha256sum", "-c", "--quiet", str(sums)], cwd=root, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"sha256sum -c failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")

        def run_creation() -> None:
            seal_folder(root)  # nothing known: every file is hashed, then the manifest is written

        hashing_s: list[float] = []

        def run_audit() -> None:
            report = audit(root)
            if not report.integrity.ok:
                raise SystemExit(f"the audit failed: {report.failures()[:5]}")
            hashing_s.append(report.integrity.seconds)

        def run_cli() -> None:
            proc = subprocess.run([sys.executable, "-m", "provenance.cli", "audit", str(root), "--json",
                                   "--no-progress"], cwd=REPO, capture_output=True, text=True)
            doc = json.loads(proc.stdout)
            if not doc["integrity"]["ok"]:
                raise SystemExit(f"prov audit failed: {doc['failures'][:5]}")

        cases: list[tuple[str, Callable[[], None]]] = [
            ("sha256sum -c", run_sha256sum), ("creation (seal_folder)", run_creation),
            ("audit (in process)", run_audit), ("prov audit (CLI)", run_cli)]
        run_sha256sum()  # warm the page cache and check the checksum file once
        times: dict[str, list[float]] = {name: [] for name, _ in cases}
        for rep in range(args.reps):
            order = cases[rep % len(cases):] + cases[: rep % len(cases)]
            for name, fn in order:
                times[name].append(timed(fn))
        base = statistics.median(times["sha256sum -c"])
        print()
        print(f"{'':<24} {'median s':>9} {'min s':>8} {'GB/s':>7} {'vs sha256sum -c':>16}")
        rows = []
        for name, _ in cases:
            med = statistics.median(times[name])
            rows.append({"case": name, "median_s": med, "min_s": min(times[name]), "gb_per_s": total / 1e9 / med,
                         "ratio_to_sha256sum": med / base, "times_s": times[name]})
            print(f"{name:<24} {med:9.3f} {min(times[name]):8.3f} {total / 1e9 / med:7.2f} {med / base:15.2f}x")
        audit_med = statistics.median(times["audit (in process)"])
        create_med = statistics.median(times["creation (seal_folder)"])
        print(f"\naudit / creation: {audit_med / create_med:.2f}x   audit / sha256sum -c: {audit_med / base:.2f}x "
              f"(below 1: the audit is faster); the audit's hashing phase: median "
              f"{statistics.median(hashing_s):.3f} s of {audit_med:.3f} s")
        if args.json:
            args.json.write_text(json.dumps({"files": len(names), "bytes": total, "workers": default_workers(),
                                             "reps": args.reps, "rows": rows, "audit_hashing_s": hashing_s},
                                            indent=2, sort_keys=True) + "\n")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
