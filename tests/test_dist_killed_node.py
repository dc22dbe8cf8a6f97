"""A node lost mid-training: two torchrun launchers (two "nodes" of two ranks each, c10d rendezvous on
localhost, one shared run folder). One node is killed as a cluster loses it: its launcher and its
workers (torch elastic starts every worker in its own session, so a SIGKILLed launcher leaves them
running: they are killed too), or frozen (SIGSTOP: its connections stay open, so only the process
group's timeout ends the survivors' wait). The survivors must not hang, the bundle seals as
`interrupted` (rank 0 itself, or `prov seal` when rank 0 was on the lost node), and `prov audit` names
the ranks whose records stop early, at which step, while the survivors' records stay consistent."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from provenance import formats
from provenance.audit import audit
from provenance.run import ranks

SCRIPT = REPO / "tests" / "scripts" / "killed_node.py"
LOSE_AT = 3  # the lost node's ranks stop after step 3; the survivors are then in step 4's all-reduce


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_nodes(tmp: Path, lose_node: int, how: str, pg_timeout_s: int = 60) -> tuple[Path, list[dict[str, Any]],
                                                                                     list[int | None]]:
    """Launch 2 nodes x 2 ranks, lose `lose_node` at step LOSE_AT (how: "kill" or "freeze"); returns the
    run folder, the ranks' markers and the launchers' exit codes (after the lost node's are reaped)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FIXTURE_LOSE_NODE": f"{lose_node}:{LOSE_AT}",
           "FIXTURE_PG_TIMEOUT_S": str(pg_timeout_s), "PROV_RANK_GRACE_S": "5"}
    env.pop("PROV_REPLAY", None)
    runs, markers = tmp / "runs", tmp / "markers"  # runs: shared by both nodes, as a cluster's file system
    launchers = []
    for i in range(2):
        args = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=lost-node",
                f"--rdzv-conf=is_host={1 if i == 0 else 0},read_timeout=20", "--max-restarts=0", str(SCRIPT),
                str(runs), "50", str(markers)]
        launchers.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=open(tmp / f"node{i}.log", "w"),
                                          stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 240
    while len(list(markers.glob("rank*.json")) if markers.is_dir() else []) < 4:
        assert time.monotonic() < deadline, (tmp / "node0.log").read_text()[-3000:]
        assert all(p.poll() is None for p in launchers), (tmp / "node0.log").read_text()[-3000:]
        time.sleep(0.2)
    ms = sorted((json.loads(p.read_text()) for p in markers.glob("rank*.json")), key=lambda m: m["rank"])
    lost = [m for m in ms if m["node"] == lose_node]
    launcher_pid = lost[0]["launcher_pid"]
    frozen = []
    try:
        for pid in [launcher_pid, *(m["pid"] for m in lost)]:
            if how == "kill":  # the node is gone: its launcher and its workers, at once
                os.kill(pid, signal.SIGKILL)
            else:  # the node hangs (no connection is closed): only the process group's timeout ends the wait
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)
        survivor = next(p for p in launchers if p.pid != launcher_pid)
        if how == "kill":
            survivor.wait(timeout=pg_timeout_s + 120)  # the survivors end, and so does their launcher
        else:  # the survivors' workers end (their launcher may wait on the frozen node's rendezvous store)
            ends = [runs_root(runs) / formats.rank_log(formats.EVENTS, m["rank"]) for m in ms if m not in lost]
            while not all(ranks.rank_ended(p.parent.parent, int(p.stem.rsplit("rank", 1)[1]), 4) for p in ends):
                assert time.monotonic() < deadline + pg_timeout_s + 120, "the survivors hang"
                time.sleep(0.5)
            try:
                survivor.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in launchers:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=60)
    return runs_root(runs), ms, [p.returncode for p in launchers]


def runs_root(runs: Path) -> Path:
    (root,) = [p for p in runs.iterdir() if p.is_dir()]
    return root


def assert_names_lost_ranks(root: Path, lost: list[int], survivors: list[int]) -> None:
    report = audit(root)
    assert report.integrity.ok and report.consistency_ok, report.failures()
    ranks = report.check("ranks")
    assert ranks.status == "warn", ranks.findings
    named = {f.file: f.message for f in ranks.findings}
    for r in lost:
        msg = named.pop(formats.rank_log(formats.EVENTS, r))
        assert f"rank {r} (node " in msg and f"stopped early: its records end at step {LOSE_AT} " in msg, msg
    assert not named, named  # the survivors are not named
    assert f"ranks {', '.join(map(str, survivors))} ended interrupted" in ranks.summary, ranks.summary
    # the survivors' records stay consistent: every rank's order chain intact, metrics contiguous
    assert report.check("order").status in ("pass", "warn") and report.check("metrics").status == "pass"
    order = report.check("order").summary
    for r in survivors:
        assert f"rank {r}: steps 1..{LOSE_AT + 1}, chain intact" in order, order
    for r in lost:
        assert f"rank {r}: steps 1..{LOSE_AT}, chain intact" in order, order


