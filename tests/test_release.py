"""Issue 7: `prov release` — signature, SLSA provenance, model card, data cards, openness record, report.

One release of the tiny bundle (module fixture) serves the read-only tests; tests that
change a bundle work on copies. Sigstore keyless signing needs network and an OIDC
identity, so it is never exercised here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provenance import formats
from provenance.release import ReleaseError, release
from provenance.release.facts import Facts
from provenance.release.signing import (
    SigningError,
    dsse_verify,
    generate_key,
    load_public_key,
    verify_signature,
)

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:ConjunctiveGraph is deprecated:DeprecationWarning")


def _tool(name: str) -> list[str]:
    exe = BIN / name
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", name.replace("-", "_")]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _flip_byte(p: Path, offset: int = -1) -> None:
    data = bytearray(p.read_bytes())
    data[offset] ^= 0x01
    p.write_bytes(bytes(data))


def _ms_verify(bundle: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    """The stock model_signing command, as the model card prints it (run from the bundle's parent)."""
    return subprocess.run([*_tool("model_signing"), "verify", "key", bundle.name, "--public_key", str(pub),
                           "--signature", f"{bundle.name}/{formats.SIGNATURE}"],
                          cwd=bundle.parent, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    return generate_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def released(tiny_bundle: Path, keys: tuple[Path, Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A released copy of the tiny bundle. Read-only: copy it before changing it."""
    dest = tmp_path_factory.mktemp("released") / tiny_bundle.name
    shutil.copytree(tiny_bundle, dest)
    with open(dest / formats.NOTES, "a") as f:  # a decision note, so that the timeline has one
        f.write(formats.dumps_line(formats.note_record("lowered the learning rate after step 6", "hyperparameter",
                                                       "tester", [], 6)))
    from provenance.bundle import seal_folder

    root = seal_folder(dest)
    (dest.parent / "root-before-release").write_text(root)
    release(dest, key=keys[0], producer="fullyopen tests")
    return dest


def _copy(src: Path, tmp_path: Path) -> Path:
    dest = tmp_path / src.name
    shutil.copytree(src, dest)
    return dest


# --- 1. the signature ----------------------------------------------------------------------------


def test_model_signing_cli_verifies_and_rejects_one_changed_byte(released: Path, keys: tuple[Path, Path, str],
                                                                  tmp_path: Path) -> None:
    ok = _ms_verify(released, keys[1])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Verification succeeded" in ok.stdout
    # the public key the bundle carries is the same key
    assert (released / formats.SIGNER_PUBLIC_KEY).read_bytes() == keys[1].read_bytes()

    bad = _copy(released, tmp_path / "weights")
    _flip_byte(bad / "model/model.safetensors")
    res = _ms_verify(bad, keys[1])
    assert res.returncode != 0, "a changed byte in the weights was accepted"
    assert "model/model.safetensors" in res.stdout + res.stderr  # model_signing names the file

    # the same verification through the library: a release document, an added file
    import model_signing

    def lib_verify(bundle: Path) -> None:
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys[1]).verify(
            bundle, bundle / formats.SIGNATURE)

    lib_verify(released)
    report = _copy(released, tmp_path / "report")
    _flip_byte(report / formats.REPORT_HTML, 100)
    with pytest.raises(ValueError, match=r"release/report\.html"):
        lib_verify(report)
    (bad := _copy(released, tmp_path / "extra")).joinpath("smuggled.txt").write_text("not released\n")
    with pytest.raises(ValueError, match=r"smuggled\.txt"):
        lib_verify(bad)


def test_signed_statement_is_the_seal(released: Path) -> None:
    sig = json.loads((released / formats.SIGNATURE).read_text())
    payload = json.loads(base64.b64decode(sig["dsseEnvelope"]["payload"]))
    signed_root, signed = formats.parse_oms_statement(payload)
    sealed_root, sealed = formats.parse_oms_statement(json.loads((released / formats.MANIFEST).read_text()))
    assert signed == sealed and signed_root == sealed_root
    assert not set(sealed) & formats.UNSEALED
    for rel in (formats.MODEL_CARD, formats.SLSA_STATEMENT, formats.SLSA_ENVELOPE, formats.OPENNESS_YAML,
                formats.REPORT_HTML, formats.RELEASE_JSON, formats.SIGNER_PUBLIC_KEY,
                "data/tiny-corpus/croissant.json"):
        assert rel in sealed, rel
    # the run's own files keep their digests: their root is the training run's root digest
    original_root = (released.parent / "root-before-release").read_text()
    assert Facts.load(released).content_root_digest == original_root
    rec = json.loads((released / formats.RELEASE_JSON).read_text())
    assert rec["content_root_digest"] == original_root


def test_verify_signature_for_audit(released: Path, keys: tuple[Path, Path, str], tmp_path: Path) -> None:
    res = verify_signature(released)
    assert res is not None and res["ok"], res
    assert res["fingerprint"] == keys[2] and res["kind"] == "key" and res["key_source"] == "bundle"
    assert res["root_digest"] == formats.parse_oms_statement(json.loads((released / formats.MANIFEST).read_text()))[0]
    assert res["slsa"]["ok"] and res["error"] is None
    assert verify_signature(released, public_key=keys[1])["trusted_key"] is True
    assert verify_signature(released, rehash=True)["ok"]

    # another key: refused, naming both fingerprints
    _, other_pub, other_fp = generate_key(tmp_path / "other")
    res = verify_signature(released, public_key=other_pub)
    assert not res["ok"] and other_fp in res["error"]

    # a byte changed: the full check (model_signing re-hashes the folder) names the file
    bad = _copy(released, tmp_path / "bad")
    _flip_byte(bad / "logs/metrics.jsonl")
    res = verify_signature(bad, rehash=True)
    assert not res["ok"] and "logs/metrics.jsonl" in res["error"]

    # re-sealed after a change: the seal no longer matches what was signed
    from provenance.bundle import seal_folder

    seal_folder(bad)
    res = verify_signature(bad)
    assert not res["ok"] and "logs/metrics.jsonl" in res["error"]

    unsigned = _copy(released, tmp_path / "unsigned")
    (unsigned / formats.SIGNATURE).unlink()
    assert verify_signature(unsigned) is None


def test_prov_audit_verifies_the_signature_and_names_the_key(released: Path, keys: tuple[Path, Path, str],
                                                             tmp_path: Path) -> None:
    from provenance.audit import audit

    report = audit(released)
    sig = report.check("signature")
    assert report.ok and sig.status == "pass" and keys[2] in sig.summary
    # re-sealed after a change: the bundle is intact again but no longer what was signed
    from provenance.bundle import seal_folder

    bad = _copy(released, tmp_path / "resealed")
    _flip_byte(bad / "logs/metrics.jsonl")
    seal_folder(bad)
    report = audit(bad)
    assert not report.ok and report.check("signature").status == "fail"
    assert any("signature does not verify" in f for f in report.failures())


# --- 2. SLSA provenance --------------------------------------------------------------------------


def test_slsa_lists_every_checkpoint_and_is_signed(released: Path, keys: tuple[Path, Path, str]) -> None:
    st = json.loads((released / formats.SLSA_STATEMENT).read_text())
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    subjects = {s["name"]: s["digest"]["sha256"] for s in st["subject"]}
    ckpts = sorted((released / formats.CHECKPOINT_DIR).glob("*.safetensors"))
    assert len(ckpts) >= 2
    index = json.loads((released / formats.CHECKPOINT_INDEX).read_text())["checkpoints"]
    for p in ckpts:
        rel = p.relative_to(released).as_posix()
        assert subjects[rel] == _sha(p) == next(e["sha256"] for e in index if e["path"] == rel)
    for p in (released / formats.MODEL_DIR).iterdir():
        rel = p.relative_to(released).as_posix()
        if rel != formats.MODEL_CARD:
            assert subjects[rel] == _sha(p)

    bd = st["predicate"]["buildDefinition"]
    cfg = json.loads((released / formats.CONFIG_JSON).read_text())
    assert bd["externalParameters"]["config"] == cfg["config"]
    assert bd["externalParameters"]["command"] == cfg["argv"]
    run = json.loads((released / formats.RUN_JSON).read_text())
    assert bd["internalParameters"]["determinism"] == run["determinism"]
    deps = bd["resolvedDependencies"]
    code = json.loads((released / formats.CODE_JSON).read_text())
    if code.get("commit"):
        assert {"gitCommit": code["commit"]} in [d.get("digest") for d in deps]
    if "requirements.lock" in code["files"]:
        lock = next(d for d in deps if d.get("name") == "requirements.lock")
        assert "sha256:" + lock["digest"]["sha256"] == code["files"]["requirements.lock"]
    for name in ("tiny-corpus", "tokenizer"):
        manifest = json.loads((released / "data" / name / "manifest.json").read_text())
        for e in manifest["files"]:
            dep = next(d for d in deps if d.get("name") == f"{name}/{e['path']}")
            assert dep["digest"]["sha256"] == e["sha256"]
    assert any(d.get("uri", "").startswith("pkg:pypi/torch@") for d in deps)
    rd = st["predicate"]["runDetails"]
    assert rd["builder"]["id"].startswith("urn:fullyopen:builder:prov@")
    assert rd["metadata"] == {"invocationId": run["run_id"], "startedOn": run["started_at"],
                              "finishedOn": run["ended_at"]}

    env = json.loads((released / formats.SLSA_ENVELOPE).read_text().strip())
    ptype, payload = dsse_verify(env, load_public_key(keys[1]))
    assert ptype == "application/vnd.in-toto+json" and json.loads(payload) == st
    env["payload"] = base64.b64encode(payload.replace(b"checkpoints", b"checkpoint_")).decode()
    with pytest.raises(SigningError):
        dsse_verify(env, load_public_key(keys[1]))


# --- 3. model card ----------------------------------------------------------------------------------


def test_model_card_metadata_parses(released: Path, keys: tuple[Path, Path, str]) -> None:
    from huggingface_hub import ModelCard

    text = (released / formats.MODEL_CARD).read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n", 2)[1])
    assert meta["license"] == "apache-2.0" and meta["datasets"] == ["tiny-corpus"]
    assert {"loss", "perplexity", "exact_match"} <= set(meta["metrics"])
    card = ModelCard.load(released / formats.MODEL_CARD)  # the Hub's own parser of card metadata
    assert card.data.license == "apache-2.0"
    final = [json.loads(x) for x in (released / formats.EVALS).read_text().splitlines()][-1]
    results = {(r.metric_type, r.dataset_split): r.metric_value for r in card.data.eval_results}
    assert results[("loss", "validation")] == final["val_loss"]
    assert results[("exact_match", "evaluation")] == final["arith_exact_match"]
    f = Facts.load(released)
    body = card.text
    assert f"{f.parameters:,}" in body and f.parameters and f.parameters > 1000
    assert f"sha256:{f.content_root_digest}" in body
    assert keys[2] in body
    assert f"model_signing verify key {released.name} --public_key {released.name}/{formats.SIGNER_PUBLIC_KEY} " \
           f"--signature {released.name}/{formats.SIGNATURE}" in body
    assert f"prov audit {released.name}" in body and f"prov reproduce {released.name}" in body
    assert "lowered the learning rate after step 6" in body  # the decision note
    for e in json.loads((released / "data/tiny-corpus/manifest.json").read_text())["files"]:
        assert e["sha256"] in body


# --- 4. data cards ------------------------------------------------------------------------------------


def test_croissant_cards_validate(released: Path) -> None:
    import mlcroissant as mlc

    from provenance.release.croissant import validate

    # the command line on the training data's card, the same validation in-process on every card
    res = subprocess.run([*_tool("mlcroissant"), "validate", "--jsonld",
                          str(released / "data/tiny-corpus" / formats.CROISSANT_NAME)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("tiny-corpus", "tokenizer"):
        path = released / "data" / name / formats.CROISSANT_NAME
        errors, _warnings = validate(path)
        assert errors == []
        card = json.loads(path.read_text())
        assert card["conformsTo"] == "http://mlcommons.org/croissant/1.1"
        manifest = json.loads((released / "data" / name / "manifest.json").read_text())
        shas = {d["name"]: d["sha256"] for d in card["distribution"]}
        assert shas == {e["path"]: e["sha256"] for e in manifest["files"]}
        assert card["license"].endswith(f"{manifest['license']}.html")
        assert "rai:dataCollection" in card and "rai:dataUseCases" in card

    # the Python API loads the records straight from the bundle, offline
    ds = mlc.Dataset(jsonld=str(released / "data/tiny-corpus" / formats.CROISSANT_NAME))
    manifest = json.loads((released / "data/tiny-corpus/manifest.json").read_text())
    n_train = next(e["records"] for e in manifest["files"] if e["path"] == "train.jsonl")
    records = list(ds.records("train"))
    assert len(records) == n_train
    first = json.loads((released / "data/tiny-corpus/files/train.jsonl").read_text().splitlines()[0])
    assert records[0]["train/text"].decode() == first["text"]


# --- 5. openness record -------------------------------------------------------------------------------


def test_openness_record_follows_the_mot_schema(released: Path) -> None:
    from provenance.audit import audit
    from provenance.release.mot import MOT_COMPONENTS

    rec = yaml.safe_load((released / formats.OPENNESS_YAML).read_text())
    assert rec["framework"] == {"name": "Model Openness Framework", "version": "1.0", "date": "2024-12-15"}
    rel = rec["release"]
    for key in ("name", "version", "date", "license", "type", "architecture", "origin", "producer", "contact",
                "components"):
        assert key in rel, key
    assert rel["architecture"] == "transformer decoder" and rel["type"] == "language"
    assert rel["license"]["distribution"]["name"] == "Apache-2.0" and rel["license"]["data"]["name"] == "CC0-1.0"
    names = {n for n, _ in MOT_COMPONENTS.values()}
    report = audit(released)
    found = {MOT_COMPONENTS[c.id][0]: c for c in report.openness.components if c.found}
    assert {c["name"] for c in rel["components"]} == set(found)
    for c in rel["components"]:
        assert c["name"] in names and c["description"]
        for part in c["component_path"].split(", "):
            assert (released / part).exists(), part
        if found[c["name"]].license:
            assert c["license"] == found[c["name"]].license
    assert "Model card" in found and "Data card" in found


# --- 6. report ----------------------------------------------------------------------------------------


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_is_self_contained(released: Path) -> None:
    import html as htmllib
    import re

    html = (released / formats.REPORT_HTML).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.IGNORECASE)
    assert "@import" not in html and "url(" not in html
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html)
    assert csp and htmllib.unescape(csp.group(1)).startswith("default-src 'none';")
    for needle in ('id="plot-loss"', 'id="plot-lr"', 'id="plot-eval"', 'id="timeline"', 'id="checkpoint-table"',
                   'id="eval-table"', 'id="notes-table"', 'id="verdict-audit"', "lowered the learning rate"):
        assert needle in html, needle


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (CI installs it: .ci/run)")
def test_report_renders_in_headless_chromium(released: Path, tmp_path: Path) -> None:
    page = (released / formats.REPORT_HTML).resolve().as_uri()
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
            "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr", "--v=0"]
    res = subprocess.run([*base, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    dom = res.stdout
    assert 'data-rendered="true"' in dom  # the page's script ran to its end
    for plot in ("plot-loss", "plot-lr", "plot-eval", "timeline"):
        assert f'id="{plot}"' in dom, plot
    assert dom.count('class="series"') >= 3 and 'class="ckpt"' in dom and 'class="note"' in dom
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console  # no console errors (nor any console output)

    shot = tmp_path / "report.png"
    res = subprocess.run([*base, "--hide-scrollbars", "--window-size=1200,2400", f"--screenshot={shot}", page],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.stat().st_size > 20_000
    assert not [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln]


def test_report_escapes_hostile_text_from_the_bundle(bundle_copy: Path) -> None:
    """Text from the bundle (here a decision note's text and author) is escaped in report.html: no markup
    of the bundle's survives, and the page's own inline script is its only script."""
    from provenance.bundle import seal_folder

    hostile = "<script>alert(1)</script>"
    author = '"><img src=x onerror=alert(2)>'
    with open(bundle_copy / formats.NOTES, "a") as f:
        f.write(formats.dumps_line(formats.note_record(f"bad {hostile} note", "data", author, [], 3)))
    seal_folder(bundle_copy)
    release(bundle_copy)
    html = (bundle_copy / formats.REPORT_HTML).read_text()
    assert "bad &lt;script&gt;alert(1)&lt;/script&gt; note" in html  # in the notes table and the timeline's tooltip
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2
    assert hostile not in html and "<img" not in html and "onerror=alert(2)>" not in html
    assert html.count("<script") == 1 and html.count("</script>") == 1  # the page's own
    assert "&lt;img src=x onerror=alert(2)&gt;" in html


def test_report_overlays_a_reproduction(released: Path, tiny_bundle: Path) -> None:
    from provenance.release import report

    repro = report.load_reproduction(tiny_bundle)  # the same curves stand in for a reproduction
    html = report.build_report(Facts.load(released), {"date": "2026-01-01", "reproduction": repro})
    loss_svg = html.split('id="plot-loss"', 1)[1].split("</svg>", 1)[0]
    assert 'data-series="original (this run)"' in loss_svg and 'data-series="reproduction"' in loss_svg
    lr_svg = html.split('id="plot-lr"', 1)[1].split("</svg>", 1)[0]
    assert lr_svg.count('class="series"') == 2


def test_report_of_a_reproduction_bundle(released: Path) -> None:
    from provenance.release import report

    f = Facts.load(released)  # made to look like a reproduction: its steps log holds the original's losses
    f.repro_steps = [{"step": m["step"], "loss_recorded": m["loss"], "loss": m["loss"], "loss_match": True}
                     for m in f.metrics]
    f.reproduction = {"schema": "fullyopen.reproduction/v1", "original": {"run_id": "orig-run", "root_digest": "00"},
                      "steps_checked": len(f.metrics), "steps_expected": len(f.metrics), "checkpoints_checked": 2,
                      "divergences": {"order": 0, "loss": 0, "checkpoint": 0}, "first_divergence": None,
                      "bitwise": True}
    html = report.build_report(f, {"date": "2026-01-01"})
    loss_svg = html.split('id="plot-loss"', 1)[1].split("</svg>", 1)[0]
    assert 'data-series="reproduction (this run)"' in loss_svg and 'data-series="original (recorded)"' in loss_svg
    verdict = html.split('id="verdict-reproduction"', 1)[1].split("</div></div>", 1)[0]
    assert "PASS" in verdict and "bitwise identical" in verdict and "orig-run" in html


def test_nice_ticks_and_empty_chart() -> None:
    from provenance.release.charts import Chart, Series, nice_ticks, render_chart

    assert nice_ticks(0, 10, 5) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(0.0003, 0.003, 5)[0] >= 0.0003
    svg = render_chart(Chart("x", "Nothing", "step", "y", [Series("s", [(1, float("nan"))])]))
    assert "no data" in svg and svg.startswith('<svg id="x"')


def test_report_divergence_caption_names_the_steps_left_out_as_not_finite() -> None:
    """The divergence curve holds a NaN or infinite difference as null (named under `non_finite`): the chart
    cannot draw it, and its caption says how many steps were left out and which first."""
    from provenance.release.charts import divergence_chart

    row = {"step": 1, "loss_original": 2.0, "loss": 1.9, "abs_diff": 0.1, "rel_diff": 0.05, "bound": None}
    wild = {"step": 3, "loss_original": 2.0, "loss": None, "abs_diff": None, "rel_diff": None, "bound": None,
            "non_finite": {"loss": "nan", "abs_diff": "nan", "rel_diff": "nan"}}
    later = {**wild, "step": 4, "non_finite": {"loss": "inf", "abs_diff": "inf", "rel_diff": "inf"}}
    ckpt = {"step": 4, "same_digest": False, "rel_l2": None, "max_abs": None, "worst": [], "bound": None,
            "non_finite": {"rel_l2": "nan", "max_abs": "nan"}}
    _, caption = divergence_chart({"first_step": 1, "last_step": 4, "steps": [row, later, wild],
                                   "checkpoints": [ckpt]})  # type: ignore[misc]
    assert "2 steps left out of the chart as not finite (first at step 3: abs_diff nan, loss nan, rel_diff nan)" \
        in caption, caption
    assert "1 checkpoint left out of the chart as not finite (first at step 4: max_abs nan, rel_l2 nan)" in caption
    _, clean = divergence_chart({"first_step": 1, "last_step": 1, "steps": [row], "checkpoints": []})  # type: ignore[misc]
    assert "not finite" not in clean


# --- 7. the command, copies, refusals, keys ----------------------------------------------------------


def test_release_to_another_folder_leaves_the_original(bundle_copy: Path, keys: tuple[Path, Path, str],
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from provenance.cli import main

    before = {p.relative_to(bundle_copy).as_posix(): _sha(p) for p in bundle_copy.rglob("*") if p.is_file()}
    out = tmp_path / "releases"
    out.mkdir()
    assert main(["release", str(bundle_copy), "--key", str(keys[0]), "-o", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    dest = out / bundle_copy.name
    assert f"released {dest}" in printed and keys[2] in printed
    after = {p.relative_to(bundle_copy).as_posix(): _sha(p) for p in bundle_copy.rglob("*") if p.is_file()}
    assert after == before
    assert _ms_verify(dest, keys[1]).returncode == 0
    # a second release to the same place is refused rather than overwriting
    assert main(["release", str(bundle_copy), "--key", str(keys[0]), "-o", str(out), "--no-progress"]) == 2


def test_release_refuses_a_bundle_that_does_not_match_its_seal(bundle_copy: Path, keys: tuple[Path, Path, str]) -> None:
    _flip_byte(bundle_copy / "model/model.safetensors")
    with pytest.raises(ReleaseError, match=r"model/model\.safetensors"):
        release(bundle_copy, key=keys[0])
    assert not (bundle_copy / formats.RELEASE_DIR).exists() and not (bundle_copy / formats.MODEL_CARD).exists()


def test_unsigned_release_then_signed_with_an_encrypted_key(bundle_copy: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    r = release(bundle_copy)
    assert r.fingerprint is None and r.signature is None
    assert verify_signature(bundle_copy) is None
    assert not (bundle_copy / formats.SLSA_ENVELOPE).exists() and (bundle_copy / formats.SLSA_STATEMENT).exists()

    # released again, now signed with a password-protected key: same run files, a signature that verifies
    key = ec.generate_private_key(ec.SECP384R1())
    enc = tmp_path / "enc.pem"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"s3cret")))
    with pytest.raises(SigningError, match="PROV_KEY_PASSWORD"):
        release(bundle_copy, key=enc)
    monkeypatch.setenv("PROV_KEY_PASSWORD", "s3cret")
    r2 = release(bundle_copy, key=enc)
    assert r2.content_root_digest == r.content_root_digest and r2.fingerprint
    res = verify_signature(bundle_copy, rehash=True)
    assert res is not None and res["ok"] and res["fingerprint"] == r2.fingerprint, res


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    from provenance.cli import main

    assert main(["keygen", "-o", str(tmp_path / "k")]) == 0
    priv = tmp_path / "k" / "release-key.pem"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in priv.read_bytes()
    assert b"BEGIN PUBLIC KEY" in (tmp_path / "k" / "release-key.pub.pem").read_bytes()
    first = priv.read_bytes()
    assert main(["keygen", "-o", str(tmp_path / "k")]) == 2  # never overwrites a key
    assert priv.read_bytes() == first


def test_release_rejects_a_key_that_is_not_ec(bundle_copy: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    p = tmp_path / "ed.pem"
    p.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    with pytest.raises(SigningError, match="not an elliptic-curve key"):
        release(bundle_copy, key=p)
    assert not (bundle_copy / formats.RELEASE_DIR).exists()


def test_release_refuses_a_running_run(bundle_copy: Path) -> None:
    info = json.loads((bundle_copy / formats.RUN_JSON).read_text())
    info["status"] = "running"
    (bundle_copy / formats.RUN_JSON).write_text(json.dumps(info))
    with pytest.raises(ReleaseError, match="running"):
        release(bundle_copy)


@pytest.mark.skipif(os.environ.get("PROV_TEST_SIGSTORE") != "1", reason="Sigstore needs network and an identity")
def test_sigstore_keyless(bundle_copy: Path) -> None:  # pragma: no cover - never run offline
    r = release(bundle_copy, sigstore=True, identity_token=os.environ.get("SIGSTORE_ID_TOKEN"))
    assert r.sigstore and (bundle_copy / formats.SIGSTORE_SIGNATURE).is_file()


# --- 8. documents for other ecosystems: CycloneDX, SPDX 3, EU summary, evaluation statement (issue 17) ---------


def _cdx_errors(bom: dict) -> str | None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    err = JsonStrictValidator(SchemaVersion.V1_7).validate_str(json.dumps(bom))  # the ecosystem's own validator
    return None if err is None else str(err)[:2000]


def _spdx_objects(doc: dict):
    import io

    from spdx_python_model import v3_0_1 as spdx

    objects = spdx.SHACLObjectSet()
    spdx.JSONLDDeserializer().read(io.StringIO(json.dumps(doc)), objects)  # offline: rejects unknown properties,
    assert not objects.missing_ids, objects.missing_ids                    # wrong types, bad enum values
    spdx.JSONLDSerializer().write(objects, io.BytesIO())  # required properties (min counts) are checked here
    return spdx, objects


def test_cyclonedx_ml_bom_validates_and_matches_the_bundle(released: Path) -> None:
    bom = json.loads((released / formats.CYCLONEDX_BOM).read_text())
    assert _cdx_errors(bom) is None
    assert bom["specVersion"] == "1.7" and bom["bomFormat"] == "CycloneDX"
    comps = {c["bom-ref"]: c for c in bom["components"]}
    model = next(c for c in bom["components"] if c["type"] == "machine-learning-model")
    seal = formats.parse_oms_statement(json.loads((released / formats.MANIFEST).read_text()))[1]
    files = {c["name"]: c["hashes"][0]["content"] for c in model["components"]}
    weights = "model/model.safetensors"
    assert files[weights] == seal[weights] == _sha(released / weights)
    card = model["modelCard"]
    assert card["modelParameters"]["modelArchitecture"] == "GPT2LMHeadModel"
    final = [json.loads(x) for x in (released / formats.EVALS).read_text().splitlines()][-1]
    metrics = {m["type"]: m["value"] for m in card["quantitativeAnalysis"]["performanceMetrics"]}
    assert float(metrics["val_loss"]) == final["val_loss"]
    assert model["licenses"] == [{"license": {"id": "Apache-2.0"}}]
    index = json.loads((released / formats.CHECKPOINT_INDEX).read_text())["checkpoints"]
    ancestors = {a["version"]: a["hashes"][0]["content"] for a in model["pedigree"]["ancestors"]}
    assert ancestors == {f"step-{e['step']}": e["sha256"] for e in index}
    for name in ("tiny-corpus", "tokenizer"):
        manifest = json.loads((released / "data" / name / "manifest.json").read_text())
        ds = comps[f"data:{name}"]
        assert ds["type"] == "data" and ds["licenses"] == [{"license": {"id": manifest["license"]}}]
        assert {c["name"]: c["hashes"][0]["content"] for c in ds["components"]} == \
            {e["path"]: e["sha256"] for e in manifest["files"]}
        assert {"ref": f"data:{name}"} in card["modelParameters"]["datasets"]
    env = json.loads((released / formats.ENV_JSON).read_text())
    torch_lib = comps[f"pkg:pypi/torch@{env['packages']['torch']}"]
    assert torch_lib["type"] == "library" and torch_lib["version"] == env["packages"]["torch"]
    assert set(bom["dependencies"][0]["dependsOn"]) >= {"data:tiny-corpus", torch_lib["bom-ref"]}
    bad = json.loads(json.dumps(bom))
    bad["components"][0]["modelCard"]["modelParameters"]["approach"]["type"] = "guesswork"
    assert _cdx_errors(bad) is not None  # the validator does reject a wrong document


def test_spdx3_document_deserializes_with_ai_and_dataset_profiles(released: Path) -> None:
    doc = json.loads((released / formats.SPDX_DOCUMENT).read_text())
    spdx, objects = _spdx_objects(doc)
    models = [o for o in objects.objects if isinstance(o, spdx.ai_AIPackage)]
    assert len(models) == 1 and models[0].software_packageVersion == json.loads(
        (released / formats.RUN_JSON).read_text())["run_id"]
    rels = [o for o in objects.objects if isinstance(o, spdx.Relationship)]

    def targets(kind: str) -> dict[str, str]:
        out = {}
        for r in rels:
            if r.relationshipType.endswith("/" + kind) and r.from_ is models[0]:
                for t in r.to:
                    out[t.name] = t.verifiedUsing[0].hashValue
        return out

    manifest = json.loads((released / "data/tiny-corpus/manifest.json").read_text())
    shas = {f"tiny-corpus/{e['path']}": e["sha256"] for e in manifest["files"]}
    assert targets("trainedOn") == {"tiny-corpus/train.jsonl": shas["tiny-corpus/train.jsonl"]}
    assert targets("testedOn") == {k: v for k, v in shas.items() if "train" not in k}
    assert all(isinstance(t, spdx.dataset_DatasetPackage) for r in rels if r.relationshipType.endswith("trainedOn")
               for t in r.to)
    bad = json.loads(json.dumps(doc))
    next(n for n in bad["@graph"] if n["type"] == "ai_AIPackage")["ai_autonomyType"] = "sometimes"
    with pytest.raises(ValueError):
        _spdx_objects(bad)


def test_eu_training_content_summary_follows_the_template(released: Path) -> None:
    from provenance.release.eu_summary import TO_COMPLETE

    s = json.loads((released / formats.EU_SUMMARY_JSON).read_text())
    gi, src, proc = s["1_general_information"], s["2_list_of_data_sources"], s["3_data_processing_aspects"]
    assert set(gi) == {"1.1_provider_identification", "1.2_model_identification",
                       "1.3_modalities_size_characteristics"}
    assert gi["1.1_provider_identification"]["provider_name_and_contact"] == "fullyopen tests"
    assert gi["1.1_provider_identification"]["authorised_representative"] == TO_COMPLETE
    assert gi["1.2_model_identification"]["date_placed_on_the_union_market"] == TO_COMPLETE
    metrics = [json.loads(x) for x in (released / formats.METRICS).read_text().splitlines()]
    measured = gi["1.3_modalities_size_characteristics"]["measured"]
    assert measured["tokens_seen_in_training"] == metrics[-1]["tokens_seen"]
    assert src["2.5_synthetic_data"]["used"] == "yes"
    assert [d["name"] for d in src["2.5_synthetic_data"]["datasets"]] == ["tiny-corpus"]
    for key in ("2.1_publicly_available_datasets", "2.3_data_crawled_and_scraped_from_online_sources", "2.4_user_data"):
        assert src[key]["used"] == "no", key  # every dataset is accounted for in the manifests
    assert set(proc) == {"3.1_respect_of_reservation_of_rights_tdm", "3.2_removal_of_illegal_content",
                         "3.3_other_information"}
    md = (released / formats.EU_SUMMARY_MD).read_text()
    for heading in ("## 1. General information", "## 2. List of data sources", "## 3. Data processing aspects",
                    "### 2.5 Synthetic data", "### 2.2 Private non-publicly available datasets"):
        assert heading in md, heading
    assert TO_COMPLETE in md


def test_evaluation_results_statement_is_signed(released: Path, keys: tuple[Path, Path, str]) -> None:
    st = json.loads((released / formats.EVAL_STATEMENT).read_text())
    assert st["_type"] == formats.INTOTO_STATEMENT and st["predicateType"] == formats.EVAL_PREDICATE
    evals_ = [json.loads(x) for x in (released / formats.EVALS).read_text().splitlines()]
    assert [r["step"] for r in st["predicate"]["results"]] == [e["step"] for e in evals_]
    assert st["predicate"]["final"]["metrics"]["val_loss"] == evals_[-1]["val_loss"]
    assert st["predicate"]["assuranceLevel"] == "self_attested"
    seal = formats.parse_oms_statement(json.loads((released / formats.MANIFEST).read_text()))[1]
    assert all(seal[s["name"]] == s["digest"]["sha256"] for s in st["subject"])
    assert st["predicate"]["harness"]["digest"]["sha256"] == seal[formats.CODE_SNAPSHOT]
    env = json.loads((released / formats.EVAL_ENVELOPE).read_text().strip())
    _, payload = dsse_verify(env, load_public_key(keys[1]))
    assert json.loads(payload) == st
    assert verify_signature(released)["eval"]["ok"]


def test_documents_say_what_the_bundle_does_not_know(bundle_copy: Path) -> None:
    """Unknown and non-SPDX licenses, a dataset without a source: said so; the validators still pass."""
    from provenance.bundle import seal_folder
    from provenance.release.eu_summary import TO_COMPLETE
    from provenance.release.export import export

    for name, lic in (("tiny-corpus", "Our Own Data Terms v2"), ("tokenizer", None)):
        p = bundle_copy / "data" / name / "manifest.json"
        m = json.loads(p.read_text())
        m["license"] = lic
        if name == "tiny-corpus":
            m.pop("source")
        p.write_text(json.dumps(m))
    seal_folder(bundle_copy)

    bom = json.loads(export(bundle_copy, "cyclonedx"))
    assert _cdx_errors(bom) is None
    comps = {c["bom-ref"]: c for c in bom["components"]}
    props = {p["name"]: p["value"] for p in comps["data:tiny-corpus"]["properties"]}
    assert comps["data:tiny-corpus"]["licenses"] == [{"license": {"name": "Our Own Data Terms v2"}}]
    assert "not an SPDX license identifier" in props["fullyopen:license-note"]
    assert "not recorded" in props["fullyopen:source"] and "generated" not in comps["data:tiny-corpus"]["description"]
    assert "licenses" not in comps["data:tokenizer"]
    assert "unknown" in {p["name"]: p["value"] for p in comps["data:tokenizer"]["properties"]}[
        "fullyopen:license-note"]

    doc = json.loads(export(bundle_copy, "spdx"))
    _spdx_objects(doc)
    graph = doc["@graph"]
    refs = [n for n in graph if n["type"] == "simplelicensing_LicenseExpression"]
    assert any(n["simplelicensing_licenseExpression"] == "LicenseRef-Our-Own-Data-Terms-v2"
               and "not an SPDX license identifier" in n["comment"] for n in refs)
    tok = next(n for n in graph if n.get("name") == "tokenizer/tokenizer.json")
    assert "License: not stated in the bundle (unknown)" in tok["comment"]
    corpus = next(n for n in graph if n.get("name") == "tiny-corpus/train.jsonl")
    assert "not recorded" in corpus["dataset_dataCollectionProcess"]

    s = json.loads(export(bundle_copy, "eu-summary-json"))
    src = s["2_list_of_data_sources"]
    assert src["2.5_synthetic_data"]["used"] == TO_COMPLETE  # the source type is unknown: no category is ruled out
    assert src["2.1_publicly_available_datasets"]["used"] == TO_COMPLETE
    uncategorised = src["2.6_other_sources"]["sources_not_categorised"]
    assert [d["name"] for d in uncategorised] == ["tiny-corpus"] and TO_COMPLETE in uncategorised[0]["note"]
    assert s["3_data_processing_aspects"]["3.1_respect_of_reservation_of_rights_tdm"] == TO_COMPLETE


def test_prov_export_writes_one_document_and_changes_nothing(tiny_bundle: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from provenance.cli import main

    before = {p.relative_to(tiny_bundle).as_posix(): _sha(p) for p in tiny_bundle.rglob("*") if p.is_file()}
    out = tmp_path / "bom.json"
    assert main(["export", str(tiny_bundle), "--format", "cyclonedx", "-o", str(out)]) == 0
    assert _cdx_errors(json.loads(out.read_text())) is None
    assert main(["export", str(tiny_bundle), "--format", "croissant", "--dataset", "tokenizer",
                 "-o", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["name"] == "tokenizer"
    capsys.readouterr()
    assert main(["export", str(tiny_bundle), "--format", "mot"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["framework"]["name"] == "Model Openness Framework"
    assert main(["export", str(tiny_bundle), "--format", "croissant", "--dataset", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--format", "spdx"]) == 2
    after = {p.relative_to(tiny_bundle).as_posix(): _sha(p) for p in tiny_bundle.rglob("*") if p.is_file()}
    assert after == before


def test_audit_trusts_only_the_pinned_key(released: Path, keys: tuple[Path, Path, str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from provenance.audit import audit
    from provenance.cli import main
    from provenance.release.signing import trusting

    sig = audit(released).check("signature")
    assert sig.status == "pass" and f"signed by an untrusted key {keys[2]}" in sig.summary
    with trusting(keys[1]):
        sig = audit(released).check("signature")
    assert sig.status == "pass" and f"signed by the trusted key {keys[2]}" in sig.summary
    assert main(["audit", str(released), "--trust", str(keys[1]), "--no-progress"]) == 0
    capsys.readouterr()
    # another signer's key: the signature is valid for its own key, but not the one the verifier trusts
    _, other_pub, other_fp = generate_key(tmp_path / "other")
    assert main(["audit", str(released), "--trust", str(other_pub), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"not signed by the trusted key {other_fp}" in out and keys[2] in out
    # a bundle re-signed by someone else (its own key inside) fails under the original signer's key
    forged = _copy(released, tmp_path / "forged")
    other_priv = tmp_path / "other" / "release-key.pem"
    release(forged, key=other_priv)
    assert main(["audit", str(forged), "--no-progress"]) == 0  # intact, signed by the key it carries
    assert main(["audit", str(forged), "--trust", str(keys[1]), "--no-progress"]) == 1
    assert main(["audit", str(released), "--trust", str(tmp_path / "missing.pem"), "--no-progress"]) == 2


# --- 9. the default config's release is MOF class I and fully open (issue 10, item 5) -------------------------


def test_default_config_release_is_class_one_and_fully_open(released: Path, bundle_copy: Path) -> None:
    from provenance.audit import audit

    # a run of the default config, released as it is (no note added by hand): its purpose is its decision note
    release(bundle_copy)
    plain = audit(bundle_copy).openness
    assert plain.highest_class == "I" and plain.fully_open_ok, (plain.class_missing("I"), plain.to_dict()["fully_open"])
    notes = [json.loads(x) for x in (bundle_copy / formats.NOTES).read_text().splitlines()]
    assert notes and notes[0]["step"] == 0

    report = audit(released)
    op = report.openness
    assert op.highest_class == "I", op.class_missing("I")
    assert op.fully_open_ok, [i.to_dict() for i in op.fully_open if not i.found]
    run = json.loads((released / formats.RUN_JSON).read_text())
    for key, src in (("technical_report", "docs/model/technical-report.md"), ("data_card", "docs/model/data-card.md"),
                     ("research_paper", "docs/model/paper.md")):
        rel = run["documents"][key]  # shipped in the bundle, so the audit (and a reader) can check it
        assert (released / rel).read_bytes() == (REPO / src).read_bytes()
        assert rel in op.component(key).files
    # the technical report's intended uses and limitations are the ML-BOM's considerations
    from provenance.release.facts import markdown_section_items

    report_text = (REPO / "docs/model/technical-report.md").read_text()
    bom = json.loads((released / formats.CYCLONEDX_BOM).read_text())
    cons = bom["components"][0]["modelCard"]["considerations"]
    assert cons["technicalLimitations"] == markdown_section_items(report_text, "limitation") != []
    assert cons["useCases"] == markdown_section_items(report_text, "intended use") != []


# --- 10. OMS conformance (OpenSSF model-signing specification v1.0): golden files ------------------------------


def _golden_folder(base: Path) -> Path:
    """A fixed folder: nested paths whose component order differs from plain string order, an empty file,
    a file named like a signature inside a subfolder (not ignored: only the top-level names are)."""
    root = base / "golden-model"
    files = {"config.json": b'{"a": 1}\n', "weights/part-a.bin": b"\x00" * 1024, "weights-b.bin": b"b" * 7,
             "weights/x/y.txt": b"nested\n", "empty": b"", "sub/release/model.sig": b"not the signature\n"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_seal_matches_the_oms_golden_manifest(tmp_path: Path) -> None:
    """The seal of a fixed folder is byte for byte the committed golden statement, and follows OMS v1.0:
    in-toto Statement v1, predicate https://model_signing/signature/v1.0, serialization method 'files'
    with sha256, resources sorted by path components, root digest = sha256 over the raw digests in order."""
    from provenance.bundle import seal_folder

    root = _golden_folder(tmp_path)
    seal_folder(root)
    got = (root / formats.MANIFEST).read_text()
    golden = (REPO / "tests/golden/oms-manifest.json").read_text()
    assert got == golden
    st = json.loads(got)
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://model_signing/signature/v1.0"
    ser = st["predicate"]["serialization"]
    assert ser["method"] == "files" and ser["hash_type"] == "sha256" and ser["allow_symlinks"] is False
    assert set(ser["ignore_paths"]) == set(formats.UNSEALED)
    names = [r["name"] for r in st["predicate"]["resources"]]
    assert names == ["config.json", "empty", "sub/release/model.sig", "weights/part-a.bin", "weights/x/y.txt",
                     "weights-b.bin"]  # PurePosixPath order: 'weights' < 'weights-b.bin'
    for r in st["predicate"]["resources"]:
        assert r["algorithm"] == "sha256" and r["digest"] == _sha(root / r["name"])
    raw = b"".join(bytes.fromhex(r["digest"]) for r in st["predicate"]["resources"])
    assert st["subject"] == [{"name": "golden-model", "digest": {"sha256": hashlib.sha256(raw).hexdigest()}}]
    # the reference implementation hashes the same folder (same ignored paths) into the same resources, in order
    import model_signing

    (root / formats.MANIFEST).unlink()
    manifest = model_signing.hashing.Config().set_ignored_paths(paths=sorted(formats.UNSEALED),
                                                                ignore_git_paths=True).hash(root)
    assert [(d.identifier, d.digest.digest_hex) for d in manifest.resource_descriptors()] == \
        [(r["name"], r["digest"]) for r in st["predicate"]["resources"]]


def test_signature_envelope_follows_oms(released: Path) -> None:
    """The model_signing signature: a Sigstore bundle whose DSSE envelope carries the OMS statement, whose
    resources (and root digest) are exactly the seal's."""
    sig = json.loads((released / formats.SIGNATURE).read_text())
    assert sig["mediaType"].startswith("application/vnd.dev.sigstore.bundle")
    env = sig["dsseEnvelope"]
    assert env["payloadType"] == "application/vnd.in-toto+json" and len(env["signatures"]) == 1
    payload = json.loads(base64.b64decode(env["payload"]))
    assert payload["predicateType"] == "https://model_signing/signature/v1.0"
    assert payload["predicate"]["serialization"]["method"] == "files"
    assert payload["subject"] == json.loads((released / formats.MANIFEST).read_text())["subject"]
    hint = sig["verificationMaterial"]["publicKey"]["hint"]
    assert f"sha256:{hint}" == verify_signature(released)["fingerprint"]


def test_a_noted_bundle_released_still_audits_and_records_each_reseal(bundle_copy: Path,
                                                                      keys: tuple[Path, Path, str]) -> None:
    """`prov note` on a sealed bundle starts reseals.jsonl; the release's own re-seals must continue that
    record (an unrecorded re-seal broke the chain, so every noted-then-released bundle failed its audit)."""
    from provenance.audit import audit
    from provenance.recover import add_note

    add_note(bundle_copy, "released after review", "other", "tester", [], None)
    release(bundle_copy, key=keys[0], producer="fullyopen tests")
    r = audit(bundle_copy)
    assert r.ok, r.failures()
    lines = (bundle_copy / formats.RESEALS).read_text().splitlines()
    commands = [json.loads(x)["command"] for x in lines]
    assert commands[0] == "prov note" and commands.count("prov release") == 2, commands
    assert _ms_verify(bundle_copy, keys[1]).returncode == 0


def test_release_forced_past_a_failing_audit_records_the_override(bundle_copy: Path,
                                                                   keys: tuple[Path, Path, str]) -> None:
    from provenance.audit import audit
    from provenance.bundle import seal_folder

    shutil.rmtree(bundle_copy / formats.MODEL_DIR)  # a completed run without its final model fails consistency
    seal_folder(bundle_copy)
    with pytest.raises(ReleaseError, match="--force"):
        release(bundle_copy, key=keys[0])
    assert "--force" not in (bundle_copy / formats.NOTES).read_text()  # a refusal records nothing
    release(bundle_copy, key=keys[0], force=True, producer="fullyopen tests")
    notes = [json.loads(x) for x in (bundle_copy / formats.NOTES).read_text().splitlines()]
    forced = [n for n in notes if n["category"] == "override" and "--force" in n["text"]]
    assert len(forced) == 1 and "model" in forced[0]["text"], notes
    r = audit(bundle_copy)
    assert r.integrity.ok and not r.ok  # still failing, and the note says who released it anyway
    assert _ms_verify(bundle_copy, keys[1]).returncode == 0
