"""Restarts continue the record: each resumed run is a segment linked to the previous bundle (its root
digest) and the checkpoint (its digest), with a `restart` note saying why; changes are refused unless
allowed; `prov audit` verifies the chain back to step 0 and names a tampered middle segment."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from provenance import formats, start_run
from provenance.audit import audit
from provenance.audit.segments import verify_chain
from provenance.bundle import seal_folder
from provenance.run.core import ResumeRefused


def segment(tmp: Path, runs: Path, last: int, resume: Path | None = None, fail_at: int | None = None,
            lr: float = 0.1, allow: tuple[str, ...] = ()) -> Path:
    (tmp / "src").mkdir(parents=True, exist_ok=True)
    (tmp / "src" / "train.py").write_text("print('hi')\n")
    run = start_run({"lr": lr, "resume_from": str(resume) if resume else None}, name="seg", runs_dir=runs, seed=1,
                    threads=1, code_root=tmp / "src", capture_output=False, argv=["python", "train.py"])
    try:
        with run:
            model = torch.nn.Linear(3, 1)  # after start_run seeded the RNGs
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            start = run.restore(resume, model, opt, allow_change=allow)[0] if resume else 0
            for step in range(start + 1, last + 1):
                ids = run.batch(step, lambda s: [s * 2, s * 2 + 1])
                x = torch.tensor([[float(i), 1.0, -float(i)] for i in ids]) / 10
                loss = model(x).pow(2).mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
                run.log(step, loss=loss.item())
                if step % 2 == 0:
                    run.checkpoint(step, model, opt)
                if step == fail_at:
                    raise RuntimeError("node lost")
    except RuntimeError:
        pass
    return run.root


def losses(root: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in formats.read_jsonl(root / formats.METRICS)}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("seg")
    runs = tmp / "runs"
    a = segment(tmp, runs, 8, fail_at=4)  # fails after the checkpoint of step 4
    b = segment(tmp, runs, 8, resume=a / formats.checkpoint_name(4), fail_at=6)
    c = segment(tmp, runs, 8, resume=b / formats.checkpoint_name(6))
    return tmp, a, b, c


def test_segments_link_and_continue(chain: tuple[Path, Path, Path, Path]) -> None:
    tmp, a, b, c = chain
    ia, ib, ic = (formats.read_json(p / formats.RUN_JSON) for p in (a, b, c))
    assert ia["status"] == "failed" and ib["status"] == "failed" and ic["status"] == "completed"
    assert "segment" not in ia
    seg = ic["segment"]
    root_b, _ = formats.parse_oms_statement(formats.read_json(b / formats.MANIFEST))
    assert seg["number"] == 2 and seg["previous"]["run_id"] == ib["run_id"]
    assert seg["previous"]["root_digest"] == f"sha256:{root_b}"
    idx_b = {e["step"]: e for e in formats.read_json(b / formats.CHECKPOINT_INDEX)["checkpoints"]}
    assert seg["checkpoint"] == {"path": formats.checkpoint_name(6), "step": 6,
                                 "sha256": f"sha256:{idx_b[6]['sha256']}"}
    (note,) = [n for n in formats.read_jsonl(c / formats.NOTES) if n["category"] == "restart"]
    assert note["details"]["from_step"] == 6 and "ended failed (RuntimeError: node lost)" in note["text"]
    # the data order continues exactly where each checkpoint left it
    steps = [s.step for s in formats.read_order(c / formats.order_paths(0)[1], c / formats.order_paths(0)[2])]
    assert steps == [7, 8]
    # the losses of the chain equal one uninterrupted run's, bitwise
    whole = segment(tmp, tmp / "whole", 8)
    joined = {**{s: v for s, v in losses(a).items() if s <= 4}, **{s: v for s, v in losses(b).items() if s <= 6},
              **losses(c)}
    assert joined == losses(whole)


def test_audit_verifies_the_chain_and_names_a_tampered_middle_segment(chain: tuple[Path, Path, Path, Path],
                                                                       tmp_path: Path) -> None:
    _, a, b, c = chain
    report = audit(c)
    seg = report.check("segments")
    assert seg.status == "pass" and seg.summary.startswith("2 previous segment(s)"), seg.findings
    assert [s["from_step"] for s in verify_chain(c).segments] == [6, 4]
    # moved elsewhere: the previous segments are found with --segments DIR
    import shutil

    moved, segs = tmp_path / "moved", tmp_path / "segs"
    shutil.copytree(c, moved / c.name)
    for p in (a, b):
        shutil.copytree(p, segs / p.name)
    hidden = a.parent.with_name("hidden")
    a.parent.rename(hidden)  # the recorded paths are gone, as on another machine
    try:
        lost = verify_chain(moved / c.name)
        assert not lost.ok and "give its folder with --segments DIR" in lost.errors[0][1]
        assert verify_chain(moved / c.name, [segs]).ok
        proc = subprocess.run([sys.executable, "-m", "provenance.cli", "audit", "--json", "--no-progress",
                               "--segments", str(segs), str(moved / c.name)], capture_output=True, text=True,
                              timeout=120)
        doc = json.loads(proc.stdout)
        check = next(ch for ch in doc["consistency"]["checks"] if ch["name"] == "segments")
        assert check["status"] == "pass", proc.stderr[-2000:]
    finally:
        hidden.rename(a.parent)
    # the middle segment changed and re-sealed: its root digest is not the one the last segment recorded
    metrics = b / formats.METRICS
    saved = metrics.read_bytes()
    try:
        metrics.write_bytes(saved.replace(b'"step": 5', b'"step": 5 ', 1) if b'"step": 5' in saved else saved + b"\n")
        seal_folder(b)
        chain2 = verify_chain(c)
        assert not chain2.ok
        assert any(where == str(b) and ib_id(b) in msg for where, msg in chain2.errors), chain2.errors
        assert audit(c).check("segments").status == "fail"
    finally:
        metrics.write_bytes(saved)
        seal_folder(b)


def ib_id(root: Path) -> str:
    return str(formats.read_json(root / formats.RUN_JSON)["run_id"])


def test_resume_refuses_a_change_unless_allowed(chain: tuple[Path, Path, Path, Path]) -> None:
    tmp, a, _, _ = chain
    runs = tmp / "changed"
    with pytest.raises(ResumeRefused, match=r"lr changed: 0\.1 in .*, 0\.2 in this run"):
        segment(tmp, runs, 6, resume=a / formats.checkpoint_name(4), lr=0.2)
    root = segment(tmp, runs, 6, resume=a / formats.checkpoint_name(4), lr=0.2, allow=("lr",))
    notes: list[dict[str, Any]] = list(formats.read_jsonl(root / formats.NOTES))
    assert any(n["category"] == "override" and n["details"]["key"] == "lr" and n["details"]["resume"] for n in notes)
    # a checkpoint that does not match its index is refused, naming the file
    ck = a / formats.checkpoint_name(2)
    data = ck.read_bytes()
    try:
        ck.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        with pytest.raises(ResumeRefused, match=r"step-00000002\.safetensors: checkpoint does not match its index"):
            segment(tmp, runs, 6, resume=ck)
    finally:
        ck.write_bytes(data)


def test_node_facts_name_accelerators_and_every_determinism_knob() -> None:
    from provenance.capture.env import node_facts

    facts = node_facts()
    t = facts["torch"]
    assert t["version"] == torch.__version__ and t["distributed_backends"]["gloo"] is True
    knobs = t["determinism_knobs"]
    assert knobs["deterministic_algorithms"] == torch.are_deterministic_algorithms_enabled()
    assert knobs["cuda_matmul_allow_tf32"] == torch.backends.cuda.matmul.allow_tf32
    assert knobs["cudnn_allow_tf32"] == torch.backends.cudnn.allow_tf32
    if not torch.cuda.is_available():  # a CPU build records no CUDA facts, and needs none
        assert t["nccl_version"] is None and "gpus" not in t


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_checkpoint_hashing_thread_yields_to_training(tmp_path: Path) -> None:
    import os

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print('hi')\n")
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with start_run({}, name="nice", runs_dir=tmp_path / "runs", seed=1, threads=1, code_root=tmp_path / "src",
                   capture_output=False, argv=["python", "train.py"]) as run:
        model = torch.nn.Linear(3, 1)
        run.log(1, loss=0.0)
        run.checkpoint(1, model)
        assert run.recorder is not None
        pool = run.recorder._pool
        pool.submit(lambda: None).result()  # the checkpoint thread is up
        (thread,) = list(pool._threads)
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == 19  # the hashing thread only
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # training keeps its own
    idx = formats.read_json(run.root / formats.CHECKPOINT_INDEX)["checkpoints"]
    assert [e["step"] for e in idx] == [1]  # and it still finished before the seal
