"""Issue 5: `prov diff A B`: config keys, code files, data files, packages, hardware, metrics, order,
checkpoints; readable in the terminal and as --json. No training here: copies of the tiny bundle,
changed on purpose."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from provenance import formats
from provenance.bundle import seal_folder
from provenance.diff import diff_bundles, format_diff


def prov(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provenance.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def _edit_json(path: Path, change) -> None:
    obj = formats.read_json(path)
    change(obj)
    formats.atomic_write_json(path, obj)


@pytest.fixture(scope="module")
def changed(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle with one change in every section, sealed again (intact, but different)."""
    b = tmp_path_factory.mktemp("diff") / tiny_bundle.name
    shutil.copytree(tiny_bundle, b)

    def cfg(o):
        o["config"]["train"]["lr"] = 0.006

    _edit_json(b / formats.CONFIG_JSON, cfg)

    def code(o):
        o["files"]["training/train.py"] = "sha256:" + "0" * 64

    _edit_json(b / formats.CODE_JSON, code)
    # one changed character in record 42 of the bundled training data, and the manifest that says so
    train = b / "data/tiny-corpus/files/train.jsonl"
    lines = train.read_bytes().split(b"\n")
    lines[42] = lines[42].replace(b"a", b"e", 1)
    train.write_bytes(b"\n".join(lines))
    import hashlib

    digest = hashlib.sha256(train.read_bytes()).hexdigest()

    def data(o):
        next(e for e in o["files"] if e["path"] == "train.jsonl")["sha256"] = digest

    _edit_json(b / "data/tiny-corpus/manifest.json", data)

    def env(o):
        o["packages"]["numpy"] = "0.0.1"
        o["hardware"]["cpu_model"] = "Some Other CPU"
        o["hardware"]["cpu_count"] = 999

    _edit_json(b / formats.ENV_JSON, env)

    def run(o):
        o["determinism"]["num_threads"] = 7

    _edit_json(b / formats.RUN_JSON, run)
    metrics = list(formats.read_jsonl(b / formats.METRICS))
    for r in metrics:
        if r["step"] == 5:
            r["loss"] += 0.25
        if r["step"] == 8:
            r["loss"] += 0.5
    (b / formats.METRICS).write_text("".join(formats.dumps_line(r) for r in metrics))

    def ckpt(o):
        o["checkpoints"][-1]["sha256"] = "f" * 64

    _edit_json(b / formats.CHECKPOINT_INDEX, ckpt)
    # the first sample of step 3 replaced by another id
    _, ids_rel, steps_rel, version = formats.order_files(b, 0)
    width = formats.order_id_width(version)  # 4 bytes an id in order v1, 8 in v2
    steps = list(formats.read_order(b / ids_rel, b / steps_rel))
    offset = width * sum(len(s.sample_ids) for s in steps if s.step < 3)
    ids = bytearray((b / ids_rel).read_bytes())
    old = int.from_bytes(ids[offset:offset + width], "little")
    ids[offset:offset + width] = (old ^ 1).to_bytes(width, "little")
    (b / ids_rel).write_bytes(bytes(ids))
    seal_folder(b)
    return b


def test_identical_bundles(tiny_bundle: Path, bundle_copy: Path) -> None:
    d = diff_bundles(tiny_bundle, bundle_copy)
    assert all(d["same"].values()), d["same"]
    text = format_diff(d)
    for line in ("config: same", "code: same", "data: same", "packages: same", "torch: same", "threads: same",
                 "hardware: same", "loss bitwise equal", "order: same", "all sha256 equal"):
        assert line in text


