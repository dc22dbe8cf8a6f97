"""Segment verification (`prov reproduce --segments`): every interval between the original's checkpoints
checked on its own, so that intervals can run in parallel (`--jobs N`), on separate machines (`--segment I`,
joined by `prov reproduce --merge`), or as a seeded spot check (`--sample N --seed S`).

Interval 0 runs from the recorded init (or the checkpoint an original that resumed started from) to the
original's first checkpoint; interval i > 0 restores the original's checkpoint of its first step (the
`--from-step K` machinery: weights, optimizer, RNG, its sha256 checked against the index) and runs to the
next checkpoint (the last interval to the original's last step). Each interval is one ordinary
reproduction (`provenance.reproduce.reproduce`, with its own work folder, bundle and
reproduction/report.json): every batch exactly, every loss bitwise or within the tolerance in force, and
the checkpoint at its end. The intervals' results are joined into one verdict (a `Report` whose `segments`
holds every interval's result), written to `<workdir>/segments-report.json`.

Because every interval starts from the original's own checkpoint, a fault is seen where it happened: a
one-off fault (a transient error in one interval) shows in that interval only, the later ones reproduce
from the checkpoints the original went on from; a persistent one (other code, a faulty machine from some
step on) shows in every interval from the first it touches.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from provenance import diff as pdiff
from provenance import formats
from provenance.reproduce.options import EXIT_DIVERGED, EXIT_REFUSED, EXIT_REPRODUCED, Options, Refused, Say
from provenance.reproduce.plan import Original, audit_original, parse_sets, read_original
from provenance.reproduce.tolerance import parse_tolerance
from provenance.reproduce.verdict import (
    BITWISE,
    DIVERGED,
    INCOMPLETE,
    NOT_CLAIMED,
    REFUSED,
    REPORT_SCHEMA,
    WITHIN,
    Report,
)

SEGMENTS_REPORT = "segments-report.json"  # in the work folder of --segments / --segment I
_MAX_REPORT_BYTES = 64 << 20


@dataclass(frozen=True)
class SegmentOptions:
    jobs: int = 1  # intervals run at the same time here (each training with the recorded thread count)
    segment: int | None = None  # run only this interval (for separate machines; --merge joins the reports)
    sample: int | None = None  # check this many intervals chosen at random (seeded)
    seed: int | None = None  # the sample's seed (default: a random one, recorded)


@dataclass(frozen=True)
class Interval:
    index: int
    from_step: int  # the interval starts after this step: the original's checkpoint of it (or the init)
    to_step: int  # and ends with this step (a checkpoint of the original, or its last step)
    restores: bool  # from the original's checkpoint of from_step (False: the recorded init)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "from_step": self.from_step, "to_step": self.to_step, "restores": self.restores}

    def text(self) -> str:
        start = (f"the checkpoint of step {self.from_step}" if self.restores else "the recorded init"
                 if self.from_step == 0 else f"the checkpoint of step {self.from_step} the original continued from")
        return f"steps {self.from_step + 1}–{self.to_step} (from {start})"


def intervals(orig: Original) -> list[Interval]:
    """The intervals between the original's checkpoints (Refused when there is no intermediate one)."""
    if not orig.metric_steps:
        raise Refused(f"--segments: {orig.root}: the original logged no steps; there is nothing to compare")
    first, last = min(orig.metric_steps) - 1, max(orig.metric_steps)
    inner = sorted(s for s in orig.checkpoints if first < s < last)
    if not inner:
        have = ", ".join(str(s) for s in sorted(orig.checkpoints)) or "none"
        raise Refused(f"--segments: the original saved no checkpoint between its first and last step (steps "
                      f"{first + 1}–{last}, checkpoints: {have}): there is one interval only; reproduce it whole")
    for s in inner:
        if not (orig.root / formats.checkpoint_name(s)).is_file() and \
                not (orig.root / formats.dcp_checkpoint_dir(s)).is_dir():
            raise Refused(f"--segments: the checkpoint of step {s} ({formats.checkpoint_name(s)}) is in the index "
                          "but not in the bundle; the interval after it cannot be restored")
    bounds = [first, *inner, last]
    return [Interval(i, a, b, restores=i > 0) for i, (a, b) in enumerate(itertools.pairwise(bounds))]


