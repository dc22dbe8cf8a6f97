"""FSDP2 + DCP: sharded checkpoints through run.checkpoint on two gloo ranks, audited without loading
tensors or reading DCP's pickled metadata, restored bitwise, and refused when a shard does not match."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from provenance import formats
from provenance.audit import audit
from provenance.bundle import seal_folder

SCRIPT = REPO / "tests" / "scripts" / "fsdp_dcp.py"


def launch(runs: Path, steps: int, resume: Path | None = None, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra_env}
    env.pop("PROV_REPLAY", None)
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
            str(runs), str(steps), *([str(resume)] if resume else [])]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def only(runs: Path) -> Path:
    (root,) = [p for p in runs.iterdir() if p.is_dir()]
    return root


def losses(root: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in formats.read_jsonl(root / formats.METRICS)}


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("dcp") / "runs"
    proc = launch(runs, 4)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return only(runs)


def test_sharded_checkpoint_indexed_and_audited(original: Path) -> None:
    idx = formats.read_json(original / formats.CHECKPOINT_INDEX)
    entries = {e["step"]: e for e in idx["checkpoints"]}
    assert sorted(entries) == [2, 4]
    e = entries[4]
    assert e["format"] == "dcp" and e["path"] == formats.dcp_checkpoint_dir(4) and e["world_size"] == 2
    assert [r["rank"] for r in e["ranks"]] == [0, 1]
    names = {(f["rank"], f["path"].rsplit("/", 1)[-1]) for f in e["files"]}
    assert {(0, "__0_0.distcp"), (1, "__1_0.distcp"), (0, ".metadata"), (0, "rng.rank0.json"),
            (1, "rng.rank1.json")} <= names
    assert e["sha256"] == formats.dcp_content_digest(e["files"])
    assert e["tokens_seen"] == 16 and e["sharding"]["sharded_tensors"] > 0
    assert any("Shard(dim=0)" in t["placements"] for t in e["sharding"]["tensors"].values())
    report = audit(original)
    ck = report.check("checkpoints")
    assert report.integrity.ok and ck.status == "pass", ck.findings
    assert ck.summary.startswith("2 checkpoints")


def _tampered_copy(original: Path, tmp: Path) -> Path:
    copy = tmp / original.name
    shutil.copytree(original, copy)
    return copy


def test_missing_shard_named_by_the_audit(original: Path, tmp_path: Path) -> None:
    copy = _tampered_copy(original, tmp_path)
    gone = f"{formats.dcp_checkpoint_dir(2)}/__1_0.distcp"
    (copy / gone).unlink()
    seal_folder(copy)  # a consistent seal: only the checkpoint check can see the missing shard
    ck = audit(copy).check("checkpoints")
    assert ck.status == "fail"
    assert any(f.file == gone and "missing" in f.message for f in ck.findings), ck.findings
    assert any("ranks [1]" in f.message for f in ck.findings)


def test_unindexed_checkpoint_folder_is_incomplete(original: Path, tmp_path: Path) -> None:
    copy = _tampered_copy(original, tmp_path)
    idx = formats.read_json(copy / formats.CHECKPOINT_INDEX)
    idx["checkpoints"] = [e for e in idx["checkpoints"] if e["step"] != 4]  # as when a rank died mid-save
    formats.atomic_write_json(copy / formats.CHECKPOINT_INDEX, idx)
    seal_folder(copy)
    ck = audit(copy).check("checkpoints")
    assert ck.status == "fail"  # a completed run with an unindexed checkpoint folder
    assert any(f.file == formats.dcp_checkpoint_dir(4) and "incomplete" in f.message for f in ck.findings)


def test_restore_bitwise_and_refuse_tampered_shard(original: Path, tmp_path: Path) -> None:
    proc = launch(tmp_path / "resumed", 4, original / formats.dcp_checkpoint_dir(2))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    resumed = only(tmp_path / "resumed")
    want = losses(original)
    assert losses(resumed) == {s: want[s] for s in (3, 4)}  # exact floats: bitwise continuation
    notes = list(formats.read_jsonl(resumed / formats.NOTES))
    assert [n["details"]["from_step"] for n in notes if n["category"] == "restart"] == [2]
    # the shards of step 4 (resumed) equal the original's: same content digest
    e_orig = {e["step"]: e for e in formats.read_json(original / formats.CHECKPOINT_INDEX)["checkpoints"]}
    e_res = {e["step"]: e for e in formats.read_json(resumed / formats.CHECKPOINT_INDEX)["checkpoints"]}
    assert e_res[4]["sha256"] == e_orig[4]["sha256"]

    copy = _tampered_copy(original, tmp_path)
    shard = copy / formats.dcp_checkpoint_dir(2) / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    proc = launch(tmp_path / "refused", 4, copy / formats.dcp_checkpoint_dir(2))
    assert proc.returncode != 0
    assert "__1_0.distcp: does not match the checkpoint index" in proc.stderr


def _train(tmp: Path, runs: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    from conftest import TINY

    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
            "training.train", "--config", str(REPO / "configs" / "tiny-lm.yaml"), *TINY, "run.threads=1",
            "train.steps=6", "train.checkpoint_every=3", "train.fsdp=true", f"run.runs_dir={runs}",
            f"data.root={tmp / 'data'}", *extra]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.slow  # five 2-rank training runs: about two minutes on 2 cores
def test_train_fsdp_audits_and_reproduces_bitwise(tmp_path: Path) -> None:
    from conftest import offline_env

    env = {**offline_env(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = _train(tmp_path, tmp_path / "runs", env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = only(tmp_path / "runs")
    report = audit(root)
    assert report.integrity.ok and report.consistency_ok, report.failures()
    idx = formats.read_json(root / formats.CHECKPOINT_INDEX)["checkpoints"]
    assert [(e["step"], e["format"], e["world_size"]) for e in idx] == [(3, "dcp", 2), (6, "dcp", 2)]
    assert (root / formats.MODEL_DIR / "model.safetensors").is_file()  # the final model, gathered unsharded

    # reproduced at the same world size, from step 0 and from the DCP checkpoint of step 3
    from3 = (f"run.resume_from={root / formats.dcp_checkpoint_dir(3)}",)
    for name, extra, steps in (("full", (), 6), ("from3", from3, 3)):
        proc = _train(tmp_path, tmp_path / name, {**env, "PROV_REPLAY": str(root)}, *extra)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = formats.read_json(only(tmp_path / name) / "reproduction" / "summary.json")
        assert summary["bitwise"] is True and summary["steps_checked"] == steps, summary

    # prov reproduce launches torchrun at the recorded world size itself: bitwise, whole and --from-step 3
    from provenance.reproduce import Options, reproduce

    mp = pytest.MonkeyPatch()
    try:
        for k, v in env.items():
            mp.setenv(k, v)
        for name, from_step, steps in (("prov-full", None, 6), ("prov-from3", 3, 3)):
            out = reproduce(root, Options(workdir=tmp_path / name, from_step=from_step))
            assert (out.exit_status, out.verdict) == (0, "reproduced (bitwise)"), out.headline
            assert out.report.command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
            summary = out.report.replay_summary
            assert summary["world_size"] == 2 and summary["steps_checked"] == steps, summary
            assert [r["bitwise"] for r in summary["ranks"]] == [True, True]
    finally:
        mp.undo()


@pytest.mark.slow  # two torchrun launchers meeting through c10d rendezvous on localhost
def test_two_nodes_one_bundle(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PROV_REPLAY", None)
    runs = tmp_path / "runs"  # shared by both "nodes", as a cluster's shared file system
    args = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-nodes", str(SCRIPT), str(runs), "4"]
    nodes = [subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    root = only(runs)
    facts = formats.read_json(root / formats.RUN_JSON)["distributed"]
    assert facts["nnodes"] == 2 and facts["world_size"] == 2 and facts["launcher"] == "torchrun"
    assert [(n["node_rank"], n["ranks"], n["local_ranks"]) for n in facts["nodes"]] == [(0, [0], [0]), (1, [1], [0])]
    assert all(n["launcher"]["torchelastic_run_id"] == "two-nodes" and n["host"] for n in facts["nodes"])
    report = audit(root)
    assert report.integrity.ok and report.check("checkpoints").status == "pass"
    assert report.check("order").status in ("pass", "warn")


def test_rank_killed_during_a_save_leaves_no_valid_checkpoint(tmp_path: Path) -> None:
    proc = launch(tmp_path / "runs", 4, FIXTURE_KILL_RANK1_AT="4")
    assert proc.returncode != 0
    root = only(tmp_path / "runs")
    deadline = time.monotonic() + 120  # rank 0's detached sealer may seal after torchrun returned
    while not (root / formats.MANIFEST).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    info = formats.read_json(root / formats.RUN_JSON)
    assert info["status"] in ("failed", "interrupted")
    idx = formats.read_json(root / formats.CHECKPOINT_INDEX)
    # step 4 is never indexed as valid (step 2 only when rank 1 finished hashing it before it died)
    assert [e["step"] for e in idx["checkpoints"]] in ([2], [])
    report = audit(root)  # the bundle still audits: sealed, the partial folder a warning naming it
    ck = report.check("checkpoints")
    assert report.integrity.ok and ck.status in ("pass", "warn"), ck.findings
    folder = root / formats.dcp_checkpoint_dir(4)
    partial = folder.is_dir() and any(folder.iterdir())  # what rank 0 wrote before the collective failed
    assert not partial or any(f.file == formats.dcp_checkpoint_dir(4) and "incomplete" in f.message
                              for f in ck.findings), ck.findings


def test_rank_killed_after_its_dcp_write_before_its_record(tmp_path: Path) -> None:
    """SIGKILL of rank 1 once DCP wrote every file of step 4 (its shards too) but before rank 1 hashed
    them: the folder looks whole, yet it is never indexed; the run seals and audits naming it."""
    from provenance.run.relaunch import latest_checkpoint

    proc = launch(tmp_path / "runs", 6, FIXTURE_KILL_RANK1_AFTER_SAVE="4")
    assert proc.returncode != 0
    root = only(tmp_path / "runs")
    info = formats.read_json(root / formats.RUN_JSON)
    assert info["status"] == "interrupted" and info["ranks_without_end"] == [1], info["error"]
    folder = root / formats.dcp_checkpoint_dir(4)
    present = {p.name for p in folder.iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "rng.rank0.json", "rng.rank1.json"} <= present
    assert "shards.rank1.json" not in present  # rank 1 died before it recorded (hashed) its files
    idx = formats.read_json(root / formats.CHECKPOINT_INDEX)
    assert [e["step"] for e in idx["checkpoints"]] == [2]  # step 4 is not indexed as valid
    events = list(formats.read_jsonl(root / formats.rank_log(formats.EVENTS, 0)))
    assert any(e["event"] == "checkpoint_incomplete" and e["step"] == 4 for e in events), events
    assert latest_checkpoint(root) == root / formats.dcp_checkpoint_dir(2)  # a relaunch resumes from step 2
    report = audit(root)  # sealed by rank 0; consistent; the partial folder named as incomplete
    ck = report.check("checkpoints")
    assert report.integrity.ok and report.consistency_ok, report.failures()
    assert ck.status == "warn" and any(f.file == formats.dcp_checkpoint_dir(4) and "incomplete" in f.message
                                       for f in ck.findings), ck.findings
    assert any("rank 1" in f.message and "stopped early" in f.message for f in report.check("ranks").findings)