def test_every_section_names_what_differs(tiny_bundle: Path, changed: Path) -> None:
    d = diff_bundles(tiny_bundle, changed)
    assert d["config"]["changed"] == [{"key": "train.lr", "a": 0.003, "b": 0.006}]
    assert [c["path"] for c in d["code"]["changed"]] == ["training/train.py"]
    (ch,) = d["data"]["datasets"]["tiny-corpus"]["changed"]
    assert ch["path"] == "train.jsonl" and ch["sample"] == 42 and ch["line"] == 43
    assert ch["a"]["sha256"] != ch["b"]["sha256"]
    env = {(x["category"], x["name"]): x for x in d["environment"]["differences"]}
    assert env[("packages", "numpy")]["b"] == "0.0.1" and env[("packages", "numpy")]["significant"]
    assert env[("threads", "num_threads")]["b"] == 7
    assert env[("hardware", "cpu_model")]["significant"] and not env[("hardware", "cpu_count")]["significant"]
    m = d["metrics"]
    assert (m["first_diff_step"], m["n_differ"], m["max_abs_diff_step"]) == (5, 2, 8)
    assert m["max_abs_diff"] == pytest.approx(0.5)
    assert d["order"]["first_diff_step"] == 3 and d["order"]["position"] == 0
    last = max(s for s in (e["step"] for e in formats.read_json(
        tiny_bundle / formats.CHECKPOINT_INDEX)["checkpoints"]))
    assert [c["step"] for c in d["checkpoints"]["differ"]] == [last]
    assert not any(d["same"][k] for k in ("config", "code", "data", "environment", "metrics", "order", "checkpoints"))

    text = format_diff(d)
    assert "train.lr: 0.003 → 0.006" in text
    assert "M training/train.py" in text
    assert "tiny-corpus/train.jsonl" in text and "first differing sample 42 (line 43)" in text
    assert "package numpy" in text and "→ 0.0.1" in text
    assert "thread count 2 → 7" in text
    assert "hardware cpu_model" in text and "Some Other CPU" in text
    assert "loss first differs at step 5" in text and "largest |Δ| 0.5 at step 8" in text
    assert "order: first differs at step 3" in text
    assert f"first at step {last}" in text


def test_cli_text_and_json(tiny_bundle: Path, changed: Path, tmp_path: Path) -> None:
    proc = prov("diff", str(tiny_bundle), str(changed))
    assert proc.returncode == 0, proc.stderr
    assert "train.lr: 0.003 → 0.006" in proc.stdout and "loss first differs at step 5" in proc.stdout
    proc = prov("diff", str(tiny_bundle), str(changed), "--json")
    assert proc.returncode == 0
    d = json.loads(proc.stdout)
    assert d["schema"] == "fullyopen.diff/v1" and d["metrics"]["first_diff_step"] == 5
    assert d["a"]["run_id"] == tiny_bundle.name
    proc = prov("diff", str(tiny_bundle), str(tmp_path))
    assert proc.returncode == 2 and "not a run bundle" in proc.stderr


# --- one definition of the first divergent step (provenance.replay.first_divergence) ------------------


def _replay_of(a: Path, b: Path) -> dict | None:
    """Replay B's recorded batches, losses and checkpoint digests against A, checkpoints FIRST (their
    digests arrive from the hashing thread, possibly after later steps' losses): the replay's answer."""
    from provenance.replay import Replay

    r = Replay(a)
    for e in formats.read_json(b / formats.CHECKPOINT_INDEX)["checkpoints"]:
        r.checkpoint(e["step"], e["sha256"])
    _, ids_rel, steps_rel, _version = formats.order_files(b, 0)
    metrics = {m["step"]: m for m in formats.read_jsonl(b / formats.METRICS)}
    for st in formats.read_order(b / ids_rel, b / steps_rel):
        _, rec = r.batch(st.step, list(st.sample_ids))
        r.log(st.step, {k: v for k, v in metrics[st.step].items() if k not in ("step", "time")}, rec)
    return r.summary(None)["first_divergence"]


def _perturb(src: Path, dest: Path, losses: dict[int, float], ckpts: set[int]) -> Path:
    shutil.copytree(src, dest)
    metrics = list(formats.read_jsonl(dest / formats.METRICS))
    for r in metrics:
        r["loss"] += losses.get(r["step"], 0.0)
    (dest / formats.METRICS).write_text("".join(formats.dumps_line(r) for r in metrics))

    def ck(o):
        for e in o["checkpoints"]:
            if e["step"] in ckpts:
                e["sha256"] = "e" * 64

    _edit_json(dest / formats.CHECKPOINT_INDEX, ck)
    return dest


