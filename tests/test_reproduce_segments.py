"""Issue 15 (item 4): segment verification: `prov reproduce --segments`, `--jobs`, `--segment I` + `--merge`,
`--sample N --seed S`, and the bad inputs.

Every interval is a real (tiny) reproduction. The originals: the session's tiny_bundle (checkpoints at
steps 6 and 12: two intervals), and two runs of the tiny config with checkpoints every 4 steps (three
intervals) trained with a fault injected from outside the recorded code (a `sitecustomize` on
PYTHONPATH that perturbs one weight after an optimizer step): once at step 5 only (a one-off fault, as a
transient hardware error would be), and after every step from step 5 on (a persistent one). The fault
is not in the bundle's code, so a reproduction does not repeat it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, offline_env, only_run, train

from provenance import formats
from provenance.bundle import seal_folder
from provenance.reproduce import BITWISE, DIVERGED, INCOMPLETE, WITHIN, Options
from provenance.reproduce.segments import (
    SEGMENTS_REPORT,
    SegmentOptions,
    choose_sample,
    coverage,
    reproduce_segments,
)

HOOK = '''
import os
import torch

_STEP, _MODE = int(os.environ["FAULT_STEP"]), os.environ["FAULT_MODE"]
_step = torch.optim.AdamW.step
_calls = [0]


def step(self, *args, **kwargs):
    out = _step(self, *args, **kwargs)
    _calls[0] += 1
    if _calls[0] == _STEP or (_MODE == "persistent" and _calls[0] > _STEP):
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] += 1e-2
    return out


torch.optim.AdamW.step = step
'''


def cli(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provenance.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=offline_env(tmp), timeout=900)


def faulty_original(tmp: Path, mode: str) -> Path:
    """The tiny config with checkpoints at 4, 8, 12, trained with a weight perturbed after step 5 (once or
    from then on)."""
    hook = tmp / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    env = {**offline_env(tmp), "PYTHONPATH": str(hook), "FAULT_STEP": "5", "FAULT_MODE": mode}
    train(tmp, "train.checkpoint_every=4", env=env)
    return only_run(tmp / "runs")


def verdicts(doc: dict) -> list[tuple[int, str]]:
    return [(r["index"], r["verdict"]) for r in doc["segments"]["results"]]


@pytest.fixture(scope="module")
def all_intervals(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("segs")
    proc = cli("reproduce", str(tiny_bundle), "--segments", "--jobs", "2", "--workdir", str(tmp / "w"), "--json",
               "--quiet", tmp=tmp)
    return {"proc": proc, "doc": json.loads(proc.stdout) if proc.stdout.strip() else None, "tmp": tmp}


def test_every_interval_reproduces(all_intervals: dict, tiny_bundle: Path) -> None:
    proc, doc = all_intervals["proc"], all_intervals["doc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert doc["verdict"] == BITWISE and doc["bitwise"] and doc["exit_status"] == 0
    seg = doc["segments"]
    ckpts = sorted(e["step"] for e in formats.read_json(tiny_bundle / formats.CHECKPOINT_INDEX)["checkpoints"])
    last = max(r["step"] for r in formats.read_jsonl(tiny_bundle / formats.METRICS))
    assert ckpts == [6, 12] and last == 12
    assert [(i["from_step"], i["to_step"], i["restores"]) for i in seg["intervals"]] == [(0, 6, False),
                                                                                       (6, 12, True)]
    assert seg["mode"] == "all" and seg["checked"] == [0, 1] and seg["jobs"] == 2
    assert seg["first_divergent_interval"] is None and seg["pattern"]["kind"] == "none"
    assert not seg["coverage"]["not_checked"]
    for r in seg["results"]:
        assert r["verdict"] == BITWISE and r["first_divergence"] is None
        assert r["end_checkpoint"]["match"] and r["end_checkpoint"]["sha256"] == r["end_checkpoint"]["sha256_recorded"]
        assert r["scope"]["first_step"] == r["from_step"] + 1 and r["scope"]["last_step"] == r["to_step"]
        repro = Path(r["bundle"])  # each interval is an ordinary reproduction, with its own sealed report
        own = formats.read_json(repro / "reproduction/report.json")
        assert own["verdict"] == BITWISE and own["scope"]["from_step"] == (6 if r["restores"] else None)
        steps = sorted(m["step"] for m in formats.read_jsonl(repro / formats.METRICS))
        assert steps == list(range(r["from_step"] + 1, r["to_step"] + 1))  # only its own steps ran
    assert doc["scope"]["steps_checked"] == 12 and doc["scope"]["checkpoints_checked"] == 2
    written = formats.read_json(Path(doc["report_path"]))
    assert Path(doc["report_path"]) == all_intervals["tmp"] / "w" / SEGMENTS_REPORT
    assert written["verdict"] == doc["verdict"] and written["segments"]["results"] == seg["results"]


def test_segment_reports_merge_to_the_same_verdict(all_intervals: dict, tiny_bundle: Path, tmp_path: Path) -> None:
    full = all_intervals["doc"]
    works = []
    for i in (1, 0):
        work = tmp_path / f"w{i}"
        proc = cli("reproduce", str(tiny_bundle), "--segment", str(i), "--workdir", str(work), "--quiet", tmp=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert f"interval {i}: steps" in proc.stdout and f"report: {work / SEGMENTS_REPORT}" in proc.stdout
        one = formats.read_json(work / SEGMENTS_REPORT)
        assert one["segments"]["mode"] == "one" and one["segments"]["checked"] == [i]
        assert one["segments"]["coverage"]["not_checked"] == [1 - i]
        works.append(work)
    proc = cli("reproduce", "--merge", str(works[0] / SEGMENTS_REPORT), str(works[1]), "--json", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    merged = json.loads(proc.stdout)
    assert merged["verdict"] == full["verdict"] and merged["headline"] == full["headline"]
    assert merged["exit_status"] == 0 and merged["bitwise"] and merged["segments"]["mode"] == "merged"
    keep = ("index", "from_step", "to_step", "verdict", "first_divergence", "end_checkpoint")
    assert [{k: r[k] for k in keep} for r in merged["segments"]["results"]] == \
        [{k: r[k] for k in keep} for r in full["segments"]["results"]]
    assert merged["scope"] == full["scope"] and merged["original"]["root_digest"] == full["original"]["root_digest"]
    assert [m["intervals"] for m in merged["segments"]["merged_from"]] == [[1], [0]]
    # one report only: interval 0 is missing, never "reproduced"
    proc = cli("reproduce", "--merge", str(works[0]), tmp=tmp_path)
    assert proc.returncode == 1 and f"verdict: {INCOMPLETE}: no report for interval(s) 0" in proc.stdout
    # refusals name the file: the same interval twice, another bundle, not a report, with a BUNDLE
    proc = cli("reproduce", "--merge", str(works[0]), str(all_intervals["tmp"] / "w"), tmp=tmp_path)
    assert proc.returncode == 2 and "interval 1 is also in" in proc.stderr and str(works[0]) in proc.stderr
    other = tmp_path / "other.json"
    doc = formats.read_json(works[1] / SEGMENTS_REPORT)
    doc["original"]["root_digest"] = "0" * 64
    formats.atomic_write_json(other, doc)
    proc = cli("reproduce", "--merge", str(works[0]), str(other), tmp=tmp_path)
    assert proc.returncode == 2 and f"--merge {other}: reports on bundle sha256:{'0' * 64}" in proc.stderr
    assert "reports of different bundles cannot be merged" in proc.stderr
    plain = Path(all_intervals["doc"]["segments"]["results"][0]["bundle"]) / "reproduction/report.json"
    proc = cli("reproduce", "--merge", str(plain), tmp=tmp_path)
    assert proc.returncode == 2 and f"--merge {plain}: not a segment report" in proc.stderr
    proc = cli("reproduce", str(tiny_bundle), "--merge", str(works[0]), tmp=tmp_path)
    assert proc.returncode == 2 and "--merge: joins existing reports and runs nothing; not with BUNDLE" in proc.stderr


def test_one_off_fault_is_confined_to_its_interval(tmp_path: Path) -> None:
    orig = faulty_original(tmp_path, "once")
    out = reproduce_segments(orig, Options(workdir=tmp_path / "w"), SegmentOptions(jobs=2))
    assert out.exit_status == 1, out.headline
    seg = out.report.segments
    assert [(r["from_step"], r["to_step"]) for r in seg["results"]] == [(0, 4), (4, 8), (8, 12)]
    assert [(r["index"], r["verdict"]) for r in seg["results"]] == [(0, BITWISE), (1, DIVERGED), (2, BITWISE)]
    # the weight changed after step 5's update: the loss of step 6 is the first to differ
    first = out.report.first_divergence
    assert (first["interval"], first["step"], first["kind"]) == (1, 6, "loss") and first["order_matched"]
    assert seg["first_divergent_interval"] == 1 and seg["pattern"]["kind"] == "one-off"
    assert not seg["results"][1]["end_checkpoint"]["match"] and seg["results"][2]["end_checkpoint"]["match"]
    assert out.headline.startswith("diverged in interval 1 of 3 (steps 5–8), first at step 6 (loss)")
    assert "confined to interval 1" in out.headline
    assert formats.read_json(tmp_path / "w" / SEGMENTS_REPORT)["segments"]["pattern"]["kind"] == "one-off"


@pytest.mark.slow  # ~25 s on 2 cores; the one-off fault keeps interval localisation in the default suite
def test_persistent_fault_shows_in_every_later_interval(tmp_path: Path) -> None:
    orig = faulty_original(tmp_path, "persistent")
    out = reproduce_segments(orig, Options(workdir=tmp_path / "w"), SegmentOptions(jobs=2))
    assert out.exit_status == 1, out.headline
    seg = out.report.segments
    assert [(r["index"], r["verdict"]) for r in seg["results"]] == [(0, BITWISE), (1, DIVERGED), (2, DIVERGED)]
    firsts = [(r["first_divergence"]["step"], r["first_divergence"]["kind"]) for r in seg["results"][1:]]
    # interval 2 restarts from the original's checkpoint of step 8: step 9 matches, the fault after it shows at 10
    assert firsts == [(6, "loss"), (10, "loss")]
    assert out.report.first_divergence["interval"] == 1 and seg["pattern"]["kind"] == "persistent"
    assert "persistent: every interval checked from interval 1 on diverges (1, 2)" in out.headline
    # a seeded sample of one interval: the same seed chooses the same interval; interval 0 alone reproduces,
    # and the report says what that cannot rule out (this very fault)
    seed = next(s for s in range(100) if choose_sample(3, 1, s) == [0])
    proc = cli("reproduce", str(orig), "--sample", "1", "--seed", str(seed), "--workdir", str(tmp_path / "s"),
               "--json", "--quiet", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["verdict"] == BITWISE and not doc["bitwise"]  # a sample: no bitwise claim for the whole run
    assert doc["segments"]["sample"] == {**doc["segments"]["sample"], "n": 1, "seed": seed, "chosen": [0]}
    cov = doc["segments"]["coverage"]
    assert cov["not_checked"] == [1, 2] and cov["one_off_miss_probability"] == pytest.approx(2 / 3)
    assert any("starts after interval 0 (in 1, 2)" in line for line in cov["cannot_rule_out"])
    assert "not checked: interval(s) 1, 2" in doc["headline"]


def test_a_perturbed_checkpoint_is_named_by_its_interval(bundle_copy: Path, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from provenance.hashing import sha256_file

    path = bundle_copy / formats.checkpoint_name(6)  # re-saved with one weight changed, index and seal redone
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    name = "model.transformer.h.0.mlp.c_fc.weight"  # not lm_head.weight: it is tied to (loaded as) wte's
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(path), metadata=metadata)
    index = formats.read_json(bundle_copy / formats.CHECKPOINT_INDEX)
    for e in index["checkpoints"]:
        if e["step"] == 6:
            e.update(sha256=sha256_file(path), size=path.stat().st_size)
    formats.atomic_write_json(bundle_copy / formats.CHECKPOINT_INDEX, index)
    seal_folder(bundle_copy)
    out = reproduce_segments(bundle_copy, Options(workdir=tmp_path / "w"), SegmentOptions(jobs=2))
    assert out.exit_status == 1, out.headline
    seg = out.report.segments
    first = [(r["verdict"], (r["first_divergence"] or {}).get("step"), (r["first_divergence"] or {}).get("kind"))
             for r in seg["results"]]
    # interval 0's steps all reproduce but the checkpoint it saves is not the recorded one; interval 1,
    # restored from the recorded (perturbed) checkpoint, differs from its first step
    assert first == [(DIVERGED, 6, "checkpoint"), (DIVERGED, 7, "loss")]
    assert "only the checkpoint of step 6 differs from the recorded one" in out.headline


def test_an_interval_under_a_tolerance_across_another_thread_count(tiny_bundle: Path, tmp_path: Path) -> None:
    # the checkpoint of step 6 (recorded at 2 threads) restored at 1 thread: prov reproduce allows the change
    # across the restore (run.allow_resume_change), which is not a difference; the numbers are real CPU noise
    out = reproduce_segments(tiny_bundle, Options(workdir=tmp_path / "w", sets=["run.threads=1"], tolerance="auto"),
                             SegmentOptions(segment=1))
    assert out.exit_status == 0 and out.verdict == WITHIN, out.headline
    (r,) = out.report.segments["results"]
    assert (r["index"], r["verdict"], r["scope"]["steps_checked"], r["scope"]["checkpoints_checked"]) == \
        (1, WITHIN, 6, 1)
    assert r["tolerance"]["mode"] == "bounds" and "thread count 2 → 1" in r["tolerance"]["why"]
    assert r["cause"]["kind"] == "environment"  # not config: run.allow_resume_change is prov reproduce's own
    assert out.report.segments["coverage"]["not_checked"] == [0]


def test_sample_choice_is_seeded() -> None:
    assert choose_sample(10, 3, 7) == choose_sample(10, 3, 7)
    assert len({tuple(choose_sample(10, 3, s)) for s in range(20)}) > 1
    for s in range(20):
        got = choose_sample(10, 3, s)
        assert got == sorted(got) and len(set(got)) == 3 and all(0 <= i < 10 for i in got)
    assert choose_sample(4, 4, 1) == [0, 1, 2, 3]
    cov = coverage([2, 5], 8, [])
    assert cov["one_off_miss_probability"] == 0.75 and cov["not_checked"] == [0, 1, 3, 4, 6, 7]
    assert any("interval 5 or earlier" in line for line in cov["rules_out"])
    assert any("after interval 5 (in 6, 7)" in line for line in cov["cannot_rule_out"])


def test_bad_segment_requests_are_refused_naming_the_argument(tiny_bundle: Path, bundle_copy: Path,
                                                              tmp_path: Path) -> None:
    cases = [
        (["--segment", "2"], "--segment 2: out of range: the original has 2 intervals"),
        (["--segment", "-1"], "--segment -1: out of range"),
        (["--sample", "3"], "--sample 3: larger than the number of intervals (2)"),
        (["--sample", "0"], "--sample 0: must be at least 1"),
        (["--segments", "--seed", "3"], "--seed: only with --sample N"),
        (["--jobs", "2"], "--jobs 2: only with --segments or --sample N"),
        (["--segments", "--jobs", "0"], "--jobs 0: must be at least 1"),
        (["--segments", "--from-step", "6"], "--from-step: not with --segments"),
        (["--segments", "--steps", "3"], "--steps: not with --segments"),
        (["--segment", "0", "--sample", "1"], "--segment: not with --sample"),
        (["--segment", "0", "--jobs", "2"], "--jobs 2: --segment I checks one interval"),
        (["--segments", "--tolerance", "loss=x"], "--tolerance 'loss=x'"),
        (["--segments", "--set", "train.nope=1"], "the recorded config has no key 'train.nope'"),
        (["--segments", "--chain"], "--chain: not with segment verification"),
    ]
    for i, (flags, says) in enumerate(cases):
        work = tmp_path / f"w{i}"
        proc = cli("reproduce", str(tiny_bundle), *flags, "--workdir", str(work), tmp=tmp_path)
        assert proc.returncode == 2 and says in proc.stderr, (flags, proc.stdout, proc.stderr)
        assert "verdict: refused (nothing ran)" in proc.stdout and not work.exists(), flags
    # a bundle with no checkpoint before its last step: one interval only
    index = formats.read_json(bundle_copy / formats.CHECKPOINT_INDEX)
    index["checkpoints"] = [e for e in index["checkpoints"] if e["step"] == 12]
    formats.atomic_write_json(bundle_copy / formats.CHECKPOINT_INDEX, index)
    shutil.rmtree(bundle_copy / formats.checkpoint_name(6), ignore_errors=True)
    (bundle_copy / formats.checkpoint_name(6)).unlink(missing_ok=True)
    seal_folder(bundle_copy)
    work = tmp_path / "none"
    proc = cli("reproduce", str(bundle_copy), "--segments", "--workdir", str(work), tmp=tmp_path)
    assert proc.returncode == 2 and "--segments: the original saved no checkpoint between its first and last step" \
        in proc.stderr, proc.stderr
    assert not work.exists()
    proc = cli("reproduce", str(bundle_copy), "--segments", "--json", "--workdir", str(work), tmp=tmp_path)
    assert proc.returncode == 2 and json.loads(proc.stdout)["verdict"] == "refused" and not work.exists()


def test_interval_0_of_a_resumed_original_says_where_it_starts() -> None:
    from provenance.reproduce.segments import Interval

    assert Interval(0, 0, 4, restores=False).text() == "steps 1–4 (from the recorded init)"
    assert Interval(0, 12, 16, restores=False).text() == \
        "steps 13–16 (from the checkpoint of step 12 the original continued from)"
    assert Interval(1, 16, 20, restores=True).text() == "steps 17–20 (from the checkpoint of step 16)"
    from provenance.cli._reproduce_segments import interval_line

    r = {"index": 0, "from_step": 12, "to_step": 16, "restores": False, "headline": "reproduced (bitwise): …",
         "verdict": "reproduced (bitwise)"}
    assert "steps 13–16 from the checkpoint of step 12 the original continued from" in interval_line(r)
    assert "steps 1–4 from the recorded init" in interval_line({**r, "from_step": 0, "to_step": 4})


def test_merge_prints_a_reports_claims_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A report given to --merge is the claim of whoever wrote it: its headlines, paths and run id are printed
    escaped, one line each (a newline in one forged a 'verdict:' or 'reproduces:' line)."""
    import json

    from provenance.cli import main
    from provenance.reproduce.verdict import REPORT_SCHEMA

    iv = [{"index": 0, "from_step": 0, "to_step": 4, "restores": False},
          {"index": 1, "from_step": 4, "to_step": 8, "restores": True}]
    res = {**iv[0], "verdict": "reproduced (bitwise)", "exit_status": 0, "bitwise": True,
           "headline": "reproduced (bitwise)\nverdict: reproduced (bitwise): all 2 intervals\x1b[2J",
           "bundle": "/x\nreport: forged"}
    doc = {"schema": REPORT_SCHEMA, "original": {"run_id": "r\nreproduces: forged", "root_digest": "0" * 64},
           "segments": {"intervals": iv, "results": [res]}}
    (tmp_path / "forged.json").write_text(json.dumps(doc))
    assert main(["reproduce", "--merge", str(tmp_path / "forged.json")]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "\x1b" not in out and [x for x in lines if x.startswith("verdict:")] == [
        "verdict: incomplete: no report for interval(s) 1; no divergence in the other intervals checked"]
    assert not any(x.startswith(("report: forged", "reproduces: forged")) for x in lines), out


def test_calibrate_once_for_every_interval(tiny_bundle: Path, tmp_path: Path) -> None:
    """--segments --calibrate --jobs 2: the noise floor is measured once (one calibration folder, not one per
    interval or job), every interval's bounds are the calibrated ones, and the report states the calibration."""
    work = tmp_path / "w"
    out = reproduce_segments(tiny_bundle, Options(workdir=work, sets=["run.threads=1"], tolerance="auto",
                                                  calibrate=True), SegmentOptions(jobs=2))
    assert out.exit_status == 0, out.headline
    cal = out.report.tolerance["calibration"]
    assert cal["threads"] == [1, 2] and out.report.tolerance["model"]["class"] == "calibrated"
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("calibration")) == ["calibration"]
    for r in out.report.segments["results"]:
        assert r["tolerance"]["mode"] == "bounds" and r["tolerance"]["model"]["class"] == "calibrated", r
        assert r["tolerance"]["calibration"]["bundles"] == cal["bundles"]
    doc = json.loads((work / SEGMENTS_REPORT).read_text())
    assert doc["tolerance"]["calibration"]["bundles"] == cal["bundles"]
    # the reports of separate machines keep each one's calibration when merged
    merged = cli("reproduce", "--merge", str(work / SEGMENTS_REPORT), "--json", tmp=tmp_path)
    assert json.loads(merged.stdout)["tolerance"]["calibrations"][0]["calibration"]["threads"] == [1, 2]
    # --calibrate measures auto's bounds: not with another tolerance
    proc = cli("reproduce", str(tiny_bundle), "--segments", "--calibrate", "--tolerance", "bitwise", "--workdir",
               str(tmp_path / "x"), tmp=tmp_path)
    assert proc.returncode == 2 and "--calibrate sets the bounds of --tolerance auto" in proc.stderr, proc.stderr


