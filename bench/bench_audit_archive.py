"""Auditing archives with many members: a 100,000-member release archive, and how fast a
250,000-member one (over the 200,000-member limit) is refused (issue 18 item 6).

    .venv/bin/python bench/bench_audit_archive.py [--members 100000] [--over 250000] [--reps 1] [--json out.json]
                                                  [--old-checkout DIR] [--keep DIR]

Builds, in a temporary folder (removed at the end): a small sealed bundle (run.json, config.json and
--members tiny files of 16 bytes under extras/), packs it with provenance.archive.pack (.tar.gz),
then times provenance.audit.audit(archive) in this process (unpack, hash, checks, openness);
then writes a .tar.gz of --over tiny members (no bundle needed: the member count alone refuses it)
and times the refusal. With --old-checkout (e.g. `git worktree add /tmp/old <commit>`), every
timing is made in a fresh process for this checkout and for the old one, alternated, on the same
archives, wall-clock and CPU time (time.process_time of the process: steadier than wall time on a shared
machine) around audit() only, with the load average before each run: the side-by-side figures of
docs/performance.md. --keep DIR builds the archives once and reuses them. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provenance import formats  # noqa: E402
from provenance.archive import pack  # noqa: E402
from provenance.audit import AuditRefused, audit  # noqa: E402
from provenance.bundle import seal_folder  # noqa: E402


def make_bundle(root: Path, members: int) -> None:
    formats.atomic_write_json(root / formats.RUN_JSON, {
        "schema": formats.BUNDLE_SCHEMA, "run_id": root.name, "name": "bench", "status": "failed",
        "exit_status": 1, "error": {"type": "Bench", "message": "a synthetic bundle"}})
    cfg: dict[str, object] = {"seed": 0}
    formats.atomic_write_json(root / formats.CONFIG_JSON, {"config": cfg, "digest": formats.config_digest(cfg)})
    for i in range(members):
        p = root / "extras" / f"{i // 1000:03d}" / f"f{i:06d}.bin"
        if i % 1000 == 0:
            p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"%016d" % i)
    seal_folder(root)


def many_members_tgz(path: Path, n: int) -> None:
    with gzip.GzipFile(filename="", mode="wb", fileobj=open(path, "wb"), mtime=0, compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(n):
            info = tarfile.TarInfo(f"b/x/f{i:07d}")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))


_TIMED = ("import os, sys, time; sys.path.insert(0, sys.argv[1]); from provenance.audit import AuditRefused, audit\n"
          "t, c = time.perf_counter(), time.process_time()\ntry:\n    r = audit(sys.argv[2], tmp_dir=sys.argv[3])\n"
          "    m = 'integrity ' + str(r.integrity.ok)\n"
          "except AuditRefused as e:\n    m = 'refused: ' + str(e)\n"
          "print(round(time.perf_counter() - t, 3), round(time.process_time() - c, 3), m)")


def timed(checkout: Path, archive: Path, tmp: Path) -> tuple[float, float, str]:
    """audit(archive) in a fresh process with `checkout` first on sys.path: (wall s, CPU s, outcome), both
    measured around audit() only (CPU: time.process_time, every thread of the process, user + system)."""
    proc = subprocess.run([sys.executable, "-c", _TIMED, str(checkout), str(archive), str(tmp)], capture_output=True,
                          text=True, env={"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: {proc.stderr[-2000:]}")
    wall, cpu, outcome = proc.stdout.strip().split(" ", 2)
    return float(wall), float(cpu), outcome


def side_by_side(old: Path, archives: list[Path], reps: int, tmp: Path) -> dict[str, object]:
    """Each archive audited by the old and the new checkout, alternated, `reps` times; the best of each (wall
    and CPU separately), with the load average before each run (the machine may be shared)."""
    out: dict[str, object] = {}
    for arch in archives:
        runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        for _ in range(reps):
            for label, root in (("old", old), ("new", REPO)):
                load = os.getloadavg()[0]
                wall, cpu, outcome = timed(root, arch, tmp)
                runs[label].append({"wall": wall, "cpu": cpu, "load": load})
                print(f"{arch.name}: {label} {wall:.2f} s wall, {cpu:.2f} s CPU (load {load:.2f}; {outcome[:70]})",
                      flush=True)
        best = {k: {m: min(r[m] for r in v) for m in ("wall", "cpu")} for k, v in runs.items()}
        ratio = {m: best["old"][m] / best["new"][m] for m in ("wall", "cpu")}
        print(f"{arch.name}: best of {reps}: old {best['old']['wall']:.2f} s wall / {best['old']['cpu']:.2f} s CPU, "
              f"new {best['new']['wall']:.2f} s / {best['new']['cpu']:.2f} s: {ratio['wall']:.1f}x wall, "
              f"{ratio['cpu']:.1f}x CPU", flush=True)
        out[arch.name] = {"runs": runs, "best": best, "ratio": ratio}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--over", type=int, default=250_000)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--old-checkout", type=Path, default=None, help="a checkout of the commit to compare with")
    ap.add_argument("--no-refusal", action="store_true", help="skip the over-the-limit archive (side by side: the "
                    "old code takes minutes to refuse it)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="build the archives in this folder once and reuse them on later runs (never removed)")
    args = ap.parse_args()
    out: dict[str, object] = {"members": args.members, "over": args.over}
    with tempfile.TemporaryDirectory(prefix="bench-audit-archive-") as t:
        tmp = Path(t)
        where = args.keep if args.keep is not None else tmp
        where.mkdir(parents=True, exist_ok=True)
        arch, big = where / f"bench-run-{args.members}.tar.gz", where / f"over-{args.over}.tar.gz"
        if not arch.is_file():
            root = tmp / "bench-run"
            root.mkdir()
            t0 = time.perf_counter()
            make_bundle(root, args.members)
            pack(root, arch)
            print(f"built and packed {args.members} members in {time.perf_counter() - t0:.1f} s "
                  f"({arch.stat().st_size / 1e6:.1f} MB)", flush=True)
        if args.old_checkout is not None:
            if not big.is_file() and not args.no_refusal:
                many_members_tgz(big, args.over)
            out["load_average_before"] = os.getloadavg()
            out["side_by_side"] = side_by_side(args.old_checkout.resolve(), [arch] if args.no_refusal else [arch, big],
                                               args.reps, tmp)
            out["load_average_after"] = os.getloadavg()
            print(f"load average before {out['load_average_before']}, after {out['load_average_after']}")
            if args.json:
                Path(args.json).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
            return
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            rep = audit(arch, tmp_dir=tmp)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"audit of a {args.members}-member .tar.gz: {med:.2f} s (median of {args.reps}; "
              f"{args.members / med:,.0f} members/s; integrity {'PASS' if rep.integrity.ok else 'FAIL'})", flush=True)
        out["audit_seconds"] = med
        if not big.is_file():
            t0 = time.perf_counter()
            many_members_tgz(big, args.over)
            print(f"wrote a {args.over}-member .tar.gz in {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        try:
            audit(big, tmp_dir=tmp)
            msg = "NOT refused"
        except AuditRefused as exc:
            msg = f"refused: {exc}"
        dt = time.perf_counter() - t0
        print(f"audit of a {args.over}-member .tar.gz: {dt:.2f} s, {msg}", flush=True)
        out["refusal_seconds"] = dt
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
