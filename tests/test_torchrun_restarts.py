"""`torchrun --max-restarts`: workers relaunched by torch elastic after a failure continue the record as
the next segment of the previous attempt's bundle (root digest, checkpoint digest, a `restart` note
saying why), from its latest valid checkpoint, with the data order continuing there: the chain audits,
and its final weights equal an uninterrupted run's, bitwise (same thread count)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from safetensors.torch import load_file

from provenance import formats
from provenance.audit import audit

SCRIPT = REPO / "tests" / "scripts" / "restart_once.py"
STEPS, CRASH_AT = 8, 5  # checkpoints at 2, 4, 6, 8; the first attempt fails after step 5


def env(**extra: str) -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    e.pop("PROV_REPLAY", None)
    return e


def bundles(runs: Path) -> list[Path]:
    return sorted((p for p in runs.iterdir() if p.is_dir()),
                  key=lambda p: formats.read_json(p / formats.RUN_JSON)["started_at"])


def losses(root: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in formats.read_jsonl(root / formats.METRICS)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("whole") / "runs"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(runs), str(STEPS), "0"], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root,) = bundles(runs)
    return root


@pytest.fixture(scope="module", params=["raise", pytest.param("kill", marks=pytest.mark.slow)])
def relaunched(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """torchrun --max-restarts=1: the first attempt fails after step 5 (raises, or is SIGKILLed)."""
    crash = str(request.param)
    runs = tmp_path_factory.mktemp(f"relaunch-{crash}") / "runs"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--max-restarts=1", "--standalone",
                           "--nproc_per_node=1", str(SCRIPT), str(runs), str(STEPS), str(CRASH_AT)], cwd=REPO,
                          env=env(FIXTURE_CRASH=crash), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return crash, runs


def test_max_restarts_relaunch_is_the_next_segment(relaunched: tuple[str, Path], uninterrupted: Path) -> None:
    crash, runs = relaunched
    first, second = bundles(runs)
    i1, i2 = (formats.read_json(p / formats.RUN_JSON) for p in (first, second))
    assert i1["torchelastic"]["restart_count"] == 0 and i2["torchelastic"]["restart_count"] == 1
    assert i1["torchelastic"]["run_id"] == i2["torchelastic"]["run_id"]
    if crash == "raise":  # the first attempt sealed itself as failed
        assert i1["status"] == "failed" and not i2["relaunch"]["previous"]["sealed_by_relaunch"]
        why = "ended failed (RuntimeError: simulated failure at step 5)"
    else:  # killed before it could seal: the relaunch sealed it, as `prov seal` does
        assert i1["status"] == "interrupted" and i1["sealed_by"]["command"] == "prov seal"
        assert i2["relaunch"]["previous"]["sealed_by_relaunch"] is True
        why = "ended interrupted (Killed: "
    # the second attempt is the next segment: the previous root digest and the checkpoint of step 4
    root1, _ = formats.parse_oms_statement(formats.read_json(first / formats.MANIFEST))
    idx1 = {e["step"]: e for e in formats.read_json(first / formats.CHECKPOINT_INDEX)["checkpoints"]}
    seg = i2["segment"]
    assert seg["number"] == 1 and seg["previous"]["run_id"] == i1["run_id"]
    assert seg["previous"]["root_digest"] == f"sha256:{root1}"
    assert seg["checkpoint"] == {"path": formats.checkpoint_name(4), "step": 4,
                                 "sha256": f"sha256:{idx1[4]['sha256']}"}
    (note,) = [n for n in formats.read_jsonl(second / formats.NOTES) if n["category"] == "restart"]
    assert note["details"]["from_step"] == 4 and note["details"]["relaunch"] == {"restart_count": 1}
    assert "after torchrun relaunched the workers (restart 1)" in note["text"] and why in note["text"], note
    # the data order continues where the checkpoint left it
    _, ids, steps = formats.order_paths(0)
    assert [s.step for s in formats.read_order(second / ids, second / steps)] == list(range(5, STEPS + 1))
    # the chain audits back to step 0
    report = audit(second)
    assert report.integrity.ok and report.consistency_ok, report.failures()
    assert report.check("segments").status == "pass", report.check("segments").findings
    # one uninterrupted run's losses and final weights, bitwise
    whole = losses(uninterrupted)
    assert {**{s: v for s, v in losses(first).items() if s <= 4}, **losses(second)} == whole
    a = load_file(second / formats.MODEL_DIR / "model.safetensors")
    b = load_file(uninterrupted / formats.MODEL_DIR / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_reproduce_chain_from_step_0(relaunched: tuple[str, Path], tmp_path: Path) -> None:
    crash, runs = relaunched
    if crash == "kill":
        pytest.skip("one chain reproduced is enough (the raise chain)")
    first, second = bundles(runs)
    prov = [sys.executable, "-m", "provenance.cli", "reproduce", "--chain", "--json", "--quiet"]
    proc = subprocess.run([*prov, "--workdir", str(tmp_path / "work"), str(second)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=400)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["verdict"] == "reproduced", proc.stderr[-3000:]
    segs = doc["segments"]
    assert [s["run_id"] for s in segs] == [first.name, second.name]
    assert [s["verdict"] for s in segs] == ["reproduced (bitwise)"] * 2 and [s["exit_status"] for s in segs] == [0, 0]
    link = segs[0]["link"]
    assert link["step"] == 4 and link["matches"] is True and link["reproduced_sha256"] == link["sha256"]
    assert "from step 0 to step 8" in doc["headline"]
    # the chain moved without its first segment: refused before anything runs, naming --chain-dir
    moved = tmp_path / "moved"
    shutil.copytree(second, moved / second.name)
    hidden = runs.with_name("hidden")
    runs.rename(hidden)
    try:
        proc = subprocess.run([*prov, str(moved / second.name)], cwd=REPO, env=env(), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and "--chain-dir DIR" in json.loads(proc.stdout)["headline"]
        assert not (moved / "work").exists()
    finally:
        hidden.rename(runs)


def test_a_relaunched_segment_reproduces_in_the_sandbox(relaunched: tuple[str, Path], tmp_path: Path) -> None:
    """--sandbox hides /tmp: the previous segment, whose checkpoint a relaunched segment restores, stays visible
    (before, the reproduction found no checkpoint and diverged at step 1)."""
    from provenance.reproduce.command import find_sandbox
    from provenance.reproduce.options import Refused

    crash, runs = relaunched
    if crash == "kill":
        pytest.skip("one relaunched segment is enough (the raise one, in the default suite)")
    try:
        find_sandbox()
    except Refused as exc:
        pytest.skip(str(exc))
    _, second = bundles(runs)
    assert Path("/tmp") in second.resolve().parents  # where the sandbox hides it
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "reproduce", "--sandbox", "--steps", "2", "--quiet",
                           "--workdir", str(tmp_path / "work"), str(second)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "reproduced (bitwise): 2 steps (steps 5–6)" in proc.stdout, \
        proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.slow  # the default training script, FSDP2 on 2 ranks, relaunched once: a few minutes on 2 cores
def test_train_fsdp_relaunched_after_a_killed_rank_resumes_from_its_dcp_checkpoint(tmp_path: Path) -> None:
    import signal
    import time

    from conftest import TINY, offline_env

    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "torch.distributed.run", "--max-restarts=1", "--standalone", "--nproc_per_node=2",
            "-m", "training.train", "--config", str(REPO / "configs" / "tiny-lm.yaml"), *TINY, "run.threads=1",
            "train.steps=12", "train.checkpoint_every=3", "train.fsdp=true", f"run.runs_dir={runs}",
            f"data.root={tmp_path / 'data'}"]
    # torch elastic's shared rendezvous store hands a relaunch the previous attempt's gloo addresses
    # (pytorch/pytorch#135712): docs/integrations.md
    e = {**offline_env(tmp_path), "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    e.pop("PROV_REPLAY", None)
    proc = subprocess.Popen(args, cwd=REPO, env=e, stdout=open(tmp_path / "torchrun.log", "w"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    killed = None
    while killed is None:  # once step 7 is logged (the checkpoint of step 6 indexed), rank 1 is killed
        assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "torchrun.log").read_text()[-3000:]
        time.sleep(0.5)
        roots = [p for p in runs.iterdir() if p.is_dir()] if runs.is_dir() else []
        if len(roots) != 1 or not (roots[0] / formats.METRICS).is_file():
            continue
        if max((m["step"] for m in formats.read_jsonl(roots[0] / formats.METRICS)), default=0) >= 7:
            info = formats.read_json(roots[0] / formats.RUN_JSON)
            killed = info["distributed"]["nodes"][0]["pids"][1]
            os.kill(killed, signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, (tmp_path / "torchrun.log").read_text()[-3000:]
    first, second = bundles(runs)
    i1, i2 = (formats.read_json(p / formats.RUN_JSON) for p in (first, second))
    assert i1["status"] == "interrupted" and i2["status"] == "completed"
    indexed = [e["step"] for e in formats.read_json(first / formats.CHECKPOINT_INDEX)["checkpoints"]]
    seg = i2["segment"]
    assert seg["previous"]["run_id"] == i1["run_id"] and seg["checkpoint"]["step"] == max(indexed) >= 6
    assert seg["checkpoint"]["path"] == formats.dcp_checkpoint_dir(max(indexed))
    (note,) = [n for n in formats.read_jsonl(second / formats.NOTES) if n["category"] == "restart"]
    assert "after torchrun relaunched the workers (restart 1)" in note["text"]
    # the steps both attempts trained (after the checkpoint, before the kill) have the same losses, bitwise;
    # none when the kill landed right after a checkpoint was indexed (the poll is not synchronised with the steps)
    again = {s: v for s, v in losses(first).items() if s > max(indexed)}
    assert all(losses(second)[s] == v for s, v in again.items())
    assert min(losses(second)) == max(indexed) + 1 and max(losses(second)) == 12
    report = audit(second)
    assert report.integrity.ok and report.consistency_ok, report.failures()
    assert report.check("segments").status == "pass" and (second / formats.MODEL_DIR / "model.safetensors").is_file()


def test_the_previous_attempt_is_found_among_more_bundles_than_are_scanned(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A runs folder holding more bundles than relaunch scans: the newest are looked at (the attempt
    torchrun ran just before), not the oldest."""
    from provenance.run import relaunch

    for i, (te_run, restart) in enumerate([("old", 0), ("old", 1), ("other", 0), ("job", 0)]):
        p = tmp_path / f"20261201T10000{i}Z-run-{i}"
        p.mkdir()
        (p / formats.RUN_JSON).write_text(json.dumps({"run_id": p.name, "started_at": f"2026-12-01T10:00:0{i}Z",
                                                      "torchelastic": {"run_id": te_run, "restart_count": restart}}))
    monkeypatch.setattr(relaunch, "MAX_SCANNED", 2)
    found = relaunch.previous_attempt(tmp_path, {"run_id": "job", "restart_count": 1})
    assert found is not None and found.name == "20261201T100003Z-run-3"