def test_first_divergence_is_one_definition(tiny_bundle: Path, changed: Path, tmp_path: Path) -> None:
    ck = sorted(e["step"] for e in formats.read_json(tiny_bundle / formats.CHECKPOINT_INDEX)["checkpoints"])
    k = ck[0]
    assert k >= 2 and max(r["step"] for r in formats.read_jsonl(tiny_bundle / formats.METRICS)) > k + 1
    cases = {  # (loss changes, checkpoints changed) -> the first divergence, per step: order, loss, checkpoint
        "checkpoint before a later loss": ({k + 2: 1e-3}, {k}, (k, "checkpoint")),
        "loss before the checkpoint of its step": ({k: 1e-3, k + 2: 1e-3}, {k}, (k, "loss")),
        "an earlier loss": ({k - 1: 1e-3}, {k}, (k - 1, "loss")),
        "nothing": ({}, set(), None),
    }
    for i, (name, (dl, dc, want)) in enumerate(cases.items()):
        b = _perturb(tiny_bundle, tmp_path / str(i) / tiny_bundle.name, dl, dc)
        d = diff_bundles(tiny_bundle, b)
        got = d["first_divergence"]
        replayed = _replay_of(tiny_bundle, b)
        assert (None if got is None else (got["step"], got["kind"])) == want, name
        assert (None if replayed is None else (replayed["step"], replayed["kind"])) == want, name
        line = "first divergence: none" if want is None else f"first divergence: step {want[0]} ({want[1]})"
        assert line in format_diff(d), name
    # the bundle changed in every section: the batch of step 3 comes first (before the loss of step 5)
    d = diff_bundles(tiny_bundle, changed)
    assert (d["first_divergence"]["step"], d["first_divergence"]["kind"]) == (3, "order")
    replayed = _replay_of(tiny_bundle, changed)
    assert (replayed["step"], replayed["kind"]) == (3, "order")


