"""fullyopen: every training run ships its complete, verifiable artifact bundle.

Public API: `start_run` (a context manager around a training loop), `Callback`
(lifecycle observer), `DatasetSpec` (what a script declares about its data).
"""

from provenance.capture.data import DataMismatch, DatasetSpec
from provenance.config import ConfigError
from provenance.run import Callback, Run, RunInterrupted, start_run

__version__ = "0.1.0"
__all__ = ["Callback", "ConfigError", "DataMismatch", "DatasetSpec", "Run", "RunInterrupted", "start_run",
           "__version__"]
