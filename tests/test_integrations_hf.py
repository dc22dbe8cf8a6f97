"""HF Trainer: the default model trained through `Trainer`; its bundle audits and reproduces bitwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, offline_env
from test_integrations_common import assert_sealed, only_run, prov

from provenance import formats
from provenance.integrations.hf import HF_TRAINER_LOG, SAMPLE_IDS, IndexedDataset, SampleIdCollator
from provenance.integrations.layout import HF_TRAINER_JSON


@pytest.mark.slow  # over a minute on 2 cores: run with `make test-slow`
def test_hf_trainer_run_audits_and_reproduces(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    args = [sys.executable, "-m", "training.train_hf", "--config", str(REPO / "configs" / "tiny-lm-hf.yaml"), *TINY,
            "train.steps=8", "train.eval_every=4", "train.checkpoint_every=4", "trainer.gradient_accumulation_steps=2",
            f"run.runs_dir={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}"]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = only_run(tmp_path / "runs")
    info = assert_sealed(root)
    assert info["status"] == "completed"
    # the data order: per optimizer step, both micro-batches' ids (2 x 4), distinct within the epoch
    steps = list(formats.read_order(root / "order/rank0.ids.u32", root / "order/rank0.steps.bin"))
    assert [s.step for s in steps] == list(range(1, 9)) and all(len(s.sample_ids) == 8 for s in steps)
    seen = [i for s in steps for i in s.sample_ids]
    assert len(set(seen)) == len(seen) and max(seen) < 580
    # exact losses: full precision, and what the Trainer logged once rounded
    metrics = list(formats.read_jsonl(root / formats.METRICS))
    logged = {r["step"]: r for r in formats.read_jsonl(root / HF_TRAINER_LOG) if "loss" in r}
    assert [m["step"] for m in metrics] == list(range(1, 9))
    for m in metrics:
        assert m["micro_batches"] == 2 and m["tokens"] > 0
        assert abs(m["loss"] - float(logged[m["step"]]["loss"])) < 1e-3 * m["loss"]
        assert m["loss"] != round(m["loss"], 4)
    assert [e["step"] for e in formats.read_jsonl(root / formats.EVALS)] == [0, 4, 8]
    index = formats.read_json(root / formats.CHECKPOINT_INDEX)["checkpoints"]
    assert [e["step"] for e in index] == [4, 8]
    hf = formats.read_json(root / HF_TRAINER_JSON)
    assert hf["arguments"]["gradient_accumulation_steps"] == 2 and hf["arguments"]["max_steps"] == 8
    assert hf["trainer_class"].endswith("ProvenanceTrainer") and hf["steps_trained"] == 8
    # reproduced by `prov reproduce`, bitwise: every batch, loss and checkpoint
    proc = prov("reproduce", str(root), "--workdir", str(tmp_path / "repro"), env=env, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "reproduced (bitwise)" in proc.stdout


def test_sample_id_collator() -> None:
    ds = IndexedDataset([[1, 2], [3]])
    assert ds[1] == {"input_ids": [3], "sample_id": 1}
    collate = SampleIdCollator(lambda feats: {"n": len(feats), "keys": sorted({k for f in feats for k in f})})
    batch = collate([ds[1], ds[0]])
    assert batch["keys"] == ["input_ids"] and batch[SAMPLE_IDS].tolist() == [1, 0]
    assert SAMPLE_IDS not in SampleIdCollator(lambda f: {})([IndexedDataset([[1]], with_ids=False)[0]])
