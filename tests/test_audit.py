"""prov audit on a real bundle: a fresh one passes; every tampering is detected and named."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provenance import audit as audit_mod
from provenance import formats
from provenance.audit import AuditReport, audit
from provenance.bundle import seal_folder
from provenance.hashing import sha256_file

REPO = Path(__file__).resolve().parents[1]


def files_of(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def sealed_names(root: Path) -> list[str]:
    return [n for n in files_of(root) if n != formats.MANIFEST]


def edit_json(path: Path, fn: Any) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(formats.dumps(obj))


def check_named(report: AuditReport, name: str) -> None:
    """The file is named in the failures, in the JSON report and in the terminal report."""
    assert not report.ok and report.exit_status == 1
    assert any(name in line for line in report.failures()), report.failures()
    assert name in report.to_text()
    assert name in report.to_json()


# --- a fresh bundle ------------------------------------------------------------------------


def test_fresh_bundle_passes_and_reports_its_class(tiny_bundle: Path) -> None:
    report = audit(tiny_bundle)
    assert report.ok, report.failures()
    assert report.exit_status == 0
    i = report.integrity
    assert i.ok and i.sealed and not (i.missing or i.extra or i.changed)
    assert i.files == len(sealed_names(tiny_bundle))
    assert i.root_manifest == i.root_recomputed == i.root_actual
    assert i.bytes == sum((tiny_bundle / n).stat().st_size for n in sealed_names(tiny_bundle))
    statuses = {c.name: c.status for c in report.checks}
    for name in ("run", "config", "code", "data", "order", "metrics", "checkpoints", "model", "notes"):
        assert statuses[name] == "pass", (name, report.check(name).findings)
    # the parameter count is read from safetensors and compared with the GPT-2 formula
    model_cfg = json.loads((tiny_bundle / "model" / "config.json").read_text())
    e, v, p, n = model_cfg["n_embd"], model_cfg["vocab_size"], model_cfg["n_positions"], model_cfg["n_layer"]
    expected = v * e + p * e + n * (12 * e * e + 13 * e) + 2 * e  # tied lm_head is not stored
    assert f"{expected:,} parameters" in report.check("model").summary
    # openness: the default config ships its technical report (run.documents), but a run alone cannot
    # write its model card (`prov release` does): no class yet
    o = report.openness
    assert o.highest_class is None
    assert set(o.class_missing("III")) == {"model_card"}
    found = {c.id for c in o.components if c.found}
    assert {"model_architecture", "final_parameters", "evaluation_results", "data_card", "training_code",
            "evaluation_code", "evaluation_data", "datasets", "data_preprocessing_code",
            "intermediate_parameters"} <= found
    weights = o.component("final_parameters")
    assert weights.files == ["model/model.safetensors"] and weights.license == "Apache-2.0" and weights.met
    assert o.component("datasets").license == "CC0-1.0"
    assert {it.id: it.found for it in o.fully_open} == {"weights": True, "data": True, "training_code": True,
                                                        "logs": True, "decision_notes": True}
    assert (tiny_bundle / formats.NOTES).is_file()  # a run records its decisions by default (run.purpose, ...)
    doc = json.loads(report.to_json())
    assert doc["schema"] == "fullyopen.audit/v1" and doc["ok"] is True and doc["exit_status"] == 0
    assert doc["openness"]["highest_class"] is None
    assert report.to_json() == json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    text = report.to_text()
    assert "VERDICT      PASS" in text and "highest class met: none" in text
    missing = ", ".join(report.openness.class_missing("III"))  # what keeps it below the first class, named
    assert missing and f"MOF class none (class III lacks {missing})" in text.splitlines()[-1]


def test_progress_sees_every_byte(tiny_bundle: Path) -> None:
    calls: list[tuple[str, int]] = []
    done = [0]

    class P:
        def start(self, label: str, total: int) -> None:
            calls.append((label, total))

        def advance(self, n: int) -> None:
            done[0] += n

        def finish(self) -> None:
            calls.append(("finish", 0))

    report = audit(tiny_bundle, progress=P())
    assert calls[0] == ("hashing", report.integrity.bytes) and calls[-1] == ("finish", 0)
    assert done[0] == report.integrity.bytes


# --- the tamper suite: every file, every way ---------------------------------------------------


@pytest.fixture(scope="module")
def work(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One copy, changed and restored case by case (much faster than a copy per case)."""
    dest = tmp_path_factory.mktemp("tamper") / tiny_bundle.name
    shutil.copytree(tiny_bundle, dest)
    yield dest
    assert audit(dest).ok, "the tamper suite did not restore the bundle"


