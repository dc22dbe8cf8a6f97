"""The run lifecycle: capture on entry, record while training, seal on exit however it ends.

    with start_run(config, name="tiny-lm", seed=1337, threads=2, datasets=[spec]) as run:
        for step in ...:
            run.record_batch(step, sample_ids)
            run.log(step, loss=loss, lr=lr)
            run.checkpoint(step, model, optimizer, tokens_seen=n)
        run.save_model(model, tokenizer)

Everything that can fail before training (code, environment, data verification)
runs before the run folder is created: a failure there is loud and writes nothing.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from provenance import formats
from provenance.bundle import AppendLog, BundleWriter
from provenance.capture.code import capture_code
from provenance.capture.data import DatasetSpec, verified_manifest
from provenance.capture.env import capture_env
from provenance.capture.process import process_identity
from provenance.capture.state import apply_determinism, save_checkpoint, seed_everything
from provenance.config import ConfigError
from provenance.hashing import sha256_file
from provenance.redact import Redactor
from provenance.replay import STEPS_LOG, SUMMARY, Replay, StopRun, merge_rank_summaries, original_root_digest


class RunInterrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM (or SIGINT) arrives."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Callback:
    """Observer of a run's lifecycle. Every hook is a no-op; failures are contained and recorded."""

    def on_start(self, run: Run) -> None: ...
    def on_log(self, run: Run, step: int, metrics: dict[str, Any]) -> None: ...
    def on_eval(self, run: Run, step: int, metrics: dict[str, Any]) -> None: ...
    def on_checkpoint(self, run: Run, step: int, name: str) -> None: ...
    def on_finish(self, run: Run) -> None:
        """The run is ending (run.status is final) and its files are still open: last chance to add files."""
    def on_end(self, run: Run, status: str, root_digest: str | None) -> None: ...


class _FdTee:
    """Capture a file descriptor (1 or 2) at the OS level: the terminal still sees everything."""

    def __init__(self, fd: int, log: AppendLog) -> None:
        self.fd = fd
        self.log = log
        self.saved = os.dup(fd)
        r, w = os.pipe()
        self._r = r
        os.dup2(w, fd)
        os.close(w)
        self._thread = threading.Thread(target=self._pump, name=f"prov-tee-{fd}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._r, 65536)
            except OSError:
                break
            if not chunk:
                break
            try:
                os.write(self.saved, chunk)
            except OSError:
                pass
            pending += chunk
            # write whole lines, so that a secret split across reads is still masked
            cut = pending.rfind(b"\n") + 1
            if cut or len(pending) > 1 << 16:
                cut = cut or len(pending)
                self.log.write(pending[:cut])
                pending = pending[cut:]
        if pending:
            self.log.write(pending)
        os.close(self._r)

    def stop(self) -> None:
        stream = sys.stdout if self.fd == 1 else sys.stderr
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.saved, self.fd)  # closes the pipe's write end held by fd
        self._thread.join(timeout=5)
        os.close(self.saved)


def _rank_file(rel: str, rank: int) -> str:
    """A shared file's per-rank name: rank 0 keeps the name, rank R writes <stem>.rank<R><suffix>."""
    if rank == 0:
        return rel
    stem, dot, suffix = rel.rpartition(".")
    return f"{stem}.rank{rank}{dot}{suffix}"


