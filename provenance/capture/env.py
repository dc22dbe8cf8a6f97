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
                 "LOCAL_RANK", "LOCAL_WORLD_SIZE", "XLA_", "TF_", "NVIDIA_", "ATEN_", "ONEDNN_", "DNNL_", "GLOO_",
                 "TORCHELASTIC_", "GROUP_RANK", "ROLE_")


def packages() -> dict[str, str]:
    """Every installed distribution, name -> version (PEP 503-normalised names)."""
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            out[name.lower().replace("_", "-").replace(".", "-")] = dist.version
    return dict(sorted(out.items()))


def imported_distributions(modules: list[str] | None = None) -> dict[str, str]:
    """{distribution: version} of the installed distributions that provide a module imported now.

    Recorded when a run ends: a package the training never imported cannot change its numbers,
    so a reproduction does not count a difference in it against a bitwise claim.
    """
    provides = importlib.metadata.packages_distributions()
    tops = {m.split(".")[0] for m in (modules if modules is not None else list(sys.modules))}
    out: dict[str, str] = {}
    for top in tops:
        for dist in provides.get(top, ()):
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
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
    facts.update(numerics_facts(torch))
    facts["determinism_knobs"] = determinism_knobs(torch)
    facts["distributed_backends"] = _backends(torch)
    facts["nccl_version"] = _nccl_version(torch)
    if torch.cuda.is_available():
        facts["gpus"] = [
            {"name": torch.cuda.get_device_name(i),
             "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
             "memory_bytes": torch.cuda.get_device_properties(i).total_memory}
            for i in range(torch.cuda.device_count())
        ]
        facts["driver"] = _nvidia_driver()
    return facts


def parse_build_config(text: str) -> dict[str, Any]:
    """The numerics-relevant facts of `torch.__config__.show()`: BLAS and LAPACK providers, MKL, oneDNN
    (MKL-DNN) and OpenMP versions, the CPU capability torch reports using, and the USE_* build switches."""
    out: dict[str, Any] = {}
    for raw in text.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        if "Math Kernel Library Version" in line:
            out["mkl"] = line.split("Version", 1)[1].strip().split(" ", 1)[0].removesuffix("-Product")
        elif line.startswith("Intel(R) MKL-DNN") or line.startswith("oneDNN"):
            out["onednn"] = line.split()[2] if line.startswith("Intel(R) MKL-DNN") else line.split()[1]
        elif line.startswith("OpenMP "):
            out["openmp"] = line.split()[1]
        elif line.startswith("CPU capability usage:"):
            out["cpu_capability_usage"] = line.split(":", 1)[1].strip()
        elif line.startswith("Build settings:"):
            for item in line.split(":", 1)[1].split(", "):
                k, sep, v = item.partition("=")
                k = k.strip()
                if sep and (k in ("BLAS_INFO", "LAPACK_INFO", "TORCH_VERSION") or k.startswith("USE_")):
                    out[k.lower()] = v.strip().rstrip(",")
    return out


def numerics_facts(torch: Any) -> dict[str, Any]:
    """What decides the numbers beyond the versions: the CPU capability torch dispatched to, the BLAS /
    oneDNN / MKL builds and versions, the parallel backend and thread counts (docs/reproduce.md)."""
    def get(f: Any) -> Any:
        try:
            return f()
        except Exception:  # a build that lacks it
            return None

    facts: dict[str, Any] = {
        "cpu_capability": get(lambda: torch.backends.cpu.get_cpu_capability()),
        "mkl_available": get(lambda: bool(torch.backends.mkl.is_available())),
        "openmp_available": get(lambda: bool(torch.backends.openmp.is_available())),
        "blas": get(lambda: parse_build_config(torch.__config__.show())) or {},
    }
    info = get(lambda: torch.__config__.parallel_info()) or ""
    for line in str(info).splitlines():
        if line.startswith("ATen parallel backend:"):
            facts["blas"]["parallel_backend"] = line.split(":", 1)[1].strip()
    if torch.cuda.is_available():
        facts["cuda_device_count"] = torch.cuda.device_count()
        facts["cuda_math"] = {"tf32_matmul": get(lambda: bool(torch.backends.cuda.matmul.allow_tf32)),
                              "tf32_cudnn": get(lambda: bool(torch.backends.cudnn.allow_tf32)),
                              "fp16_reduced_precision_reduction": get(
                                  lambda: bool(torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction)),
                              "bf16_reduced_precision_reduction": get(
                                  lambda: bool(torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction))}
    return facts


