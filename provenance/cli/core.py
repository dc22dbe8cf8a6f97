"""`prov note` and `prov seal`: decision notes and sealing after the fact."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from provenance import formats
from provenance.bundle import BundleError
from provenance.recover import add_note, printable, seal_run
from provenance.redact import Redactor


def cmd_note(args: argparse.Namespace) -> int:
    # Under the folder lock: a run that is sealing right now either sees this note, or has
    # finished sealing and is resealed here (after its seal is checked). A finished bundle stays sealed.
    try:
        step, digest = add_note(args.run, args.text, args.category, args.author, list(args.link), args.step,
                                redact=Redactor().text, about=args.about)
    except (BundleError, ValueError, OSError) as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 2
    root = Path(args.run)
    if digest is None:
        print(f"note added to {printable(str(root))} (step {step})")
        return 0
    print(f"note added to {printable(str(root))} (step {step}); the seal was checked and renewed "
          f"(recorded in {formats.RESEALS}), root digest sha256:{digest}")
    if any((root / sig).exists() for sig in (formats.SIGNATURE, formats.SIGSTORE_SIGNATURE)):
        print("warning: this bundle was signed; the signature covers the bundle before this note, "
              "so it no longer verifies: run `prov release` again", file=sys.stderr)
    return 0


def cmd_seal(args: argparse.Namespace) -> int:
    try:
        result = seal_run(args.run, force=args.force, reason=args.reason)
    except (BundleError, ValueError, OSError) as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 2
    run = printable(str(args.run))
    if result["unchanged"]:
        print(f"{run}: the existing seal verifies, every file unchanged; status {result['status']}, "
              f"root digest sha256:{result['root_digest']}")
        return 0
    again = f" (re-sealed, recorded in {formats.RESEALS})" if result["resealed"] else ""
    print(f"sealed {run}: status {result['status']}, root digest sha256:{result['root_digest']}{again}")
    for rel in result["repaired"]:
        print(f"  repaired torn or leftover file: {printable(rel)}")
    for rel in result["indexed"]:
        print(f"  indexed checkpoint: {printable(rel)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("note", help="append a decision note to a run (also while it trains)")
    p.add_argument("run", help="run folder, e.g. runs/<run_id>")
    p.add_argument("text")
    p.add_argument("--category", default="other", choices=formats.NOTE_CATEGORIES)
    p.add_argument("--author", default=None)
    p.add_argument("--link", action="append", default=[], help="a URL or path; repeatable")
    p.add_argument("--step", type=int, default=None, help="default: the run's latest logged step")
    p.add_argument("--about", default=None, metavar="DIGEST",
                   help="the root digest of another bundle this note is about (shown by prov lineage)")
    p.set_defaults(func=cmd_note)

    p = sub.add_parser("seal", help="seal a run folder (a run killed by SIGKILL is sealed as interrupted)")
    p.add_argument("run")
    p.add_argument("--force", action="store_true",
                   help="seal even if the run's process seems alive; re-seal a sealed bundle after checking that "
                        "no file changed since its seal")
    p.add_argument("--reason", default=None, help="why a sealed bundle is re-sealed (recorded in reseals.jsonl)")
    p.set_defaults(func=cmd_seal)
