"""Capture the environment a run executes in: packages, interpreter, torch, hardware, settings."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

# environment variables that can change what training computes or how it is recorded
_ENV_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "CUDA_", "CUBLAS_", "CUDNN_", "NCCL_", "TORCH", "PYTORCH_",
                 "HF_", "TRANSFORMERS_", "TOKENIZERS_", "DATASETS_", "WANDB_", "DVC_", "PYTHONHASHSEED",
                 "KMP_", "GOMP_", "LD_PRELOAD", "LD_LIBRARY_PATH", "MASTER_", "WORLD_SIZE", "RANK",
                 "LOCAL_RANK", "LOCAL_WORLD_SIZE", "XLA_", "TF_", "NVIDIA_", "ATEN_", "ONEDNN_", "DNNL_")


def packages() -> dict[str, str]:
    """Every installed distribution, name -> version (PEP 503-normalised names)."""
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            out[name.lower().replace("_", "-").replace(".", "-")] = dist.version
    return dict(sorted(out.items()))


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def training_env_vars(environ: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if environ is None else environ)
    return {k: v for k, v in sorted(env.items()) if k.startswith(_ENV_PREFIXES)}


def torch_facts() -> dict[str, Any]:
    """torch version, threads, determinism settings, CUDA/cuDNN and GPUs when present."""
    try:
        import torch
    except ImportError:
        return {"installed": False}
    import torch.utils.deterministic as tdet

    facts: dict[str, Any] = {
        "installed": True,
        "version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "fill_uninitialized_memory": bool(tdet.fill_uninitialized_memory),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if torch.cuda.is_available():
        facts["gpus"] = [
            {"name": torch.cuda.get_device_name(i),
             "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
             "memory_bytes": torch.cuda.get_device_properties(i).total_memory}
            for i in range(torch.cuda.device_count())
        ]
        facts["driver"] = _nvidia_driver()
    return facts


def _nvidia_driver() -> str | None:
    try:
        return Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None


def capture_env() -> dict[str, Any]:
    """The environment as a JSON-able dict (unredacted: the bundle writer redacts)."""
    return {
        "python": {"version": sys.version.split()[0], "implementation": platform.python_implementation(),
                   "executable_name": Path(sys.executable).name},
        "packages": packages(),
        "torch": torch_facts(),
        "hardware": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                     "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                     "ram_bytes": ram_bytes(), "machine": platform.machine()},
        "os": {"system": platform.system(), "release": platform.release(), "platform": platform.platform()},
        "env_vars": training_env_vars(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "pythonhashseed": os.environ.get("PYTHONHASHSEED"),
    }
