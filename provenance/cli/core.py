"""`prov note` and `prov seal`: decision notes and sealing after the fact."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from provenance import formats
from provenance.bundle import BundleError, folder_lock, seal_folder_locked
from provenance.recover import seal_run
from provenance.redact import Redactor


def _run_dir(path: str) -> Path:
    root = Path(path)
    if not (root / formats.RUN_JSON).is_file():
        raise BundleError(f"{path}: not a run folder ({formats.RUN_JSON} is missing)")
    return root


def cmd_note(args: argparse.Namespace) -> int:
    try:
        root = _run_dir(args.run)
        metrics = list(formats.read_jsonl(root / formats.METRICS)) if args.step is None else []
        step = args.step if args.step is not None else (metrics[-1]["step"] if metrics else None)
        rec = formats.note_record(args.text, args.category, args.author, args.link, step)
    except (BundleError, ValueError, formats.FormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Under the folder lock: a run that is sealing right now either sees this note, or has
    # finished sealing and is resealed here. A finished bundle stays sealed.
    with folder_lock(root):
        formats.append_line(root / formats.NOTES, Redactor().text(formats.dumps_line(rec)))
        info = formats.read_json(root / formats.RUN_JSON)
        if info.get("status") != "running" and (root / formats.MANIFEST).exists():
            digest = seal_folder_locked(root)
            print(f"note added to {root} (step {step}); resealed, root digest sha256:{digest}")
            if any((root / sig).exists() for sig in (formats.SIGNATURE, formats.SIGSTORE_SIGNATURE)):
                print("warning: this bundle was signed; the signature covers the bundle before this note, "
                      "so it no longer verifies: run `prov release` again", file=sys.stderr)
            return 0
    print(f"note added to {root} (step {step})")
    return 0


def cmd_seal(args: argparse.Namespace) -> int:
    try:
        result = seal_run(args.run, force=args.force)
    except (BundleError, formats.FormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"sealed {args.run}: status {result['status']}, root digest sha256:{result['root_digest']}")
    for rel in result["repaired"]:
        print(f"  repaired torn or leftover file: {rel}")
    for rel in result["indexed"]:
        print(f"  indexed checkpoint: {rel}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("note", help="append a decision note to a run (also while it trains)")
    p.add_argument("run", help="run folder, e.g. runs/<run_id>")
    p.add_argument("text")
    p.add_argument("--category", default="other", choices=formats.NOTE_CATEGORIES)
    p.add_argument("--author", default=None)
    p.add_argument("--link", action="append", default=[], help="a URL or path; repeatable")
    p.add_argument("--step", type=int, default=None, help="default: the run's latest logged step")
    p.set_defaults(func=cmd_note)

    p = sub.add_parser("seal", help="seal a run folder (a run killed by SIGKILL is sealed as interrupted)")
    p.add_argument("run")
    p.add_argument("--force", action="store_true", help="seal even if the run's process seems alive")
    p.set_defaults(func=cmd_seal)
