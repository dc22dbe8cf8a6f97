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
    (tmp / "src").mkdir(exist_ok=True)
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
