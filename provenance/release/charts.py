"""SVG charts of the release report: line charts (axes, ticks, grid, legend, vertical markers,
data for the hover script) and the run's timeline (evaluations, checkpoints, decision notes).

Everything is drawn here in Python as inline SVG; every text is escaped here, and each chart is returned as
`markupsafe.Markup`, so that the report's template (autoescaped) inserts it as it is.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from provenance import formats
from provenance.release.facts import Facts

PALETTE = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989")
NOTE_COLORS = {"hyperparameter": "#8250df", "data": "#1a7f37", "restart": "#d1242f", "incident": "#d1242f",
               "evaluation": "#1f6feb", "release": "#9a6700", "code": "#57606a", "other": "#57606a"}


def _esc(v: Any) -> str:
    return html.escape("—" if v is None else str(v), quote=True)


def fmt(v: Any, digits: int = 6) -> str:
    """A value as plain (unescaped) text: floats to `digits` significant digits, ints with thousands
    separators, None as a dash. The report's template escapes it; the charts below escape it themselves."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.{digits}g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    color: str = PALETTE[0]
    dash: str | None = None
    dots: bool = False


@dataclass
class Marker:
    x: float
    label: str
    color: str = "#57606a"


@dataclass
class Chart:
    id: str
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    markers: list[Marker] = field(default_factory=list)
    log_y: bool = False
    width: int = 760
    height: int = 300


def finite(points: Sequence[tuple[Any, Any]], log: bool = False) -> list[tuple[float, float]]:
    out = []
    for x, y in points:
        if isinstance(x, int | float) and isinstance(y, int | float) and not isinstance(y, bool):
            fx, fy = float(x), float(y)
            if math.isfinite(fx) and math.isfinite(fy) and (fy > 0 or not log):
                out.append((fx, fy))
    return out


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.6g}"


