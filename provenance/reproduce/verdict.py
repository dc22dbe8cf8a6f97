"""The verdict of a reproduction: from the replay's summary and the diff of the two bundles, the first
divergent step (provenance.replay's one definition), its most likely cause, and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance import diff as pdiff
from provenance import formats, reader
from provenance.replay import SUMMARY, first_divergence
from provenance.reproduce.options import EXIT_DIVERGED, EXIT_REFUSED, EXIT_REPRODUCED, PATH_KEYS, THREAD_KEYS
from provenance.reproduce.plan import Original, Plan
from provenance.reproduce.tolerance import (
    NoiseModel,
    Tolerance,
    check_bounds,
    divergence_curve,
    out_of_bounds_text,
    resolve,
)

REPORT = formats.REPRO_REPORT
REPORT_SCHEMA = formats.REPRODUCTION_REPORT_SCHEMA

BITWISE = "reproduced (bitwise)"
WITHIN = "reproduced (within tolerance)"
DIVERGED = "diverged"
NOT_CLAIMED = "not claimed bitwise"
INCOMPLETE = "incomplete"
REFUSED = "refused"


@dataclass
class Report:
    """What reproduction/report.json holds (schema fullyopen.reproduction-report/v1), and what
    `prov reproduce --json` prints. A refusal fills `refused` and whatever was known by then."""

    verdict: str
    exit_status: int
    headline: str
    original: dict[str, Any]
    bitwise: bool = False
    first_divergence: dict[str, Any] | None = None
    cause: dict[str, Any] | None = None
    other_causes: list[dict[str, Any]] = field(default_factory=list)
    scope: dict[str, Any] = field(default_factory=dict)
    reproduction: dict[str, Any] | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    data: list[dict[str, Any]] = field(default_factory=list)
    command: list[str] | None = None
    sandbox: dict[str, Any] | None = None
    tolerance: dict[str, Any] | None = None  # what --tolerance asked, what was used, why; the bounds' figures
    first_difference: dict[str, Any] | None = None  # the first bitwise difference (under a tolerance)
    curve: dict[str, Any] | None = None  # the divergence curve: per step loss difference, per checkpoint rel L2
    training_exit_status: int | None = None
    durations: dict[str, Any] = field(default_factory=dict)
    replay_summary: dict[str, Any] = field(default_factory=dict)
    diff: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, Any] | None = None
    wrapped: dict[str, Any] | None = None  # a wrapped command (prov run): its command, evidence, exit status
    segments: dict[str, Any] | None = None  # --segments: every interval's result (reproduce.segments)
    schema: str = REPORT_SCHEMA

    @classmethod
    def refusal(cls, message: str, original: dict[str, Any], **details: Any) -> Report:
        return cls(verdict=REFUSED, exit_status=EXIT_REFUSED, headline=message, original=original,
                   refused={"message": message, **details})

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if self.refused is None:
            out.pop("refused")
            return out
        # a refusal: only what is known (a refusal after the training started keeps its command and status)
        keep = {"schema", "verdict", "exit_status", "headline", "refused", "original"}
        return {k: v for k, v in out.items() if k in keep or v not in (None, [], {}, False)}


def fmt_value(v: Any) -> str:
    return repr(v) if not isinstance(v, str) else v


def find_causes(d: dict[str, Any], first: dict[str, Any] | None, summary: dict[str, Any],
                path_keys: frozenset[str] = PATH_KEYS) -> list[dict[str, Any]]:
    """Every difference that could explain a divergence, most likely first:
    data, config, code, environment (thread count, packages, ...), then data order, then numerics.
    Config keys in `path_keys` (where this machine keeps things) are not differences."""
    causes: list[dict[str, Any]] = []
    for name, ds in d["data"]["datasets"].items():
        for ch in ds["changed"]:
            s = f"different data: {name}/{ch['path']}"
            if "sample" in ch:
                s += f" (sample {ch['sample']}" + (f", first used at step {ch['first_step_using_sample']})"
                                                   if ch.get("first_step_using_sample") is not None else ")")
            causes.append({"kind": "data", "dataset": name, "file": ch["path"], "summary": s,
                           **{k: ch[k] for k in ("sample", "line", "first_step_using_sample") if k in ch}})
        for p in ds["only_a"] + ds["only_b"]:
            causes.append({"kind": "data", "dataset": name, "file": p, "summary": f"different data: {name}/{p}"})
    for name in d["data"]["only_a"] + d["data"]["only_b"]:
        causes.append({"kind": "data", "dataset": name, "summary": f"different data: dataset {name}"})
    metrics_other = d["metrics"]["other_keys"]
    threads: list[dict[str, Any]] = []
    cfg = d["config"]
    for ch in [*cfg["changed"], *({"key": c["key"], "a": c["value"], "b": None} for c in cfg["only_a"]),
               *({"key": c["key"], "a": None, "b": c["value"]} for c in cfg["only_b"])]:
        key = ch["key"]
        if key in path_keys:
            continue
        if key in THREAD_KEYS:
            threads.append({"kind": "environment", "what": "thread count", "key": key, "a": ch["a"], "b": ch["b"],
                            "summary": f"different environment: thread count {ch['a']} → {ch['b']} ({key})"})
            continue
        causes.append({"kind": "config", "key": key, "a": ch["a"], "b": ch["b"],
                       "summary": f"different config: {key} {fmt_value(ch['a'])} → {fmt_value(ch['b'])}"})
    for ch in d["code"]["changed"]:
        causes.append({"kind": "code", "file": ch["path"], "a": ch["a"], "b": ch["b"],
                       "summary": f"different code: {ch['path']}"})
    for p in d["code"]["only_a"]:
        causes.append({"kind": "code", "file": p, "summary": f"different code: {p} (only in the original)"})
    for p in d["code"]["only_b"]:
        causes.append({"kind": "code", "file": p, "summary": f"different code: {p} (only in the reproduction)"})
    env = [x for x in d["environment"]["differences"] if x["significant"]]
    for x in env:
        if x["category"] == "threads":
            if x["name"] == "num_threads" and threads:
                continue  # already named through the config key
            threads.append({"kind": "environment", "what": "thread count", "a": x["a"], "b": x["b"],
                            "summary": f"different environment: {pdiff.env_line(x)}"})
    causes += threads
    for x in env:
        if x["category"] != "threads":
            causes.append({"kind": "environment", "what": f"{x['category']} {x['name']}", "a": x["a"], "b": x["b"],
                           "summary": f"different environment: {pdiff.env_line(x)}"})
    if first is not None and first.get("kind") == "order":
        if first.get("position") is None:  # no sample to compare: one side has no batch at this step
            what = (f"the original recorded no batch at step {first['step']} (it trained other steps: did the "
                    "reproduction start where the original did, e.g. from the checkpoint it continued from?)")
        else:
            what = (f"at step {first['step']} the training chose sample {first.get('computed_sample')} where the "
                    f"original had {first.get('recorded_sample')} (position {first.get('position')})")
        causes.append({"kind": "order", "step": first["step"], "position": first.get("position"),
                       "recorded_sample": first.get("recorded_sample"), "computed_sample": first.get("computed_sample"),
                       "summary": f"different data order: {what}"})
    if first is not None and not causes:
        diffv = formats.as_float(summary.get("max_loss_abs_diff")) or d["metrics"].get("max_abs_diff") or 0.0
        causes.append({"kind": "numerics", "max_abs_loss_diff": diffv,
                       "summary": "numerics only: same inputs (every batch matched; same config, code, data and "
                                  f"environment), different floats; largest |Δloss| {diffv:.3g}"})
    for c in causes:  # supporting evidence from the logged values (e.g. lr differs from step 1)
        if c["kind"] in ("config", "code") and metrics_other:
            c["logged_values_differ"] = {k: v["first_diff_step"] for k, v in metrics_other.items()}
    return causes


def decide(orig: Original, repro: Path, plan: Plan, training_rc: int,
           pre_env: list[dict[str, Any]], path_keys: frozenset[str] = PATH_KEYS,
           consistency: list[str] | tuple[str, ...] = (), tolerance: str | Tolerance = "bitwise",
           calibrated: NoiseModel | None = None) -> dict[str, Any]:
    """The verdict: from the replay's summary and the diff of the two bundles. `consistency`: the
    original's consistency audit failures; a bundle that fails its audit is never reproduced bitwise.
    `tolerance` (--tolerance): bitwise, auto, or loss=<rel>,ckpt=<rel> (reproduce.tolerance), or a Tolerance;
    `calibrated`: the noise model --calibrate measured (auto's bounds where bounds are needed)."""
    first_step, stop, expected_last = plan.first_step, plan.stop, plan.expected_last
    child = reader.Bundle.of_files(repro, [SUMMARY, formats.RUN_JSON, formats.ENV_JSON])  # the child's own files
    summary = child.json(SUMMARY) if child.has(SUMMARY) else {}
    d = pdiff.diff_bundles(orig.root, repro)
    # one definition of the first divergent step (provenance.replay.first_divergence): the replay's,
    # and the diff's of the two bundles (the same comparisons after the fact, with the checkpoints the
    # reproduction did not save and the evaluations); on a tie the replay's record (more detail) wins
    first = first_divergence([summary.get("first_divergence"), d["first_divergence"]])
    expected_ckpts = sorted(s for s in orig.checkpoints if first_step <= s <= expected_last)
    missing_ckpts = [s for s in expected_ckpts if s not in pdiff.checkpoint_digests(repro)]
    repro_run = child.json(formats.RUN_JSON) if child.has(formats.RUN_JSON) else {}
    last_checked = summary.get("last_step", repro_run.get("last_step"))
    steps_checked = summary.get("steps_checked", d["metrics"]["steps_compared"])
    steps_expected = sum(1 for s in orig.metric_steps if first_step <= s <= expected_last)
    complete = training_rc == 0 and last_checked == expected_last and steps_checked == steps_expected
    causes = find_causes(d, first, summary, path_keys)
    if consistency:
        causes.append({"kind": "audit", "failures": list(consistency),
                       "summary": f"the original fails its consistency audit ({len(consistency)} error(s)): "
                                  + "; ".join(consistency[:3])})
    scope = {"first_step": first_step, "last_step": expected_last, "stop_after": stop,
             "steps_checked": steps_checked, "steps_expected": steps_expected,
             "checkpoints_checked": summary.get("checkpoints_checked", len(expected_ckpts) - len(missing_ckpts)),
             "checkpoints_expected": len(expected_ckpts), "last_step_reached": last_checked}
    env_all = [x for x in d["environment"]["differences"] if x["category"] != "env_vars"]
    out: dict[str, Any] = {"first_divergence": first, "causes": causes, "scope": scope, "summary": summary,
                           "environment_differences": env_all, "pre_run_environment_differences": pre_env,
                           "diff": d}
    rng = f"steps {first_step}–{expected_last}"
    order = {"threads": 0, "hardware": 1, "torch": 2, "python": 3, "os": 4, "packages": 5}
    significant_env = [pdiff.env_line(x) for x in sorted((x for x in env_all if x["significant"]),
                                                         key=lambda x: order.get(x["category"], 9))]
    if isinstance(tolerance, Tolerance):
        tol = tolerance
    else:
        repro_env = child.json(formats.ENV_JSON) if child.has(formats.ENV_JSON) else {}
        tol = resolve(tolerance, significant_env, env_all, orig.env, repro_env, orig.run, calibrated)
    out["tolerance"] = tol.to_dict()
    if calibrated is not None and out["tolerance"]["calibration"] is None:  # measured, but bitwise was expected
        out["tolerance"]["calibration"] = calibrated.calibration
    compared = {c["step"]: c["tensors"] for c in d["checkpoints"]["differ"] if c.get("tensors")}
    out["curve"] = divergence_curve(orig.root, repro, first_step, expected_last, tol, compared)
    # within tolerance: only across environment differences (threads, CPU, packages) and numerics, never
    # across another config, code, data or a bundle failing its audit
    noise_only = all(c["kind"] in ("environment", "numerics") for c in causes)
    if tol.mode == "bounds":
        b = check_bounds(orig.root, orig.checkpoints, repro, first_step, expected_last, tol, compared)
        out["tolerance"].update({k: v for k, v in b.items() if k != "first_out"})
        out["first_difference"] = first
        oob = b["first_out"]
        if oob is not None and oob.get("kind") == "checkpoint missing" and not complete:
            oob = None  # the training stopped before it saved that checkpoint: incomplete (below), as under bitwise
        if oob is not None:
            if causes and causes[0]["kind"] == "numerics":  # same inputs, out of the noise model: not noise
                causes[0]["summary"] = ("numerics beyond the noise model: same inputs (every batch matched; same "
                                        "config, code, data and environment), yet out of tolerance from step "
                                        f"{oob['step']}: a fault in the original's computation or in this one")
                causes[0]["beyond_noise"] = True
            elif causes and all(c["kind"] == "environment" for c in causes) and oob.get("kind") != "order":
                causes[0] = {**causes[0], "beyond_noise": True, "summary": causes[0]["summary"] + " — but out of "
                             "the noise model's bounds for it: more than this difference's rounding noise"}
            cause = causes[0] if causes else None
            out.update(first_divergence=oob, verdict=DIVERGED, exit_status=EXIT_DIVERGED, cause=cause,
                       bitwise=False, headline=f"diverged at step {oob['step']}: {out_of_bounds_text(oob)}; most "
                       "likely cause: " + (cause["summary"] if cause else "unknown") + f" (tolerance: {tol.text()})")
            return out
        out["first_divergence"] = None
        if complete and noise_only and (first is not None or causes):  # bitwise and nothing differs: bitwise
            diff_note = ("bitwise equal" if first is None else
                         f"first bitwise difference at step {first['step']} ({first['kind']}); largest relative loss "
                         f"difference {b['max_loss_rel']:.3g}, largest checkpoint relative L2 "
                         f"{b['max_ckpt_rel_l2']:.3g}")
            out.update(verdict=WITHIN, exit_status=EXIT_REPRODUCED, cause=causes[0] if causes else None,
                       bitwise=False, headline=f"{WITHIN}: {_n(steps_checked, 'step')} ({rng}): every batch exact, "
                       f"every loss and {_n(scope['checkpoints_checked'], 'checkpoint')} within tolerance "
                       f"({tol.text()}; {tol.why}): {diff_note}")
            return out
        first = None  # within bounds: judged below as incomplete, or not claimed across a difference
    if first is not None:
        cause = causes[0] if causes else None
        out.update(verdict=DIVERGED, exit_status=EXIT_DIVERGED, cause=cause, bitwise=False,
                   headline=f"diverged at step {first['step']}: {pdiff.divergence_text(first)}; most likely cause: "
                            + (cause["summary"] if cause else "unknown"))
        largest = formats.as_float(summary.get("max_loss_abs_diff"))  # "Infinity" in the strict JSON file
        if largest:
            out["headline"] += f" (largest |Δloss| over the run {largest:.3g})"
    elif not complete:
        what = (f"the training exited with status {training_rc}" if training_rc != 0 else
                f"the reproduction checked {steps_checked} of {steps_expected} steps (last step {last_checked}, "
                f"expected {expected_last})")
        out.update(verdict=INCOMPLETE, exit_status=EXIT_DIVERGED, cause=causes[0] if causes else None,
                   bitwise=False, headline=f"incomplete: {what}; no divergence before that")
    elif causes:
        matched = ("every batch matched and every loss and checkpoint was within tolerance" if tol.mode == "bounds"
                   else "every loss and checkpoint digest matched")
        out.update(verdict=NOT_CLAIMED, exit_status=EXIT_DIVERGED, cause=causes[0], bitwise=False,
                   headline=f"{matched} in {rng}, but no claim is made across a difference: "
                            + "; ".join(c["summary"] for c in causes[:5]))
    else:
        out.update(verdict=BITWISE, exit_status=EXIT_REPRODUCED, cause=None, bitwise=True,
                   headline=f"{BITWISE}: {_n(steps_checked, 'step')} ({rng}): every batch and loss, and "
                            f"{_n(scope['checkpoints_checked'], 'checkpoint digest')}")
    return out


def _n(count: Any, word: str) -> str:
    """'1 step', '12 steps'."""
    return f"{count} {word}" + ("" if count == 1 else "s")
