"""Issue 5: `prov reproduce`: bitwise happy path, --from-step, perturbations and their causes, refusals,
and a bundle moved elsewhere after its checkout was deleted.

Every reproduction is a real (tiny) training run, so the tests share work: one original (the
session's tiny_bundle), one happy-path reproduction reused by several checks, and one run per
perturbation. Bundles are copied before anything in them is changed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, offline_env, only_run

from provenance import formats
from provenance.bundle import seal_folder
from provenance.capture.code import materialise_snapshot
from provenance.diff import diff_bundles
from provenance.reproduce import (
    BITWISE,
    DIVERGED,
    NOT_CLAIMED,
    REPORT,
    WITHIN,
    Options,
    Plan,
    decide,
    find_causes,
    read_original,
    reproduce,
)


def cli(*args: str, cwd: Path | None = None, tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = offline_env(tmp) if tmp is not None else None
    return subprocess.run([sys.executable, "-m", "provenance.cli", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=600)


def root_of(bundle: Path) -> str:
    return formats.parse_oms_statement(formats.read_json(bundle / formats.MANIFEST))[0]


def losses(bundle: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in formats.read_jsonl(bundle / formats.METRICS)}


@pytest.fixture(scope="module")
def happy(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The default reproduction of the tiny run, through the real CLI (--json)."""
    tmp = tmp_path_factory.mktemp("happy")
    proc = cli("reproduce", str(tiny_bundle), "--workdir", str(tmp / "w"), "--json", "--quiet", tmp=tmp)
    return {"proc": proc, "doc": json.loads(proc.stdout) if proc.stdout.strip() else None, "tmp": tmp}


# --- the happy path ----------------------------------------------------------------------------------


