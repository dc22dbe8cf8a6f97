"""The audit's consistency check of a reproduction bundle (`reproduction`): a plain function of the
audit's view and result, listed by the audit (provenance.audit) like any other check."""

from __future__ import annotations

from typing import Any

from provenance import diff as pdiff
from provenance import formats
from provenance.audit import Check
from provenance.records import ReproductionSummary
from provenance.replay import STEPS_LOG, SUMMARY
from provenance.reproduce.options import EXIT_REPRODUCED
from provenance.reproduce.verdict import BITWISE, DIVERGED, REPORT, REPORT_SCHEMA, WITHIN

SUMMARY_SCHEMA = formats.REPRODUCTION_SCHEMA
CHECK_NAME, CHECK_TITLE = "reproduction", "reproduction report"


def check_reproduction(view: Any, out: Any) -> None:
    """A reproduction's summary, step records and report agree with each other, with the run's own
    logged losses and checkpoint index, and name the same original as its run.json."""
    from provenance.audit import BundleFileError, SkipCheck

    try:
        rep = view.run_record().reproduces  # typed: an object or null
    except BundleFileError:
        rep = None  # the audit's `run` check names what is wrong with run.json
    has = [f for f in (SUMMARY, STEPS_LOG, REPORT) if view.has(f)]
    if rep is None and not has:
        raise SkipCheck("not a reproduction")
    if rep is None:
        out.error("reproduction files are present, but run.json does not name the original (reproduces)",
                  file=formats.RUN_JSON)
        return
    if not view.has(SUMMARY):
        raise BundleFileError(SUMMARY, "missing: a reproduction records its summary")
    try:
        summ = view.record(ReproductionSummary, SUMMARY)  # typed and strict
    except BundleFileError as exc:
        out.error(exc.message, file=SUMMARY, expected=SUMMARY_SCHEMA)
        return
    if summ.original.get("root_digest") != rep.get("root_digest"):
        out.error("names another original than run.json", file=SUMMARY,
                  expected=str(rep.get("root_digest")), actual=str(summ.original.get("root_digest")))
    steps: list[dict[str, Any]] = []
    ckpts: list[dict[str, Any]] = []
    if view.has(STEPS_LOG):
        records, problems = view.jsonl(STEPS_LOG)
        for p in problems:
            out.error(p, file=STEPS_LOG)
        for _, r in records:
            (ckpts if "checkpoint" in r else steps).append(r)
    if len(steps) != summ.steps_checked:
        out.error(f"{len(steps)} step records, but the summary says {summ.steps_checked} steps were "
                  "checked", file=STEPS_LOG)
    if len(ckpts) != summ.checkpoints_checked:
        out.error(f"{len(ckpts)} checkpoint records, but the summary says {summ.checkpoints_checked}",
                  file=STEPS_LOG)
    metrics = {r.get("step"): r for r in (view.try_jsonl(formats.METRICS) or [])}
    bad = [r.get("step") for r in steps if "loss" in r and isinstance(r.get("loss"), float | str)
           and formats.as_float(r["loss"]) is not None  # a non-finite loss is written "NaN", "Infinity" (strict)
           and not pdiff.same_value(formats.as_float(r["loss"]),
                                    formats.as_float((metrics.get(r.get("step")) or {}).get("loss")))]
    if bad:
        out.error(f"the losses compared at steps {bad[:5]} are not the losses this run logged", file=STEPS_LOG)
    try:
        index = view.checkpoint_index()  # typed; the `checkpoints` check names what is wrong with it
    except BundleFileError:
        index = None
    entries = index.checkpoints if index is not None else []
    own = {(e.step, e.path): e.sha256 for e in entries}  # a captured command may save
    own_step = {e.step: e.sha256 for e in entries}  # several files at one step
    badc = [r.get("step") for r in ckpts
            if own.get((r.get("step"), r.get("checkpoint")), own_step.get(r.get("step"))) != r.get("sha256")]
    if badc:
        out.error(f"the checkpoint digests compared at steps {badc[:5]} are not this run's", file=STEPS_LOG)
    diverged = [r for r in steps if r.get("loss_match") is False or r.get("order") in ("differs", "not recorded")]
    diverged += [r for r in ckpts if r.get("checkpoint_match") is False]
    if summ.bitwise and (diverged or summ.first_divergence is not None):
        out.error("claims bitwise, but the step records show a divergence", file=SUMMARY)
    if not view.has(REPORT):
        out.warn("no report: this reproduction was not made by `prov reproduce`", file=REPORT)
        out.summary = f"reproduces {rep.get('run_id')}; replay summary only"
        return
    report = view.json(REPORT)
    if not isinstance(report, dict) or report.get("schema") != REPORT_SCHEMA:
        out.error("unknown schema", file=REPORT, expected=REPORT_SCHEMA,
                  actual=repr(report.get("schema") if isinstance(report, dict) else report))
        return
    if (report.get("original") or {}).get("root_digest") != rep.get("root_digest"):
        out.error("names another original than run.json", file=REPORT, expected=str(rep.get("root_digest")),
                  actual=str((report.get("original") or {}).get("root_digest")))
    verdict = report.get("verdict")
    if verdict == BITWISE and (not summ.bitwise or diverged):
        out.error(f"says {BITWISE!r}, but the replay summary does not", file=REPORT)
    if verdict == BITWISE and report.get("exit_status") != EXIT_REPRODUCED:
        out.error("a bitwise reproduction has exit status 0", file=REPORT, expected="0",
                  actual=repr(report.get("exit_status")))
    if verdict == WITHIN and report.get("exit_status") != EXIT_REPRODUCED:
        out.error("a reproduction within tolerance has exit status 0", file=REPORT, expected="0",
                  actual=repr(report.get("exit_status")))
    if verdict == WITHIN and any(r.get("order") in ("differs", "not recorded") for r in steps):
        out.error(f"says {WITHIN!r}, but a batch differs (order is always compared exactly)", file=REPORT)
    if verdict == DIVERGED and (report.get("first_divergence") or {}).get("step") is None:
        out.error("says diverged, but names no first divergent step", file=REPORT)
    out.summary = f"reproduces {rep.get('run_id')} (sha256:{str(rep.get('root_digest'))[:12]}…): {verdict}"


# the audit lists this check through the entry point `reproduction` in pyproject.toml (fullyopen.audit_checks)
CHECK = Check(CHECK_NAME, CHECK_TITLE, check_reproduction)
