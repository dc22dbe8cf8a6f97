"""The lineage graph as text, as a dict (JSON) and as a self-contained HTML page with an SVG picture."""

from __future__ import annotations

import html
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


def render_html(g: Graph, report: LineageReport | None = None) -> str:
    """One self-contained page: an SVG of the graph (columns by depth, the target on the right),
    then the nodes, edges and notes as tables. Every string from a bundle is escaped."""
    esc = html.escape
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
    width = 40 + (max_depth + 1) * (bw + gx) - gx
    height = 60 + max(len(ns) for ns in cols.values()) * (bh + gy)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']
    for consumer, e, parent in g.parent_edges():
        if parent is None:
            continue
        (px, py), (cx, cy) = pos[parent.root], pos[consumer.root]
        x1, y1, x2, y2 = px + bw, py + bh / 2, cx, cy + bh / 2
        colour = _KIND_COLOURS.get(e["kind"], "#555")
        label = e["kind"] + (f" w={e['weight']:g}" if e.get("weight") is not None else "")
        svg.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}" stroke-width="1.6" '
                   f'marker-end="url(#arrow)"><title>{esc(e["parent_path"])} {esc(e["digest"])}</title></line>')
        svg.append(f'<text x="{(x1 + x2) / 2}" y="{(y1 + y2) / 2 - 4}" text-anchor="middle" fill="{colour}">'
                   f'{esc(label)}</text>')
    for n in order:
        x, y = pos[n.root]
        na = report.audits.get(n.root) if report is not None else None
        if na is None or (na.report is None and na.refused is None):
            fill = "#f4f4f4"  # not audited
        else:
            fill = "#eef7ee" if na.ok else "#fdecea"
        stroke = "#222" if n.root == g.target else "#888"
        cls = (na.graph_class or na.highest_class or "none") if na is not None and na.report is not None else "?"
        svg.append(f'<rect x="{x}" y="{y}" width="{bw}" height="{bh}" rx="6" fill="{fill}" stroke="{stroke}"/>')
        svg.append(f'<text x="{x + 8}" y="{y + 17}" font-weight="bold">{esc(_printable(n.bundle.name)[:34])}</text>')
        svg.append(f'<text x="{x + 8}" y="{y + 33}">{esc(n.bundle.status)} · class {esc(cls)}</text>')
        svg.append(f'<text x="{x + 8}" y="{y + 49}" font-family="monospace">sha256:{n.root[:16]}…</text>')
    svg.append("</svg>")
    rows = "".join(
        f"<tr><td>{esc(_printable(n.bundle.name))}</td><td><code>{esc(_printable(n.bundle.run_id))}</code></td>"
        f"<td>{esc(n.bundle.status)}</td><td>{esc(_cls(report, n).strip())}</td><td><code>sha256:{n.root}</code>"
        "</td></tr>" for n in order)
    erows = "".join(
        f"<tr><td>{esc(e['kind'])}</td><td>{esc(_printable(c.bundle.run_id))}</td>"
        f"<td>{esc(_printable(p.bundle.run_id)) if p else 'MISSING'}</td><td><code>{esc(_printable(e['parent_path']))}"
        f"</code></td><td><code>{esc(e['digest'])}</code></td><td>{'' if e.get('weight') is None else e['weight']}</td>"
        "</tr>" for c, e, p in g.parent_edges())
    nrows = "".join(f"<tr><td>{esc(str(r.get('time', '')))}</td><td>{esc(_printable(n.bundle.run_id))}</td>"
                    f"<td>{esc(str(r.get('category')))}</td><td>{esc(str(r.get('about') or ''))}</td>"
                    f"<td>{esc(str(r.get('text')))}</td></tr>" for n, r in g.notes())
    problems = report.problems if report is not None else g.problems
    prow = "".join(f"<li>{esc(p.kind)}: {esc(_printable(p.message))}</li>" for p in problems)
    verdict = ("FAIL" if problems else "PASS") if report is not None else "not audited"
    gclass = f"; class of the whole: {esc(report.graph_class or 'none')}" if report is not None else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lineage of {esc(_printable(g.nodes[g.target].label()))}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:3px 6px;font-size:12px;text-align:left}}code{{font-size:11px}}</style></head><body>
<h1>Lineage of {esc(_printable(g.nodes[g.target].label()))}</h1>
<p>root digest <code>sha256:{g.target}</code> — {len(g.nodes)} bundles, {len(g.parent_edges())} edges —
verdict <b>{verdict}</b>{gclass}</p>
{''.join(svg)}
<h2>Bundles</h2><table><tr><th>name</th><th>run id</th><th>status</th><th>audit</th><th>root digest</th></tr>{rows}
</table>
<h2>Edges</h2><table><tr><th>kind</th><th>consumer</th><th>parent</th><th>parent file</th><th>digest</th>
<th>weight</th></tr>{erows}</table>
<h2>Notes</h2><table><tr><th>time</th><th>bundle</th><th>category</th><th>about</th><th>text</th></tr>{nrows}</table>
<h2>Problems</h2><ul>{prow or '<li>none</li>'}</ul>
</body></html>
"""
