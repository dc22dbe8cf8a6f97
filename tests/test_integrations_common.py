"""Helpers shared by the integration tests (no tests here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import REPO

from provenance import formats
from provenance.bundle import sealable_files
from provenance.hashing import sha256_file


def prov(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provenance.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def only_run(runs: Path) -> Path:
    found = [p for p in runs.iterdir() if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


def assert_sealed(root: Path) -> dict[str, Any]:
    """The seal covers exactly the bundle's files with their digests, and the audit passes (when it exists)."""
    _, resources = formats.parse_oms_statement(formats.read_json(root / formats.MANIFEST))
    assert sorted(resources) == sorted(sealable_files(root))
    for rel, hexd in resources.items():
        assert sha256_file(root / rel) == hexd, rel
    info = formats.read_json(root / formats.RUN_JSON)
    assert info["status"] in ("completed", "failed", "interrupted")
    if importlib.util.find_spec("provenance.audit") is not None:
        from provenance.audit import audit

        report = audit(root)
        assert report.ok, report.to_text()
    return info
