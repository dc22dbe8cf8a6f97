"""Auditing archives with many members: a 100,000-member release archive, and how fast a
250,000-member one (over the 200,000-member limit) is refused (issue 18 item 6).

    .venv/bin/python bench/bench_audit_archive.py [--members 100000] [--over 250000] [--reps 1] [--json out.json]

Builds, in a temporary folder (removed at the end): a small sealed bundle (run.json, config.json and
--members tiny files of 16 bytes under extras/), packs it with provenance.archive.pack (.tar.gz),
then times provenance.audit.audit(archive) in this process (unpack, hash, checks, openness);
then writes a .tar.gz of --over tiny members (no bundle needed: the member count alone refuses it)
and times the refusal. Prints seconds and members per second; run it on two commits to compare
(docs/performance.md keeps the side-by-side figures). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import statistics
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--over", type=int, default=250_000)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--json", default=None)
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
