"""`prov reproduce` of a wrapped bundle (`prov run -- COMMAND`, captured by provenance.capture.inject).

The command is unmodified: nothing can be fed into it, so the reproduction re-runs it whole,
under the same capture, and compares the two bundles' records step by step afterwards:

1. materialise the code (the bundle's source snapshot, or --code DIR) into a folder of its
   own, made its own git repository so that the new run captures exactly those files;
2. stage every `--data` path the command was given, verified against the original's data
   manifest (a mismatch names the file and both digests, and refuses), at the same path
   relative to the recorded working folder, so that the command's relative paths resolve;
3. run `prov run` with the recorded command (the recorded arguments, or --args) in the
   recorded working folder of the code, with the recorded numeric environment variables;
4. compare, for every step of the original: the data order (sample ids, or the content
   digests of the micro-batches' inputs), the loss bit for bit, then every checkpoint file's
   sha256 (by step and path) and every declared output's digest. The first divergence is
   provenance.replay's one definition; the cause names what differed: code (the file),
   arguments, seeds (function and both values), environment, data;
5. write reproduction/steps.jsonl, summary.json and report.json into the new bundle, name the
   original in its run.json, and re-seal it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path, PurePath
from typing import Any

from provenance import diff as pdiff
from provenance import formats, reader
from provenance.bundle import (
    folder_lock,
    seal_folder_locked,
    write_reproduction_report,
    write_reproduction_steps,
    write_reproduction_summary,
    write_run_info,
)
from provenance.capture import wrapped as cw
from provenance.capture.code import capture_code, git_toplevel, materialise_snapshot
from provenance.hashing import sha256_file
from provenance.replay import first_divergence
from provenance.reproduce.check import SUMMARY_SCHEMA
from provenance.reproduce.options import EXIT_DIVERGED, EXIT_REPRODUCED, Options, Refused, Say
from provenance.reproduce.verdict import BITWISE, DIVERGED, INCOMPLETE, NOT_CLAIMED, Report

COMMAND_JSON = "command.json"  # provenance.integrations.layout.COMMAND_JSON (integrations sit above)
OUTPUTS_INDEX = "outputs/index.json"
NUMERIC_ENV_VARS = ("PYTHONHASHSEED", "OMP_NUM_THREADS", "OMP_DYNAMIC", "OMP_SCHEDULE", "MKL_NUM_THREADS",
                    "MKL_CBWR", "MKL_DYNAMIC", "OPENBLAS_NUM_THREADS", "KMP_AFFINITY", "KMP_BLOCKTIME",
                    "GOMP_CPU_AFFINITY", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                    "CUBLAS_WORKSPACE_CONFIG", "TOKENIZERS_PARALLELISM")


def is_wrapped(root: Path) -> bool:
    """A bundle of `prov run` with captured steps."""
    return (root / COMMAND_JSON).is_file() and cw.is_captured(root)


def _script_index(command: list[str]) -> int:
    """Index of the first argument after the script (`python x.py ...`) or module (`python -m m ...`)."""
    for i, a in enumerate(command[1:], 1):
        if a == "-m" and i + 1 < len(command):
            return i + 2
        if a.endswith(".py"):
            return i + 1
    return 1


def _is_python(exe: str) -> bool:
    return PurePath(exe).name.startswith("python")


def _git_isolate(code: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "prov reproduce", "GIT_AUTHOR_EMAIL": "prov@localhost",
           "GIT_COMMITTER_NAME": "prov reproduce", "GIT_COMMITTER_EMAIL": "prov@localhost",
           "GIT_AUTHOR_DATE": "1970-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "1970-01-01T00:00:00Z",
           "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}
    try:
        subprocess.run(["git", "init", "-q"], cwd=code, env=env, check=True, capture_output=True)
        (code / ".git" / "info").mkdir(parents=True, exist_ok=True)
        (code / ".git" / "info" / "exclude").write_text("__pycache__/\n*.pyc\n")
        subprocess.run(["git", "add", "-f", "-A", "--", "."], cwd=code, env=env, check=True, capture_output=True)
        subprocess.run(["git", "-c", "commit.gpgsign=false", "commit", "-q", "--no-verify", "--allow-empty", "-m",
                        "source snapshot"], cwd=code, env=env, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pass


def _compare_steps(a: cw.Captured, b: cw.Captured, last: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                       float]:
    records: list[dict[str, Any]] = []
    found: list[dict[str, Any]] = []
    max_diff = 0.0
    for s in sorted(x for x in a.steps if x <= last):
        sa, sb = a.steps[s], b.steps.get(s)
        rec: dict[str, Any] = {"step": s, "evidence": sa.evidence}
        if sb is None:
            rec.update({"order": "not recorded", "loss": "not compared"})
            found.append({"step": s, "kind": "order", "detail": "the reproduction recorded no such step"})
            records.append(rec)
            continue
        if sa.evidence != sb.evidence:
            rec["order"] = "differs"
            found.append({"step": s, "kind": "order", "detail": f"evidence {sa.evidence} → {sb.evidence}"})
        elif sa.evidence == formats.EVIDENCE_IDS:
            ia, ib = list(sa.ids or ()), list(sb.ids or ())
            rec["batch_digest"] = formats.batch_digest(ib)
            rec["recorded_batch_digest"] = formats.batch_digest(ia)
            if ia == ib:
                rec["order"] = "match"
            else:
                rec["order"] = "differs"
                pos = next((i for i, (x, y) in enumerate(zip(ia, ib, strict=False)) if x != y), min(len(ia), len(ib)))
                found.append({"step": s, "kind": "order", "position": pos,
                              "recorded_sample": ia[pos] if pos < len(ia) else None,
                              "computed_sample": ib[pos] if pos < len(ib) else None})
        else:
            if sa.content == sb.content:
                rec["order"] = "match"
            else:
                rec["order"] = "differs"
                pos = next((i for i, (x, y) in enumerate(zip(sa.content, sb.content, strict=False)) if x != y),
                           min(len(sa.content), len(sb.content)))
                found.append({"step": s, "kind": "order", "micro_batch": pos, "evidence": sa.evidence,
                              "recorded": sa.content[pos] if pos < len(sa.content) else None,
                              "computed": sb.content[pos] if pos < len(sb.content) else None})
        if isinstance(sa.loss, float) and isinstance(sb.loss, float):
            rec.update({"loss_recorded": sa.loss, "loss": sb.loss})
            if formats.same_loss(sa.loss, sb.loss):  # as the native replay: any NaN equals any NaN
                rec["loss_match"] = True
            else:
                d = abs(sa.loss - sb.loss)
                max_diff = max(max_diff, d)
                rec.update({"loss_match": False, "loss_abs_diff": d})
                found.append({"step": s, "kind": "loss", "loss_recorded": sa.loss, "loss": sb.loss, "abs_diff": d,
                              "order_matched": rec["order"] == "match"})
        else:
            rec["loss"] = "not compared"
        records.append(rec)
    return records, found, max_diff


def _compare_checkpoints(a: cw.Captured, b: cw.Captured, last: int, reached: int) -> tuple[list[dict[str, Any]],
                                                                                          list[dict[str, Any]]]:
    mine = {(e.get("step"), e.get("path")): e.get("sha256") for e in b.checkpoints}
    records, found = [], []
    for e in sorted(a.checkpoints, key=lambda x: (x.get("step", 0), str(x.get("path")))):
        step, path = e.get("step"), e.get("path")
        if not isinstance(step, int) or step > last:
            continue
        got = mine.get((step, path))
        if got is None:
            if step <= reached:
                found.append({"step": step, "kind": "checkpoint missing", "path": path})
            continue
        match = got == e.get("sha256")
        records.append({"step": step, "checkpoint": path, "sha256_recorded": e.get("sha256"), "sha256": got,
                        "checkpoint_match": match})
        if not match:
            found.append({"step": step, "kind": "checkpoint", "path": path, "expected": f"sha256:{e.get('sha256')}",
                          "actual": f"sha256:{got}"})
    return records, found


_REQUIRED: Any = object()


def _json(root: Path, rel: str, default: Any = _REQUIRED) -> Any:
    """A bundle file's JSON through reader.Bundle.of_files (bounded, a regular file, never a link);
    `default` when it is absent; Refused names a file that cannot be read."""
    files = reader.Bundle.of_files(root, [rel])
    if not files.has(rel) and default is not _REQUIRED:
        return default
    try:
        return files.json(rel)
    except reader.BundleFileError as exc:
        raise Refused(f"{root}: {exc}") from None


def _outputs(root: Path) -> dict[str, str]:
    out = {}
    for o in _json(root, OUTPUTS_INDEX, {}).get("outputs") or []:
        for f in o.get("files") or []:
            out[f"{o.get('declared')}/{f.get('path')}"] = f.get("sha256")
    return out


def _code_files(root: Path, ignore: list[str]) -> dict[str, str]:
    files = _json(root, formats.CODE_JSON, {}).get("files") or {}
    return {k: v for k, v in files.items()
            if not any(k == p or k.startswith(p.rstrip("/") + "/") for p in ignore)}


def _seed_calls(c: cw.Captured) -> list[tuple[str, Any]]:
    return [(str(s.get("function")), s.get("value")) for s in c.seeds]


def _threads(facts: dict[str, Any]) -> dict[str, Any]:
    return {"num_threads": facts.get("num_threads"), "num_interop_threads": facts.get("num_interop_threads")}


def reproduce_wrapped(root: Path, digest: str, src: Path, workdir: Path, opts: Options, say: Say,
                      t0: float) -> Any:
    """Reproduce the wrapped bundle `root` (already audited; `digest` its root digest) in `workdir`;
    returns a provenance.reproduce.Outcome."""
    from provenance.reproduce import Outcome

    if opts.from_step is not None:
        raise Refused("--from-step: a wrapped command cannot be resumed from a checkpoint by prov reproduce; "
                        "it re-runs whole")
    if opts.sandbox:
        raise Refused("--sandbox: not implemented for a wrapped command (prov run) yet")
    if opts.sets:
        raise Refused("--set: a wrapped command takes no key=value config; use --args \"...\" to change its "
                        "arguments")
    rec = _json(root, COMMAND_JSON)
    run = _json(root, formats.RUN_JSON)
    command = list(rec.get("command") or [])
    if not command or not all(isinstance(a, str) for a in command):
        raise Refused(f"{root}: {COMMAND_JSON} does not record the command")
    if not (root / formats.CODE_SNAPSHOT).is_file():
        raise Refused(f"{root}: {formats.CODE_SNAPSHOT} is missing: the code that ran is not in the bundle")
    orig = cw.read(root)
    if not orig.steps:
        raise Refused(f"{root}: the capture recorded no optimizer step; there is nothing to compare")
    last_recorded = max(orig.steps)
    last = last_recorded if opts.steps is None else min(last_recorded, opts.steps)
    cfg = _json(root, formats.CONFIG_JSON).get("config") or {}
    data_args = [str(d) for d in cfg.get("data") or []]
    output_args = [str(o) for o in cfg.get("outputs") or []]
    say(f"original: {run.get('run_id')} ({run.get('status')}, a wrapped command: {shlex.join(command)}; "
        f"{len(orig.steps)} captured steps, {len(orig.checkpoints)} checkpoint files); checking steps 1–{last}")

    # 1. code
    code_dir = workdir / "code"
    if opts.code is not None:
        folder = Path(opts.code).resolve()
        if not folder.is_dir():
            raise Refused(f"--code {opts.code}: not a folder")
        tar, where = capture_code(folder).snapshot, f"--code {folder}"
    else:
        snap = reader.Bundle.of_files(root, [formats.CODE_SNAPSHOT])  # a regular file (checked above)
        tar, where = snap.read_bytes(formats.CODE_SNAPSHOT, snap.size(formats.CODE_SNAPSHOT)), \
            "the bundle's source snapshot"
    code_dir.mkdir(parents=True)
    try:
        digests = materialise_snapshot(tar, code_dir)
    except (ValueError, OSError) as exc:
        raise Refused(f"{where}: cannot be materialised: {exc}") from None
    say(f"code: {len(digests)} files from {where}, in {code_dir}")
    cwd_rel = str(rec.get("cwd_in_code") or ".")
    if PurePath(cwd_rel).is_absolute() or ".." in PurePath(cwd_rel).parts:
        raise Refused(f"{COMMAND_JSON}: cwd_in_code {cwd_rel!r} is not a relative path inside the code")
    run_dir = (code_dir / cwd_rel).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)

    # 2. data, at the paths the command was given
    staged = []
    for text in data_args:
        name, sep, path = text.partition("=")
        man = None
        for cand in ([name] if sep and name and "/" not in name else []) + [PurePath(path if sep else text).name]:
            m = root / formats.DATA_DIR / cand / "manifest.json"
            if m.is_file():
                man = _json(root, m.relative_to(root).as_posix())
                break
        given = path if sep and man is not None and name == man.get("name") else text
        if man is None:
            raise Refused(f"--data {text}: the original has no data manifest for it")
        source = man.get("source") or {}
        recorded_root = Path(str(source.get("local_path") or given))
        recorded_path = Path(str(source.get("path") or recorded_root))
        try:
            offset = recorded_path.relative_to(recorded_root).parts  # () for a folder, (name,) for one file
        except ValueError:
            offset = ()
        files = [e for e in man.get("files", []) if isinstance(e, dict) and isinstance(e.get("path"), str)]
        candidates = []
        if opts.data_root is not None:
            candidates += [Path(opts.data_root) / PurePath(given).name, Path(opts.data_root)]
        if isinstance(man.get("bundled_files"), str):
            candidates.append(root / man["bundled_files"])
        candidates.append(recorded_root)
        folder = next((c for c in candidates if files and all((c / e["path"]).is_file() for e in files)), None)
        if folder is None:
            raise Refused(f"dataset '{man.get('name')}': its files were not found (looked in "
                            f"{', '.join(str(c) for c in candidates)}). Pass --data-root DIR.")
        for e in files:
            p = folder / e["path"]
            hexd = sha256_file(p)
            if hexd != e.get("sha256"):
                raise Refused(f"dataset '{man.get('name')}': file {e['path']} ({p}) does not match the original's "
                                f"data manifest: expected sha256:{e.get('sha256')} ({e.get('size')} bytes), found "
                                f"sha256:{hexd} ({p.stat().st_size} bytes)", dataset=man.get("name"), file=e["path"])
        target = Path(given) if PurePath(given).is_absolute() else run_dir / given
        dest_root = target
        for _ in offset:
            dest_root = dest_root.parent
        for e in files:
            src_file, dst = folder / e["path"], dest_root / e["path"]
            if not dst.exists() or dst.resolve() != src_file.resolve():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src_file, dst)
        staged.append({"dataset": man.get("name"), "given": given, "from": str(folder), "files": len(files),
                       "verified_before_run": True})
        say(f"data: {man.get('name')}: {len(files)} files from {folder}, every file matches the manifest, "
            f"placed at {given}")
    for o in output_args:  # outputs of the original that the snapshot may hold: the command writes them anew
        p = run_dir / o
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
    _git_isolate(code_dir)
    top = git_toplevel(code_dir)
    if top is not None and top.resolve() != code_dir.resolve():
        raise Refused(f"the work folder {workdir} lies inside the git repository {top}; choose --workdir outside")

    # 3. the command
    new_command = list(command)
    if _is_python(new_command[0]):
        new_command[0] = opts.python
    at = _script_index(command)
    if opts.args is not None:
        new_command = new_command[:at] + shlex.split(opts.args)
    args_differ = new_command[at:] != command[at:]
    if args_differ:
        say(f"arguments: {shlex.join(command[at:])} → {shlex.join(new_command[at:])} "
            "(no bitwise claim across a difference)")
    runs_dir = workdir / "runs"
    prov_cmd = [opts.python, "-m", "provenance.cli", "run", "--runs-dir", str(runs_dir),
                "--name", str(run.get("name") or "reproduction")]
    data_layouts = cfg.get("data_layouts") if isinstance(cfg.get("data_layouts"), list) else []
    for i, d in enumerate(data_args):
        prov_cmd += ["--data", d]
        if i < len(data_layouts) and isinstance(data_layouts[i], str):
            prov_cmd += ["--data-layout", data_layouts[i]]  # the layout the original declared
    for o in output_args:
        prov_cmd += ["--outputs", o]
    prov_cmd += ["--", *new_command]
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "DVC_NO_ANALYTICS": "1",
                "PYTHONDONTWRITEBYTECODE": "1"})
    for k in ("PROV_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "PROV_CAPTURE", "PROV_REPLAY"):
        env.pop(k, None)
    recorded_env = _json(root, formats.ENV_JSON, {})
    rvars = recorded_env.get("env_vars") or {}
    for k in NUMERIC_ENV_VARS:
        if k in rvars:
            env[k] = str(rvars[k])
        else:
            env.pop(k, None)
    if recorded_env.get("pythonhashseed") is not None:
        env["PYTHONHASHSEED"] = str(recorded_env["pythonhashseed"])
    say("running: " + shlex.join(new_command))
    say(f"  in {run_dir}, under prov run (the same capture)")
    t_run = time.monotonic()
    log_path = workdir / "training.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(prov_cmd, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if opts.echo is not None:
                opts.echo(line.decode(errors="replace").rstrip("\n"))
        rc = proc.wait(timeout=opts.timeout)
    train_wall = time.monotonic() - t_run
    found_runs = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    if not found_runs:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise Refused(f"prov run exited with status {rc} and wrote no bundle. Last lines:\n  " + "\n  ".join(tail),
                        exit_status=rc)
    repro = found_runs[-1]
    new = cw.read(repro)
    new_run = _json(repro, formats.RUN_JSON)
    new_rec = _json(repro, COMMAND_JSON, {})

    # 4. compare
    reached = max(new.steps) if new.steps else 0
    step_recs, step_div, max_diff = _compare_steps(orig, new, last)
    ckpt_recs, ckpt_div = _compare_checkpoints(orig, new, last, reached)
    outs_a, outs_b = _outputs(root), _outputs(repro)
    out_div = [{"step": last, "kind": "output", "path": k, "expected": f"sha256:{v}",
                "actual": f"sha256:{outs_b.get(k)}" if outs_b.get(k) else None}
               for k, v in sorted(outs_a.items()) if outs_b.get(k) != v] if opts.steps is None else []
    first = first_divergence([*step_div, *ckpt_div]) or (out_div[0] if out_div else None)

    ignore = [*data_args, *output_args, "runs"]
    files_a, files_b = _code_files(root, ignore), _code_files(repro, ignore)
    code_diff = sorted(k for k in set(files_a) | set(files_b) if files_a.get(k) != files_b.get(k))
    seeds_a, seeds_b = _seed_calls(orig), _seed_calls(new)
    env_a = recorded_env
    env_b = _json(repro, formats.ENV_JSON, {})
    env_diffs = [d for d in pdiff.diff_env(env_a, env_b, _threads(orig.facts), _threads(new.facts))
                 if d.get("significant") and d.get("category") != "env_vars"]
    causes: list[dict[str, Any]] = []
    if code_diff:
        causes.append({"kind": "code", "file": code_diff[0], "files": code_diff[:20],
                       "summary": f"code differs: {', '.join(code_diff[:5])}"})
    if args_differ:
        causes.append({"kind": "arguments", "a": command[at:], "b": new_command[at:],
                       "summary": f"arguments {shlex.join(command[at:])} → {shlex.join(new_command[at:])}"})
    if seeds_a != seeds_b:
        pos = next((i for i, (x, y) in enumerate(zip(seeds_a, seeds_b, strict=False)) if x != y),
                   min(len(seeds_a), len(seeds_b)))
        fa = seeds_a[pos] if pos < len(seeds_a) else (None, None)
        fb = seeds_b[pos] if pos < len(seeds_b) else (None, None)
        seed = {"kind": "seed", "function": fa[0] or fb[0], "a": fa[1], "b": fb[1],
                "summary": f"seed {fa[0] or fb[0]} {fa[1]} → {fb[1]}"}
        if args_differ:  # the arguments set another seed: say so in the arguments' cause
            causes[-1]["seed"] = {k: seed[k] for k in ("function", "a", "b")}
            causes[-1]["summary"] += f" ({seed['summary']})"
        causes.append(seed)
    for d in env_diffs:
        causes.append({"kind": "environment", "what": pdiff.env_line(d).rsplit(" ", 3)[0], "a": d.get("a"),
                       "b": d.get("b"), "summary": pdiff.env_line(d)})
    if first is not None and not causes:
        causes.append({"kind": "unexplained", "summary": "no recorded difference explains it (code, arguments, "
                       "seeds, environment and data are the same): nondeterministic kernels, or an input the "
                       "command reads that was not declared with --data"})
    complete = reached >= last and (opts.steps is not None or rc == int(run.get("exit_status") or 0))
    if first is not None:
        verdict, exit_status = DIVERGED, EXIT_DIVERGED
        cause_txt = causes[0]["summary"] if causes else "unknown"
        headline = f"diverged at step {first['step']} ({first['kind']}): {cause_txt}"
    elif not complete:
        verdict, exit_status = INCOMPLETE, EXIT_DIVERGED
        headline = (f"incomplete: the reproduction reached step {reached} of {last} "
                    f"(prov run exited with status {rc})")
    elif causes:
        verdict, exit_status = NOT_CLAIMED, EXIT_DIVERGED
        headline = f"{NOT_CLAIMED}: every step matched, but {causes[0]['summary']}"
    else:
        verdict, exit_status = BITWISE, EXIT_REPRODUCED
        headline = (f"{BITWISE}: {len(step_recs)} steps (1–{last}): every step's data order "
                    f"({', '.join(sorted({r['evidence'] for r in step_recs}))}) and loss, "
                    f"{len(ckpt_recs)} checkpoint digests and {len(outs_a)} output digests")
    divergences = {"order": sum(1 for d in step_div if d["kind"] == "order"),
                   "loss": sum(1 for d in step_div if d["kind"] == "loss"),
                   "checkpoint": len(ckpt_div), "output": len(out_div)}
    summary = {"schema": SUMMARY_SCHEMA, "original": {"root_digest": digest, "run_id": run.get("run_id")},
               "steps_checked": len(step_recs), "first_step": 1, "last_step": last, "steps_expected": last,
               "checkpoints_checked": len(ckpt_recs), "divergences": divergences, "first_divergence": first,
               "max_loss_abs_diff": max_diff, "bitwise": verdict == BITWISE, "wrapped": True}
    report = Report(
        verdict=verdict, exit_status=exit_status, headline=headline, bitwise=verdict == BITWISE,
        first_divergence=first, cause=causes[0] if causes else None, other_causes=causes[1:],
        scope={"first_step": 1, "last_step": last, "steps_checked": len(step_recs),
               "checkpoints_checked": len(ckpt_recs), "outputs_checked": len(outs_a), "from_step": None},
        original={"run_id": run.get("run_id"), "root_digest": digest, "path": str(src)},
        reproduction={"run_id": new_run.get("run_id")},
        wrapped={"command": command, "reproduction_command": new_command, "cwd_in_code": cwd_rel,
                 "exit_status": rc, "original_exit_status": run.get("exit_status"),
                 "evidence": new_run.get("capture", {}).get("evidence")},
        environment={"differences": env_diffs, "strict": bool(opts.strict_env)},
        overrides={"args": opts.args, "code": str(opts.code) if opts.code else None,
                   "data_root": str(opts.data_root) if opts.data_root else None},
        data=staged, command=prov_cmd, training_exit_status=rc,
        durations={"original_s": rec.get("wall_s"), "reproduction_s": new_rec.get("wall_s"),
                   "training_wall_s": round(train_wall, 3), "total_wall_s": round(time.monotonic() - t0, 3)},
        replay_summary=summary)
    root_digest = _reseal(repro, run, digest, step_recs + ckpt_recs, summary, report)
    return Outcome(exit_status, verdict, headline, report, bundle=repro, root_digest=root_digest, workdir=workdir)


def _reseal(repro: Path, orig_run: dict[str, Any], digest: str, records: list[dict[str, Any]],
            summary: dict[str, Any], report: Report) -> str:
    from provenance.audit import AuditRefused, audit

    with folder_lock(repro):
        try:
            integrity = audit(repro).integrity
        except AuditRefused as exc:
            raise RuntimeError(f"{repro}: the reproduction's own bundle was refused by the audit: {exc}") from None
        if not integrity.ok:
            raise RuntimeError(f"{repro}: the reproduction's own bundle does not match its seal; not re-sealed")
        info = _json(repro, formats.RUN_JSON)
        info["reproduces"] = {"run_id": orig_run.get("run_id"), "root_digest": digest}
        write_run_info(repro, info)
        write_reproduction_steps(repro, records)
        write_reproduction_summary(repro, summary)
        write_reproduction_report(repro, report.to_dict())
        return seal_folder_locked(repro)
