"""Issue 2: configs, the corpus generator, and the default training end to end (reduced size)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, offline_env, only_run, train

from provenance.config import ConfigError, load
from training import corpus
from training.config import Config


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --- config validation -------------------------------------------------------------------


def _cfg(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_default_config_loads_and_overrides_apply() -> None:
    cfg = load(Config, REPO / "configs" / "tiny-lm.yaml", ["train.steps=7", "train.lr=0.01", "run.name=x"])
    assert (cfg.train.steps, cfg.train.lr, cfg.run.name) == (7, 0.01, "x")
    assert isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    ("text", "overrides", "needle"),
    [
        ("train:\n  stpes: 3\n", [], "unknown key 'train.stpes'"),
        ("bogus: 1\n", [], "unknown key 'bogus'"),
        ("train:\n  steps: many\n", [], "key 'train.steps' must be int"),
        ("train:\n  lr: true\n", [], "key 'train.lr' must be float"),
        ("data:\n  manifest: no/such/manifest.json\n", [], "key 'data.manifest' names a file that does not exist"),
        ("", ["model.n_layer=two"], "key 'model.n_layer' must be int"),
        ("", ["model.widht=3"], "unknown key 'model.widht'"),
    ],
)
def test_config_errors_name_key_and_file(tmp_path: Path, text: str, overrides: list[str], needle: str) -> None:
    path = _cfg(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(Config, path, overrides)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file does not exist"):
        load(Config, tmp_path / "nope.yaml")


def test_bad_config_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    path = _cfg(tmp_path, f"run:\n  runs_dir: {tmp_path / 'runs'}\n"
                          f"data:\n  root: {tmp_path / 'data'}\ntrain:\n  setps: 1\n")
    proc = subprocess.run([sys.executable, "-m", "training.train", "--config", str(path)], cwd=REPO,
                          env=offline_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown key 'train.setps'" in proc.stderr and str(path) in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


# --- corpus generator --------------------------------------------------------------------


def test_corpus_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = corpus.generate(tmp_path / "a", seed=5, n_stories=300, max_operand=9)
    corpus.generate(tmp_path / "b", seed=5, n_stories=300, max_operand=9)
    corpus.generate(tmp_path / "c", seed=6, n_stories=300, max_operand=9)
    for name in corpus.FILES:
        assert _sha(tmp_path / "a" / name) == _sha(tmp_path / "b" / name)
        assert _sha(tmp_path / "a" / name) != _sha(tmp_path / "c" / name)
    assert a["records"]["train.jsonl"] == sum(1 for _ in open(tmp_path / "a" / "train.jsonl"))


def test_corpus_heldout_sums_never_in_train(tmp_path: Path) -> None:
    corpus.generate(tmp_path, seed=1, n_stories=50, max_operand=19)
    train_text = {json.loads(x)["text"] for x in open(tmp_path / "train.jsonl")}
    held = [json.loads(x) for x in open(tmp_path / "arithmetic_eval.jsonl")]
    assert held
    for ex in held:
        assert f"{ex['prompt']}{ex['answer']}" not in train_text
        a, b = map(int, ex["prompt"].rstrip("=").split("+"))
        assert int(ex["answer"]) == a + b


# --- training ----------------------------------------------------------------------------


def test_tiny_training_learns_and_writes_a_loadable_model(tiny_bundle: Path) -> None:
    evals = [json.loads(x) for x in open(tiny_bundle / "logs" / "eval.jsonl")]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 12
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]  # beats the untrained model
    metrics = [json.loads(x) for x in open(tiny_bundle / "logs" / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == list(range(1, 13))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_bundle / "model")
    tok = AutoTokenizer.from_pretrained(tiny_bundle / "model")
    assert model.config.n_layer == 2 and model.config.n_embd == 32
    assert tok("1+2=")["input_ids"]  # the tokenizer that trained the model ships with it


def test_two_runs_give_bitwise_identical_weights(tiny_bundle: Path, tmp_path: Path) -> None:
    train(tmp_path)
    again = only_run(tmp_path / "runs")
    assert _sha(again / "model" / "model.safetensors") == _sha(tiny_bundle / "model" / "model.safetensors")
    ia = json.loads((tiny_bundle / "checkpoints" / "index.json").read_text())["checkpoints"]
    ib = json.loads((again / "checkpoints" / "index.json").read_text())["checkpoints"]
    assert [e["sha256"] for e in ia] == [e["sha256"] for e in ib]
    la = [json.loads(x)["loss"] for x in open(tiny_bundle / "logs" / "metrics.jsonl")]
    lb = [json.loads(x)["loss"] for x in open(again / "logs" / "metrics.jsonl")]
    assert la == lb


def test_training_prints_config_and_summary(tmp_path: Path) -> None:
    proc = train(tmp_path, "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2")
    assert "resolved config:" in proc.stdout and "steps: 2" in proc.stdout
    run = only_run(tmp_path / "runs")
    assert f"run: {run}" in proc.stdout and "root digest: sha256:" in proc.stdout


def test_tiny_overrides_are_valid() -> None:
    load(Config, REPO / "configs" / "tiny-lm.yaml", TINY)


def test_committed_manifest_matches_the_generator(tmp_path: Path) -> None:
    """data_manifests/tiny-corpus.json pins the default corpus: a generator change must bump its version."""
    from provenance.capture.data import build_manifest, compare_manifests, load_manifest
    from training.config import DataConfig
    from training.data import prepare_corpus

    committed = load_manifest(REPO / "data_manifests" / "tiny-corpus.json")
    cfg = load(Config, REPO / "configs" / "tiny-lm.yaml").data
    assert cfg.manifest == "data_manifests/tiny-corpus.json"
    spec = prepare_corpus(DataConfig(**{**cfg.__dict__, "root": str(tmp_path), "manifest": None}))
    compare_manifests(committed, build_manifest(spec))  # raises DataMismatch naming the file
    assert committed["source"]["version"] == corpus.GENERATOR_VERSION


def test_inference_script_generates_from_a_bundle(tiny_bundle: Path) -> None:
    from training.generate import generate

    out = generate(str(tiny_bundle / "model"), ["1+2=", "Once upon a time,"], max_new_tokens=5)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    assert out == generate(str(tiny_bundle / "model"), ["1+2=", "Once upon a time,"], max_new_tokens=5)


def test_documents_are_shipped_and_links_kept(tmp_path: Path) -> None:
    paper = tmp_path / "paper.pdf"
    paper.write_bytes(b"%PDF-1.4 a paper")
    train(tmp_path, "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
          f"run.documents={{research_paper: {paper}, technical_report: 'https://example.invalid/report'}}")
    run = only_run(tmp_path / "runs")
    info = json.loads((run / "run.json").read_text())
    assert info["documents"] == {"research_paper": "documents/research_paper.pdf",
                                 "technical_report": "https://example.invalid/report"}
    assert (run / "documents" / "research_paper.pdf").read_bytes() == paper.read_bytes()
    bad = train(tmp_path / "bad", f"run.documents={{paper: {tmp_path / 'missing.pdf'}}}", check=False)
    assert bad.returncode == 2 and "run.documents.paper" in bad.stderr
    assert not (tmp_path / "bad" / "runs").exists()