def determinism_knobs(torch: Any) -> dict[str, Any]:
    """Every setting torch exposes that changes which kernels run or how exactly they compute
    (read, never set; the CUDA ones are reported on CPU builds too, where they have no effect)."""
    b = torch.backends

    def get(obj: Any, name: str) -> Any:
        try:
            v = getattr(obj, name)
            return v() if callable(v) else v
        except Exception:  # an attribute a build lacks or cannot answer
            return None

    knobs = {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "deterministic_debug_mode": get(torch, "get_deterministic_debug_mode"),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_enabled": get(b.cudnn, "enabled"),
        "cudnn_deterministic": get(b.cudnn, "deterministic"),
        "cudnn_benchmark": get(b.cudnn, "benchmark"),
        "cudnn_allow_tf32": get(b.cudnn, "allow_tf32"),
        "cuda_matmul_allow_tf32": get(b.cuda.matmul, "allow_tf32"),
        "cuda_matmul_allow_fp16_reduced_precision_reduction":
            get(b.cuda.matmul, "allow_fp16_reduced_precision_reduction"),
        "cuda_matmul_allow_bf16_reduced_precision_reduction":
            get(b.cuda.matmul, "allow_bf16_reduced_precision_reduction"),
        "sdp_flash": get(b.cuda, "flash_sdp_enabled"),
        "sdp_mem_efficient": get(b.cuda, "mem_efficient_sdp_enabled"),
        "sdp_math": get(b.cuda, "math_sdp_enabled"),
        "sdp_cudnn": get(b.cuda, "cudnn_sdp_enabled"),
        "mkldnn_enabled": get(b.mkldnn, "enabled"),
        "mkldnn_deterministic": get(b.mkldnn, "deterministic"),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
    }
    return {k: (v if v is None or isinstance(v, bool | int | float | str) else str(v)) for k, v in knobs.items()}


def _backends(torch: Any) -> dict[str, bool]:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return {}
    if not dist.is_available():
        return {}
    return {name: bool(getattr(dist, f"is_{name}_available", lambda: False)()) for name in ("gloo", "nccl", "mpi",
                                                                                          "ucc", "xccl")}


def _nccl_version(torch: Any) -> str | None:
    """NCCL's version where torch was built with it (CUDA builds), else None."""
    try:
        if not torch.cuda.is_available():
            return None
        v = torch.cuda.nccl.version()
        return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    except Exception:
        return None


_NODE_PREFIXES = ("NCCL_", "CUDA_", "CUBLAS_", "CUDNN_", "TORCH", "PYTORCH_", "OMP_", "GLOO_")


def node_facts() -> dict[str, Any]:
    """What one node adds to run.json's distributed record: accelerators and the variables that matter
    (every node's own; env/environment.json holds rank 0's full environment)."""
    t = torch_facts()
    keep = ("version", "cuda_version", "cudnn_version", "nccl_version", "gpus", "driver", "determinism_knobs",
            "distributed_backends")
    return {"torch": {k: t[k] for k in keep if k in t},
            "env_vars": {k: v for k, v in training_env_vars().items() if k.startswith(_NODE_PREFIXES)},
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count()}


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


