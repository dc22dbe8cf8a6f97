"""Lineage: a fully open model as a graph of runs, linked by the content digests of what they consumed.

    edges     what a bundle consumed, matched against what stored bundles produced
    observer  LineageCallback: a run records lineage.json before its seal
    graph     the walk from a bundle back to its roots through a store
    check     `prov audit --lineage`: every ancestor and every edge
    render    text, JSON and an HTML page with an SVG picture
    merge     `prov merge`: checkpoint averaging into a new bundle with `merge` edges
"""

from provenance.lineage.check import LineageReport, audit_lineage
from provenance.lineage.edges import Consumed, LineageError, declared_edge, infer_edges
from provenance.lineage.graph import Graph, build_graph


def __getattr__(name: str) -> object:  # LineageCallback imports the run (torch): only when asked for
    if name == "LineageCallback":
        from provenance.lineage.observer import LineageCallback

        return LineageCallback
    raise AttributeError(f"module 'provenance.lineage' has no attribute {name!r}")


__all__ = ["Consumed", "Graph", "LineageCallback", "LineageError", "LineageReport", "audit_lineage", "build_graph",
           "declared_edge", "infer_edges"]