def _digests(root: Path) -> dict[str, str]:
    _, res = formats.parse_oms_statement(json.loads((root / formats.MANIFEST).read_text()))
    return res


def test_flipped_byte_in_every_file_is_detected(work: Path) -> None:
    sealed = _digests(work)
    for name in sealed_names(work):
        path = work / name
        orig = path.read_bytes()
        data = bytearray(orig) or bytearray(b"\0")  # an empty file cannot flip: it grows by a byte
        if orig:
            data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        try:
            r = audit(work)
            changed = {d.name: d for d in r.integrity.changed}
            assert name in changed, (name, r.failures())
            assert changed[name].expected == sealed[name] and changed[name].actual == sha256_file(path)
            check_named(r, name)
        finally:
            path.write_bytes(orig)


def test_truncation_of_every_file_is_detected(work: Path) -> None:
    for name in sealed_names(work):
        path = work / name
        orig = path.read_bytes()
        if not orig:
            continue  # nothing to cut from an empty file (code/diff.patch of a clean tree)
        path.write_bytes(orig[: len(orig) - 1])
        try:
            r = audit(work)
            assert name in {d.name for d in r.integrity.changed}, name
            check_named(r, name)
        finally:
            path.write_bytes(orig)


def test_deleting_every_file_is_detected(work: Path) -> None:
    sealed = _digests(work)
    for name in sealed_names(work):
        path = work / name
        orig = path.read_bytes()
        path.unlink()
        try:
            r = audit(work)
            missing = {d.name: d for d in r.integrity.missing}
            assert name in missing and missing[name].expected == sealed[name], name
            check_named(r, name)
        finally:
            path.write_bytes(orig)


def test_renaming_every_file_is_detected(work: Path) -> None:
    for name in sealed_names(work):
        path = work / name
        moved = path.with_name(path.name + ".renamed")
        path.rename(moved)
        try:
            r = audit(work)
            assert name in {d.name for d in r.integrity.missing}, name
            assert f"{name}.renamed" in {d.name for d in r.integrity.extra}, name
            check_named(r, name)
            check_named(r, f"{name}.renamed")
        finally:
            moved.rename(path)


