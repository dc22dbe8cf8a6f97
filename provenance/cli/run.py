"""`prov run`: wrap any unmodified training command and seal its bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from provenance.bundle import BundleError
from provenance.capture.data import DataMismatch


def cmd_run(args: argparse.Namespace) -> int:
    from provenance.integrations.wrap import wrap
    from provenance.lineage import LineageCallback

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("error: no command given (usage: prov run [options] -- COMMAND ...)", file=sys.stderr)
        return 2
    try:
        status, run = wrap(command, name=args.name, data=args.data, outputs=args.outputs, runs_dir=args.runs_dir,
                           data_in_bundle=args.data_in_bundle, copy_outputs=not args.hash_outputs_only,
                           capture=not args.no_capture, data_layouts=args.data_layouts,
                           license=args.license, callbacks=[LineageCallback()])
    except (FileNotFoundError, DataMismatch, BundleError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"prov run: {run.status}, exit status {status}\nrun: {run.root}\nroot digest: sha256:{run.root_digest}",
          file=sys.stderr)
    return status


def cmd_dvc(args: argparse.Namespace) -> int:
    from provenance.integrations import dvc

    try:
        if args.action == "push":
            pointer = dvc.push_bundle(Path(args.target), remote=args.remote, dest=args.to)
            print(f"pushed {args.target} to the DVC remote; pointer: {pointer} (commit it)")
        else:
            folder = dvc.pull_bundle(Path(args.target), remote=args.remote)
            print(f"pulled {folder}; every file matches its seal")
    except (dvc.DvcError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


class _DataLayout(argparse.Action):
    """--data-layout LAYOUT: the layout of the --data just before it (checked here: a bad string is a
    usage error naming the argument, exit 2, before anything runs)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from provenance.datasets.layouts import LayoutError, parse_layout

        data = getattr(namespace, "data", None) or []
        layouts = list(getattr(namespace, self.dest, None) or [])
        if not data:
            raise argparse.ArgumentError(self, "must follow the --data it describes (--data PATH --data-layout ...)")
        try:
            parse_layout(str(values))
        except LayoutError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        layouts += [None] * (len(data) - len(layouts))
        if layouts[len(data) - 1] is not None:
            raise argparse.ArgumentError(self, f"given twice for --data {data[-1]}")
        layouts[len(data) - 1] = str(values)
        setattr(namespace, self.dest, layouts)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run any training command as a child and seal its bundle",
                       description="Run COMMAND unmodified; capture code, environment, declared data, stdout and "
                                   "stderr, exit status and signals, declared outputs and timings; seal the bundle. "
                                   "Exits with the command's status.",
                       usage="prov run [--name NAME] [--data [NAME=]PATH [--data-layout LAYOUT] ...] "
                             "[--outputs PATH ...] -- COMMAND ...")
    p.add_argument("--name", default=None, help="run name (default: the script's name)")
    p.add_argument("--data", action="append", default=[], metavar="[NAME=]PATH",
                   help="a file or folder the command reads: manifested (size, sha256, records) and checked for "
                        "changes after the command; repeatable")
    p.add_argument("--data-layout", action=_DataLayout, default=[], dest="data_layouts", metavar="LAYOUT",
                   help="what a sample id of the --data just before means, recorded in its manifest: lines "
                        "(default), documents[:column=NAME], token-stream:DTYPE:WINDOW[:window|offset[:CHUNK]] "
                        "(e.g. token-stream:uint16:1024)")
    p.add_argument("--outputs", action="append", default=[], metavar="PATH",
                   help="a file or folder the command writes: copied into the bundle and hashed; repeatable")
    p.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    p.add_argument("--data-in-bundle", action="store_true", help="also copy the declared data into the bundle")
    p.add_argument("--hash-outputs-only", action="store_true",
                   help="record the outputs' digests without copying them into the bundle")
    p.add_argument("--license", default=None, help="license of what the run releases")
    p.add_argument("--no-capture", action="store_true",
                   help="do not inject the capture layer (steps, data order, exact losses, seeds, checkpoints) "
                        "into the command's Python processes")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("dvc", help="push a sealed bundle to a DVC remote, or pull one back",
                       description="push: `dvc add --to-remote` the bundle as bundles/<run_id> and write "
                                   "bundles/<run_id>.dvc (commit it). pull: `dvc pull` a bundle by its .dvc pointer "
                                   "and check every file against its seal. Runs inside a DVC repository.")
    p.add_argument("action", choices=("push", "pull"))
    p.add_argument("target", help="push: a run folder (runs/<run_id>); pull: its pointer (bundles/<run_id>.dvc)")
    p.add_argument("-r", "--remote", default=None, help="DVC remote name (default: the repository's default)")
    p.add_argument("--to", default=None, help="push: where the bundle is tracked (default: bundles/<run_id>)")
    p.set_defaults(func=cmd_dvc)
