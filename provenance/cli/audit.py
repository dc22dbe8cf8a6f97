"""`prov audit` and `prov pack`: check a bundle (folder or archive); make its release archive."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from provenance import formats
from provenance.archive import DEFAULT_LIMITS as ARCHIVE_LIMITS
from provenance.archive import PackError, pack
from provenance.audit import DEFAULT_LIMITS, EXIT_REFUSED, AuditRefused, audit, refusal_to_dict
from provenance.untrusted import escape

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'500G', '64M', '1T' or a number of bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in _UNITS else ""
    try:
        value = float(t[: len(t) - len(unit)] if unit else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 500G, 64M, 1T)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return int(value * _UNITS[unit])


class ProgressBar:
    """A one-line progress bar on stderr, drawn only on a terminal and only for large inputs."""

    def __init__(self, stream: TextIO | None = None, min_total: int = 64 << 20, force: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr  # the stderr of now, not of import time
        self.min_total = min_total
        self.enabled = force or (hasattr(self.stream, "isatty") and self.stream.isatty())  # stderr by default
        self._lock = threading.Lock()
        self.label, self.total, self.done = "", 0, 0
        self._t0 = self._last = 0.0
        self._active = self._drawn = False

    def start(self, label: str, total: int) -> None:
        with self._lock:
            self.label, self.total, self.done = label, total, 0
            self._t0 = self._last = time.monotonic()
            self._active = self.enabled and total >= self.min_total
            self._drawn = False

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self._active and now - self._last >= 0.1:
                self._last = now
                self._draw(now)

    def finish(self) -> None:
        with self._lock:
            if self._active and self._drawn:
                self._draw(time.monotonic())
                self.stream.write("\n")
                self.stream.flush()
            self._active = False

    def _draw(self, now: float) -> None:
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        width = 30
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        rate = self.done / max(now - self._t0, 1e-6) / 1e6
        self.stream.write(f"\r{self.label:<9} [{bar}] {frac * 100:5.1f}%  {self.done / 1e9:.2f}/"
                          f"{self.total / 1e9:.2f} GB  {rate:7.1f} MB/s")
        self.stream.flush()
        self._drawn = True


def cmd_audit(args: argparse.Namespace) -> int:
    limits = DEFAULT_LIMITS
    if args.max_unpacked_size is not None:
        limits = dataclasses.replace(limits, archive=dataclasses.replace(
            ARCHIVE_LIMITS, max_total_bytes=args.max_unpacked_size,
            max_file_bytes=min(ARCHIVE_LIMITS.max_file_bytes, args.max_unpacked_size)))
    bar = None if args.no_progress else ProgressBar()
    from provenance.verify import SigningError, trusting

    if args.segments:  # folders holding a resumed run's previous segments (the `segments` check reads it)
        from provenance.audit.segments import SEGMENTS_ENV

        os.environ[SEGMENTS_ENV] = os.pathsep.join(str(Path(d).resolve()) for d in args.segments)

    try:
        with trusting(args.trust):
            report = audit(args.bundle, require_class=args.require_class, progress=bar, limits=limits,
                           tmp_dir=args.tmp_dir, workers=args.workers)
    except SigningError as exc:
        print(f"error: --trust: {exc}", file=sys.stderr)
        return 2
    except AuditRefused as exc:
        if args.json:  # ensure_ascii: a hostile name cannot break the output's encoding
            sys.stdout.write(formats.dumps_ascii(refusal_to_dict(args.bundle, str(exc))))
        print(f"error: refused: {escape(str(exc))}", file=sys.stderr)  # one line: nothing raw from the bundle
        return EXIT_REFUSED
    if args.lineage:  # the whole graph: every ancestor and every edge (provenance.lineage.check)
        from provenance.cli.lineage import audit_graph

        return audit_graph(args, report)
    if args.json:
        sys.stdout.write(report.to_json())
    else:
        sys.stdout.write(report.to_text())
    return report.exit_status


def cmd_pack(args: argparse.Namespace) -> int:
    run = Path(args.run)
    out = Path(args.output) if args.output else Path.cwd() / f"{run.resolve().name}.tar.gz"
    if out.exists() and not args.force:
        print(f"error: {out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    bar = None if args.no_progress else ProgressBar()
    try:
        if bar is not None:
            bar.start("packing", sum(p.stat().st_size for p in run.rglob("*") if p.is_file() and not p.is_symlink()))
        result = pack(run, out, progress=bar.advance if bar is not None else None)
    except (PackError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.finish()
    print(f"packed {run} -> {result.path}: {result.files} files, {result.size} bytes\n"
          f"  archive sha256:{result.sha256}\n  bundle root digest sha256:{result.root_digest}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="check a bundle's integrity, consistency and openness (run folder or release archive)",
        description="Exit status: 0 when integrity and consistency hold (and --require-class is met), "
                    "1 when they do not, 2 when the input is refused (hostile or not a bundle). "
                    "--json prints the fullyopen.audit/v1 document described in docs/audit.md.")
    p.add_argument("bundle", help="a run folder (runs/<run_id>) or a release archive (.tar, .tar.gz)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (schema fullyopen.audit/v1)")
    p.add_argument("--require-class", choices=("I", "II", "III"), default=None,
                   help="fail unless the bundle meets this Model Openness Framework class (I is the most open)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--tmp-dir", default=None, help="where an archive is unpacked (default: the system's)")
    p.add_argument("--max-unpacked-size", type=parse_size, default=None,
                   help="refuse an archive that unpacks to more than this (e.g. 500G; default 1T)")
    p.add_argument("--workers", type=int, default=None, help="hashing threads (default: every core)")
    p.add_argument("--segments", action="append", default=None, metavar="DIR",
                   help="a folder holding the previous segments of a resumed run (repeatable; default: next to it)")
    p.add_argument("--lineage", action="store_true",
                   help="also audit every ancestor and every lineage edge (docs/lineage.md)")
    p.add_argument("--store", action="append", default=None, metavar="DIR",
                   help="with --lineage: a bundle store holding the ancestors (repeatable)")
    p.add_argument("--trust", default=None, metavar="KEY.pub",
                   help="the signer's public key (PEM) you trust: the audit fails unless the bundle is signed by "
                        "exactly this key (without it, a signature is reported as made by an untrusted key)")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("pack", help="write the deterministic release archive of a sealed bundle",
                       description="The same bundle always gives the same bytes: members sorted, mtime 0, "
                                   "uid/gid 0, gzip mtime 0. Every file is checked against the seal as it is packed.")
    p.add_argument("run", help="a sealed run folder")
    p.add_argument("-o", "--output", default=None, help="FILE.tar or FILE.tar.gz (default: ./<run_id>.tar.gz)")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_pack)
