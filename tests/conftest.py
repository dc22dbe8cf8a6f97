"""Shared fixtures: a tiny real training run, trained once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# a reduced default config: same code path, seconds instead of minutes
TINY = [
    "data.n_stories=400", "data.max_operand=9", "data.manifest=null", "tokenizer.vocab_size=300",
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=48",
    "train.steps=12", "train.batch_size=8", "train.warmup_steps=3", "train.eval_every=6",
    "train.eval_batches=2", "train.arith_eval_size=20", "train.checkpoint_every=6",
]


def offline_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "DVC_NO_ANALYTICS": "1",
        "HF_HOME": str(tmp / ".hf"), "HF_DATASETS_CACHE": str(tmp / ".hf" / "datasets"),
        "WANDB_DIR": str(tmp / ".wandb"), "DVC_SITE_CACHE_DIR": str(tmp / ".dvc-site"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp / ".inductor"), "PYTHONHASHSEED": "0",
    })
    return env


def train(tmp: Path, *overrides: str, check: bool = True, env: dict[str, str] | None = None,
          cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the default training script on the tiny config; runs go to tmp/runs, data to tmp/data."""
    args = [sys.executable, "-m", "training.train", "--config", str(REPO / "configs" / "tiny-lm.yaml"),
            *TINY, f"run.runs_dir={tmp / 'runs'}", f"data.root={tmp / 'data'}", *overrides]
    proc = subprocess.run(args, cwd=cwd, env=env or offline_env(tmp), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def only_run(runs: Path) -> Path:
    found = [p for p in runs.iterdir() if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="session", autouse=True)
def _hash_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests (and the trainings they start) never use the user's hash cache."""
    os.environ["PROV_CACHE_DIR"] = str(tmp_path_factory.mktemp("prov-cache"))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sealed bundle of a real (tiny) training run. Read-only: copy it before changing it."""
    tmp = tmp_path_factory.mktemp("tiny")
    train(tmp)
    return only_run(tmp / "runs")


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    dest = tmp_path / tiny_bundle.name
    shutil.copytree(tiny_bundle, dest)
    return dest
