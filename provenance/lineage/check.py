"""`prov audit --lineage`: audit every ancestor and every edge of a bundle's lineage graph.

Each node is audited by `provenance.audit.audit()` (integrity, consistency, openness: the
same hostile-input rules apply to every ancestor). Each edge is checked on both sides: the
producer's seal lists the file with the edge's digest, and, where the consumer holds a
data manifest for it, the consumer's manifest lists the same digest. The openness of the
whole is what its weakest required link allows (see docs/lineage.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance import audit as audit_pkg
from provenance import formats, reader
from provenance.audit import AuditRefused, AuditReport, audit
from provenance.lineage.graph import Graph, Node, Problem, build_graph
from provenance.store import Store

LINEAGE_AUDIT_SCHEMA = formats.LINEAGE_AUDIT_SCHEMA
MODEL_KINDS = ("init", "resume", "merge")  # edges along which weights flow: their producers' classes count
CLASS_ORDER = ("I", "II", "III")  # most open first
CREDITABLE = {"data_preprocessing_code"}  # components a data/tokenizer ancestor's own bundle satisfies


@dataclass
class NodeAudit:
    node: Node
    report: AuditReport | None = None
    refused: str | None = None
    graph_class: str | None = None  # the node's class with the credit of its data ancestors

    @property
    def ok(self) -> bool:
        r = self.report
        return r is not None and r.integrity.ok and r.consistency_ok

    @property
    def highest_class(self) -> str | None:
        return self.report.openness.highest_class if self.report is not None else None


@dataclass
class LineageReport:
    graph: Graph
    audits: dict[str, NodeAudit]
    problems: list[Problem] = field(default_factory=list)
    graph_class: str | None = None
    class_note: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_status(self) -> int:
        return 0 if self.ok else 1

    def failures(self) -> list[str]:
        return [p.message for p in self.problems]

    def to_dict(self) -> dict[str, Any]:
        from provenance.lineage.render import graph_dict

        return {"schema": LINEAGE_AUDIT_SCHEMA, "ok": self.ok, "verdict": "pass" if self.ok else "fail",
                "graph": graph_dict(self.graph, self), "graph_class": self.graph_class,
                "class_note": self.class_note, "problems": [p.to_dict() for p in self.problems],
                "failures": self.failures()}

    def to_json(self) -> str:
        return formats.dumps_ascii(self.to_dict())


def _rank(cls: str | None) -> int:
    return CLASS_ORDER.index(cls) if cls in CLASS_ORDER else len(CLASS_ORDER)


def _class_with_credit(report: AuditReport, credited: set[str]) -> str | None:
    for cls in CLASS_ORDER:
        if not set(report.openness.class_missing(cls)) - credited:
            return cls
    return None


def _reached_by(graph: Graph, root: str) -> str:
    for consumer, e, parent in graph.parent_edges():
        if parent is not None and parent.root == root:
            return f"{e['kind']} edge from {consumer.bundle.run_id}"
    return "the target"


def audit_lineage(bundle: str | Path, store: Store, *, own: AuditReport | None = None,
                  do_audit: bool = True, workers: int | None = None) -> LineageReport:
    """Build the graph and audit it. StoreError if `bundle` is not a sealed bundle."""
    graph = build_graph(bundle, store)
    problems = list(graph.problems)
    audits: dict[str, NodeAudit] = {}
    for node in graph.order():
        na = audits[node.root] = NodeAudit(node)
        if not do_audit:
            continue
        if node.root == graph.target and own is not None:
            na.report = own
        else:
            try:
                na.report = audit(node.bundle.path, workers=workers)
            except AuditRefused as exc:
                na.refused = str(exc)
        if node.root == graph.target and own is not None:
            continue  # the target's own audit is reported by itself
        who = ("the bundle itself" if node.root == graph.target else
               f"ancestor {node.label()} sha256:{node.root[:12]}… (reached by {_reached_by(graph, node.root)})")
        if na.refused is not None:
            problems.append(Problem("ancestor-audit", f"{who}: refused: {na.refused}", node=node.root))
        elif not na.ok and na.report is not None:
            first = "; ".join(na.report.failures()[:3])
            problems.append(Problem("ancestor-audit", f"{who} fails its audit: {first}", node=node.root))
    for consumer, e, parent in graph.parent_edges():
        if parent is None:
            continue  # a missing ancestor, already a problem
        edge_name = (f"{e['kind']} edge {consumer.bundle.run_id} <- {parent.bundle.run_id}:{e['parent_path']} "
                     f"({e['digest']})")
        sealed = parent.bundle.resources.get(e["parent_path"])
        if sealed is None:
            problems.append(Problem("broken-edge", f"{edge_name}: the parent's seal has no file {e['parent_path']}",
                                    e, consumer.root))
        elif formats.digest_str(sealed) != e["digest"]:
            problems.append(Problem("broken-edge", f"{edge_name}: the parent sealed it as sha256:{sealed}",
                                    e, consumer.root))
        else:
            rep = audits[parent.root].report
            if rep is not None and e["parent_path"] in {d.name for d in (*rep.integrity.changed,
                                                                         *rep.integrity.missing)}:
                problems.append(Problem("broken-edge", f"{edge_name}: the parent's file does not match its seal "
                                        "(changed or missing)", e, consumer.root))
        consumer_side = _consumer_digest(consumer, e)
        if consumer_side is not None and consumer_side != e["digest"]:
            problems.append(Problem("broken-edge", f"{edge_name}: the consumer's data manifest lists "
                                    f"{consumer_side}", e, consumer.root))
    report = LineageReport(graph, audits, problems)
    if do_audit:
        _graph_openness(report)
    return report


def _consumer_digest(node: Node, e: dict[str, Any]) -> str | None:
    """The digest the consumer's own data manifest gives the consumed file (data/<ds>/<path> edges)."""
    consumed = e.get("consumed", "")
    parts = consumed.split("/", 2)
    if len(parts) != 3 or parts[0] != formats.DATA_DIR:
        return None
    rel = formats.data_manifest_path(parts[1])
    try:
        with reader.Bundle.of_files(node.bundle.path, [rel], reader.ReadLimits(max_json_bytes=16 << 20)) as b:
            manifest = b.data_manifest(parts[1])  # typed, through the one reader
    except (reader.Refused, reader.BundleFileError):
        return "sha256:? (data manifest unreadable)"
    for f in manifest.files:
        if f.path == parts[2]:
            return formats.digest_str(f.sha256)
    return "no such file"


