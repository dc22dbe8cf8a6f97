"""How prov reproduce starts the training: one process, or torchrun at the recorded world size."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from provenance.reproduce import Options, Original, Refused, build_command


def original(run: dict, argv: list[str]) -> Original:
    return Original(root=Path("/nonexistent"), root_digest="sha256:" + "0" * 64, run=run, config={}, argv=argv,
                    code={}, env={}, manifests={}, checkpoints={}, metric_steps=[1])


ARGV = ["/x/python", "-m", "training.train", "--config", "configs/tiny-lm.yaml", "train.fsdp=true"]


def test_single_process_runs_the_recorded_module(tmp_path: Path) -> None:
    cmd = build_command(original({"world_size": 1}, ARGV), Options(), tmp_path, tmp_path / "c.yaml", ["a=1"])
    assert cmd == [sys.executable, "-m", "training.train", "--config", str(tmp_path / "c.yaml"), "a=1"]
    cmd = build_command(original({}, ARGV), Options(), tmp_path, tmp_path / "c.yaml", [])  # no world size: one
    assert cmd[:3] == [sys.executable, "-m", "training.train"]


def test_a_two_rank_original_is_launched_with_torchrun_at_its_world_size(tmp_path: Path) -> None:
    run = {"world_size": 2, "distributed": {"nnodes": 1, "local_world_size": 2, "launcher": "torchrun"}}
    cmd = build_command(original(run, ARGV), Options(), tmp_path, tmp_path / "c.yaml", ["a=1"])
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "-m", "training.train", "--config", str(tmp_path / "c.yaml"), "a=1"]
    (tmp_path / "train.py").write_text("")
    cmd = build_command(original(run, ["/x/python", "/old/checkout/train.py", "--lr", "1"]), Options(), tmp_path,
                        tmp_path / "c.yaml", [])
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "train.py", "--lr", "1"]


def test_a_multi_node_original_is_refused(tmp_path: Path) -> None:
    run = {"world_size": 4, "distributed": {"nnodes": 2, "local_world_size": 2}}
    with pytest.raises(Refused, match=r"trained on 2 nodes \(world size 4\); prov reproduce launches on one machine"):
        build_command(original(run, ARGV), Options(), tmp_path, tmp_path / "c.yaml", [])
