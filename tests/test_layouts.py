"""Dataset layouts: random sample ids resolve to the bytes a direct read gives."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from provenance.capture.data import DataMismatch, DatasetSpec, build_manifest
from provenance.datasets.layouts import LayoutError, locate, sample_bytes


def _tokens_dataset(root: Path) -> tuple[DatasetSpec, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    arrays = {}
    for i, n in enumerate((1000, 37, 5000)):
        a = rng.integers(0, 65535, n, dtype=np.uint16)
        arrays[f"shard{i}.bin"] = a
        (root / f"shard{i}.bin").write_bytes(a.astype("<u2").tobytes())
    a = rng.integers(0, 65535, 777, dtype=np.uint16)
    np.save(root / "shard3.npy", a.astype("<u2"))
    arrays["shard3.npy"] = a
    files = sorted(arrays)
    return DatasetSpec(name="tok", root=root, files=files, source={"type": "local"},
                       layout={"type": "token-stream", "dtype": "uint16", "window": 16, "chunk": 64}), arrays


@pytest.mark.parametrize("sample", ["window", "offset"])
def test_token_stream_ids_resolve_to_the_tokens(tmp_path: Path, sample: str) -> None:
    spec, arrays = _tokens_dataset(tmp_path)
    spec.layout = {**(spec.layout or {}), "sample": sample}
    m = build_manifest(spec, cache=None)
    lay = m["layout"]
    per = {f: (len(a) // 16 if sample == "window" else len(a) - 15) for f, a in arrays.items()}
    assert lay["count"] == m["samples"]["count"] == sum(per.values())
    assert next(e for e in m["files"] if e["path"] == "shard3.npy")["tokens"] == 777
    starts, acc = {}, 0
    for f in sorted(arrays):
        starts[f] = acc
        acc += per[f]
    for sid in [*random.Random(1).sample(range(lay["count"]), 60), 0, lay["count"] - 1]:
        f = max((x for x in sorted(arrays) if starts[x] <= sid and per[x]), key=lambda x: starts[x])
        local = sid - starts[f]
        first = local * 16 if sample == "window" else local
        want = arrays[f][first:first + 16].astype("<u2").tobytes()
        assert locate(m, sid)["file"] == f
        assert sample_bytes(m, tmp_path, sid) == want, sid
    with pytest.raises(LayoutError, match=f"sample id {lay['count']} is past the end"):
        locate(m, lay["count"])


def test_documents_ids_are_global_across_sorted_shards(tmp_path: Path) -> None:
    docs = [json.dumps({"text": f"document {i} " + "x" * (i % 13)}).encode() for i in range(250)]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(docs[:100]) + b"\n")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"\n".join(docs[100:180]) + b"\n"))
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(b"\n".join(docs[180:]) + b"\n"))
    spec = DatasetSpec(name="docs", root=tmp_path, files=["a.jsonl", "b.jsonl.gz", "c.jsonl.gz"],
                       source={"type": "local"}, layout={"type": "documents"})
    m = build_manifest(spec, cache=None)
    assert m["layout"]["count"] == 250 and [e["records"] for e in m["files"]] == [100, 80, 70]
    for sid in random.Random(2).sample(range(250), 40):
        assert sample_bytes(m, tmp_path, sid) == docs[sid]
    with pytest.raises(LayoutError, match="sample id 250 is past the end"):
        sample_bytes(m, tmp_path, 250)


def test_token_shard_not_a_multiple_of_the_width_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 33)
    spec = DatasetSpec(name="tok", root=tmp_path, files=["bad.bin"], source={},
                       layout={"type": "token-stream", "dtype": "uint16", "window": 4})
    with pytest.raises(DataMismatch, match=r"bad\.bin: 33 bytes of tokens is not a multiple of the 2-byte"):
        build_manifest(spec, cache=None)


def test_zstd_shards_and_a_truncated_one(tmp_path: Path) -> None:
    import zstandard

    docs = [json.dumps({"text": f"doc {i}"}).encode() for i in range(300)]
    raw = zstandard.ZstdCompressor().compress(b"\n".join(docs) + b"\n")
    (tmp_path / "a.jsonl.zst").write_bytes(raw)
    spec = DatasetSpec(name="z", root=tmp_path, files=["a.jsonl.zst"], source={}, layout={"type": "documents"})
    m = build_manifest(spec, cache=None)
    assert m["files"][0]["records"] == 300 and sample_bytes(m, tmp_path, 123) == docs[123]
    (tmp_path / "a.jsonl.zst").write_bytes(raw[:-7])
    with pytest.raises(DataMismatch, match=r"a\.jsonl\.zst: truncated zstd stream"):
        build_manifest(spec, cache=None)


def _tokens_run(tmp: Path) -> Path:
    import subprocess
    import sys

    from tests.conftest import REPO, TINY, offline_env, only_run

    args = [sys.executable, "-m", "training.train", "--config", str(REPO / "configs" / "tiny-lm-tokens.yaml"), *TINY,
            f"run.runs_dir={tmp / 'runs'}", f"data.root={tmp / 'data'}"]
    proc = subprocess.run(args, cwd=REPO, env=offline_env(tmp), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return only_run(tmp / "runs")


@pytest.mark.slow
def test_tiny_lm_tokens_trains_audits_proves_and_reproduces_bitwise(tmp_path: Path) -> None:
    from provenance.audit import audit
    from provenance.cli import main
    from provenance.datasets.proofs import prove, verify_proof

    b = _tokens_run(tmp_path)
    m = json.loads((b / "data" / "tiny-corpus-tokens" / "manifest.json").read_text())
    corpus = json.loads((b / "data" / "tiny-corpus" / "manifest.json").read_text())
    corpus.pop("bundled_files", None)
    from provenance import formats

    assert m["source"]["from_manifest"] == formats.config_digest(corpus)
    assert m["layout"]["type"] == "token-stream" and m["samples"]["count"] == m["layout"]["count"]
    assert audit(b).ok
    verify_proof(prove(b, sample=3))
    assert main(["reproduce", str(b)]) == 0


def test_parquet_shards_rows_are_documents_and_a_missing_column_names_the_file(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [f"parquet document {i}" for i in range(120)]
    pq.write_table(pa.table({"text": texts[:70], "n": list(range(70))}), tmp_path / "a.parquet", row_group_size=16)
    pq.write_table(pa.table({"text": texts[70:]}), tmp_path / "b.parquet")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": f"json {i}"}) + "\n" for i in range(5)))
    spec = DatasetSpec(name="p", root=tmp_path, files=["a.parquet", "b.parquet", "c.jsonl"], source={},
                       layout={"type": "documents"})
    m = build_manifest(spec, cache=None)
    assert [e["records"] for e in m["files"]] == [70, 50, 5] and m["layout"]["count"] == 125
    for sid in random.Random(3).sample(range(120), 20):
        assert sample_bytes(m, tmp_path, sid) == texts[sid].encode()
    assert json.loads(sample_bytes(m, tmp_path, 122)) == {"text": "json 2"}
    pq.write_table(pa.table({"body": texts[70:]}), tmp_path / "b.parquet")
    with pytest.raises(DataMismatch, match=r"b\.parquet: parquet file has no column 'text'"):
        build_manifest(spec, cache=None)


@pytest.mark.parametrize(("text", "want"), [
    ("lines", (None, None)),
    ("documents", ({"type": "documents"}, None)),
    ("documents:column=body", ({"type": "documents"}, "body")),
    ("token-stream:uint16:1024", ({"type": "token-stream", "dtype": "uint16", "window": 1024, "sample": "window"},
                                  None)),
    ("token-stream:uint32:2048:offset:8192",
     ({"type": "token-stream", "dtype": "uint32", "window": 2048, "sample": "offset", "chunk": 8192}, None)),
    ("token-stream:window=64:sample=offset",
     ({"type": "token-stream", "dtype": "uint16", "window": 64, "sample": "offset"}, None)),
])
def test_layout_strings_declare_what_a_config_declares(text: str, want: tuple[object, object]) -> None:
    from provenance.datasets.layouts import parse_layout

    assert parse_layout(text) == want


@pytest.mark.parametrize(("text", "names"), [
    ("tokens:uint16:1024", "unknown layout 'tokens'"), ("token-stream:uint8:1024", "dtype must be uint16 or uint32"),
    ("token-stream:uint16", "needs a window"), ("token-stream:uint16:-4", "window must be a positive integer"),
    ("token-stream:uint16:64:random", "sample must be window or offset"),
    ("token-stream:uint16:64:window:0", "chunk must be a positive integer"),
    ("token-stream:uint16:64:stride=2", "unknown field 'stride'"), ("documents:jsonl", "documents takes only"),
    ("lines:x", "lines takes no fields"), ("token-stream:window=8:uint16", "positional field 'uint16' after"),
])
def test_a_bad_layout_string_is_a_usage_error_naming_the_argument(tmp_path: Path, text: str, names: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from provenance.cli import main

    (tmp_path / "t.bin").write_bytes(b"\0" * 64)
    with pytest.raises(SystemExit) as exc:
        main(["run", "--runs-dir", str(tmp_path / "runs"), "--data", str(tmp_path / "t.bin"), "--data-layout", text,
              "--", "true"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --data-layout" in err and names in err, err
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing written
    with pytest.raises(SystemExit) as exc:  # a layout with no --data before it
        main(["run", "--data-layout", "documents", "--", "true"])
    assert exc.value.code == 2 and "must follow the --data" in capsys.readouterr().err


def test_prov_run_data_layout_is_recorded_like_a_config_declared_dataset(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from provenance import formats
    from provenance.cli import main

    shards = tmp_path / "shards"
    shards.mkdir()
    _, arrays = _tokens_dataset(shards)
    docs = tmp_path / "docs"
    docs.mkdir()
    for k in range(3):
        (docs / f"d{k}.jsonl").write_text("".join(json.dumps({"text": f"doc {k}.{i}"}) + "\n" for i in range(k + 2)))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("PROV_CACHE_DIR", "off")
    rc = main(["run", "--runs-dir", str(tmp_path / "runs"), "--no-capture",
               "--data", f"tok={shards}", "--data-layout", "token-stream:uint16:16:window:64",
               "--data", f"docs={docs}", "--data-layout", "documents",
               "--", sys.executable, "-c", "pass"])
    assert rc == 0
    (bundle,) = (tmp_path / "runs").iterdir()
    recorded = formats.read_json(bundle / "data" / "tok" / "manifest.json")
    declared = build_manifest(DatasetSpec(name="tok", root=shards, files=sorted(arrays), source={},
                                          layout={"type": "token-stream", "dtype": "uint16", "window": 16,
                                                  "sample": "window", "chunk": 64}), cache=None)
    for key in ("layout", "samples", "files", "merkle"):
        assert recorded[key] == declared[key], key
    assert recorded["layout"]["count"] == sum(len(a) // 16 for a in arrays.values())
    doc_m = formats.read_json(bundle / "data" / "docs" / "manifest.json")
    assert doc_m["layout"]["type"] == "documents" and doc_m["layout"]["count"] == 2 + 3 + 4
    config = formats.read_json(bundle / formats.CONFIG_JSON)["config"]
    assert config["data_layouts"] == ["token-stream:uint16:16:window:64", "documents"]
    # a layout the files do not fit: exit 2, naming the dataset and the file
    (shards / "odd.bin").write_bytes(b"\0" * 33)
    assert main(["run", "--runs-dir", str(tmp_path / "runs2"), "--no-capture", "--data", f"tok={shards}",
                 "--data-layout", "token-stream:uint16:16", "--", sys.executable, "-c", "pass"]) == 2
    assert not (tmp_path / "runs2").exists()


@pytest.mark.slow
def test_prov_reproduce_passes_the_data_layout_again(tmp_path: Path) -> None:
    """A wrapped run with --data-layout: its reproduction declares the same layout (same manifest record)."""
    import shutil
    import subprocess
    import sys

    from provenance import formats
    from tests.conftest import REPO, offline_env

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "tests" / "scripts" / "capture_nanogpt.py", work)
    np.random.default_rng(0).integers(0, 64, size=3000).astype(np.uint16).tofile(work / "tokens.bin")
    cli = [sys.executable, "-m", "provenance.cli"]
    env = offline_env(tmp_path)
    proc = subprocess.run([*cli, "run", "--runs-dir", str(tmp_path / "runs"), "--data", "tokens.bin",
                           "--data-layout", "token-stream:uint16:32:offset", "--", sys.executable,
                           "capture_nanogpt.py", "tokens.bin", "out", "--iters", "3"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (bundle,) = (tmp_path / "runs").iterdir()
    proc = subprocess.run([*cli, "reproduce", str(bundle), "--workdir", str(tmp_path / "w"), "--json", "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["verdict"] == "reproduced (bitwise)", doc.get("headline")
    name = next(p.name for p in (bundle / "data").iterdir() if (p / "manifest.json").is_file())
    first = formats.read_json(bundle / "data" / name / "manifest.json")
    again = formats.read_json(Path(doc["bundle"]) / "data" / name / "manifest.json")
    assert first["layout"]["type"] == "token-stream" and first["layout"]["sample"] == "offset"
    assert again["layout"] == first["layout"] and again["samples"] == first["samples"]
