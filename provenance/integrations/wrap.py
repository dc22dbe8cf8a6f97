"""`prov run -- COMMAND ...`: run any unmodified training command as a child and seal its bundle.

The wrapper is a Run like any other: it captures the code (the git repository the
command runs in, or a snapshot of the folder), the environment and the declared data
before the command starts, and tees fds 1 and 2, which the child inherits, so the
child's stdout and stderr land in logs/stdout.log and logs/stderr.log. The child runs in
its own process group; SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 sent to the wrapper
are forwarded to that group. When the child ends, the declared outputs are copied into
the bundle and hashed (model and checkpoint files recognised by their format), the data
is checked for changes, command.json records the exit status, signals and timings, and
the bundle is sealed with the child's status:

    exit 0                               completed
    exit N > 0                           failed (interrupted if a signal was forwarded)
    killed by SIGINT/SIGTERM/SIGHUP,     interrupted
      or by any signal that was forwarded
    killed by another signal (SIGKILL    failed
      from the OOM killer, SIGSEGV, ...)

The wrapper exits with the child's status (128 + N when the child was killed by signal N).
The wrapper changes the command's environment only by PYTHONUNBUFFERED=1 (unless set),
PROV_WRAPPER_RUN (the bundle's path) and, unless capture=False, the capture layer's
PROV_CAPTURE and PYTHONPATH (provenance.capture.inject), which command.json lists. With
the capture, the command's Python processes record its steps, data order, exact losses,
seeds and checkpoints into the bundle, and run.json's seeds and determinism settings are
the command's (provenance.capture.wrapped.finalize).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from provenance import formats
from provenance.capture import inject, wrapped
from provenance.capture.code import git_toplevel
from provenance.capture.data import DatasetSpec, declare_layout
from provenance.hashing import sha256_file
from provenance.integrations.layout import COMMAND_JSON, COMMAND_SCHEMA, OUTPUTS_INDEX
from provenance.integrations.outputs import collect_outputs, snapshot_stats
from provenance.integrations.sources import local_dataset
from provenance.run import Callback, Run, start_run

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
_INTERRUPTING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def default_name(command: Sequence[str]) -> str:
    """The script's name (train.py -> train), or the program's."""
    for arg in command[1:]:
        if arg.endswith(".py"):
            return Path(arg).stem
    for i, arg in enumerate(command[:-1]):
        if arg == "-m":
            return command[i + 1].rsplit(".", 1)[-1]
    return Path(command[0]).name


def parse_data_arg(text: str) -> tuple[str | None, str]:
    """'NAME=PATH' or 'PATH'."""
    name, sep, path = text.partition("=")
    if sep and name and "/" not in name and not Path(text).exists():
        return name, path
    return None, text


def data_specs(data: Sequence[str], cwd: Path, in_bundle: bool,
               layouts: Sequence[str | None] = ()) -> list[DatasetSpec]:
    """One DatasetSpec a `--data [NAME=]PATH`; layouts[i] (a `--data-layout` string, or None) declares
    what a sample id of data[i] means, recorded in its manifest as a config-declared layout is."""
    taken: set[str] = set()
    specs = []
    for i, text in enumerate(data):
        name, path = parse_data_arg(text)
        p = Path(path) if Path(path).is_absolute() else cwd / path
        spec = local_dataset(p, name, in_bundle=in_bundle, taken=taken)
        lay = layouts[i] if i < len(layouts) else None
        if lay is not None:
            try:
                declare_layout(spec, lay)
            except ValueError as exc:
                raise ValueError(f"--data-layout for --data {text}: {exc}") from None
        specs.append(spec)
    return specs


def _data_changes(specs: Sequence[DatasetSpec], before: dict[str, tuple[int, int]],
                  manifests: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Files of the declared data that changed while the command ran (re-hashed only if their stat changed)."""
    changed = []
    for spec in specs:
        digests = {e["path"]: e["sha256"] for e in manifests[spec.name]["files"]}
        for rel in spec.files:
            p = spec.root / rel
            if not p.is_file():
                changed.append({"dataset": spec.name, "path": rel, "change": "deleted"})
                continue
            st = p.stat()
            if before.get(str(p)) == (st.st_size, st.st_mtime_ns):
                continue
            hexd = sha256_file(p)
            if hexd != digests.get(rel):
                changed.append({"dataset": spec.name, "path": rel, "change": "modified",
                                "sha256_before": digests.get(rel), "sha256_after": hexd})
    return changed