def training_device() -> dict[str, Any]:
    """The device this process trained on, known when the run ends (env/environment.json `device`):
    `cuda` when torch initialised CUDA here and allocated memory on a GPU (torch.cuda.max_memory_allocated
    of each device, with the peak bytes per device index); else `xpu` / `mps` when torch's Intel GPU or Apple
    GPU backend is available and allocated memory (_other_accelerator); `unknown` (with `available`) where
    such an accelerator is available but whether the run used it cannot be told; else `cpu`. What the
    machine has (CUDA available, its GPUs) is in `torch`; this is what the run used. Never imports torch (nor
    any of its modules): a process that did not import it computed nothing with it."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {"type": "cpu", "cuda_initialized": False, "evidence": "torch was not imported by the run's process"}
    cuda = getattr(torch, "cuda", None)
    try:
        initialized = bool(cuda is not None and cuda.is_initialized())
        peaks = {str(i): int(cuda.max_memory_allocated(i)) for i in range(cuda.device_count())} if initialized else {}
    except Exception as exc:  # a broken CUDA install: say so rather than guess
        return {"type": "unknown", "cuda_initialized": None, "evidence": f"{type(exc).__name__}: {exc}"}
    used = {i: n for i, n in peaks.items() if n > 0}
    if used:
        return {"type": "cuda", "cuda_initialized": True, "max_memory_allocated": used,
                "evidence": "CUDA initialised and memory allocated on GPU " + ", ".join(sorted(used))}
    other, available = _other_accelerator(torch)
    if other is not None:
        return {**other, "cuda_initialized": initialized}
    out: dict[str, Any] = {
        "type": "cpu", "cuda_initialized": initialized,
        "evidence": "CUDA initialised, but no memory allocated on a GPU" if initialized
        else "CUDA was never initialised in the run's process"}
    if available:  # an accelerator the run had but did not allocate memory on
        out["available"] = available
        out["evidence"] += "; " + ", ".join(available) + " available, no memory allocated on it"
    return out


def _other_accelerator(torch: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """(what the run used, the accelerators available) among those torch exposes besides CUDA: XPU
    (torch.xpu: initialised, max_memory_allocated per device), MPS (torch.backends.mps.is_available,
    torch.mps.driver_allocated_memory), and any other torch.accelerator names (torch ≥ 2.6). The first is
    {"type": "xpu" | "mps", memory, "evidence"} when one allocated memory, {"type": "unknown", "available",
    "evidence"} when one is available but its use cannot be told (no memory statistics, or they failed),
    else None. Only attributes of the torch already imported are read."""
    available: list[str] = []
    untold: list[str] = []  # available, use unknown (and why)
    xpu = getattr(torch, "xpu", None)
    try:
        if xpu is not None and callable(getattr(xpu, "is_available", None)) and xpu.is_available():
            available.append("xpu")
            init, peak = getattr(xpu, "is_initialized", None), getattr(xpu, "max_memory_allocated", None)
            if not (callable(init) and callable(peak)):
                untold.append("xpu (torch.xpu has no memory statistics)")
            elif init():
                used = {str(i): n for i in range(int(xpu.device_count())) if (n := int(peak(i))) > 0}
                if used:
                    return ({"type": "xpu", "max_memory_allocated": used,
                             "evidence": "XPU initialised and memory allocated on device " + ", ".join(sorted(used))},
                            available)
    except Exception as exc:
        untold.append(f"xpu ({type(exc).__name__}: {exc})")
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    try:
        if mps is not None and callable(getattr(mps, "is_available", None)) and mps.is_available():
            available.append("mps")
            driver = getattr(getattr(torch, "mps", None), "driver_allocated_memory", None)
            if not callable(driver):
                untold.append("mps (torch.mps has no memory statistics)")
            elif (n := int(driver())) > 0:
                return ({"type": "mps", "driver_allocated_memory": n,
                         "evidence": f"MPS available and {n} bytes allocated by the Metal driver"}, available)
    except Exception as exc:
        untold.append(f"mps ({type(exc).__name__}: {exc})")
    acc = getattr(torch, "accelerator", None)
    try:
        if acc is not None and callable(getattr(acc, "is_available", None)) and acc.is_available():
            kind = str(getattr(acc.current_accelerator(), "type", "") or "an unnamed accelerator")
            if kind not in ("cuda", "xpu", "mps"):
                available.append(kind)
                untold.append(f"{kind} (no memory statistics read for it)")
    except Exception as exc:
        untold.append(f"torch.accelerator ({type(exc).__name__}: {exc})")
    if untold:
        return ({"type": "unknown", "available": available,
                 "evidence": "no memory allocated on a CUDA GPU, and whether the run used " + "; ".join(untold)
                 + " cannot be told"}, available)
    return None, available
