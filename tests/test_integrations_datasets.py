"""Datasets named by the config: a local folder (the manifest lists exactly the files read) or a Hub dataset
at a pinned commit (no network in tests: the download is replaced by a local folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import offline_env, train
from test_integrations_common import assert_sealed, only_run

from provenance import ConfigError, formats
from provenance.capture.data import build_manifest
from training import corpus
from training.config import DataConfig
from training.train import corpus_spec


def test_local_corpus_folder(tmp_path: Path) -> None:
    src = tmp_path / "my-corpus"
    corpus.generate(src, seed=7, n_stories=400, max_operand=9)
    (src / "NOTES.md").write_text("not read by training\n")
    train(tmp_path, "data.source=local", f"data.path={src}", "data.name=my-corpus", "train.steps=2",
          "train.eval_every=2", "train.checkpoint_every=2", env=offline_env(tmp_path))
    root = only_run(tmp_path / "runs")
    assert_sealed(root)
    manifest = formats.read_json(root / "data" / "my-corpus" / "manifest.json")
    assert [f["path"] for f in manifest["files"]] == sorted(corpus.FILES)
    assert manifest["source"]["type"] == "local" and manifest["source"]["path"] == str(src.resolve())
    assert manifest["source"]["files_read"] == list(corpus.FILES)
    assert manifest["samples"]["file"] == "train.jsonl"
    assert not (src / "tokenizer-bpe300").exists()  # nothing written into someone's data folder


def test_hub_corpus_pinned_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    snapshot = tmp_path / "snapshot"
    corpus.generate(snapshot, seed=7, n_stories=50, max_operand=3)
    calls = []

    def fake_download(**kw: object) -> str:
        calls.append(kw)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    sha = "0123456789abcdef0123456789abcdef01234567"
    spec = corpus_spec(DataConfig(name="hub-corpus", source="hub", hub_repo="org/stories", hub_revision=sha))
    assert calls[0]["revision"] == sha and calls[0]["repo_type"] == "dataset"
    assert sorted(calls[0]["allow_patterns"]) == sorted(corpus.FILES)
    manifest = build_manifest(spec)
    assert manifest["source"]["type"] == "hub" and manifest["source"]["revision"] == sha
    assert manifest["source"]["repo_id"] == "org/stories" and sha in manifest["source"]["url"]
    assert [f["path"] for f in manifest["files"]] == sorted(corpus.FILES)
    for moving in ("main", "v1.0", "0123abc"):
        with pytest.raises(ConfigError, match="commit sha"):
            corpus_spec(DataConfig(source="hub", hub_repo="org/stories", hub_revision=moving))
    with pytest.raises(ConfigError, match=r"data\.path"):
        corpus_spec(DataConfig(source="local"))
    with pytest.raises(ConfigError, match="generated, local or hub"):
        corpus_spec(DataConfig(source="s3"))
