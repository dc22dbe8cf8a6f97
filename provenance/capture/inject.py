"""The capture layer of `prov run`: what an unmodified training script does, recorded from inside it.

`prov run` starts the command with PROV_CAPTURE=<bundle folder> and the startup hook
folder (provenance/capture/hook/, a `sitecustomize`) first on PYTHONPATH. Every Python
process of the command (torchrun workers included) then calls `install()` before the
script's first line; without PROV_CAPTURE the hook does nothing at all.

Nothing here changes what the script computes: every wrapper calls the original with the
same arguments and returns its result; values are read with `.detach()` and `.item()`.
It records, through public torch hooks where they exist and thin wrappers elsewhere:

* the step — a global optimizer step post-hook; the first optimizer to step is the clock;
  each step's learning rate of every param group;
* the data order — the sample indices each DataLoader iterator hands out (its index
  iterator, wrapped), attributed to the micro-step whose first forward (a global forward
  pre-hook) follows, first in first out (a loader that fetches ahead, as accelerate does,
  stays in order), grouped by optimizer step; where a micro-step has none (iterable
  datasets, tensors sliced by hand), the sha256 of the input tensors of that forward;
* the exact loss — the value of every scalar `Tensor.backward()`, summed per step in order
  (the float bits recorded), and what the script logs through wandb, TensorBoard or the
  HF Trainer;
* the seeds — torch.manual_seed, random.seed, numpy.random.seed, transformers.set_seed
  (value, and the step before which each ran), and the determinism flags and thread
  counts at the first step;
* checkpoints — every file written by torch.save, safetensors' save_file, save_pretrained:
  its sha256 computed on a thread of its own (never on the training thread), the step it
  was written after, its role.

A hook that fails records an `observer_failed` event and is switched off; training goes on.
Modules are patched when the script imports them (a post-import finder), so a script that
never imports torch never loads it.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.abc
import importlib.machinery
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from provenance import formats
from provenance.bundle import append_metrics, append_order_step, write_checkpoint_index, write_order_header

ENV = "PROV_CAPTURE"  # the bundle folder the command's processes write into
HOOK_DIR = Path(__file__).resolve().with_name("hook")
_MAX_FAILURES = 20  # observer_failed events written per hook, at most

_installed: Recorder | None = None


def child_env(bundle: str | os.PathLike[str], env: dict[str, str] | None = None) -> dict[str, str]:
    """The variables `prov run` adds to the command's environment to capture it."""
    env = os.environ if env is None else env
    path = env.get("PYTHONPATH")
    return {ENV: str(Path(bundle).resolve()),
            "PYTHONPATH": str(HOOK_DIR) + (os.pathsep + path if path else "")}


def _plain_ids(batch: Any) -> list[int] | None:
    """A batch of indices as ints; None when they are not plain integer indices."""
    if isinstance(batch, int) and not isinstance(batch, bool):
        return [batch]
    if isinstance(batch, (list, tuple)):
        out = []
        for i in batch:
            if not isinstance(i, int) or isinstance(i, bool):
                try:
                    import numbers

                    if not isinstance(i, numbers.Integral):
                        return None
                    i = int(i)
                except (TypeError, ValueError):
                    return None
            out.append(i)
        return out
    return None


