"""`prov reproduce`: re-run a sealed bundle's training and say whether it reproduced, and if not, why.

    outcome = reproduce("runs/<run_id>", Options(steps=None, from_step=None))
    outcome.exit_status      # 0 reproduced (bitwise), 1 diverged / not claimed / incomplete, 2 refused
    outcome.report           # a Report: what reproduction/report.json holds (or why it was refused)

In order, and nothing runs until every check before the run has passed:

1. plan: audit the bundle (an integrity failure refuses it), read what the original recorded,
   decide which steps to check and parse the --set overrides (reproduce.plan);
2. environment: compare this machine with the recorded one (--strict-env: any difference
   refuses) (reproduce.environment);
3. data staging: locate every dataset and verify every file against the original's data
   manifest, then place the verified files in the work folder (reproduce.staging);
4. command: materialise the code from the bundle's source snapshot (the original checkout is
   not needed), build the recorded training command, and run it under PROV_REPLAY=<original>
   (provenance.replay compares every step's batch, loss and checkpoint digest) (reproduce.command);
5. verdict: from the replay's summary and a diff of the two bundles (provenance.diff), with the
   first divergent step under provenance.replay's one definition, written as
   reproduction/report.json into the new bundle, which is re-sealed (reproduce.verdict).

reproduce.check holds the audit's consistency check of reproduction bundles. docs/reproduce.md
explains the choices. This package runs training only as a child process; it never imports torch
or the training package.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from provenance import diff as pdiff
from provenance import formats, reader
from provenance.bundle import folder_lock, seal_folder_locked, write_reproduction_report
from provenance.replay import REPLAY_ENV, STOP_ENV
from provenance.reproduce.check import SUMMARY_SCHEMA, check_reproduction
from provenance.reproduce.command import (
    DATA_ROOT_ENV,
    RUNS_DIR_ENV,
    TRAINING_LOG,
    build_command,
    child_env,
    config_yaml,
    entry_point,
    find_sandbox,
    prepare_code,
    run_child,
    sandboxed,
)
from provenance.reproduce.environment import current_env, env_check
from provenance.reproduce.options import (
    EXIT_DIVERGED,
    EXIT_REFUSED,
    EXIT_REPRODUCED,
    PATH_KEYS,
    Options,
    Refused,
    Say,
    printable,
)
from provenance.reproduce.plan import (
    Original,
    Plan,
    audit_failures,
    audit_original,
    parse_sets,
    plan_steps,
    read_original,
)
from provenance.reproduce.staging import dataset_keys, locate_data, stage
from provenance.reproduce.tolerance import Tolerance, compare_checkpoints, parse_tolerance
from provenance.reproduce.verdict import (
    BITWISE,
    DIVERGED,
    INCOMPLETE,
    NOT_CLAIMED,
    REFUSED,
    REPORT,
    REPORT_SCHEMA,
    WITHIN,
    Report,
    decide,
    find_causes,
    fmt_value,
)

__all__ = [
    "BITWISE",
    "DIVERGED",
    "EXIT_DIVERGED",
    "EXIT_REFUSED",
    "EXIT_REPRODUCED",
    "INCOMPLETE",
    "NOT_CLAIMED",
    "REFUSED",
    "REPORT",
    "REPORT_SCHEMA",
    "SUMMARY_SCHEMA",
    "WITHIN",
    "Options",
    "Original",
    "Outcome",
    "Plan",
    "Refused",
    "Report",
    "Tolerance",
    "build_command",
    "check_reproduction",
    "compare_checkpoints",
    "current_env",
    "decide",
    "default_workdir",
    "env_check",
    "find_causes",
    "parse_tolerance",
    "read_original",
    "reproduce",
]


@dataclass
class Outcome:
    exit_status: int
    verdict: str
    headline: str
    report: Report
    bundle: Path | None = None  # the reproduction bundle
    root_digest: str | None = None
    workdir: Path | None = None


def safe_name(run_id: str) -> str:
    """A bundle's run id (untrusted: run.json says what it likes) as one folder name: never a path."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", run_id).lstrip(".")[:120] or "run"


