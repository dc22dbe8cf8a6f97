"""`prov prove` / `prov verify-proof` on a default (`lines`) bundle, `prov data resolve|manifest`."""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from provenance import formats
from provenance.cli import main
from provenance.datasets.proofs import ProofError, prove, verify_proof


def _train_lines(bundle: Path) -> list[bytes]:
    return (bundle / "data" / "tiny-corpus" / "files" / "train.jsonl").read_bytes().split(b"\n")[:-1]


def _order(bundle: Path) -> list[formats.OrderStep]:
    _, ids, steps, _ = formats.order_files(bundle, 0)
    return list(formats.read_order(bundle / ids, bundle / steps))


def test_prove_a_trained_story_and_its_steps(tiny_bundle: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    order = _order(tiny_bundle)
    sample = order[3].sample_ids[2]  # a story drawn at step 4 (and maybe later)
    story = json.loads(_train_lines(tiny_bundle)[sample])["text"]
    out = tmp_path / "proof.json"
    capsys.readouterr()
    assert main(["prove", str(tiny_bundle), "--text", story, "-o", str(out)]) == 0
    said = capsys.readouterr()
    assert f"proof: {out}" in said.out and said.err == ""  # with -o, what it proves goes to stdout
    proof = json.loads(out.read_text())
    line = _train_lines(tiny_bundle)[sample]
    copies = {i for i, x in enumerate(_train_lines(tiny_bundle)) if x == line}  # the corpus repeats some records
    expected = sorted((st.step, k) for st in order for k, s in enumerate(st.sample_ids) if s in copies)
    assert [(t["step"], t["position"]) for t in proof["trained"]] == expected and expected
    assert proof["claim"] == "membership" and proof["order"]["complete"] and sample in proof["samples"]
    root = formats.parse_oms_statement(formats.read_json(tiny_bundle / "manifest.json"))[0]
    capsys.readouterr()
    assert main(["verify-proof", str(out), "--root", f"sha256:{root}"]) == 0
    assert f"step(s) {expected[0][0]}" in capsys.readouterr().out
    assert main(["verify-proof", str(out), "--bundle", str(tiny_bundle)]) == 0
    assert main(["verify-proof", str(out), "--root", "sha256:" + "0" * 64]) == 1


def _flip_one_char(value: str) -> str:
    i = len(value) // 2
    return value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1:]


@pytest.mark.parametrize("where", ["leaf", "file_path", "dataset_path", "commitment", "entry", "resources",
                                   "trained", "order_ids", "steps"])
def test_one_changed_byte_of_the_proof_is_rejected(tiny_bundle: Path, where: str) -> None:
    sample = _order(tiny_bundle)[0].sample_ids[0]
    good = prove(tiny_bundle, sample=sample)
    verify_proof(good)
    bad = copy.deepcopy(good)
    if where == "leaf":
        bad["record"]["data_text"] = _flip_one_char(bad["record"]["data_text"])
    elif where in ("file_path", "dataset_path"):
        bad["leaves"][0][where][0] = _flip_one_char(bad["leaves"][0][where][0].upper()).lower()
    elif where == "commitment":
        bad["dataset"]["commitment_text"] = bad["dataset"]["commitment_text"].replace('"files": ', '"files":  ', 1)
    elif where == "entry":
        bad["leaves"][0]["entry"]["first_sample"] += 1
    elif where == "resources":
        bad["bundle"]["resources"][0][1] = _flip_one_char(bad["bundle"]["resources"][0][1].upper()).lower()
    elif where == "trained":
        bad["trained"][0]["step"] += 1
    elif where == "order_ids":
        r = bad["order"]["ranks"][0]
        r["ids_b64"] = _flip_one_char(r["ids_b64"])
    else:
        r = bad["order"]["ranks"][0]
        r["steps_b64"] = _flip_one_char(r["steps_b64"])
    with pytest.raises(ProofError):
        verify_proof(bad)


