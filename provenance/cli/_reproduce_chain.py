"""`prov reproduce LAST --chain [--chain-dir DIR]`: reproduce every segment of a restarted run's chain
(provenance.reproduce.chain), printed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from provenance import formats
from provenance.untrusted import escape


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("a chain of restart segments (run.resume_from, torchrun --max-restarts)")
    g.add_argument("--chain", action="store_true",
                   help="BUNDLE is the last segment of a restarted run: verify the chain back to step 0, reproduce "
                        "every segment (each from the checkpoint it continued from) and check that every checkpoint "
                        "a segment continued from is what the previous segment's reproduction wrote")
    g.add_argument("--chain-dir", action="append", default=None, metavar="DIR",
                   help="with --chain: a folder holding previous segments (repeatable; default: next to BUNDLE, "
                        "then their recorded paths), as `prov audit --segments DIR`")


def wanted(args: argparse.Namespace) -> bool:
    return bool(args.chain or args.chain_dir)


def run(args: argparse.Namespace) -> int:
    from provenance.reproduce import Options
    from provenance.reproduce.chain import reproduce_chain

    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:  # lines name the bundles' run ids and files: escaped, one line each
        print(escape(line), file=out, flush=True)

    if not args.chain:
        print("error: --chain-dir: only with --chain", file=sys.stderr)
        return 2
    if args.bundle is None:
        print("error: BUNDLE: give the last segment of the chain", file=sys.stderr)
        return 2

    def echo(line: str) -> None:
        print(f"  | {escape(line)}", file=out, flush=True)

    opts = Options(workdir=Path(args.workdir).resolve() if args.workdir else None,
                   steps=args.steps, from_step=args.from_step,
                   data_root=Path(args.data_root).resolve() if args.data_root else None, sets=list(args.set),
                   code=Path(args.code) if args.code else None, strict_env=args.strict_env, sandbox=args.sandbox,
                   tolerance=args.tolerance, echo=None if args.quiet else echo, args=args.args)
    outcome = reproduce_chain(Path(args.bundle), opts, dirs=args.chain_dir or (), say=None if args.quiet else say)
    if args.json:
        sys.stdout.write(formats.dumps(outcome.to_dict()))  # strict JSON
        return outcome.exit_status
    if outcome.exit_status == 2 and not outcome.segments:
        print(f"error: {escape(outcome.headline)}", file=sys.stderr)
        print("verdict: refused (nothing ran)")
        return 2
    for i, s in enumerate(outcome.segments, 1):
        link = s.get("link")
        tail = ""
        if link is not None and "matches" in link:
            how = ("matches" if link["matches"] else "is within tolerance of" if link.get("within_tolerance")
                   else "DIFFERS from")
            tail = f"; checkpoint of step {link['step']} {how} what the next segment continued from"
        print(escape(f"segment {i}: {s['run_id']}: {s.get('verdict')}{tail}"))
    print(f"verdict: {escape(outcome.headline)}")
    return outcome.exit_status