def test_added_files_are_detected(work: Path) -> None:
    for name in ("added.txt", "model/added.safetensors", "new-folder/deeper/file.json", "logs/.hidden"):
        path = work / name
        created_dirs = [p for p in reversed(path.relative_to(work).parents) if not (work / p).exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not sealed")
        try:
            r = audit(work)
            assert name in {d.name for d in r.integrity.extra}, name
            check_named(r, name)
            assert "not covered by the manifest" in "\n".join(r.failures())
        finally:
            path.unlink()
            for d in reversed(created_dirs):
                (work / d).rmdir()


def test_editing_every_digest_in_the_manifest_is_detected(work: Path) -> None:
    mpath = work / formats.MANIFEST
    orig = mpath.read_bytes()
    forged = "0" * 64
    for name in sealed_names(work):

        def forge(obj: dict[str, Any], name: str = name) -> None:
            for res in obj["predicate"]["resources"]:
                if res["name"] == name:
                    res["digest"] = forged

        edit_json(mpath, forge)
        try:
            r = audit(work)
            changed = {d.name: d for d in r.integrity.changed}
            assert name in changed and changed[name].expected == forged, name
            assert any(f.file == formats.MANIFEST and "root digest" in f.message for f in r.integrity.findings)
            check_named(r, name)
        finally:
            mpath.write_bytes(orig)


def test_editing_the_root_digest_is_detected(work: Path) -> None:
    mpath = work / formats.MANIFEST
    orig = mpath.read_bytes()
    edit_json(mpath, lambda o: o["subject"][0]["digest"].update(sha256="ab" * 32))
    try:
        r = audit(work)
        assert r.integrity.root_manifest == "ab" * 32 != r.integrity.root_recomputed
        assert not (r.integrity.changed or r.integrity.missing or r.integrity.extra)
        check_named(r, formats.MANIFEST)
        assert "DOES NOT MATCH" in r.to_text()
    finally:
        mpath.write_bytes(orig)


def test_missing_manifest_means_unsealed(work: Path) -> None:
    mpath = work / formats.MANIFEST
    orig = mpath.read_bytes()
    mpath.unlink()
    try:
        r = audit(work)
        assert not r.integrity.sealed and not r.ok
        check_named(r, formats.MANIFEST)
    finally:
        mpath.write_bytes(orig)


# --- consistency: claims that disagree, in a bundle resealed so that integrity holds ---------------


def reseal_and_audit(root: Path, **kw: Any) -> AuditReport:
    seal_folder(root)
    r = audit(root, **kw)
    assert r.integrity.ok, r.failures()
    return r


def failing(r: AuditReport) -> dict[str, list[str]]:
    return {c.name: [f"{f.file}: {f.message}" for f in c.errors] for c in r.checks if c.status == "fail"}


def _rewrite_order(root: Path, change: Any, fix_chain: bool) -> None:
    _, ids_rel, steps_rel = formats.order_paths(0)
    steps = list(formats.read_order(root / ids_rel, root / steps_rel))
    ids_out, steps_out, prev = b"", b"", formats.ORDER_CHAIN_SEED
    for st in steps:
        ids = list(change(st.step, list(st.sample_ids)))
        raw = formats.encode_ids(ids)
        chain = formats.chain_next(prev, st.step, raw) if fix_chain else st.chain
        ids_out += raw
        steps_out += formats.ORDER_STEP_RECORD.pack(st.step, len(ids), chain)
        prev = chain
    (root / ids_rel).write_bytes(ids_out)
    (root / steps_rel).write_bytes(steps_out)


def test_order_with_an_undefined_sample_id_fails(bundle_copy: Path) -> None:
    _rewrite_order(bundle_copy, lambda step, ids: [10**6, *ids[1:]] if step == 5 else ids, fix_chain=True)
    f = failing(reseal_and_audit(bundle_copy))
    assert list(f) == ["order"], f
    assert "step 5 refers to sample id 1000000" in f["order"][0] and "order/rank0.ids.u64" in f["order"][0]


def test_order_with_a_broken_chain_fails(bundle_copy: Path) -> None:
    _rewrite_order(bundle_copy, lambda step, ids: ids[::-1] if step == 7 else ids, fix_chain=False)
    f = failing(reseal_and_audit(bundle_copy))
    assert list(f) == ["order"] and "the digest chain breaks at step 7" in f["order"][0], f


def test_checkpoint_index_disagreements_fail(bundle_copy: Path) -> None:
    def forge(idx: dict[str, Any]) -> None:
        idx["checkpoints"][0]["sha256"] = "0" * 64
        idx["checkpoints"][1]["step"] = 99

    edit_json(bundle_copy / formats.CHECKPOINT_INDEX, forge)
    errs = failing(reseal_and_audit(bundle_copy))["checkpoints"]
    first = formats.checkpoint_name(6)
    assert any(first in e and "does not match its index" in e for e in errs), errs
    assert any("step 99 does not appear in logs/metrics.jsonl" in e for e in errs), errs
    assert any("metadata says step 12, the index says 99" in e for e in errs), errs


def test_unindexed_checkpoint_fails(bundle_copy: Path) -> None:
    shutil.copy(bundle_copy / formats.checkpoint_name(6), bundle_copy / formats.checkpoint_name(3))
    errs = failing(reseal_and_audit(bundle_copy))["checkpoints"]
    assert any(formats.checkpoint_name(3) in e and "not in the checkpoint index" in e for e in errs), errs


def test_metric_steps_must_be_contiguous(bundle_copy: Path) -> None:
    path = bundle_copy / formats.METRICS
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:4] + lines[5:]))  # drop step 5
    f = failing(reseal_and_audit(bundle_copy))
    assert any("step 6 skips ahead from step 4" in e for e in f["metrics"]), f
    assert any("logs 11 steps" in e or "no recorded batch" in e for e in f.get("order", [])) or "order" not in f


