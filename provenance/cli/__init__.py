"""The `prov` command line. Each module in this package adds one or more subcommands.

A command module defines `register(subparsers)`, which adds its parsers and sets
`func` (taking the parsed args, returning an exit status).
Exit statuses: 0 success, 1 check failed (audit/reproduce verdict), 2 bad input.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from provenance import __version__

    parser = argparse.ArgumentParser(prog="prov", description="fullyopen: provable, fully open training runs")
    parser.add_argument("--version", action="version", version=f"prov (fullyopen) {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
