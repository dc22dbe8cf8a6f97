"""The environment of a reproduction: this machine against the recorded one, before the run."""

from __future__ import annotations

import os
import sys
from typing import Any

from provenance import diff as pdiff
from provenance.capture import env as cenv
from provenance.reproduce.options import THREAD_KEYS, Options, Refused, Say
from provenance.reproduce.plan import Original

# torch settings the run applies itself from its config (determinism): compared after the run, not before
RUN_APPLIED_TORCH_KEYS = frozenset({"deterministic_algorithms", "deterministic_warn_only", "fill_uninitialized_memory",
                                    "cudnn_deterministic", "cudnn_benchmark"})

def current_env(full: bool) -> dict[str, Any]:
    """This machine's environment. Without `full`, torch is not imported (packages, python, hardware)."""
    if full:
        return cenv.capture_env()
    import platform

    return {"python": {"version": sys.version.split()[0], "implementation": platform.python_implementation()},
            "packages": cenv.packages(),
            "hardware": {"cpu_model": cenv.cpu_model(), "cpu_count": os.cpu_count(),
                         "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                         "ram_bytes": cenv.ram_bytes(), "machine": platform.machine()},
            "os": {"system": platform.system(), "release": platform.release()}}


def env_check(orig: Original, sets: dict[str, Any], opts: Options, say: Say) -> list[dict[str, Any]]:
    now = current_env(full=opts.strict_env)
    rec_threads = pdiff.threads(orig.run, orig.env)
    planned = dict(rec_threads)
    flat = pdiff.flatten(orig.config)
    for key in THREAD_KEYS:
        if key in sets:
            planned["num_threads"] = sets[key]
        elif flat.get(key):
            planned["num_threads"] = flat[key]
    diffs = [d for d in pdiff.diff_env(orig.env, now, rec_threads, planned) if d["category"] != "env_vars"
             and not (d["category"] == "torch" and d["name"] in RUN_APPLIED_TORCH_KEYS)]
    if not diffs:
        torch_v = (orig.env.get("torch") or {}).get("version")
        say(f"environment: same as recorded (python {(orig.env.get('python') or {}).get('version')}, "
            f"{len(orig.env.get('packages') or {})} packages, torch {torch_v}, {planned['num_threads']} threads, "
            f"{(orig.env.get('hardware') or {}).get('cpu_model')})")
    for d in diffs:
        tag = "" if d["significant"] else f" ({d.get('why', 'cannot change the numbers')})"
        say(f"environment: differs: {pdiff.env_line(d)}{tag}")
    significant = [d for d in diffs if d["significant"]]
    if significant and not opts.strict_env:
        say("environment: known before the run: no bitwise claim will be made across "
            + "; ".join(pdiff.env_line(d) for d in significant[:5]) + (" ..." if len(significant) > 5 else "")
            + " (every step is still checked; --strict-env refuses instead)")
    if opts.strict_env and diffs:
        raise Refused("--strict-env: the environment differs from the recorded one: "
                      + "; ".join(pdiff.env_line(d) for d in diffs), differences=diffs)
    if not opts.strict_env:
        say("environment: torch's own facts (CUDA, GPUs, determinism flags) are compared after the run "
            "(--strict-env compares them before)")
    return diffs


