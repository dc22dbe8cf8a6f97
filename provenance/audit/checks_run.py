"""Checks of the run's own records: run.json, config.json, notes.jsonl and the logs."""

from __future__ import annotations

from provenance import formats
from provenance.audit.results import CheckResult
from provenance.audit.view import BundleFileError, BundleView, is_int


def check_run(view: BundleView, out: CheckResult) -> None:
    info = view.json(formats.RUN_JSON)
    f = formats.RUN_JSON
    if not isinstance(info, dict):
        raise BundleFileError(f, "not a JSON object")
    if info.get("schema") != formats.BUNDLE_SCHEMA:
        out.error("unknown schema", file=f, expected=formats.BUNDLE_SCHEMA, actual=repr(info.get("schema")))
    status = info.get("status")
    if status is None:
        out.error("does not state the run's status", file=f)
    elif status not in formats.STATUSES:
        out.error(f"status {status!r} is not one of {', '.join(formats.STATUSES)}", file=f)
    elif status == "running":
        out.error("status is 'running': the run had not finished when this was sealed (seal it with `prov seal`)",
                  file=f)
    exit_status = info.get("exit_status")
    if status == "completed" and exit_status != 0:
        out.error("a completed run must have exit status 0", file=f, expected="0", actual=repr(exit_status))
    if status in ("failed", "interrupted"):
        if not is_int(exit_status) or exit_status == 0:
            out.warn(f"a {status} run should state a non-zero exit status", file=f, actual=repr(exit_status))
        if not isinstance(info.get("error"), dict):
            out.warn(f"a {status} run should record its error", file=f)
    run_id = info.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        out.error("has no run_id", file=f)
    elif view.subject is not None and view.subject != run_id:
        out.warn(f"the seal names the bundle {view.subject!r} but run.json names the run {run_id!r}",
                 file=formats.MANIFEST)
    datasets = info.get("datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        out.error("'datasets' must be a list of names", file=f)
    else:
        for d in datasets:
            if not view.has(f"{formats.DATA_DIR}/{d}/manifest.json"):
                out.error(f"lists dataset {d!r}, but {formats.DATA_DIR}/{d}/manifest.json is missing", file=f)
    docs = info.get("documents", {})
    if docs is not None and (not isinstance(docs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in docs.items())):
        out.error("'documents' must map names to paths or URLs (strings)", file=f)
    lic = info.get("license")
    if lic is not None and not isinstance(lic, str):
        out.error("'license' must be an SPDX expression (a string)", file=f)
    if info.get("reproduces") is not None and not isinstance(info.get("reproduces"), dict):
        out.error("'reproduces' must be an object or null", file=f)
    last = info.get("last_step")
    steps = view.metric_steps() if view.has(formats.METRICS) else []
    if last is not None and steps is not None:
        if not is_int(last):
            out.error("'last_step' must be an integer or null", file=f)
        elif steps and steps[-1] != last:
            out.error(f"last_step is {last}, but the last step in {formats.METRICS} is {steps[-1]}", file=f,
                      expected=str(steps[-1]), actual=str(last))
        elif not steps and status == "completed":
            out.warn(f"states last_step {last} but {formats.METRICS} has no steps", file=f)
    out.summary = f"{status}" + (f", exit {exit_status}" if exit_status is not None else "") + (
        f", reproduces {info['reproduces'].get('run_id')}" if isinstance(info.get("reproduces"), dict) else "")


def check_config(view: BundleView, out: CheckResult) -> None:
    f = formats.CONFIG_JSON
    cfg = view.json(f)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("config"), dict):
        raise BundleFileError(f, "has no 'config' object")
    stated = cfg.get("digest")
    actual = formats.config_digest(cfg["config"])
    if stated != actual:
        out.error("the config does not match its digest", file=f, expected=str(stated), actual=actual)
    out.summary = f"digest {actual[:19]}... matches" if stated == actual else "digest differs"
    argv = cfg.get("argv")
    if argv is None:
        return
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        out.error("'argv' is not a list of strings", file=f)
        return
    bound = cfg.get("command_digest")
    if bound is None:
        out.warn("the recorded command (argv) is not bound by a command_digest (written before command digests)",
                 file=f)
    elif bound != formats.command_digest(argv):
        out.error("the recorded command (argv) does not match its command_digest", file=f, expected=str(bound),
                  actual=formats.command_digest(argv))
    else:
        out.summary += "; command digest matches"



def check_notes(view: BundleView, out: CheckResult) -> None:
    f = formats.NOTES
    if not view.has(f):
        out.summary = "no notes"
        return
    records, problems = view.jsonl(f)
    for p in problems:
        out.error(p, file=f)
    for line, rec in records:
        bad = []
        if rec.get("schema") != formats.NOTE_SCHEMA:
            bad.append(f"schema is not {formats.NOTE_SCHEMA}")
        if not isinstance(rec.get("text"), str) or not rec["text"].strip():
            bad.append("no text")
        if rec.get("category") not in formats.NOTE_CATEGORIES:
            bad.append(f"category {rec.get('category')!r} is not one of {', '.join(formats.NOTE_CATEGORIES)}")
        if not isinstance(rec.get("time"), str):
            bad.append("no time")
        if not isinstance(rec.get("author"), str):
            bad.append("no author")
        links = rec.get("links", [])
        if not isinstance(links, list) or not all(isinstance(x, str) for x in links):
            bad.append("links must be a list of strings")
        step = rec.get("step")
        if step is not None and (not is_int(step) or step < 0):
            bad.append(f"step must be a non-negative integer or null, got {step!r}")
        if bad:
            out.error(f"line {line}: {'; '.join(bad)}", file=f)
    out.summary = f"{len(records)} notes" + (", well formed" if not out.errors else "")


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
