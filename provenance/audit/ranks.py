"""Every rank of a distributed run to its end: the ranks whose records stop early are named.

Each rank writes its own event log (logs/events.rank<R>.jsonl) whose last record is its end event
(completed, failed or interrupted), written after everything else the rank writes; and its own data
order (order/rank<R>.*). A rank killed with its node (SIGKILL: no end event) leaves records that
stop early: this check names it, its node and the last step it recorded, from its own files (the
run's `ranks_without_end`, written by rank 0 at the seal, is compared, never trusted).
"""

from __future__ import annotations

from typing import Any

from provenance import formats
from provenance.audit.results import CheckResult, SkipCheck
from provenance.audit.view import BundleFileError, BundleView, is_int

MAX_RANKS = 65536  # a world size beyond this is not read rank by rank


def _last_order_step(view: BundleView, rank: int) -> int | None:
    """The step of the last whole record of a rank's order (its last 24 bytes are read)."""
    rel = formats.order_paths(rank)[2]
    if not view.has(rel):
        return None
    size = view.size(rel)
    rec = formats.ORDER_STEP_RECORD.size
    whole = size - size % rec
    if whole == 0:
        return None
    with view.open(rel) as f:
        f.seek(whole - rec)
        step, _n, _chain = formats.ORDER_STEP_RECORD.unpack(f.read(rec))
    return int(step)


def _end_event(view: BundleView, rel: str) -> dict[str, Any] | None:
    """The rank's end event when it is its last record, else None."""
    records, _problems = view.jsonl(rel)  # malformed lines are the logs check's to report
    if not records:
        return None
    last = records[-1][1]
    return last if last.get("event") in formats.END_EVENTS else None


def _ranges(ranks: list[int]) -> str:
    return ", ".join(str(r) for r in ranks)


def check_ranks(view: BundleView, out: CheckResult) -> None:
    """every rank's records to its end (ranks killed with their node stop early)"""
    info = view.run_info
    world = info.get("world_size")
    if not is_int(world) or world <= 1:
        raise SkipCheck("one process")
    if world > MAX_RANKS:
        raise BundleFileError(formats.RUN_JSON, f"world_size {world} is beyond {MAX_RANKS}; not read rank by rank")
    status = info.get("status")
    nodes: dict[int, Any] = {}
    dist = info.get("distributed")
    for n in (dist.get("nodes") if isinstance(dist, dict) else None) or []:
        if isinstance(n, dict) and isinstance(n.get("ranks"), list):
            for r in n["ranks"]:
                if is_int(r):
                    nodes[r] = n.get("node_rank")
    ended: dict[int, tuple[str, int | None]] = {}
    stopped: dict[int, int | None] = {}
    for r in range(world):
        rel = formats.rank_log(formats.EVENTS, r)
        end = _end_event(view, rel) if view.has(rel) else None
        step = _last_order_step(view, r)
        if end is not None:
            ended[r] = (str(end["event"]), step)
        else:
            stopped[r] = step
    last = max((s for _, s in ended.values() if s is not None), default=None)
    for r, step in stopped.items():
        rel = formats.rank_log(formats.EVENTS, r)
        node = f" (node {nodes[r]})" if r in nodes else ""
        where = f"step {step}" if step is not None else "no step"
        rest = f"; the ranks that ended recorded up to step {last}" if last is not None else ""
        msg = (f"rank {r}{node} stopped early: its records end at {where} with no end event (killed, or its "
               f"node was lost){rest}")
        if status == "completed":
            out.error(msg, file=rel)
        else:
            out.warn(msg, file=rel)
    claimed = info.get("ranks_without_end")
    if isinstance(claimed, list) and sorted(r for r in claimed if is_int(r)) != sorted(stopped) \
            and status != "running":
        out.warn(f"{formats.RUN_JSON} names ranks {claimed} without an end event; their logs show "
                 f"{sorted(stopped) or 'none'}", file=formats.RUN_JSON)
    parts = []
    by_end: dict[str, list[int]] = {}
    for r, (ev, _s) in sorted(ended.items()):
        by_end.setdefault(ev, []).append(r)
    for ev, rs in by_end.items():
        steps = sorted({ended[r][1] for r in rs if ended[r][1] is not None})
        parts.append(f"ranks {_ranges(rs)} ended {ev}" + (f" (last step {steps[-1]})" if steps else ""))
    if stopped:
        steps = sorted({s for s in stopped.values() if s is not None})
        parts.append(f"ranks {_ranges(sorted(stopped))} stopped early" + (f" at step {steps[0]}" if len(steps) == 1
                                                                          else ""))
    out.summary = f"{world} ranks: " + "; ".join(parts)