def test_code_snapshot_must_match_its_digests(bundle_copy: Path) -> None:
    edit_json(bundle_copy / formats.CODE_JSON, lambda c: c["files"].update({"training/train.py": "sha256:" + "1" * 64}))
    f = failing(reseal_and_audit(bundle_copy))
    assert list(f) == ["code"] and "training/train.py in the snapshot does not match code.json" in f["code"][0], f


def test_config_must_match_its_digest(bundle_copy: Path) -> None:
    edit_json(bundle_copy / formats.CONFIG_JSON, lambda c: c["config"]["train"].update(lr=0.1))
    f = failing(reseal_and_audit(bundle_copy))
    assert list(f) == ["config"] and "config.json: the config does not match its digest" in f["config"][0], f


def _config_check(tmp_path: Path, text: str) -> Any:
    from provenance import reader
    from provenance.audit.checks_run import check_config
    from provenance.audit.results import CheckResult

    (tmp_path / formats.CONFIG_JSON).write_text(text)
    out = CheckResult("config", "config digest")
    check_config(reader.Bundle(tmp_path), out)
    return out


def _sha(canon: str) -> str:
    import hashlib
    return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


def test_config_check_accepts_an_old_bundles_bare_infinity_and_its_digest(tmp_path: Path) -> None:
    """A bundle written before non-finite numbers were named: config.json holds a bare Infinity/NaN and its digest
    is over that bare text (Python's json.dumps). The check accepts that digest (and says so); the same config
    with another value, or a digest over yet another text, fails."""
    bare = '{"best_val":Infinity,"lr":0.1,"nan":NaN}'
    doc = f'{{"config": {bare}, "digest": "{_sha(bare)}"}}'
    out = _config_check(tmp_path, doc)
    assert not out.errors, [f.message for f in out.errors]
    assert "over bare NaN/Infinity" in out.summary
    # the digest of today's form of the same config is accepted too (a re-written config.json)
    strict = '{"best_val":"Infinity","lr":0.1,"nan":"NaN"}'
    assert not _config_check(tmp_path, f'{{"config": {bare}, "digest": "{_sha(strict)}"}}').errors
    out = _config_check(tmp_path, doc.replace('"lr":0.1', '"lr":0.2', 1))  # the config, not its digest
    assert [f.message for f in out.errors] == ["the config does not match its digest"]


def test_config_check_of_todays_form_and_its_non_finite_list(tmp_path: Path) -> None:
    strict = '{"clip":"Infinity","name":"NaN"}'
    ok = f'{{"config": {strict}, "digest": "{_sha(strict)}", "non_finite": [["clip"]]}}'
    out = _config_check(tmp_path, ok)
    assert not out.errors and "bare" not in out.summary, out.summary
    assert formats.config_digest({"clip": float("inf"), "name": "NaN"}) == _sha(strict)  # the run's digest
    assert formats.config_digest({"lr": 0.1, "a": [1, "x"]}) == _sha(json.dumps({"a": [1, "x"], "lr": 0.1},
                                                                          sort_keys=True, separators=(",", ":")))
    other = '{"clip":"Infinity","name":"x"}'  # non_finite naming a place that is not a name, or no place
    out = _config_check(tmp_path, f'{{"config": {other}, "digest": "{_sha(other)}", "non_finite": [["name"], ["lr"]]}}')
    assert sorted(f.message for f in out.errors) == [
        "non_finite: ['lr'] is not a place in the config", "non_finite: ['name'] holds 'x', not one of NaN, "
        "Infinity, -Infinity"], [f.message for f in out.errors]


