"""Lineage: edges by content digest, the bundle store, `prov lineage`, `prov audit --lineage`, `prov merge`."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provenance import formats
from provenance.bundle import seal_folder
from provenance.hashing import sha256_file
from provenance.lineage import LineageCallback, audit_lineage, build_graph
from provenance.lineage.edges import Consumed, LineageError, resolve
from provenance.lineage.render import render_html, render_text
from provenance.store import Store, StoreError, add
from tests.conftest import REPO, offline_env, train

GOLDEN = Path(__file__).parent / "golden" / "lineage-v1.json"


def prov_subprocess(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provenance.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=300)


def prov(*args: str) -> subprocess.CompletedProcess[str]:
    """`prov ARGS` in this process (no interpreter start-up per call)."""
    from provenance.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as exc:  # argparse
            rc = int(exc.code or 0)
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


def by_name(runs: Path, name: str) -> Path:
    hits = [p for p in runs.iterdir() if (p / "run.json").is_file() and not p.is_symlink()
            and json.loads((p / "run.json").read_text())["name"] == name]
    assert len(hits) == 1, (name, hits)
    return hits[0]


def edges(bundle: Path) -> list[dict]:
    return json.loads((bundle / formats.LINEAGE_JSON).read_text())["edges"]


@pytest.fixture(scope="module")
def graph_runs(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stage1 (the tiny bundle) -> prep (a `prov run` step whose outputs/ hold the corpus and tokenizer)
    -> stage2 (warm-started from stage1's last checkpoint, trained on prep's outputs) -> merged."""
    tmp = tmp_path_factory.mktemp("lineage")
    runs = tmp / "runs"
    runs.mkdir()
    shutil.copytree(tiny_bundle, runs / tiny_bundle.name)
    stage1 = runs / tiny_bundle.name
    work = tmp / "prep"
    (work / "corpus").mkdir(parents=True)
    (work / "tokenizer").mkdir()
    for f in ("train.jsonl", "validation.jsonl", "arithmetic_eval.jsonl"):
        shutil.copyfile(stage1 / "data/tiny-corpus/files" / f, work / "corpus" / f)
    shutil.copyfile(stage1 / "data/tokenizer/files/tokenizer.json", work / "tokenizer/tokenizer.json")
    env = offline_env(tmp)
    r = prov_subprocess("run", "--name", "prep", "--runs-dir", str(runs), "--outputs", str(work / "corpus"),
                        "--outputs", str(work / "tokenizer"), "--", sys.executable, "-c", "pass", env=env)
    assert r.returncode == 0, r.stderr
    prep = by_name(runs, "prep")
    ckpt = stage1 / formats.checkpoint_name(12)
    train(tmp, f"run.init_from={ckpt}", "run.name=stage2", "train.steps=2", "train.lr=0.001",
          "data.source=local", f"data.path={prep / 'outputs/corpus'}", "train.eval_every=2",
          "train.checkpoint_every=2", f"run.runs_dir={runs}")
    stage2 = by_name(runs, "stage2")
    r = prov("merge", str(stage1), str(stage2 / formats.checkpoint_name(2)), "--weights", "1,3",
             "--runs-dir", str(runs), "--name", "merged")
    assert r.returncode == 0, r.stderr
    return runs


