"""`prov diff A B`: what differs between two bundles (or a bundle and its reproduction)."""

from __future__ import annotations

import argparse
import json
import sys

EXIT_SAME, EXIT_DIFFERS, EXIT_REFUSED = 0, 1, 2


def exit_status(d: dict, exit_code: bool) -> int:
    """1 when either bundle failed its integrity check (tampered, or not sealed) or, with --exit-code, when
    anything differs; 0 otherwise."""
    if any(not r.get("ok", True) for r in (d.get("integrity") or {}).values()):
        return EXIT_DIFFERS
    return EXIT_DIFFERS if exit_code and not d.get("identical", True) else EXIT_SAME


def cmd_diff(args: argparse.Namespace) -> int:
    from provenance import formats
    from provenance.cli.audit import ProgressBar
    from provenance.diff import diff_bundles, format_diff
    from provenance.untrusted import escape, escape_all

    bar = None if args.no_progress or args.no_verify else ProgressBar()
    try:
        d = diff_bundles(args.a, args.b, verify=not args.no_verify, workers=args.workers, progress=bar)
    except (OSError, ValueError, formats.FormatError) as exc:
        print(f"error: {escape(exc)}", file=sys.stderr)  # one line, whatever the bundle's names hold
        return EXIT_REFUSED
    except RecursionError:  # pragma: no cover - every bundle file is read through the bounded parser
        print(f"error: {escape(args.a)} / {escape(args.b)}: a bundle file is nested too deeply; refused",
              file=sys.stderr)
        return EXIT_REFUSED
    if args.json:  # JSON escapes control characters itself; strict: a NaN loss is "NaN", never a bare NaN
        sys.stdout.write(json.dumps(formats.strict_json(d), sort_keys=True, indent=2, ensure_ascii=True,
                                    allow_nan=False) + "\n")
    else:  # names and values from the bundles, escaped: none can forge a line of the report
        print(format_diff(escape_all(d), verbose=args.verbose))
    return exit_status(d, args.exit_code)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"at least 1 thread, got {n}")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diff", help="compare two bundles: config, code, data, packages, hardware, metrics",
                       description="Check both bundles' seals (every file hashed against manifest.json, as "
                                   "`prov audit` does), then compare them section by section: config keys, code "
                                   "files, data files, packages, torch, thread count, hardware, metrics (the "
                                   "first step where the loss differs, the largest difference), data order, "
                                   "checkpoints and the final model. Exit status: 0; 1 when either bundle is "
                                   "tampered (a file changed, missing or not in its seal, or a broken seal) or "
                                   "not sealed (nothing shows its files are what its run wrote; --no-verify "
                                   "compares a live run) and, with --exit-code, when "
                                   "any difference is found; 2 when a bundle cannot be read.")
    p.add_argument("a", help="a run folder")
    p.add_argument("b", help="another run folder (e.g. its reproduction)")
    p.add_argument("--json", action="store_true", help="print the diff as JSON")
    p.add_argument("--verbose", action="store_true", help="also list environment variables that differ")
    p.add_argument("--exit-code", action="store_true",
                   help="exit 1 when any difference is found, 0 when the bundles are the same (like git diff "
                        "--exit-code); differences that cannot change the numbers do not count, nor those a "
                        "reproduction has by design (path keys such as data.root and run.runs_dir, a command "
                        "that differs only in its interpreter, config file and config overrides, run id, "
                        "times, host): a bitwise reproduction exits 0")
    p.add_argument("--no-verify", action="store_true",
                   help="do not hash the bundles to check their seals (fast on large checkpoints; the "
                        "integrity lines then say 'not verified' and integrity never sets the exit status)")
    p.add_argument("--workers", type=_positive, default=None, help="hashing threads (default: every core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr while hashing")
    p.set_defaults(func=cmd_diff)