def _graph_openness(report: LineageReport) -> None:
    """The class of the whole: the weakest class among the nodes whose weights flow into the target
    (the target and its init/resume/merge ancestors); data and tokenizer ancestors that pass their
    audit and ship a code snapshot satisfy the consumers' 'data preprocessing code'."""
    g = report.graph
    weights = {g.target}
    credit: dict[str, set[str]] = {}
    changed = True
    while changed:
        changed = False
        for consumer, e, parent in g.parent_edges():
            if parent is None or consumer.root not in weights:
                continue
            if e["kind"] in MODEL_KINDS and parent.root not in weights:
                weights.add(parent.root)
                changed = True
            elif e["kind"] in ("data", "tokenizer"):
                na = report.audits[parent.root]
                if na.ok and formats.CODE_SNAPSHOT in parent.bundle.resources:
                    credit.setdefault(consumer.root, set()).update(CREDITABLE)
    worst: str | None = CLASS_ORDER[0]
    weakest = ""
    for root in weights:
        na = report.audits[root]
        cls = _class_with_credit(na.report, credit.get(root, set())) if na.report is not None else None
        na.graph_class = cls
        if _rank(cls) >= _rank(worst):
            worst, weakest = cls, na.node.label()
    report.graph_class = worst
    n_data = sum(1 for n in g.nodes if n not in weights)
    report.class_note = (f"weakest link: {weakest} ({worst or 'no class'}); {len(weights)} bundle(s) whose weights "
                         f"flow into the model, {n_data} data/tokenizer bundle(s)")


def check_lineage_file(view: audit_pkg.BundleView, out: audit_pkg.CheckResult) -> None:
    """The bundle's own lineage.json (one bundle; `prov audit --lineage` follows the edges)."""
    rel = formats.LINEAGE_JSON
    if not view.has(rel):
        raise audit_pkg.SkipCheck("no lineage.json (edges are recorded by runs that know their inputs)")
    try:
        edges = formats.parse_lineage(view.json(rel))
    except formats.FormatError as exc:
        out.error(str(exc), file=rel)
        return
    parents = {e["parent"] for e in edges if e.get("parent")}
    roots = sum(1 for e in edges if not e.get("parent"))
    out.summary = (f"{len(edges)} edges: {len(edges) - roots} to {len(parents)} parent bundle(s), {roots} root "
                   "input(s); follow them with prov audit --lineage")


# listed by the audit through the entry point `lineage` in pyproject.toml (fullyopen.audit_checks)
LINEAGE = audit_pkg.Check("lineage", "lineage edges (lineage.json)", check_lineage_file)
