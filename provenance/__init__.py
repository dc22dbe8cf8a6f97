"""fullyopen: every training run ships its complete, verifiable artifact bundle.

Public API (docs/api.md): `start_run` (a context manager around a training loop), `Callback`
(lifecycle observer), `DatasetSpec` (what a script declares about its data), `data_path` (a data
path as a reproduction redirects it, through $PROV_DATA_ROOT).
Imported lazily, so that light commands (`prov note`, `prov audit`) never load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "start_run": "provenance.run",
    "Run": "provenance.run",
    "RunInterrupted": "provenance.run",
    "Callback": "provenance.run",
    "DatasetSpec": "provenance.capture.data",
    "data_path": "provenance.capture.data",
    "DataMismatch": "provenance.capture.data",
    "ConfigError": "provenance.config",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'provenance' has no attribute {name!r}")
