"""Issue 3: every artifact of a run bundle is present and right, checked independently."""

from __future__ import annotations

import hashlib
import json
import struct
import tarfile
from pathlib import Path, PurePosixPath

import pytest
from conftest import TINY

from provenance import formats
from provenance.bundle import BundleError, BundleWriter
from provenance.config import load
from training.config import Config
from training.data import EpochSampler


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _json(p: Path) -> dict:
    return json.loads(p.read_text())


def test_config_digest_and_command_line(tiny_bundle: Path) -> None:
    c = _json(tiny_bundle / "config.json")
    canon = json.dumps(c["config"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert c["digest"] == "sha256:" + hashlib.sha256(canon.encode()).hexdigest()
    assert c["argv"][1:3] == ["-m", "training.train"] and "train.steps=12" in c["argv"]
    assert c["config"]["train"]["steps"] == 12


def test_code_snapshot_matches_per_file_digests(tiny_bundle: Path) -> None:
    code = _json(tiny_bundle / "code" / "code.json")
    assert code["in_git"] is True and len(code["commit"]) == 40 and isinstance(code["dirty"], bool)
    with tarfile.open(tiny_bundle / "code" / "source.tar") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert "training/train.py" in files and "provenance/run/core.py" in files
    assert set(files) == set(code["files"])
    for name, data in files.items():
        assert code["files"][name] == "sha256:" + hashlib.sha256(data).hexdigest()


def test_environment_recorded(tiny_bundle: Path) -> None:
    env = _json(tiny_bundle / "env" / "environment.json")
    assert env["packages"]["torch"].startswith("2.13.0")
    assert env["torch"]["num_threads"] == 2 and env["torch"]["deterministic_algorithms"] is True
    assert "fill_uninitialized_memory" in env["torch"] and env["hardware"]["ram_bytes"] > 0
    assert env["python"]["version"].startswith("3.")
    run = _json(tiny_bundle / "run.json")
    assert run["determinism"]["num_threads"] == 2 and run["seed"] == 1337


def test_data_manifest_digests_equal_hashlib(tiny_bundle: Path) -> None:
    m = _json(tiny_bundle / "data" / "tiny-corpus" / "manifest.json")
    src = Path(m["source"]["local_path"])
    assert m["source"]["type"] == "generated" and m["source"]["seed"] == 1234 and m["source"]["version"]
    assert m["license"] == "CC0-1.0" and m["samples"]["file"] == "train.jsonl"
    for e in m["files"]:
        assert e["sha256"] == _sha(src / e["path"]) == _sha(tiny_bundle / m["bundled_files"] / e["path"])
        assert e["size"] == (src / e["path"]).stat().st_size
        assert e["records"] == (src / e["path"]).read_bytes().count(b"\n")
    tok = _json(tiny_bundle / "data" / "tokenizer" / "manifest.json")
    tok_src = Path(tok["source"]["local_path"])
    assert tok["files"][0]["sha256"] == _sha(tok_src / "tokenizer.json")


def test_data_order_is_what_the_loop_used(tiny_bundle: Path) -> None:
    hdr = _json(tiny_bundle / "order" / "rank0.json")
    s = hdr["sampler"]
    cfg = load(Config, Path(__file__).parents[1] / "configs" / "tiny-lm.yaml", TINY)
    assert (s["seed"], s["batch_size"]) == (cfg.run.seed, cfg.train.batch_size)
    sampler = EpochSampler(s["n_samples"], s["batch_size"], s["seed"])
    assert hdr["schema"] == "fullyopen.data-order/v2" and hdr["ids_dtype"] == "uint64-le"
    ids = (tiny_bundle / "order" / "rank0.ids.u64").read_bytes()
    steps = (tiny_bundle / "order" / "rank0.steps.bin").read_bytes()
    assert len(ids) == 8 * 12 * s["batch_size"] and len(steps) == 32 * 12  # 8 B/sample, 32 B/step
    all_ids = struct.unpack(f"<{len(ids) // 8}Q", ids)
    n_samples = _json(tiny_bundle / "data" / "tiny-corpus" / "manifest.json")["samples"]["count"]
    prev = bytes(24)
    for k in range(12):
        step, n, chain = struct.unpack_from("<II24s", steps, 32 * k)
        batch = list(all_ids[k * n:(k + 1) * n])
        assert step == k + 1 and batch == sampler.batch(step)
        assert all(0 <= i < n_samples for i in batch)
        h = hashlib.sha256(b"fullyopen-order-v2" + prev + struct.pack("<II", step, n) + ids[8 * k * n:8 * (k + 1) * n])
        assert chain == h.digest()[:24]
        prev = chain


def test_metrics_are_exact_and_complete(tiny_bundle: Path) -> None:
    lines = [json.loads(x) for x in open(tiny_bundle / "logs" / "metrics.jsonl")]
    for m in lines:
        assert {"loss", "lr", "grad_norm", "tokens_seen", "step_time", "time"} <= set(m)
        assert struct.unpack("f", struct.pack("f", m["loss"]))[0] == m["loss"]  # a float32, unrounded
    assert lines[-1]["tokens_seen"] == sum(m["tokens"] for m in lines)
    run = _json(tiny_bundle / "run.json")
    assert run["status"] == "completed" and run["exit_status"] == 0 and run["error"] is None
    assert run["started_at"].endswith("Z") and run["ended_at"] > run["started_at"]
    stdout = (tiny_bundle / "logs" / "stdout.log").read_text()
    assert "step 12: loss" in stdout


def test_checkpoints_indexed_with_digests_and_full_state(tiny_bundle: Path) -> None:
    from safetensors import safe_open

    idx = _json(tiny_bundle / "checkpoints" / "index.json")["checkpoints"]
    assert [e["step"] for e in idx] == [6, 12]
    for e in idx:
        path = tiny_bundle / e["path"]
        assert e["sha256"] == _sha(path) and e["size"] == path.stat().st_size
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            meta = json.loads(f.metadata()["fullyopen"])
        assert any(k.startswith("model.") for k in keys) and any(k.startswith("optim.") for k in keys)
        assert {"rng.torch_cpu", "rng.numpy_keys"} <= keys
        assert int(meta["step"]) == e["step"] and "rng.python" in meta and int(meta["tokens_seen"]) > 0


def test_seal_is_an_oms_statement_with_an_independent_root_digest(tiny_bundle: Path) -> None:
    st = _json(tiny_bundle / "manifest.json")
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://model_signing/signature/v1.0"
    on_disk = sorted((p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file()),
                     key=lambda n: PurePosixPath(n))
    on_disk.remove("manifest.json")
    names = [r["name"] for r in st["predicate"]["resources"]]
    assert names == on_disk  # every file, sorted as model-signing sorts
    root = hashlib.sha256()
    for r in st["predicate"]["resources"]:
        assert r["algorithm"] == "sha256" and r["digest"] == _sha(tiny_bundle / r["name"])
        root.update(bytes.fromhex(r["digest"]))
    assert st["subject"][0]["digest"]["sha256"] == root.hexdigest()


def test_a_run_folder_is_never_reused(tmp_path: Path) -> None:
    BundleWriter.create(tmp_path / "r")
    with pytest.raises(BundleError, match="already exists"):
        BundleWriter.create(tmp_path / "r")


def test_order_chain_detects_a_changed_batch(tiny_bundle: Path, tmp_path: Path) -> None:
    ids = bytearray((tiny_bundle / "order" / "rank0.ids.u64").read_bytes())
    steps_path = tiny_bundle / "order" / "rank0.steps.bin"
    assert formats.verify_order_chain(formats.read_order(tiny_bundle / "order" / "rank0.ids.u64", steps_path)) is None
    ids[8 * 8 * 3] ^= 1  # a sample of step 4
    (tmp_path / "rank0.ids.u64").write_bytes(bytes(ids))
    broken = formats.verify_order_chain(formats.read_order(tmp_path / "rank0.ids.u64", steps_path))
    assert broken == (3, 4)


def test_batch_digest_is_sha256_of_the_little_endian_ids() -> None:
    ids = [3, 0, 2**32 - 1, 17, 2**40 + 5]  # 64-bit ids (v2)
    expected = "sha256:" + hashlib.sha256(struct.pack("<5Q", *ids)).hexdigest()
    assert formats.batch_digest(ids) == formats.ids_digest(formats.encode_ids(ids)) == expected
    v1 = ids[:4]
    assert formats.batch_digest(v1, 1) == "sha256:" + hashlib.sha256(struct.pack("<4I", *v1)).hexdigest()


def test_a_default_run_records_its_purpose_and_overrides_as_decisions(tiny_bundle: Path) -> None:
    notes = [json.loads(x) for x in (tiny_bundle / "notes.jsonl").read_text().splitlines()]
    purpose = [n for n in notes if n["category"] == "purpose"]
    assert len(purpose) == 1 and purpose[0]["step"] == 0 and "default open model" in purpose[0]["text"]
    overrides = {n["details"]["key"]: n for n in notes if n["category"] == "override"}
    assert overrides["train.steps"]["details"] == {"key": "train.steps", "old": 500, "new": 12}
    assert overrides["train.steps"]["step"] == 0
    assert overrides["data.manifest"]["details"]["new"] is None  # data.manifest=null
    assert "run.runs_dir" in overrides  # the tests' run folder is a decision too
    from provenance.audit import audit

    report = audit(tiny_bundle)
    assert report.check("notes").status == "pass"
    item = next(i for i in report.openness.fully_open if i.id == "decision_notes")
    assert item.found and item.files == ["notes.jsonl"]


def test_our_model_construction_does_not_warn(tiny_bundle: Path) -> None:
    stderr = (tiny_bundle / "logs" / "stderr.log").read_text()
    assert "loss_type" not in stderr and "unrecognized" not in stderr
    assert "Writing model shards" not in stderr and "\r" not in stderr  # no progress-bar redraws in the log


def test_the_distributions_the_training_imported_are_recorded(tiny_bundle: Path) -> None:
    """Only packages the training imported can change its numbers: the run records them when it ends,
    so that a reproduction does not withhold a bitwise claim over a package that was never loaded."""
    env = formats.read_json(tiny_bundle / formats.ENV_JSON)
    used = env[formats.IMPORTED_DISTRIBUTIONS]
    assert {"torch", "transformers", "safetensors"} <= set(used)
    assert used["torch"] == env["packages"]["torch"]
    assert "pytest" in env["packages"] and "pytest" not in used  # installed, never imported by training


def test_bundle_files_get_the_mode_open_would_give(tiny_bundle: Path, tmp_path: Path) -> None:
    """Atomic writes go through mkstemp (0600); a bundle is shared, so each file gets 0666 less the umask."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    expected = probe.stat().st_mode & 0o777
    modes = {p.relative_to(tiny_bundle).as_posix(): p.stat().st_mode & 0o777
             for p in tiny_bundle.rglob("*") if p.is_file() and not p.is_symlink()}
    assert "run.json" in modes and "config.json" in modes
    wrong = {name: oct(mode) for name, mode in modes.items() if mode != expected}
    assert not wrong, f"expected {oct(expected)}: {wrong}"