def test_model_parameter_count_must_match_its_config(bundle_copy: Path) -> None:
    edit_json(bundle_copy / "model" / "config.json", lambda c: c.update(n_layer=c["n_layer"] + 1))
    errs = failing(reseal_and_audit(bundle_copy))["model"]
    assert any("model/model.safetensors" in e and "parameters; the config (gpt2) implies" in e for e in errs), errs
    assert any("config.json model.n_layer is 2 but model/config.json n_layer is 3" in e for e in errs), errs


def test_model_that_is_not_safetensors_fails(bundle_copy: Path) -> None:
    (bundle_copy / "model" / "model.safetensors").write_bytes(b"\xff" * 64)
    errs = failing(reseal_and_audit(bundle_copy))["model"]
    assert any("model/model.safetensors: cannot be read as safetensors" in e for e in errs), errs


def test_notes_must_be_well_formed_and_status_stated(bundle_copy: Path) -> None:
    good = {"schema": formats.NOTE_SCHEMA, "time": "t", "step": 3, "author": "a", "category": "data",
            "text": "swapped shard 3", "links": []}
    bad = {**good, "category": "gossip", "text": ""}
    (bundle_copy / formats.NOTES).write_text(formats.dumps_line(good) + formats.dumps_line(bad) + "{oops\n")
    edit_json(bundle_copy / formats.RUN_JSON, lambda r: r.pop("status"))
    f = failing(reseal_and_audit(bundle_copy))
    assert set(f) == {"notes", "run"}, f
    assert any("line 2:" in e and "key 'category'" in e and "'gossip'" in e for e in f["notes"]), f
    assert any("line 3: malformed JSON" in e for e in f["notes"]), f
    assert f["run"] == ["run.json: does not state the run's status"]


def test_data_manifest_must_match_bundled_files(bundle_copy: Path) -> None:
    rel = "data/tiny-corpus/manifest.json"
    edit_json(bundle_copy / rel, lambda m: m["files"][0].update(sha256="2" * 64))
    errs = failing(reseal_and_audit(bundle_copy))["data"]
    assert any("data/tiny-corpus/files/arithmetic_eval.jsonl does not match its data manifest" in e for e in errs)


def test_sealed_unknown_files_and_reproduction_pass(bundle_copy: Path) -> None:
    (bundle_copy / "extras" / "deep").mkdir(parents=True)
    (bundle_copy / "extras" / "deep" / "plot.png").write_bytes(b"\x89PNG not really")
    r = reseal_and_audit(bundle_copy)
    assert r.ok, r.failures()
    # a reproduction's bundle: its own folder and run.json "reproduces"; judging them is the
    # reproduction module's check (registered when it is imported), none of the built-in ones fails
    (bundle_copy / "reproduction").mkdir()
    (bundle_copy / "reproduction" / "steps.jsonl").write_text('{"step": 1}\n')
    edit_json(bundle_copy / formats.RUN_JSON, lambda r: r.update(reproduces={"run_id": "orig", "root_digest": "x"}))
    r = reseal_and_audit(bundle_copy)
    assert set(failing(r)) <= {"reproduction"}, failing(r)
    assert r.run["reproduces"] == {"run_id": "orig", "root_digest": "x"}
    assert "reproduces orig" in r.check("run").summary