def test_default_reproduction_is_bitwise(happy: dict, tiny_bundle: Path) -> None:
    proc, doc = happy["proc"], happy["doc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert doc["verdict"] == BITWISE and doc["bitwise"] and doc["exit_status"] == 0
    assert doc["first_divergence"] is None and doc["cause"] is None
    n_steps = len(losses(tiny_bundle))
    n_ckpts = len(formats.read_json(tiny_bundle / formats.CHECKPOINT_INDEX)["checkpoints"])
    assert doc["scope"]["steps_checked"] == n_steps == doc["scope"]["steps_expected"]
    assert doc["scope"]["checkpoints_checked"] == n_ckpts >= 2
    repro = Path(doc["bundle"])
    # every loss bitwise, every checkpoint digest equal
    assert losses(repro) == losses(tiny_bundle)
    d = diff_bundles(tiny_bundle, repro)
    assert d["metrics"]["first_diff_step"] is None and not d["checkpoints"]["differ"]
    assert d["checkpoints"]["compared"] == n_ckpts
    assert d["same"]["code"] and d["same"]["data"] and d["same"]["environment"] and d["same"]["order"]
    assert {c["key"] for c in d["config"]["changed"]} <= {"run.runs_dir", "data.root"}
    # the step-by-step record: batches (ids and digests), losses, checkpoints
    steps = list(formats.read_jsonl(repro / "reproduction/steps.jsonl"))
    step_recs = [r for r in steps if "checkpoint" not in r]
    assert len(step_recs) == n_steps and all(r["order"] == "match" and r["loss_match"] for r in step_recs)
    assert all(r["batch_digest"] == r["recorded_batch_digest"] for r in step_recs)
    assert sum(1 for r in steps if r.get("checkpoint_match")) == n_ckpts


def test_quiet_prints_nothing_but_the_result(happy: dict) -> None:
    err = happy["proc"].stderr  # --json --quiet: the document on stdout, nothing else anywhere
    assert "audit:" not in err and "executing" not in err and "  | " not in err, err[-2000:]


def test_reproduction_bundle_is_sealed_names_the_original_and_passes_audit(happy: dict, tiny_bundle: Path) -> None:
    doc = happy["doc"]
    repro = Path(doc["bundle"])
    assert doc["root_digest"] == f"sha256:{root_of(repro)}"
    assert f"root digest: {doc['root_digest']}" not in happy["proc"].stdout  # --json: only the document on stdout
    run = formats.read_json(repro / formats.RUN_JSON)
    assert run["reproduces"] == {"run_id": tiny_bundle.name, "root_digest": root_of(tiny_bundle)}
    report = formats.read_json(repro / REPORT)
    assert report["original"]["root_digest"] == root_of(tiny_bundle)
    assert report["verdict"] == BITWISE and report["command"][1:3] == ["-m", "training.train"]
    from provenance.audit import audit

    rep = audit(repro)  # the reproduction check is one of the declared extension checks
    assert rep.ok, rep.failures()
    assert rep.check("reproduction").status == "pass"
    # the audit catches a report that claims more than the replay found
    bad = happy["tmp"] / "bad" / repro.name
    shutil.copytree(repro, bad)
    summ = formats.read_json(bad / "reproduction/summary.json")
    summ["steps_checked"] += 1
    formats.atomic_write_json(bad / "reproduction/summary.json", summ)
    seal_folder(bad)
    assert audit(bad).check("reproduction").status == "fail"
    # and so does `prov audit`
    proc = cli("audit", str(repro))
    assert proc.returncode == 0 and "reproduced (bitwise)" in proc.stdout, proc.stdout + proc.stderr
    proc = cli("audit", str(bad))
    assert proc.returncode == 1 and "step records, but the summary says" in proc.stdout


def test_prov_diff_of_bundle_and_its_reproduction(happy: dict, tiny_bundle: Path) -> None:
    repro = happy["doc"]["bundle"]
    proc = cli("diff", str(tiny_bundle), repro)
    assert proc.returncode == 0, proc.stderr
    assert "code: same" in proc.stdout and "data: same" in proc.stdout
    assert "loss bitwise equal" in proc.stdout and "all sha256 equal" in proc.stdout
    assert "first divergence: none" in proc.stdout
    proc = cli("diff", str(tiny_bundle), repro, "--json")
    d = json.loads(proc.stdout)
    assert d["same"]["metrics"] and d["b"]["reproduces"]["run_id"] == tiny_bundle.name


def test_prov_diff_exit_code_of_a_bitwise_reproduction_is_0(happy: dict, tiny_bundle: Path, tmp_path: Path) -> None:
    repro = Path(happy["doc"]["bundle"])
    proc = cli("diff", str(tiny_bundle), str(repro), "--exit-code", "--json")
    d = json.loads(proc.stdout)
    # what a reproduction has by design is shown: its own command, config file and paths
    paths = {"run.runs_dir", "data.root"}
    assert {c["key"] for c in d["config"]["changed"]} == paths == set(d["config"]["not_counted"])
    assert not d["command"]["same"] and not d["command"]["counted"]
    assert d["a"]["run_id"] != d["b"]["run_id"]
    # but does not count
    assert (proc.returncode, d["differs"], d["identical"]) == (0, [], True), proc.stderr
    proc = cli("diff", str(tiny_bundle), str(repro), "--exit-code")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "config: same but 2 path key(s) of the machine that ran (not counted)" in proc.stdout
    assert "command: differs (not counted" in proc.stdout
    # a real config change in the reproduction (sealed again: intact) counts
    other = tmp_path / repro.name
    shutil.copytree(repro, other)
    cfg = formats.read_json(other / formats.CONFIG_JSON)
    cfg["config"]["train"]["lr"] = 0.006
    formats.atomic_write_json(other / formats.CONFIG_JSON, cfg)
    seal_folder(other)
    proc = cli("diff", str(tiny_bundle), str(other), "--exit-code", "--json")
    d = json.loads(proc.stdout)
    assert (proc.returncode, d["differs"]) == (1, ["config"]), proc.stderr
    # and so does a command argument that is not a config override (e.g. a wrapped script's own flag)
    cfg = formats.read_json(repro / formats.CONFIG_JSON)
    cfg["argv"] = [*cfg["argv"], "--fast-math"]
    formats.atomic_write_json(other / formats.CONFIG_JSON, cfg)
    seal_folder(other)
    proc = cli("diff", str(tiny_bundle), str(other), "--exit-code", "--json")
    d = json.loads(proc.stdout)
    assert (proc.returncode, d["differs"]) == (1, ["command"]), proc.stderr


def test_from_step_restores_the_checkpoint_and_checks_the_rest(tiny_bundle: Path, tmp_path: Path) -> None:
    from provenance.archive import pack

    archive = tmp_path / "release.tar.gz"  # a release archive works as well as a run folder
    pack(tiny_bundle, archive)
    out = reproduce(archive, Options(from_step=6, workdir=tmp_path / "w"))
    assert out.exit_status == 0, out.headline
    assert out.report.original["root_digest"] == root_of(tiny_bundle)
    assert out.verdict == BITWISE
    scope = out.report.scope
    last = max(losses(tiny_bundle))
    assert (scope["first_step"], scope["last_step"], scope["steps_checked"]) == (7, last, last - 6)
    assert scope["checkpoints_checked"] == scope["checkpoints_expected"] >= 1
    assert min(losses(out.bundle)) == 7  # steps 1-6 were not re-run
    assert all(losses(out.bundle)[s] == v for s, v in losses(tiny_bundle).items() if s > 6)
    notes = list(formats.read_jsonl(out.bundle / formats.NOTES))
    assert any(n["category"] == "restart" and n["step"] == 6 for n in notes)


# --- perturbations: the verdict names the first divergent step and the cause ---------------------------


def test_other_seed_diverges_at_step_1_config_seed(tiny_bundle: Path, tmp_path: Path) -> None:
    proc = cli("reproduce", str(tiny_bundle), "--workdir", str(tmp_path / "w"), "--set", "run.seed=7",
               "--steps", "3", "--json", "--quiet", tmp=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["verdict"] == DIVERGED and doc["first_divergence"]["step"] == 1
    assert doc["first_divergence"]["kind"] == "order"  # another seed picks other samples
    assert doc["cause"]["kind"] == "config" and doc["cause"]["key"] == "run.seed"
    assert (doc["cause"]["a"], doc["cause"]["b"]) == (1337, 7)
    assert doc["scope"]["last_step"] == 3 and doc["scope"]["steps_checked"] == 3  # --steps 3
    assert "run.seed 1337 → 7" in doc["headline"]
    # the data order is always compared exactly: no tolerance makes another batch reproduce
    orig = read_original(tiny_bundle, root_of(tiny_bundle))
    loose = decide(orig, Path(doc["bundle"]), Plan(1, 3, 3), 0, [], tolerance="loss=1e9,ckpt=1e9")
    assert loose["verdict"] == DIVERGED and loose["first_divergence"]["step"] == 1
    assert loose["first_divergence"]["kind"] == "order"


def test_other_learning_rate_diverges_at_step_2_config_lr(tiny_bundle: Path, tmp_path: Path) -> None:
    out = reproduce(tiny_bundle, Options(sets=["train.lr=0.006"], workdir=tmp_path / "w", steps=4))
    assert out.exit_status == 1, out.headline
    first = out.report.first_divergence
    # the loss of step 1 is computed before the first update: the learning rate shows from step 2
    assert (first["step"], first["kind"]) == (2, "loss") and first["order_matched"]
    assert out.report.cause["kind"] == "config" and out.report.cause["key"] == "train.lr"
    assert out.report.cause["logged_values_differ"]["lr"] == 1
    # within any tolerance, another config is never "reproduced"
    orig = read_original(tiny_bundle, root_of(tiny_bundle))
    loose = decide(orig, out.bundle, Plan(1, 4, 4), 0, [], tolerance="loss=1e9,ckpt=1e9")
    assert loose["verdict"] == NOT_CLAIMED and loose["exit_status"] == 1 and loose["cause"]["key"] == "train.lr"


def test_other_thread_count_is_named_as_environment(tiny_bundle: Path, tmp_path: Path) -> None:
    out = reproduce(tiny_bundle, Options(sets=["run.threads=1"], workdir=tmp_path / "w"))
    assert out.exit_status == 1, out.headline
    cause = out.report.cause
    assert cause["kind"] == "environment" and cause["what"] == "thread count" and (cause["a"], cause["b"]) == (2, 1)
    assert "thread count 2 → 1" in out.headline
    # one definition of the first divergent step: the verdict's, the replay's and prov diff's are the same
    # step and kind (where the floats first differ depends on the CPU: never asserted)
    d = diff_bundles(tiny_bundle, out.bundle)
    first = out.report.first_divergence
    replayed = out.report.replay_summary["first_divergence"]

    def where(x: dict | None) -> tuple | None:
        return None if x is None else (x["step"], x["kind"])

    assert where(first) == where(d["first_divergence"]) == where(replayed)
    if first is None:  # same floats at one thread: still no bitwise claim across the difference
        assert out.verdict == NOT_CLAIMED and d["metrics"]["first_diff_step"] is None
        return
    assert out.verdict == DIVERGED and f"diverged at step {first['step']}" in out.headline
    assert first["kind"] in ("loss", "checkpoint")  # the same batches (replayed), other floats
    loss_step = d["metrics"]["first_diff_step"]
    ckpt_steps = [c["step"] for c in d["checkpoints"]["differ"]]
    if first["kind"] == "loss":
        assert loss_step == first["step"] and first["order_matched"]
        assert all(s >= first["step"] for s in ckpt_steps)
    else:  # a checkpoint's digest differs before any loss does
        assert ckpt_steps[0] == first["step"] and (loss_step is None or loss_step > first["step"])
    proc = cli("diff", str(tiny_bundle), str(out.bundle))
    assert f"first divergence: step {first['step']} ({first['kind']})" in proc.stdout
    # issue 15: the same bundles under a tolerance; another thread count is real non-bitwise noise
    orig = read_original(tiny_bundle, root_of(tiny_bundle))
    plan = Plan(1, None, max(losses(tiny_bundle)))
    loose = decide(orig, out.bundle, plan, 0, [], tolerance="loss=1e-2,ckpt=1e-2")
    assert loose["verdict"] == WITHIN and loose["exit_status"] == 0 and "loss relative difference ≤ 0.01" in \
        loose["headline"]
    assert where(loose["first_difference"]) == where(first) and loose["first_divergence"] is None
    assert loose["tolerance"]["max_loss_rel"] <= 1e-2 and loose["tolerance"]["max_ckpt_rel_l2"] <= 1e-2
    auto = decide(orig, out.bundle, plan, 0, [], tolerance="auto")
    assert auto["tolerance"]["mode"] == "bounds" and "thread count 2 → 1" in auto["tolerance"]["why"]
    assert auto["verdict"] == WITHIN  # float32 noise of 12 steps stays far below auto's 1e-3
    strict = decide(orig, out.bundle, plan, 0, [], tolerance="loss=0,ckpt=0")
    assert strict["verdict"] == DIVERGED and where(strict["first_divergence"]) == where(first)
    assert "out of tolerance" in strict["headline"]


def test_one_changed_line_in_the_training_script_is_named(tiny_bundle: Path, tmp_path: Path) -> None:
    code = tmp_path / "code"
    materialise_snapshot((tiny_bundle / formats.CODE_SNAPSHOT).read_bytes(), code)
    script = code / "training" / "train.py"
    text = script.read_text()
    old = "clip_grad_norm_(model.parameters(), t.grad_clip)"
    assert text.count(old) == 1
    script.write_text(text.replace(old, "clip_grad_norm_(model.parameters(), 0.5 * t.grad_clip)"))
    out = reproduce(tiny_bundle, Options(code=code, workdir=tmp_path / "w", steps=4))
    assert out.exit_status == 1, out.headline
    first = out.report.first_divergence
    assert (first["step"], first["kind"]) == (2, "loss")  # clipping changes the first update, seen at step 2
    assert out.report.cause == {**out.report.cause, "kind": "code", "file": "training/train.py"}
    assert not out.report.other_causes  # exactly one file differs


def test_code_that_cannot_start_names_the_changed_file(tiny_bundle: Path, tmp_path: Path) -> None:
    code = tmp_path / "code"
    materialise_snapshot((tiny_bundle / formats.CODE_SNAPSHOT).read_bytes(), code)
    script = code / "training" / "train.py"
    script.write_text(script.read_text() + "\ndef broken(:\n")
    work = tmp_path / "w"
    proc = cli("reproduce", str(tiny_bundle), "--code", str(code), "--workdir", str(work), "--json", tmp=tmp_path)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 2 and "before its run started" in doc["headline"]
    assert "training/train.py" in doc["headline"] and "SyntaxError" in doc["headline"]
    assert "1 files differ from the original's" in proc.stderr
    # a process was started: the work folder is kept and the verdict never says that nothing ran
    assert doc["training_exit_status"] == 1 and doc["command"][1:3] == ["-m", "training.train"]
    assert (work / "training.log").is_file() and doc["workdir"] == str(work) and str(work) in doc["headline"]
    proc = cli("reproduce", str(tiny_bundle), "--code", str(code), "--workdir", str(tmp_path / "w2"), tmp=tmp_path)
    assert proc.returncode == 2 and "nothing ran" not in proc.stdout + proc.stderr
    assert "verdict: refused after the training ran (exit status 1); work folder kept" in proc.stdout


def test_changed_byte_in_a_data_file_is_refused_before_step_0(tiny_bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_bundle / "data" / "tiny-corpus" / "files", data)
    train = data / "train.jsonl"
    raw = bytearray(train.read_bytes())
    line = 100
    offset = sum(len(x) + 1 for x in raw.split(b"\n")[:line]) + 12  # a letter inside the text of record 100
    raw[offset] = ord("Q") if raw[offset] != ord("Q") else ord("R")
    train.write_bytes(bytes(raw))
    manifest = formats.read_json(tiny_bundle / "data/tiny-corpus/manifest.json")
    expected = next(e["sha256"] for e in manifest["files"] if e["path"] == "train.jsonl")
    import hashlib

    found = hashlib.sha256(bytes(raw)).hexdigest()
    work = tmp_path / "w"
    proc = cli("reproduce", str(tiny_bundle), "--workdir", str(work), "--data-root", str(data), tmp=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert "train.jsonl" in err and f"sha256:{expected}" in err and f"sha256:{found}" in err
    assert "sample 100" in err
    assert "running:" not in proc.stdout and not work.exists()  # nothing ran, nothing was left behind


# --- refusals and the environment ---------------------------------------------------------------------


def test_bundle_failing_integrity_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    with open(bundle_copy / formats.METRICS, "a") as f:
        f.write("\n")
    work = tmp_path / "w"
    proc = cli("reproduce", str(bundle_copy), "--workdir", str(work), tmp=tmp_path)
    assert proc.returncode == 2
    assert "integrity" in proc.stderr and formats.METRICS in proc.stderr and not work.exists()


def _with_other_numpy(bundle: Path) -> None:
    env = formats.read_json(bundle / formats.ENV_JSON)
    env["packages"]["numpy"] = "0.0.1"
    formats.atomic_write_json(bundle / formats.ENV_JSON, env)
    seal_folder(bundle)


def test_strict_env_refuses_any_difference(bundle_copy: Path, tmp_path: Path) -> None:
    _with_other_numpy(bundle_copy)
    proc = cli("reproduce", str(bundle_copy), "--workdir", str(tmp_path / "w"), "--strict-env", tmp=tmp_path)
    assert proc.returncode == 2
    assert "package numpy 0.0.1 →" in proc.stderr and "strict-env" in proc.stderr


def test_strict_env_passes_on_the_machine_that_ran(tiny_bundle: Path) -> None:
    from provenance.reproduce import env_check

    said: list[str] = []
    orig = read_original(tiny_bundle, root_of(tiny_bundle))
    assert env_check(orig, {}, Options(strict_env=True), said.append) == []
    assert any("same as recorded" in line for line in said)


def test_no_bitwise_claim_across_an_environment_difference(happy: dict, bundle_copy: Path) -> None:
    _with_other_numpy(bundle_copy)  # the same run, recorded with another numpy: the losses still match
    orig = read_original(bundle_copy, root_of(bundle_copy))
    last = max(losses(bundle_copy))
    out = decide(orig, Path(happy["doc"]["bundle"]), Plan(1, None, last), 0, [])
    assert out["verdict"] == NOT_CLAIMED and out["exit_status"] == 1 and not out["bitwise"]
    assert out["cause"]["kind"] == "environment" and "package numpy" in out["cause"]["summary"]


def test_numerics_only_when_nothing_else_differs(tiny_bundle: Path) -> None:
    d = diff_bundles(tiny_bundle, tiny_bundle)
    first = {"step": 3, "kind": "loss", "loss_recorded": 1.0, "loss": 1.0000001, "abs_diff": 1e-7,
             "order_matched": True}
    causes = find_causes(d, first, {"max_loss_abs_diff": 2e-7})
    assert [c["kind"] for c in causes] == ["numerics"] and causes[0]["max_abs_loss_diff"] == 2e-7


def test_bad_arguments_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    out = reproduce(tiny_bundle, Options(from_step=5, workdir=tmp_path / "a"))
    assert out.exit_status == 2 and "no checkpoint at step 5" in out.headline
    out = reproduce(tiny_bundle, Options(sets=["train.lrr=1"], workdir=tmp_path / "b"))
    assert out.exit_status == 2 and "train.lrr" in out.headline
    out = reproduce(tmp_path / "nothing-here", Options(workdir=tmp_path / "c"))
    assert out.exit_status == 2


# --- the original checkout is not needed ----------------------------------------------------------------


def test_moved_bundle_reproduces_after_its_checkout_was_deleted(tmp_path: Path) -> None:
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    checkout = tmp_path / "checkout"
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file() and not src.is_symlink():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, checkout / name)
    # mark this checkout's code, to prove that the reproduction ran the snapshot, not another copy
    init = checkout / "training" / "__init__.py"
    init.write_text(init.read_text() + '\nprint("MARK-OF-THE-DELETED-CHECKOUT", flush=True)\n')
    # the corpus is a local folder of the checkout (data.source=local), deleted with it
    from training import corpus

    corpus.generate(checkout / "corpus", 1234, n_stories=400, max_operand=9)
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "training.train", "--config", "configs/tiny-lm.yaml", *TINY,
                           f"run.runs_dir={runs}", "data.source=local", "data.path=corpus"], cwd=checkout,
                          env=offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (checkout / "data").is_dir()  # the tokenizer went into the checkout (data.root=data)
    moved = tmp_path / "elsewhere" / "kept"
    moved.parent.mkdir()
    shutil.move(str(only_run(runs)), moved)
    shutil.rmtree(checkout)
    shutil.rmtree(runs)
    empty = tmp_path / "cwd"
    empty.mkdir()
    proc = cli("reproduce", str(moved), "--workdir", str(tmp_path / "w"), "--json", "--quiet", cwd=empty,
               tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["verdict"] == BITWISE
    assert {d["dataset"]: d["located"] for d in doc["data"]}["tiny-corpus"] == "bundle"
    assert list(doc["overrides"]["data_keys"]) == ["data.path"]  # pointed at the bundled files
    repro = Path(doc["bundle"])
    assert "MARK-OF-THE-DELETED-CHECKOUT" in (Path(doc["workdir"]) / "training.log").read_text()
    assert diff_bundles(moved, repro)["same"]["code"]


# --- issues 10 and 18: untrusted code, the sandbox, where the bundle went, consistency, resumed runs ------


needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


@needs_bwrap
def test_sandbox_does_not_change_the_numbers(tiny_bundle: Path, tmp_path: Path) -> None:
    proc = cli("reproduce", str(tiny_bundle), "--workdir", str(tmp_path / "w"), "--sandbox", "--steps", "6",
               tmp=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "verdict: reproduced (bitwise): 6 steps (steps 1–6): every batch and loss, and 1 checkpoint" in proc.stdout
    # before anything runs, it says that it executes the bundle's code, and how it is contained
    before = proc.stdout.split("  | ", 1)[0]
    n_files = len(formats.read_json(tiny_bundle / formats.CODE_JSON)["files"])
    assert f"executing the bundle's code: {n_files} files from its source snapshot, entry point -m training.train" \
        in before
    assert "sandboxed (bubblewrap): no network" in before


@needs_bwrap
def test_sandbox_contains_a_snapshot_that_writes_outside(bundle_copy: Path, tmp_path: Path) -> None:
    code = tmp_path / "code"
    materialise_snapshot((bundle_copy / formats.CODE_SNAPSHOT).read_bytes(), code)
    outside = tmp_path / "outside"
    outside.mkdir()
    targets = [outside / "canary.txt", bundle_copy / "planted.txt", REPO / ".sandbox-canary"]
    init = code / "training" / "__init__.py"
    init.write_text(init.read_text() + f"""
import socket as _socket
for _p in {[str(t) for t in targets]!r}:
    try:
        with open(_p, "w") as _f:
            _f.write("escaped")
        print("WROTE", _p, flush=True)
    except OSError as _e:
        print("CONTAINED", _p, type(_e).__name__, flush=True)
print("INTERFACES", sorted(_n for _, _n in _socket.if_nameindex()), flush=True)
""")
    try:
        out = reproduce(bundle_copy, Options(code=code, workdir=tmp_path / "w", steps=1, sandbox=True))
        log = (tmp_path / "w" / "training.log").read_text()
        assert not any(t.exists() for t in targets), log[-3000:]
    finally:
        for t in targets:
            t.unlink(missing_ok=True)
    assert log.count("CONTAINED") == 3 and "WROTE" not in log and "INTERFACES ['lo']" in log
    assert out.exit_status == 1 and out.verdict == NOT_CLAIMED  # it ran (other code: no claim), in its folder
    assert out.report.sandbox["network"] is False and out.bundle is not None and out.bundle.is_relative_to(
        tmp_path / "w")


def test_no_sandbox_available_is_a_clear_refusal(tiny_bundle: Path, tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    env["PATH"] = str(tmp_path / "empty")  # no bwrap to be found
    work = tmp_path / "w"
    proc = subprocess.run([sys.executable, "-m", "provenance.cli", "reproduce", str(tiny_bundle), "--workdir",
                           str(work), "--sandbox"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 2
    assert "--sandbox: no sandbox is available: bubblewrap (bwrap) is not installed" in proc.stderr
    assert "verdict: refused (nothing ran)" in proc.stdout and not work.exists()


def test_bundle_written_elsewhere_is_found_and_named(tiny_bundle: Path, tmp_path: Path) -> None:
    code = tmp_path / "code"
    materialise_snapshot((tiny_bundle / formats.CODE_SNAPSHOT).read_bytes(), code)
    train = code / "training" / "train.py"
    text = train.read_text()
    assert text.count("runs_dir=cfg.run.runs_dir") == 1
    train.write_text(text.replace("runs_dir=cfg.run.runs_dir", 'runs_dir="elsewhere"'))
    init = code / "training" / "__init__.py"  # and a script that ignores PROV_RUNS_DIR too
    init.write_text(init.read_text() + '\nimport os as _os\n_os.environ.pop("PROV_RUNS_DIR", None)\n')
    work = tmp_path / "w"
    out = reproduce(tiny_bundle, Options(code=code, workdir=work, steps=2))
    assert out.bundle is not None and out.bundle.parent == work / "code" / "elsewhere", out.headline
    assert out.exit_status == 1 and out.verdict == NOT_CLAIMED  # it ran and matched; other code: no claim
    assert out.report.reproduction["path"] == str(out.bundle) and not out.report.reproduction["where_expected"]
    assert f"bundle written to {out.bundle}" in out.headline
    assert (out.bundle / REPORT).is_file() and out.report.scope["steps_checked"] == 2


def test_a_bundle_failing_its_consistency_audit_never_exits_0(bundle_copy: Path, tmp_path: Path) -> None:
    shutil.rmtree(bundle_copy / formats.MODEL_DIR)  # "completed", without its final model
    seal_folder(bundle_copy)
    said: list[str] = []
    out = reproduce(bundle_copy, Options(workdir=tmp_path / "w", steps=2), said.append)
    assert out.exit_status == 1 and out.verdict == NOT_CLAIMED, out.headline
    causes = [out.report.cause, *out.report.other_causes]
    assert [c["kind"] for c in causes] == ["audit"] and "consistency audit" in out.headline
    assert out.report.original["consistency_failures"]
    assert any(line.startswith("audit: consistency fails:") for line in said)


def test_steps_on_a_resumed_run(tiny_bundle: Path, tmp_path: Path) -> None:
    from conftest import train

    k = min(e["step"] for e in formats.read_json(tiny_bundle / formats.CHECKPOINT_INDEX)["checkpoints"])
    train(tmp_path, f"run.resume_from={tiny_bundle / formats.checkpoint_name(k)}")
    resumed = only_run(tmp_path / "runs")
    assert min(losses(resumed)) == k + 1
    out = reproduce(resumed, Options(workdir=tmp_path / "w", steps=2))
    assert out.exit_status == 0 and out.verdict == BITWISE, out.headline
    scope = out.report.scope
    assert (scope["first_step"], scope["last_step"], scope["steps_checked"]) == (k + 1, k + 2, 2)


def test_unreadable_bundle_is_refused_without_traceback_or_work_folder(bundle_copy: Path, tmp_path: Path) -> None:
    def drop_digest(o):
        del o["checkpoints"][0]["sha256"]

    index = formats.read_json(bundle_copy / formats.CHECKPOINT_INDEX)
    drop_digest(index)
    formats.atomic_write_json(bundle_copy / formats.CHECKPOINT_INDEX, index)
    seal_folder(bundle_copy)
    work = tmp_path / "a" / "b"
    proc = cli("reproduce", str(bundle_copy), "--workdir", str(work), tmp=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    assert "verdict: refused (nothing ran)" in proc.stdout
    assert not (tmp_path / "a").exists()  # nothing left behind, not even the parent it created


def test_package_differences_are_named_before_the_run(bundle_copy: Path, happy: dict) -> None:
    from provenance.reproduce import env_check

    env = formats.read_json(bundle_copy / formats.ENV_JSON)
    env["packages"]["evaluate"] = "0.4.0"  # installed only where the original ran; its training never imported it
    env["imported_distributions"] = {n: v for n, v in env["packages"].items() if n in ("numpy", "torch")}
    formats.atomic_write_json(bundle_copy / formats.ENV_JSON, env)
    seal_folder(bundle_copy)
    orig = read_original(bundle_copy, root_of(bundle_copy))
    said: list[str] = []
    env_check(orig, {}, Options(), said.append)
    assert any("package evaluate" in line and "not imported by the training" in line for line in said), said
    assert not any("no bitwise claim will be made" in line for line in said)
    last = max(losses(bundle_copy))
    assert decide(orig, Path(happy["doc"]["bundle"]), Plan(1, None, last), 0, [])["verdict"] == BITWISE
    _with_other_numpy(bundle_copy)  # numpy is imported: known before the run, and no claim after it
    orig = read_original(bundle_copy, root_of(bundle_copy))
    said.clear()
    env_check(orig, {}, Options(), said.append)
    assert any("known before the run: no bitwise claim will be made across package numpy 0.0.1" in line
               for line in said), said


# --- issue 15: tolerances -------------------------------------------------------------------------------


def test_bad_tolerance_is_refused_before_anything_runs(tiny_bundle: Path, tmp_path: Path) -> None:
    for bad, says in (("loss=abc,ckpt=1e-3", "loss='abc' is not a number"), ("loss=1e-3", "give both"),
                      ("speed=3", "expected auto, bitwise or loss=<rel>,ckpt=<rel>"), ("loss=-1,ckpt=0", "≥ 0")):
        work = tmp_path / bad.replace("=", "_").replace(",", "_")
        proc = cli("reproduce", str(tiny_bundle), "--workdir", str(work), "--tolerance", bad, tmp=tmp_path)
        assert proc.returncode == 2 and f"--tolerance {bad!r}" in proc.stderr and says in proc.stderr, proc.stderr
        assert "verdict: refused (nothing ran)" in proc.stdout and not work.exists()


def test_checkpoints_compared_tensor_by_tensor(tiny_bundle: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from provenance.reproduce import compare_checkpoints

    k = min(e["step"] for e in formats.read_json(tiny_bundle / formats.CHECKPOINT_INDEX)["checkpoints"])
    src = tiny_bundle / formats.checkpoint_name(k)
    same = compare_checkpoints(src, src)
    assert same["max_rel_l2"] == 0.0 and not same["worst"] and same["tensors"] > 3
    tensors = load_file(str(src))
    name = next(n for n, t in tensors.items() if n.startswith("model.") and t.dtype == torch.float32 and t.numel() > 8)
    original = tensors[name].clone()
    tensors[name] = original * 1.001
    out = tmp_path / "perturbed.safetensors"
    save_file(tensors, str(out))
    cmp = compare_checkpoints(src, out)
    expected = float((original.double() * 0.001).norm() / original.double().norm())
    assert cmp["worst"][0]["tensor"] == name and abs(cmp["worst"][0]["rel_l2"] - expected) < 1e-6
    assert len(cmp["worst"]) == 1 and not cmp["mismatched"]
    tensors[name] = original[:1]
    save_file(tensors, str(out))
    assert compare_checkpoints(src, out)["mismatched"][0]["tensor"] == name


def test_a_resumed_run_reproduces_at_another_thread_count(tiny_bundle: Path, tmp_path: Path) -> None:
    """An original that itself continued a checkpoint (run.resume_from; a torchrun relaunch is the same) is
    restored by its reproduction: a --set across that restore (run.threads, for --tolerance) is allowed by
    prov reproduce, as with --from-step; the training refused the resume before (run.threads changed)."""
    from conftest import train

    k = min(e["step"] for e in formats.read_json(tiny_bundle / formats.CHECKPOINT_INDEX)["checkpoints"])
    train(tmp_path, f"run.resume_from={tiny_bundle / formats.checkpoint_name(k)}")
    resumed = only_run(tmp_path / "runs")
    out = reproduce(resumed, Options(workdir=tmp_path / "w", steps=1, sets=["run.threads=1"], tolerance="auto"))
    assert out.exit_status == 0 and out.verdict in (BITWISE, WITHIN), out.headline
    assert out.report.scope["first_step"] == k + 1


@pytest.mark.slow
def test_a_chain_reproduces_within_tolerance_at_another_thread_count(tiny_bundle: Path, tmp_path: Path) -> None:
    """--chain --tolerance: each segment's reproduction is within the bounds, not bitwise, so the checkpoint the
    next segment continued from (the original's own) is not the reproduction's byte for byte; the link holds
    within tolerance (before, every such chain ended 'DIFFERS' and exit 1)."""
    from conftest import train

    from provenance.reproduce.chain import reproduce_chain

    k = min(e["step"] for e in formats.read_json(tiny_bundle / formats.CHECKPOINT_INDEX)["checkpoints"])
    train(tmp_path, f"run.resume_from={tiny_bundle / formats.checkpoint_name(k)}")
    resumed = only_run(tmp_path / "runs")
    out = reproduce_chain(resumed, Options(workdir=tmp_path / "w", sets=["run.threads=1"], tolerance="auto"))
    assert out.exit_status == 0, out.headline
    first, second = out.segments
    assert first["link"]["step"] == k and (first["link"]["matches"] or first["link"]["within_tolerance"])
    assert {first["verdict"], second["verdict"]} <= {BITWISE, WITHIN}


def test_an_order_divergence_where_the_original_has_no_batch_says_so() -> None:
    """The replay's 'the original recorded no batch for this step' has no sample to name: the cause said
    'chose sample None where the original had None (position None)'."""
    from provenance.reproduce.verdict import find_causes

    d = {"data": {"datasets": {}, "only_a": [], "only_b": []}, "metrics": {"other_keys": {}},
         "config": {"changed": [], "only_a": [], "only_b": []}, "code": {"changed": [], "only_a": [], "only_b": []},
         "environment": {"differences": []}}
    none = find_causes(d, {"step": 1, "kind": "order", "detail": "the original recorded no batch for this step"}, {})
    assert none[0]["kind"] == "order" and "None" not in none[0]["summary"], none
    assert "the original recorded no batch at step 1" in none[0]["summary"]
    some = find_causes(d, {"step": 3, "kind": "order", "position": 2, "recorded_sample": 7, "computed_sample": 9}, {})
    assert some[0]["summary"] == ("different data order: at step 3 the training chose sample 9 where the original "
                                  "had 7 (position 2)")


def test_a_reproduction_that_stops_early_audits(tiny_bundle: Path, tmp_path: Path) -> None:
    """--steps N (and every --segments interval) stops the training after the steps it checks, before it saves
    its final model: run.json says so (stopped_by_replay) and the audit's model check does not fail it (it
    failed 'a completed run saves its final model')."""
    from provenance.audit import audit

    out = reproduce(tiny_bundle, Options(workdir=tmp_path / "w", steps=2))
    assert out.exit_status == 0 and out.bundle is not None, out.headline
    info = formats.read_json(out.bundle / formats.RUN_JSON)
    assert info["status"] == "completed" and info["stopped_by_replay"]["after_step"] == 2
    rep = audit(out.bundle)
    assert rep.integrity.ok and rep.consistency_ok, rep.failures()
    assert rep.check("model").status == "skip"
