"""`prov diff A B`: what differs between two bundles (or a bundle and its reproduction)."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_diff(args: argparse.Namespace) -> int:
    from provenance import formats
    from provenance.diff import diff_bundles, format_diff
    from provenance.untrusted import escape, escape_all

    try:
        d = diff_bundles(args.a, args.b)
    except (OSError, ValueError, formats.FormatError) as exc:
        print(f"error: {escape(exc)}", file=sys.stderr)  # one line, whatever the bundle's names hold
        return 2
    except RecursionError:  # pragma: no cover - every bundle file is read through the bounded parser
        print(f"error: {escape(args.a)} / {escape(args.b)}: a bundle file is nested too deeply; refused",
              file=sys.stderr)
        return 2
    if args.json:  # JSON escapes control characters itself
        sys.stdout.write(json.dumps(d, sort_keys=True, indent=2, ensure_ascii=True) + "\n")
    else:  # names and values from the bundles, escaped: none can forge a line of the report
        print(format_diff(escape_all(d), verbose=args.verbose))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diff", help="compare two bundles: config, code, data, packages, hardware, metrics",
                       description="Compare two run bundles section by section: config keys, code files, data "
                                   "files, packages, torch, thread count, hardware, metrics (the first step where "
                                   "the loss differs, the largest difference), data order, checkpoints and the "
                                   "final model. Exit status 0 (2 when a bundle cannot be read).")
    p.add_argument("a", help="a run folder")
    p.add_argument("b", help="another run folder (e.g. its reproduction)")
    p.add_argument("--json", action="store_true", help="print the diff as JSON")
    p.add_argument("--verbose", action="store_true", help="also list environment variables that differ")
    p.set_defaults(func=cmd_diff)
