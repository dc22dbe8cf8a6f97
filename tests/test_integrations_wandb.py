"""wandb: an offline run mirrored from the default training, its run folder inside the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import offline_env, train
from test_integrations_common import assert_sealed, only_run

from provenance import formats
from provenance.integrations.layout import WANDB_JSON
from provenance.integrations.wandb import WandbCallback


def test_wandb_offline_run_folder_in_bundle(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    env["WANDB_MODE"] = "offline"
    env["WANDB__DISABLE_STATS"] = "true"  # no system-metrics sampler competing for the test machine
    env.pop("WANDB_API_KEY", None)
    train(tmp_path, "run.wandb=true", "run.wandb_project=fullyopen-test", env=env)
    root = only_run(tmp_path / "runs")
    info = assert_sealed(root)
    assert info["status"] == "completed"
    events = [e["event"] for e in formats.read_jsonl(root / formats.EVENTS)]
    assert "observer_failed" not in events, list(formats.read_jsonl(root / formats.EVENTS))
    wb = formats.read_json(root / WANDB_JSON)
    assert wb["mode"] == "offline" and wb["project"] == "fullyopen-test" and wb["url"] is None
    folder = root / wb["bundle_folder"]
    assert folder.name.startswith("offline-run-") and folder.name.endswith(wb["id"])
    record_log = folder / f"run-{wb['id']}.wandb"
    data = record_log.read_bytes()
    assert data.startswith(b":W&B")
    # the config and the metrics were mirrored: their names are in the run's record log
    for key in (b"val_loss", b"grad_norm", b"tokens_seen", b"eval/arith_exact_match", info["run_id"].encode()):
        assert key in data, key
    # the same folder outside the bundle is the one wandb wrote (the bundle copy is sealed)
    outside = tmp_path / ".wandb" / "wandb" / folder.name
    assert (outside / record_log.name).read_bytes() == data
    # after the seal, the root digest went to the run's summary (a resumed offline run with the same id)
    root_digest = formats.parse_oms_statement(formats.read_json(root / formats.MANIFEST))[0]
    resumed = [p for p in (tmp_path / ".wandb" / "wandb").glob(f"offline-run-*-{wb['id']}") if p.name != folder.name]
    assert len(resumed) == 1
    assert root_digest.encode() in (resumed[0] / record_log.name).read_bytes()
    assert root_digest.encode() not in data
    metrics = list(formats.read_jsonl(root / formats.METRICS))
    assert len(metrics) == 12 and json.dumps(metrics[0]["loss"]).encode() in data


def test_wandb_never_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbCallback(enabled=True).reason_inactive == "WANDB_MODE=disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert WandbCallback(enabled=False).reason_inactive == "disabled in the config"
    assert WandbCallback(enabled=True).reason_inactive is None
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert WandbCallback(enabled=True).reason_inactive == "wandb is not installed"