def _tensors(obj: Any, out: list[Any], depth: int = 0) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for x in obj:
            _tensors(x, out, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for k in sorted(obj, key=str):
            _tensors(obj[k], out, depth + 1)


def _tensor_bytes(t: Any) -> tuple[str, tuple[int, ...], bytes]:
    import torch

    c = t.detach()
    if c.device.type != "cpu":
        c = c.cpu()
    c = c.contiguous()
    raw = c.reshape(-1).view(torch.uint8) if c.numel() else c.reshape(-1)
    data = raw.numpy().tobytes() if c.numel() else b""
    return str(t.dtype).replace("torch.", ""), tuple(t.shape), data


def _role(obj: Any) -> str:
    """What a torch.save'd object holds: weights, optimizer, full-state or other."""
    try:
        import torch

        if isinstance(obj, torch.nn.Module):
            return "weights"
        if isinstance(obj, dict):
            keys = [str(k).lower() for k in obj]
            if "state" in keys and "param_groups" in keys:
                return "optimizer"
            if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
                return "weights"
            has_opt = any("optim" in k for k in keys)
            has_model = any(k in ("model", "state_dict", "model_state_dict", "module", "params", "weights")
                            or "model" in k for k in keys)
            if has_opt and has_model:
                return "full-state"
            if has_opt:
                return "optimizer"
            if has_model:
                return "weights"
    except Exception:  # never let a role guess fail a save
        pass
    return "other"


class _Log:
    """An append-only file opened on first write (one write call a record)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]

    def line(self, obj: dict[str, Any]) -> None:
        self.write(formats.dumps_line(obj).encode())

    write_line = line  # a bundle.LineSink

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class Recorder:
    """The state of one process's capture: the step clock, the current step's evidence, the files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pid = os.getpid()
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.paths = formats.capture_paths(self.rank)
        _, ids_rel, steps_rel = formats.order_paths(self.rank)
        self._ids = _Log(root / ids_rel)
        self._steps = _Log(root / steps_rel)
        self._metrics = _Log(root / self.paths.metrics)
        self._order = _Log(root / self.paths.order)
        self._seeds = _Log(root / self.paths.seeds)
        self._logged = _Log(root / self.paths.logged)
        self._ckpts = _Log(root / self.paths.checkpoints)
        self._events = _Log(root / self.paths.events)
        self.owner: bool | None = None  # whether this process owns the rank's files (the first that steps)
        self.failures: dict[str, int] = {}
        self.off: set[str] = set()
        self.step = 0
        self.clock: int | None = None
        self.loaders: dict[int, int] = {}  # id(index sampler) -> number
        self.optimizers: dict[int, int] = {}  # id(optimizer) -> steps, in first-seen order
        self.native_chain = formats.ORDER_CHAIN_SEED
        self.capture_chain = formats.ORDER_CHAIN_SEED
        # the current micro-step and optimizer step
        self.pending: list[tuple[int, list[int]]] = []  # (loader number, ids) handed out, not yet trained on
        self.step_ids: list[int] = []
        self.step_loaders: list[int] = []
        self.micro_losses: list[Any] = []
        self.micro_steps = 0
        self.micro_content: str | None = None
        self.micro_ids: tuple[int, list[int]] | None = None
        self.step_content: list[str] = []
        self.digest_done = False
        self.seed_depth = 0
        self.save_depth = 0
        self.save_via: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending_hash: dict[str, Future[None]] = {}
        self._index: list[dict[str, Any]] = []
        self._index_lock = threading.Lock()
        self._lock = threading.Lock()

    # --- plumbing ---------------------------------------------------------------------------
    def active(self) -> bool:
        return os.getpid() == self.pid

    def event(self, kind: str, **fields: Any) -> None:
        try:
            self._events.line({"time": formats.utc_now(), "event": kind, "pid": os.getpid(), "rank": self.rank,
                               **fields})
        except OSError:
            pass

    def failed(self, hook: str, exc: BaseException) -> None:
        n = self.failures.get(hook, 0) + 1
        self.failures[hook] = n
        if n <= _MAX_FAILURES:
            self.event("observer_failed", observer="prov-capture", hook=hook, error=repr(exc),
                       traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-2000:])
        if n >= 3:  # a hook that keeps failing is switched off, so that it never slows the training
            self.off.add(hook)

    def guard(self, hook: str, func: Callable[..., Any], *args: Any) -> Any:
        if hook in self.off or not self.active():
            return None
        try:
            return func(*args)
        except Exception as exc:  # a capture hook never stops the training
            self.failed(hook, exc)
            return None

    def _claim(self) -> bool:
        """The first process of a rank that steps an optimizer owns that rank's files."""
        if self.owner is None:
            marker = self.root / formats.CAPTURE_DIR / f"owner.rank{self.rank}"
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                self.owner = True
                if self.rank != 0:  # rank 0's order header is the wrapper's
                    write_order_header(self.root, self.rank, self.world_size,
                                       {"kind": "captured", "evidence": self.paths.order}, "")
            except FileExistsError:
                self.owner = False
                self.event("not_recorded", reason=f"another process already records rank {self.rank}")
        return self.owner

    # --- the step clock -----------------------------------------------------------------------
    def on_step(self, opt: Any) -> None:
        key = id(opt)
        self.optimizers[key] = self.optimizers.get(key, 0) + 1
        if self.clock is None:
            self.clock = key
        if key != self.clock or not self._claim():
            return
        self.step += 1
        if self.step == 1:
            self.guard("facts", self._facts, opt)
        self._commit_micro(backward=False)
        step = self.step
        losses = [float(t.item()) for t in self.micro_losses]
        total: float | None = None
        for v in losses:
            total = v if total is None else total + v
        lrs = []
        for g in opt.param_groups:
            lr = g.get("lr")
            lrs.append(float(lr.item()) if hasattr(lr, "item") else (float(lr) if lr is not None else None))
        rec: dict[str, Any] = {"step": step, "time": formats.utc_now(), "loss": total,
                               "loss_bits": formats.float_bits(total) if total is not None else None,
                               "micro_steps": self.micro_steps, "lr": lrs[0] if lrs else None}
        if len(losses) > 1:
            rec["micro_losses"] = losses
        if len(lrs) > 1:
            rec["lr_groups"] = lrs
        if len(self.optimizers) > 1:
            rec["optimizer_steps"] = list(self.optimizers.values())
        # the order: ids in the native files (none for a content step), the evidence in capture/
        ids = self.step_ids
        try:
            ids_bytes = formats.encode_ids(ids)
        except ValueError:
            ids, ids_bytes = [], b""
            self.event("ids_not_recorded", step=step, reason="a sample index does not fit the order format")
        if ids:
            evidence, digest = formats.EVIDENCE_IDS, formats.ids_digest(ids_bytes)
        elif self.step_content:
            evidence, digest = formats.EVIDENCE_CONTENT, formats.step_content_digest(self.step_content)
        else:
            evidence, digest = formats.EVIDENCE_NONE, ""
        self.native_chain = formats.chain_next(self.native_chain, step, ids_bytes)
        self.capture_chain = formats.capture_chain_next(self.capture_chain, step, evidence, digest)
        order = formats.capture_order_record(step, evidence, self.micro_steps, len(ids),
                                             digest if ids else None, self.step_content, self.capture_chain)
        if self.step_loaders:
            order["loaders"] = sorted(set(self.step_loaders))
        append_order_step(self._ids, self._steps, step, ids_bytes, len(ids), self.native_chain)
        self._order.line(order)
        append_metrics(self._metrics, rec)
        self.step_ids, self.step_loaders, self.step_content = [], [], []
        self.micro_losses, self.micro_steps = [], 0
        self.digest_done = False

    def _facts(self, opt: Any) -> None:
        import torch

        facts: dict[str, Any] = {"schema": formats.CAPTURE_SCHEMA, "pid": os.getpid(), "rank": self.rank,
                                 "world_size": self.world_size, "time": formats.utc_now(),
                                 "clock": type(opt).__module__ + "." + type(opt).__qualname__,
                                 "num_threads": torch.get_num_threads(),
                                 "num_interop_threads": torch.get_num_interop_threads(),
                                 "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                                 "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
                                 "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
                                 "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
                                 "float32_matmul_precision": torch.get_float32_matmul_precision(),
                                 "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
                                 "cuda_available": torch.cuda.is_available(),
                                 "argv": list(sys.argv), "cwd": os.getcwd()}
        try:
            import torch.utils.deterministic as tdet

            facts["fill_uninitialized_memory"] = bool(tdet.fill_uninitialized_memory)
        except ImportError:  # pragma: no cover
            pass
        formats.atomic_write_json(self.root / self.paths.facts, facts)

    # --- micro-steps ----------------------------------------------------------------------------
    def _take_pending(self) -> tuple[int, list[int]] | None:
        """The batch a micro-step trains on: the oldest one handed out by the DataLoader used last.

        A loader that fetches ahead (accelerate, the HF Trainer) leaves the next batches pending;
        batches of other loaders handed out in between (evaluations) are dropped."""
        if not self.pending:
            return None
        last = self.pending[-1][0]
        i = next(j for j, e in enumerate(self.pending) if e[0] == last)
        taken = self.pending[i]
        self.pending = [e for j, e in enumerate(self.pending) if j != i and e[0] == last]
        return taken

    def _commit_micro(self, backward: bool) -> None:
        """Add the micro-step's evidence (sample ids, else the content digest of its input) to the step."""
        if self.micro_ids is None and backward and self.micro_content is None:
            self.micro_ids = self._take_pending()  # a micro-step whose forward ran no nn.Module
        if self.micro_ids is not None:
            key, ids = self.micro_ids
            self.step_ids.extend(ids)
            self.step_loaders.append(key)
        elif self.micro_content is not None:
            self.step_content.append(self.micro_content)
        self.micro_ids = None
        self.micro_content = None

    def on_backward(self, tensor: Any) -> None:
        if tensor.numel() == 1 and tensor.requires_grad:
            self.micro_losses.append(tensor.detach())
        self.micro_steps += 1
        self._commit_micro(backward=True)
        self.digest_done = False

    def loader_number(self, index_sampler: Any) -> int:
        """DataLoaders numbered 0, 1, ... in the order they first hand out a batch (stable across epochs)."""
        key = id(index_sampler)
        if key not in self.loaders:
            self.loaders[key] = len(self.loaders)
        return self.loaders[key]

    def on_batch(self, loader_key: int, ids: list[int]) -> None:
        self.pending.append((loader_key, ids))

    def on_forward(self, args: tuple[Any, ...]) -> None:
        import torch

        if not torch.is_grad_enabled():
            return  # an evaluation: not a micro-step's input
        self.digest_done = True
        self.micro_ids = self._take_pending()
        if self.micro_ids is not None:
            return  # the micro-step carries sample ids
        found: list[Any] = []
        _tensors(args, found)
        if found:
            self.micro_content = formats.content_digest(_tensor_bytes(t) for t in found)

    # --- seeds ------------------------------------------------------------------------------------
    def on_seed(self, func: str, value: Any) -> None:
        v = value
        try:
            v = int(value) if value is not None and not isinstance(value, (str, bytes)) else value
        except (TypeError, ValueError):
            v = repr(value)
        if isinstance(v, bytes):
            v = v.hex()
        self._seeds.line({"function": func, "value": v, "before_step": self.step + 1, "time": formats.utc_now(),
                          "pid": os.getpid()})

    # --- logged values ------------------------------------------------------------------------------
    def on_logged(self, source: str, values: dict[str, Any], script_step: Any = None) -> None:
        clean = {}
        for k, v in values.items():
            if hasattr(v, "item") and callable(v.item):
                try:
                    v = v.item()
                except (ValueError, RuntimeError):
                    continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            clean[str(k)] = v
        if clean:
            self._logged.line({"source": source, "after_step": self.step, "script_step": script_step,
                               "values": clean, "time": formats.utc_now()})

    # --- checkpoints ------------------------------------------------------------------------------
    def before_save(self, target: Any) -> None:
        """Wait for a still-running hash of the same file: the script is about to overwrite it."""
        if not isinstance(target, (str, os.PathLike)):
            return
        fut = self._pending_hash.get(os.path.abspath(os.fspath(target)))
        if fut is not None and not fut.done():
            t0 = time.monotonic()
            fut.result()
            self.event("waited_for_hash", path=os.fspath(target), waited_s=round(time.monotonic() - t0, 6))

    def after_save(self, target: Any, writer: str, role: str) -> None:
        if not isinstance(target, (str, os.PathLike)):
            self.event("checkpoint_not_hashed", writer=writer, reason="saved to a file object, not a path")
            return
        path = os.path.abspath(os.fspath(target))
        if not os.path.isfile(path):
            return
        fd = os.open(path, os.O_RDONLY)  # keeps the bytes reachable even if the script renames or deletes it
        entry = {"step": self.step, "path": self._rel(path), "role": role, "writer": writer,
                 "time": formats.utc_now()}
        if self.save_via:
            entry["via"] = self.save_via
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prov-capture-hash")
        fut = self._pool.submit(self._hash, fd, entry)
        self._pending_hash[path] = fut

    def _rel(self, path: str) -> str:
        cwd = os.getcwd()
        try:
            rel = os.path.relpath(path, cwd)
        except ValueError:
            return path
        return path if rel.startswith("..") else Path(rel).as_posix()

    def _hash(self, fd: int, entry: dict[str, Any]) -> None:
        try:
            h = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "rb", buffering=0) as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                    size += len(chunk)
            entry.update({"sha256": h.hexdigest(), "size": size, "hashed_on": threading.current_thread().name})
            self._ckpts.line(entry)
            if self.rank == 0 and self.active():
                with self._index_lock:
                    self._index.append(entry)
                    write_checkpoint_index(self.root, self._index, captured=True)
        except Exception as exc:
            self.failed("checkpoint-hash", exc)

    def close(self) -> None:
        """At exit: wait for every pending hash, close the files."""
        if not self.active():
            return
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for log in (self._ids, self._steps, self._metrics, self._order, self._seeds, self._logged, self._ckpts,
                    self._events):
            log.close()