def render_chart(c: Chart) -> Markup:
    """An SVG line chart (axes, ticks, grid, legend, vertical markers) with data for the hover script."""
    ml, mr, mt, mb = 64, 16, 30, 44
    w, h = c.width, c.height
    pw, ph = w - ml - mr, h - mt - mb
    series = [Series(s.name, finite(s.points, c.log_y), s.color, s.dash, s.dots) for s in c.series]
    series = [s for s in series if s.points]
    parts = [f'<svg id="{_esc(c.id)}" class="chart" role="img" aria-label="{_esc(c.title)}" '
             f'viewBox="0 0 {w} {h}" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg"']
    if not series:
        parts.append(f'><title>{_esc(c.title)}</title><text x="{w / 2}" y="{h / 2}" text-anchor="middle" '
                     f'class="empty">{_esc(c.title)}: no data</text></svg>')
        return Markup("".join(parts))
    xs = [p[0] for s in series for p in s.points] + [m.x for m in c.markers]
    ys = [p[1] for s in series for p in s.points]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x1 = x0 + 1
    if c.log_y:
        y0, y1 = math.log10(min(ys)), math.log10(max(ys))
    else:
        y0, y1 = min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.1 or 1), y1 + (abs(y1) * 0.1 or 1)
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    if not c.log_y and min(ys) >= 0 > y0:
        y0 = 0.0

    def sx(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        v = math.log10(y) if c.log_y else y
        return mt + (1 - (v - y0) / (y1 - y0)) * ph

    meta = {"x0": x0, "x1": x1, "y0": y0, "y1": y1, "ml": ml, "mt": mt, "pw": pw, "ph": ph, "log": c.log_y,
            "series": [{"name": s.name, "color": s.color, "points": s.points} for s in series]}
    parts.append(f" data-chart='{_esc(formats.dumps_line(meta).rstrip())}'>")
    parts.append(f"<title>{_esc(c.title)}</title>")
    parts.append(f'<text class="ctitle" x="{ml}" y="18">{_esc(c.title)}</text>')
    # grid and ticks
    for t in nice_ticks(x0, x1, 8):
        if x0 <= t <= x1:
            X = sx(t)
            parts.append(f'<line class="grid" x1="{X:.1f}" y1="{mt}" x2="{X:.1f}" y2="{mt + ph}"/>'
                         f'<text class="tick" x="{X:.1f}" y="{mt + ph + 16}" text-anchor="middle">'
                         f"{_esc(_tick_label(t))}</text>")
    for t in nice_ticks(y0, y1, 5):
        if y0 <= t <= y1:
            Y = mt + (1 - (t - y0) / (y1 - y0)) * ph
            label = _tick_label(10 ** t) if c.log_y else _tick_label(t)
            parts.append(f'<line class="grid" x1="{ml}" y1="{Y:.1f}" x2="{ml + pw}" y2="{Y:.1f}"/>'
                         f'<text class="tick" x="{ml - 6}" y="{Y + 4:.1f}" text-anchor="end">{_esc(label)}</text>')
    parts.append(f'<rect class="frame" x="{ml}" y="{mt}" width="{pw}" height="{ph}"/>')
    parts.append(f'<text class="axis" x="{ml + pw / 2}" y="{h - 6}" text-anchor="middle">{_esc(c.x_label)}</text>')
    parts.append(f'<text class="axis" transform="translate(14,{mt + ph / 2}) rotate(-90)" text-anchor="middle">'
                 f"{_esc(c.y_label)}{' (log scale)' if c.log_y else ''}</text>")
    for m in c.markers:
        X = sx(m.x)
        parts.append(f'<g class="marker"><line x1="{X:.1f}" y1="{mt}" x2="{X:.1f}" y2="{mt + ph}" '
                     f'stroke="{_esc(m.color)}" stroke-dasharray="3 3"/><title>{_esc(m.label)}</title></g>')
    for s in series:
        d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.2f},{sy(y):.2f}" for i, (x, y) in enumerate(s.points))
        dash = f' stroke-dasharray="{_esc(s.dash)}"' if s.dash else ""
        parts.append(f'<path class="series" data-series="{_esc(s.name)}" d="{d}" stroke="{_esc(s.color)}"{dash}>'
                     f"<title>{_esc(s.name)}</title></path>")
        if s.dots or len(s.points) <= 40:
            parts += [f'<circle class="dot" cx="{sx(x):.2f}" cy="{sy(y):.2f}" r="2.5" fill="{_esc(s.color)}">'
                      f"<title>{_esc(f'{s.name}: step {fmt(x)}, {fmt(y)}')}</title></circle>" for x, y in s.points]
    # legend, above the plot on the right
    widths = [34 + 7 * len(s.name) for s in series]
    lx = max(ml + 160, ml + pw - sum(widths))
    for s, sw in zip(series, widths):
        dash = f' stroke-dasharray="{_esc(s.dash)}"' if s.dash else ""
        parts.append(f'<line x1="{lx}" y1="14" x2="{lx + 18}" y2="14" stroke="{_esc(s.color)}" '
                     f'stroke-width="2.5"{dash}/><text class="legend" x="{lx + 22}" y="18">{_esc(s.name)}</text>')
        lx += sw
    parts.append(f'<line class="cursor" x1="0" y1="{mt}" x2="0" y2="{mt + ph}" visibility="hidden"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def divergence_chart(curve: Any, cid: str = "plot-divergence") -> tuple[Chart, str] | None:
    """The divergence curve of a reproduction (reproduction/report.json `curve`): per step the relative loss
    difference, at each checkpoint the largest tensor relative L2, and the bounds at each step when a tolerance
    was used; log scale, so that flat noise and a break at step k are told apart at a glance. (chart, caption)."""
    if not isinstance(curve, dict) or not isinstance(curve.get("steps"), list):
        return None
    steps = [c for c in curve["steps"] if isinstance(c, dict)]
    ckpts = [c for c in curve.get("checkpoints") or [] if isinstance(c, dict)]
    series = [Series("loss relative difference", [(c.get("step"), c.get("rel_diff")) for c in steps], PALETTE[0]),
              Series("checkpoint relative L2 (largest tensor)", [(c.get("step"), c.get("rel_l2")) for c in ckpts],
                     PALETTE[1], dots=True)]
    if any(c.get("bound") is not None for c in steps):
        series.append(Series("loss bound", [(c.get("step"), c.get("bound")) for c in steps], PALETTE[0], dash="6 4"))
    if any(c.get("bound") is not None for c in ckpts):
        series.append(Series("checkpoint bound", [(c.get("step"), c.get("bound")) for c in ckpts], PALETTE[1],
                             dash="6 4", dots=True))
    equal = sum(1 for c in steps if c.get("rel_diff") == 0)
    same = sum(1 for c in ckpts if c.get("same_digest"))
    caption = (f"{len(steps)} steps and {len(ckpts)} checkpoints compared with the original; {equal} losses bitwise "
               f"equal and {same} checkpoints with the same digest (zero, not drawn on the log scale)")
    caption += _non_finite_caption([c for c in steps if c.get("rel_diff") is None], "step")
    caption += _non_finite_caption([c for c in ckpts if c.get("rel_l2") is None], "checkpoint")
    return Chart(cid, "Divergence from the original", "step", "relative difference", series, log_y=True), caption


def render_timeline(f: Facts, tid: str = "timeline", width: int = 760) -> Markup:
    """Steps from 0 to the last step: evaluations, checkpoints and decision notes on one axis."""
    last = f.last_step or max([int(c.get("step", 0)) for c in f.checkpoints] + [0])
    steps_notes = [n for n in f.notes if isinstance(n.get("step"), int)]
    unplaced = [n for n in f.notes if not isinstance(n.get("step"), int)]
    hi = max([last, 1] + [int(n["step"]) for n in steps_notes])
    ml, mr = 64, 16
    pw = width - ml - mr
    h = 150

    def sx(s: float) -> float:
        return ml + s / hi * pw

    p = [f'<svg id="{_esc(tid)}" class="timeline" role="img" aria-label="Timeline" viewBox="0 0 {width} {h}" '
         f'width="{width}" height="{h}" xmlns="http://www.w3.org/2000/svg"><title>Timeline of the run</title>']
    lanes = (("evaluations", 34), ("checkpoints", 70), ("notes", 106))
    for name, y in lanes:
        p.append(f'<text class="lane" x="{ml - 6}" y="{y + 4}" text-anchor="end">{_esc(name)}</text>'
                 f'<line class="grid" x1="{ml}" y1="{y}" x2="{ml + pw}" y2="{y}"/>')
    for t in nice_ticks(0, hi, 8):
        if 0 <= t <= hi:
            p.append(f'<text class="tick" x="{sx(t):.1f}" y="{h - 8}" text-anchor="middle">'
                     f"{_esc(_tick_label(t))}</text>")
    for e in f.evals:
        if isinstance(e.get("step"), int):
            tip = ", ".join(f"{k} {fmt(v)}" for k, v in sorted(e.items()) if k not in ("step", "time"))
            p.append(f'<circle class="ev" cx="{sx(e["step"]):.1f}" cy="34" r="4" fill="{PALETTE[0]}">'
                     f"<title>evaluation at step {_esc(fmt(e['step']))}: {_esc(tip)}</title></circle>")
    for c in f.checkpoints:
        s = c.get("step")
        if isinstance(s, int):
            x = sx(s)
            p.append(f'<path class="ckpt" d="M{x:.1f},62 L{x + 8:.1f},70 L{x:.1f},78 L{x - 8:.1f},70 Z" '
                     f'fill="{PALETTE[2]}"><title>checkpoint step {_esc(fmt(s))}: {_esc(c.get("path"))} '
                     f'sha256:{_esc(c.get("sha256"))}</title></path>')
    for i, n in enumerate(steps_notes):
        color = NOTE_COLORS.get(str(n.get("category")), "#57606a")
        x = sx(int(n["step"]))
        title = (f"note {i + 1} at step {fmt(n['step'])} [{fmt(n.get('category'))}] {fmt(n.get('author'))}: "
                 f"{fmt(n.get('text'))}")
        p.append(f'<g class="note"><line x1="{x:.1f}" y1="26" x2="{x:.1f}" y2="{106}" stroke="{color}" '
                 f'stroke-dasharray="2 3"/><circle cx="{x:.1f}" cy="106" r="6" fill="{color}"/>'
                 f'<text class="notenum" x="{x:.1f}" y="110" text-anchor="middle">{i + 1}</text>'
                 f"<title>{_esc(title)}</title></g>")
    p.append("</svg>")
    if unplaced:
        p.append(f'<p class="muted">{len(unplaced)} note(s) without a step are listed below.</p>')
    return Markup("".join(p))


def _non_finite_caption(left_out: list[dict[str, Any]], what: str) -> str:
    """"; N steps left out: not finite (first at step K: loss nan, …)" for the rows the curve holds as null
    (reproduce.tolerance writes a NaN or an infinity as null and names it under `non_finite`)."""
    if not left_out:
        return ""
    first = min(left_out, key=lambda c: c.get("step") if isinstance(c.get("step"), int) else 0)
    wild = first.get("non_finite")
    named = ", ".join(f"{k} {v}" for k, v in sorted(wild.items())) if isinstance(wild, dict) and wild else \
        "no value recorded"
    n = len(left_out)
    return (f"; {n} {what}{'s' if n != 1 else ''} left out of the chart as not finite (first at step "
            f"{first.get('step')}: {named})")
