"""The Python API as a script sees it: start_run's typed signature, hooks, public event/add_file."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from provenance import Callback, formats, start_run
from provenance.bundle import BundleError
from provenance.run import Component, Run


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _sealed(root: Path) -> set[str]:
    return {r["name"] for r in formats.read_json(root / formats.MANIFEST)["predicate"]["resources"]}


def _open(tmp: Path, **kw: Any) -> Run:
    (tmp / "src").mkdir(parents=True, exist_ok=True)
    (tmp / "src" / "train.py").write_text("print('hi')\n")
    return start_run({"lr": 0.1}, name="api", runs_dir=tmp / "runs", seed=1, threads=1,
                     code_root=tmp / "src", capture_output=False, argv=["python", "train.py"], **kw)


def test_start_run_has_a_typed_signature() -> None:
    params = inspect.signature(start_run).parameters
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values())
    assert params["name"].kind is inspect.Parameter.KEYWORD_ONLY
    with pytest.raises(TypeError):
        start_run({}, name="x", no_such_argument=1)  # type: ignore[call-arg]


class Seen(Callback):
    def __init__(self) -> None:
        self.batches: list[tuple[int, list[int]]] = []
        self.hooks: list[str] = []

    def on_start(self, run: Run) -> None:
        self.hooks.append("start")

    def on_batch(self, run: Run, step: int, sample_ids: list[int]) -> None:
        self.batches.append((step, sample_ids))
        sample_ids.append(999)  # a callback's copy: changing it changes nothing recorded

    def on_end(self, run: Run, status: str, root_digest: str | None) -> None:
        self.hooks.append(status)


class Broken(Callback):
    def on_batch(self, run: Run, step: int, sample_ids: list[int]) -> None:
        raise RuntimeError("observer bug")


def test_on_batch_sees_every_batch_and_public_event_and_add_file_land_in_the_seal(tmp_path: Path) -> None:
    seen = Seen()
    src = tmp_path / "extra.txt"
    src.write_text("from a file\n")
    with _open(tmp_path, callbacks=[seen, Broken()]) as run:
        assert run.batch(1, lambda s: [s, s + 1]) == [1, 2]
        run.record_batch(2, [5, 6])
        run.log(1, loss=0.5)
        run.event("integration_said", detail="x")
        run.add_file("integrations/thing.json", obj={"b": 1, "a": [1, 2]})
        run.add_file("integrations/raw.bin", data=b"\x00\x01")
        run.add_file("integrations/copied.txt", src)
        run.append_jsonl("integrations/log.jsonl", {"n": 1})
        for reserved in ("run.json", "manifest.json", "order/rank0.json", "checkpoints/index.json"):
            with pytest.raises(BundleError, match=reserved):
                run.add_file(reserved, data=b"x")
        with pytest.raises(ValueError, match="exactly one"):
            run.add_file("integrations/two.bin", src, data=b"x")
    assert seen.batches == [(1, [1, 2, 999]), (2, [5, 6, 999])] and seen.hooks == ["start", "completed"]
    root = run.root
    steps = list(formats.read_order(root / "order/rank0.ids.u32", root / "order/rank0.steps.bin"))
    assert [(s.step, list(s.sample_ids)) for s in steps] == [(1, [1, 2]), (2, [5, 6])]
    events = _read_jsonl(root / formats.EVENTS)
    said = [e for e in events if e["event"] == "integration_said"]
    assert len(said) == 1 and said[0]["detail"] == "x"
    failed = [e for e in events if e["event"] == "observer_failed"]
    assert len(failed) == 2 and failed[0]["observer"] == "Broken" and failed[0]["hook"] == "on_batch"
    assert json.loads((root / "integrations/thing.json").read_text()) == {"a": [1, 2], "b": 1}
    assert (root / "integrations/raw.bin").read_bytes() == b"\x00\x01"
    assert (root / "integrations/copied.txt").read_text() == "from a file\n"
    assert _read_jsonl(root / "integrations/log.jsonl") == [{"n": 1}]
    assert {"integrations/thing.json", "integrations/raw.bin", "integrations/copied.txt",
            "integrations/log.jsonl"} <= _sealed(root)


class Reverse(Component):
    """A component may steer the batch of run.batch (the replay does); never that of record_batch."""

    def on_batch(self, run: Run, step: int, sample_ids: list[int], *,  # type: ignore[override]
                 replaceable: bool = False) -> list[int] | None:
        return sample_ids[::-1]


def test_a_component_steers_run_batch_but_not_record_batch(tmp_path: Path) -> None:
    with _open(tmp_path, components=[Reverse()]) as run:
        assert run.batch(1, lambda s: [1, 2, 3]) == [3, 2, 1]
        run.record_batch(2, [1, 2, 3])
    steps = list(formats.read_order(run.root / "order/rank0.ids.u32", run.root / "order/rank0.steps.bin"))
    assert [list(s.sample_ids) for s in steps] == [[3, 2, 1], [1, 2, 3]]


def test_a_failing_component_fails_the_run(tmp_path: Path) -> None:
    class Strict(Component):
        def on_log(self, run: Run, step: int, metrics: dict[str, Any]) -> None:
            raise RuntimeError("component refused")

    with pytest.raises(RuntimeError, match="component refused"), _open(tmp_path, components=[Strict()]) as run:
        run.log(1, loss=1.0)
    assert formats.read_json(run.root / formats.RUN_JSON)["status"] == "failed"


def test_purpose_notes_and_overrides_are_notes_at_step_0(tmp_path: Path) -> None:
    overrides = [{"key": "train.lr", "old": 0.003, "new": 0.01}]
    with _open(tmp_path, purpose="to test the decision notes", notes=["second try, smaller batch"],
               overrides=overrides) as run:
        run.log(1, loss=1.0)
        run.note("switched tokenizer", category="data", details={"why": "coverage"})
    notes = _read_jsonl(run.root / formats.NOTES)
    assert [(n["category"], n["step"]) for n in notes] == [("purpose", 0), ("purpose", 0), ("override", 0),
                                                          ("data", 1)]
    assert notes[0]["text"] == "to test the decision notes" and notes[1]["text"] == "second try, smaller batch"
    assert notes[2]["details"] == {"key": "train.lr", "old": 0.003, "new": 0.01} and "train.lr" in notes[2]["text"]
    assert notes[3]["details"] == {"why": "coverage"}
    assert formats.NOTES in _sealed(run.root)


def test_override_changes_lists_only_keys_that_differ_from_the_file(tmp_path: Path) -> None:
    from provenance.config import override_changes
    from training.config import Config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  steps: 100\n  lr: 0.001\nrun:\n  documents:\n    paper: https://x\n")
    changes = override_changes(Config, cfg, ["train.steps=100", "train.lr=0.01", "run.seed=7",
                                             "run.documents.paper=https://y"])
    assert changes == [{"key": "train.lr", "old": 0.001, "new": 0.01},
                       {"key": "run.seed", "old": 1337, "new": 7},
                       {"key": "run.documents.paper", "old": "https://x", "new": "https://y"}]


def test_add_note_to_a_sealed_bundle_reseals_it(tmp_path: Path) -> None:
    from provenance.bundle import add_note

    with _open(tmp_path) as run:
        run.log(3, loss=1.0)
    rec, digest = add_note(run.root, "reproduced across a thread-count difference", "reproduction", step=3,
                           details={"difference": "threads 2 -> 1"})
    assert digest is not None and digest != run.root_digest
    assert formats.parse_oms_statement(formats.read_json(run.root / formats.MANIFEST))[0] == digest
    assert _read_jsonl(run.root / formats.NOTES)[-1] == rec and rec["step"] == 3
    with pytest.raises(ValueError, match="category"):
        add_note(run.root, "x", "nonsense")


def _original(tmp: Path, batches: list[list[int]]) -> Path:
    with _open(tmp / "orig") as run:
        for step, ids in enumerate(batches, 1):
            run.record_batch(step, ids)
            run.log(step, loss=1.0 / step)
    return run.root


def _replay_summary(root: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return formats.read_json(root / "reproduction" / "summary.json"), _read_jsonl(root / "reproduction/steps.jsonl")


def test_record_batch_is_compared_in_a_replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    orig = _original(tmp_path, [[1, 2], [3, 4], [5, 6]])
    monkeypatch.setenv("PROV_REPLAY", str(orig))
    with _open(tmp_path / "same") as run:  # the same loop: every batch and loss matches
        for step, ids in enumerate([[1, 2], [3, 4], [5, 6]], 1):
            run.record_batch(step, ids)
            run.log(step, loss=1.0 / step)
    summary, _ = _replay_summary(run.root)
    assert summary["bitwise"] is True and summary["last_step"] == 3 and summary["steps_checked"] == 3
    with _open(tmp_path / "other") as run:  # the loop chose another batch at step 2: detected, not replayed
        for step, ids in enumerate([[1, 2], [4, 3], [5, 6]], 1):
            run.record_batch(step, ids)
            run.log(step, loss=1.0 / step)
    summary, steps = _replay_summary(run.root)
    first = summary["first_divergence"]
    assert summary["bitwise"] is False and summary["last_step"] == 3
    assert first["kind"] == "order" and first["step"] == 2 and first["replayed"] is False
    assert steps[1]["order"] == "differs" and steps[1]["replayed"] is False and steps[1]["source"] == "record_batch"
    recorded = list(formats.read_order(run.root / "order/rank0.ids.u32", run.root / "order/rank0.steps.bin"))
    assert list(recorded[1].sample_ids) == [4, 3]  # what the loop trained on, not the original's


def test_an_unused_replayed_batch_is_a_warning_not_a_claim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from provenance.diff import divergence_text

    orig = _original(tmp_path, [[1, 2], [3, 4]])
    monkeypatch.setenv("PROV_REPLAY", str(orig))
    with _open(tmp_path / "ignored") as run:
        for step in (1, 2):
            run.batch(step, lambda s: [s * 10, s * 10 + 1])  # the return value is dropped
            run.log(step, loss=1.0 / step)
    summary, steps = _replay_summary(run.root)
    assert summary["first_divergence"]["replayed"] is False and [s["replayed"] for s in steps] == [False, False]
    events = [e for e in _read_jsonl(run.root / formats.EVENTS) if e["event"] == "replayed_batch_unused"]
    assert [e["step"] for e in events] == [1, 2]
    assert "did not use the replayed batch" in divergence_text(summary["first_divergence"])
    with _open(tmp_path / "used") as run:
        for step in (1, 2):
            ids = run.batch(step, lambda s: [s * 10, s * 10 + 1])
            _ = [i + 1 for i in ids]  # the loop reads the ids it was given
            run.log(step, loss=1.0 / step)
    summary, steps = _replay_summary(run.root)
    assert summary["first_divergence"]["replayed"] is True and [s["replayed"] for s in steps] == [True, True]
    assert not [e for e in _read_jsonl(run.root / formats.EVENTS) if e["event"] == "replayed_batch_unused"]
    assert "trained on the replayed batch" in divergence_text(summary["first_divergence"])
    recorded = list(formats.read_order(run.root / "order/rank0.ids.u32", run.root / "order/rank0.steps.bin"))
    assert [list(s.sample_ids) for s in recorded] == [[1, 2], [3, 4]]


def test_a_reproduction_records_a_reproduction_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    orig = _original(tmp_path, [[1, 2]])
    monkeypatch.setenv("PROV_REPLAY", str(orig))
    with _open(tmp_path / "r") as run:
        run.record_batch(1, [1, 2])
        run.log(1, loss=1.0)
    (note,) = [n for n in _read_jsonl(run.root / formats.NOTES) if n["category"] == "reproduction"]
    assert note["step"] == 0 and note["details"]["original_run_id"] == orig.name
    assert note["details"]["original_root_digest"] == formats.parse_oms_statement(
        formats.read_json(orig / formats.MANIFEST))[0]


def test_env_vars_redirect_the_runs_folder_and_relative_data_roots(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from provenance import DatasetSpec, data_path

    staged = tmp_path / "staged"
    (staged / "data" / "toy").mkdir(parents=True)
    (staged / "data" / "toy" / "a.txt").write_text("x\ny\n")
    monkeypatch.setenv("PROV_RUNS_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("PROV_DATA_ROOT", str(staged))
    spec = DatasetSpec(name="toy", root=Path("data/toy"), files=["a.txt"], source={"type": "local"})
    assert spec.root == staged / "data" / "toy" and data_path("data/toy") == spec.root
    assert data_path(tmp_path / "abs") == tmp_path / "abs"  # absolute paths are kept
    with _open(tmp_path, datasets=[spec]) as run:
        run.log(1, loss=1.0)
    assert run.root.parent == tmp_path / "elsewhere"
    assert formats.read_json(run.root / formats.RUN_JSON)["data_roots"] == {"toy": "data/toy"}
    assert (run.root / "data" / "toy" / "files" / "a.txt").read_text() == "x\ny\n"


def test_the_default_argv_is_the_real_command_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import REPO, offline_env

    script = tmp_path / "src" / "sub" / "t.py"
    script.parent.mkdir(parents=True)
    script.write_text("import sys\nfrom provenance.run.core import command_line\n"
                      "print(command_line(sys.argv[1]))\n")
    out = subprocess.run([sys.executable, "-u", "-X", "dev", str(script), str(tmp_path / "src"), "a=1"],
                         capture_output=True, text=True, cwd=REPO, env=offline_env(tmp_path), check=True).stdout
    assert out.strip() == repr([sys.executable, "sub/t.py", str(tmp_path / "src"), "a=1"])


def test_indexed_dataset_keeps_every_column() -> None:
    from provenance.integrations.hf import IndexedDataset

    rows = [{"input_ids": [1, 2], "attention_mask": [1, 1], "labels": [1, 2]},
            {"input_ids": [3], "attention_mask": [1], "labels": [-100]}]
    ds = IndexedDataset(rows)
    assert ds[1] == {"input_ids": [3], "attention_mask": [1], "labels": [-100], "sample_id": 1}
    assert IndexedDataset([[5, 6]])[0] == {"input_ids": [5, 6], "sample_id": 0}
    with pytest.raises(ValueError, match="sample_id"):
        _ = IndexedDataset([{"sample_id": 3}])[0]


def test_save_model_of_a_plain_module_is_audited_as_the_final_model(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from provenance.audit import audit

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    with _open(tmp_path) as run:
        run.record_batch(1, [0, 1])
        run.log(1, loss=0.5)
        run.save_model(model, init_args={"layers": [4, 8, 1]})
    desc = formats.read_json(run.root / "model" / "config.json")
    assert desc["schema"] == formats.TORCH_MODULE_SCHEMA and desc["class"] == "torch.nn.modules.container.Sequential"
    assert desc["init_args"] == {"layers": [4, 8, 1]} and desc["parameters"] == 4 * 8 + 8 + 8 + 1
    assert desc["tensors"]["0.weight"] == {"shape": [8, 4], "dtype": "float32"}
    weights = load_file(str(run.root / "model" / "model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    check = audit(run.root).check("model")
    assert check.status == "pass", check.findings
    assert "49 parameters" in check.summary


def test_prov_version_matches_the_distribution(tmp_path: Path) -> None:
    import subprocess
    import sys
    import tomllib

    from conftest import REPO, offline_env

    import provenance

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    out = subprocess.run([sys.executable, "-m", "provenance.cli", "--version"], capture_output=True, text=True,
                         cwd=REPO, env=offline_env(tmp_path))
    assert out.returncode == 0 and out.stdout.strip() == f"prov (fullyopen) {declared}"
    assert provenance.__version__ == declared


_BAR_SCRIPT = """
import sys, time
from provenance import start_run
from provenance.run.progress import ProgressBar
with start_run({}, name="bar", runs_dir=sys.argv[1], code_root=sys.argv[2], argv=["python", "t.py"],
               callbacks=[ProgressBar(5)]) as run:
    for step in range(1, 6):
        run.record_batch(step, [step])
        print(f"plain line {step}", flush=True)
        run.log(step, loss=1.0 / step, tokens=100, step_time=0.01)
