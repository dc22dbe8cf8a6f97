"""Checks of the run's own records: run.json, config.json, notes.jsonl and the logs."""

from __future__ import annotations

from provenance import formats
from provenance.audit.results import CheckResult
from provenance.audit.view import BundleView


def check_run(view: BundleView, out: CheckResult) -> None:
    f = formats.RUN_JSON
    info = view.run_record()  # typed and strict: a wrong type or schema is an error naming the key
    status = info.status
    if status is None:
        out.error("does not state the run's status", file=f)
    elif status == "running":
        out.error("status is 'running': the run had not finished when this was sealed (seal it with `prov seal`)",
                  file=f)
    exit_status = info.exit_status
    if status == "completed" and exit_status != 0:
        out.error("a completed run must have exit status 0", file=f, expected="0", actual=repr(exit_status))
    if status in ("failed", "interrupted"):
        if exit_status is None or exit_status == 0:
            out.warn(f"a {status} run should state a non-zero exit status", file=f, actual=repr(exit_status))
        if info.error is None:
            out.warn(f"a {status} run should record its error", file=f)
    if not info.run_id:
        out.error("has no run_id", file=f)
    elif view.subject is not None and view.subject != info.run_id:
        out.warn(f"the seal names the bundle {view.subject!r} but run.json names the run {info.run_id!r}",
                 file=formats.MANIFEST)
    for d in info.datasets:
        if not view.has(formats.data_manifest_path(d)):
            out.error(f"lists dataset {d!r}, but {formats.data_manifest_path(d)} is missing", file=f)
    last = info.last_step
    steps = view.metric_steps() if view.has(formats.METRICS) else []
    if last is not None and steps is not None:
        if steps and steps[-1] != last:
            out.error(f"last_step is {last}, but the last step in {formats.METRICS} is {steps[-1]}", file=f,
                      expected=str(steps[-1]), actual=str(last))
        elif not steps and status == "completed":
            out.warn(f"states last_step {last} but {formats.METRICS} has no steps", file=f)
    out.summary = f"{status}" + (f", exit {exit_status}" if exit_status is not None else "") + (
        f", reproduces {info.reproduces.get('run_id')}" if info.reproduces is not None else "")


def check_config(view: BundleView, out: CheckResult) -> None:
    f = formats.CONFIG_JSON
    cfg = view.config_record()  # typed and strict: config an object, argv a list of strings
    actual = formats.config_digest(cfg.config)
    form = cfg.digest_form()  # "bare": a bundle from before non-finite numbers were named (NaN/Infinity bare)
    if form is None:
        out.error("the config does not match its digest", file=f, expected=str(cfg.digest), actual=actual)
    for problem in formats.config_non_finite_problems(cfg.config, cfg.non_finite):
        out.error(f"non_finite: {problem}", file=f)
    out.summary = "digest differs" if form is None else f"digest {cfg.digest[:19]}... matches" + (
        " (over bare NaN/Infinity, as written before 2026-12-01)" if form == "bare" else "")
    if cfg.argv is None:
        return
    bound = cfg.command_digest
    if bound is None:
        out.warn("the recorded command (argv) is not bound by a command_digest (written before command digests)",
                 file=f)
    elif bound != formats.command_digest(cfg.argv):
        out.error("the recorded command (argv) does not match its command_digest", file=f, expected=str(bound),
                  actual=formats.command_digest(cfg.argv))
    else:
        out.summary += "; command digest matches"


def check_notes(view: BundleView, out: CheckResult) -> None:
    f = formats.NOTES
    if not view.has(f):
        out.summary = "no notes"
        return
    notes, problems = view.notes()  # typed: a line that is not a note is a problem naming the line and key
    for p in problems:
        out.error(p, file=f)
    for line, note in notes:
        bad = []
        if not note.text.strip():
            bad.append("no text")
        if note.step is not None and note.step < 0:
            bad.append(f"step must be a non-negative integer or null, got {note.step!r}")
        if bad:
            out.error(f"line {line}: {'; '.join(bad)}", file=f)
    out.summary = f"{len(notes)} notes" + (", well formed" if not out.errors else "")


def check_logs(view: BundleView, out: CheckResult) -> None:
    logs = [f for f in view.under("logs") if f.endswith(".jsonl") and f not in (formats.METRICS, formats.EVALS)]
    if not logs:
        out.warn(f"no event log ({formats.EVENTS})", file=formats.EVENTS)
    n = 0
    for rel in logs:
        records, problems = view.jsonl(rel)
        for p in problems:
            out.error(p, file=rel)
        if rel.startswith(formats.EVENTS.rsplit(".", 1)[0]):
            for line, rec in records:
                if not isinstance(rec.get("event"), str) or not isinstance(rec.get("time"), str):
                    out.error(f"line {line}: an event needs 'event' and 'time' strings", file=rel)
        n += len(records)
    out.summary = f"{n} records in {len(logs)} logs"