def _attempt(tmp: Path, monkeypatch: pytest.MonkeyPatch, restart: int, config: dict, job: str) -> Path:
    """One attempt under torch elastic run id 'reused' (in this process: its env as torchrun sets it)."""
    from provenance import start_run

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "reused")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restart))
    code = tmp / "code"
    code.mkdir(exist_ok=True)
    (code / "train.py").write_text("pass\n")
    with start_run(config, name="attempt", runs_dir=tmp / "runs", code_root=code, capture_output=False,
                   argv=["python", "train.py", f"--job={job}"]) as run:
        run.log(1, loss=1.0)
    return run.root


def test_a_relaunch_links_only_an_attempt_of_the_same_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two jobs reuse one --rdzv-id in one runs folder: the relaunch links the latest earlier attempt of its
    own job (same config, command and world size), says that several matched, and names the other job's
    attempt it did not link and why (before, the newest attempt with that run id was taken: the other job's)."""
    older = _attempt(tmp_path, monkeypatch, 0, {"lr": 0.1}, "a")
    newer = _attempt(tmp_path, monkeypatch, 0, {"lr": 0.1}, "a")
    other = _attempt(tmp_path, monkeypatch, 0, {"lr": 0.5}, "b")  # another job, started last
    again = _attempt(tmp_path, monkeypatch, 1, {"lr": 0.1}, "a")
    rel = formats.read_json(again / formats.RUN_JSON)["relaunch"]
    assert rel["previous"]["run_id"] == newer.name
    assert rel["match"]["matched"] == [newer.name, older.name]
    (refused,) = rel["match"]["not_linked"]
    assert refused["run_id"] == other.name and [d["what"] for d in refused["differs"]] == ["config digest",
                                                                                          "command digest"]
    (note,) = [n for n in formats.read_jsonl(again / formats.NOTES) if n["category"] == "restart"]
    assert "2 earlier attempts match" in note["text"] and f"the latest, {newer.name}, is taken" in note["text"]
    assert f"{other.name} shares the torch elastic run id but is another job (config digest" in note["text"]


def test_a_relaunch_finding_only_another_jobs_attempt_links_none(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    other = _attempt(tmp_path, monkeypatch, 0, {"lr": 0.5}, "b")
    from provenance import start_run

    (tmp_path / "code" / "train.py").write_text("pass\n")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with start_run({"lr": 0.1}, name="attempt", runs_dir=tmp_path / "runs", code_root=tmp_path / "code",
                   capture_output=False, argv=["python", "train.py", "--job=a"]) as run:
        assert run.previous_attempt is None and run.resume_point() is None
    info = formats.read_json(run.root / formats.RUN_JSON)
    assert info["relaunch"]["previous"] is None and "segment" not in info
    assert info["relaunch"]["match"]["not_linked"][0]["run_id"] == other.name
    (note,) = [n for n in formats.read_jsonl(run.root / formats.NOTES) if n["category"] == "restart"]
    assert "no earlier attempt of this job" in note["text"] and "not linked" in note["text"], note
    assert formats.read_json(other / formats.RUN_JSON).get("sealed_by") is None  # left as it was


def test_an_attempt_started_after_the_relaunch_or_without_config_is_not_linked(tmp_path: Path) -> None:
    from provenance.run import relaunch

    this = relaunch.attempt_identity(1, {"digest": "sha256:c", "command_digest": "sha256:a"})
    later, earlier = "2026-12-01T10:00:05.000000Z", "2026-12-01T10:00:01.000000Z"
    for i, (started, config) in enumerate([(later, True), (earlier, False)]):
        p = tmp_path / f"20261201T10000{i}Z-run-{i}"
        p.mkdir()
        (p / formats.RUN_JSON).write_text(json.dumps({"run_id": p.name, "started_at": started, "world_size": 1,
                                                      "torchelastic": {"run_id": "job", "restart_count": 0}}))
        if config:
            (p / formats.CONFIG_JSON).write_text(json.dumps({"digest": "sha256:c", "command_digest": "sha256:a"}))
    m = relaunch.find_previous_attempt(tmp_path, {"run_id": "job", "restart_count": 1}, this,
                                       "2026-12-01T10:00:03.000000Z")
    assert m.path is None and m.matched == []
    assert {c["run_id"]: [d["what"] for d in c["differs"]] for c in m.not_linked} == {
        "20261201T100000Z-run-0": ["started at"],
        "20261201T100001Z-run-1": [formats.CONFIG_JSON, "config digest", "command digest"]}


def test_a_relaunch_restored_from_resume_point_is_a_resume_edge_in_lineage(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A torchrun relaunch that restores run.resume_point() gets the `resume` edge a run.resume_from segment
    gets (the previous attempt's root digest, the checkpoint's path and digest), and `prov lineage` walks it
    to the previous attempt (before, the edge was there only for a checkpoint given as run.resume_from)."""
    import torch

    from provenance import start_run
    from provenance.lineage import LineageCallback, build_graph
    from provenance.lineage.render import render_text
    from provenance.store import Store

    code, runs = tmp_path / "code", tmp_path / "runs"
    code.mkdir()
    (code / "train.py").write_text("pass\n")
    kw: dict = {"name": "relaunched", "runs_dir": runs, "code_root": code, "capture_output": False,
                "argv": ["python", "train.py"]}
    model = torch.nn.Linear(3, 2)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    with pytest.raises(RuntimeError, match="node lost"):
        with start_run({"lr": 0.1}, callbacks=[LineageCallback()], **kw) as first:
            first.log(1, loss=1.0)
            first.checkpoint(1, model)
            raise RuntimeError("node lost")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with start_run({"lr": 0.1}, callbacks=[LineageCallback()], **kw) as second:
        point = second.resume_point()
        assert point is not None and second.restore(point, model)[0] == 1
        second.log(2, loss=0.5)
    seg = formats.read_json(second.root / formats.RUN_JSON)["segment"]
    root1, _ = formats.parse_oms_statement(formats.read_json(first.root / formats.MANIFEST))
    assert seg["previous"]["root_digest"] == f"sha256:{root1}"
    (edge,) = [e for e in json.loads((second.root / formats.LINEAGE_JSON).read_text())["edges"]
               if e["kind"] == "resume"]
    assert edge["parent"] == seg["previous"]["root_digest"] and edge["parent_path"] == seg["checkpoint"]["path"]
    assert edge["digest"] == seg["checkpoint"]["sha256"] and edge["consumed"] == "run.resume_point"
    g = build_graph(second.root, Store.default(near=second.root))
    ((_, _, parent),) = [x for x in g.parent_edges() if x[1]["kind"] == "resume"]
    assert parent is not None and parent.bundle.run_id == first.run_id and not g.problems
    assert "resume" in render_text(g) and first.run_id in render_text(g)
