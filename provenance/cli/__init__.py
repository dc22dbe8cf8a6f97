"""The `prov` command line. Each module in this package adds one or more subcommands.

A command module defines `register(subparsers)`, which adds its parsers and sets
`func` (taking the parsed args, returning an exit status).
Exit statuses: 0 success, 1 check failed (audit/reproduce verdict), 2 bad input.
"""

from __future__ import annotations

import argparse
import importlib
import os
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


EXIT_BROKEN_PIPE = 128 + 13  # 128 + SIGPIPE: what a shell reports for a command whose reader went away


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
            status = int(args.func(args) or 0)
        finally:  # (--help's SystemExit too) a reader that has gone, `prov diff A B | head -1`, shows here
            sys.stdout.flush()
        return status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout's reader closed it early: stop quietly, no traceback. What is still buffered goes to
        # /dev/null, so the interpreter's own flush at exit does not fail again (the Python docs' SIGPIPE note)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
