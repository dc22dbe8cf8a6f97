"""`prov data manifest|resolve`, `prov prove`, `prov verify-proof`: data at scale and membership proofs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _error(exc: BaseException) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def cmd_manifest(args: argparse.Namespace) -> int:
    from provenance import formats
    from provenance.capture.data import DataMismatch, declare_layout, manifest_text
    from provenance.datasets.hashcache import HashCache, default_cache
    from provenance.datasets.scan import Stats
    from provenance.integrations.sources import local_dataset

    try:
        spec = local_dataset(args.path, name=args.name)
        if ":" in args.layout:  # the full declaration, as prov run --data-layout takes it
            declare_layout(spec, args.layout)
        elif args.layout not in ("lines", "documents", "token-stream"):
            raise ValueError(f"--layout: unknown layout {args.layout!r} (lines, documents, token-stream[:...])")
        elif args.layout == "token-stream":
            spec.layout = {"type": "token-stream", "dtype": args.dtype, "window": args.window,
                           "sample": args.sample, "chunk": args.chunk}
        elif args.layout == "documents":
            spec.layout = {"type": "documents"}
        if args.leaf:
            spec.leaf_schemes = {f: args.leaf for f in spec.files}
        stats = Stats()
        cache: HashCache | None = None if args.no_cache else default_cache()
        text = manifest_text(spec, cache=cache, stats=stats, algorithm=args.algorithm)  # cached text: not parsed
        if cache is not None:
            cache.close()
    except (FileNotFoundError, DataMismatch, ValueError, OSError) as exc:
        return _error(exc)
    if args.output:
        formats.atomic_write_bytes(args.output, text.encode())
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    print(stats.line(), file=sys.stderr)
    return 0


def cmd_prove(args: argparse.Namespace) -> int:
    from provenance import formats
    from provenance.datasets.proofs import ProofError, prove

    try:
        proof = prove(Path(args.bundle), text=args.text, file=Path(args.file) if args.file else None,
                      sample=args.sample, dataset=args.dataset)
    except (ProofError, OSError, formats.FormatError, ValueError) as exc:
        return _error(exc)
    out = Path(args.output) if args.output else None
    data = formats.dumps(proof).encode()
    if out is None:
        sys.stdout.write(data.decode())
    else:
        formats.atomic_write_bytes(out, data)
    from provenance.datasets.proofs import summary

    # the proof itself on stdout, else (-o FILE) what it proves: stderr only when stdout holds the proof
    print(summary(proof) + (f"\nproof: {out} ({len(data)} bytes)" if out else ""),
          file=sys.stdout if out else sys.stderr)
    return 0


def cmd_verify_proof(args: argparse.Namespace) -> int:
    from provenance import formats
    from provenance.datasets.proofs import ProofError, summary, tokens_checked, verify_proof

    try:
        proof = formats.read_json(args.proof)
        verify_proof(proof, root=args.root, bundle=Path(args.bundle) if args.bundle else None)
    except (OSError, formats.FormatError) as exc:
        return _error(exc)
    except ProofError as exc:
        print(f"proof REJECTED: {exc}", file=sys.stderr)
        return 1
    print(f"proof verified: {summary(proof)}{tokens_checked(proof, Path(args.bundle) if args.bundle else None)}")
    if not args.root and not args.bundle:
        print(f"(it chains to root digest {proof['bundle']['root_digest']}: compare it with the published one, "
              f"or pass --root)")
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    from provenance import formats
    from provenance.datasets.layouts import LayoutError, resolve_step

    try:
        rows = resolve_step(Path(args.bundle), args.step, rank=args.rank, data_root=args.data_root)
    except (LayoutError, OSError, formats.FormatError, ValueError) as exc:
        return _error(exc)
    try:
        for r in rows:
            sys.stdout.write(formats.dumps_line(r) if args.json else _row_text(r))
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _row_text(r: dict[str, object]) -> str:
    head = (f"rank {r['rank']} step {r['step']} #{r['position']} sample {r['sample']}: {r['file']} {r['range']} "
            f"{r['digest']}")
    text = r.get("text")
    return head + ("\n    " + str(text).replace("\n", "\n    ") if text is not None else "") + "\n"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data manifests (with the hash cache) and what a step's sample ids are",
                       description="manifest: the data manifest of a file or folder (the schema a run records), "
                                   "with Merkle roots; unchanged files come from the hash cache. resolve: for each "
                                   "sample of a step, the shard, the byte or token range, its digest and its text.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    m = dsub.add_parser("manifest", help="write the manifest of a file or folder")
    m.add_argument("path")
    m.add_argument("-o", "--output", default=None, help="write here (atomically) instead of stdout")
    m.add_argument("--name", default=None, help="dataset name (default: the folder's name)")
    m.add_argument("--layout", default="lines", metavar="LAYOUT",
                   help="what a sample id means: lines (default: the line number of the single line file), "
                        "documents, token-stream (with --dtype/--window/--sample/--chunk), or a full declaration "
                        "as prov run --data-layout takes it: token-stream:uint16:1024, documents:column=body")
    m.add_argument("--dtype", default="uint16", choices=("uint16", "uint32"), help="token-stream: token width")
    m.add_argument("--window", type=int, default=1024, help="token-stream: tokens a sample")
    m.add_argument("--sample", default="window", choices=("window", "offset"),
                   help="token-stream: a sample id is a window index or a token offset")
    m.add_argument("--chunk", type=int, default=4096, help="token-stream: tokens a Merkle leaf")
    m.add_argument("--leaf", default=None,
                   help="leaf scheme of every file (default by suffix: lines, records:jsonl.gz, blocks:1048576; "
                        "tokens:uint16:4096 for a token stream)")
    m.add_argument("--algorithm", default="sha256", choices=("sha256", "blake3"),
                   help="hash of the Merkle trees (the whole-file digest is always sha256)")
    m.add_argument("--no-cache", action="store_true", help="hash every byte; neither read nor write the cache")
    m.set_defaults(func=cmd_manifest)
    r = dsub.add_parser("resolve", help="what each sample of a step is: shard, range, digest, text")
    r.add_argument("bundle")
    r.add_argument("step", type=int)
    r.add_argument("--rank", type=int, default=None, help="only this rank (default: every rank)")
    r.add_argument("--data-root", default=None, help="where the dataset's files are, when not in the bundle")
    r.add_argument("--json", action="store_true", help="one JSON object a sample")
    r.set_defaults(func=cmd_resolve)

    p = sub.add_parser("prove", help="a self-contained proof that a text, document or sample was trained on",
                       description="Write a proof (JSON, schema fullyopen.data-proof/v1): the record, its Merkle "
                                   "path to the dataset root, the dataset manifest's place in the bundle's seal "
                                   "(so it chains to the root digest) and every step and rank at which it was "
                                   "trained. A document that is absent gets a non-membership proof.")
    p.add_argument("bundle")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", default=None,
                   help="a text: the record whose text is (or contains) it; in a token stream made by a recorded "
                        "tokenization step, the places of its tokens (encoded with the recorded tokenizer)")
    g.add_argument("--file", default=None, help="a document: its exact bytes as one record (or prove absence)")
    g.add_argument("--sample", type=int, default=None, help="a sample id of the data order")
    p.add_argument("--dataset", default=None, help="which dataset (default: the one the data order indexes)")
    p.add_argument("-o", "--output", default=None, help="write the proof here (default: stdout)")
    p.set_defaults(func=cmd_prove)

    p = sub.add_parser("verify-proof", help="check a proof offline",
                       description="Check a proof from prov prove with nothing but the proof file; --root also "
                                   "requires that it chains to this root digest, --bundle to that bundle's seal. "
                                   "Exit status 0 when it holds, 1 when it does not, 2 when it cannot be read.")
    p.add_argument("proof")
    p.add_argument("--root", default=None, help="the root digest the proof must chain to (sha256:...)")
    p.add_argument("--bundle", default=None, help="a bundle whose seal the proof must chain to")
    p.set_defaults(func=cmd_verify_proof)
