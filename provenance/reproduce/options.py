"""What a reproduction is asked to do (Options), and how it says no (Refused)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# config keys that differ between an original and its reproduction by design (paths of this machine): the one
# definition is provenance.formats.PATH_KEYS, shared with prov diff
from provenance.formats import PATH_KEYS as PATH_KEYS

Say = Callable[[str], None]

EXIT_REPRODUCED, EXIT_DIVERGED, EXIT_REFUSED = 0, 1, 2

# config keys that set the thread count: a difference there is reported as environment
THREAD_KEYS = frozenset({"run.threads"})


def printable(text: str) -> str:
    """`text` with control characters escaped (a bundle's names never forge lines of output)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Refused(Exception):
    """The reproduction was refused (exit status 2); the message says why. `details` go into the report."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


@dataclass
class Options:
    steps: int | None = None  # check this many steps (from step 1, or after --from-step)
    from_step: int | None = None  # restore the original's checkpoint of this step and continue
    workdir: Path | None = None  # default: .cache/reproduce/<run_id>-<UTC time> under the current folder
    data_root: Path | None = None  # a folder holding the datasets' files
    sets: list[str] = field(default_factory=list)  # key=value config overrides (never bitwise)
    code: Path | None = None  # run this code folder instead of the bundle's snapshot (never bitwise)
    args: str | None = None  # a wrapped command's arguments after its script, replacing the recorded ones
    strict_env: bool = False  # any environment difference refuses
    tolerance: str = "bitwise"  # bitwise | auto | loss=<rel>,ckpt=<rel> (reproduce.tolerance)
    calibrate: bool = False  # measure this machine's noise floor first; it sets auto's bounds (reproduce.calibrate)
    # the noise model (reproduce.tolerance.NoiseModel) already measured on this machine: --segments calibrates
    # once and hands it to every interval (which then does not calibrate again); it sets auto's bounds
    calibrated: Any = None
    # run the training at this thread count through PROV_THREADS (read by start_run): --calibrate's runs of a
    # script whose config has no run.threads
    threads: int | None = None
    sandbox: bool = False  # run the training under bubblewrap: no network, read-only but the work folder
    python: str = sys.executable
    echo: Callable[[str], None] | None = None  # receives the training's output, line by line
    timeout: float | None = None
