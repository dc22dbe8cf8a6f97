"""The lineage graph as text, as a dict (JSON) and as a self-contained HTML page with an SVG picture."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provenance import formats
from provenance.lineage.graph import Graph, Node

if TYPE_CHECKING:
    from provenance.lineage.check import LineageReport


def _printable(text: str) -> str:
    """Names from a (possibly hostile) bundle: control characters escaped, encodable as UTF-8."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return out.encode("utf-8", "backslashreplace").decode("utf-8")


def _node_facts(n: Node, report: LineageReport | None) -> dict[str, Any]:
    facts: dict[str, Any] = {"root_digest": formats.digest_str(n.root), "run_id": n.bundle.run_id,
                             "name": n.bundle.name, "status": n.bundle.status, "path": str(n.bundle.path),
                             "depth": n.depth, "lineage_recorded": n.has_lineage}
    if report is not None and n.root in report.audits:
        na = report.audits[n.root]
        facts.update({"audit": "refused" if na.refused else ("pass" if na.ok else "fail")
                      if na.report is not None else "not run",
                      "class": na.highest_class, "graph_class": na.graph_class})
    return facts


def graph_dict(g: Graph, report: LineageReport | None = None) -> dict[str, Any]:
    return {
        "target": formats.digest_str(g.target),
        "nodes": [_node_facts(n, report) for n in g.order()],
        "edges": [{**e, "consumer": formats.digest_str(n.root)} for n in g.order() for e in n.edges],
        "notes": [{**rec, "bundle": formats.digest_str(n.root)} for n, rec in g.notes()],
        "problems": [p.to_dict() for p in (report.problems if report is not None else g.problems)],
    }


def _cls(report: LineageReport | None, n: Node) -> str:
    if report is None or n.root not in report.audits:
        return ""
    na = report.audits[n.root]
    if na.refused:
        return "  audit REFUSED"
    if na.report is None:
        return ""
    cls = na.graph_class or na.highest_class
    return f"  audit {'PASS' if na.ok else 'FAIL'}  class {cls or 'none'}"


