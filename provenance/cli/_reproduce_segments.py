"""`prov reproduce --segments | --segment I | --sample N [--seed S] [--jobs N]` and `prov reproduce --merge
REPORT...`: segment verification (provenance.reproduce.segments), printed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from provenance import formats
from provenance.untrusted import escape


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("segment verification (each interval between the original's checkpoints on its own)")
    g.add_argument("--segments", action="store_true",
                   help="check every interval between the original's checkpoints independently: restore the "
                        "checkpoint of its first step, run to the next checkpoint, compare every step and the "
                        "checkpoint; the report lists every interval and the first divergent one")
    g.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="with --segments or --sample: run N intervals at a time here (each training with the "
                        "recorded thread count)")
    g.add_argument("--segment", type=int, default=None, metavar="I",
                   help="check interval I only (0 = from the recorded init), for separate machines; it writes its "
                        "own report (<workdir>/segments-report.json), joined by --merge")
    g.add_argument("--sample", type=int, default=None, metavar="N",
                   help="check N intervals chosen at random (seeded); the report says what the sample can and "
                        "cannot rule out")
    g.add_argument("--seed", type=int, default=None, metavar="S",
                   help="the seed of --sample (default: a random one, recorded in the report)")
    g.add_argument("--merge", nargs="+", default=None, metavar="REPORT",
                   help="join segment reports (segments-report.json files, or the work folders holding them) of "
                        "one bundle into one verdict: prov reproduce --merge A B ... (no BUNDLE); writes nothing")


def wanted(args: argparse.Namespace) -> bool:
    return bool(args.segments or args.merge is not None or args.segment is not None or args.sample is not None
                or args.jobs is not None or args.seed is not None)


def _refuse(message: str) -> int:
    print(f"error: {escape(message)}", file=sys.stderr)
    print("verdict: refused (nothing ran)")
    return 2


def run(args: argparse.Namespace) -> int:
    from provenance.reproduce import Options
    from provenance.reproduce.segments import SegmentOptions, merge_reports, reproduce_segments

    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:  # lines name the bundle's files and a report's claims: escaped, one line each
        print(escape(line), file=out, flush=True)

    if getattr(args, "chain", False) or getattr(args, "chain_dir", None):
        return _refuse("--chain: not with segment verification (--chain reproduces a chain of restart bundles; "
                       "--segments the intervals of one bundle)")
    if args.merge is not None:
        given = {"BUNDLE": args.bundle, "--segments": args.segments or None, "--segment": args.segment,
                 "--sample": args.sample, "--seed": args.seed, "--jobs": args.jobs, "--workdir": args.workdir,
                 "--set": args.set or None, "--steps": args.steps, "--from-step": args.from_step,
                 "--code": args.code, "--data-root": args.data_root, "--sandbox": args.sandbox or None,
                 "--strict-env": args.strict_env or None, "--calibrate": getattr(args, "calibrate", False) or None,
                 "--tolerance": None if args.tolerance == "bitwise" else args.tolerance}
        others = [flag for flag, value in given.items() if value is not None]
        if others:
            return _refuse(f"--merge: joins existing reports and runs nothing; not with {', '.join(others)}")
        outcome = merge_reports(args.merge)
    else:
        if args.bundle is None:
            return _refuse("BUNDLE: give the bundle to check (or --merge REPORT... to join reports)")
        if args.jobs is not None and not (args.segments or args.sample is not None or args.segment is not None):
            return _refuse(f"--jobs {args.jobs}: only with --segments or --sample N")
        opts = Options(steps=args.steps, from_step=args.from_step,
                       workdir=Path(args.workdir) if args.workdir else None,
                       data_root=Path(args.data_root).resolve() if args.data_root else None, sets=list(args.set),
                       code=Path(args.code) if args.code else None, strict_env=args.strict_env,
                       sandbox=args.sandbox, tolerance=args.tolerance, calibrate=getattr(args, "calibrate", False),
                       echo=None if args.quiet else (lambda line: print(f"  | {escape(line)}", file=out, flush=True)),
                       args=args.args)
        seg = SegmentOptions(jobs=1 if args.jobs is None else args.jobs, segment=args.segment, sample=args.sample,
                             seed=args.seed)
        outcome = reproduce_segments(args.bundle, opts, seg, say=None if args.quiet else say)
    rep = outcome.report
    if args.json:
        doc = {**rep.to_dict(), "report_path": str(outcome.path) if outcome.path else None,
               "workdir": str(outcome.workdir) if outcome.workdir else None}
        sys.stdout.write(formats.dumps(doc))  # strict JSON
        return outcome.exit_status
    if outcome.verdict == "refused":
        if rep.training_exit_status is None:
            return _refuse(outcome.headline.removeprefix("refused: "))
        print(f"error: {escape(outcome.headline.removeprefix('refused: '))}", file=sys.stderr)
        print(f"verdict: refused after a training ran (exit status {rep.training_exit_status}); work folder kept: "
              f"{escape(str(outcome.workdir))}")  # never "nothing ran" when something did
        return outcome.exit_status
    if not args.quiet:
        print("", file=out)
    for r in (rep.segments or {}).get("results", []):
        print(escape(interval_line(r)))
    print(f"verdict: {escape(outcome.headline)}")
    cov = (rep.segments or {}).get("coverage") or {}
    if cov.get("not_checked"):
        for line in cov.get("rules_out", []):
            print(f"  rules out: {escape(line)}")
        for line in cov.get("cannot_rule_out", []):
            print(f"  cannot rule out: {escape(line)}")
    if outcome.path is not None:
        print(f"report: {outcome.path}")
    print(escape(f"reproduces: {rep.original.get('run_id')} (root sha256:{rep.original.get('root_digest')})"))
    return outcome.exit_status


def interval_line(r: dict[str, Any]) -> str:
    start = (f"the checkpoint of step {r['from_step']}" if r.get("restores") else "the recorded init"
             if not r.get("from_step") else f"the checkpoint of step {r['from_step']} the original continued from")
    head = r["headline"]
    ck = r.get("end_checkpoint")
    tail = ""
    if ck is not None and r["verdict"] != "refused":
        tail = f"; checkpoint of step {ck['step']} " + ("matched" if ck.get("match") else "differs")
    where = f" ({r['bundle']})" if r.get("bundle") else ""
    return f"interval {r['index']}: steps {r['from_step'] + 1}–{r['to_step']} from {start}: {head}{tail}{where}"