def test_killed_node_survivors_seal_interrupted_and_the_audit_names_the_lost_ranks(tmp_path: Path) -> None:
    root, ms, codes = two_nodes(tmp_path, lose_node=1, how="kill")
    assert [m["node"] for m in ms] == [0, 0, 1, 1]  # ranks 0, 1 on node 0; 2, 3 on the lost node
    assert codes[0] not in (0, None)  # the surviving launcher reports the failure
    info = formats.read_json(root / formats.RUN_JSON)
    assert info["status"] == "interrupted" and info["exit_status"] != 0, info["error"]
    assert info["error"]["cause"].startswith("a collective operation failed")
    assert info["ranks_without_end"] == [2, 3]
    assert (root / formats.MANIFEST).is_file()  # sealed by rank 0
    assert_names_lost_ranks(root, lost=[2, 3], survivors=[0, 1])


@pytest.mark.slow  # waits out a process-group timeout; then `prov seal`
def test_frozen_node_with_rank0_times_out_and_prov_seal_seals_it(tmp_path: Path) -> None:
    root, _, _ = two_nodes(tmp_path, lose_node=0, how="freeze", pg_timeout_s=15)
    assert not (root / formats.MANIFEST).exists()  # rank 0 was on the lost node: nobody sealed
    for r in (2, 3):  # the survivors' collective timed out: they ended interrupted, not hung
        events = list(formats.read_jsonl(root / formats.rank_log(formats.EVENTS, r)))
        assert events[-1]["event"] == "interrupted", events
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "seal", str(root)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert formats.read_json(root / formats.RUN_JSON)["status"] == "interrupted"
    assert_names_lost_ranks(root, lost=[0, 1], survivors=[2, 3])


def test_rank0_failing_alone_is_sealed_after_the_others_end(tmp_path: Path) -> None:
    """Rank 0 raises while rank 1 waits for it in a collective: rank 1 ends only once rank 0's process
    exits, so rank 0 leaves the seal to a detached sealer, which seals after rank 1's end event."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FIXTURE_RAISE_RANK0_AT": "3", "PROV_RANK_GRACE_S": "3"}
    env.pop("PROV_REPLAY", None)
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(SCRIPT), str(runs), "8", str(tmp_path / "markers")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    root = runs_root(runs)
    deadline = time.monotonic() + 120
    while not (root / formats.MANIFEST).is_file():
        assert time.monotonic() < deadline, "never sealed"
        time.sleep(0.2)
    time.sleep(0.5)  # the seal's own write
    info = formats.read_json(root / formats.RUN_JSON)
    assert info["status"] == "failed" and info["error"]["message"] == "rank 0 fails alone at step 3"
    assert info["sealed_by"]["waited_for_ranks"] == [1] and "ranks_without_end" not in info
    report = audit(root)  # rank 1's end was written before the seal: nothing changed after it
    assert report.integrity.ok and report.consistency_ok, report.failures()
    assert report.check("ranks").summary == "2 ranks: ranks 0 ended failed (last step 3); ranks 1 ended interrupted " \
                                            "(last step 4)"


def _left_for_the_sealer(tmp: Path) -> Path:
    """A bundle as rank 0 leaves it for its detached sealer: ended (failed), run.json written, not sealed;
    rank 0's process gone, rank 1 wrote its end event."""
    from provenance import start_run
    from provenance.bundle import write_run_info

    (tmp / "code").mkdir()
    (tmp / "code" / "train.py").write_text("pass\n")
    with start_run({"x": 1}, name="sealer", runs_dir=tmp / "runs", code_root=tmp / "code",
                   capture_output=False) as run:
        run.log(1, loss=1.0)
    root = run.root
    (root / formats.MANIFEST).unlink()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    info = formats.read_json(root / formats.RUN_JSON)
    info.update(status="failed", exit_status=1, pid=int(gone.stdout), process=None, world_size=2,
                error={"type": "RuntimeError", "message": "rank 0 fails alone", "traceback": None})
    write_run_info(root, info)
    (root / formats.rank_log(formats.EVENTS, 1)).write_text(json.dumps({"event": "interrupted"}) + "\n")
    return root


def _prov_seal(root: Path) -> str:
    from provenance.bundle import BundleError
    from provenance.recover import seal_run

    try:
        return f"sealed {seal_run(root)['root_digest']}"
    except BundleError as exc:
        return str(exc)


