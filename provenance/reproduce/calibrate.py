"""`prov reproduce --calibrate`: measure this machine's noise floor, which then sets auto's bounds.

A short segment of the original (from the reproduction's first step to the original's first checkpoint in
the range, or 8 steps where there is none) is reproduced twice on this machine, from the bundle's own code
and config, at two thread counts: the one the reproduction uses and another (1, or 2 where it uses 1).
Another thread count reorders the reductions and nothing else, which is what differs between machines
of one kind; the two runs must train on the same batches. Their per-step relative loss differences and
their checkpoints' tensor relative L2 give the per-step noise (reproduce.tolerance.measure_noise), and
the bounds are SAFETY times it (reproduce.tolerance.calibrated_model). The calibration's own bundles are
kept under <workdir>/calibration/. The thread count is set with --set run.threads=N where the recorded config
has that key (a `make train` config), else through PROV_THREADS, which start_run reads (a script's own
config); each run's recorded thread count is checked (a script that sets it itself is refused).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from provenance.reproduce.options import THREAD_KEYS, Options, Refused, Say
from provenance.reproduce.plan import Original, Plan
from provenance.reproduce.tolerance import NoiseModel, calibrated_model, measure_noise

DEFAULT_STEPS = 8  # the calibration segment when the range holds no checkpoint of the original


def segment(orig: Original, plan: Plan) -> tuple[int, int]:
    """(first, last) step of the calibration segment."""
    first, last = plan.first_step, plan.expected_last
    ckpts = sorted(s for s in orig.checkpoints if first <= s <= last)
    return first, ckpts[0] if ckpts else min(last, first + DEFAULT_STEPS - 1)


THREADS_KEY = "run.threads"  # the config key a calibration run sets (--set run.threads=N) where the config has it


def _recorded_threads(bundle: Path) -> int | None:
    """The thread count a calibration run recorded it ran at (run.json determinism.num_threads)."""
    from provenance import formats, reader

    run = reader.Bundle.of_files(bundle, [formats.RUN_JSON]).try_json(formats.RUN_JSON)
    det = run.get("determinism") if isinstance(run, dict) else None
    n = det.get("num_threads") if isinstance(det, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def threads_used(orig: Original, sets: dict[str, object]) -> int:
    """The thread count the reproduction runs at: --set run.threads, else the recorded config's."""
    for key in THREAD_KEYS:
        if key in sets and isinstance(sets[key], int):
            return int(sets[key])  # type: ignore[arg-type]
    t = (orig.config.get("run") or {}).get("threads") if isinstance(orig.config.get("run"), dict) else None
    return int(t) if isinstance(t, int) and t > 0 else int((orig.run.get("determinism") or {}).get("num_threads") or 1)


def calibrate(orig: Original, plan: Plan, opts: Options, sets: dict[str, object], workdir: Path,
              say: Say) -> NoiseModel:
    """Run the calibration segment twice (two thread counts) and return the calibrated noise model."""
    from provenance import diff as pdiff
    from provenance.reproduce import reproduce  # the same machinery, run on the original's own code and config

    first, last = segment(orig, plan)
    by_config = THREADS_KEY in pdiff.flatten(orig.config)  # else PROV_THREADS, which start_run reads
    a = threads_used(orig, sets)
    b = 1 if a > 1 else 2
    say(f"calibrate: steps {first}–{last} twice on this machine, at {a} and {b} threads (the bundle's own code "
        "and config), to measure the noise floor")
    bundles = []
    trained: list[tuple[int, list[str] | None]] = []  # (exit status, command) of each calibration training
    t0 = time.monotonic()
    try:
        for t in (a, b):
            sub = Options(steps=last - first + 1, from_step=opts.from_step,
                          workdir=workdir / "calibration" / f"threads-{t}", data_root=opts.data_root,
                          sets=[f"{THREADS_KEY}={t}"] if by_config else [], threads=None if by_config else t,
                          sandbox=opts.sandbox, python=opts.python, timeout=opts.timeout)
            out = reproduce(orig.root, replace(sub, tolerance="bitwise"))
            if out.report.training_exit_status is not None:
                trained.append((out.report.training_exit_status, out.report.command))
            if out.bundle is None or out.report.training_exit_status not in (0, None) or out.verdict == "refused":
                raise Refused(f"--calibrate: the calibration run at {t} threads did not complete: {out.headline}")
            ran_at = _recorded_threads(out.bundle)
            if ran_at != t:  # a script that sets torch's thread count itself: two runs at one count measure nothing
                how = f"--set {THREADS_KEY}={t}" if by_config else f"PROV_THREADS={t} (read by start_run)"
                raise Refused(f"--calibrate: the calibration run asked for {t} threads with {how} recorded that it "
                              f"ran at {ran_at if ran_at is not None else 'an unrecorded count'}: the script sets "
                              "its thread count itself, and the calibration cannot vary it")
            bundles.append(out.bundle)
        measured = measure_noise(bundles[0], bundles[1], first, last)
    except Refused as exc:
        if trained:  # a calibration training ran: the refusal says so (its folders are kept for inspection)
            raise Refused(str(exc), started={"command": trained[-1][1], "exit_status": trained[-1][0],
                                             "workdir": str(workdir / "calibration")}) from None
        raise
    measured.update(threads=[a, b], bundles=[str(p) for p in bundles], wall_s=round(time.monotonic() - t0, 3))
    model = calibrated_model(measured)
    say(f"calibrate: largest relative loss difference {measured['max_loss_rel']:.3g}, largest checkpoint relative "
        f"L2 {measured['max_ckpt_rel_l2']:.3g} over steps {first}–{last}"
        + (" (bitwise equal: the floor is one float32 rounding per step)" if measured["bitwise_equal"] else "")
        + f"; bounds: loss {model.safety:g} × {model.eps_loss:.3g} × n, checkpoint {model.safety:g} × "
        f"{model.eps_ckpt:.3g} × n")
    return model
