"""The lineage graph of a bundle: its ancestors back to the roots, found in a store by root digest.

Every read is bounded; a lineage.json that its bundle's seal does not cover (or whose bytes
do not match the seal) is not followed and is reported as a problem naming the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance import formats, reader, records, untrusted
from provenance.hashing import sha256_bytes
from provenance.store import Store, StoredBundle, read_bundle

MAX_LINEAGE_BYTES = 4 << 20
MAX_NOTES_BYTES = 4 << 20
MAX_NODES = 10_000


@dataclass
class Problem:
    kind: str  # missing-ancestor | cycle | bad-lineage | broken-edge | ancestor-audit | conflict
    message: str
    edge: dict[str, Any] | None = None
    node: str | None = None  # root hex of the bundle the problem is in

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "edge": self.edge,
                "node": formats.digest_str(self.node) if self.node else None}


@dataclass
class Node:
    bundle: StoredBundle
    edges: list[dict[str, Any]] = field(default_factory=list)  # to its parents (and parentless inputs)
    notes: list[dict[str, Any]] = field(default_factory=list)
    depth: int = 0  # longest path from the target
    has_lineage: bool = False

    @property
    def root(self) -> str:
        return self.bundle.root

    def label(self) -> str:
        return f"{self.bundle.name} ({self.bundle.run_id})"


@dataclass
class Graph:
    target: str  # root hex
    nodes: dict[str, Node]
    problems: list[Problem]
    resealed: dict[str, str] = field(default_factory=dict)  # root hex an edge names -> the bundle's root now

    def node_of(self, parent: str) -> Node | None:
        """The node an edge's parent digest ('sha256:<hex>') is, following re-seals."""
        hexd = parent.split(":", 1)[-1]
        return self.nodes.get(self.resealed.get(hexd, hexd))

    def order(self) -> list[Node]:
        """Nodes by depth (the target first), then by start time and digest."""
        def key(n: Node) -> tuple[Any, ...]:
            s = n.bundle.run.get("started_at")
            return (n.depth, s if isinstance(s, str) else "", n.root)
        return sorted(self.nodes.values(), key=key)

    def parent_edges(self) -> list[tuple[Node, dict[str, Any], Node | None]]:
        """(consumer, edge, parent or None when no store holds it) for every edge with a parent."""
        out = []
        for n in self.order():
            for e in n.edges:
                if e.get("parent"):
                    out.append((n, e, self.node_of(e["parent"])))
        return out

    def roots(self) -> list[Node]:
        return [n for n in self.order() if not any(e.get("parent") for e in n.edges)]

    def notes(self) -> list[tuple[Node, dict[str, Any]]]:
        """Every note of every node, in time order."""
        items = [(n, rec) for n in self.nodes.values() for rec in n.notes]
        return sorted(items, key=lambda t: (str(t[1].get("time", "")), t[0].root))


def read_edges(b: StoredBundle) -> tuple[list[dict[str, Any]], str | None]:
    """A bundle's sealed lineage edges; (edges, problem) — a problem means they are not followed."""
    rel = formats.LINEAGE_JSON
    path = b.path / rel
    sealed = b.resources.get(rel)
    if sealed is None:
        return [], (f"{b.run_id}: {rel} is there but not covered by the seal; not followed"
                    if path.exists() else None)
    with reader.Bundle.of_files(b.path, [rel]) as rb:  # the one reader: bounded, never through a link
        if not rb.has(rel):
            return [], f"{b.run_id}: {rel} is sealed but missing"
        if rb.size(rel) > MAX_LINEAGE_BYTES:
            return [], f"{b.run_id}: {rel} is larger than {MAX_LINEAGE_BYTES} bytes; refused"
        try:
            data = rb.read_bytes(rel, MAX_LINEAGE_BYTES)
        except reader.BundleFileError as exc:
            return [], f"{b.run_id}: {exc}"
    if sha256_bytes(data) != sealed:
        return [], f"{b.run_id}: {rel} does not match its sealed digest (tampered); not followed"
    try:
        return formats.parse_lineage(untrusted.loads(data), f"{b.run_id}: {rel}"), None
    except ValueError as exc:  # UntrustedJSONError (depth, size, numbers, UTF-8) and FormatError
        return [], f"{b.run_id}: {rel}: {exc}" if isinstance(exc, untrusted.UntrustedJSONError) else str(exc)


def _read_notes(b: StoredBundle) -> list[dict[str, Any]]:
    if formats.NOTES not in b.resources:
        return []
    try:  # typed notes through the one reader (bounded, never a link); a line that is not a note is left out
        with reader.Bundle.of_files(b.path, [formats.NOTES], reader.ReadLimits(max_jsonl_bytes=MAX_NOTES_BYTES)) as rb:
            return [records.to_dict(n) for _, n in rb.notes()[0]]
    except (reader.Refused, reader.BundleFileError):
        return []  # the node's own audit names a malformed notes file


def build_graph(bundle: str | Path, store: Store) -> Graph:
    """Walk from a bundle to its roots. StoreError if the bundle itself is not a sealed bundle."""
    target = read_bundle(Path(bundle))
    nodes: dict[str, Node] = {}
    problems: list[Problem] = []
    on_path: list[str] = []
    resealed: dict[str, str] = {}

    def locate(hexd: str) -> StoredBundle | None:
        if hexd == target.root:
            return target
        return store.find(hexd)

    def visit(b: StoredBundle, depth: int) -> None:
        if b.root in on_path:
            return
        node = nodes.get(b.root)
        if node is not None:
            if depth <= node.depth:
                return
            node.depth = depth  # reached by a longer path: push its ancestors further out
        else:
            if len(nodes) >= MAX_NODES:
                problems.append(Problem("bad-lineage", f"more than {MAX_NODES} bundles in the graph; stopped"))
                return
            edges, problem = read_edges(b)
            node = nodes[b.root] = Node(b, edges, _read_notes(b), depth, has_lineage=not problem and bool(
                b.resources.get(formats.LINEAGE_JSON)))
            if problem:
                problems.append(Problem("bad-lineage", problem, node=b.root))
        on_path.append(b.root)
        for e in node.edges:
            parent = e.get("parent")
            if not parent:
                continue
            phex = parent.split(":", 1)[1]
            if phex in on_path:
                cycle = " -> ".join(nodes[r].bundle.run_id for r in on_path[on_path.index(phex):])
                problems.append(Problem("cycle", f"cycle in lineage: {cycle} -> {nodes[phex].bundle.run_id} "
                                        f"({e['kind']} edge from {b.run_id} to {parent})", e, b.root))
                continue
            pb = locate(phex)
            if pb is None:
                if depth == node.depth and not any(p.kind == "missing-ancestor" and p.edge == e for p in problems):
                    problems.append(Problem("missing-ancestor", f"{e['kind']} edge from {b.run_id} "
                                            f"({e['consumed']}): no store holds its parent {parent} "
                                            f"({e.get('parent_run_id') or 'run id unknown'}, {e['parent_path']})",
                                            e, b.root))
                continue
            if pb.root != phex:
                resealed[phex] = pb.root
            if pb.root in on_path:
                cycle = " -> ".join(nodes[r].bundle.run_id for r in on_path[on_path.index(pb.root):])
                problems.append(Problem("cycle", f"cycle in lineage: {cycle} -> {pb.run_id} "
                                        f"({e['kind']} edge from {b.run_id} to {parent})", e, b.root))
                continue
            visit(pb, node.depth + 1)
        on_path.pop()

    visit(target, 0)
    return Graph(target.root, nodes, problems, resealed)