def _locked(root: Path) -> bool:
    import fcntl

    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_the_detached_sealer_and_a_racing_prov_seal_seal_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`prov seal` runs just as the detached sealer is about to record its ranks: it waits for the sealer's
    folder lock and finds the bundle sealed (before, it sealed, then the sealer rewrote run.json and sealed
    over it: two seals, the first one's root digest gone). A sealer finding a sealed bundle does nothing."""
    import threading

    from provenance import bundle, recover

    root = _left_for_the_sealer(tmp_path)
    seals: list[str] = []
    real_seal, real_write = bundle.seal_folder_locked, bundle.write_run_info

    def counted_seal(*a: Any, **k: Any) -> str:
        seals.append(real_seal(*a, **k))
        return seals[-1]

    said: list[str] = []
    waiting: list[threading.Thread] = []

    def prov_seal_races(dest: Any, info: dict[str, Any]) -> None:
        if not said and not waiting:
            if _locked(root):  # the sealer holds the folder lock: `prov seal` waits for it
                waiting.append(threading.Thread(target=lambda: said.append(_prov_seal(root))))
                waiting[0].start()
            else:
                said.append(_prov_seal(root))
        real_write(dest, info)

    monkeypatch.setattr(bundle, "seal_folder_locked", counted_seal)
    monkeypatch.setattr(recover, "seal_folder_locked", counted_seal)
    monkeypatch.setattr(bundle, "write_run_info", prov_seal_races)
    ranks.seal_when_ended(root, 0, [1], 2, 0.0)
    for t in waiting:
        t.join(timeout=60)
    assert len(seals) == 1, seals
    assert len(said) == 1 and "already sealed" in said[0], said
    info = formats.read_json(root / formats.RUN_JSON)
    assert info["status"] == "failed" and info["sealed_by"]["command"] == "rank 0's detached sealer"
    manifest = (root / formats.MANIFEST).read_bytes()
    ranks.seal_when_ended(root, 0, [1], 2, 0.0)  # sealed meanwhile: a no-op
    assert len(seals) == 1 and (root / formats.MANIFEST).read_bytes() == manifest
    assert formats.read_json(root / formats.RUN_JSON) == info
    report = audit(root)
    assert report.integrity.ok, report.failures()


def test_a_failing_detached_sealer_leaves_the_bundle_for_prov_seal(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The sealer fails while it seals: run.json is as rank 0 left it (no `sealed_by` claiming a seal that
    never happened), nothing is sealed, and `prov seal` seals it."""
    from provenance import bundle

    root = _left_for_the_sealer(tmp_path)
    left = formats.read_json(root / formats.RUN_JSON)

    def disk_full(*a: Any, **k: Any) -> str:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(bundle, "seal_folder_locked", disk_full)
        with pytest.raises(OSError, match="No space left"):
            ranks.seal_when_ended(root, 0, [1], 2, 0.0)
    assert not (root / formats.MANIFEST).exists()
    assert formats.read_json(root / formats.RUN_JSON) == left
    assert _prov_seal(root).startswith("sealed ")
    info = formats.read_json(root / formats.RUN_JSON)
    # the seal that was made says who made it, and what it found (no sealer's `sealed_by` to replace)
    assert info["status"] == "failed" and info["sealed_by"]["command"] == "prov seal"
    assert info["sealed_by"]["status_before"] == "failed" and "replaces" not in info["sealed_by"]
    assert audit(root).integrity.ok


def _raised_through(files: list[str], message: str) -> tuple[BaseException, Any]:
    """An exception raised in a chain of functions compiled as if they lived in `files` (outermost first)."""
    ns: dict[str, Any] = {"message": message}
    exec(compile("def f0():\n    raise RuntimeError(message)\n", files[-1], "exec"), ns)
    for i, name in enumerate(reversed(files[:-1]), start=1):
        exec(compile(f"def f{i}():\n    f{i - 1}()\n", name, "exec"), ns)
    try:
        ns[f"f{len(files) - 1}"]()
    except RuntimeError as exc:
        return exc, exc.__traceback__
    raise AssertionError("did not raise")


def test_a_lost_peer_seen_through_dtensor_collectives_is_a_collective_failure() -> None:
    """FSDP2's full state dict gathers through DTensor redistribute and functional collectives, whose last
    frame is torch/_ops.py: a gloo 'Connection reset by peer' there is a lost peer (the run is interrupted,
    not failed), as one raised in distributed_c10d.py is; a RuntimeError of the training's own is not."""
    layout = ranks.RankLayout(rank=0, world_size=2)
    site = "/venv/lib/python3.11/site-packages/torch"
    gloo = ("[third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:10624: Connection reset by "
            "peer. This is typically caused by a remote worker hanging")
    via_dtensor = [f"{site}/distributed/tensor/_redistribute.py", f"{site}/distributed/_functional_collectives.py",
                   f"{site}/_ops.py"]
    assert layout.collective_failed(*_raised_through(["/work/train.py", *via_dtensor], gloo))
    assert layout.collective_failed(*_raised_through(["/work/train.py", f"{site}/distributed/distributed_c10d.py"],
                                                     "any message"))
    assert not layout.collective_failed(*_raised_through(["/work/train.py", *via_dtensor], "shape mismatch"))
    assert not layout.collective_failed(*_raised_through(["/work/train.py", "/work/model.py"], gloo))
    assert not ranks.RankLayout(rank=0, world_size=1).collective_failed(
        *_raised_through(["/work/train.py", *via_dtensor], gloo))
