"""What checking the seals costs `prov diff`: the diff of two large bundles with and without it.

    .venv/bin/python bench/bench_diff.py --bundle runs/<run_id> [--big-mib 512] [--reps 3] [--json out.json]

Copies --bundle twice into a temporary folder (removed at the end), adds to each a file of --big-mib
MiB of random bytes under model/ (a large checkpoint's worth of bytes) and seals both, then times,
side by side, every repetition in a rotated order:
  diff --no-verify   diff_bundles(a, b): the sections only (what `prov diff` did before it checked seals);
  diff               diff_bundles(a, b, verify=True): both seals checked first (every byte hashed, every core);
  audit a + audit b  provenance.audit.audit of each bundle: what checking both by hand costs.
Every file was just written or read: warm page cache. It prints medians and the ratios to the
diff without verification. A ratio, not a test: nothing fails because the machine is slow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provenance.audit import audit  # noqa: E402
from provenance.bundle import seal_folder  # noqa: E402
from provenance.diff import diff_bundles  # noqa: E402
from provenance.hashing import default_workers  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="a sealed run folder to copy")
    ap.add_argument("--big-mib", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-diff-") as tmp:
        roots = []
        for side in ("a", "b"):
            root = Path(tmp) / side / args.bundle.name
            shutil.copytree(args.bundle, root)
            with open(root / "model" / "extra.bin", "wb") as f:
                for _ in range(args.big_mib):
                    f.write(os.urandom(1 << 20))
            seal_folder(root)
            roots.append(root)
        a, b = roots
        cases: dict[str, Callable[[], object]] = {
            "diff --no-verify": lambda: diff_bundles(a, b),
            "diff": lambda: diff_bundles(a, b, verify=True),
            "audit a + audit b": lambda: (audit(a), audit(b)),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        names = list(cases)
        for rep in range(args.reps):
            for k in names[rep % len(names):] + names[:rep % len(names)]:
                t0 = time.perf_counter()
                cases[k]()
                times[k].append(time.perf_counter() - t0)
        d = diff_bundles(a, b, verify=True)
        assert all(r["state"] == "intact" for r in d["integrity"].values()), d["integrity"]
        size = sum(r["bytes"] for r in d["integrity"].values())
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["diff --no-verify"]
    print(f"two bundles, {size / 1e6:.0f} MB in all, {default_workers()} hashing threads, load "
          f"{os.getloadavg()[0]:.1f}, median of {args.reps}:")
    for k, v in med.items():
        print(f"  {k:<18} {v:8.3f} s   ratio {v / base:6.2f}" + (f"   {size / v / 1e6:7.0f} MB/s" if k != names[0]
                                                                  else ""))
    if args.json:
        args.json.write_text(json.dumps({"bytes": size, "workers": default_workers(), "seconds": times,
                                         "median": med}, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
