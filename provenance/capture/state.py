"""Seeds, RNG states and training-state checkpoints in safetensors (never pickle).

A checkpoint file holds tensors under three prefixes:
  model.<name>            the model's state_dict
  optim.<i>.<key>         optimizer per-parameter state tensors (i = parameter index)
  rng.<source>            RNG states as uint8/int64 tensors
and one string metadata entry, "fullyopen", holding canonical JSON: format, step,
tokens_seen, the optimizer's param_groups and scalar state, the python and numpy
RNG states. (One key, because safetensors writes several keys in random order,
and a checkpoint's sha256 must be repeatable.) Every JSON text in it is strict: a NaN/inf
(best_val=inf in extra, a cached gauss) is written by name, the "non_finite" entry (only when
there is one) names where extra and param_groups hold one, and load_checkpoint reads them back.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save_file

from provenance import formats

CHECKPOINT_FORMAT = formats.CHECKPOINT_SCHEMA
_META_KEY = "fullyopen"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def apply_determinism(threads: int | None, deterministic: bool) -> dict[str, Any]:
    """Fix thread counts and deterministic algorithms; return the settings now in force."""
    if threads:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # can only be set once per process, before parallel work starts
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    import torch.utils.deterministic as tdet

    return {
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "fill_uninitialized_memory": bool(tdet.fill_uninitialized_memory),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All RNG states as tensors plus JSON metadata."""
    tensors: dict[str, torch.Tensor] = {"rng.torch_cpu": torch.get_rng_state().clone()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.torch_cuda.{i}"] = s.clone()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py = random.getstate()
    meta = {  # strict JSON (formats.strict_dumps): a NaN/inf by name, read back by set_rng_state
        "rng.python": formats.strict_dumps([py[0], list(py[1]), py[2]]),
        "rng.numpy": formats.strict_dumps({"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss),
                                           "cached": float(cached)}),
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("rng.torch_cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    version, state, gauss = json.loads(meta["rng.python"])
    random.setstate((version, tuple(state), None if gauss is None else _float(gauss, "rng.python")))
    npm = json.loads(meta["rng.numpy"])
    keys = tensors["rng.numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((npm["kind"], keys, npm["pos"], npm["has_gauss"], _float(npm["cached"], "rng.numpy")))


def _float(value: Any, key: str) -> float:
    """A float of the checkpoint metadata: a number, or a NaN/inf written by name (strict JSON)."""
    x = formats.as_float(value)
    if x is None:
        raise ValueError(f"checkpoint metadata {key}: {value!r} is not a number")
    return x


def _strict_meta(meta: dict[str, str], key: str, obj: Any, non_finite: dict[str, Any]) -> None:
    """meta[key] as strict JSON (the text json.dumps(sort_keys=True) gives for finite numbers, so a checkpoint
    of finite values keeps its bytes); where obj holds a NaN/inf, non_finite[key] names those places."""
    meta[key] = formats.strict_dumps(obj, sort_keys=True)
    paths = formats.non_finite_paths(obj)
    if paths:
        non_finite[key] = paths


def _read_meta(meta: dict[str, str], key: str) -> Any:
    """meta[key] as written: a NaN/inf that the "non_finite" entry names read back as its float."""
    paths = json.loads(meta["non_finite"]).get(key) if "non_finite" in meta else None
    return formats.restore_non_finite(json.loads(meta[key]), paths)


def save_checkpoint(path: str | os.PathLike[str], step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, tokens_seen: int = 0,
                    extra: dict[str, Any] | None = None) -> None:
    """Write the full training state to `path` (the caller makes it atomic)."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().contiguous()
    meta: dict[str, str] = {"format": CHECKPOINT_FORMAT, "step": str(step), "tokens_seen": str(tokens_seen)}
    non_finite: dict[str, Any] = {}  # meta key → where its JSON holds a NaN/inf (only when one does)
    _strict_meta(meta, "extra", extra or {}, non_finite)
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, st in sd["state"].items():
            for key, val in st.items():
                if torch.is_tensor(val) and val.dim() > 0:
                    tensors[f"optim.{idx}.{key}"] = val.detach().contiguous()
                else:
                    scalars.setdefault(str(idx), {})[key] = float(val.item() if torch.is_tensor(val) else val)
        _strict_meta(meta, "optim.param_groups", sd["param_groups"], non_finite)
        meta["optim.scalars"] = formats.strict_dumps(scalars, sort_keys=True)  # floats: read with _float
    if non_finite:
        meta["non_finite"] = formats.strict_dumps(non_finite, sort_keys=True)
    rng_t, rng_m = rng_state()
    tensors.update(rng_t)
    meta.update(rng_m)
    # tied weights share storage: store each storage once
    seen: dict[int, str] = {}
    for k in list(tensors):
        ptr = tensors[k].data_ptr()
        if k.startswith("model.") and ptr in seen and tensors[k].shape == tensors[seen[ptr]].shape:
            tensors[k] = tensors[k].clone()
        seen.setdefault(ptr, k)
    save_file(tensors, str(path), metadata={_META_KEY: formats.strict_dumps(meta, sort_keys=True,
                                                                            separators=(",", ":"))})
    os.chmod(path, formats.file_mode())  # safetensors creates 0600; a bundle file is shared


def read_checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(_META_KEY)
    if raw is None:
        raise ValueError(f"{Path(path).name}: not a {CHECKPOINT_FORMAT} checkpoint (no '{_META_KEY}' metadata)")
    meta = json.loads(raw)
    if not isinstance(meta, dict):
        raise ValueError(f"{Path(path).name}: malformed checkpoint metadata")
    return meta


def load_checkpoint(path: str | os.PathLike[str], model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True) -> dict[str, Any]:
    """Restore model, optimizer and RNG states; return {step, tokens_seen, extra}."""
    path = Path(path)
    tensors = load_file(str(path))
    meta = read_checkpoint_meta(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path.name}: not a {CHECKPOINT_FORMAT} checkpoint")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None and "optim.param_groups" in meta:
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                state.setdefault(int(idx), {})[key] = v
        for idx, sc in json.loads(meta["optim.scalars"]).items():
            for key, val in sc.items():
                state.setdefault(int(idx), {})[key] = torch.tensor(_float(val, f"optim.scalars.{idx}.{key}"),
                                                                   dtype=torch.float32)
        optimizer.load_state_dict({"state": state, "param_groups": _read_meta(meta, "optim.param_groups")})
    if restore_rng:
        set_rng_state(tensors, meta)
    return {"step": int(meta["step"]), "tokens_seen": int(meta["tokens_seen"]), "extra": _read_meta(meta, "extra")}


TORCH_MODULE_TYPE = "torch-module"  # model/config.json model_type of a plain torch.nn.Module


def _jsonable_arg(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, list | tuple):
        return [_jsonable_arg(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable_arg(x) for k, x in v.items()}
    if isinstance(v, torch.nn.Module):
        return {"module": f"{type(v).__module__}.{type(v).__qualname__}", "repr": repr(v)}
    raise TypeError(f"init_args: {type(v).__name__} is not JSON-representable")


def save_module(folder: str | os.PathLike[str], module: torch.nn.Module,
                init_args: dict[str, Any] | None = None) -> None:
    """A plain torch module as a folder: model.safetensors (its state dict; tied tensors stored once each
    name) and config.json describing it (class, constructor arguments where given, every tensor's shape
    and dtype, the parameter count, the module tree as repr). Load it with `load_module(folder, module)`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for k, v in module.state_dict().items():
        t = v.detach().contiguous()
        if t.data_ptr() in seen:
            t = t.clone()  # safetensors refuses shared storage: a tied tensor is stored under each name
        seen.setdefault(t.data_ptr(), k)
        tensors[k] = t
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(folder / "model.safetensors", formats.file_mode())
    cls = type(module)
    args = _jsonable_arg(init_args) if init_args is not None else None
    desc: dict[str, Any] = {
        "schema": formats.TORCH_MODULE_SCHEMA,
        "model_type": TORCH_MODULE_TYPE,
        "architectures": [f"{cls.__module__}.{cls.__qualname__}"],
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "init_args": args,
        "parameters": sum(p.numel() for p in module.parameters()),
        "tensors": {k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                    for k, t in sorted(tensors.items())},
        "repr": repr(module),
        "load": "module.load_state_dict(safetensors.torch.load_file('model.safetensors'))",
    }
    non_finite = formats.non_finite_paths(args)
    if non_finite:  # strict JSON writes a NaN/inf by name; these say which of init_args' strings are numbers
        desc["init_args_non_finite"] = non_finite
    formats.atomic_write_json(folder / "config.json", desc)


def module_init_args(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The init_args save_module recorded in `folder`/config.json, as given (a NaN/inf back as its float)."""
    desc = formats.read_json(Path(folder) / "config.json")
    args = desc.get("init_args") if isinstance(desc, dict) else None
    if not isinstance(args, dict):
        return None
    out: dict[str, Any] = formats.restore_non_finite(args, desc.get("init_args_non_finite"))
    return out


def load_module(folder: str | os.PathLike[str], module: torch.nn.Module) -> torch.nn.Module:
    """Load a folder written by save_module into `module` (built with the recorded init_args)."""
    module.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
    return module