def test_outputs_and_whole_commands(tiny_bundle: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a" / tiny_bundle.name, tmp_path / "b" / tiny_bundle.name
    shutil.copytree(tiny_bundle, a)
    shutil.copytree(tiny_bundle, b)
    index = {"schema": "fullyopen.outputs/v1", "copied": False, "outputs": [
        {"declared": "out", "label": "out", "exists": True, "kind": "folder", "skipped": [], "files": [
            {"path": "model.safetensors", "size": 10, "sha256": "a" * 64, "role": "weights"},
            {"path": "log.txt", "size": 3, "sha256": "b" * 64}]}]}
    for root, weights in ((a, "a" * 64), (b, "c" * 64)):
        index["outputs"][0]["files"][0]["sha256"] = weights
        (root / "outputs").mkdir()
        formats.atomic_write_json(root / formats.OUTPUTS_INDEX, index)
    # two commands that differ only after their first 60 characters
    long_arg = "--output_dir=" + "x" * 80
    _edit_json(a / formats.CONFIG_JSON, lambda o: o.update(argv=["python", "train.py", long_arg + "1"]))
    _edit_json(b / formats.CONFIG_JSON, lambda o: o.update(argv=["python", "train.py", long_arg + "2"]))
    _edit_json(a / formats.CONFIG_JSON, lambda o: o["config"]["run"].update(name=long_arg + "1"))
    _edit_json(b / formats.CONFIG_JSON, lambda o: o["config"]["run"].update(name=long_arg + "2"))
    d = diff_bundles(a, b)
    assert d["outputs"]["changed"] == [{"path": "out/model.safetensors", "a": "a" * 64, "b": "c" * 64}]
    assert d["outputs"]["same_files"] == 1 and not d["same"]["outputs"] and not d["same"]["command"]
    text = format_diff(d)
    assert "outputs: 1 of 2 files differ" in text and "M out/model.safetensors" in text
    assert f"  A: python train.py {long_arg}1" in text and f"  B: python train.py {long_arg}2" in text
    assert f"run.name: {long_arg}1 → {long_arg}2" in text
    same = diff_bundles(a, a)
    assert same["same"]["outputs"] and same["same"]["command"] and "outputs: same (2 declared" in format_diff(same)


def test_packages_the_training_does_not_import_cannot_change_the_numbers(tiny_bundle: Path, tmp_path: Path) -> None:
    from provenance.diff import diff_env

    env = formats.read_json(tiny_bundle / formats.ENV_JSON)
    assert "evaluate" not in env[formats.IMPORTED_DISTRIBUTIONS]  # what a real run records when it ends
    env.pop(formats.IMPORTED_DISTRIBUTIONS)  # an older bundle, which did not record it
    other = json.loads(json.dumps(env))
    other["packages"]["evaluate"] = "0.4.0"  # installed only in the second, never imported
    other["packages"]["numpy"] = "0.0.1"
    assert {x["name"]: x["significant"] for x in diff_env(env, other) if x["category"] == "packages"} == \
        {"evaluate": True, "numpy": True}  # nothing recorded what the training imported: every package counts
    other["imported_distributions"] = {"numpy": "0.0.1", "torch": env["packages"].get("torch")}
    got = {x["name"]: x for x in diff_env(env, other) if x["category"] == "packages"}
    assert got["numpy"]["significant"] and not got["evaluate"]["significant"]
    assert got["evaluate"]["why"] == "not imported by the training"


def test_a_nan_loss_is_compared_as_a_number_and_printed_as_strict_json(tiny_bundle: Path, tmp_path: Path) -> None:
    """The strict writers log a NaN loss as "NaN" and an infinite one as "Infinity": the diff reads them as the
    numbers they are (|Δ| NaN, not 0 at step None) and --json writes no bare NaN (jq, JSON.parse refuse it)."""
    b = tmp_path / tiny_bundle.name
    shutil.copytree(tiny_bundle, b)
    rows = list(formats.read_jsonl(b / formats.METRICS))
    for r in rows:
        if r["step"] in (5, 7):
            r["loss"] = float("nan") if r["step"] == 5 else float("inf")
    (b / formats.METRICS).write_text("".join(formats.dumps_line(r) for r in rows))
    seal_folder(b)
    m = diff_bundles(tiny_bundle, b)["metrics"]
    assert (m["first_diff_step"], m["n_differ"], m["max_abs_diff_step"]) == (5, 2, 5)
    assert m["b"] != m["b"] and m["abs_diff"] != m["abs_diff"]  # NaN
    assert diff_bundles(b, b)["metrics"]["first_diff_step"] is None  # a NaN equals a NaN
    proc = prov("diff", str(tiny_bundle), str(b), "--json")

    def refuse(word: str) -> object:
        raise ValueError(f"not strict JSON: {word}")

    d = json.loads(proc.stdout, parse_constant=refuse)
    assert proc.returncode == 0 and d["metrics"]["b"] == "NaN" and d["metrics"]["max_abs_diff"] == "NaN"


def test_a_first_divergence_read_back_from_strict_json_is_put_in_words() -> None:
    """The replay's summary file records a NaN loss and its |Δ| as "NaN" (strict JSON); `prov reproduce`
    puts that first divergence in words (it failed 'Unknown format code g for str' and refused the run)."""
    from provenance.diff import divergence_text

    first = json.loads(formats.dumps({"kind": "loss", "step": 5, "loss_recorded": 0.5, "loss": float("nan"),
                                      "abs_diff": float("nan"), "order_matched": True}))
    assert first["loss"] == "NaN" and first["abs_diff"] == "NaN"
    text = divergence_text(first)
    assert text == "the loss differs at step 5: 0.5 in the original, nan in the reproduction (|Δ| nan, same batch)"