def choose_sample(count: int, n: int, seed: int) -> list[int]:
    """`n` of `count` interval indices, chosen by `seed`: the n whose sha256("<seed>:<index>") is smallest
    (the same on every machine and Python version)."""
    keys = sorted(range(count), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return sorted(keys[:n])


def _ranges(idx: list[int]) -> str:
    return ", ".join(str(i) for i in idx)


def coverage(checked: list[int], count: int, divergent: list[int], sampled: bool = True) -> dict[str, Any]:
    """What checking `checked` of `count` intervals can and cannot rule out, given the divergent ones
    (`sampled`: chosen at random, so that the chance of missing a fault can be stated)."""
    k = len(checked)
    missed = sorted(set(range(count)) - set(checked))
    out: dict[str, Any] = {"checked": k, "of": count, "not_checked": missed,
                           "one_off_miss_probability": round(1 - k / count, 6), "rules_out": [], "cannot_rule_out": []}
    if not missed:
        out["rules_out"].append("every interval was checked: nothing is left unchecked")
        return out
    last = max(checked)
    if not divergent:
        out["rules_out"].append(f"a fault in the intervals checked ({_ranges(checked)})")
        out["rules_out"].append(f"a persistent divergence that starts in interval {last} or earlier (it would "
                                f"show in interval {last})")
        out["cannot_rule_out"].append(
            f"a fault confined to one interval not checked ({_ranges(missed)})" + (
                f": with {k} of {count} intervals checked at random, such a fault is missed with probability "
                f"1 - {k}/{count} = {1 - k / count:.3g}" if sampled else ""))
        later = [i for i in missed if i > last]
        if later:
            out["cannot_rule_out"].append(f"a persistent divergence that starts after interval {last} (in "
                                          f"{_ranges(later)}): it is caught only by a sampled interval at or after "
                                          "its start")
    else:
        out["rules_out"].append(f"that the run reproduces: interval {divergent[0]} diverges")
        out["cannot_rule_out"].append(f"faults in the intervals not checked ({_ranges(missed)}), and so whether the "
                                      "divergence is confined to one interval or persists")
    return out


def pattern(results: list[dict[str, Any]]) -> dict[str, Any]:
    """How the divergent intervals lie among those checked: none, one-off, persistent, or scattered."""
    checked = [r["index"] for r in results]
    div = [r["index"] for r in results if r["verdict"] == DIVERGED]
    if not div:
        return {"kind": "none", "divergent": [], "text": "no interval checked diverged"}
    j = div[0]
    after = [i for i in checked if i > j]
    first = next(r for r in results if r["index"] == j)
    fd = first.get("first_divergence") or {}
    only_ckpt = (fd.get("kind") == "checkpoint" and fd.get("step") == first["to_step"])
    note = (f" (every step of interval {j} reproduced; only the checkpoint of step {first['to_step']} differs from "
            "the recorded one)") if only_ckpt else ""
    if div == [j] and after:
        return {"kind": "one-off", "divergent": div,
                "text": f"confined to interval {j}{note}: the later intervals checked ({_ranges(after)}), restored "
                        "from the original's checkpoints, reproduced: a one-off fault"}
    if div == [i for i in checked if i >= j] and after:
        return {"kind": "persistent", "divergent": div,
                "text": f"persistent: every interval checked from interval {j} on diverges ({_ranges(div)}){note}"}
    if div == [j]:
        return {"kind": "last", "divergent": div,
                "text": f"in interval {j}{note}, the last one checked: a one-off fault and a persistent one cannot "
                        "be told apart"}
    return {"kind": "scattered", "divergent": div, "text": f"in intervals {_ranges(div)}{note}"}


# --- one interval ----------------------------------------------------------------------------------------


def _interval_result(iv: Interval, out: Any, orig: Original, wall: float) -> dict[str, Any]:
    rep = out.report
    res: dict[str, Any] = {**iv.to_dict(), "verdict": out.verdict, "exit_status": out.exit_status,
                           "headline": out.headline, "bitwise": bool(rep.bitwise),
                           "first_divergence": rep.first_divergence,
                           "cause": rep.cause, "scope": rep.scope, "tolerance": rep.tolerance,
                           "bundle": str(out.bundle) if out.bundle else None,
                           "root_digest": f"sha256:{out.root_digest}" if out.root_digest else None,
                           "workdir": str(out.workdir) if out.workdir else None,
                           "training_exit_status": rep.training_exit_status,
                           "wall_s": round(wall, 3), "training_wall_s": rep.durations.get("training_wall_s")}
    if iv.to_step in orig.checkpoints:
        made = pdiff.checkpoint_digests(out.bundle).get(iv.to_step) if out.bundle else None
        res["end_checkpoint"] = {"step": iv.to_step, "sha256_recorded": orig.checkpoints[iv.to_step],
                                 "sha256": made, "match": made == orig.checkpoints[iv.to_step]}
    else:
        res["end_checkpoint"] = None
    return res


def _run_interval(root: Path, iv: Interval, opts: Options, workdir: Path, orig: Original, say: Say,
                  lock: threading.Lock) -> dict[str, Any]:
    from provenance.reproduce import reproduce

    tag = f"[interval {iv.index}] "

    def said(line: str) -> None:
        with lock:
            say(tag + line)

    echo = opts.echo
    sub = replace(opts, from_step=iv.from_step if iv.restores else None, steps=iv.to_step - iv.from_step,
                  workdir=workdir / f"interval-{iv.index}",
                  echo=(lambda line: echo(tag + line)) if echo is not None else None)
    t0 = time.monotonic()
    out = reproduce(root, sub, said)
    res = _interval_result(iv, out, orig, time.monotonic() - t0)
    said(f"{iv.text()}: {out.headline}")
    return res


# --- the verdict of several intervals ----------------------------------------------------------------------


def combine(original: dict[str, Any], layout: list[dict[str, Any]], results: list[dict[str, Any]], mode: str,
            tolerance: str, expected: list[int] | None = None, **segments: Any) -> Report:
    """One verdict from the intervals' results. `expected`: the intervals that should be there (a merge: all
    of them); the others are a sample and say what they can rule out."""
    results = sorted(results, key=lambda r: r["index"])
    checked = [r["index"] for r in results]
    count = len(layout)
    missing = sorted(set(expected or []) - set(checked))
    pat = pattern(results)
    div = [r for r in results if r["verdict"] == DIVERGED]
    unfinished = [r for r in results if r["verdict"] in (INCOMPLETE, REFUSED)]
    not_claimed = [r for r in results if r["verdict"] == NOT_CLAIMED]
    within = [r for r in results if r["verdict"] == WITHIN]
    cov = coverage(checked, count, [r["index"] for r in div], sampled=mode == "sample")
    which = (f"all {count} intervals" if len(checked) == count else
             f"{len(checked)} of {count} intervals ({_ranges(checked)})")
    first = cause = None
    if div:
        r = div[0]
        fd = r.get("first_divergence") or {}
        first = {**fd, "interval": r["index"]}
        cause = r.get("cause")
        inner = r["headline"].split(": ", 1)[1] if r["headline"].startswith("diverged at step") else r["headline"]
        verdict, status = DIVERGED, EXIT_DIVERGED
        headline = (f"diverged in interval {r['index']} of {count} ({_steps(r)}), first at step {fd.get('step')} "
                    f"({fd.get('kind')}): {inner}; {pat['text']}")
    elif unfinished or missing:
        verdict, status = INCOMPLETE, EXIT_DIVERGED
        what = [f"interval {r['index']} {r['verdict']}: {r['headline']}" for r in unfinished]
        if missing:
            what.append(f"no report for interval(s) {_ranges(missing)}")
        headline = f"incomplete: {'; '.join(what)}; no divergence in the other intervals checked"
        cause = unfinished[0].get("cause") if unfinished else None
    elif not_claimed:
        verdict, status = NOT_CLAIMED, EXIT_DIVERGED
        cause = not_claimed[0].get("cause")
        headline = (f"{which} matched, but no claim is made across a difference: interval "
                    f"{not_claimed[0]['index']}: {not_claimed[0]['headline']}")
    else:
        verdict = WITHIN if within else BITWISE
        status = EXIT_REPRODUCED
        steps = sum(int((r.get("scope") or {}).get("steps_checked") or 0) for r in results)
        ckpts = sum(int((r.get("scope") or {}).get("checkpoints_checked") or 0) for r in results)
        headline = (f"{verdict}: {which}, {steps} steps and {ckpts} checkpoint{'' if ckpts == 1 else 's'}"
                    + (" (within tolerance: " + ", ".join(str(r["index"]) for r in within) + ")" if within else ""))
    if missing and verdict == DIVERGED:
        headline += f"; no report for interval(s) {_ranges(missing)}"
    if len(checked) < count and not missing and verdict != DIVERGED:
        headline += f"; not checked: interval(s) {_ranges(cov['not_checked'])}"
    scopes = [r.get("scope") or {} for r in results]
    scope = {"intervals": count, "intervals_checked": len(checked),
             "first_step": min((r["from_step"] + 1 for r in results), default=None),
             "last_step": max((r["to_step"] for r in results), default=None),
             "steps_checked": sum(int(s.get("steps_checked") or 0) for s in scopes),
             "steps_expected": sum(int(s.get("steps_expected") or 0) for s in scopes),
             "checkpoints_checked": sum(int(s.get("checkpoints_checked") or 0) for s in scopes),
             "checkpoints_expected": sum(int(s.get("checkpoints_expected") or 0) for s in scopes)}
    seg = {"mode": mode, "intervals": layout, "checked": checked, "results": results, "pattern": pat,
           "first_divergent_interval": div[0]["index"] if div else None, "coverage": cov, **segments}
    walls = [r.get("wall_s") or 0.0 for r in results]
    return Report(verdict=verdict, exit_status=status, headline=headline, original=original,
                  bitwise=verdict == BITWISE and len(checked) == count, first_divergence=first, cause=cause,
                  scope=scope, tolerance={"asked": tolerance}, segments=seg,
                  durations={"intervals_wall_s": round(sum(walls), 3)})


def _steps(r: dict[str, Any]) -> str:
    return f"steps {r['from_step'] + 1}–{r['to_step']}"


# --- prov reproduce --segments / --segment I / --sample N ----------------------------------------------------


@dataclass
class SegmentsOutcome:
    exit_status: int
    verdict: str
    headline: str
    report: Report
    path: Path | None = None  # where the report was written
    workdir: Path | None = None


def check_options(opts: Options, seg: SegmentOptions) -> None:
    """Flags that do not go with segment verification: Refused naming the argument."""
    if opts.from_step is not None or opts.steps is not None:
        flag = "--from-step" if opts.from_step is not None else "--steps"
        raise Refused(f"{flag}: not with --segments (each interval is the steps between two of the original's "
                      "checkpoints); use --segment I for one interval")
    if seg.jobs < 1:
        raise Refused(f"--jobs {seg.jobs}: must be at least 1")
    if seg.segment is not None and seg.sample is not None:
        raise Refused("--segment: not with --sample (--segment I checks one given interval, --sample N random ones)")
    if seg.segment is not None and seg.jobs != 1:
        raise Refused(f"--jobs {seg.jobs}: --segment I checks one interval; there is nothing to run in parallel")
    if seg.seed is not None and seg.sample is None:
        raise Refused("--seed: only with --sample N (the seed chooses the sample)")
    if seg.sample is not None and seg.sample < 1:
        raise Refused(f"--sample {seg.sample}: must be at least 1")
    if opts.args is not None:
        raise Refused("--args: only a wrapped command (prov run) takes arguments; --segments checks a training run")


def reproduce_segments(bundle: str | os.PathLike[str], opts: Options, seg: SegmentOptions,
                       say: Say | None = None) -> SegmentsOutcome:
    """Check the original's intervals (all, one, or a sample). Never raises for a refusal."""
    say = say or (lambda s: None)
    opts = replace(opts, **{k: Path(getattr(opts, k)) for k in ("workdir", "data_root", "code")
                            if getattr(opts, k) is not None})
    t0 = time.monotonic()
    try:
        return _segments(Path(bundle), opts, seg, say, t0)
    except Refused as exc:
        details = dict(exc.details)
        started = details.pop("started", None)
        report = Report.refusal(str(exc), {"path": str(bundle)}, **details)
        if started is not None:  # a training ran (the calibration's): say so, and where its work folder is
            report.command = started.get("command")
            report.training_exit_status = started["exit_status"]
        return SegmentsOutcome(EXIT_REFUSED, REFUSED, f"refused: {exc}", report,
                               workdir=Path(started["workdir"]) if started is not None else None)
    except Exception as exc:  # a hostile bundle's odd content is a refusal, never a traceback
        message = f"{bundle}: cannot be reproduced: {type(exc).__name__}: {exc}"
        return SegmentsOutcome(EXIT_REFUSED, REFUSED, f"refused: {message}",
                               Report.refusal(message, {"path": str(bundle)}))


def _segments(src: Path, opts: Options, seg: SegmentOptions, say: Say, t0: float) -> SegmentsOutcome:
    from provenance.reproduce import default_workdir, wrapped
    from provenance.reproduce.command import find_sandbox

    check_options(opts, seg)
    if not src.exists():
        raise Refused(f"{src}: no such bundle")
    parse_tolerance(opts.tolerance)
    if opts.calibrate and opts.tolerance != "auto":
        raise Refused(f"--calibrate sets the bounds of --tolerance auto; it cannot be used with --tolerance "
                      f"{opts.tolerance}")
    digest, _ = audit_original(src, say)
    if opts.sandbox:
        find_sandbox()
    name = src.name.split(".")[0] if src.is_file() else src.name
    suffix = f"-interval-{seg.segment}" if seg.segment is not None else "-segments"
    workdir = (opts.workdir or Path(str(default_workdir(name)) + suffix)).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise Refused(f"--workdir {workdir}: not empty; a reproduction starts in an empty folder")
    made = [p for p in [workdir, *workdir.parents] if not p.exists()]
    workdir.mkdir(parents=True, exist_ok=True)
    ran = False
    try:
        root = src.resolve()
        if src.is_file():  # a release archive: unpacked once, every interval reads the same folder
            from provenance.archive import ArchiveError, extract

            (workdir / "original").mkdir()
            try:
                root = extract(src, workdir / "original").root
            except ArchiveError as exc:
                raise Refused(str(exc)) from None
        if wrapped.is_wrapped(root):
            raise Refused("--segments: a wrapped (prov run) bundle is re-run whole: its command cannot be started "
                          "from one of its checkpoints (the files it saved are the script's own); reproduce it whole")
        orig = read_original(root, digest)
        layout = intervals(orig)
        count = len(layout)
        sets = parse_sets(opts.sets, orig.config)  # bad --set refuses before anything runs
        sample_info = None
        if seg.segment is not None:
            if not 0 <= seg.segment < count:
                raise Refused(f"--segment {seg.segment}: out of range: the original has {count} intervals "
                              f"(0–{count - 1}: " + "; ".join(f"{iv.index}: {iv.text()}" for iv in layout) + ")")
            chosen, mode = [seg.segment], "one"
        elif seg.sample is not None:
            if seg.sample > count:
                raise Refused(f"--sample {seg.sample}: larger than the number of intervals ({count})")
            seed = seg.seed if seg.seed is not None else int.from_bytes(os.urandom(4), "big")
            chosen, mode = choose_sample(count, seg.sample, seed), "sample"
            sample_info = {"n": seg.sample, "seed": seed, "chosen": chosen,
                           "how": 'the n intervals whose sha256("<seed>:<index>") is smallest'}
        else:
            chosen, mode = list(range(count)), "all"
        threads = pdiff.flatten(orig.config).get("run.threads")
        say(f"segments: {count} intervals between the original's checkpoints; checking "
            + ("all" if mode == "all" else _ranges(chosen)) + (f" ({mode}, seed {sample_info['seed']})"
                                                               if sample_info else "")
            + f"; {seg.jobs} at a time" + (f", {threads} thread(s) each" if threads else ""))
        cores = os.cpu_count() or 1
        if isinstance(threads, int) and seg.jobs * threads > cores:
            say(f"segments: --jobs {seg.jobs} × {threads} threads > {cores} cores: the intervals compete for the "
                "CPU (their numbers do not change, only the time)")
        lock = threading.Lock()
        todo = [layout[i] for i in chosen]
        calibrated = None
        if opts.calibrate:  # once, here, before any interval: every interval (every job) uses these bounds
            try:
                calibrated = _calibrate(orig, opts, sets, workdir, say)
            except Refused as exc:
                if "started" not in exc.details:
                    raise  # nothing trained (the calibration removed its folders): nothing is left behind
                ran = True  # a calibration training ran: keep the work folder, and say so
                raise Refused(f"{exc} (the calibration's training ran; its work folder is kept: {workdir})",
                              started={**exc.details["started"], "workdir": str(workdir)}) from None
        ran = True
        each = replace(opts, calibrate=False, calibrated=calibrated) if calibrated is not None else opts
        if seg.jobs == 1 or len(todo) == 1:
            results = [_run_interval(root, iv, each, workdir, orig, say, lock) for iv in todo]
        else:
            with ThreadPoolExecutor(max_workers=seg.jobs) as pool:
                results = list(pool.map(lambda iv: _run_interval(root, iv, each, workdir, orig, say, lock), todo))
        started = [r for r in results if r["verdict"] != REFUSED or r["training_exit_status"] is not None]
        if not started:  # every interval refused before its training started: nothing ran
            ran = False
            raise Refused(results[0]["headline"].removeprefix("refused: "))
    except BaseException:
        if not ran:  # refused before any training started: leave nothing behind
            if made:
                shutil.rmtree(made[-1], ignore_errors=True)  # the outermost folder this created
            else:
                _empty(workdir)
        raise
    report = combine({"run_id": orig.run.get("run_id"), "root_digest": orig.root_digest, "path": str(src)},
                     [iv.to_dict() for iv in layout], results, mode, opts.tolerance, jobs=seg.jobs,
                     sample=sample_info)
    if calibrated is not None:  # the noise floor measured on this machine, which set every interval's bounds
        report.tolerance = {**(report.tolerance or {}), "model": calibrated.to_dict(),
                            "calibration": calibrated.calibration}
    report.durations["total_wall_s"] = round(time.monotonic() - t0, 3)
    report.overrides = {"set": list(opts.sets), "code": str(opts.code) if opts.code else None,
                        "data_root": str(opts.data_root) if opts.data_root else None}
    path = workdir / SEGMENTS_REPORT
    formats.atomic_write_json(path, report.to_dict())
    return SegmentsOutcome(report.exit_status, report.verdict, report.headline, report, path=path, workdir=workdir)


def _calibrate(orig: Original, opts: Options, sets: dict[str, Any], workdir: Path, say: Say) -> Any:
    """--calibrate with segment verification: this machine's noise floor, measured once (reproduce.calibrate:
    the original's first steps up to its first checkpoint, run twice at two thread counts) under
    <workdir>/calibration/; the NoiseModel every interval's bounds come from."""
    from provenance.reproduce.calibrate import calibrate
    from provenance.reproduce.plan import plan_steps

    whole = replace(opts, steps=None, from_step=None)
    return calibrate(orig, plan_steps(orig, whole), whole, sets, workdir, say)


def _empty(folder: Path) -> None:
    for child in folder.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


# --- prov reproduce --merge REPORT... ----------------------------------------------------------------------


def _load_report(path: Path) -> dict[str, Any]:
    p = path / SEGMENTS_REPORT if path.is_dir() else path
    if not p.is_file():
        raise Refused(f"--merge {path}: no such report" + (f" ({SEGMENTS_REPORT} is not in the folder)"
                                                            if path.is_dir() else ""))
    try:
        doc = formats.read_json(p, max_bytes=_MAX_REPORT_BYTES)
    except (OSError, ValueError) as exc:
        raise Refused(f"--merge {p}: not a readable JSON report ({exc})") from None
    seg = doc.get("segments") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("schema") != REPORT_SCHEMA or not isinstance(seg, dict):
        raise Refused(f"--merge {p}: not a segment report of prov reproduce (written by --segments, --segment I "
                      f"or --sample N as {SEGMENTS_REPORT})")
    layout, results = seg.get("intervals"), seg.get("results")
    digest = (doc.get("original") or {}).get("root_digest") if isinstance(doc.get("original"), dict) else None
    if not isinstance(layout, list) or not isinstance(results, list) or not isinstance(digest, str):
        raise Refused(f"--merge {p}: the report has no intervals, results or original root digest")
    for r in results:
        if not isinstance(r, dict) or not isinstance(r.get("index"), int) or not 0 <= r["index"] < len(layout) \
                or not isinstance(r.get("verdict"), str) or not isinstance(r.get("headline"), str):
            raise Refused(f"--merge {p}: a result that names no interval of the report's layout")
        if layout[r["index"]] != {k: r.get(k) for k in ("index", "from_step", "to_step", "restores")}:
            raise Refused(f"--merge {p}: interval {r['index']}'s steps do not match the report's layout")
    doc["_file"] = str(p)
    return doc


def merge_reports(paths: list[str | os.PathLike[str]]) -> SegmentsOutcome:
    """Join interval reports (of the same original) into one verdict. Never raises for a refusal."""
    try:
        return _merge([Path(p) for p in paths])
    except Refused as exc:
        return SegmentsOutcome(EXIT_REFUSED, REFUSED, f"refused: {exc}",
                               Report.refusal(str(exc), {"path": None}))


def _merge(paths: list[Path]) -> SegmentsOutcome:
    if not paths:
        raise Refused("--merge: give at least one report")
    docs = [_load_report(p) for p in paths]
    base = docs[0]
    digest = base["original"]["root_digest"]
    seen: dict[int, str] = {}
    results: list[dict[str, Any]] = []
    for d in docs:
        f = d["_file"]
        if d["original"]["root_digest"] != digest:
            raise Refused(f"--merge {f}: reports on bundle sha256:{d['original']['root_digest']}, but "
                          f"{base['_file']} on sha256:{digest}: reports of different bundles cannot be merged")
        if d["segments"]["intervals"] != base["segments"]["intervals"]:
            raise Refused(f"--merge {f}: its intervals are not those of {base['_file']}: they overlap "
                          "differently and cannot be merged")
        if (d.get("tolerance") or {}).get("asked") != (base.get("tolerance") or {}).get("asked"):
            raise Refused(f"--merge {f}: checked under --tolerance {(d.get('tolerance') or {}).get('asked')}, "
                          f"{base['_file']} under {(base.get('tolerance') or {}).get('asked')}: one verdict states "
                          "one tolerance")
        for r in d["segments"]["results"]:
            if r["index"] in seen:
                raise Refused(f"--merge {f}: interval {r['index']} is also in {seen[r['index']]}: each interval "
                              "must be reported once")
            seen[r["index"]] = f
            results.append(r)
    layout = base["segments"]["intervals"]
    report = combine({k: base["original"].get(k) for k in ("run_id", "root_digest", "path")}, layout, results,
                     "merged", (base.get("tolerance") or {}).get("asked", "bitwise"),
                     expected=list(range(len(layout))),
                     merged_from=[{"file": d["_file"], "intervals": [r["index"] for r in d["segments"]["results"]],
                                   "mode": d["segments"].get("mode")} for d in docs])
    calibrations = [{"file": d["_file"], "calibration": (d.get("tolerance") or {}).get("calibration")}
                    for d in docs if isinstance(d.get("tolerance"), dict) and d["tolerance"].get("calibration")]
    if calibrations:  # each machine's own noise floor (--calibrate on each), as its report states it
        report.tolerance = {**(report.tolerance or {}), "calibrations": calibrations}
    return SegmentsOutcome(report.exit_status, report.verdict, report.headline, report)
