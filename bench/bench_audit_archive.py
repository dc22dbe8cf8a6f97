"""Auditing archives with many members: a 100,000-member release archive, and how fast a
250,000-member one (over the 200,000-member limit) is refused (issue 18 item 6).

    .venv/bin/python bench/bench_audit_archive.py [--members 100000] [--over 250000] [--reps 1] [--json out.json]
                                                  [--old-checkout DIR]

Builds, in a temporary folder (removed at the end): a small sealed bundle (run.json, config.json and
--members tiny files of 16 bytes under extras/), packs it with provenance.archive.pack (.tar.gz),
then times provenance.audit.audit(archive) in this process (unpack, hash, checks, openness);
then writes a .tar.gz of --over tiny members (no bundle needed: the member count alone refuses it)
and times the refusal. With --old-checkout (e.g. `git worktree add /tmp/old <commit>`), every
timing is made in a fresh process for this checkout and for the old one, alternated, on the same
archives: the side-by-side figures of docs/performance.md. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
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


_TIMED = ("import sys, time; sys.path.insert(0, sys.argv[1]); from provenance.audit import AuditRefused, audit\n"
          "t = time.perf_counter()\ntry:\n    r = audit(sys.argv[2], tmp_dir=sys.argv[3])\n"
          "    m = 'integrity ' + str(r.integrity.ok)\n"
          "except AuditRefused as e:\n    m = 'refused: ' + str(e)\nprint(round(time.perf_counter() - t, 2), m)")


def timed(checkout: Path, archive: Path, tmp: Path) -> tuple[float, str]:
    """audit(archive) in a fresh process with `checkout` first on sys.path: (seconds, outcome)."""
    proc = subprocess.run([sys.executable, "-c", _TIMED, str(checkout), str(archive), str(tmp)], capture_output=True,
                          text=True, env={"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: {proc.stderr[-2000:]}")
    secs, _, outcome = proc.stdout.strip().partition(" ")
    return float(secs), outcome


def side_by_side(old: Path, archives: list[Path], reps: int, tmp: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for arch in archives:
        best: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(reps):
            for label, root in (("old", old), ("new", REPO)):
                secs, outcome = timed(root, arch, tmp)
                best[label].append(secs)
                print(f"{arch.name}: {label} {secs:.2f} s ({outcome[:80]})", flush=True)
        o, n = min(best["old"]), min(best["new"])
        print(f"{arch.name}: best of {reps}: old {o:.2f} s, new {n:.2f} s, {o / n:.1f}x", flush=True)
        out[arch.name] = {"old": best["old"], "new": best["new"], "ratio": o / n}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--over", type=int, default=250_000)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--old-checkout", type=Path, default=None, help="a checkout of the commit to compare with")
    args = ap.parse_args()
    out: dict[str, object] = {"members": args.members, "over": args.over}
    with tempfile.TemporaryDirectory(prefix="bench-audit-archive-") as t:
        tmp = Path(t)
        root = tmp / "bench-run"
        root.mkdir()
        t0 = time.perf_counter()
        make_bundle(root, args.members)
        arch = pack(root, tmp / "bench-run.tar.gz").path
        print(f"built and packed {args.members} members in {time.perf_counter() - t0:.1f} s "
              f"({arch.stat().st_size / 1e6:.1f} MB)", flush=True)
        if args.old_checkout is not None:
            big = tmp / "over.tar.gz"
            many_members_tgz(big, args.over)
            out["side_by_side"] = side_by_side(args.old_checkout.resolve(), [arch, big], args.reps, tmp)
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
        big = tmp / "over.tar.gz"
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