def test_an_extension_check_is_passed_explicitly(bundle_copy: Path) -> None:
    def extension(view: audit_mod.BundleView, out: audit_mod.CheckResult) -> None:
        if not view.has("extension/summary.json"):
            raise audit_mod.SkipCheck("nothing to check")
        if view.json("extension/summary.json").get("ok") is not True:
            out.error("the extension's claim does not hold", file="extension/summary.json")
        out.summary = "holds"

    checks = [*audit_mod.default_checks(), audit_mod.Check("test-extension", "an extension's check", extension)]
    assert audit(bundle_copy, checks=checks).check("test-extension").status == "skip"
    assert "test-extension" not in {c.name for c in audit(bundle_copy).checks}  # nothing global changed
    (bundle_copy / "extension").mkdir()
    (bundle_copy / "extension" / "summary.json").write_text('{"ok": false}\n')
    seal_folder(bundle_copy)
    r = audit(bundle_copy, checks=checks)
    assert failing(r) == {"test-extension": ["extension/summary.json: the extension's claim does not hold"]}
    check_named(r, "extension/summary.json")
    only = audit(bundle_copy, checks=audit_mod.builtin_checks())
    assert [c.name for c in only.checks] == [c.name for c in audit_mod.builtin_checks()]


def test_the_check_list_is_the_declared_one_whatever_was_imported() -> None:
    """Built-ins, then pyproject's entry points, in order; the CLI runs exactly these (no import side effects)."""
    import tomllib

    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    eps = declared["project"]["entry-points"][audit_mod.ENTRY_POINT_GROUP]
    names = [c.name for c in audit_mod.default_checks()]
    builtins = [c.name for c in audit_mod.builtin_checks()]
    assert names == builtins + [n for n in eps if n not in builtins]
    assert {"reproduction", "command", "signature", "reseals"} <= set(names)
    code = ("import json, provenance.cli, provenance.cli.run, provenance.cli.reproduce, provenance.release; "
            "from provenance.audit import default_checks; print(json.dumps([c.name for c in default_checks()]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == names


# --- openness --------------------------------------------------------------------------------------


def _document(root: Path, docs: dict[str, str], license: str = "Apache-2.0") -> None:
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "report.md").write_text("# Technical report\n")
    (root / "docs" / "model-card.md").write_text("# Model card\n")
    edit_json(root / formats.RUN_JSON, lambda r: r.update(documents=docs, license=license))


FULL_DOCS = {"technical_report": "docs/report.md", "model_card": "docs/model-card.md",
             "research-paper": "https://arxiv.org/abs/0000.00000",
             "inference_code": "https://example.org/fullyopen/generate.py"}


def test_documents_lift_the_bundle_to_class_one(bundle_copy: Path) -> None:
    _document(bundle_copy, FULL_DOCS)
    r = reseal_and_audit(bundle_copy, require_class="I")
    assert r.ok and r.openness.highest_class == "I" and r.openness.requirement_met is True
    rp = r.openness.component("research_paper")
    assert rp.found and rp.links == ["https://arxiv.org/abs/0000.00000"] and rp.license == "Apache-2.0"
    assert r.openness.component("technical_report").files == ["docs/report.md"]
    assert json.loads(r.to_json())["openness"]["classes"]["I"] == {"met": True, "missing": [], "name": "Open Science"}


def test_documents_outside_the_bundle_are_not_read(bundle_copy: Path, tmp_path: Path) -> None:
    secret = tmp_path / "paper.md"
    secret.write_text("outside")
    docs = {**FULL_DOCS, "sample_outputs": "../samples.txt"}
    docs["research-paper"] = str(secret)
    _document(bundle_copy, docs)
    r = reseal_and_audit(bundle_copy, require_class="II")
    assert r.ok and r.openness.highest_class == "II"
    entries = {d["key"]: d for d in r.openness.documents}
    for key in ("research-paper", "sample_outputs"):
        assert entries[key]["present"] is False and "outside the bundle" in entries[key]["note"]
    assert not r.openness.component("research_paper").found


def test_require_class_fails_on_gaps_and_closed_licenses(bundle_copy: Path) -> None:
    _document(bundle_copy, FULL_DOCS, license="LicenseRef-Proprietary")
    r = reseal_and_audit(bundle_copy, require_class="III")
    assert r.integrity.ok and r.consistency_ok and not r.ok and r.exit_status == 1
    weights = r.openness.component("final_parameters")
    assert weights.found and weights.license_open is False and not weights.met
    assert r.openness.highest_class is None
    assert "openness: MOF class III required, no class met" in r.failures()


# --- the real command line ------------------------------------------------------------------------