OWN_SCRIPT = """
import torch

from provenance import start_run

with start_run({"lr": 0.05}, name="own", runs_dir="runs", seed=1, threads=2, code_root=".") as run:
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(256, 16)
    y = x.sin().sum(1, keepdim=True)
    for step in range(1, 7):
        ids = run.batch(step, lambda s: [(s * 7 + i) % 256 for i in range(64)])
        loss = ((model(x[ids]) - y[ids]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.log(step, loss=loss.item())
        if step in (3, 6):
            run.checkpoint(step, model, opt)
    run.save_model(model)
"""


def test_calibrate_a_start_run_script_without_run_threads(tmp_path: Path) -> None:
    """--calibrate of a start_run script whose own config has no run.threads (it passes threads=2): each
    calibration run gets its thread count through PROV_THREADS, which start_run reads (before, --calibrate ran
    the original with --set run.threads=N, refused for such a config, and on the plain path only after the
    reproduction had trained); each calibration bundle records the count it was given."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(OWN_SCRIPT)
    env = offline_env(tmp_path)
    env.pop("PROV_THREADS", None)
    proc = subprocess.run([sys.executable, "train.py"], cwd=src, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = only_run(src / "runs")
    assert "run" not in formats.read_json(bundle / formats.CONFIG_JSON).get("values", {"lr": 0.05})
    work = tmp_path / "w"
    out = cli("reproduce", str(bundle), "--calibrate", "--tolerance", "auto", "--workdir", str(work), "--json",
              tmp=tmp_path)
    doc = json.loads(out.stdout) if out.stdout.startswith("{") else {}
    assert out.returncode == 0 and doc.get("verdict") == BITWISE, out.stdout[-2000:] + out.stderr[-3000:]
    cal = doc["tolerance"]["calibration"]
    assert cal["threads"] == [2, 1], cal
    ran_at = [formats.read_json(Path(b) / formats.RUN_JSON)["determinism"]["num_threads"] for b in cal["bundles"]]
    assert ran_at == [2, 1]  # PROV_THREADS won over the script's threads=2 in the second run


@pytest.mark.parametrize("trained", [False, True])
def test_a_refused_calibration_says_whether_it_trained(trained: bool, tiny_bundle: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """--segments --calibrate whose calibration is refused: refused before its training started, it leaves no
    work folder and says nothing ran; after its training ran (exit status 1 here), the folder is kept and the
    verdict says a training ran (before, the folder was kept and the verdict said "nothing ran")."""
    import provenance.reproduce as rp
    from provenance.cli import main

    def fake(bundle: Path, opts: Options, say: object = None) -> rp.Outcome:  # one calibration run
        report = rp.Report.refusal("the calibration's training failed", {"path": str(bundle)})
        if trained:
            opts.workdir.mkdir(parents=True)  # type: ignore[union-attr]
            (opts.workdir / "training.log").write_text("error: boom\n")  # type: ignore[operator]
            report.training_exit_status = 1
        return rp.Outcome(2, rp.REFUSED, f"refused: {report.headline}", report)

    monkeypatch.setattr(rp, "reproduce", fake)
    work = tmp_path / "w"
    out = reproduce_segments(tiny_bundle, Options(workdir=work, tolerance="auto", calibrate=True), SegmentOptions())
    assert out.exit_status == 2 and "the calibration run at" in out.headline, out.headline
    assert work.exists() is trained and (out.workdir == work if trained else out.workdir is None)
    assert out.report.training_exit_status == (1 if trained else None)
    assert ("the calibration's training ran" in out.headline) is trained
    if trained:
        shutil.rmtree(work)
    assert main(["reproduce", str(tiny_bundle), "--segments", "--calibrate", "--tolerance", "auto",
                 "--workdir", str(work), "--quiet"]) == 2
    printed = capsys.readouterr().out
    assert ("verdict: refused (nothing ran)" in printed) is not trained, printed
    assert ("verdict: refused after a training ran (exit status 1); work folder kept: " + str(work) in printed) \
        is trained, printed


def test_prov_threads_sets_start_runs_thread_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$PROV_THREADS wins over start_run's threads argument; a value that is not a positive integer is a
    one-line ConfigError naming the variable, before anything is written."""
    from provenance import start_run
    from provenance.config import ConfigError

    kw = {"name": "t", "runs_dir": tmp_path / "runs", "threads": 2, "code_root": tmp_path, "capture_output": False}
    monkeypatch.setenv("PROV_THREADS", "1")
    assert start_run({}, **kw).threads == 1  # type: ignore[arg-type]
    monkeypatch.setenv("PROV_THREADS", "0")
    with pytest.raises(ConfigError, match=r"PROV_THREADS='0': not a positive integer"):
        start_run({}, **kw)  # type: ignore[arg-type]
    monkeypatch.delenv("PROV_THREADS")
    assert start_run({}, **kw).threads == 2  # type: ignore[arg-type]
    assert not (tmp_path / "runs").exists()
