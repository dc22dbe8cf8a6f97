"""DVC: datasets tracked by DVC (a `.dvc` file or `dvc.lock`), described with their DVC md5."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tracking_info(path: Path) -> dict[str, Any] | None:
    """DVC facts of a tracked path, or None when DVC does not track it."""
    return None