class _Forwarder:
    """Signal handlers that pass signals on to the child's process group."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.received: list[dict[str, Any]] = []
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for sig in FORWARDED:
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        rec: dict[str, Any] = {"signal": signal.Signals(signum).name, "time": formats.utc_now()}
        self.received.append(rec)
        if self.pid is None:  # no child yet: behave as the run would without the wrapper
            old = self._old.get(signum)
            if callable(old):
                old(signum, frame)
            return
        try:
            os.killpg(self.pid, signum)
            rec["forwarded_to"] = "process group"
        except ProcessLookupError:
            rec["forwarded_to"] = None


def _wait(pid: int) -> tuple[int, Any]:
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            return status, usage
        except ChildProcessError:  # reaped elsewhere: nothing more to learn
            return 0, None


def wrap(command: Sequence[str], *, name: str | None = None, data: Sequence[str] = (),
         outputs: Sequence[str] = (), runs_dir: str | os.PathLike[str] = "runs",
         cwd: str | os.PathLike[str] | None = None,
         data_in_bundle: bool = False, copy_outputs: bool = True, license: str | None = None,
         callbacks: Sequence[Callback] = (), capture: bool = True,
         data_layouts: Sequence[str | None] = ()) -> tuple[int, Run]:
    """Run `command` as a child inside a Run; return (the child's exit status, the sealed Run).

    data_layouts[i] declares the layout of data[i] (`token-stream:uint16:1024`, `documents`; None: lines)."""
    if not command:
        raise ValueError("no command to run (usage: prov run [options] -- COMMAND ...)")
    command = list(command)
    work = Path(cwd or Path.cwd()).resolve()
    specs = data_specs(data, work, data_in_bundle, data_layouts)
    config: dict[str, Any] = {"command": command, "data": list(data), "outputs": list(outputs)}
    if any(lay is not None for lay in data_layouts):
        config["data_layouts"] = [data_layouts[i] if i < len(data_layouts) else None for i in range(len(data))]
    data_stats = {str(s.root / f): ((s.root / f).stat().st_size, (s.root / f).stat().st_mtime_ns)
                  for s in specs for f in s.files}
    out_paths = [(work / o).resolve() for o in outputs]
    before = snapshot_stats(out_paths)
    fwd = _Forwarder()
    record: dict[str, Any] = {"schema": COMMAND_SCHEMA, "command": command, "cwd_name": work.name,
                              "cwd_in_code": _cwd_in_code(work)}
    sampler = {"kind": "captured", "evidence": formats.capture_paths(0).order} if capture else None
    run = start_run(config, name=name or default_name(command), runs_dir=runs_dir, seed=0, threads=None,
                    deterministic=False, datasets=specs, argv=command, code_root=work, license=license,
                    callbacks=callbacks, sampler=sampler)
    # the code snapshot never takes in the runs folder (excluded by the run), declared outputs or data
    run.code_exclude = [*out_paths, *((work / parse_data_arg(d)[1]).resolve() for d in data)]
    with run:
        assert run.writer is not None
        env = dict(os.environ)
        added = {"PROV_WRAPPER_RUN": str(run.root.resolve())}
        if "PYTHONUNBUFFERED" not in env:
            added["PYTHONUNBUFFERED"] = "1"
        if capture:
            added.update(inject.child_env(run.root, env))
        env.update(added)
        record["env_added"] = added
        fwd.install()
        started = formats.utc_now()
        t0 = time.monotonic()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                child = subprocess.Popen(command, cwd=work, env=env, process_group=0)
            except OSError as exc:
                record.update({"started_at": started, "error": f"{type(exc).__name__}: {exc}"})
                run.writer.write_json(COMMAND_JSON, record)
                print(f"prov run: cannot start {command[0]!r}: {exc}", file=sys.stderr)
                run.finish("failed", 127, {"type": type(exc).__name__, "message": str(exc), "traceback": ""})
                return 127, run
            fwd.pid = child.pid
            run._event("child_started", pid=child.pid)
            wait_status, usage = _wait(child.pid)
            child.returncode = os.waitstatus_to_exitcode(wait_status) if usage is not None else 0
        finally:
            fwd.restore()
        wall = time.monotonic() - t0
        rc = child.returncode
        forwarded = [r for r in fwd.received if r.get("forwarded_to")]
        if rc < 0:
            sig = signal.Signals(-rc)
            exit_status = 128 + sig
            status = "interrupted" if sig in _INTERRUPTING or forwarded else "failed"
            message = f"the command was killed by {sig.name}"
        else:
            exit_status = rc
            status = "completed" if rc == 0 else ("interrupted" if forwarded else "failed")
            message = f"the command exited with status {rc}"
        record.update({
            "pid": child.pid, "started_at": started, "ended_at": formats.utc_now(), "wall_s": round(wall, 3),
            "returncode": rc, "exit_status": exit_status, "signal": signal.Signals(-rc).name if rc < 0 else None,
            "signals_received": fwd.received,
        })
        if usage is not None:
            record["rusage"] = {"user_s": round(usage.ru_utime, 3), "sys_s": round(usage.ru_stime, 3),
                                "max_rss_bytes": usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)}
        run._event("child_exited", returncode=rc, exit_status=exit_status, wall_s=round(wall, 3))
        if outputs:
            index = collect_outputs(run.writer, list(outputs), work, before, copy=copy_outputs)
            record["outputs"] = {"index": OUTPUTS_INDEX, "model_files": index["model_files"]}
        if specs:
            manifests = {s.name: _manifest_of(run, s) for s in specs}
            changes = _data_changes(specs, data_stats, manifests)
            record["data_changed_during_run"] = changes
            for ch in changes:
                print(f"prov run: warning: data {ch['dataset']}/{ch['path']} was {ch['change']} while the command ran",
                      file=sys.stderr)
        if capture:
            _finish_capture(run, record)
        run.writer.write_json(COMMAND_JSON, record)
        error = None if status == "completed" else {"type": "CommandFailed" if status == "failed"
                                                    else "CommandInterrupted", "message": message, "traceback": ""}
        run.finish(status, exit_status, error)
    return exit_status, run


def _cwd_in_code(work: Path) -> str:
    """The working folder relative to the code snapshot's root (the git top level, or the folder itself):
    where a reproduction runs the command, so that its relative paths resolve."""
    top = git_toplevel(work)
    if top is None:
        return "."
    try:
        return work.relative_to(top.resolve()).as_posix() or "."
    except ValueError:
        return "."


def _finish_capture(run: Run, record: dict[str, Any]) -> None:
    """Make the captured records whole; run.json gets the command's own seeds and determinism."""
    try:
        updates = wrapped.finalize(run.root)
    except (OSError, ValueError) as exc:
        run._event("observer_failed", observer="prov-capture", hook="finalize", error=repr(exc))
        return
    if not updates:
        record["capture"] = {"steps": 0, "note": "no Python process of the command stepped an optimizer"}
        return
    for ev in formats.read_jsonl(run.root / formats.capture_paths(0).events):
        if ev.get("event") == "observer_failed":
            run._event("observer_failed", **{k: v for k, v in ev.items() if k not in ("time", "event")})
    record["capture"] = updates["capture"]
    run._run_info.update(updates)


def _manifest_of(run: Run, spec: DatasetSpec) -> dict[str, Any]:
    assert run.writer is not None
    return formats.read_json(run.writer.path(f"{formats.DATA_DIR}/{spec.name}/manifest.json"))