"""


def test_progress_bar_draws_on_a_terminal_and_never_into_the_logs(tmp_path: Path) -> None:
    import os
    import pty
    import subprocess
    import sys

    from conftest import REPO, offline_env

    (tmp_path / "src").mkdir()
    script = tmp_path / "bar.py"
    script.write_text(_BAR_SCRIPT)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "runs"), str(tmp_path / "src")], cwd=REPO,
                            env={**offline_env(tmp_path), "COLUMNS": "120"}, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    assert "loss=0.2000" in text and "tok/s=10,000" in text and "5/5" in text
    (root,) = (tmp_path / "runs").iterdir()
    stdout_log = (root / "logs" / "stdout.log").read_text()
    assert "plain line 5" in stdout_log and "\r" not in stdout_log and "tok/s" not in stdout_log
    assert "tok/s" not in (root / "logs" / "stderr.log").read_text()
    # not a terminal: no bar at all
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "runs2"), str(tmp_path / "src")], cwd=REPO,
                         env=offline_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "tok/s" not in out.stdout + out.stderr and "plain line 5" in out.stdout


def _train_in_own_checkout(tmp_path: Path, script: str, gitignore: str) -> tuple[Path, dict[str, str]]:
    """tests/scripts/<script> as train.py, committed in a git checkout of its own, run there: its bundle
    and the environment it ran in."""
    import shutil
    import subprocess
    import sys

    from conftest import REPO, offline_env

    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(REPO / "tests" / "scripts" / script, work / "train.py")
    env = offline_env(tmp_path)
    env["PYTHONPATH"] = str(REPO)
    for args in (["init", "-q"], ["add", "train.py"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm",
                                                       "x"]):
        subprocess.run(["git", *args], cwd=work, check=True, env=env)
    (work / ".gitignore").write_text(gitignore)
    out = subprocess.run([sys.executable, "train.py"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (root,) = (work / "runs").iterdir()
    return root, env


def test_a_plain_pytorch_loop_trains_audits_and_reproduces_bitwise(tmp_path: Path) -> None:
    """The issue's 'done when': a 30-line plain loop from the README's API section alone, in a git checkout."""
    import subprocess
    import sys

    from conftest import REPO

    root, env = _train_in_own_checkout(tmp_path, "plain_loop.py", "runs/\ndata/\n")
    cfg = formats.read_json(root / formats.CONFIG_JSON)
    assert cfg["argv"] == [sys.executable, "train.py"]
    audit_out = subprocess.run([sys.executable, "-m", "provenance.cli", "audit", str(root)], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=300)
    assert audit_out.returncode == 0, audit_out.stdout + audit_out.stderr
    assert "entry point train.py" in subprocess.run(
        [sys.executable, "-m", "provenance.cli", "audit", str(root), "--json"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=300).stdout
    rep = subprocess.run([sys.executable, "-m", "provenance.cli", "reproduce", str(root), "--workdir",
                          str(tmp_path / "w")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "bitwise" in rep.stdout


def test_a_config_with_inf_and_nan_runs_audits_and_reproduces_bitwise(tmp_path: Path) -> None:
    """A config holding inf (no gradient clipping), -inf and NaN: config.json is strict JSON (the names, and
    non_finite saying which strings are numbers: a genuine "NaN" string stays one), its digest matches, the
    audit passes, and prov reproduce of it is bitwise (the child's config as given: floats)."""
    import json
    import subprocess
    import sys

    import yaml
    from conftest import REPO

    root, env = _train_in_own_checkout(tmp_path, "nonfinite_config.py", "runs/\n")
    text = (root / formats.CONFIG_JSON).read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in config.json"))
    assert doc["config"]["clip"] == "Infinity" and doc["config"]["floor"] == "-Infinity"
    assert doc["config"]["unset"] == "NaN" and doc["config"]["name"] == "NaN"
    assert sorted(doc["non_finite"]) == [["best_val"], ["clip"], ["floor"], ["unset"]]
    from provenance import reader
    values = reader.Bundle(root).config_record().values()
    assert values["clip"] == float("inf") and values["floor"] == -float("inf") and values["unset"] != values["unset"]
    assert values["name"] == "NaN"
    audit_out = subprocess.run([sys.executable, "-m", "provenance.cli", "audit", str(root)], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=300)
    assert audit_out.returncode == 0, audit_out.stdout + audit_out.stderr
    rep = subprocess.run([sys.executable, "-m", "provenance.cli", "reproduce", str(root), "--workdir",
                          str(tmp_path / "w")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "bitwise" in rep.stdout
    given = yaml.safe_load((tmp_path / "w" / "config.yaml").read_text())  # what a --config script would be given
    assert given["clip"] == float("inf") and given["unset"] != given["unset"] and given["name"] == "NaN"
