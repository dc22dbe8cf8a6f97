"""`prov release` and `prov keygen`: sign a bundle and add its model card, data cards,
SLSA provenance, openness record and report; make a release key."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from provenance import formats
from provenance.release.signing import DEFAULT_KEY_DIR, SigningError, generate_key
from provenance.untrusted import escape


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from provenance.cli.audit import ProgressBar
    except ImportError:  # pragma: no cover - the audit command is part of the package
        return None
    return ProgressBar()


def cmd_release(args: argparse.Namespace) -> int:
    from provenance.release import ReleaseError, release

    if args.key is None and not args.sigstore:
        print("warning: no --key and no --sigstore: the documents are written but the bundle is NOT signed "
              "(make a key with `prov keygen`)", file=sys.stderr)
    if args.lineage:  # audit the graph, then add the ancestors' root digests to what is signed
        from provenance.cli.lineage import attach_lineage

        rc = attach_lineage(args)
        if rc:
            return rc
    try:
        r = release(args.run, key=args.key, out=args.output, sigstore=args.sigstore,
                    reproduction=args.reproduction, producer=args.producer, contact=args.contact, force=args.force,
                    progress=_progress(not args.no_progress and not args.json), identity_token=args.identity_token)
    except (ReleaseError, SigningError, formats.FormatError, OSError) as exc:
        print(f"error: {escape(exc)}", file=sys.stderr)  # one line, whatever the bundle's names hold
        return 2
    for w in r.warnings:
        print(f"warning: {escape(w)}", file=sys.stderr)
    if args.json:
        sys.stdout.write(formats.dumps_ascii({"bundle": str(r.bundle), "root_digest": r.root_digest,
                          "content_root_digest": r.content_root_digest, "fingerprint": r.fingerprint,
                          "signature": r.signature, "sigstore": r.sigstore, "documents": r.documents,
                          "audit_ok": r.audit_ok}))
        return 0
    print(f"released {r.bundle}")
    print(f"  root digest          sha256:{r.root_digest}")
    print(f"  run files (training) sha256:{r.content_root_digest}")
    if r.fingerprint:
        print(f"  signed by key        {r.fingerprint}")
    if r.sigstore:
        print(f"  sigstore identity    {r.sigstore.get('identity')}")
    if not r.fingerprint and not r.sigstore:
        print("  NOT SIGNED")
    for label, rel in r.documents.items():
        print(f"  {label:<42} {rel}")
    if r.fingerprint:
        print("verify with:")
        print(f"  model_signing verify key {r.bundle} --public_key {r.bundle}/{formats.SIGNER_PUBLIC_KEY} "
              f"--signature {r.bundle}/{formats.SIGNATURE}")
        print(f"  prov audit {r.bundle}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from provenance.release.export import ExportError, export

    try:
        text = export(args.bundle, args.format, dataset=args.dataset, producer=args.producer, contact=args.contact)
    except (ExportError, formats.FormatError) as exc:
        print(f"error: {escape(exc)}", file=sys.stderr)
        return 2
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    try:
        formats.atomic_write_bytes(args.output, text.encode())
    except OSError as exc:
        print(f"error: {args.output}: cannot write ({exc.strerror})", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({args.format})", file=sys.stderr)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        priv, pub, fp = generate_key(args.output, force=args.force)
    except (SigningError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"private key  {priv}  (mode 0600: keep it out of the repository and out of bundles)")
    print(f"public key   {pub}")
    print(f"fingerprint  {fp}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "release", help="sign a bundle; add model card, data cards, SLSA provenance, openness record, report",
        description="Write the release documents into a sealed run bundle, re-seal it and sign it with "
                    "model_signing (docs/release.md). The bundle is released in place unless -o is given.")
    p.add_argument("run", help="a sealed run folder (runs/<run_id>)")
    p.add_argument("--key", default=None, metavar="KEY",
                   help=f"EC private key (PEM) to sign with; `prov keygen` makes one in {DEFAULT_KEY_DIR}. "
                        "An encrypted key's password is read from $PROV_KEY_PASSWORD")
    p.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="release a copy at DIR (or DIR/<run_id> when DIR is a folder); the original stays as it is")
    p.add_argument("--sigstore", action="store_true",
                   help="also sign keyless with Sigstore (needs network and an OIDC identity)")
    p.add_argument("--identity-token", default=os.environ.get("SIGSTORE_ID_TOKEN"), metavar="TOKEN",
                   help="OIDC token for --sigstore (default: $SIGSTORE_ID_TOKEN, else the browser flow)")
    p.add_argument("--reproduction", default=None, metavar="DIR",
                   help="a reproduction bundle of this run: its curves are overlaid in the report")
    p.add_argument("--producer", default="", help="who releases the model (model card, data cards, openness record)")
    p.add_argument("--contact", default="", help="contact for the openness record")
    p.add_argument("--force", action="store_true",
                   help="release even if consistency checks fail (never when files do not match the seal)")
    p.add_argument("--lineage", action="store_true",
                   help="audit the lineage graph first and sign the list of ancestor root digests with the bundle "
                        f"({formats.RELEASE_LINEAGE}; docs/lineage.md)")
    p.add_argument("--store", action="append", default=None, metavar="DIR",
                   help="with --lineage: a bundle store holding the ancestors (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_release)

    from provenance.release.export import FORMATS

    p = sub.add_parser(
        "export", help="write one release document (CycloneDX, SPDX 3, EU summary, Croissant, MOT, model card) "
                       "without releasing the bundle",
        description="Reads the bundle, changes nothing; writes the document to -o FILE or stdout (docs/release.md).")
    p.add_argument("bundle", help="a run folder (runs/<run_id>)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="cyclonedx: CycloneDX 1.7 ML-BOM; spdx: SPDX 3.0.1 JSON-LD; eu-summary(-json): EU AI Act "
                        "training-content summary (Markdown or JSON); croissant: a dataset's Croissant 1.1 card; "
                        "mot: Model Openness Tool record; model-card: Hugging Face model card; eval-results: the "
                        "evaluation results as an in-toto statement (unsigned)")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--dataset", default=None, help="croissant: which dataset (default: the training data)")
    p.add_argument("--producer", default="", help="who releases the model")
    p.add_argument("--contact", default="", help="contact of the producer")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("keygen", help="make an EC P-256 release key pair (private key mode 0600)")
    p.add_argument("-o", "--output", default=DEFAULT_KEY_DIR, metavar="DIR|KEY.pem",
                   help="folder for release-key.pem and release-key.pub.pem, or the private key's own path "
                        f"(a name ending in .pem or .key; the public key goes beside it as NAME.pub.pem) "
                        f"(default: {DEFAULT_KEY_DIR})")
    p.add_argument("--force", action="store_true", help="replace an existing key")
    p.set_defaults(func=cmd_keygen)
