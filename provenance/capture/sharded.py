"""Sharded training state through torch.distributed.checkpoint (DCP): FSDP2 models or any DCP state_dict.

Every rank writes its own shard files with `dcp.save` (collective); this module also writes the
rank's RNG states as JSON next to them (rng.rank<R>.json) and describes the sharding (global shapes,
dtypes, placements, mesh) for the index, so that an audit never has to read DCP's pickled `.metadata`.
Loading (`load_sharded`) runs only in a training process.
"""

from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from provenance import formats


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return None
    return DTensor


def is_sharded(model: Any) -> bool:
    """A DCP state_dict (a dict) or a module with DTensor parameters (FSDP2 fully_shard, tensor parallel)."""
    if isinstance(model, dict):
        return True
    dt = _dtensor_type()
    params = getattr(model, "parameters", None)
    return dt is not None and callable(params) and any(isinstance(p, dt) for p in params())


def _state(model: Any, optimizer: Any) -> dict[str, Any]:
    if isinstance(model, dict):
        return model
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return {"model": get_model_state_dict(model)}
    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": osd}


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, list | tuple):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: obj}


def sharding_facts(state: dict[str, Any]) -> dict[str, Any]:
    """Global shape, dtype and placements of every tensor of the state (from this rank's view)."""
    dt = _dtensor_type()
    tensors: dict[str, Any] = {}
    meshes: set[tuple[int, ...]] = set()
    for fqn, v in _flatten(state).items():
        if dt is not None and isinstance(v, dt):
            meshes.add(tuple(v.device_mesh.shape))
            tensors[fqn] = {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."),
                            "placements": [repr(p) for p in v.placements]}
        elif torch.is_tensor(v):
            tensors[fqn] = {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."),
                            "placements": ["Replicate()"]}
    return {"engine": "torch.distributed.checkpoint", "torch": torch.__version__,
            "mesh_shapes": sorted(list(m) for m in meshes),
            "sharded_tensors": sum(1 for t in tensors.values() if any(p.startswith("Shard") for p in t["placements"])),
            "tensors": tensors}


def rng_record() -> dict[str, Any]:
    """This process's RNG states as JSON (torch CPU and CUDA states base64, numpy, python)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    rec: dict[str, Any] = {
        "torch_cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy": {"kind": kind, "keys": [int(k) for k in keys], "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "python": [py[0], list(py[1]), py[2]],
    }
    if torch.cuda.is_available():
        rec["torch_cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return rec


def set_rng_record(rec: dict[str, Any]) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(rec["torch_cpu"])), dtype=torch.uint8))
    if "torch_cuda" in rec and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)
                                      for s in rec["torch_cuda"]])
    n = rec["numpy"]
    cached, gauss_next = formats.as_float(n["cached"]), rec["python"][2]  # a NaN/inf written by name (strict JSON)
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached"] if cached is None else cached))
    version, state, _ = rec["python"]
    random.setstate((version, tuple(state), gauss_next if gauss_next is None else formats.as_float(gauss_next)))


def save_sharded(folder: str | os.PathLike[str], model: Any, optimizer: Any, rank: int) -> dict[str, Any]:
    """Collective: every rank calls it. Writes DCP's files and this rank's RNG record into `folder`;
    returns the sharding facts (for the index)."""
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng_rel, _ = formats.dcp_rank_files(rank)
    rng = formats.strict_dumps(rng_record(), sort_keys=True, separators=(",", ":")).encode()  # before dcp's RNG use
    state = _state(model, optimizer)
    facts = sharding_facts(state)
    dcp.save(state, checkpoint_id=str(folder))
    tmp = folder / f".{rng_rel}.tmp"
    tmp.write_bytes(rng)
    os.replace(tmp, folder / rng_rel)
    return facts


def load_sharded(folder: str | os.PathLike[str], model: Any, optimizer: Any, rank: int,
                 restore_rng: bool = True) -> None:
    """Collective: restore model and optimizer (resharded by DCP as the model is sharded now), and this
    rank's RNG states. Only in a training process (DCP's metadata is a pickle)."""
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    state = _state(model, optimizer)
    dcp.load(state, checkpoint_id=str(folder))
    if not isinstance(model, dict):
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state.get("optim", {})) \
            if optimizer is not None else set_state_dict(model, (), model_state_dict=state["model"],
                                                           optim_state_dict={})
    if restore_rng:
        rng_rel, _ = formats.dcp_rank_files(rank)
        set_rng_record(json.loads((folder / rng_rel).read_text()))
