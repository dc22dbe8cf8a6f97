"""`prov reproduce BUNDLE`: re-run a bundle's training and say whether it reproduced bitwise, and if not, why."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from provenance import formats
from provenance.untrusted import escape


def cmd_reproduce(args: argparse.Namespace) -> int:
    from provenance.cli import _reproduce_segments as segments
    from provenance.reproduce import Options, reproduce

    if args.tolerance is None:  # --calibrate measures auto's bounds; otherwise bitwise
        args.tolerance = "auto" if args.calibrate else "bitwise"
    if segments.wanted(args):  # --segments, --segment I, --sample N, --merge REPORT...
        return segments.run(args)
    from provenance.cli import _reproduce_chain as chain

    if chain.wanted(args):  # --chain [--chain-dir DIR]: every segment of a restarted run
        return chain.run(args)
    if args.bundle is None:
        print("error: BUNDLE: give the bundle to reproduce", file=sys.stderr)
        return 2
    as_json = args.json
    out = sys.stderr if as_json else sys.stdout

    def say(line: str) -> None:  # lines name the bundle's files and values: escaped, one line each
        print(escape(line), file=out, flush=True)

    def echo(line: str) -> None:
        print(f"  | {escape(line)}", file=out, flush=True)

    opts = Options(steps=args.steps, from_step=args.from_step, workdir=Path(args.workdir) if args.workdir else None,
                   data_root=Path(args.data_root).resolve() if args.data_root else None, sets=list(args.set),
                   code=Path(args.code) if args.code else None, strict_env=args.strict_env,
                   sandbox=args.sandbox, calibrate=args.calibrate,
                   tolerance=args.tolerance,
                   echo=None if args.quiet else echo,
                   args=args.args)
    # --quiet: no progress and no training output; only the verdict (and an error)
    outcome = reproduce(args.bundle, opts, say=None if args.quiet else say)
    rep = outcome.report
    if as_json:
        doc = {**rep.to_dict(), "bundle": str(outcome.bundle) if outcome.bundle else None,
               "root_digest": f"sha256:{outcome.root_digest}" if outcome.root_digest else None,
               "workdir": str(outcome.workdir) if outcome.workdir else None}
        sys.stdout.write(formats.dumps(doc))  # strict JSON
        return outcome.exit_status
    if not args.quiet:
        print("", file=out)
    if outcome.verdict == "refused":
        print(f"error: {escape(outcome.headline)}", file=sys.stderr)
        if rep.training_exit_status is None:
            print("verdict: refused (nothing ran)")
        else:  # a process was started: never "nothing ran"
            print(f"verdict: refused after the training ran (exit status {rep.training_exit_status}); "
                  f"work folder kept: {outcome.workdir}")
        return outcome.exit_status
    print(f"verdict: {escape(outcome.headline)}")
    if args.quiet:
        return outcome.exit_status
    for c in rep.other_causes[:8]:
        print(f"  also differs: {escape(c['summary'])}")
    d = rep.durations
    if d.get("original_s") is not None and d.get("reproduction_s") is not None:
        print(f"time: original {d['original_s']:.1f} s, reproduction {d['reproduction_s']:.1f} s in the run, "
              f"{d.get('total_wall_s', 0):.1f} s in all")
    print(f"reproduction: {outcome.bundle}")
    print(f"root digest: sha256:{outcome.root_digest}")
    print(f"reproduces: {escape(rep.original['run_id'])} (root sha256:{rep.original['root_digest']})")
    return outcome.exit_status


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce", help="re-run a bundle's training and check it step by step against the original",
        description="Audit BUNDLE, materialise its code, compare the environment, verify its data, re-run the "
                    "training with the recorded config and data order, and compare every batch, loss (bitwise) "
                    "and checkpoint digest. This EXECUTES THE BUNDLE'S CODE (--sandbox contains it). "
                    "Exit status: 0 reproduced (bitwise, or within --tolerance); 1 diverged, incomplete, or "
                    "matched without a claim; 2 refused (integrity, data, --strict-env, no sandbox, bad input).")
    p.add_argument("bundle", nargs="?", help="a run folder (runs/<run_id>) or a release archive (.tar, .tar.gz)")
    g = p.add_argument_group("what to check")
    g.add_argument("--steps", type=int, default=None, metavar="N",
                   help="check N steps (from the original's first step, or after --from-step K) and stop")
    g.add_argument("--from-step", type=int, default=None, metavar="K",
                   help="restore the original's checkpoint of step K (weights, optimizer, RNG) and check from K+1")
    g.add_argument("--tolerance", default=None, metavar="auto|bitwise|loss=REL,ckpt=REL",
                   help="bitwise (the default), or bounds within which a reproduction that is not bitwise still "
                        "reproduces: loss=<relative loss difference>,ckpt=<relative L2 of each checkpoint tensor>; "
                        "auto: bitwise where the original claims determinism and the environment is the recorded "
                        "one, otherwise the noise model's bounds (growing with the step) for what differs. "
                        "The data order is always compared exactly")
    g.add_argument("--calibrate", action="store_true",
                   help="measure this machine's noise floor first (a short segment run twice at two thread counts) "
                        "and set auto's bounds from it (implies --tolerance auto)")
    g = p.add_argument_group("where")
    g.add_argument("--workdir", default=None, metavar="DIR",
                   help="an empty folder for the code, data and the reproduction's bundle "
                        "(default: .cache/reproduce/<run_id>-<time>)")
    g.add_argument("--data-root", default=None, metavar="DIR",
                   help="a folder holding the datasets' files (checked against the manifests before step 0)")
    g.add_argument("--sandbox", action="store_true",
                   help="run the training under bubblewrap: no network, the file system read-only except the "
                        "work folder, a private /tmp (refused when no sandbox is available)")
    g = p.add_argument_group("perturbations (a bitwise claim is never made across one)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the recorded config, e.g. train.lr=0.001; repeatable")
    g.add_argument("--code", default=None, metavar="DIR", help="run this code folder instead of the snapshot")
    g.add_argument("--args", default=None, metavar='"ARGS"',
                   help="a wrapped command (prov run): replace the arguments after its script (never bitwise)")
    g.add_argument("--strict-env", action="store_true", help="refuse when the environment differs in any way")
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print the reproduction report as JSON on stdout")
    g.add_argument("--quiet", action="store_true",
                   help="print only the verdict: no progress lines and no training output")
    from provenance.cli import _reproduce_segments

    _reproduce_segments.add_arguments(p)
    from provenance.cli import _reproduce_chain

    _reproduce_chain.add_arguments(p)
    p.set_defaults(func=cmd_reproduce)