def test_changed_data_cannot_be_proved(tiny_bundle: Path, tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    f = b / "data" / "tiny-corpus" / "files" / "train.jsonl"
    data = bytearray(f.read_bytes())
    data[5] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(ProofError, match=r"train\.jsonl"):
        prove(b, sample=0)


def test_partial_order_evidence_checks_each_step(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from provenance.datasets import proofs

    monkeypatch.setattr(proofs, "ORDER_INLINE_LIMIT", 0)
    sample = _order(tiny_bundle)[1].sample_ids[0]
    p = prove(tiny_bundle, sample=sample)
    assert not p["order"]["complete"] and p["order"]["ranks"][0]["batches"]
    verify_proof(p)
    bad = copy.deepcopy(p)
    step = next(iter(bad["order"]["ranks"][0]["batches"]))
    bad["order"]["ranks"][0]["batches"][step][0] += 1
    with pytest.raises(ProofError, match="not the one recorded"):
        verify_proof(bad)


def test_document_membership_and_non_membership(tiny_bundle: Path, tmp_path: Path) -> None:
    lines = _train_lines(tiny_bundle)
    doc = tmp_path / "doc.jsonl"
    doc.write_bytes(lines[7] + b"\n")
    p = prove(tiny_bundle, file=doc)
    assert p["claim"] == "membership" and 7 in {leaf["index"] for leaf in p["leaves"]}
    assert {leaf["index"] for leaf in p["leaves"]} == {i for i, x in enumerate(lines) if x == lines[7]}
    verify_proof(p)
    absent = tmp_path / "absent.jsonl"
    absent.write_bytes(b'{"text": "A story nobody wrote: the end."}\n')
    a = prove(tiny_bundle, file=absent)
    assert a["claim"] == "non-membership" and a["absent"]["neighbours"]
    verify_proof(a)
    bad = copy.deepcopy(a)
    bad["absent"]["neighbours"][0]["leaf_hash"] = a["absent"]["leaf_hash"]  # claims equality
    with pytest.raises(ProofError):
        verify_proof(bad)
    bad = copy.deepcopy(a)
    bad["absent"]["neighbours"][0]["index"] += 1
    with pytest.raises(ProofError):
        verify_proof(bad)


def test_sample_past_the_end_is_exit_2(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = len(_train_lines(tiny_bundle))
    assert main(["prove", str(tiny_bundle), "--sample", str(n)]) == 2
    assert f"sample id {n} is past the end" in capsys.readouterr().err
    assert main(["prove", str(tiny_bundle), "--sample", "-1"]) == 2
    assert "sample id -1 is not a sample id (ids count from 0)" in capsys.readouterr().err


def test_resolve_a_step_matches_a_direct_read(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _train_lines(tiny_bundle)
    order = _order(tiny_bundle)
    step = random.Random(0).choice(order)
    capsys.readouterr()
    assert main(["data", "resolve", str(tiny_bundle), str(step.step), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["sample"] for r in rows] == list(step.sample_ids)
    for r in rows:
        start, end = map(int, r["range"].split()[1].split(":"))
        raw = (tiny_bundle / "data" / "tiny-corpus" / "files" / "train.jsonl").read_bytes()
        assert raw[start:end] == lines[r["sample"]]
        assert r["text"] == json.loads(lines[r["sample"]])["text"]
    assert main(["data", "resolve", str(tiny_bundle), "99999"]) == 2


def test_prov_data_manifest_reports_cache_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    d = tmp_path / "ds"
    d.mkdir()
    (d / "a.jsonl").write_text('{"text": "x"}\n' * 10)
    st = (d / "a.jsonl").stat()
    os.utime(d / "a.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns - 10**11))
    out1, out2 = tmp_path / "m1.json", tmp_path / "m2.json"
    assert main(["data", "manifest", str(d), "-o", str(out1)]) == 0
    assert "hashed 140 bytes in 1 files" in capsys.readouterr().err
    assert main(["data", "manifest", str(d), "-o", str(out2)]) == 0
    assert "took 140 bytes in 1 files from the hash cache" in capsys.readouterr().err
    assert out1.read_bytes() == out2.read_bytes()
    assert main(["data", "manifest", str(tmp_path / "nope")]) == 2


def test_audit_recomputes_the_merkle_roots_and_the_commitment(tiny_bundle: Path, tmp_path: Path) -> None:
    from provenance.audit import audit
    from provenance.bundle import seal_folder
    from provenance.capture.data import commitment

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    mpath = b / "data" / "tiny-corpus" / "manifest.json"
    m = json.loads(mpath.read_text())
    entry = next(e for e in m["files"] if e["path"] == "train.jsonl")
    entry["merkle_root"] = "sha256:" + "1" * 64  # a root the data does not give, consistently committed
    formats.atomic_write_json(mpath, m)
    formats.atomic_write_json(b / "data" / "tiny-corpus" / "commitment.json", commitment(m))
    seal_folder(b)
    report = audit(b)
    assert not report.ok
    text = json.dumps(report.to_dict())
    assert "train.jsonl" in text and "Merkle root" in text
    # a commitment that does not match its manifest
    formats.atomic_write_json(b / "data" / "tiny-corpus" / "commitment.json", {**commitment(m), "files": 99})
    seal_folder(b)
    assert "does not match the Merkle roots" in json.dumps(audit(b).to_dict())


@pytest.fixture(scope="module")
def tokens_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[int], int]:
    """A bundle whose data order indexes a token stream made by the recorded tokenization step
    (training/tokens.py) from a small corpus, with the corpus and the tokenizer as its other datasets."""
    from provenance import start_run
    from provenance.capture.data import DatasetSpec
    from training.config import TokenizerConfig
    from training.data import load_hf_tokenizer, train_tokenizer
    from training.tokens import tokenize_corpus

    tmp = tmp_path_factory.mktemp("tokens")
    corpus = tmp / "corpus"
    corpus.mkdir()
    rnd = random.Random(3)
    names, animals = ["Rosa", "Tom", "Ada", "Li", "Max"], ["duck", "fox", "owl", "cat"]
    stories = [f"Once upon a time, {rnd.choice(names)} the {rnd.choice(animals)} found {i} shiny stones by the river."
               for i in range(120)]
    (corpus / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in stories))
    spec = DatasetSpec(name="corpus", root=corpus, files=["train.jsonl"], source={"type": "local"},
                       samples_file="train.jsonl")
    tok_spec = train_tokenizer(corpus / "train.jsonl", TokenizerConfig(vocab_size=300, min_frequency=2),
                               tmp / "tok")
    window = 16
    tokens = tokenize_corpus(spec, tok_spec, load_hf_tokenizer(tok_spec.root), window=window)
    stream = np.fromfile(tokens.root / "train.bin", dtype="<u2")
    n = len(stream) // window
    batches = {s: [random.Random(s).randrange(n) for _ in range(8)] for s in range(1, 41)}
    with start_run({"t": 1}, name="tokens", runs_dir=str(tmp / "runs"), seed=0, threads=1, capture_output=False,
                   datasets=[tokens, spec, tok_spec], sampler={"algorithm": "uniform", "n_samples": n}) as run:
        for s, ids in batches.items():
            run.record_batch(s, ids)
    return run.root, stories, stream.tolist(), window


def test_text_in_a_token_stream_is_tokenized_found_and_proved(tokens_bundle: tuple[Path, list[str], list[int], int],
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from provenance.datasets.proofs import encode_text

    bundle, stories, stream, window = tokens_bundle
    story = stories[57]
    proof = prove(bundle, text=story)
    verify_proof(proof)
    verify_proof(proof, bundle=bundle)  # the text -> ids link, with the bundle's tokenizer
    ids = proof["tokens"]["ids"]
    # the ids are what the tokenization step (the HF tokenizer over the same file) made of the story
    from training.data import load_hf_tokenizer

    tok_file = bundle / "data" / "tokenizer" / "files" / "tokenizer.json"
    assert tok_file.is_file()
    assert ids == encode_text(tok_file, story) == load_hf_tokenizer(tok_file.parent)(
        story, add_special_tokens=False)["input_ids"]
    # the span is where the story's tokens are in the stream (a direct search), and its samples the windows
    (sp,) = [s for s in proof["spans"]]
    a = sp["token_start"]
    assert stream[a:a + len(ids)] == ids
    starts = [i for i in range(len(stream) - len(ids) + 1) if stream[i:i + len(ids)] == ids]
    assert starts == [a] and proof["tokens"]["occurrences"] == 1
    want = set(range(a // window, min(len(stream) // window, (a + len(ids) - 1) // window + 1)))
    assert set(proof["samples"]) == want
    order = _order(bundle)
    trained = {(st.step, k) for st in order for k, sid in enumerate(st.sample_ids) if sid in want}
    assert {(t["step"], t["position"]) for t in proof["trained"]} == trained
    # the CLI: prove and verify-proof
    out = tmp_path / "p.json"
    assert main(["prove", str(bundle), "--text", story, "-o", str(out)]) == 0
    assert f"tokens {a}:{a + len(ids)} of train.bin" in capsys.readouterr().out
    assert main(["verify-proof", str(out)]) == 0
    assert "text → tokens as claimed" in capsys.readouterr().out
    # one changed token id, chunk byte or span offset is rejected
    for mutate in (lambda p: p["tokens"]["ids"].__setitem__(0, p["tokens"]["ids"][0] ^ 1),
                   lambda p: p["spans"][0].__setitem__("token_start", p["spans"][0]["token_start"] + 1),
                   lambda p: p["spans"][0]["leaves"][0].__setitem__("data_b64", "AAAA" +
                                                                    p["spans"][0]["leaves"][0]["data_b64"][4:]),
                   lambda p: p.__setitem__("samples", p["samples"][1:])):
        bad = copy.deepcopy(proof)
        mutate(bad)
        with pytest.raises(ProofError):
            verify_proof(bad)
    # --file of the story's document: its text, the same place (never a non-membership claim on tokens)
    doc = tmp_path / "story.jsonl"
    doc.write_text(json.dumps({"text": story}) + "\n")
    by_file = prove(bundle, file=doc)
    verify_proof(by_file)
    assert by_file["spans"][0]["token_start"] == a and by_file["query"]["document"] == "story.jsonl"
    # a text whose tokens are not in the stream: a clear error, no proof
    with pytest.raises(ProofError, match="do not occur in the token stream"):
        prove(bundle, text="Zebras never appear here at all")
    # --text on a text the proof claims but the tokenizer encodes otherwise: rejected with --bundle
    bad = copy.deepcopy(proof)
    bad["query"]["text"] = stories[58]
    with pytest.raises(ProofError, match="does not encode the text"):
        verify_proof(bad, bundle=bundle)


def test_text_in_a_token_stream_without_its_tokenizer_is_a_clear_error(
        tokens_bundle: tuple[Path, list[str], list[int], int], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bundle, stories, _, _ = tokens_bundle
    copy_ = tmp_path / bundle.name
    shutil.copytree(bundle, copy_)
    tman = formats.read_json(copy_ / "data" / "tokenizer" / "manifest.json")
    for place in [copy_ / "data" / "tokenizer" / "files" / "tokenizer.json",
                  Path(tman["source"].get("local_path", "/nonexistent")) / "tokenizer.json"]:
        if place.is_file():
            place.rename(place.with_suffix(".gone"))
    try:
        assert main(["prove", str(copy_), "--text", stories[3]]) == 2
        err = capsys.readouterr().err
        assert "the recorded tokenizer tokenizer.json" in err and "is not available offline" in err
    finally:
        for place in [copy_ / "data" / "tokenizer" / "files" / "tokenizer.gone",
                      Path(tman["source"].get("local_path", "/nonexistent")) / "tokenizer.gone"]:
            if place.is_file():
                place.rename(place.with_suffix(".json"))


def test_a_sample_of_a_token_stream_says_where_that_sample_was_trained(
        tokens_bundle: tuple[Path, list[str], list[int], int]) -> None:
    """--sample ID in a token stream proves the token chunk holding the window; the chunk holds many
    windows, so its `trained` lists them all: the summary must count ID's own places, not the chunk's."""
    from provenance.datasets.proofs import summary

    bundle, _, _, _ = tokens_bundle
    order = _order(bundle)
    sid = order[0].sample_ids[0]
    mine = sorted({st.step for st in order for s in st.sample_ids if s == sid})
    places = sum(1 for st in order for s in st.sample_ids if s == sid)
    proof = prove(bundle, sample=sid)
    verify_proof(proof)
    assert len(proof["samples"]) > 1 and len(proof["trained"]) > places  # the chunk: other windows too
    line = summary(proof)
    assert f"trained at {places} place(s), step(s) {', '.join(map(str, mine[:20]))}" in line, line


def test_a_proof_about_nothing_is_rejected(tiny_bundle: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The query is what the proof claims (checked against the record): one that names no text, sample id
    or document digest verified before, and a list crashed verify-proof's summary with a traceback."""
    good = prove(tiny_bundle, sample=_order(tiny_bundle)[0].sample_ids[0])
    verify_proof(good)
    for query in ([1], {}, {"document": "secret.txt"}, {"sample": "3"}, {"text": 3}, None):
        bad = dict(good, query=query)
        with pytest.raises(ProofError, match="does not say what it is about"):
            verify_proof(bad)
        out = tmp_path / "bad.json"
        out.write_text(json.dumps(bad))
        assert main(["verify-proof", str(out)]) == 1
        err = capsys.readouterr().err
        assert "proof REJECTED: the proof does not say what it is about" in err and "Traceback" not in err


def test_retraining_the_same_tokenizer_keeps_its_file(tmp_path: Path) -> None:
    """The same corpus and settings give the same tokenizer.json: the file (and its mtime) is kept, so the
    hash cache still knows it; another corpus replaces it."""
    import os

    from training.config import TokenizerConfig
    from training.data import train_tokenizer

    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"The fox found {i} stones."}) + "\n" for i in range(60)))
    cfg = TokenizerConfig(vocab_size=280, min_frequency=2)
    path = train_tokenizer(corpus, cfg, tmp_path / "tok").root / "tokenizer.json"
    os.utime(path, ns=(10**18, 10**18))
    before = path.read_bytes()
    train_tokenizer(corpus, cfg, tmp_path / "tok")
    assert path.stat().st_mtime_ns == 10**18 and path.read_bytes() == before
    assert not list((tmp_path / "tok").glob(".*tmp"))
    corpus.write_text("".join(json.dumps({"text": f"An owl saw {i} shiny rivers."}) + "\n" for i in range(60)))
    train_tokenizer(corpus, cfg, tmp_path / "tok")  # another corpus: another tokenizer
    assert path.stat().st_mtime_ns != 10**18 and path.read_bytes() != before