def default_workdir(run_id: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return (Path.cwd() / ".cache" / "reproduce" / f"{safe_name(run_id)}-{stamp}").resolve()


def reproduce(bundle: str | os.PathLike[str], opts: Options | None = None, say: Say | None = None) -> Outcome:
    """Reproduce `bundle` (a run folder or a release archive). Never raises for a refusal: see Outcome."""
    opts = opts or Options()
    opts = replace(opts, **{k: Path(getattr(opts, k)) for k in ("workdir", "data_root", "code")
                            if getattr(opts, k) is not None})
    say = say or (lambda s: None)
    t0 = time.monotonic()
    try:
        return _reproduce(Path(bundle), opts, say, t0)
    except Exception as exc:  # a hostile bundle's odd content is a refusal, never a traceback
        if isinstance(exc, Refused):
            message, details = str(exc), dict(exc.details)
        else:
            message, details = f"{printable(str(bundle))}: cannot be reproduced: {type(exc).__name__}: {exc}", {}
        started = details.pop("started", None)
        report = Report.refusal(message, {"path": str(bundle)}, **details)
        if started is not None:  # the training ran: say so, and where its work folder is
            report.command = started["command"]
            report.training_exit_status = started["exit_status"]
        workdir = Path(started["workdir"]) if started else None
        return Outcome(EXIT_REFUSED, REFUSED, f"refused: {message}", report, workdir=workdir)


def _reproduce(src: Path, opts: Options, say: Say, t0: float) -> Outcome:
    if not src.exists():
        raise Refused(f"{src}: no such bundle")
    digest, audit_report = audit_original(src, say)
    archive_input = src.is_file()
    run_id = None
    if not archive_input:
        own = reader.Bundle.of_files(src, [formats.RUN_JSON])
        run_id = (own.json(formats.RUN_JSON).get("run_id") if own.has(formats.RUN_JSON) else None) or src.name
    if opts.sandbox:
        find_sandbox()  # refuse before making anything when there is no working sandbox
    workdir = (opts.workdir or default_workdir(str(run_id or src.name.split(".")[0]))).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise Refused(f"--workdir {workdir}: not empty; a reproduction starts in an empty folder")
    made = _missing_ancestors(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return _in_workdir(src, digest, audit_report, archive_input, workdir, opts, say, t0)
    except BaseException:
        if (workdir / TRAINING_LOG).exists():
            raise  # the training started: keep everything (its bundle included) for inspection
        if made:
            shutil.rmtree(made[0], ignore_errors=True)  # what this reproduction created, its parents too
        else:
            for child in workdir.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        raise


def _missing_ancestors(path: Path) -> list[Path]:
    """`path` and its parents that do not exist yet, outermost first."""
    out = []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out[::-1]


def _find_bundle(workdir: Path, runs_dir: Path, orig: Original) -> Path | None:
    """The reproduction's bundle: in runs_dir (PROV_RUNS_DIR) as asked, or wherever under the work folder
    the script wrote it (a run.json that names this original)."""
    found = sorted(p for p in runs_dir.iterdir() if (p / formats.RUN_JSON).is_file()) if runs_dir.is_dir() else []
    if found:
        return found[-1]
    for run_json in sorted(workdir.glob("**/" + formats.RUN_JSON)):
        if (workdir / "original") in run_json.parents:
            continue
        info = reader.Bundle.of_files(run_json.parent, [formats.RUN_JSON]).try_json(formats.RUN_JSON)
        if isinstance(info, dict) and (info.get("reproduces") or {}).get("root_digest") == orig.root_digest:
            return run_json.parent
    return None


def _in_workdir(src: Path, digest: str, audit_report: Any, archive_input: bool, workdir: Path, opts: Options,
                say: Say, t0: float) -> Outcome:
    if archive_input:
        from provenance.archive import ArchiveError, extract

        dest = workdir / "original"
        dest.mkdir()
        try:
            root = extract(src, dest).root
        except ArchiveError as exc:
            raise Refused(str(exc)) from None
        say(f"original: unpacked {src} into {root}")
    else:
        root = src.resolve()
    from provenance.reproduce import wrapped

    if wrapped.is_wrapped(root):  # `prov run -- COMMAND`: re-run it whole, compare the captured records
        if opts.sandbox or opts.tolerance != "bitwise":  # never run unsandboxed what was asked sandboxed
            what = "--sandbox" if opts.sandbox else f"--tolerance {opts.tolerance}"
            raise Refused(f"{what}: not supported yet for a wrapped (prov run) bundle; nothing ran")
        return wrapped.reproduce_wrapped(root, digest, src, workdir, opts, say, t0)
    if opts.args is not None:
        raise Refused("--args: only a wrapped command (prov run) takes arguments; use --set key=value")
    orig = read_original(root, digest)
    plan = plan_steps(orig, opts)
    parse_tolerance(opts.tolerance)  # bad input refuses before anything runs
    if (opts.calibrate or opts.calibrated is not None) and opts.tolerance != "auto":
        raise Refused(f"--calibrate sets the bounds of --tolerance auto; it cannot be used with --tolerance "
                      f"{opts.tolerance}")
    sets = parse_sets(opts.sets, orig.config)
    first_step, stop, expected_last = plan.first_step, plan.stop, plan.expected_last
    scope = f"steps {first_step}–{expected_last}" + (f" (from the checkpoint of step {opts.from_step})"
                                                     if opts.from_step is not None else "")
    say(f"original: {orig.run.get('run_id')} ({orig.run.get('status')}, {max(orig.metric_steps)} steps, "
        f"{len(orig.checkpoints)} checkpoints); checking {scope}")
    resumed = pdiff.flatten(orig.config).get("run.resume_from")
    if resumed and opts.from_step is None and not Path(str(resumed)).exists():
        raise Refused(f"the original resumed from the checkpoint {resumed}, which is not here; reproduce the run "
                      "that saved it, or check this one's own steps with --from-step K")
    flat = pdiff.flatten(orig.config)
    for key, value in sets.items():
        was = flat.get(key, "(not set)")
        say(f"config: --set {key}: {fmt_value(was)} → {fmt_value(value)}" + ("" if was == value else
                                                                   " (no bitwise claim across a difference)"))
    consistency = audit_failures(audit_report)
    pre_env = env_check(orig, sets, opts, say)
    staged = locate_data(orig, opts, say)
    bwrap = find_sandbox() if opts.sandbox else None

    code_dir, data_dir, runs_dir = workdir / "code", workdir / "data", workdir / "runs"
    n_files, code_differs = prepare_code(orig, opts, code_dir, say)
    data_dir.mkdir()
    stage(staged, data_dir)
    config_path = workdir / "config.yaml"
    config_path.write_bytes(config_yaml(orig.config))
    # where the bundle goes and the data root: PROV_RUNS_DIR / PROV_DATA_ROOT in the child's environment
    # (read by start_run); for scripts whose config has the keys, also as key=value overrides
    overrides = []
    if "data.root" in flat:
        overrides.append(f"data.root={data_dir}")
    if "run.runs_dir" in flat:
        overrides.append(f"run.runs_dir={runs_dir}")
    redirects = dataset_keys(orig, staged, data_dir)
    own_keys: set[str] = set()
    overrides += [f"{k}={v}" for k, v in redirects]
    if opts.from_step is not None:
        sharded = orig.root / formats.dcp_checkpoint_dir(opts.from_step)  # a DCP checkpoint is a folder
        ckpt = sharded if sharded.is_dir() else orig.root / formats.checkpoint_name(opts.from_step)
        overrides.append(f"run.resume_from={ckpt}")
    # a --set across a restore (e.g. run.threads for --tolerance): the training would refuse the resume. A
    # restore: --from-step, or an original that itself continued a checkpoint (run.resume_from, or a segment
    # torchrun relaunched: run.json's segment)
    restores = opts.from_step is not None or bool(resumed) or isinstance(orig.run.get("segment"), dict)
    changed = sorted(k for k, v in sets.items() if flat.get(k, v) != v) if restores else []
    if changed and "run.allow_resume_change" in flat:
        allowed = sorted({*(flat.get("run.allow_resume_change") or []), *changed})
        overrides.append(f"run.allow_resume_change=[{','.join(allowed)}]")
        own_keys.add("run.allow_resume_change")  # set by prov reproduce: not a difference
    overrides += opts.sets
    cmd = build_command(orig, opts, code_dir, config_path, overrides)
    env = child_env(orig, stop, runs_dir, data_dir, threads=opts.threads)
    run_cmd = cmd
    if bwrap is not None:
        readable = [orig.root, *(s.source for s in staged if s.source is not None)]
        if resumed:
            readable.append(Path(str(resumed)))
        # imported here: provenance.run imports torch, and the audit loads this package for its checks
        from provenance.run.relaunch import continued_from

        relaunched = continued_from(orig.root, orig.run)  # a torchrun relaunch restores the previous segment's
        if relaunched is not None:
            readable.append(relaunched[0])
        run_cmd = sandboxed(cmd, bwrap, workdir, code_dir, readable)
    say(f"executing the bundle's code: {n_files} files from "
        + (f"--code {opts.code}" if opts.code else "its source snapshot")
        + f", entry point {entry_point(orig.argv)}, command: {' '.join(cmd)}")
    say("  " + ("sandboxed (bubblewrap): no network, the file system read-only but the work folder "
                f"{workdir}, /tmp empty and private" if bwrap is not None else
                "NOT sandboxed: it can read and write whatever you can (--sandbox contains it)"))
    say(f"  in {code_dir} with {REPLAY_ENV}={orig.root} {RUNS_DIR_ENV}={runs_dir} {DATA_ROOT_ENV}={data_dir}"
        + (f" {STOP_ENV}={stop}" if stop is not None else ""))
    rc, train_wall = run_child(run_cmd, code_dir, env, workdir / TRAINING_LOG, opts)
    started = {"command": cmd, "exit_status": rc, "workdir": str(workdir)}

    repro = _find_bundle(workdir, runs_dir, orig)
    if repro is None:
        tail = (workdir / TRAINING_LOG).read_text(errors="replace").splitlines()[-15:]
        errors = [ln for ln in tail if ln.startswith("error:")]
        kept = f" The work folder is kept: {workdir}."
        if rc == 2 and errors:
            raise Refused("the training started and refused to run, and wrote no bundle: " + " / ".join(errors)
                          + kept, started=started)
        hint = f" The code differs from the original's in: {', '.join(code_differs[:5])}." if code_differs else ""
        if rc == 0:
            raise Refused(f"the training ran and exited with status 0, but its bundle is neither in "
                          f"{RUNS_DIR_ENV}={runs_dir} nor anywhere under the work folder: the script does not "
                          f"write where prov reproduce asked (start_run reads {RUNS_DIR_ENV}).{kept}",
                          started=started)
        raise Refused(f"the training exited with status {rc} before its run started; it wrote no bundle.{hint}"
                      f"{kept} Last lines:\n  " + "\n  ".join(tail), started=started, code_differs=code_differs)
    elsewhere = runs_dir not in repro.parents
    if elsewhere:
        say(f"reproduction: the script wrote its bundle to {repro}, not under {RUNS_DIR_ENV}={runs_dir}")
    calibrated = opts.calibrated  # measured once already (--segments: for every interval)
    if opts.calibrate and calibrated is None:  # after the reproduction's run (judged with the bounds measured here)
        from provenance.reproduce.calibrate import calibrate

        try:
            calibrated = calibrate(orig, plan, opts, sets, workdir, say)
        except Refused as exc:
            raise Refused(str(exc), started=started) from None
    decision = decide(orig, repro, plan, rc, pre_env, PATH_KEYS | frozenset(k for k, _ in redirects) | own_keys,
                      consistency=consistency, tolerance=opts.tolerance, calibrated=calibrated)
    if elsewhere:
        decision["headline"] += f" (bundle written to {repro}, not under {runs_dir})"
    repro_run = reader.Bundle.of_files(repro, [formats.RUN_JSON]).json(formats.RUN_JSON)
    report = Report(
        verdict=decision["verdict"],
        exit_status=decision["exit_status"],
        headline=decision["headline"],
        bitwise=decision["bitwise"],
        first_divergence=decision["first_divergence"],
        cause=decision["cause"],
        other_causes=decision["causes"][1:],
        scope={**decision["scope"], "from_step": opts.from_step},
        original={"run_id": orig.run.get("run_id"), "root_digest": orig.root_digest, "path": str(src),
                  "consistency_failures": consistency},
        reproduction={"run_id": repro_run.get("run_id"), "path": str(repro), "expected_under": str(runs_dir),
                      "where_expected": not elsewhere},
        environment={"differences": decision["environment_differences"],
                     "before_run": decision["pre_run_environment_differences"], "strict": opts.strict_env},
        overrides={"set": list(opts.sets), "code": str(opts.code) if opts.code else None,
                   "data_root": str(opts.data_root) if opts.data_root else None,
                   "data_keys": {k: str(v) for k, v in redirects}},
        data=[s.to_dict() for s in staged],
        command=cmd,
        sandbox={"kind": "bubblewrap", "network": False, "writable": [str(workdir), "/tmp (private tmpfs)"]}
        if bwrap is not None else None,
        training_exit_status=rc,
        durations={"original_s": orig.run.get("duration_s"), "reproduction_s": repro_run.get("duration_s"),
                   "training_wall_s": round(train_wall, 3)},
        tolerance=decision.get("tolerance"),
        first_difference=decision.get("first_difference"),
        curve=decision.get("curve"),
        replay_summary=decision["summary"],
        diff={k: v for k, v in decision["diff"].items() if k not in ("a", "b")},
    )
    report.durations["total_wall_s"] = round(time.monotonic() - t0, 3)
    root_digest = _reseal_with_report(repro, report)
    return Outcome(decision["exit_status"], decision["verdict"], decision["headline"], report, bundle=repro,
                   root_digest=root_digest, workdir=workdir)


def _reseal_with_report(repro: Path, report: Report) -> str:
    """Add reproduction/report.json to the run's bundle and seal it again, after checking its seal
    (a re-seal must never cover a change made since the run sealed it)."""
    from provenance.audit import AuditRefused, audit

    with folder_lock(repro):  # a concurrent `prov note` reseals under the same lock
        try:
            integrity = audit(repro).integrity
        except AuditRefused as exc:
            raise RuntimeError(f"{repro}: the reproduction's own bundle was refused by the audit: {exc}") from None
        if not integrity.ok:
            bad = [d.name for d in (*integrity.missing, *integrity.extra, *integrity.changed)]
            raise RuntimeError(f"{repro}: the reproduction's own bundle does not match its seal "
                               f"({', '.join(bad[:5]) or 'not sealed'}); not re-sealed")
        write_reproduction_report(repro, report.to_dict())
        return seal_folder_locked(repro)