def _short(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def render_text(g: Graph, report: LineageReport | None = None) -> str:
    lines: list[str] = []
    add = lines.append
    names = {n.root: n.bundle.run_id for n in g.nodes.values()}
    t = g.nodes[g.target]
    add(f"lineage of {_printable(t.label())}  sha256:{g.target}")
    add(f"  {len(g.nodes)} bundles, {len(g.parent_edges())} edges, roots: "
        + ", ".join(_printable(n.bundle.run_id) for n in g.roots()))
    add("")
    seen: set[str] = set()

    def tree(n: Node, prefix: str, via: str) -> None:
        head = (f"{via}{_printable(n.label())}  {n.bundle.status}{_cls(report, n)}  sha256:{n.root[:16]}…")
        if n.root in seen:
            add(prefix + head + "  (shown above)")
            return
        seen.add(n.root)
        add(prefix + head)
        kids = [e for e in n.edges if e.get("parent")]
        inputs = [e for e in n.edges if not e.get("parent")]
        child_prefix = prefix.replace("├─ ", "│  ").replace("└─ ", "   ")
        by_parent: dict[str, list[dict[str, Any]]] = {}
        for e in kids:
            by_parent.setdefault(e["parent"], []).append(e)
        items = list(by_parent.items())
        if inputs:
            kinds = sorted({e["kind"] for e in inputs})
            add(child_prefix + ("├─ " if items else "└─ ") + f"{len(inputs)} input file(s) ({', '.join(kinds)}) "
                "made by no stored bundle (a root: raw, generated or from-scratch)")
        for i, (parent, es) in enumerate(items):
            last = i == len(items) - 1
            labels = _edge_labels(es)
            pn = g.node_of(parent)
            branch = child_prefix + ("└─ " if last else "├─ ")
            if pn is None:
                add(branch + f"[{labels}] <- MISSING {parent} ({_printable(str(es[0].get('parent_run_id')))})")
            else:
                tree(pn, branch, f"[{labels}] <- ")

    tree(t, "", "")
    notes = g.notes()
    if notes:
        add("")
        add("NOTES (in time order)")
        overrides: dict[str, int] = {}
        for n, rec in notes:  # the automatic one-per-key override notes: counted, not listed
            if rec.get("category") == "override":
                overrides[n.bundle.run_id] = overrides.get(n.bundle.run_id, 0) + 1
        for rid, count in overrides.items():
            add(f"  {_printable(rid)}: {count} config override notes (prov lineage --json lists them)")
        for n, rec in notes:
            if rec.get("category") == "override":
                continue
            about = rec.get("about")
            target = ""
            if isinstance(about, str):
                hexd = about.split(":", 1)[-1]
                hit = next((r for r in names if r.startswith(hexd)), None)
                target = f"  about {names[hit] if hit else about}"
            add(f"  {str(rec.get('time', ''))[:19]}  {_printable(n.bundle.run_id)}  [{rec.get('category')}]"
                f"{_printable(target)}  {_printable(_short(str(rec.get('text'))))}")
    problems = report.problems if report is not None else g.problems
    if report is not None and any(na.report is not None for na in report.audits.values()):
        add("")
        add(f"OPENNESS OF THE GRAPH  class {report.graph_class or 'none'}  ({report.class_note})")
    add("")
    if problems:
        add(f"PROBLEMS ({len(problems)})")
        for p in problems:
            add(f"  x {p.kind}: {_printable(p.message)}")
    add("VERDICT      " + ("PASS  every ancestor and edge checks" if report is not None and not problems
                           else ("FAIL" if problems else "graph read (not audited)")))
    return "\n".join(lines) + "\n"


def _edge_labels(es: list[dict[str, Any]]) -> str:
    """'init checkpoints/step-00000012.safetensors sha256:d493ee23e919…'; several files of one kind from
    one folder: 'data x3 outputs/corpus/ (arithmetic_eval.jsonl, train.jsonl, validation.jsonl)'."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for e in es:
        by_kind.setdefault(e["kind"], []).append(e)
    parts = []
    for kind, group in by_kind.items():
        if len(group) == 1:
            e = group[0]
            w = f" w={e['weight']:g}" if e.get("weight") is not None else ""
            parts.append(f"{kind}{w} {_printable(e['parent_path'])} {e['digest'][:19]}…")
            continue
        paths = [str(e["parent_path"]) for e in group]
        folder = paths[0].rpartition("/")[0]
        if all(p.rpartition("/")[0] == folder for p in paths):
            names = ", ".join(sorted(p.rpartition("/")[2] for p in paths))
            parts.append(f"{kind} x{len(group)} {_printable(folder)}/ ({_printable(names)})")
        else:
            parts.append(f"{kind} x{len(group)} " + ", ".join(_printable(p) for p in sorted(paths)))
    return "; ".join(parts)


_KIND_COLOURS = {"data": "#2a7ab0", "tokenizer": "#7a4cb0", "init": "#c0392b", "resume": "#d35400",
                 "merge": "#27ae60", "eval": "#7f8c8d"}


@functools.cache
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True)


def render_html(g: Graph, report: LineageReport | None = None) -> str:
    """One self-contained page (templates/lineage.html.j2, Jinja2 with autoescape): an SVG of the graph
    (columns by depth, the target on the right), then the nodes, edges and notes as tables. Every string
    from a bundle reaches the page through the template's escaping; this function only lays out."""
    order = g.order()
    max_depth = max((n.depth for n in order), default=0)
    cols: dict[int, list[Node]] = {}
    for n in order:
        cols.setdefault(n.depth, []).append(n)
    bw, bh, gx, gy = 200, 62, 70, 30
    pos: dict[str, tuple[int, int]] = {}
    for d, ns in cols.items():
        for i, n in enumerate(ns):
            pos[n.root] = (20 + (max_depth - d) * (bw + gx), 30 + i * (bh + gy))
    lines = []
    for consumer, e, parent in g.parent_edges():
        if parent is None:
            continue
        (px, py), (cx, cy) = pos[parent.root], pos[consumer.root]
        x1, y1, x2, y2 = px + bw, py + bh / 2, cx, cy + bh / 2
        lines.append({"x1": x1, "y1": y1, "x2": x2, "y2": y2, "tx": (x1 + x2) / 2, "ty": (y1 + y2) / 2 - 4,
                      "colour": _KIND_COLOURS.get(e["kind"], "#555"), "title": f"{e['parent_path']} {e['digest']}",
                      "label": e["kind"] + (f" w={e['weight']:g}" if e.get("weight") is not None else "")})
    boxes = []
    for n in order:
        na = report.audits.get(n.root) if report is not None else None
        if na is None or (na.report is None and na.refused is None):
            fill = "#f4f4f4"  # not audited
        else:
            fill = "#eef7ee" if na.ok else "#fdecea"
        x, y = pos[n.root]
        boxes.append({"x": x, "y": y, "fill": fill, "stroke": "#222" if n.root == g.target else "#888",
                      "name": _printable(n.bundle.name)[:34], "status": n.bundle.status, "short": n.root[:16],
                      "cls": (na.graph_class or na.highest_class or "none") if na is not None
                      and na.report is not None else "?"})
    problems = report.problems if report is not None else g.problems
    return str(_environment().get_template("lineage.html.j2").render(
        title=_printable(g.nodes[g.target].label()), target=g.target, n_bundles=len(g.nodes),
        n_edges=len(g.parent_edges()),
        verdict=("FAIL" if problems else "PASS") if report is not None else "not audited",
        graph_class=(report.graph_class or "none") if report is not None else None,
        width=40 + (max_depth + 1) * (bw + gx) - gx, height=60 + max(len(ns) for ns in cols.values()) * (bh + gy),
        bw=bw, bh=bh, lines=lines, boxes=boxes,
        nodes=[{"name": _printable(n.bundle.name), "run_id": _printable(n.bundle.run_id), "status": n.bundle.status,
                "audit": _cls(report, n).strip(), "root": n.root} for n in order],
        edges=[{"kind": e["kind"], "consumer": _printable(c.bundle.run_id),
                "parent": _printable(p.bundle.run_id) if p else "MISSING", "path": _printable(e["parent_path"]),
                "digest": e["digest"], "weight": "" if e.get("weight") is None else e["weight"]}
               for c, e, p in g.parent_edges()],
        notes=[{"time": str(r.get("time", "")), "bundle": _printable(n.bundle.run_id),
                "category": str(r.get("category")), "about": str(r.get("about") or ""), "text": str(r.get("text"))}
               for n, r in g.notes()],
        problems=[{"kind": p.kind, "message": _printable(p.message)} for p in problems]))
