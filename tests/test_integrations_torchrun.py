"""torchrun: the plain training loop on two ranks (gloo on CPU), audited, and reproduced at the same world size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, offline_env
from test_integrations_common import assert_sealed, only_run

from provenance import formats
from provenance.replay import Replay, WorldSizeMismatch, check_world_size
from training.data import EpochSampler


def torchrun(tmp: Path, runs: Path, env: dict[str, str], nproc: int = 2) -> subprocess.CompletedProcess[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    args = [*launcher, "-m", "training.train", "--config", str(REPO / "configs" / "tiny-lm.yaml"), *TINY,
            "run.threads=1", "train.steps=6", f"run.runs_dir={runs}", f"data.root={tmp / 'data'}"]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # over a minute on 2 cores: run with `make test-slow`
def test_torchrun_two_ranks_audit_and_reproduce(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    proc = torchrun(tmp_path, tmp_path / "runs", env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = only_run(tmp_path / "runs")
    info = assert_sealed(root)
    assert info["status"] == "completed" and info["world_size"] == 2
    assert info["distributed"]["backend"] == "gloo" and info["distributed"]["launcher"] == "torchrun"
    # every rank's data order: its half of each global batch, as the sampler makes it
    n = formats.read_json(root / "data" / "tiny-corpus" / "manifest.json")["samples"]["count"]
    sampler = EpochSampler(n, 8, 1337)
    orders = []
    for rank in (0, 1):
        hdr, ids, steps = formats.order_paths(rank)
        assert formats.read_json(root / hdr)["world_size"] == 2
        recorded = list(formats.read_order(root / ids, root / steps))
        assert formats.verify_order_chain(recorded) is None
        orders.append({s.step: list(s.sample_ids) for s in recorded})
    assert sorted(orders[0]) == list(range(1, 7)) == sorted(orders[1])
    for step in range(1, 7):
        assert orders[0][step] + orders[1][step] == sampler.batch(step)
    # every rank's stdout and stderr; one metrics file (rank 0), with the mean loss over ranks
    for rank in (0, 1):
        assert "parameters;" in (root / f"logs/stdout.rank{rank}.log").read_text()
        assert (root / f"logs/stderr.rank{rank}.log").is_file()
    assert not (root / "logs/stdout.log").exists()
    metrics = list(formats.read_jsonl(root / formats.METRICS))
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert len(list((root / "checkpoints").glob("*.safetensors"))) == 1

    # reproduced at the same world size: every rank replays its order, losses and checkpoints bitwise
    env_replay = {**env, "PROV_REPLAY": str(root)}
    proc = torchrun(tmp_path, tmp_path / "repro", env_replay)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    repro = only_run(tmp_path / "repro")
    summary = formats.read_json(repro / "reproduction" / "summary.json")
    assert summary["bitwise"] is True, summary
    assert summary["world_size"] == 2 and [r["bitwise"] for r in summary["ranks"]] == [True, True]
    assert summary["steps_checked"] == 6 and summary["checkpoints_checked"] == 1
    assert (repro / "reproduction" / "steps.rank1.jsonl").is_file()
    assert_sealed(repro)

    # at another world size: a clear error before anything runs (what training/train.py reports, exit 2)
    with pytest.raises(WorldSizeMismatch, match=r"world size 2\), this reproduction runs on 1") as err:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PROV_REPLAY", str(root))
            mp.setenv("WORLD_SIZE", "1")
            Replay.from_env(0)
    assert "torchrun --nproc_per_node=2" in str(err.value)
    check_world_size(root, 2)