# --- installing the hooks ---------------------------------------------------------------------------


class _PostImport(importlib.abc.MetaPathFinder):
    """Runs a patch right after a module's own code has run (before anyone can `from X import name`)."""

    def __init__(self, patches: dict[str, Callable[[Any], None]]) -> None:
        self.patches = patches
        self._busy: set[str] = set()

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.patches or name in self._busy:
            return None
        self._busy.add(name)
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.discard(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original = loader.exec_module
        patch = self.patches[name]

        def exec_module(module: Any) -> None:
            original(module)
            patch(module)

        try:
            loader.exec_module = exec_module  # type: ignore[method-assign]
        except (AttributeError, TypeError):
            return spec
        return spec


def _wrap(owner: Any, attr: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    original = getattr(owner, attr, None)
    if original is None or getattr(original, "_prov_capture", False):
        return
    new = functools.wraps(original)(make(original))
    new._prov_capture = True  # type: ignore[attr-defined]
    setattr(owner, attr, new)


def install(bundle: str | os.PathLike[str]) -> Recorder:
    """Install the capture hooks in this process (idempotent). Called by the startup hook."""
    global _installed
    if _installed is not None:
        return _installed
    rec = _installed = Recorder(Path(bundle))
    patches = {"torch": lambda m: rec.guard("install-torch", _patch_torch, rec, m),
               "numpy": lambda m: rec.guard("install-numpy", _patch_numpy, rec, m),
               "safetensors.torch": lambda m: rec.guard("install-safetensors", _patch_safetensors, rec, m),
               "transformers.trainer_utils": lambda m: rec.guard("install-transformers", _patch_hf_seed, rec, m),
               "transformers.modeling_utils": lambda m: rec.guard("install-hf-models", _patch_hf_models, rec, m),
               "transformers.trainer": lambda m: rec.guard("install-hf-trainer", _patch_hf_trainer, rec, m),
               "wandb": lambda m: rec.guard("install-wandb", _patch_wandb, rec, m),
               "torch.utils.tensorboard.writer": lambda m: rec.guard("install-tensorboard", _patch_tensorboard,
                                                                       rec, m)}
    finder = _PostImport(patches)
    sys.meta_path.insert(0, finder)
    for name, patch in patches.items():  # already imported (never, from the startup hook; possible by hand)
        if name in sys.modules:
            patch(sys.modules[name])
    _patch_random(rec)
    atexit.register(rec.close)
    return rec


def _patch_random(rec: Recorder) -> None:
    import random

    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def seed(*args: Any, **kwargs: Any) -> Any:
            if rec.seed_depth == 0:
                rec.guard("seed", rec.on_seed, "random.seed", args[0] if args else kwargs.get("a"))
            return orig(*args, **kwargs)
        return seed

    _wrap(random, "seed", make)


def _seed_wrapper(rec: Recorder, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def seed(*args: Any, **kwargs: Any) -> Any:
            if rec.seed_depth == 0:
                value = args[0] if args else next(iter(kwargs.values()), None)
                rec.guard("seed", rec.on_seed, name, value)
            rec.seed_depth += 1
            try:
                return orig(*args, **kwargs)
            finally:
                rec.seed_depth -= 1
        return seed
    return make


def _patch_torch(rec: Recorder, torch: Any) -> None:
    import torch.optim.optimizer as topt
    import torch.utils.data.dataloader as dl
    from torch.nn.modules import module as tmod

    def step_hook(opt: Any, args: Any, kwargs: Any) -> None:
        rec.guard("optimizer-step", rec.on_step, opt)

    topt.register_optimizer_step_post_hook(step_hook)

    def forward_hook(module: Any, args: Any) -> None:
        if not rec.digest_done:
            rec.guard("forward", rec.on_forward, args)

    tmod.register_module_forward_pre_hook(forward_hook)

    def make_backward(orig: Callable[..., Any]) -> Callable[..., Any]:
        def backward(self: Any, *args: Any, **kwargs: Any) -> Any:
            rec.guard("backward", rec.on_backward, self)
            return orig(self, *args, **kwargs)
        return backward

    _wrap(torch.Tensor, "backward", make_backward)

    def make_next_index(orig: Callable[..., Any]) -> Callable[..., Any]:
        def _next_index(self: Any) -> Any:
            index = orig(self)
            if "dataloader" not in rec.off and rec.active():
                try:
                    fifo = self.__dict__.get("_prov_fifo")
                    if fifo is None:
                        fifo = self.__dict__["_prov_fifo"] = deque()
                    fifo.append(_plain_ids(index))
                except Exception as exc:
                    rec.failed("dataloader", exc)
            return index
        return _next_index

    def make_next(orig: Callable[..., Any]) -> Callable[..., Any]:
        def __next__(self: Any) -> Any:
            data = orig(self)
            if "dataloader" not in rec.off and rec.active():
                try:
                    fifo = self.__dict__.get("_prov_fifo")
                    if fifo:
                        ids = fifo.popleft()
                        if ids is not None:
                            rec.on_batch(rec.loader_number(self._index_sampler), ids)
                except Exception as exc:
                    rec.failed("dataloader", exc)
            return data
        return __next__

    _wrap(dl._BaseDataLoaderIter, "_next_index", make_next_index)
    _wrap(dl._BaseDataLoaderIter, "__next__", make_next)

    for owner in (torch, torch.random):
        _wrap(owner, "manual_seed", _seed_wrapper(rec, "torch.manual_seed"))
    if hasattr(torch, "cuda"):
        for name in ("manual_seed", "manual_seed_all"):
            _wrap(torch.cuda, name, _seed_wrapper(rec, f"torch.cuda.{name}"))

    def make_save(orig: Callable[..., Any]) -> Callable[..., Any]:
        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
            rec.guard("checkpoint", rec.before_save, f)
            out = orig(obj, f, *args, **kwargs)
            rec.guard("checkpoint", rec.after_save, f, "torch.save", _role(obj))
            return out
        return save

    for owner in (torch, torch.serialization):
        _wrap(owner, "save", make_save)


def _patch_numpy(rec: Recorder, np: Any) -> None:
    _wrap(np.random, "seed", _seed_wrapper(rec, "numpy.random.seed"))


def _patch_safetensors(rec: Recorder, st: Any) -> None:
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def save_file(tensors: Any, filename: Any, *args: Any, **kwargs: Any) -> Any:
            rec.guard("checkpoint", rec.before_save, filename)
            out = orig(tensors, filename, *args, **kwargs)
            rec.guard("checkpoint", rec.after_save, filename, "safetensors.save_file", "weights")
            return out
        return save_file

    _wrap(st, "save_file", make)


def _patch_hf_seed(rec: Recorder, tu: Any) -> None:
    _wrap(tu, "set_seed", _seed_wrapper(rec, "transformers.set_seed"))


def _patch_hf_models(rec: Recorder, mu: Any) -> None:
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def save_pretrained(self: Any, *args: Any, **kwargs: Any) -> Any:
            outer = rec.save_via
            rec.save_via = "save_pretrained"
            try:
                return orig(self, *args, **kwargs)
            finally:
                rec.save_via = outer
        return save_pretrained

    _wrap(mu.PreTrainedModel, "save_pretrained", make)


def _patch_hf_trainer(rec: Recorder, tr: Any) -> None:
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def log(self: Any, logs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            step = getattr(getattr(self, "state", None), "global_step", None)
            rec.guard("logged", rec.on_logged, "hf_trainer", dict(logs), step)
            return orig(self, logs, *args, **kwargs)
        return log

    _wrap(tr.Trainer, "log", make)


def _patch_wandb(rec: Recorder, wandb: Any) -> None:
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def log(data: Any = None, *args: Any, **kwargs: Any) -> Any:
            if isinstance(data, dict):
                rec.guard("logged", rec.on_logged, "wandb", dict(data), kwargs.get("step"))
            return orig(data, *args, **kwargs)
        return log

    _wrap(wandb, "log", make)


def _patch_tensorboard(rec: Recorder, writer: Any) -> None:
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def add_scalar(self: Any, tag: Any, scalar_value: Any, global_step: Any = None, *args: Any,
                       **kwargs: Any) -> Any:
            rec.guard("logged", rec.on_logged, "tensorboard", {str(tag): scalar_value}, global_step)
            return orig(self, tag, scalar_value, global_step, *args, **kwargs)
        return add_scalar

    _wrap(writer.SummaryWriter, "add_scalar", make)
