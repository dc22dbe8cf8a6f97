"""`prov lineage`, `prov store` and `prov merge`: a model as a graph of runs (docs/lineage.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from provenance import formats
from provenance.audit import AuditReport
from provenance.bundle import BundleError, write_lineage
from provenance.lineage.check import audit_lineage
from provenance.lineage.edges import LineageError, declared_edge
from provenance.lineage.graph import read_edges
from provenance.lineage.render import render_html, render_text
from provenance.recover import change_sealed
from provenance.store import Store, StoreError, add, read_bundle


def _store(args: argparse.Namespace, near: str | None) -> Store:
    return Store.default(args.store or [], near=Path(near) if near else None)


def cmd_lineage(args: argparse.Namespace) -> int:
    try:
        store = _store(args, args.bundle)
        report = audit_lineage(args.bundle, store, do_audit=not args.no_audit, workers=args.workers)
    except (StoreError, LineageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.html:
        formats.atomic_write_bytes(args.html, render_html(report.graph, report).encode())
    if args.json:
        sys.stdout.write(report.to_json())
    else:
        sys.stdout.write(render_text(report.graph, report))
        if args.html:
            print(f"wrote {args.html}")
    return report.exit_status if not args.no_audit else (1 if report.problems else 0)


def audit_graph(args: argparse.Namespace, own: AuditReport) -> int:
    """`prov audit --lineage`: the bundle's own audit, then its graph's (exit 1 if either fails)."""

    try:
        report = audit_lineage(args.bundle, _store(args, args.bundle), own=own, workers=args.workers)
    except (StoreError, LineageError) as exc:
        print(f"error: --lineage: {exc}", file=sys.stderr)
        return 2
    if args.json:
        doc = own.to_dict()
        doc["lineage"] = report.to_dict()
        doc["ok"] = doc["ok"] and report.ok
        doc["verdict"] = "pass" if doc["ok"] else "fail"
        doc["failures"] = [*doc["failures"], *(f"lineage: {f}" for f in report.failures())]
        sys.stdout.write(formats.dumps_ascii(doc))
    else:
        sys.stdout.write(own.to_text())
        sys.stdout.write("\nLINEAGE\n" + render_text(report.graph, report))
    return 0 if own.ok and report.ok else 1


def attach_lineage(args: argparse.Namespace) -> int:
    """`prov release --lineage`: the graph must audit; its ancestors' root digests (and the picture) are
    written into the bundle, which is re-sealed (recorded in reseals.jsonl) so that the release signs them."""
    try:
        report = audit_lineage(args.run, _store(args, args.run))
    except (StoreError, LineageError) as exc:
        print(f"error: --lineage: {exc}", file=sys.stderr)
        return 2
    if not report.ok:
        print("error: --lineage: the lineage graph does not audit; not releasing:\n  "
              + "\n  ".join(report.failures()[:20]), file=sys.stderr)
        return 1
    g = report.graph
    doc = {"schema": formats.RELEASE_LINEAGE_SCHEMA, "bundle": formats.digest_str(g.target),
           "graph_class": report.graph_class, "class_note": report.class_note,
           "ancestors": [{"root_digest": formats.digest_str(n.root), "run_id": n.bundle.run_id, "name": n.bundle.name,
                          "status": n.bundle.status, "class": report.audits[n.root].highest_class}
                         for n in g.order() if n.root != g.target],
           "edges": [{**e, "consumer": formats.digest_str(c.root)} for c, e, _ in g.parent_edges()]}
    root = Path(args.run)

    def write() -> None:
        formats.atomic_write_json(root / formats.RELEASE_LINEAGE, doc)
        formats.atomic_write_bytes(root / formats.RELEASE_LINEAGE_HTML, render_html(g, report).encode())

    try:
        change_sealed(root, write, "prov release --lineage: the ancestors' root digests", "prov release --lineage")
    except (BundleError, StoreError, OSError) as exc:
        print(f"error: --lineage: {exc}", file=sys.stderr)
        return 2
    print(f"lineage: {len(doc['ancestors'])} ancestors audited; their root digests are in {formats.RELEASE_LINEAGE}")
    return 0


def cmd_declare(args: argparse.Namespace) -> int:
    """Add a declared edge to a sealed bundle's lineage.json and reseal it (like a note)."""
    try:
        b = read_bundle(Path(args.bundle))
        store = _store(args, args.bundle)
        edge = declared_edge(args.kind, args.parent, args.path, store, digest=args.digest,
                             consumed=args.consumed, weight=args.weight)
        if edge["parent"] == b.digest:
            raise LineageError(f"declared {args.kind} edge: a bundle cannot be its own parent")
        edges, problem = read_edges(b)
        if problem:
            raise LineageError(problem)
    except (StoreError, LineageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        digest = change_sealed(b.path, lambda: write_lineage(b.path, [*edges, edge]),
            f"prov declare-edge: a declared {edge['kind']} edge", "prov declare-edge")
    except (BundleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"declared {edge['kind']} edge {b.run_id} <- {edge['parent']} {edge['parent_path']} ({edge['digest']}); "
          f"resealed, root digest sha256:{digest}")
    if (b.path / formats.SIGNATURE).exists():
        print("warning: this bundle was signed; the signature no longer verifies: run `prov release` again",
              file=sys.stderr)
    return 0


def cmd_store_add(args: argparse.Namespace) -> int:
    from provenance.audit import AuditRefused, audit

    rc = 0
    for bundle in args.bundles:
        try:
            if not args.no_audit:
                rep = audit(bundle)
                if not rep.integrity.ok:
                    raise StoreError(f"{bundle}: fails its integrity check ({'; '.join(rep.failures()[:2])}); "
                                     "not added")
            entry, copied = add(args.store, bundle)
        except (StoreError, AuditRefused, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            rc = 2
            continue
        print(f"{'added' if copied else 'already in the store'}: {entry.path}  sha256:{entry.root}")
    return rc


def cmd_store_ls(args: argparse.Namespace) -> int:
    try:
        store = Store([args.store])
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for b in sorted(store.bundles, key=lambda b: (str(b.run.get("started_at") or ""), b.root)):
        lin = "lineage" if formats.LINEAGE_JSON in b.resources else "-"
        print(f"sha256:{b.root}  {b.status:<11}  {lin:<7}  {b.name:<20}  {b.path.name}")
    for s in store.skipped:
        print(f"skipped: {s}", file=sys.stderr)
    return 0


def cmd_store_find(args: argparse.Namespace) -> int:
    try:
        store = Store([args.store])
        b = store.find(args.digest)
        if b is None:
            hexd = args.digest.removeprefix("sha256:")
            hits = store.producers(hexd) if len(hexd) == 64 else []
            if not hits:
                print(f"error: no bundle in {args.store} has root digest {args.digest} or produced a file with it",
                      file=sys.stderr)
                return 1
            for hb, path in hits:
                print(f"file {path} of {hb.path}  (bundle sha256:{hb.root})")
            return 0
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{b.path}  sha256:{b.root}  {b.name}  {b.status}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from provenance.lineage.merge import MergeError, merge

    inputs, runs_dir = [], args.runs_dir
    for item in args.inputs:  # `key=value` overrides, as `prov reproduce` passes them (run.runs_dir only)
        key, eq, value = item.partition("=")
        if eq and not Path(item).exists() and "/" not in key:
            if key != "run.runs_dir":
                print(f"error: {key}: prov merge takes only the override run.runs_dir=DIR", file=sys.stderr)
                return 2
            runs_dir = value
        else:
            inputs.append(item)
    args.inputs, args.runs_dir = inputs, runs_dir
    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
        notes = [(args.note, args.note_category, args.note_about)] if args.note else []
        root = merge(args.inputs, weights=weights, runs_dir=args.runs_dir, name=args.name, stores=args.store or [],
                     threads=args.threads, notes=notes)
    except (MergeError, LineageError, StoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"merged {len(args.inputs)} checkpoints into {root}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lineage", help="the graph of runs behind a bundle, back to its roots (text, JSON, HTML)",
                       description="Exit status: 0 when every ancestor audits and every edge checks, 1 when not, "
                                   "2 when the bundle is not a sealed bundle.")
    p.add_argument("bundle", help="a sealed run folder")
    p.add_argument("--store", action="append", default=None, metavar="DIR",
                   help="a bundle store to find ancestors in (repeatable; also $PROV_STORE and the bundle's own "
                        "folder)")
    p.add_argument("--html", default=None, metavar="FILE", help="also write the graph as an HTML page with an SVG")
    p.add_argument("--json", action="store_true", help="print the graph and its audit as JSON")
    p.add_argument("--no-audit", action="store_true", help="only read the graph (no hashing of the ancestors)")
    p.add_argument("--workers", type=int, default=None, help="hashing threads per audit")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("declare-edge", help="declare a lineage edge of a sealed bundle by hand and reseal it")
    p.add_argument("bundle")
    p.add_argument("--kind", required=True, choices=formats.EDGE_KINDS)
    p.add_argument("--parent", required=True, metavar="DIGEST", help="the parent bundle's root digest")
    p.add_argument("--path", required=True, help="the file in the parent bundle, e.g. model/model.safetensors")
    p.add_argument("--digest", default=None, help="the file's sha256 (required when no store holds the parent)")
    p.add_argument("--consumed", default=None, help="what consumed it (a path or config key)")
    p.add_argument("--weight", type=float, default=None)
    p.add_argument("--store", action="append", default=None, metavar="DIR")
    p.set_defaults(func=cmd_declare)

    p = sub.add_parser("store", help="a folder of bundles indexed by root digest: add, ls, find")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION")
    ssub.required = True
    a = ssub.add_parser("add", help="copy sealed bundles into the store (checked for integrity first)")
    a.add_argument("store")
    a.add_argument("bundles", nargs="+")
    a.add_argument("--no-audit", action="store_true", help="do not check the bundles' integrity first")
    a.set_defaults(func=cmd_store_add)
    a = ssub.add_parser("ls", help="list the store's bundles")
    a.add_argument("store")
    a.set_defaults(func=cmd_store_ls)
    a = ssub.add_parser("find", help="the bundle with a root digest (or a prefix), or the producers of a file digest")
    a.add_argument("store")
    a.add_argument("digest")
    a.set_defaults(func=cmd_store_find)

    p = sub.add_parser("merge", help="average checkpoints (uniform or weighted souping) into a new bundle")
    p.add_argument("inputs", nargs="+", help="checkpoint files (.safetensors) or bundle folders (their model/)")
    p.add_argument("--weights", default=None, help="comma-separated weights (default: uniform); normalised to sum 1")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--name", default="merge")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--store", action="append", default=None, metavar="DIR")
    p.add_argument("--note", default=None, help="a decision note recorded in the merged bundle (why this soup)")
    p.add_argument("--note-category", default="evaluation", choices=formats.NOTE_CATEGORIES)
    p.add_argument("--note-about", default=None, metavar="DIGEST", help="the bundle the note is about")
    p.set_defaults(func=cmd_merge)
