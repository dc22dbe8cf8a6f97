"""The release report: one self-contained HTML page (no network needed to view it).

Plots are inline SVG drawn here in Python; the page's only script (inline) adds a
hover read-out to the plots and marks the page rendered. A Content-Security-Policy
forbids every fetch, so the page cannot load anything from anywhere.

Sections: run summary, verdicts (audit, signature, reproduction), loss and learning-rate
curves (an original and its reproduction overlaid when both exist), evaluation results,
timeline of checkpoints and decision notes, data summary, environment.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from provenance import __version__, formats
from provenance.release.charts import (
    NOTE_COLORS,
    PALETTE,
    Chart,
    Marker,
    Series,
    esc,
    finite,
    fmt,
    nice_ticks,
    render_chart,
    render_timeline,
)
from provenance.release.facts import Facts

__all__ = ["Chart", "Series", "build_report", "load_reproduction", "nice_ticks", "render_chart",
           "reproduction_verdict"]

# --- page ------------------------------------------------------------------------------------------


CSS = """
:root{--fg:#1f2328;--muted:#57606a;--line:#d0d7de;--bg:#ffffff;--soft:#f6f8fa;--ok:#1a7f37;--bad:#d1242f;
--warn:#9a6700}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;color:var(--fg);
background:var(--bg)}
header{padding:20px 32px;border-bottom:1px solid var(--line);background:var(--soft)}
header h1{margin:0 0 4px;font-size:22px}
main{padding:8px 32px 40px;max-width:1100px}
section{margin-top:26px}
h2{font-size:17px;border-bottom:1px solid var(--line);padding-bottom:4px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.muted{color:var(--muted)}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px;color:#fff}
.pass{background:var(--ok)}.fail{background:var(--bad)}.warn{background:var(--warn)}.none{background:#8c959f}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid var(--line);border-radius:6px;padding:10px 14px;min-width:220px;background:var(--bg)}
.card h3{margin:0 0 6px;font-size:14px}
svg.chart,svg.timeline{display:block;max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px;
background:#fff;margin:8px 0}
svg .grid{stroke:#eaeef2;stroke-width:1}
svg .frame{fill:none;stroke:#8c959f}
svg .tick{font-size:11px;fill:var(--muted)}
svg .axis,svg .lane{font-size:12px;fill:var(--fg)}
svg .ctitle{font-size:13px;font-weight:600;fill:var(--fg)}
svg .legend{font-size:12px;fill:var(--fg)}
svg .series{fill:none;stroke-width:1.8}
svg .cursor{stroke:#8c959f;stroke-width:1}
svg .notenum{font-size:9px;fill:#fff;font-weight:700}
svg .empty{font-size:14px;fill:var(--muted)}
.readout{min-height:1.5em;font-size:12px;color:var(--muted);font-family:ui-monospace,monospace}
details{margin:6px 0}
"""

SCRIPT = """
(function(){
  function fmt(v){return Math.abs(v)>=1e5||(Math.abs(v)<1e-3&&v!==0)?v.toExponential(4):(+v.toPrecision(6)).toString();}
  document.querySelectorAll('svg.chart[data-chart]').forEach(function(svg){
    var m = JSON.parse(svg.getAttribute('data-chart'));
    var out = document.getElementById(svg.id + '-readout');
    var cursor = svg.querySelector('.cursor');
    svg.addEventListener('mousemove', function(ev){
      var r = svg.getBoundingClientRect(), vb = svg.viewBox.baseVal;
      var px = (ev.clientX - r.left) * vb.width / r.width;
      var x = m.x0 + (px - m.ml) / m.pw * (m.x1 - m.x0);
      if (px < m.ml || px > m.ml + m.pw) { cursor.setAttribute('visibility','hidden'); return; }
      cursor.setAttribute('x1', px); cursor.setAttribute('x2', px); cursor.setAttribute('visibility','visible');
      var parts = m.series.map(function(s){
        var best = null;
        s.points.forEach(function(p){ if (best === null || Math.abs(p[0]-x) < Math.abs(best[0]-x)) best = p; });
        return best ? s.name + ': step ' + best[0] + ' = ' + fmt(best[1]) : '';
      });
      if (out) out.textContent = parts.join('   ');
    });
    svg.addEventListener('mouseleave', function(){ cursor.setAttribute('visibility','hidden'); });
  });
  document.body.setAttribute('data-rendered', 'true');
})();
"""

CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
       "connect-src 'none'; form-action 'none'; base-uri 'none'")


def _badge(status: Any, text: str | None = None) -> str:
    s = {True: "pass", False: "fail", None: "none"}.get(status, str(status)) if isinstance(status, bool | None) \
        else str(status)
    cls = s if s in ("pass", "fail", "warn") else "none"
    return f'<span class="badge {cls}">{esc((text or s).upper())}</span>'


def _kv(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column table; values are already HTML."""
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], tid: str | None = None) -> str:
    idattr = f' id="{esc(tid)}"' if tid else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table{idattr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metric_points(records: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(r["step"], r[key]) for r in records if isinstance(r.get("step"), int) and key in r]


def _reproduction_series(f: Facts, repro: dict[str, Any] | None) -> tuple[list[Series], list[Series], str | None]:
    """(loss series, lr series, caption) for the original and its reproduction, when one exists."""
    loss = _metric_points(f.metrics, "loss")
    lr = _metric_points(f.metrics, "lr") or _metric_points(f.metrics, "learning_rate")
    if f.repro_steps:  # this run reproduces another: its steps log holds the original's recorded loss
        recorded = [(s["step"], s["loss_recorded"]) for s in f.repro_steps
                    if isinstance(s.get("step"), int) and isinstance(s.get("loss_recorded"), int | float)]
        orig = (f.reproduction or {}).get("original") or {}
        caption = f"this run reproduces {orig.get('run_id') or 'another run'}: its loss (solid) over the original's " \
                  "recorded loss (dashed)"
        return ([Series("reproduction (this run)", loss, PALETTE[0]),
                 Series("original (recorded)", recorded, PALETTE[1], dash="6 4")],
                [Series("learning rate", lr, PALETTE[0])], caption)
    if repro is not None:
        rl, rr = repro.get("loss") or [], repro.get("lr") or []
        caption = f"original (solid) and its reproduction {repro.get('run_id')} (dashed)"
        return ([Series("original (this run)", loss, PALETTE[0]), Series("reproduction", rl, PALETTE[1], dash="6 4")],
                [Series("original", lr, PALETTE[0]), Series("reproduction", rr, PALETTE[1], dash="6 4")], caption)
    return [Series("training loss", loss, PALETTE[0])], [Series("learning rate", lr, PALETTE[0])], None


def load_reproduction(path: str | Path) -> dict[str, Any]:
    """What the report shows of a reproduction bundle of this run: its curves and its verdict."""
    p = Path(path)
    metrics = []
    try:
        metrics = list(formats.read_jsonl(p / formats.METRICS))
    except (OSError, formats.FormatError):
        pass
    summary = None
    try:
        summary = formats.read_json(p / "reproduction" / "summary.json")
    except (OSError, formats.FormatError):
        pass
    run = {}
    try:
        run = formats.read_json(p / formats.RUN_JSON)
    except (OSError, formats.FormatError):
        pass
    return {"run_id": run.get("run_id") or p.name, "loss": _metric_points(metrics, "loss"),
            "lr": _metric_points(metrics, "lr") or _metric_points(metrics, "learning_rate"),
            "summary": summary if isinstance(summary, dict) else None}


def reproduction_verdict(summary: dict[str, Any] | None) -> tuple[str, str]:
    """(badge status, sentence) of a reproduction summary."""
    if not summary:
        return "none", "no reproduction"
    div = summary.get("divergences") or {}
    first = summary.get("first_divergence")
    if summary.get("bitwise"):
        return "pass", (f"bitwise identical: {summary.get('steps_checked')} steps (batches and losses) and "
                        f"{summary.get('checkpoints_checked')} checkpoints match")
    if first:
        return "fail", (f"diverged first at step {first.get('step')} ({first.get('kind')}); divergences: "
                        + ", ".join(f"{k} {v}" for k, v in sorted(div.items())))
    return "warn", (f"{summary.get('steps_checked')} of {summary.get('steps_expected')} steps checked, "
                    "no divergence seen")


def build_report(f: Facts, release: dict[str, Any]) -> str:
    """The HTML page. `release`: date, fingerprint, verify_command, audit (AuditReport.to_dict()),
    reproduction (load_reproduction() or None), documents {label: path}."""
    run = f.run
    audit = release.get("audit") if isinstance(release.get("audit"), dict) else None
    repro_link = release.get("reproduction")
    loss_series, lr_series, caption = _reproduction_series(f, repro_link)
    note_markers = [Marker(float(n["step"]), f"note [{n.get('category')}]: {n.get('text')}",
                           NOTE_COLORS.get(str(n.get("category")), "#57606a"))
                    for n in f.notes if isinstance(n.get("step"), int)]
    losses = [p[1] for s in loss_series for p in finite(s.points)]
    log_loss = bool(losses) and min(losses) > 0 and max(losses) / min(losses) > 20
    charts = [  # Chart objects: the page knows each one's id without reading its own SVG back
        Chart("plot-loss", "Training loss", "step", "loss", loss_series, note_markers, log_y=log_loss),
        Chart("plot-lr", "Learning rate", "step", "learning rate", lr_series, note_markers),
    ]
    eval_keys = sorted({k for e in f.evals for k, v in e.items()
                        if k not in ("step", "time") and isinstance(v, int | float) and not isinstance(v, bool)})
    loss_like = [k for k in eval_keys if "loss" in k]
    other = [k for k in eval_keys if k not in loss_like and "perplexity" not in k]
    if loss_like:
        charts.append(Chart("plot-eval", "Evaluation loss", "step", "loss",
                            [Series(k, _metric_points(f.evals, k), PALETTE[i % 6], dots=True)
                             for i, k in enumerate(loss_like)]))
    if other:
        charts.append(Chart("plot-eval-metrics", "Evaluation metrics", "step", "value",
                            [Series(k, _metric_points(f.evals, k), PALETTE[(i + 2) % 6], dots=True)
                             for i, k in enumerate(other)]))

    out: list[str] = []
    w = out.append
    w("<!DOCTYPE html>")
    w('<html lang="en"><head><meta charset="utf-8">')
    w(f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">')
    w('<meta name="viewport" content="width=device-width, initial-scale=1">')
    w(f"<title>{esc(f.name)} — release report {esc(f.run_id)}</title>")
    w(f"<style>{CSS}</style></head><body>")
    w(f"<header><h1>{esc(f.name)}</h1><div class='muted'>Release report of run <code>{esc(f.run_id)}</code>, "
      f"{esc(release.get('date'))} — generated by fullyopen {esc(__version__)} (<code>prov release</code>)</div>"
      "</header><main>")

    # summary
    dur = run.get("duration_s")
    w('<section id="summary"><h2>Run summary</h2>')
    w(_kv([
        ("Run", f"<code>{esc(f.run_id)}</code>"), ("Status", esc(run.get("status"))),
        ("Started / ended", f"{esc(run.get('started_at'))} → {esc(run.get('ended_at'))}"),
        ("Duration", f"{fmt(dur)} s" if isinstance(dur, int | float) else "—"),
        ("Steps", fmt(f.last_step)), ("Tokens seen", fmt(f.tokens_seen)),
        ("Model", f"{esc(f.architecture)}, {fmt(f.parameters)} parameters"),
        ("License", esc(f.license or "not stated")),
        ("Command", f"<code>{esc(' '.join(f.argv))}</code>"),
        ("Code", f"<code>{esc(f.code.get('commit') or 'not in git')}</code>"
                 + (" (uncommitted changes recorded)" if f.code.get("dirty") else "")),
        ("Root digest (run files)", f"<code>sha256:{esc(f.content_root_digest)}</code>"),
    ]))
    w("</section>")

    # verdicts
    w('<section id="verdicts"><h2>Verdicts</h2><div class="cards">')
    if audit:
        integ = audit.get("integrity") or {}
        op = audit.get("openness") or {}
        w(f'<div class="card" id="verdict-audit"><h3>Audit {_badge(audit.get("verdict"))}</h3>'
          f"<div>integrity: {_badge(bool(integ.get('ok')))} {fmt(integ.get('files'))} files</div>"
          f"<div>consistency: {_badge(bool((audit.get('consistency') or {}).get('ok')))}</div>"
          f"<div>MOF class: <b>{esc(op.get('highest_class') or 'none')}</b>; fully open: "
          f"{esc('yes' if (op.get('fully_open') or {}).get('ok') else 'no')}</div>"
          f"<div class='muted'>at release time, before the report was added</div></div>")
    else:
        w(f'<div class="card" id="verdict-audit"><h3>Audit {_badge(None)}</h3><div>not run</div></div>')
    fp = release.get("fingerprint")
    sig_badge = _badge("pass" if fp else None, "signed" if fp else "unsigned")
    w(f'<div class="card" id="verdict-signature"><h3>Signature {sig_badge}</h3>'
      + (f"<div>signed with key <code>{esc(fp)}</code></div><div class='muted'>verify: "
         f"<code>{esc(release.get('verify_command'))}</code></div>" if fp else "<div>not signed</div>") + "</div>")
    summary = f.reproduction if isinstance(f.reproduction, dict) else (repro_link or {}).get("summary")
    status, sentence = reproduction_verdict(summary)
    if summary is None and repro_link is not None:
        sentence = (f"reproduction {repro_link.get('run_id')} is linked, but it records no verdict "
                    "(reproduction/summary.json is missing)")
    w(f'<div class="card" id="verdict-reproduction"><h3>Reproduction {_badge(status)}</h3><div>{esc(sentence)}</div>'
      + (f"<div class='muted'>{esc(caption)}</div>" if caption else "") + "</div>")
    w("</div>")
    if audit:
        checks = (audit.get("consistency") or {}).get("checks") or []
        rows = [[f"<code>{esc(c.get('name'))}</code>", _badge(c.get("status")), esc(c.get("summary"))]
                for c in checks if isinstance(c, dict)]
        w("<details><summary>Audit checks</summary>" + _table(["check", "status", "summary"], rows, "audit-checks")
          + "</details>")
        fails = audit.get("failures") or []
        if fails:
            w("<details open><summary>Audit failures</summary><ul>"
              + "".join(f"<li>{esc(x)}</li>" for x in fails) + "</ul></details>")
    w("</section>")

    # curves
    w('<section id="curves"><h2>Training curves</h2>')
    if caption:
        w(f"<p class='muted'>{esc(caption)}</p>")
    for chart in charts[:2]:
        w(render_chart(chart) + f'<div class="readout" id="{esc(chart.id)}-readout"></div>')
    if note_markers:
        w("<p class='muted'>Dashed vertical lines are decision notes (hover for the text).</p>")
    w("</section>")

    # evaluation
    w('<section id="evaluation"><h2>Evaluation results</h2>')
    for chart in charts[2:]:
        w(render_chart(chart) + f'<div class="readout" id="{esc(chart.id)}-readout"></div>')
    if f.evals:
        w(_table(["step", *eval_keys], [[fmt(e.get("step")), *(fmt(e.get(k)) for k in eval_keys)] for e in f.evals],
                 "eval-table"))
    else:
        w("<p>No evaluation was logged.</p>")
    w("</section>")

    # timeline
    w('<section id="timeline-section"><h2>Timeline: evaluations, checkpoints, decision notes</h2>')
    w(render_timeline(f))
    rows = [[fmt(c.get("step")), f"<code>{esc(c.get('path'))}</code>", fmt(c.get("tokens_seen")), fmt(c.get("size")),
             f"<code>{esc(c.get('sha256'))}</code>", esc(c.get("time"))] for c in f.checkpoints]
    w("<h3>Checkpoints</h3>" + (_table(["step", "file", "tokens seen", "bytes", "sha256", "time"], rows,
                                       "checkpoint-table") if rows else "<p>No checkpoints.</p>"))
    nrows = [[str(i + 1), fmt(n.get("step")), esc(n.get("category")), esc(n.get("author")), esc(n.get("time")),
              esc(n.get("text"))] for i, n in enumerate(f.notes)]
    w("<h3>Decision notes</h3>" + (_table(["#", "step", "category", "author", "time", "note"], nrows, "notes-table")
                                   if nrows else f"<p>No decision notes (<code>{esc(formats.NOTES)}</code>).</p>"))
    w("</section>")

    # data
    w('<section id="data"><h2>Data</h2>')
    for name, m in f.manifests.items():
        src = m.get("source") if isinstance(m.get("source"), dict) else {}
        role = "training data" if name in f.training_datasets else "used by the run"
        w(f"<h3>{esc(name)} <span class='muted'>({esc(role)}; source {esc(src.get('type'))}; license "
          f"{esc(m.get('license') or 'not stated')})</span></h3>")
        drows = [[f"<code>{esc(e.get('path'))}</code>", fmt(e.get("records")), fmt(e.get("size")),
                  f"<code>{esc(e.get('sha256'))}</code>"] for e in m.get("files", []) if isinstance(e, dict)]
        w(_table(["file", "records", "bytes", "sha256"], drows))
    if not f.manifests:
        w("<p>No data manifests.</p>")
    w("</section>")

    # environment
    env = f.env
    py = env.get("python") if isinstance(env.get("python"), dict) else {}
    torch = env.get("torch") if isinstance(env.get("torch"), dict) else {}
    hw = env.get("hardware") if isinstance(env.get("hardware"), dict) else {}
    osd = env.get("os") if isinstance(env.get("os"), dict) else {}
    pkgs = env.get("packages") if isinstance(env.get("packages"), dict) else {}
    det = run.get("determinism") if isinstance(run.get("determinism"), dict) else {}
    gpus = torch.get("gpus") if isinstance(torch.get("gpus"), list) else []
    w('<section id="environment"><h2>Environment</h2>')
    w(_kv([
        ("Python", esc(f"{py.get('implementation', '')} {py.get('version', '')}".strip() or None)),
        ("torch", esc(torch.get("version"))), ("OS", esc(osd.get("platform"))),
        ("CPU", esc(f"{hw.get('cpu_model')} — {hw.get('cpu_count')} cores, {hw.get('cpu_affinity')} usable")),
        ("Memory", f"{fmt(round(hw['ram_bytes'] / 2**30, 1))} GiB" if isinstance(hw.get("ram_bytes"), int) else "—"),
        ("GPUs", esc(", ".join(str(g.get("name")) for g in gpus) if gpus else "none")),
        ("Determinism", esc(", ".join(f"{k}={v}" for k, v in sorted(det.items())) or None)),
        ("Seeds", esc(json.dumps(run.get("seeds"), sort_keys=True))),
    ]))
    key = ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "datasets", "numpy", "model-signing")
    w("<details><summary>" + esc(f"{len(pkgs)} installed packages") + "</summary>"
      + _table(["package", "version"], [[("<b>" + esc(k) + "</b>") if k in key else esc(k), esc(v)]
                                        for k, v in sorted(pkgs.items())]) + "</details>")
    w("</section>")

    # documents
    docs = release.get("documents") or {}
    if docs:
        w('<section id="documents"><h2>Release documents</h2>'
          + _kv([(k, f"<code>{esc(v)}</code>") for k, v in docs.items()]) + "</section>")
    w("</main>")
    w(f"<script>{SCRIPT}</script>")
    w("</body></html>")
    return "\n".join(out) + "\n"
