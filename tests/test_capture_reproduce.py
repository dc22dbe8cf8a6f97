"""`prov reproduce` of wrapped bundles (provenance.reproduce.wrapped): the command re-run whole under the same
capture, compared step by step (data order by sample ids or content digests, every loss bit, every
checkpoint digest); a changed seed, a changed line of code and a changed data byte are each named."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import offline_env
from test_integrations_common import assert_sealed, only_run, prov

from provenance import formats
from provenance.capture.code import materialise_snapshot

SCRIPTS = Path(__file__).parent / "scripts"


def _original(base: Path, script: str, *args: str, data: str) -> Path:
    work = base / "work"
    work.mkdir(parents=True)
    shutil.copy(SCRIPTS / script, work / script)
    np.random.default_rng(0).integers(0, 64, size=3000).astype(np.uint16).tofile(work / "tokens.bin")
    (work / "points.csv").write_text("".join(f"{i / 10},{2 * i / 10 + 1}\n" for i in range(40)))
    proc = prov("run", "--runs-dir", str(base / "runs"), "--data", data, "--", sys.executable, script, *args,
                cwd=work, env=offline_env(base))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_run(base / "runs")


@pytest.fixture(scope="module")
def nanogpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("nanogpt")
    return _original(base, "capture_nanogpt.py", "tokens.bin", "out", "--iters", "6", data="tokens.bin")


def _reproduce(bundle: Path, tmp: Path, *extra: str) -> tuple[int, dict]:
    proc = prov("reproduce", str(bundle), "--workdir", str(tmp / "w"), "--json", "--quiet", *extra, cwd=tmp,
                env=offline_env(tmp))
    doc = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    assert doc, proc.stdout + proc.stderr
    return proc.returncode, doc


def test_nanogpt_style_bundle_reproduces_bitwise(nanogpt: Path, tmp_path: Path) -> None:
    rc, doc = _reproduce(nanogpt, tmp_path)
    assert rc == 0 and doc["verdict"] == "reproduced (bitwise)", doc["headline"]
    assert doc["scope"]["steps_checked"] == 6 and doc["scope"]["checkpoints_checked"] == 1
    repro = Path(doc["bundle"])
    steps = list(formats.read_jsonl(repro / "reproduction" / "steps.jsonl"))
    assert [s["order"] for s in steps if "evidence" in s] == ["match"] * 6
    assert all(s["loss_match"] for s in steps if "evidence" in s)
    assert formats.read_json(repro / formats.RUN_JSON)["reproduces"]["run_id"] == nanogpt.name
    assert_sealed(repro)  # the audit's reproduction check agrees with the report


def test_changed_seed_is_named_at_step_1(nanogpt: Path, tmp_path: Path) -> None:
    rc, doc = _reproduce(nanogpt, tmp_path, "--args", "tokens.bin out --iters 6 --seed 7")
    assert rc == 1 and doc["verdict"] == "diverged"
    first = doc["first_divergence"]
    assert (first["step"], first["kind"], first["micro_batch"]) == (1, "order", 0)  # other torch.randint offsets
    assert doc["cause"]["kind"] == "arguments" and doc["cause"]["seed"] == {
        "function": "torch.manual_seed", "a": 1337, "b": 7}
    assert [c["kind"] for c in doc["other_causes"]] == ["seed"]


def test_changed_line_of_code_is_named_at_the_step_it_shows(nanogpt: Path, tmp_path: Path) -> None:
    code = tmp_path / "code"
    materialise_snapshot((nanogpt / formats.CODE_SNAPSHOT).read_bytes(), code)
    script = code / "capture_nanogpt.py"
    old = "lr = 3e-3 * (it + 1) / args.iters"
    assert script.read_text().count(old) == 1
    script.write_text(script.read_text().replace(old, "lr = 2e-3 * (it + 1) / args.iters"))
    rc, doc = _reproduce(nanogpt, tmp_path, "--code", str(code))
    assert rc == 1 and doc["verdict"] == "diverged"
    first = doc["first_divergence"]
    # step 1's loss is computed before the first update: the learning rate shows from step 2, same batches
    assert (first["step"], first["kind"]) == (2, "loss") and first["order_matched"]
    assert doc["cause"]["kind"] == "code" and doc["cause"]["files"] == ["capture_nanogpt.py"]


def test_changed_data_byte_is_refused_naming_the_file(nanogpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    raw = bytearray((nanogpt.parent.parent / "work" / "tokens.bin").read_bytes())
    raw[100] ^= 1
    (data / "tokens.bin").write_bytes(bytes(raw))
    rc, doc = _reproduce(nanogpt, tmp_path, "--data-root", str(data))
    assert rc == 2 and doc["verdict"] == "refused"
    assert "tokens.bin" in doc["headline"] and "does not match the original's data manifest" in doc["headline"]
    assert not (tmp_path / "w").exists()  # nothing ran, nothing left behind


def test_dataloader_bundle_reproduces_bitwise_by_sample_ids(tmp_path: Path) -> None:
    orig = _original(tmp_path / "o", "capture_dataloader.py", "points.csv", "out", data="points.csv")
    rc, doc = _reproduce(orig, tmp_path)
    assert rc == 0 and doc["verdict"] == "reproduced (bitwise)", doc["headline"]
    assert doc["wrapped"]["evidence"] == {"sample-ids": 6}
    assert doc["scope"]["checkpoints_checked"] == 3


@pytest.mark.slow
def test_unmodified_hf_trainer_script_is_captured_and_reproduces(tmp_path: Path) -> None:
    work = tmp_path / "o" / "work"
    work.mkdir(parents=True)
    shutil.copy(SCRIPTS / "capture_hf_trainer.py", work)
    proc = prov("run", "--runs-dir", str(tmp_path / "o" / "runs"), "--", sys.executable, "capture_hf_trainer.py", "out",
                cwd=work, env=offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = only_run(tmp_path / "o" / "runs")
    side = json.loads((work / "out" / "side.json").read_text())
    metrics = list(formats.read_jsonl(root / formats.METRICS))
    assert [v for m in metrics for v in m["micro_losses"]] == side["losses"]  # exact, not the Trainer's rounded log
    order = [i for s in formats.read_order(*(root / p for p in formats.order_paths(0)[1:])) for i in s.sample_ids]
    assert order == side["fetched"][: len(order)] and len(order) == 6 * 2 * 4  # in order, despite fetching ahead
    assert formats.read_json(root / formats.RUN_JSON)["seed"] == 42
    logged = list(formats.read_jsonl(root / formats.capture_paths(0).logged))
    assert [r["script_step"] for r in logged if "loss" in r["values"]] == [2, 4, 6]
    roles = {(e["step"], Path(e["path"]).name): e["role"]
             for e in formats.read_json(root / formats.CHECKPOINT_INDEX)["checkpoints"]}
    assert roles[(3, "model.safetensors")] == "weights" and roles[(6, "optimizer.pt")] == "optimizer"
    assert_sealed(root)
    rc, doc = _reproduce(root, tmp_path)
    assert rc == 0 and doc["verdict"] == "reproduced (bitwise)", doc["headline"]
    assert doc["scope"]["checkpoints_checked"] == 10


def test_sandbox_and_tolerance_are_refused_for_a_wrapped_bundle(nanogpt: Path, tmp_path: Path) -> None:
    for extra in (["--sandbox"], ["--tolerance", "auto"]):  # never run unsandboxed what was asked sandboxed
        work = tmp_path / extra[-1].strip("-")
        proc = prov("reproduce", str(nanogpt), "--workdir", str(work), *extra, cwd=tmp_path, env=offline_env(tmp_path))
        assert proc.returncode == 2 and "not supported yet for a wrapped (prov run) bundle" in proc.stderr
        assert "verdict: refused (nothing ran)" in proc.stdout and not work.exists()


def _captured(root: Path, loss: float) -> object:
    """A captured step as the startup hook writes it (strict JSON: a NaN loss is "NaN"), read back."""
    from provenance.capture import wrapped as cw

    paths = formats.capture_paths(0)
    (root / paths.order).parent.mkdir(parents=True, exist_ok=True)
    (root / paths.metrics).parent.mkdir(parents=True, exist_ok=True)
    (root / paths.order).write_text(formats.dumps_line({"step": 1, "evidence": "content", "content": ["sha256:aa"]}))
    rec = {"step": 1, "loss": loss, "loss_bits": formats.float_bits(loss), "micro_losses": [loss]}
    (root / paths.metrics).write_text(formats.dumps_line(rec))
    return cw.read(root)


def test_a_nan_loss_captured_as_strict_json_is_compared(tmp_path: Path) -> None:
    """A captured NaN loss (written "NaN") is read as a NaN and compared: a reproduction whose loss is finite
    there diverges at that step (before, the step was 'not compared' and the run could pass as bitwise)."""
    from provenance.reproduce.wrapped import _compare_steps

    nan, fine = _captured(tmp_path / "a", float("nan")), _captured(tmp_path / "b", 0.5)
    assert math.isnan(nan.steps[1].loss) and math.isnan(nan.steps[1].micro_losses[0])  # type: ignore[attr-defined]
    records, found, _ = _compare_steps(nan, fine, 1)  # type: ignore[arg-type]
    assert records[0]["loss_match"] is False and [(f["step"], f["kind"]) for f in found] == [(1, "loss")]
    records, found, _ = _compare_steps(nan, nan, 1)  # type: ignore[arg-type]
    assert records[0]["loss_match"] is True and found == []


def test_a_nan_of_another_sign_bit_is_the_same_loss_in_both_replays(tmp_path: Path) -> None:
    """A NaN equals any NaN (sign bit and payload aside) in a wrapped run's replay, as in the native replay:
    one definition (formats.same_loss); before, the wrapped replay compared NaN by bit pattern."""
    from provenance.reproduce.wrapped import _compare_steps

    neg_nan = -float("nan")
    assert formats.float_bits(neg_nan) != formats.float_bits(float("nan"))  # the two NaNs differ in their bits
    a, b = _captured(tmp_path / "a", float("nan")), _captured(tmp_path / "b", neg_nan)
    records, found, _ = _compare_steps(a, b, 1)  # type: ignore[arg-type]
    assert records[0]["loss_match"] is True and found == [], (records, found)
    assert formats.same_loss(float("nan"), neg_nan) and not formats.same_loss(0.0, -0.0)