def copy_runs(graph_runs: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "runs"
    shutil.copytree(graph_runs, dest)
    return dest


def test_edges_found_automatically_for_data_tokenizer_init_and_merge(graph_runs: Path, tiny_bundle: Path) -> None:
    stage1, prep = graph_runs / tiny_bundle.name, by_name(graph_runs, "prep")
    s2 = edges(by_name(graph_runs, "stage2"))
    root1 = formats.digest_str(json.loads((stage1 / "manifest.json").read_text())["subject"][0]["digest"]["sha256"])
    rootp = formats.digest_str(json.loads((prep / "manifest.json").read_text())["subject"][0]["digest"]["sha256"])
    init = [e for e in s2 if e["kind"] == "init"]
    assert len(init) == 1 and init[0]["parent"] == root1
    assert init[0]["parent_path"] == formats.checkpoint_name(12)
    assert init[0]["digest"] == formats.digest_str(sha256_file(stage1 / formats.checkpoint_name(12)))
    data = {e["consumed"]: e for e in s2 if e["kind"] == "data"}
    assert set(data) == {f"data/tiny-corpus/{f}" for f in ("train.jsonl", "validation.jsonl", "arithmetic_eval.jsonl")}
    assert all(e["parent"] == rootp and e["parent_path"].startswith("outputs/corpus/") for e in data.values())
    tok = [e for e in s2 if e["kind"] == "tokenizer"]
    assert len(tok) == 1 and tok[0]["parent"] == rootp and tok[0]["parent_path"] == "outputs/tokenizer/tokenizer.json"
    merged = edges(by_name(graph_runs, "merged"))
    assert sorted((e["kind"], e["weight"]) for e in merged) == [("merge", 0.25), ("merge", 0.75)]
    # stage1 itself consumed generated data that no stored bundle produced: a root
    assert all(e["parent"] is None for e in edges(stage1))


def test_resume_edge(graph_runs: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    from provenance import start_run

    ckpt = graph_runs / tiny_bundle.name / formats.checkpoint_name(6)
    cb = LineageCallback(resume=ckpt, stores=[graph_runs])
    with start_run({"x": 1}, name="resumer", runs_dir=tmp_path, capture_output=False, callbacks=[cb]) as run:
        run.record_batch(1, [])
    e = edges(run.root)
    assert [(x["kind"], x["parent_path"], x["consumed"]) for x in e] == [
        ("resume", formats.checkpoint_name(6), "run.resume_from")]


def test_pipeline_graph_audits_and_renders(graph_runs: Path, tmp_path: Path) -> None:
    merged = by_name(graph_runs, "merged")
    report = audit_lineage(merged, Store.default(near=merged))
    assert report.ok, report.failures()
    assert len(report.graph.nodes) == 4 and len(report.graph.parent_edges()) == 7
    assert all(na.ok for na in report.audits.values())
    assert sorted(n.bundle.name for n in report.graph.roots()) == ["prep", "tiny-lm"]
    text = render_text(report.graph, report)
    assert "merge w=0.75" in text and "init" in text and "VERDICT      PASS" in text
    page = render_html(report.graph, report)
    assert page.count("<rect") == 4 and "<svg" in page
    r = prov("audit", str(merged), "--lineage", "--json")
    assert r.returncode == 0, r.stdout[-2000:]
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["lineage"]["ok"] and len(doc["lineage"]["graph"]["nodes"]) == 4
    html = tmp_path / "g.html"
    r = prov("lineage", str(merged), "--html", str(html))
    assert r.returncode == 0 and html.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("name", ["tiny-lm", "prep", "stage2"])
def test_tampered_ancestor_is_named(graph_runs: Path, tmp_path: Path, name: str) -> None:
    runs = copy_runs(graph_runs, tmp_path)
    victim = by_name(runs, name)
    target = victim / "config.json"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 1
    target.write_bytes(bytes(data))
    merged = by_name(runs, "merged")
    report = audit_lineage(merged, Store.default(near=merged))
    assert not report.ok
    assert any(p.kind == "ancestor-audit" and victim.name in p.message and "config.json" in p.message
               for p in report.problems), report.failures()
    r = prov("audit", str(merged), "--lineage")
    assert r.returncode == 1 and victim.name in r.stdout


def test_broken_edge_is_named(graph_runs: Path, tmp_path: Path, tiny_bundle: Path) -> None:
    """The producer's file changed and its manifest was rewritten to match (root digest kept): the edge breaks."""
    runs = copy_runs(graph_runs, tmp_path)
    stage1 = runs / tiny_bundle.name
    ck = stage1 / formats.checkpoint_name(12)
    data = bytearray(ck.read_bytes())
    data[-1] ^= 1
    ck.write_bytes(bytes(data))
    man = json.loads((stage1 / "manifest.json").read_text())
    for r in man["predicate"]["resources"]:
        if r["name"] == formats.checkpoint_name(12):
            r["digest"] = sha256_file(ck)
    (stage1 / "manifest.json").write_text(json.dumps(man))
    merged = by_name(runs, "merged")
    report = audit_lineage(merged, Store.default(near=merged))
    broken = [p for p in report.problems if p.kind == "broken-edge"]
    assert broken and "init edge" in broken[0].message and formats.checkpoint_name(12) in broken[0].message


def test_missing_ancestor_is_reported_not_a_crash(graph_runs: Path, tmp_path: Path, tiny_bundle: Path) -> None:
    runs = copy_runs(graph_runs, tmp_path)
    shutil.rmtree(runs / tiny_bundle.name)
    merged = by_name(runs, "merged")
    report = audit_lineage(merged, Store.default(near=merged))
    missing = [p for p in report.problems if p.kind == "missing-ancestor"]
    assert len(missing) == 2  # the merge edge and stage2's init edge
    assert {p.edge["kind"] for p in missing} == {"merge", "init"}
    assert all(tiny_bundle.name in p.message for p in missing)
    r = prov("lineage", str(merged))
    assert r.returncode == 1 and "MISSING" in r.stdout and "Traceback" not in r.stderr


def test_store_add_ls_find(graph_runs: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    merged = by_name(graph_runs, "merged")
    for b in graph_runs.iterdir():
        r = prov("store", "add", str(store), str(b))
        assert r.returncode == 0 and r.stdout.startswith("added"), r.stderr
    assert prov("store", "add", str(store), str(merged)).stdout.startswith("already in the store")
    ls = prov("store", "ls", str(store)).stdout.splitlines()
    assert len(ls) == 4
    root = json.loads((merged / "manifest.json").read_text())["subject"][0]["digest"]["sha256"]
    found = prov("store", "find", str(store), root[:12])
    assert found.returncode == 0 and "merged" in found.stdout
    # the graph found through the store alone (the target outside it)
    lone = tmp_path / "lone"
    shutil.copytree(merged, lone / merged.name)
    report = audit_lineage(lone / merged.name, Store([store]))
    assert report.ok, report.failures()
    assert prov("store", "find", str(store), "0" * 64).returncode == 1


def test_tampered_bundle_is_not_added_to_a_store(graph_runs: Path, tmp_path: Path) -> None:
    runs = copy_runs(graph_runs, tmp_path)
    prep = by_name(runs, "prep")
    (prep / "config.json").write_text("{}")
    r = prov("store", "add", str(tmp_path / "store"), str(prep))
    assert r.returncode == 2 and "integrity" in r.stderr


def test_hostile_bundles_in_a_store(graph_runs: Path, tmp_path: Path) -> None:
    """Garbage, a symlinked bundle and an unsealed lineage.json: skipped or reported, never followed."""
    runs = copy_runs(graph_runs, tmp_path)
    (runs / "garbage").mkdir()
    (runs / "garbage" / "manifest.json").write_text("{not json")
    (runs / "link").symlink_to(by_name(runs, "prep"))
    store = Store([runs])
    assert len(store.bundles) == 4 and any("garbage" in s for s in store.skipped)
    stage2 = by_name(runs, "stage2")
    (stage2 / formats.LINEAGE_JSON).write_text(json.dumps(formats.lineage_record([])))  # not what was sealed
    merged = by_name(runs, "merged")
    report = audit_lineage(merged, Store.default(near=merged))
    assert any(p.kind == "bad-lineage" and "tampered" in p.message for p in report.problems)
    assert any(p.kind == "ancestor-audit" and stage2.name in p.message for p in report.problems)


def test_hostile_lineage_json_is_refused_by_name(graph_runs: Path, tmp_path: Path) -> None:
    """A deeply nested lineage.json, sealed (so the seal does not stop it): refused, named, no crash."""
    runs = copy_runs(graph_runs, tmp_path)
    stage2 = by_name(runs, "stage2")
    (stage2 / formats.LINEAGE_JSON).write_text("[" * 100_000 + "]" * 100_000)
    seal_folder(stage2)
    g = build_graph(stage2, Store([runs]))
    assert [p.kind for p in g.problems] == ["bad-lineage"] and "nested" in g.problems[0].message
    assert stage2.name in g.problems[0].message


def test_cycle_in_declared_edges(graph_runs: Path, tmp_path: Path) -> None:
    """A bundle whose seal claims a forged root digest and declares the consumer as its parent."""
    runs = copy_runs(graph_runs, tmp_path)
    merged, stage2 = by_name(runs, "merged"), by_name(runs, "stage2")
    mroot = json.loads((merged / "manifest.json").read_text())["subject"][0]["digest"]["sha256"]
    cyc = formats.lineage_edge("init", formats.digest_str("ab" * 32), formats.digest_str(mroot),
                               "model/model.safetensors", "run.init_from", how="declared")
    formats.atomic_write_json(stage2 / formats.LINEAGE_JSON, formats.lineage_record([*edges(stage2), cyc]))
    seal_folder(stage2)
    # forge stage2's root back to what merged's edge names, so the walk comes back to merged
    man = json.loads((stage2 / "manifest.json").read_text())
    old = json.loads((graph_runs / stage2.name / "manifest.json").read_text())["subject"][0]["digest"]["sha256"]
    man["subject"][0]["digest"]["sha256"] = old
    (stage2 / "manifest.json").write_text(json.dumps(man))
    g = build_graph(merged, Store.default(near=merged))
    cycles = [p for p in g.problems if p.kind == "cycle"]
    assert cycles and merged.name in cycles[0].message and stage2.name in cycles[0].message


def test_conflicting_producers(graph_runs: Path, tmp_path: Path, tiny_bundle: Path) -> None:
    """Two bundles claim to produce the same file digest, but one's bytes differ: an error naming both."""
    runs = copy_runs(graph_runs, tmp_path)
    stage1 = runs / tiny_bundle.name
    twin = runs / "twin"
    shutil.copytree(stage1, twin)
    info = json.loads((twin / "run.json").read_text())
    info["run_id"] = "twin"
    (twin / "run.json").write_text(json.dumps(info))
    seal_folder(twin)
    ck = twin / formats.checkpoint_name(12)
    claimed = sha256_file(ck)
    data = bytearray(ck.read_bytes())
    data[-1] ^= 1
    ck.write_bytes(bytes(data))
    store = Store([runs])
    c = Consumed("init", claimed, "run.init_from")
    with pytest.raises(LineageError, match=r"conflict: .*twin.*checkpoints/step-00000012"):
        resolve(c, store)
    warnings: list[str] = []
    edge = resolve(c, store, warnings=warnings)
    assert edge["parent_run_id"] == stage1.name and "twin" in warnings[0]


def test_declare_edge_and_unknown_parent(graph_runs: Path, tmp_path: Path) -> None:
    runs = copy_runs(graph_runs, tmp_path)
    prep, merged = by_name(runs, "prep"), by_name(runs, "merged")
    proot = json.loads((prep / "manifest.json").read_text())["subject"][0]["digest"]["sha256"]
    r = prov("declare-edge", str(merged), "--kind", "eval", "--parent", proot[:16],
             "--path", "outputs/corpus/validation.jsonl")
    assert r.returncode == 0, r.stderr
    assert any(e["kind"] == "eval" and e["how"] == "declared" for e in edges(merged))
    assert audit_lineage(merged, Store.default(near=merged)).ok
    r = prov("declare-edge", str(merged), "--kind", "eval", "--parent", "cd" * 32,
             "--path", "model/model.safetensors")
    assert r.returncode == 2 and "--digest is required" in r.stderr
    r = prov("declare-edge", str(merged), "--kind", "eval", "--parent", "cd" * 32,
             "--path", "model/model.safetensors", "--digest", "sha256:" + "ef" * 32)
    assert r.returncode == 0
    report = audit_lineage(merged, Store.default(near=merged))
    assert [p.kind for p in report.problems] == ["missing-ancestor"] and "cdcdcdcd" in report.problems[0].message


def test_notes_about_another_bundle_in_the_lineage_view(graph_runs: Path, tmp_path: Path) -> None:
    runs = copy_runs(graph_runs, tmp_path)
    stage2, merged = by_name(runs, "stage2"), by_name(runs, "merged")
    s2root = json.loads((stage2 / "manifest.json").read_text())["subject"][0]["digest"]["sha256"]
    r = prov("note", str(merged), "stage 2 weighted 3:1: better sums", "--category", "evaluation",
             "--about", f"sha256:{s2root}")
    assert r.returncode == 0, r.stderr
    r = prov("lineage", str(merged), "--no-audit")
    notes = r.stdout.split("NOTES (in time order)")[1]
    assert f"about {stage2.name}" in notes and "better sums" in notes
    assert prov("note", str(merged), "x", "--about", "nope").returncode == 2


def test_merge_is_bitwise_repeatable_and_refuses_bad_input(graph_runs: Path, tmp_path: Path,
                                                           tiny_bundle: Path) -> None:
    stage1, stage2 = graph_runs / tiny_bundle.name, by_name(graph_runs, "stage2")
    r = prov("merge", str(stage1), str(stage2 / formats.checkpoint_name(2)), "--weights", "1,3",
             "--runs-dir", str(tmp_path / "again"), "--name", "merged")
    assert r.returncode == 0, r.stderr
    again = next((tmp_path / "again").iterdir())
    first = by_name(graph_runs, "merged")
    assert sha256_file(again / "model/model.safetensors") == sha256_file(first / "model/model.safetensors")
    assert prov("audit", str(again)).returncode == 0
    r = prov("merge", str(stage1), "--runs-dir", str(tmp_path / "bad"))
    assert r.returncode == 2 and "at least two" in r.stderr
    r = prov("merge", str(stage1), str(stage2), "--weights", "1", "--runs-dir", str(tmp_path / "bad"))
    assert r.returncode == 2 and "--weights" in r.stderr and not (tmp_path / "bad").exists()


def test_store_add_refuses_a_different_bundle_under_the_same_name(graph_runs: Path, tmp_path: Path) -> None:
    runs = copy_runs(graph_runs, tmp_path)
    prep = by_name(runs, "prep")
    add(tmp_path / "store", prep)
    prov("note", str(prep), "changed after it was stored")
    with pytest.raises(StoreError, match="different bundle"):
        add(tmp_path / "store", prep)


def test_lineage_schema_golden() -> None:
    rec = formats.lineage_record([
        formats.lineage_edge("merge", "sha256:" + "1" * 64, "sha256:" + "2" * 64, "model/model.safetensors",
                             "merge[0]", weight=0.25, parent_run_id="stage1"),
        formats.lineage_edge("data", "sha256:" + "3" * 64, None, None, "data/tiny-corpus/train.jsonl"),
        formats.lineage_edge("init", "sha256:" + "4" * 64, "sha256:" + "5" * 64,
                             "checkpoints/step-00000012.safetensors", "run.init_from", how="declared"),
    ])
    assert formats.dumps(rec) == GOLDEN.read_text()
    assert formats.parse_lineage(json.loads(GOLDEN.read_text()))[0]["kind"] == "data"
    for bad, field in [({"kind": "x"}, "kind"), ({"digest": "md5:1"}, "digest"), ({"weight": -1}, "weight"),
                       ({"parent_path": None}, "parent_path"), ({"how": "guess"}, "how")]:
        doc = json.loads(GOLDEN.read_text())
        doc["edges"][1].update(bad)
        with pytest.raises(formats.FormatError, match=field):
            formats.parse_lineage(doc)


def test_a_note_on_an_ancestor_after_it_was_consumed(graph_runs: Path, tmp_path: Path, tiny_bundle: Path) -> None:
    """`prov note` re-seals the ancestor (new root digest, recorded in reseals.jsonl): it is still found."""
    runs = copy_runs(graph_runs, tmp_path)
    r = prov("note", str(runs / tiny_bundle.name), "the stage-1 learning rate was too high", "--category",
             "hyperparameter")
    assert r.returncode == 0, r.stderr
    merged = by_name(runs, "merged")
    report = audit_lineage(merged, Store.default(near=merged))
    assert report.ok, report.failures()
    assert len(report.graph.nodes) == 4 and report.graph.resealed
    assert "the stage-1 learning rate was too high" in render_text(report.graph, report)


def test_release_lineage_signs_the_ancestors(graph_runs: Path, tmp_path: Path) -> None:
    runs = copy_runs(graph_runs, tmp_path)
    merged = by_name(runs, "merged")
    assert prov("keygen", "-o", str(tmp_path / "key")).returncode == 0
    r = prov("release", str(merged), "--key", str(tmp_path / "key" / "release-key.pem"), "--lineage",
             "--no-progress")
    assert r.returncode == 0, r.stderr
    doc = json.loads((merged / formats.RELEASE_LINEAGE).read_text())
    assert doc["schema"] == formats.RELEASE_LINEAGE_SCHEMA
    assert sorted(a["name"] for a in doc["ancestors"]) == ["prep", "stage2", "tiny-lm"]
    sealed = json.loads((merged / "manifest.json").read_text())["predicate"]["resources"]
    assert formats.RELEASE_LINEAGE in {x["name"] for x in sealed}  # covered by the seal the signature signs
    r = prov("audit", str(merged), "--lineage")
    assert r.returncode == 0, r.stdout[-3000:]
    # a graph that does not audit is not released
    prep = by_name(runs, "prep")
    (prep / "config.json").write_text("{}")
    r = prov("release", str(merged), "--key", str(tmp_path / "key" / "release-key.pem"), "--lineage")
    assert r.returncode == 1 and "does not audit" in r.stderr


@pytest.mark.slow
def test_make_pipeline(tmp_path: Path) -> None:
    """The whole `make pipeline` (reduced further): ends with a passing prov audit --lineage."""
    env = offline_env(tmp_path)
    env.update({"PY": sys.executable, "PIPELINE_DIR": str(tmp_path / "pipe"), "PIPELINE_STORIES": "600",
                "PIPELINE_STEPS1": "20", "PIPELINE_STEPS2": "6",
                "RELEASE_KEY": str(tmp_path / "k" / "release-key.pem")})
    r = subprocess.run(["bash", "training/pipeline.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "final prov audit --lineage: PASS" in r.stdout
    merged = by_name(tmp_path / "pipe", "merged")
    report = audit_lineage(merged, Store([tmp_path / "pipe"]))
    assert report.ok, report.failures()
    assert len(report.graph.nodes) == 7
    assert {e["kind"] for _, e, _ in report.graph.parent_edges()} == {"data", "tokenizer", "init", "merge"}


@pytest.mark.slow
def test_merge_reproduces_bitwise(graph_runs: Path, tmp_path: Path) -> None:
    runs = copy_runs(graph_runs, tmp_path)
    merged = by_name(runs, "merged")
    r = prov_subprocess("reproduce", str(merged), env=offline_env(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:]
    assert "reproduced (bitwise)" in r.stdout and "1 checkpoint digest" in r.stdout


def test_lineage_page_escapes_hostile_text_from_the_bundles(graph_runs: Path, tmp_path: Path) -> None:
    """render_html builds the page from templates/lineage.html.j2 with autoescape: a note or a name
    from a bundle never becomes markup."""
    runs = copy_runs(graph_runs, tmp_path)
    merged = by_name(runs, "merged")
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    r = prov("note", str(merged), hostile, "--category", "evaluation")
    assert r.returncode == 0, r.stderr
    page = render_html(build_graph(merged, Store.default(near=merged)))
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.startswith("<!DOCTYPE html>") and page.count("<rect") == 4 and page.count("<line") == 7


def test_a_declared_init_checkpoint_that_run_restore_loads_is_one_edge(tmp_path: Path) -> None:
    """LineageCallback(init=CKPT) and run.restore(CKPT): one input, one `init` edge as declared (run.restore
    made it a second, `resume`, edge to the same file); a checkpoint restored but not declared is a `resume`."""
    import torch

    from provenance import start_run

    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("pass\n")
    kw: dict = {"runs_dir": tmp_path / "runs", "code_root": code, "capture_output": False, "threads": 1,
                "argv": ["python", "train.py"]}
    model = torch.nn.Linear(3, 2)
    with start_run({"a": 1}, name="first", **kw) as first:
        first.log(1, loss=1.0)
        first.checkpoint(1, model)
    (ckpt,) = (first.root / "checkpoints").glob("*.safetensors")
    for declared, kinds in ((True, [("init", "run.init_from")]), (False, [("resume", "run.restore")])):
        callback = LineageCallback(init=ckpt) if declared else LineageCallback()
        with start_run({"a": 1}, name="second", callbacks=[callback], **kw) as second:
            second.restore(ckpt, model)
            second.log(2, loss=0.5)
        edges = json.loads((second.root / formats.LINEAGE_JSON).read_text())["edges"]
        assert [(e["kind"], e["consumed"]) for e in edges] == kinds, edges
        assert edges[0]["digest"] == f"sha256:{sha256_file(ckpt)}"