def _dist() -> Any:
    """torch.distributed when a process group is up, else None."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def _agree_run_id(run_id: str) -> str:
    dist = _dist()
    if dist is None:
        raise RuntimeError("a run with WORLD_SIZE > 1 needs one run id on every rank: call "
                           "torch.distributed.init_process_group() before start_run, or set PROV_RUN_ID")
    box = [run_id]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def _rank_barrier(folder: Path | None, timeout_s: float = 600.0) -> None:
    """Wait for every rank (torch.distributed); without a process group, wait for `folder` to exist."""
    dist = _dist()
    if dist is not None:
        dist.barrier()
        return
    deadline = time.monotonic() + timeout_s
    while folder is not None and not folder.is_dir():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{folder}: rank 0 did not create the run folder within {timeout_s:.0f} s")
        time.sleep(0.05)


def _distributed_facts(world_size: int) -> dict[str, Any]:
    dist = _dist()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return {"backend": dist.get_backend() if dist is not None else None, "world_size": world_size,
            "local_world_size": local, "nnodes": max(1, world_size // max(1, local)),
            "launcher": "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else None,
            "order": "order/rank<R>.*: each rank's own batches", "logs": "logs/*.rank<R>.*: each rank's own"}


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


def _new_run_id(name: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40] or "run"
    return f"{stamp}-{safe}-{secrets.token_hex(3)}"


class Run:
    """A live run. Create it with start_run()."""

    def __init__(self, config: dict[str, Any], *, name: str, runs_dir: str | os.PathLike[str] = "runs",
                 seed: int = 0, threads: int | None = None, deterministic: bool = True,
                 datasets: Sequence[DatasetSpec] = (), argv: Sequence[str] | None = None,
                 code_root: str | os.PathLike[str] | None = None, license: str | None = None,
                 documents: dict[str, str] | None = None, callbacks: Sequence[Callback] = (),
                 capture_output: bool = True, sampler: dict[str, Any] | None = None,
                 run_id: str | None = None, reproduces: dict[str, Any] | None = None) -> None:
        self.config = config
        self.name = name
        self.runs_dir = Path(runs_dir)
        self.seed = seed
        self.threads = threads
        self.deterministic = deterministic
        self.datasets = list(datasets)
        self.argv = list(sys.argv if argv is None else argv)
        self.code_root = code_root
        self.license = license
        self.documents = dict(documents or {})
        self.callbacks = list(callbacks)
        self.capture_output = capture_output
        self.sampler = sampler or {}
        self.replay = Replay.from_env(int(os.environ.get("RANK", "0")))
        if self.replay is not None and reproduces is None:
            reproduces = {"run_id": self.replay.original.name,
                          "root_digest": original_root_digest(self.replay.original)}
        self.reproduces = reproduces
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.run_id = run_id or os.environ.get("PROV_RUN_ID") or _new_run_id(name)
        if self.world_size > 1 and not (run_id or os.environ.get("PROV_RUN_ID")):
            self.run_id = _agree_run_id(self.run_id)  # every rank takes rank 0's
        self.root = self.runs_dir / self.run_id
        self.status = "created"
        self.root_digest: str | None = None
        self.writer: BundleWriter | None = None
        self._tees: list[_FdTee] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prov-ckpt-hash")
        self._pending: list[Future[None]] = []
        self._index: list[dict[str, Any]] = []
        self._index_lock = threading.Lock()
        self._order_chain = formats.ORDER_CHAIN_SEED
        self._last_step: int | None = None
        self._old_handlers: dict[int, Any] = {}
        self._run_info: dict[str, Any] = {}
        self._t0 = 0.0
        self._replay_rec: dict[str, Any] | None = None

    # --- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> Run:
        redactor = Redactor()
        # capture before writing anything: a failure here is loud and leaves no folder behind
        code = capture_code(self.code_root)
        if self.replay is not None:  # a reproduction checks its data against the original's manifests
            for spec in self.datasets:
                if spec.expected is None:
                    spec.expected = self.replay.data_manifest(spec.name)
        manifests = [(spec, verified_manifest(spec)) for spec in self.datasets]
        documents = _local_documents(self.documents)
        seed_everything(self.seed)
        determinism = apply_determinism(self.threads, self.deterministic)
        env = capture_env()

        if self.world_size == 1:
            w = self.writer = BundleWriter.create(self.root, redactor)
        else:  # rank 0 creates the folder, the other ranks write their own files into it
            if self.rank == 0:
                BundleWriter.create(self.root, redactor)
            _rank_barrier(self.root)
            w = self.writer = BundleWriter(self.root, redactor)
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
        }
        if self.world_size > 1:
            self._run_info["distributed"] = _distributed_facts(self.world_size)
        if self.rank == 0:
            w.write_json(formats.CONFIG_JSON, {"config": self.config, "digest": formats.config_digest(self.config),
                                               "argv": self.argv, "cwd_name": Path.cwd().name})
            w.write_json(formats.CODE_JSON, code.facts)
            w.write_bytes(formats.CODE_DIFF, code.diff, redact=True)
            w.write_bytes(formats.CODE_SNAPSHOT, code.snapshot)
            w.write_json(formats.ENV_JSON, env)
            for spec, manifest in manifests:
                self._write_dataset(spec, manifest)
            for key, (src, rel) in documents.items():  # shipped, so that an audit can check them
                w.copy_file(src, rel)
                self._run_info["documents"][key] = rel
                self._run_info.setdefault("documents_source", {})[key] = str(src)
            self._write_run_json()
        if self.rank == 0 or self.world_size > 1:
            hdr, _, _ = formats.order_paths(self.rank)
            dataset = self.datasets[0].name if self.datasets else None
            w.write_json(hdr, formats.order_header(self.rank, self.world_size, self.sampler, dataset or ""))
        if self.capture_output:
            suffix = "" if self.world_size == 1 else f".rank{self.rank}"
            for fd, rel in ((1, formats.STDOUT), (2, formats.STDERR)):
                rel = rel.replace(".log", f"{suffix}.log")
                self._tees.append(_FdTee(fd, w.log(rel)))
        self._install_signal_handlers()
        self.status = "running"
        self._event("started")
        self._notify("on_start")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is None or isinstance(exc, StopRun):
            status, exit_status, error = "completed", 0, None
        elif isinstance(exc, KeyboardInterrupt):
            signum = exc.signum if isinstance(exc, RunInterrupted) else signal.SIGINT
            status, exit_status = "interrupted", 128 + int(signum)
            error = {"type": type(exc).__name__, "message": str(exc) or signal.Signals(signum).name,
                     "traceback": "".join(traceback.format_exception(exc_type, exc, tb))}
        else:
            status, exit_status = "failed", 1
            error = {"type": type(exc).__name__, "message": str(exc),
                     "traceback": "".join(traceback.format_exception(exc_type, exc, tb))}
        self.finish(status, exit_status, error)
        return isinstance(exc, StopRun)  # a replay that checked what it was asked to ends cleanly

    def finish(self, status: str, exit_status: int, error: dict[str, Any] | None = None) -> str | None:
        """Record the end of the run and seal its bundle. Safe to call once."""
        if self.writer is None or self.status not in ("running",):
            return self.root_digest
        self.status = status
        self._restore_signal_handlers()
        for f in self._pending:
            try:
                f.result()
            except Exception as e:  # a failed hash must not lose the bundle: seal re-hashes
                self._event("checkpoint_hash_failed", error=repr(e))
        self._pool.shutdown(wait=True)
        if error is not None:
            sys.stderr.write(error["traceback"])
        self._notify("on_finish")
        self._event(status, exit_status=exit_status)
        for t in self._tees:
            t.stop()
        self._tees.clear()
        w = self.writer
        if self.world_size > 1:  # every rank closes its files before rank 0 seals (when all ranks got here)
            if self.rank != 0:
                if self.replay is not None:
                    w.write_json(_rank_file(SUMMARY, self.rank), self.replay.summary(
                        self.reproduces.get("root_digest") if self.reproduces else None))
                w.close_logs()
            if status == "completed":
                _rank_barrier(None)
        if self.replay is not None and self.rank == 0:
            summary = self.replay.summary(self.reproduces.get("root_digest") if self.reproduces else None)
            if self.world_size > 1:
                summary = merge_rank_summaries(summary, w.root, self.world_size)
            w.write_json(SUMMARY, summary)
        if self.rank == 0:
            self._run_info.update({"status": status, "ended_at": formats.utc_now(), "exit_status": exit_status,
                                   "error": error, "duration_s": round(time.monotonic() - self._t0, 3),
                                   "last_step": self._last_step})
            self._write_run_json()
        w.close_logs()
        if self.rank == 0:
            self.root_digest = w.seal()
        self._notify("on_end", status, self.root_digest)
        return self.root_digest

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            raise RunInterrupted(signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()

    # --- recording ------------------------------------------------------------------------
    def _write_run_json(self) -> None:
        assert self.writer is not None
        self.writer.write_json(formats.RUN_JSON, self._run_info)

    def _write_dataset(self, spec: DatasetSpec, manifest: dict[str, Any]) -> None:
        assert self.writer is not None
        base = f"{formats.DATA_DIR}/{spec.name}"
        manifest = dict(manifest)
        if spec.in_bundle:
            for entry in manifest["files"]:
                self.writer.copy_file(spec.root / entry["path"], f"{base}/files/{entry['path']}", entry["sha256"])
            manifest["bundled_files"] = f"{base}/files"
        self.writer.write_json(f"{base}/manifest.json", manifest)

    def _event(self, kind: str, **fields: Any) -> None:
        if self.writer is None:
            return
        rel = formats.EVENTS if self.world_size == 1 else formats.EVENTS.replace(".jsonl", f".rank{self.rank}.jsonl")
        self.writer.log(rel).write_line({"time": formats.utc_now(), "event": kind, **fields})

    def _notify(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            try:
                getattr(cb, hook)(self, *args)
            except Exception as e:  # an observer never breaks the run: contain and record
                self._event("observer_failed", observer=type(cb).__name__, hook=hook, error=repr(e))

    def batch(self, step: int, compute: Callable[[int], list[int]]) -> list[int]:
        """The sample ids of this step: computed by `compute(step)`, recorded, and returned.

        In a reproduction the original's recorded ids are replayed (and compared
        with what `compute` gives); past the last step asked for, StopRun ends the run.
        """
        ids = list(compute(step))
        if self.replay is not None:
            ids, self._replay_rec = self.replay.batch(step, ids)
        self.record_batch(step, ids)
        return ids

    def record_batch(self, step: int, sample_ids: Sequence[int]) -> str:
        """Record which samples formed this step's batch on this rank; returns the batch digest."""
        assert self.writer is not None
        _, ids_rel, steps_rel = formats.order_paths(self.rank)
        ids_bytes = formats.encode_ids(sample_ids)
        self._order_chain = formats.chain_next(self._order_chain, step, ids_bytes)
        self.writer.raw_log(ids_rel).write(ids_bytes)
        self.writer.raw_log(steps_rel).write(formats.ORDER_STEP_RECORD.pack(step, len(sample_ids), self._order_chain))
        return formats.ids_digest(ids_bytes)  # the ids were encoded once, above

    def log(self, step: int, **metrics: Any) -> None:
        """Append one step's metrics with exact values (floats as they were)."""
        assert self.writer is not None
        clean = {k: _plain(v) for k, v in metrics.items()}
        self._last_step = step
        if self.rank == 0:
            self.writer.log(formats.METRICS).write_line({"step": step, "time": formats.utc_now(), **clean})
        if self.replay is not None:
            rec = self.replay.log(step, clean, self._replay_rec or {"step": step})
            self._replay_rec = None
            self.writer.log(_rank_file(STEPS_LOG, self.rank)).write_line(rec)
        self._notify("on_log", step, clean)

    def log_eval(self, step: int, **metrics: Any) -> None:
        assert self.writer is not None
        clean = {k: _plain(v) for k, v in metrics.items()}
        if self.rank == 0:
            self.writer.log(formats.EVALS).write_line({"step": step, "time": formats.utc_now(), **clean})
        self._notify("on_eval", step, clean)

    def checkpoint(self, step: int, model: Any, optimizer: Any = None, tokens_seen: int = 0,
                   extra: dict[str, Any] | None = None) -> str:
        """Save the full training state; its sha256 is computed off the training thread."""
        assert self.writer is not None
        rel = formats.checkpoint_name(step)
        if self.rank != 0:
            return rel
        path = self.writer.path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_checkpoint(tmp, step, model, optimizer, tokens_seen, extra)
        os.replace(tmp, path)
        self._pending.append(self._pool.submit(self._index_checkpoint, rel, step, tokens_seen))
        self._notify("on_checkpoint", step, rel)
        return rel

    def _index_checkpoint(self, rel: str, step: int, tokens_seen: int) -> None:
        assert self.writer is not None
        path = self.writer.path(rel)
        hexd = sha256_file(path)
        self.writer.record_digest(rel, hexd)
        with self._index_lock:
            self._index = [e for e in self._index if e["step"] != step]
            self._index.append({"step": step, "path": rel, "sha256": hexd, "size": path.stat().st_size,
                                "tokens_seen": tokens_seen, "time": formats.utc_now()})
            self.writer.write_json(formats.CHECKPOINT_INDEX, formats.checkpoint_index(self._index))
        self._event("checkpoint", step=step, path=rel, sha256=hexd)
        if self.replay is not None:
            rec = self.replay.checkpoint(step, hexd)
            if rec is not None:
                self.writer.log(STEPS_LOG).write_line(rec)

    def restore(self, path: str | os.PathLike[str], model: Any, optimizer: Any = None) -> tuple[int, int]:
        """Resume from a checkpoint: weights, optimizer and RNG states. Returns (step, tokens_seen).

        When the checkpoint sits in a bundle, its sha256 is checked against that
        bundle's checkpoint index first. The restart is recorded as a `restart` note.
        """
        from provenance.capture.state import load_checkpoint

        path = Path(path)
        hexd = sha256_file(path)
        index_path = path.parent.parent / formats.CHECKPOINT_INDEX
        if index_path.is_file():
            entry = next((e for e in formats.read_json(index_path).get("checkpoints", [])
                          if Path(e["path"]).name == path.name), None)
            if entry is not None and entry["sha256"] != hexd:
                raise ValueError(f"{path}: checkpoint does not match its index: expected sha256:{entry['sha256']}, "
                                 f"found sha256:{hexd}")
        state = load_checkpoint(path, model, optimizer)
        self.note(f"restarted from checkpoint {path.name} at step {state['step']} (sha256:{hexd})",
                  category="restart", step=state["step"], links=[str(path)])
        self._event("restored", step=state["step"], checkpoint=str(path), sha256=hexd)
        return state["step"], state["tokens_seen"]

    def save_model(self, model: Any, tokenizer: Any = None) -> str:
        """Save the final model in save_pretrained form (loadable by from_pretrained)."""
        assert self.writer is not None
        if self.rank != 0:
            return formats.MODEL_DIR
        tmp = self.writer.path(f".{formats.MODEL_DIR}.tmp")
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        os.replace(tmp, self.writer.path(formats.MODEL_DIR))
        return formats.MODEL_DIR

    def note(self, text: str, category: str = "other", author: str | None = None,
             links: Sequence[str] = (), step: int | None = None) -> dict[str, Any]:
        """Append a decision note (append-only; safe against concurrent writers)."""
        assert self.writer is not None
        rec = formats.note_record(text, category, author, links, self._last_step if step is None else step)
        formats.append_line(self.writer.path(formats.NOTES), self.writer.redactor.text(formats.dumps_line(rec)))
        return rec


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        return v.item()
    return v


def start_run(config: dict[str, Any], **kwargs: Any) -> Run:
    """Create a run; use it as a context manager. See Run for the arguments."""
    return Run(config, **kwargs)
