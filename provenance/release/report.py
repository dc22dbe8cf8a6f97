"""The release report: one self-contained HTML page (no network needed to view it).

The page is the Jinja2 template templates/report.html.j2, rendered with autoescape: every value read from
the bundle is escaped by the template. Plots are inline SVG drawn in charts.py (which escapes their text and
hands them over as `Markup`); the page's only script (inline, in the template) adds a hover read-out to the
plots and marks the page rendered. A Content-Security-Policy forbids every fetch, so the page cannot load
anything from anywhere.

Sections: run summary, verdicts (audit, signature, reproduction), loss and learning-rate
curves (an original and its reproduction overlaid when both exist), evaluation results,
timeline of checkpoints and decision notes, data summary, environment.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from provenance import __version__, formats, reader
from provenance.release.charts import (
    NOTE_COLORS,
    PALETTE,
    Chart,
    Marker,
    Series,
    divergence_chart,
    finite,
    fmt,
    nice_ticks,
    render_chart,
    render_timeline,
)
from provenance.release.facts import Facts
from provenance.replay import SUMMARY

__all__ = ["Chart", "Series", "build_report", "load_reproduction", "nice_ticks", "render_chart",
           "reproduction_verdict"]

CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
       "connect-src 'none'; form-action 'none'; base-uri 'none'")

KEY_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "datasets", "numpy",
                "model-signing")


def _badge_of(status: Any, text: str | None = None) -> tuple[str, str]:
    """(css class, label) of a verdict badge: pass/fail/warn, anything else grey."""
    s = {True: "pass", False: "fail", None: "none"}[status] if isinstance(status, bool | None) else str(status)
    return (s if s in ("pass", "fail", "warn") else "none"), (text or s).upper()


@functools.cache
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             finalize=lambda v: "—" if v is None else v,  # a missing value shows as a dash
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt
    env.globals["badge_of"] = _badge_of
    return env


def _pick(d: Any, *keys: str) -> dict[str, Any]:
    """The named fields of a record (None where absent), so the template never meets a missing key."""
    return {k: d.get(k) for k in keys} if isinstance(d, dict) else dict.fromkeys(keys)


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


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
    metrics: list[dict[str, Any]] = []
    summary: Any = None
    run: dict[str, Any] = {}
    try:  # forgiving, through the one reader: what cannot be read is left out
        with reader.Bundle.of_files(p, [formats.METRICS, SUMMARY, formats.RUN_JSON, formats.REPRO_REPORT]) as b:
            try:
                metrics = b.records(formats.METRICS)
            except reader.BundleFileError:
                pass
            summary, run, report = b.try_json(SUMMARY), b.run_info, b.try_json(formats.REPRO_REPORT)
    except reader.Refused:
        report = None
    return {"run_id": run.get("run_id") or p.name, "loss": _metric_points(metrics, "loss"),
            "lr": _metric_points(metrics, "lr") or _metric_points(metrics, "learning_rate"),
            "summary": summary if isinstance(summary, dict) else None,
            "report": report if isinstance(report, dict) else None}


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
    drawn = [{"id": c.id, "svg": render_chart(c)} for c in charts]
    repro_report = f.repro_report if isinstance(f.repro_report, dict) else (repro_link or {}).get("report")
    div = divergence_chart(repro_report.get("curve")) if isinstance(repro_report, dict) else None
    divergence = None
    if div is not None:
        tol = _dict(repro_report.get("tolerance"))
        divergence = {"id": div[0].id, "svg": render_chart(div[0]), "caption": div[1],
                      "verdict": repro_report.get("headline"), "tolerance": tol.get("why"),
                      "model": _pick(tol.get("model"), "formula", "eps_loss", "eps_ckpt", "safety", "source")
                      if isinstance(tol.get("model"), dict) else None}

    dur = run.get("duration_s")
    summary_rows = {
        "status": run.get("status"), "started_at": run.get("started_at"), "ended_at": run.get("ended_at"),
        "duration_s": dur if isinstance(dur, int | float) else None, "steps": f.last_step,
        "tokens_seen": f.tokens_seen, "architecture": f.architecture, "parameters": f.parameters,
        "license": f.license, "command": " ".join(str(a) for a in f.argv), "commit": f.code.get("commit"),
        "dirty": bool(f.code.get("dirty")), "root_digest": f.content_root_digest,
    }

    audit_view = None
    if audit:
        integ, op = _dict(audit.get("integrity")), _dict(audit.get("openness"))
        consistency = _dict(audit.get("consistency"))
        audit_view = {
            "verdict": audit.get("verdict"), "integrity_ok": bool(integ.get("ok")), "files": integ.get("files"),
            "consistency_ok": bool(consistency.get("ok")), "mof_class": op.get("highest_class"),
            "fully_open": bool(_dict(op.get("fully_open")).get("ok")),
            "checks": [_pick(c, "name", "status", "summary") for c in consistency.get("checks") or []
                       if isinstance(c, dict)],
            "failures": list(audit.get("failures") or []),
        }

    summary = f.reproduction if isinstance(f.reproduction, dict) else (repro_link or {}).get("summary")
    status, sentence = reproduction_verdict(summary)
    verdict = repro_report.get("verdict") if isinstance(repro_report, dict) else None
    if isinstance(verdict, str) and isinstance(repro_report.get("headline"), str):  # the graded verdict
        status = "pass" if verdict.startswith("reproduced") else "fail" if verdict == "diverged" else "warn"
        sentence = repro_report["headline"]
    if summary is None and repro_link is not None:
        sentence = (f"reproduction {repro_link.get('run_id')} is linked, but it records no verdict "
                    "(reproduction/summary.json is missing)")

    datasets = []
    for name, m in f.manifests.items():
        files = m.get("files")
        datasets.append({"name": name, "role": "training data" if name in f.training_datasets else "used by the run",
                         "source": _dict(m.get("source")).get("type"), "license": m.get("license"),
                         "files": [_pick(e, "path", "records", "size", "sha256")
                                   for e in (files if isinstance(files, list) else []) if isinstance(e, dict)]})

    env = f.env
    py, torch, hw = _dict(env.get("python")), _dict(env.get("torch")), _dict(env.get("hardware"))
    pkgs, det = _dict(env.get("packages")), _dict(run.get("determinism"))
    gpus = torch.get("gpus") if isinstance(torch.get("gpus"), list) else []
    env_view = {
        "python": f"{py.get('implementation', '')} {py.get('version', '')}".strip() or None,
        "torch": torch.get("version"), "os": _dict(env.get("os")).get("platform"),
        "cpu": f"{hw.get('cpu_model')} — {hw.get('cpu_count')} cores, {hw.get('cpu_affinity')} usable",
        "memory_gib": round(hw["ram_bytes"] / 2**30, 1) if isinstance(hw.get("ram_bytes"), int) else None,
        "gpus": ", ".join(str(_dict(g).get("name")) for g in gpus),
        "determinism": ", ".join(f"{k}={v}" for k, v in sorted(det.items())) or None,
        "seeds": json.dumps(run.get("seeds"), sort_keys=True),
    }

    return _environment().get_template("report.html.j2").render(
        csp=CSP, name=f.name, run_id=f.run_id, date=release.get("date"), version=__version__, run=summary_rows,
        audit=audit_view,
        signature={"fingerprint": release.get("fingerprint"), "verify_command": release.get("verify_command")},
        reproduction={"status": status, "sentence": sentence}, caption=caption, divergence=divergence,
        curve_charts=drawn[:2], eval_charts=drawn[2:], has_note_markers=bool(note_markers),
        eval_keys=eval_keys, eval_rows=[[e.get("step"), *(e.get(k) for k in eval_keys)] for e in f.evals],
        timeline=render_timeline(f),
        checkpoints=[_pick(c, "step", "path", "tokens_seen", "size", "sha256", "time") for c in f.checkpoints],
        notes=[_pick(n, "step", "category", "author", "time", "text") for n in f.notes], notes_file=formats.NOTES,
        datasets=datasets, env=env_view,
        packages=[(k, v, k in KEY_PACKAGES) for k, v in sorted(pkgs.items())],
        documents=list((release.get("documents") or {}).items()))
