"""`audit()` from Python and `prov audit` run the same, explicit list of checks and reach the same verdict
on a native bundle, a wrapped one (`prov run`) and a reproduction (`prov reproduce`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, offline_env

from provenance.audit import audit, default_checks


def _cli_audit(bundle: Path, tmp: Path) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "audit", str(bundle), "--json", "--no-progress"],
                          capture_output=True, text=True, cwd=REPO, env=offline_env(tmp), timeout=300)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _same(bundle: Path, tmp: Path) -> list[str]:
    rep = audit(bundle)
    rc, doc = _cli_audit(bundle, tmp)
    py = [(c.name, c.status) for c in rep.checks]
    cli = [(c["name"], c["status"]) for c in doc["consistency"]["checks"]]
    assert py == cli, (py, cli)
    assert [n for n, _ in py] == [c.name for c in default_checks()]
    assert (rep.ok, rep.exit_status) == (doc["ok"], rc)
    assert rep.failures() == doc["failures"]
    return [n for n, s in py if s not in ("skip",)]


def test_python_and_cli_agree_on_native_and_wrapped_bundles(tiny_bundle: Path, tmp_path: Path) -> None:
    ran = _same(tiny_bundle, tmp_path)
    assert audit(tiny_bundle).ok and {"run", "config", "code", "order", "metrics", "checkpoints", "model"} <= set(ran)

    work = tmp_path / "work"
    work.mkdir()
    (work / "job.py").write_text("from pathlib import Path\nPath('out').mkdir(exist_ok=True)\n"
                                 "Path('out/result.txt').write_text('42\\n')\nprint('done')\n")
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "run", "--name", "wrapped", "--outputs", "out",
                           "--runs-dir", str(tmp_path / "runs"), "--", sys.executable, "job.py"],
                          cwd=work, env=offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wrapped,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    ran = _same(wrapped, tmp_path)
    assert "command" in ran and audit(wrapped).ok, audit(wrapped).failures()


@pytest.mark.slow  # a whole reproduction (test_reproduce.py checks audit() and `prov audit` pass on one, too)
def test_python_and_cli_agree_on_a_reproduction_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "reproduce", str(tiny_bundle), "--workdir",
                           str(tmp_path / "w"), "--json", "--quiet"], cwd=REPO, env=offline_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    repro = Path(json.loads(proc.stdout)["bundle"])
    ran = _same(repro, tmp_path)
    assert "reproduction" in ran and audit(repro).ok, audit(repro).failures()
