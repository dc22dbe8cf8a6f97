"""The run lifecycle: capture on entry, record while training, seal on exit however it ends.

A small core that composes its parts (as torchtitan and OLMo-core compose a trainer):

* RankLayout (ranks.py): which rank writes which file, one run id, where the ranks meet;
* Recorder (recorder.py): events, metrics, evaluations, data order, checkpoints and their index, notes;
* OutputCapture and SignalGuard (guard.py): stdout/stderr at the fd level; SIGTERM/SIGINT seal as interrupted;
* components (callback.Component), e.g. the replay of a reproduction (replaying.py), which see every
  hook first and may steer a step's batch; then the user's callbacks (callback.Callback), contained.

Everything that can fail before training (code, environment, data verification)
runs before the run folder is created: a failure there is loud and writes nothing.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from provenance import formats
from provenance.bundle import BundleError, BundleWriter, write_run_info
from provenance.capture.code import capture_code, git_toplevel
from provenance.capture.data import DatasetSpec, commitment, verified_manifest
from provenance.capture.env import capture_env, imported_distributions, training_device
from provenance.capture.process import process_identity
from provenance.capture.state import apply_determinism, seed_everything
from provenance.config import ConfigError
from provenance.hashing import sha256_file
from provenance.redact import Redactor
from provenance.replay import StopRun
from provenance.run.callback import Callback, Component
from provenance.run.guard import OutputCapture, RunInterrupted, SignalGuard
from provenance.run.ranks import RankLayout
from provenance.run.recorder import Recorder
from provenance.run.relaunch import (
    AttemptMatch,
    attempt_identity,
    elastic_facts,
    find_previous_attempt,
    latest_checkpoint,
    seal_if_left_running,
)
from provenance.run.replaying import ReplayComponent

# files and folders only the run itself writes: run.add_file refuses them
_RESERVED = frozenset({formats.RUN_JSON, formats.CONFIG_JSON, formats.MANIFEST, formats.NOTES,
                       formats.CHECKPOINT_INDEX, formats.METRICS, formats.EVALS, formats.EVENTS,
                       formats.STDOUT, formats.STDERR, formats.LOCK})
_RESERVED_DIRS = ("code/", "env/", "order/", "checkpoints/", "reproduction/", "release/", f"{formats.MODEL_DIR}/",
                  f"{formats.DATA_DIR}/")


class ResumeRefused(ConfigError):
    """A resume the record cannot continue: a checkpoint that does not match its index, or a change
    (world size, data, config) that was not allowed. The message names the file or the key."""


# config keys that differ between segments by nature (where the run is written, what it resumes from)
# and where the inputs lie (their content is compared: the data manifests, the checkpoint's digest)
_RESUME_KEYS = frozenset({"run.runs_dir", "run.allow_resume_change", "run.name", "data.root", "data.path",
                          "data.manifest", "tokenizer.path"})


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} of a nested config (lists stay values)."""
    if not isinstance(obj, dict):
        return {prefix[:-1]: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def _local_documents(documents: dict[str, str]) -> dict[str, tuple[Path, str]]:
    """Documents given as local files: {key: (source path, bundle path)}. URLs stay links.

    A named file that does not exist is an error before anything is written.
    """
    out = {}
    for key, value in documents.items():
        if "://" in value:
            continue
        src = Path(value)
        if not src.is_file():
            raise ConfigError(f"run.documents.{key}: file {value} does not exist")
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in key)
        out[key] = (src, f"documents/{safe}{src.suffix}")
    return out


# where start_run writes the bundle and its thread count (prov reproduce sets them: --calibrate's thread count
# for a script whose config has no run.threads); each wins over its argument
RUNS_DIR_ENV, THREADS_ENV = formats.RUNS_DIR_ENV, formats.THREADS_ENV


def _threads(given: int | None) -> int | None:
    """The thread count to run at: $PROV_THREADS where set (a positive integer), else `given`."""
    text = os.environ.get(THREADS_ENV)
    if not text:
        return given
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"{THREADS_ENV}={text!r}: not a positive integer (the thread count start_run sets)")
    return int(text)


_INTERPRETER_OPTIONS_WITH_VALUE = ("-X", "-W", "--check-hash-based-pycs")


def command_line(code_root: str | os.PathLike[str] | None = None) -> list[str]:
    """The real command line of this process, as `prov reproduce` can run it again:
    [this interpreter, "-m", module, args...] or [this interpreter, script, args...], with a script
    inside the code root (the git checkout, else the folder) named relative to it, as in the snapshot.
    Interpreter options (-u, -X dev, ...) are left out: a reproduction picks its own interpreter."""
    orig = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    args, i = orig[1:], 0
    while i < len(args) and args[i].startswith("-") and args[i] not in ("-m", "-c", "-"):
        i += 2 if args[i] in _INTERPRETER_OPTIONS_WITH_VALUE else 1
    rest = args[i:]
    if rest and rest[0] not in ("-m", "-c", "-"):
        script = Path(rest[0])
        start = Path(code_root or Path.cwd()).resolve()
        root = git_toplevel(start) or start
        try:
            rest[0] = script.resolve().relative_to(root).as_posix()
        except ValueError:
            pass  # a script outside the code root keeps its path
    return [sys.executable, *rest]


def _new_run_id(name: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40] or "run"
    return f"{stamp}-{safe}-{secrets.token_hex(3)}"


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        return v.item()
    return v