def prov(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provenance.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONHASHSEED": "0"})


def test_cli_exit_statuses(bundle_copy: Path) -> None:
    ok = prov("audit", str(bundle_copy), "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["schema"] == "fullyopen.audit/v1" and doc["verdict"] == "pass"
    assert doc["integrity"]["root_digest"]["actual"] == doc["integrity"]["root_digest"]["manifest"]

    target = bundle_copy / "logs" / "metrics.jsonl"
    target.write_bytes(target.read_bytes().replace(b'"step":3', b'"step":4', 1))
    bad = prov("audit", str(bundle_copy), "--require-class", "III")
    assert bad.returncode == 1
    assert "changed  logs/metrics.jsonl" in bad.stdout and "VERDICT      FAIL" in bad.stdout


def test_progress_bar_draws_only_for_large_inputs() -> None:
    import io

    from provenance.cli.audit import ProgressBar, parse_size

    out = io.StringIO()
    bar = ProgressBar(out, min_total=100, force=True)
    bar.start("hashing", 50)  # small: no bar
    bar.advance(50)
    bar.finish()
    assert out.getvalue() == ""
    bar.start("hashing", 1000)
    bar._last = -1.0  # draw at the next advance
    bar.advance(500)
    bar.finish()
    text = out.getvalue()
    assert text.startswith("\rhashing") and "50.0%" in text and text.endswith("\n")
    assert ProgressBar(io.StringIO()).enabled is False  # not a terminal: never drawn
    assert parse_size("500G") == 500 << 30 and parse_size("64MiB") == 64 << 20 and parse_size("1024") == 1024


def test_openness_rules() -> None:
    from provenance.openness import _dataset_available, license_is_open, resolve_document

    assert license_is_open("Apache-2.0", "code") and license_is_open("MIT OR LicenseRef-x", "code")
    assert license_is_open("CC-BY-4.0", "data") and not license_is_open("CC-BY-4.0", "code")
    assert license_is_open("Apache-2.0 AND LicenseRef-x") is False and license_is_open(None) is None
    assert license_is_open("(GPL-2.0-only WITH Classpath-exception-2.0)", "code")
    files = {"docs/paper.pdf", "docs/cards/model.md"}
    assert resolve_document("docs/paper.pdf", files)[:2] == ("file", "docs/paper.pdf")
    assert resolve_document("docs/cards", files)[:2] == ("file", "docs/cards/")
    assert resolve_document("https://arxiv.org/abs/1", files)[0] == "link"
    for bad in ("/etc/passwd", "../x.md", "file:///etc/passwd", "javascript:alert(1)", "docs/absent.md", ""):
        assert resolve_document(bad, files)[0] is None, bad
    hub = {"files": [{"path": "a.parquet"}], "source": {"type": "hub", "repo_id": "org/ds", "revision": "abc"}}
    assert _dataset_available("d", hub, set())[:3] == (True, ["data/d/manifest.json"],
                                                        ["https://huggingface.co/datasets/org/ds/tree/abc"])
    assert _dataset_available("d", {"files": [{"path": "a"}], "source": {"type": "local"}}, set())[0] is False


# --- a reader that closes the pipe early (prov audit X | head -1) ----------------------------------------


@pytest.mark.parametrize("args", [["audit", "{b}"], ["audit", "{b}", "--json"], ["diff", "{b}", "{b}"]])
def test_a_closed_pipe_ends_the_command_quietly(tiny_bundle: Path, args: list[str]) -> None:
    """stdout's reader is gone before the command writes (as `| head -1` ends): no BrokenPipeError traceback,
    nothing on stderr, the status a shell reports for SIGPIPE (141); `| head -1` itself gets the first line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "provenance.cli", *(a.format(b=tiny_bundle) for a in args)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # no reader left: the command's first write (or its flush) fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and err == "", err
    shell = subprocess.run(["bash", "-c", f"{shlex.join(cmd)} | head -1"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert shell.returncode == 0 and shell.stderr == "" and len(shell.stdout.splitlines()) == 1, shell