class Run:
    """A live run. Create it with start_run() (same arguments)."""

    def __init__(self, config: dict[str, Any], *, name: str, runs_dir: str | os.PathLike[str] = "runs",
                 seed: int = 0, threads: int | None = None, deterministic: bool = True,
                 datasets: Sequence[DatasetSpec] = (), argv: Sequence[str] | None = None,
                 code_root: str | os.PathLike[str] | None = None, license: str | None = None,
                 documents: dict[str, str] | None = None, callbacks: Sequence[Callback] = (),
                 capture_output: bool = True, sampler: dict[str, Any] | None = None,
                 run_id: str | None = None, reproduces: dict[str, Any] | None = None,
                 components: Sequence[Component] = (), purpose: str | None = None, notes: Sequence[str] = (),
                 overrides: Sequence[dict[str, Any]] = ()) -> None:
        self.config = config
        self.purpose = purpose
        self.start_notes = list(notes)
        self.overrides = [dict(o) for o in overrides]
        self.name = name
        self.runs_dir = Path(os.environ.get(RUNS_DIR_ENV) or runs_dir)
        self.seed = seed
        self.threads = _threads(threads)
        self.deterministic = deterministic
        self.datasets = list(datasets)
        self.argv = command_line(code_root) if argv is None else list(argv)
        self.code_root = code_root
        self.code_exclude: list[Path] = []  # more paths kept out of the code snapshot (`prov run --outputs`)
        self.license = license
        self.documents = dict(documents or {})
        self.callbacks = list(callbacks)
        self.capture_output = capture_output
        self.sampler = sampler or {}
        self.ranks = RankLayout()
        self.components: list[Component] = list(components)
        replay = ReplayComponent.from_env(self.ranks.rank)
        if replay is not None:
            self.components.insert(0, replay)
            if reproduces is None:
                reproduces = replay.reproduces()
        self.reproduces = reproduces
        given = run_id or os.environ.get("PROV_RUN_ID")
        self.run_id = self.ranks.agree_run_id(given or _new_run_id(name), given=bool(given))
        self.root = self.runs_dir / self.run_id
        self.elastic = elastic_facts()  # torch elastic's run id and restart count (None outside torchrun)
        self.previous_attempt: Path | None = None  # the bundle of the attempt torchrun ran before this one
        self.relaunch_match = AttemptMatch()  # how it was found (and the attempts of other jobs not linked)
        # the checkpoints run.restore loaded: {"path", "sha256" (hex of the file lineage matches: the
        # safetensors file, a DCP folder's rank-0 shard), "consumed" (run.resume_point or run.restore)}
        self.restored: list[dict[str, Any]] = []
        self.status = "created"
        self.root_digest: str | None = None
        self._env: dict[str, Any] | None = None  # env/environment.json as written at the start
        self.writer: BundleWriter | None = None
        self.recorder: Recorder | None = None
        self._output = OutputCapture()
        self._signals = SignalGuard()
        self._run_info: dict[str, Any] = {}
        self._manifests: dict[str, dict[str, Any]] = {}
        self._t0 = 0.0

    # --- rank facts (kept as attributes: integrations read them) -----------------------
    @property
    def rank(self) -> int:
        return self.ranks.rank

    @property
    def world_size(self) -> int:
        return self.ranks.world_size

    @property
    def last_step(self) -> int | None:
        """The last step logged with run.log (None before the first)."""
        return self.recorder.last_step if self.recorder is not None else None

    # --- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> Run:
        redactor = Redactor(argv=self.argv)  # secrets of the environment and of the command line
        # capture before writing anything: a failure here is loud and leaves no folder behind
        code = capture_code(self.code_root, redactor=redactor,  # never the runs, the data or declared outputs
                            exclude=[self.runs_dir, *(s.root for s in self.datasets), *self.code_exclude])
        self._components("on_prepare")
        manifests = [(spec, verified_manifest(spec)) for spec in self.datasets]
        self._manifests = {spec.name: m for spec, m in manifests}  # compared with a resumed segment's
        documents = _local_documents(self.documents)
        seed_everything(self.seed)
        determinism = apply_determinism(self.threads, self.deterministic)
        env = capture_env()

        # a relaunch of this job: same torch elastic run id, restart count one less, same world size, config
        # and command (as config.json records them: redacted), started before now
        this = attempt_identity(self.world_size, {
            "digest": formats.config_digest(redactor.obj(self.config)),
            "command_digest": formats.command_digest(redactor.obj(list(self.argv)))})
        match = self.relaunch_match = find_previous_attempt(self.runs_dir, self.elastic, this, formats.utc_now(),
                                                            exclude=self.run_id)
        prev = self.previous_attempt = match.path
        prev_sealed = seal_if_left_running(prev) if prev is not None and self.ranks.writes_shared else None
        w = self.writer = self.ranks.open_bundle(self.root, redactor)  # (the other ranks wait for that seal)
        self.recorder = Recorder(w, self.ranks, on_hashed=self._checkpoint_hashed)
        self._t0 = time.monotonic()
        self._run_info = {
            "schema": formats.BUNDLE_SCHEMA,
            "run_id": self.run_id,
            "name": self.name,
            "status": "running",
            "started_at": formats.utc_now(),
            "ended_at": None,
            "exit_status": None,
            "error": None,
            "pid": os.getpid(),
            "process": process_identity(),  # pid, start time and boot id: `prov seal` tells a reused pid apart
            "host": socket.gethostname(),
            "seed": self.seed,
            "seeds": {"python": self.seed, "numpy": self.seed % 2**32, "torch": self.seed},
            "determinism": determinism,
            "rank": self.rank,
            "world_size": self.world_size,
            "license": self.license,
            "documents": dict(self.documents),
            "reproduces": self.reproduces,
            "datasets": [spec.name for spec in self.datasets],
            # each dataset's root as the script declared it: a reproduction stages it at $PROV_DATA_ROOT/<root>
            "data_roots": {spec.name: spec.declared_root or Path(spec.root).as_posix() for spec in self.datasets},
        }
        facts = self.ranks.facts()
        if facts is not None:
            self._run_info["distributed"] = facts
        if self.elastic is not None:
            self._run_info["torchelastic"] = self.elastic
        if prev is not None:  # relaunched by torchrun after a failure: the previous attempt, as it ended
            pinfo = formats.read_json(prev / formats.RUN_JSON)
            perr = pinfo.get("error") or {}
            self._run_info["relaunch"] = {
                "restart_count": self.elastic["restart_count"] if self.elastic else None,
                "previous": {"run_id": pinfo.get("run_id"), "status": pinfo.get("status"), "path": str(prev),
                             "error": perr.get("message"), "error_type": perr.get("type"),
                             "sealed_by_relaunch": prev_sealed is not None},
                "match": match.record()}
        elif match.not_linked:  # only attempts of other jobs share the torch elastic run id: none is linked
            self._run_info["relaunch"] = {"restart_count": self.elastic["restart_count"] if self.elastic else None,
                                          "previous": None, "match": match.record()}
        if self.ranks.writes_shared:
            argv = w.redactor.obj(list(self.argv))  # as written (secrets redacted): what the digest binds
            # strict JSON: a NaN/inf is written by name ("Infinity"), as its digest covers it; non_finite says
            # which of those strings are numbers, so a reader gets the floats back (ConfigRecord.values)
            record: dict[str, Any] = {"config": self.config,
                                      "digest": formats.config_digest(redactor.obj(self.config)),
                                      "argv": argv, "command_digest": formats.command_digest(argv),
                                      "cwd_name": Path.cwd().name}
            non_finite = formats.non_finite_paths(self.config)
            if non_finite:
                record["non_finite"] = non_finite
            w.write_json(formats.CONFIG_JSON, record)
            w.write_json(formats.CODE_JSON, code.facts)
            w.write_bytes(formats.CODE_DIFF, code.diff, redact=True)
            w.write_bytes(formats.CODE_SNAPSHOT, code.snapshot)
            w.write_json(formats.ENV_JSON, env)
            self._env = env
            for spec, manifest in manifests:
                self._write_dataset(spec, manifest)
            for key, (src, rel) in documents.items():  # shipped, so that an audit can check them
                w.copy_file(src, rel)
                self._run_info["documents"][key] = rel
                self._run_info.setdefault("documents_source", {})[key] = str(src)
            self._write_run_json()
        self.recorder.order_header(self.sampler, self.datasets[0].name if self.datasets else "")
        if self.capture_output:
            self._output.start({1: w.log(self.ranks.per_rank(formats.STDOUT)),
                                2: w.log(self.ranks.per_rank(formats.STDERR))})
        self._signals.install()
        self.status = "running"
        self.event("started")
        if self.ranks.writes_shared:
            self._decisions_at_start()
            self._relaunch_note()
        self._notify("on_start")
        return self

    def _relaunch_note(self) -> None:
        """A relaunched run whose previous attempt left no valid checkpoint starts again from step 0: say so
        (with a checkpoint, the note comes with run.restore, from the step it continues)."""
        rel = self._run_info.get("relaunch")
        if rel is None:
            return
        how = self.relaunch_match.text()
        if self.previous_attempt is None:
            self.note(f"relaunched by torchrun (restart {rel['restart_count']}), but no earlier attempt of this job is "
                      f"in {self.runs_dir}{how}; this run starts again from step 0", category="restart", step=0,
                      details={"from_step": 0, "checkpoint": None, "previous": None,
                               "relaunch": {"restart_count": rel["restart_count"], "match": rel["match"]}})
            return
        if latest_checkpoint(self.previous_attempt) is not None:
            return
        self.note(f"relaunched by torchrun (restart {rel['restart_count']}){self._previous_why(rel['previous'])}{how}; "
                  "it left no valid checkpoint, so this run starts again from step 0", category="restart", step=0,
                  details={"from_step": 0, "checkpoint": None, "previous": rel["previous"],
                           "relaunch": {"restart_count": rel["restart_count"], "match": rel["match"]}})

    @staticmethod
    def _previous_why(prev: dict[str, Any]) -> str:
        return (f"; the previous segment {prev.get('run_id')} ended {prev.get('status')}"
                + (f" ({prev.get('error_type')}: {prev.get('error')})" if prev.get("error") else "")) if prev else ""

    def resume_point(self) -> Path | None:
        """The checkpoint to continue from when torchrun relaunched this run after a failure
        (`--max-restarts`): the latest valid checkpoint of the previous attempt's bundle; None when
        this is no relaunch or the previous attempt left none. In a reproduction of such a segment,
        the checkpoint the original segment continued from. Restore it with run.restore(path, ...)."""
        replay = next((c for c in self.components if isinstance(c, ReplayComponent)), None)
        if replay is not None:
            return replay.relaunch_checkpoint()
        return latest_checkpoint(self.previous_attempt) if self.previous_attempt is not None else None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        # from here on a SIGTERM (a launcher stopping the survivors of a lost rank) is noted, not raised:
        # raised while this exception is formatted, it would escape before the bundle is sealed
        self._signals.defer()
        try:
            try:
                status, exit_status, error = self._outcome(exc_type, exc, tb)
            except BaseException as failed:  # e.g. str(exc) raised: still the failure it is, named by type/repr
                status, exit_status, error = self._outcome_fallback(exc, tb, failed)
            self.finish(status, exit_status, error)
        finally:
            # whatever raised above, the signals noted since defer() are sent again, once (finish() did, when it
            # ran to its end: then there is nothing left to send)
            self._signals.redeliver()
        return isinstance(exc, StopRun)  # a replay that checked what it was asked to ends cleanly

    def _outcome(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> tuple[str, int, dict[str, Any] | None]:
        """How the run ended, from the exception that ended it: (status, exit status, error record)."""
        if exc is None or isinstance(exc, StopRun):
            if isinstance(exc, StopRun):  # a reproduction that checked the steps asked for: no final model
                self._run_info["stopped_by_replay"] = {"after_step": self.recorder.last_step if self.recorder
                                                       else None, "why": str(exc)}
            return "completed", 0, None
        if isinstance(exc, KeyboardInterrupt):
            signum = exc.signum if isinstance(exc, RunInterrupted) else signal.SIGINT
            return "interrupted", 128 + int(signum), {
                "type": type(exc).__name__, "message": str(exc) or signal.Signals(signum).name,
                "traceback": "".join(traceback.format_exception(exc_type, exc, tb))}
        error = {"type": type(exc).__name__, "message": str(exc),
                 "traceback": "".join(traceback.format_exception(exc_type, exc, tb))}
        if self.ranks.collective_failed(exc, tb):  # a peer rank is gone (its node lost): not this rank's fault
            error["cause"] = "a collective operation failed: another rank stopped or was lost"
            return "interrupted", 1, error
        return "failed", 1, error

    @staticmethod
    def _outcome_fallback(exc: BaseException | None, tb: TracebackType | None,
                          failed: BaseException) -> tuple[str, int, dict[str, Any] | None]:
        """The outcome when formatting the exception raised: its type name and repr (never its str), the
        frames as far as they format; a failure (or an interruption) all the same."""
        name = type(exc).__name__ if exc is not None else type(failed).__name__
        try:
            message = repr(exc)
        except BaseException:
            message = f"<{name} object: str() and repr() failed>"
        try:
            frames = "".join(traceback.format_tb(tb))
        except BaseException:
            frames = ""
        text = (f"Traceback (most recent call last):\n{frames}" if frames else "") + (
            f"{name}: {message} (formatting it failed: {type(failed).__name__})\n")
        if isinstance(exc, KeyboardInterrupt):
            signum = exc.signum if isinstance(exc, RunInterrupted) else signal.SIGINT
            return "interrupted", 128 + int(signum), {"type": name, "message": message, "traceback": text}
        if exc is None or isinstance(exc, StopRun):  # only the replay's note failed: the run itself completed
            return "completed", 0, None
        return "failed", 1, {"type": name, "message": message, "traceback": text}

    def finish(self, status: str, exit_status: int, error: dict[str, Any] | None = None) -> str | None:
        """Record the end of the run and seal its bundle. Safe to call once."""
        if self.writer is None or self.recorder is None or self.status not in ("running",):
            return self.root_digest
        self.status = status
        self._signals.defer()  # a SIGTERM now (a launcher stopping survivors) waits until the seal is written
        try:
            return self._end(status, exit_status, error)
        except BaseException:
            if self._signals.deferred:  # the signal sent again below may end the process: say why first
                self._say_seal_failed()
            raise
        finally:
            # a SIGTERM/SIGINT that came while sealing (a launcher stopping this process) was only noted: the
            # bundle is sealed and on_end ran, so it is sent again now, to the handler there before the run
            self._signals.redeliver()

    def _say_seal_failed(self) -> None:
        """The error that stopped the seal, on the terminal's stderr (the captured one may be gone)."""
        text = f"prov: the run {self.run_id} did not finish sealing:\n{traceback.format_exc()}"
        fd = self._output.terminal_fd(2) if self._output.active else None
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        try:
            os.write(fd if fd is not None else 2, text.encode(errors="replace"))
        except OSError:
            pass

    def _end(self, status: str, exit_status: int, error: dict[str, Any] | None) -> str | None:
        """finish() with the signals deferred: drain, close every rank's files, meet, seal, on_end."""
        assert self.writer is not None and self.recorder is not None
        self.recorder.drain(completed=status == "completed")
        if error is not None:
            sys.stderr.write(error["traceback"])
        self._notify("on_finish")
        self._output.stop()
        w = self.writer
        self._components("on_close")
        self.event(status, exit_status=exit_status)  # this rank's last record: rank 0 waits for it on every rank
        w.close_logs()  # every rank closes its own files before rank 0 seals
        lost = self.ranks.meet_before_seal(status, self.root)
        self._components("on_seal")
        if self.ranks.writes_shared:
            self._run_info.update({"status": status, "ended_at": formats.utc_now(), "exit_status": exit_status,
                                   "error": error, "duration_s": round(time.monotonic() - self._t0, 3),
                                   "last_step": self.recorder.last_step})
            if lost:  # ranks that never wrote their end event (`prov audit` names them from their own files)
                self._run_info["ranks_without_end"] = lost
            if self._env is not None:  # what the training imported, known only now (see capture.env)
                self._env[formats.IMPORTED_DISTRIBUTIONS] = imported_distributions()
                if (self.sampler or {}).get("kind") != "captured":  # a `prov run` command trains elsewhere
                    self._env[formats.TRAINING_DEVICE] = training_device()  # what it used, not what the machine has
                w.write_json(formats.ENV_JSON, self._env)
            self._write_run_json()
            alive = [r for r in lost if not self.ranks.process_gone(r)]
            # ranks still alive wait in a collective for this one (it failed alone): they end only when this
            # process exits; a detached sealer seals once they have (else they would write after the seal)
            if not (alive and self.ranks.seal_after_exit(self.root, alive)):
                self.root_digest = w.seal()
        self._notify("on_end", status, self.root_digest)
        return self.root_digest

    def _decisions_at_start(self) -> None:
        """The decisions known when the run starts, as notes at step 0: its purpose, the notes given on
        the command line, and every override that changed a key of the config file."""
        if self.purpose and self.purpose.strip():
            self.note(self.purpose.strip(), category="purpose", step=0, details={"source": "run.purpose"})
        for text in self.start_notes:
            if text.strip():
                self.note(text.strip(), category="purpose", step=0, details={"source": "command line (--note)"})
        for o in self.overrides:
            self.note(f"{o['key']} overridden on the command line: {o.get('old')!r} in the config file, "
                      f"{o.get('new')!r} in this run", category="override", step=0,
                      details={"key": o["key"], "old": o.get("old"), "new": o.get("new")})

    # --- hooks ----------------------------------------------------------------------------
    def _components(self, hook: str, *args: Any) -> None:
        for c in self.components:
            getattr(c, hook)(self, *args)

    def _notify(self, hook: str, *args: Any) -> None:
        self._components(hook, *args)
        for cb in self.callbacks:
            try:
                getattr(cb, hook)(self, *args)
            except Exception as e:  # an observer never breaks the run: contain and record
                self.event("observer_failed", observer=type(cb).__name__, hook=hook, error=repr(e))

    def _checkpoint_hashed(self, step: int, rel: str, hexd: str) -> None:
        self._components("on_checkpoint_hashed", step, rel, hexd)

    def _batch(self, step: int, ids: list[int], replaceable: bool) -> tuple[list[int], list[int]]:
        """(ids to hand back, a plain copy to record) after the components and callbacks saw the batch."""
        for c in self.components:
            replaced = c.on_batch(self, step, ids, replaceable=replaceable)
            if replaceable and replaced is not None:
                ids = replaced  # type: ignore[assignment]
        plain = list.copy(ids)  # list's own copy: a component's tracked list does not count it as read
        for cb in self.callbacks:
            try:
                cb.on_batch(self, step, list(plain))
            except Exception as e:
                self.event("observer_failed", observer=type(cb).__name__, hook="on_batch", error=repr(e))
        return ids, plain

    # --- public API for integrations -------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        """Append a lifecycle event (logs/events.jsonl, per rank in a distributed run)."""
        if self.recorder is not None:
            self.recorder.event(kind, **fields)

    _event = event  # the name integrations used before run.event was public

    def add_file(self, rel: str, source: str | os.PathLike[str] | None = None, *, data: bytes | None = None,
                 obj: Any = None, redact: bool = False, per_rank: bool = False) -> str | None:
        """Add a file to the bundle at `rel` (e.g. "integrations/x.json"): a copy of `source`, the bytes
        `data`, or `obj` as canonical JSON (always redacted). Written atomically; rewriting replaces it.

        Only rank 0 writes shared files: on other ranks this returns None, unless `per_rank` (then rank R
        writes `<stem>.rank<R><suffix>`). Returns the file's sha256 (hex). The run's own files are refused.
        """
        w = self._open_writer()
        if sum(x is not None for x in (source, data, obj)) != 1:
            raise ValueError("run.add_file: give exactly one of source, data or obj")
        if rel in _RESERVED or rel.startswith(_RESERVED_DIRS):
            raise BundleError(f"run.add_file: {rel} is written by the run itself")
        if per_rank:
            rel = self.ranks.own(rel)
        elif not self.ranks.writes_shared:
            return None
        if obj is not None:
            return w.write_json(rel, obj)
        if data is not None:
            return w.write_bytes(rel, data, redact=redact)
        src = Path(source)  # type: ignore[arg-type]
        if redact:
            return w.write_bytes(rel, src.read_bytes(), redact=True)
        return w.copy_file(src, rel)

    def append_jsonl(self, rel: str, record: dict[str, Any]) -> None:
        """Append one JSON line to a log of the bundle (redacted; rank 0 only, like add_file)."""
        w = self._open_writer()
        if rel in _RESERVED or rel.startswith(_RESERVED_DIRS):
            raise BundleError(f"run.append_jsonl: {rel} is written by the run itself")
        if self.ranks.writes_shared:
            w.log(rel).write_line(record)

    def terminal(self, fd: int = 2) -> IO[str] | None:
        """A text stream on the terminal behind stdout (1) or stderr (2), bypassing the run's capture,
        or None when that is not a terminal. For progress displays that must not end up in the logs."""
        real = self._output.terminal_fd(fd)
        real = fd if real is None else real
        try:
            if not os.isatty(real):
                return None
            return open(os.dup(real), "w", buffering=1, encoding="utf-8", errors="replace")
        except OSError:
            return None

    def _open_writer(self) -> BundleWriter:
        if self.writer is None:
            raise RuntimeError("the run is not open: use start_run(...) as a context manager")
        return self.writer

    def _rec(self) -> Recorder:
        if self.recorder is None:
            raise RuntimeError("the run is not open: use start_run(...) as a context manager")
        return self.recorder

    # --- recording ------------------------------------------------------------------------
    def _write_run_json(self) -> None:
        assert self.writer is not None
        write_run_info(self.writer, self._run_info)

    def _write_dataset(self, spec: DatasetSpec, manifest: dict[str, Any]) -> None:
        assert self.writer is not None
        base = f"{formats.DATA_DIR}/{spec.name}"
        manifest = dict(manifest)
        if spec.in_bundle:
            for entry in manifest["files"]:
                self.writer.copy_file(spec.root / entry["path"], f"{base}/files/{entry['path']}", entry["sha256"])
            manifest["bundled_files"] = f"{base}/files"
        self.writer.write_json(f"{base}/manifest.json", manifest)
        if (commit := commitment(manifest)) is not None:  # Merkle roots for proofs (prov prove)
            self.writer.write_json(f"{base}/{formats.DATA_COMMITMENT}", commit)

    def batch(self, step: int, compute: Callable[[int], Sequence[int]]) -> list[int]:
        """The sample ids of this step: computed by `compute(step)`, recorded, and returned: train on these.

        In a reproduction the original's recorded ids are returned (and compared with what
        `compute` gives); past the last step asked for, StopRun ends the run.
        """
        rec = self._rec()
        ids, plain = self._batch(step, list(compute(step)), replaceable=True)
        rec.batch(step, plain)
        return ids

    def record_batch(self, step: int, sample_ids: Sequence[int]) -> str:
        """Record which samples formed this step's batch on this rank; returns the batch digest.

        For loops that choose their batches themselves. In a reproduction the ids are compared
        with the original's for this step (an order change is a divergence); nothing is replayed.
        """
        rec = self._rec()
        _, plain = self._batch(step, list(sample_ids), replaceable=False)
        return rec.batch(step, plain)

    def log(self, step: int, **metrics: Any) -> None:
        """Append one step's metrics with exact values (floats as they were)."""
        clean = {k: _plain(v) for k, v in metrics.items()}
        self._rec().metrics(step, clean)
        self._notify("on_log", step, clean)

    def log_eval(self, step: int, **metrics: Any) -> None:
        """Append an evaluation's metrics (logs/eval.jsonl)."""
        clean = {k: _plain(v) for k, v in metrics.items()}
        self._rec().evaluation(step, clean)
        self._notify("on_eval", step, clean)

    def checkpoint(self, step: int, model: Any, optimizer: Any = None, tokens_seen: int = 0,
                   extra: dict[str, Any] | None = None) -> str:
        """Save the training state; its sha256 is computed off the training thread.

        A plain module: the full state in one safetensors file (rank 0). A distributed state (a module
        sharded with FSDP2 `fully_shard`, or any torch.distributed.checkpoint state_dict given as a dict):
        every rank calls this; DCP writes checkpoints/step-<N>/ and each rank hashes its own files."""
        rel = self._rec().checkpoint(step, model, optimizer, tokens_seen, extra)
        if rel is None:  # ranks other than 0 save nothing
            return formats.checkpoint_name(step)
        if not self.ranks.writes_shared:
            return rel
        self._notify("on_checkpoint", step, rel)
        return rel

    def restore(self, path: str | os.PathLike[str], model: Any, optimizer: Any = None, *,
                allow_change: Sequence[str] = ()) -> tuple[int, int]:
        """Resume from a checkpoint: weights, optimizer and RNG states. Returns (step, tokens_seen).

        When the checkpoint sits in a bundle, its sha256 is checked against that bundle's checkpoint
        index first, and this run becomes the next *segment* of that bundle's record: run.json's
        `segment` links the previous bundle (its root digest) and the checkpoint (its digest). A changed
        world size, data manifest or config is refused (ResumeRefused) unless named in `allow_change`
        ("world_size", "data", "config" or a config key); an allowed change is recorded as a note.
        The restart is recorded as a `restart` note (from which step; the previous status and error).
        A checkpoint folder (checkpoints/step-<N>/) is a sharded DCP checkpoint: every rank calls this.
        """
        from provenance.capture.state import load_checkpoint

        path = Path(path)
        if path.is_dir():
            return self._restore_sharded(path, model, optimizer, allow_change)
        hexd = sha256_file(path)
        index_path = path.parent.parent / formats.CHECKPOINT_INDEX
        if index_path.is_file():
            entry = next((e for e in formats.read_json(index_path).get("checkpoints", [])
                          if Path(e["path"]).name == path.name), None)
            if entry is not None and entry["sha256"] != hexd:
                raise ResumeRefused(f"{path}: checkpoint does not match its index: expected "
                                    f"sha256:{entry['sha256']}, found sha256:{hexd}")
        segment = self._segment_of(path, allow_change) if index_path.is_file() else None
        state = load_checkpoint(path, model, optimizer)
        self._restarted(path, state["step"], state["tokens_seen"], hexd, segment, {})
        self._note_restored(path, hexd)
        return state["step"], state["tokens_seen"]

    def _segment_of(self, ckpt: Path, allow: Sequence[str]) -> dict[str, Any] | None:
        """The previous segment (the bundle holding the checkpoint), checked against this run: world
        size, data manifests and config must be the same unless allowed. Every rank checks (a refusal
        on one rank only would leave the others waiting)."""
        prev = ckpt.parent.parent
        if not (prev / formats.RUN_JSON).is_file():
            return None
        info = formats.read_json(prev / formats.RUN_JSON)
        changes: list[dict[str, Any]] = []
        if int(info.get("world_size", 1)) != self.world_size:
            changes.append({"what": "world_size", "key": "world_size", "old": info.get("world_size"),
                            "new": self.world_size})
        for name, manifest in self._manifests.items():
            pm = prev / formats.DATA_DIR / name / "manifest.json"
            old = formats.read_json(pm) if pm.is_file() else None
            files = sorted((f["path"], f["sha256"]) for f in manifest.get("files", []))
            if old is None or sorted((f["path"], f["sha256"]) for f in old.get("files", [])) != files:
                changes.append({"what": "data", "key": f"data.{name}", "old": None if old is None else "manifest",
                                "new": "a different manifest"})
        if (prev / formats.CONFIG_JSON).is_file():
            # compared as written (a NaN/inf by name): NaN equals NaN, a bare old "Infinity" equals float("inf")
            before = flatten(formats.strict_json(formats.read_json(prev / formats.CONFIG_JSON).get("config", {})))
            after = flatten(formats.strict_json(self.config))
            for key in sorted(set(before) | set(after)):
                if key in _RESUME_KEYS or key.split(".")[-1] in ("resume_from", "resume") \
                        or before.get(key) == after.get(key):
                    continue
                changes.append({"what": "config", "key": key, "old": before.get(key), "new": after.get(key)})
        refused = [c for c in changes if c["what"] not in allow and c["key"] not in allow]
        if refused:
            c = refused[0]
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            name = c["key"] if c["what"] == "config" else c["what"]
            raise ResumeRefused(f"resume from {ckpt}: {c['key']} changed: {c['old']!r} in {prev.name}, {c['new']!r} "
                                f"in this run{more}; allow it with run.allow_resume_change=[{name}]")
        root = None
        if (prev / formats.MANIFEST).is_file():
            root, _ = formats.parse_oms_statement(formats.read_json(prev / formats.MANIFEST))
        seg = info.get("segment") or {}
        return {"number": int(seg.get("number", 0)) + 1,
                "previous": {"run_id": info.get("run_id"), "root_digest": formats.digest_str(root) if root else None,
                             "status": info.get("status"), "error": (info.get("error") or {}).get("message"),
                             "error_type": (info.get("error") or {}).get("type"), "path": str(prev)},
                "changes": changes}

    def _restarted(self, ckpt: Path, step: int, tokens: int, hexd: str, segment: dict[str, Any] | None,
                   extra: dict[str, Any]) -> None:
        """Record the restart: run.json's segment link, the `restart` note, the allowed changes."""
        digest = f"sha256:{hexd}"
        prev = (segment or {}).get("previous") or {}
        why = self._previous_why(prev)
        relaunch = self._run_info.get("relaunch")
        if relaunch is not None and relaunch.get("previous") and prev.get("run_id") == relaunch["previous"]["run_id"]:
            why = (f" after torchrun relaunched the workers (restart {relaunch['restart_count']}){why}"
                   f"{self.relaunch_match.text()}")
            extra = {**extra, "relaunch": {"restart_count": relaunch["restart_count"]}}
        if self.ranks.writes_shared:
            if segment is not None:
                rel = ckpt.relative_to(Path(prev["path"])).as_posix()
                self._run_info["segment"] = {"number": segment["number"], "previous": prev,
                                             "checkpoint": {"path": rel, "step": step, "sha256": digest}}
                self._write_run_json()
            self.note(f"restarted from checkpoint {ckpt.name} at step {step} ({digest}){why}",
                      category="restart", step=step, links=[str(ckpt)],
                      details={"from_step": step, "checkpoint": ckpt.name, "sha256": digest, "tokens_seen": tokens,
                               "previous": prev or None, **extra})
            for c in (segment or {}).get("changes", []):
                self.note(f"resume changed {c['key']}: {c['old']!r} before, {c['new']!r} now (allowed by "
                          "run.allow_resume_change)", category="override", step=step,
                          details={"key": c["key"], "old": c["old"], "new": c["new"], "resume": True})
        self.event("restored", step=step, checkpoint=str(ckpt), sha256=hexd)

    def _note_restored(self, ckpt: Path, hexd: str) -> None:
        """Remember a restored checkpoint (observers read run.restored: lineage's `resume` edge)."""
        relaunch = self._run_info.get("relaunch") or {}
        seg = self._run_info.get("segment") or {}
        by_relaunch = bool(relaunch.get("previous")) and self.previous_attempt is not None \
            and (seg.get("previous") or {}).get("run_id") == relaunch["previous"]["run_id"]
        self.restored.append({"path": ckpt, "sha256": hexd,
                              "consumed": "run.resume_point" if by_relaunch else "run.restore"})

    def _restore_sharded(self, folder: Path, model: Any, optimizer: Any,
                         allow_change: Sequence[str] = ()) -> tuple[int, int]:
        """Resume from a DCP checkpoint folder of a bundle: every file is checked against the index
        entry first (a mismatch names the file), at the world size it was saved with."""
        from provenance.capture.sharded import load_sharded

        index_path = folder.parent.parent / formats.CHECKPOINT_INDEX
        if not index_path.is_file():
            raise ValueError(f"{folder}: a sharded checkpoint is restored from a bundle ({index_path} is missing)")
        entry = next((e for e in formats.read_json(index_path).get("checkpoints", [])
                      if e.get("format") == formats.DCP_FORMAT and Path(e["path"]).name == folder.name), None)
        if entry is None:
            raise ValueError(f"{folder}: not in {index_path} (an incomplete checkpoint is never restored)")
        if entry["world_size"] != self.world_size and "world_size" not in allow_change:
            raise ResumeRefused(f"{folder}: saved at world size {entry['world_size']}, this run has world size "
                             f"{self.world_size}")
        bundle = folder.parent.parent
        for f in entry["files"]:
            p = bundle / f["path"]
            if not p.is_file():
                raise ResumeRefused(f"{p}: missing (the checkpoint index lists it)")
            hexd = sha256_file(p)
            if hexd != f["sha256"]:
                raise ResumeRefused(f"{p}: does not match the checkpoint index: expected sha256:{f['sha256']}, "
                                 f"found sha256:{hexd}")
        segment = self._segment_of(folder, allow_change)
        load_sharded(folder, model, optimizer, self.rank)
        step, tokens = int(entry["step"]), int(entry.get("tokens_seen", 0))
        self._restarted(folder, step, tokens, entry["sha256"], segment,
                        {"format": formats.DCP_FORMAT, "world_size": entry["world_size"]})
        shard0 = next((f["sha256"] for f in entry["files"] if f["path"].endswith("/__0_0.distcp")), None)
        if shard0 is not None:  # verified above; lineage names a DCP checkpoint by its rank-0 shard
            self._note_restored(folder, shard0)
        return step, tokens

    def save_model(self, model: Any, tokenizer: Any = None, *, init_args: dict[str, Any] | None = None) -> str:
        """Save the final model into model/ (rank 0).

        A model with `save_pretrained` (transformers, diffusers, PEFT...) is saved that way (loadable
        by from_pretrained), with its tokenizer. Any other torch.nn.Module is saved as its state dict
        (model/model.safetensors) with model/config.json describing it: its class, the constructor
        arguments given as `init_args` (JSON), every tensor's shape and dtype, its repr.
        """
        w = self._open_writer()
        if not self.ranks.writes_shared:
            return formats.MODEL_DIR
        tmp = w.path(f".{formats.MODEL_DIR}.tmp")
        if hasattr(model, "save_pretrained"):
            # transformers draws a "Writing model shards" bar: carriage-return garbage in the captured stderr
            hf_logging = sys.modules.get("transformers.utils.logging")
            quiet = hf_logging is not None and hf_logging.is_progress_bar_enabled()
            if quiet:
                hf_logging.disable_progress_bar()
            try:
                model.save_pretrained(tmp, safe_serialization=True)
            finally:
                if quiet:
                    hf_logging.enable_progress_bar()
        else:
            from provenance.capture.state import save_module

            save_module(tmp, model, init_args)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for p in tmp.rglob("*"):  # safetensors creates 0600: a released model is read by others
            if p.is_file() and not p.is_symlink():
                os.chmod(p, formats.file_mode())
        os.replace(tmp, w.path(formats.MODEL_DIR))
        return formats.MODEL_DIR

    def note(self, text: str, category: str = "other", author: str | None = None,
             links: Sequence[str] = (), step: int | None = None,
             details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Append a decision note (notes.jsonl; append-only, safe against concurrent writers).

        `step`: the step it applies to (default: the last step logged); `details`: structured facts
        (JSON), e.g. {"key": ..., "old": ..., "new": ...} for an override.
        """
        return self._rec().note(text, category, author, links, step, details)


def start_run(config: dict[str, Any], *, name: str, runs_dir: str | os.PathLike[str] = "runs",
              seed: int = 0, threads: int | None = None, deterministic: bool = True,
              datasets: Sequence[DatasetSpec] = (), argv: Sequence[str] | None = None,
              code_root: str | os.PathLike[str] | None = None, license: str | None = None,
              documents: dict[str, str] | None = None, callbacks: Sequence[Callback] = (),
              capture_output: bool = True, sampler: dict[str, Any] | None = None,
              run_id: str | None = None, reproduces: dict[str, Any] | None = None,
              components: Sequence[Component] = (), purpose: str | None = None, notes: Sequence[str] = (),
              overrides: Sequence[dict[str, Any]] = ()) -> Run:
    """Create a run; use it as a context manager (`with start_run(...) as run:`). See docs/api.md."""
    return Run(config, name=name, runs_dir=runs_dir, seed=seed, threads=threads, deterministic=deterministic,
               datasets=datasets, argv=argv, code_root=code_root, license=license, documents=documents,
               callbacks=callbacks, capture_output=capture_output, sampler=sampler, run_id=run_id,
               reproduces=reproduces, components=components, purpose=purpose, notes=notes, overrides=overrides)
