"""`prov reproduce`: re-run a sealed bundle's training and say whether it reproduced, and if not, why.

    outcome = reproduce("runs/<run_id>", Options(steps=None, from_step=None))
    outcome.exit_status      # 0 reproduced (bitwise), 1 diverged / not claimed / incomplete, 2 refused
    outcome.report           # what reproduction/report.json holds (or why nothing ran)

In order, and nothing runs until every check before the run has passed:

1. audit the bundle (provenance.audit); an integrity failure refuses it;
2. materialise the code from the bundle's source snapshot (or capture --code DIR the
   way a run captures its code), in a folder of its own: the original checkout is
   not needed;
3. compare the environment with the recorded one and list the differences
   (--strict-env: any difference refuses);
4. locate every dataset (--data-root, the files bundled in the bundle, the recorded
   path, or regeneration by the training script) and verify every file against the
   original's data manifest: a mismatch names the file and both digests, and refuses;
5. run the recorded training command with the recorded (resolved) config, seeds,
   threads and determinism settings, under PROV_REPLAY=<original> (provenance.replay):
   the run replays the recorded data order and compares every step's batch, the loss
   (bitwise) and the sha256 of every checkpoint the original saved;
6. decide the verdict from the replay's summary and a diff of the two bundles
   (provenance.diff), write reproduction/report.json into the new bundle and re-seal it.

docs/reproduce.md explains the choices. This module runs training only as a child
process; it never imports torch or the training package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from typing import Any

import yaml

from provenance import diff as pdiff
from provenance import formats
from provenance.bundle import folder_lock, seal_folder_locked
from provenance.capture import env as cenv
from provenance.capture.code import capture_code, git_toplevel, materialise_snapshot
from provenance.hashing import hash_files
from provenance.replay import REPLAY_ENV, STEPS_LOG, STOP_ENV, SUMMARY, first_divergence

REPORT = "reproduction/report.json"
REPORT_SCHEMA = "fullyopen.reproduction-report/v1"
SUMMARY_SCHEMA = "fullyopen.reproduction/v1"

EXIT_REPRODUCED, EXIT_DIVERGED, EXIT_REFUSED = 0, 1, 2
BITWISE = "reproduced (bitwise)"
DIVERGED = "diverged"
NOT_CLAIMED = "not claimed bitwise"
INCOMPLETE = "incomplete"
REFUSED = "refused"

# config keys that differ between an original and its reproduction by design (paths of this machine)
PATH_KEYS = frozenset({"run.runs_dir", "data.root", "run.resume_from"})
# config keys that set the thread count: a difference there is reported as environment
THREAD_KEYS = frozenset({"run.threads"})
# environment variables that can change the numbers: set to their recorded values in the child
# (only those whose prefix provenance.capture.env records, so that "absent" is known too)
NUMERIC_ENV_VARS = ("PYTHONHASHSEED", "OMP_NUM_THREADS", "OMP_DYNAMIC", "OMP_SCHEDULE", "MKL_NUM_THREADS",
                    "MKL_CBWR", "MKL_DYNAMIC", "OPENBLAS_NUM_THREADS", "KMP_AFFINITY", "KMP_BLOCKTIME",
                    "GOMP_CPU_AFFINITY", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                    "CUBLAS_WORKSPACE_CONFIG", "TOKENIZERS_PARALLELISM")
# torch settings the run applies itself from its config (determinism): compared after the run, not before
RUN_APPLIED_TORCH_KEYS = frozenset({"deterministic_algorithms", "deterministic_warn_only", "fill_uninitialized_memory",
                                    "cudnn_deterministic", "cudnn_benchmark"})
COPY_LIMIT = 256 << 20  # datasets larger than this are linked into the work folder, not copied


class Refused(Exception):
    """The reproduction was refused before anything ran (exit status 2); the message says why."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


@dataclass
class Options:
    steps: int | None = None  # check this many steps (from step 1, or after --from-step)
    from_step: int | None = None  # restore the original's checkpoint of this step and continue
    workdir: Path | None = None  # default: .cache/reproduce/<run_id>-<UTC time> under the current folder
    data_root: Path | None = None  # a folder holding the datasets' files
    sets: list[str] = field(default_factory=list)  # key=value config overrides (never bitwise)
    code: Path | None = None  # run this code folder instead of the bundle's snapshot (never bitwise)
    strict_env: bool = False  # any environment difference refuses
    python: str = sys.executable
    echo: Callable[[str], None] | None = None  # receives the training's output, line by line
    timeout: float | None = None


@dataclass
class Outcome:
    exit_status: int
    verdict: str
    headline: str
    report: dict[str, Any]
    bundle: Path | None = None  # the reproduction bundle
    root_digest: str | None = None
    workdir: Path | None = None


Say = Callable[[str], None]


# --- integrity (provenance.audit) --------------------------------------------------------------


def _audit(path: Path, say: Say) -> tuple[str, Any]:
    """Audit `path`; refuse on an integrity failure. Returns (root hex digest, report)."""
    from provenance.audit import AuditRefused, audit

    try:
        report = audit(path)
    except AuditRefused as exc:
        raise Refused(f"the audit refused the bundle: {exc}") from None
    i = report.integrity
    if not i.ok:
        problems = [f"missing: {d.name} (expected sha256:{d.expected})" for d in i.missing]
        problems += [f"not covered by the seal: {d.name} (sha256:{d.actual})" for d in i.extra]
        problems += [f"changed: {d.name} (expected sha256:{d.expected}, found sha256:{d.actual})" for d in i.changed]
        problems += [f"{f.file or ''}: {f.message}" for f in i.findings if f.level == "error"]
        if not i.sealed:
            problems.insert(0, "the bundle is not sealed (manifest.json is missing)")
        raise Refused(f"{path}: the bundle fails its integrity check: " + "; ".join(problems[:10])
                      + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""), failures=problems)
    warnings = [f"{c.name}: {e.message}" for c in report.checks for e in c.errors]
    say(f"audit: integrity ok ({i.files} files, root sha256:{i.root_manifest})")
    for w in warnings[:10]:
        say(f"audit: warning: consistency: {w}")
    return i.root_manifest or "", report


# --- reading the original ------------------------------------------------------------------------


@dataclass
class Original:
    root: Path
    root_digest: str
    run: dict[str, Any]
    config: dict[str, Any]
    argv: list[str]
    code: dict[str, Any]
    env: dict[str, Any]
    manifests: dict[str, dict[str, Any]]
    checkpoints: dict[int, str]
    metric_steps: list[int]


def _read_original(root: Path, digest: str) -> Original:
    def rj(rel: str, required: bool = True) -> Any:
        p = root / rel
        if not p.is_file():
            if required:
                raise Refused(f"{root}: {rel} is missing; this bundle cannot be reproduced")
            return {}
        try:
            return formats.read_json(p)
        except formats.FormatError as exc:
            raise Refused(str(exc)) from None

    cfg = rj(formats.CONFIG_JSON)
    if not isinstance(cfg.get("config"), dict):
        raise Refused(f"{root}: {formats.CONFIG_JSON} holds no resolved config")
    argv = cfg.get("argv")
    if not isinstance(argv, list) or len(argv) < 2 or not all(isinstance(a, str) for a in argv):
        raise Refused(f"{root}: {formats.CONFIG_JSON} does not record the command line (argv)")
    if not (root / formats.CODE_SNAPSHOT).is_file():
        raise Refused(f"{root}: {formats.CODE_SNAPSHOT} is missing: the code that ran is not in the bundle")
    index = rj(formats.CHECKPOINT_INDEX, required=False)
    ckpts = {int(e["step"]): e["sha256"] for e in index.get("checkpoints", [])}
    steps = [int(r["step"]) for r in formats.read_jsonl(root / formats.METRICS) if isinstance(r.get("step"), int)]
    return Original(root=root, root_digest=digest, run=rj(formats.RUN_JSON), config=cfg["config"], argv=argv,
                    code=rj(formats.CODE_JSON), env=rj(formats.ENV_JSON, required=False),
                    manifests=pdiff.data_manifests(root), checkpoints=ckpts, metric_steps=steps)


# --- the plan: steps, config overrides ----------------------------------------------------------


def _parse_sets(sets: list[str], config: dict[str, Any]) -> dict[str, Any]:
    from provenance.config import ConfigError, parse_override

    flat = pdiff.flatten(config)
    out: dict[str, Any] = {}
    for text in sets:
        try:
            key, value = parse_override(text)
        except ConfigError as exc:
            raise Refused(f"--set {text!r}: {exc}") from None
        parts = key.split(".")
        known = key in flat or any(".".join(parts[:i]) in flat and isinstance(flat[".".join(parts[:i])], dict)
                                   for i in range(1, len(parts)))
        if not known:
            raise Refused(f"--set {text!r}: the recorded config has no key {key!r}")
        if key in PATH_KEYS:
            raise Refused(f"--set {text!r}: {key} is set by prov reproduce itself")
        out[key] = value
    return out


def _plan_steps(orig: Original, opts: Options) -> tuple[int, int | None, int]:
    """(first step checked, stop after (None: run to the end), last step expected)."""
    if not orig.metric_steps:
        raise Refused(f"{orig.root}: the original logged no steps; there is nothing to compare")
    last = max(orig.metric_steps)
    start = 0
    if opts.from_step is not None:
        k = opts.from_step
        if k not in orig.checkpoints:
            have = ", ".join(str(s) for s in sorted(orig.checkpoints)) or "none"
            raise Refused(f"--from-step {k}: the original saved no checkpoint at step {k} (checkpoints: {have})")
        if not (orig.root / formats.checkpoint_name(k)).is_file():
            raise Refused(f"--from-step {k}: {formats.checkpoint_name(k)} is missing from the bundle")
        if k >= last:
            raise Refused(f"--from-step {k}: the original's last step is {last}; there is nothing after it to check")
        start = k
    stop: int | None = None
    if opts.steps is not None:
        if opts.steps < 1:
            raise Refused(f"--steps {opts.steps}: must be at least 1")
        stop = min(start + opts.steps, last)
    elif orig.run.get("status") != "completed":
        stop = last  # the original ended early: check what it recorded
    if stop is not None and stop >= last and orig.run.get("status") == "completed":
        stop = None
    expected_last = last if stop is None else stop
    return start + 1, stop, expected_last


# --- environment ----------------------------------------------------------------------------------


def _threads_of(run: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    det = run.get("determinism") or {}
    torch = env.get("torch") or {}
    return {"num_threads": det.get("num_threads", torch.get("num_threads")),
            "num_interop_threads": det.get("num_interop_threads", torch.get("num_interop_threads"))}


def current_env(full: bool) -> dict[str, Any]:
    """This machine's environment. Without `full`, torch is not imported (packages, python, hardware)."""
    if full:
        return cenv.capture_env()
    import platform

    return {"python": {"version": sys.version.split()[0], "implementation": platform.python_implementation()},
            "packages": cenv.packages(),
            "hardware": {"cpu_model": cenv._cpu_model(), "cpu_count": os.cpu_count(),
                         "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                         "ram_bytes": cenv._ram_bytes(), "machine": platform.machine()},
            "os": {"system": platform.system(), "release": platform.release()}}


def _env_check(orig: Original, sets: dict[str, Any], opts: Options, say: Say) -> list[dict[str, Any]]:
    now = current_env(full=opts.strict_env)
    rec_threads = _threads_of(orig.run, orig.env)
    planned = dict(rec_threads)
    flat = pdiff.flatten(orig.config)
    for key in THREAD_KEYS:
        if key in sets:
            planned["num_threads"] = sets[key]
        elif flat.get(key):
            planned["num_threads"] = flat[key]
    diffs = [d for d in pdiff.diff_env(orig.env, now, rec_threads, planned) if d["category"] != "env_vars"
             and not (d["category"] == "torch" and d["name"] in RUN_APPLIED_TORCH_KEYS)]
    if not diffs:
        torch_v = (orig.env.get("torch") or {}).get("version")
        say(f"environment: same as recorded (python {(orig.env.get('python') or {}).get('version')}, "
            f"{len(orig.env.get('packages') or {})} packages, torch {torch_v}, {planned['num_threads']} threads, "
            f"{(orig.env.get('hardware') or {}).get('cpu_model')})")
    for d in diffs:
        tag = "" if d["significant"] else " (cannot change the numbers)"
        say(f"environment: differs: {pdiff.env_line(d)}{tag}")
    if opts.strict_env and diffs:
        raise Refused("--strict-env: the environment differs from the recorded one: "
                      + "; ".join(pdiff.env_line(d) for d in diffs), differences=diffs)
    if not opts.strict_env:
        say("environment: torch's own facts (CUDA, GPUs, determinism flags) are compared after the run "
            "(--strict-env compares them before)")
    return diffs


# --- data -----------------------------------------------------------------------------------------


def _placement(local_path: str | None, recorded_root: Any, name: str) -> str:
    """Where a dataset goes under the new data root: its path relative to the recorded one."""
    if isinstance(local_path, str) and local_path:
        if isinstance(recorded_root, str) and recorded_root:
            try:
                rel = PurePath(local_path).relative_to(PurePath(recorded_root))
                if rel.parts and ".." not in rel.parts:
                    return rel.as_posix()
            except ValueError:
                pass
        return PurePath(local_path).name
    return name


@dataclass
class StagedData:
    name: str
    how: str  # data-root | bundle | recorded path | regenerated | derived
    source: Path | None = None
    rel: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.name, "located": self.how, "path": str(self.source) if self.source else None,
                "placed_at": self.rel, "files": len(self.files), "note": self.note,
                "verified_before_run": self.how in ("data-root", "bundle", "recorded path")}


def _mismatch_message(orig: Original, name: str, man: dict[str, Any], entry: dict[str, Any], found: Path,
                      found_hex: str, how: str) -> str:
    msg = (f"dataset '{name}': file {entry['path']} ({how}: {found}) does not match the original's data manifest: "
           f"expected sha256:{entry['sha256']} ({entry.get('size')} bytes), found sha256:{found_hex} "
           f"({found.stat().st_size} bytes)")
    ref = pdiff._bundled(orig.root, man, entry["path"])
    if ref is not None and ref.resolve() != found.resolve():
        rec = pdiff.first_differing_record(ref, found)
        if rec is not None:
            where = pdiff.describe_record(man, entry["path"], rec, orig.root)
            if "sample" in where:
                msg += f"; first differing sample {where['sample']} (line {where['line']})"
                if where.get("first_step_using_sample") is not None:
                    msg += f", first used at step {where['first_step_using_sample']}"
            else:
                msg += f"; first differing line {where['line']}"
    return msg


def _locate_data(orig: Original, opts: Options, say: Say) -> list[StagedData]:
    flat = pdiff.flatten(orig.config)
    recorded_root = flat.get("data.root")
    out: list[StagedData] = []
    for name, man in orig.manifests.items():
        src = man.get("source") or {}
        kind = src.get("type")
        local = src.get("local_path")
        rel = _placement(local, recorded_root, name)
        files = [e for e in man.get("files", []) if isinstance(e, dict) and isinstance(e.get("path"), str)]
        if kind == "derived":
            out.append(StagedData(name, "derived", rel=rel, files=files,
                                  note="rebuilt by the training script from its inputs; the run verifies it "
                                       "against the manifest before step 0"))
            continue
        candidates: list[tuple[str, Path]] = []
        if opts.data_root is not None:
            dr = opts.data_root
            for p in (dr / rel, dr / PurePath(rel).name, dr / name, dr):
                candidates.append(("data-root", p))
        if isinstance(man.get("bundled_files"), str):
            candidates.append(("bundle", orig.root / man["bundled_files"]))
        if isinstance(local, str) and local:
            candidates.append(("recorded path", Path(local) if Path(local).is_absolute() else Path.cwd() / local))
        found = next(((how, p) for how, p in candidates if any((p / e["path"]).is_file() for e in files)), None)
        if found is None:
            if kind == "generated":
                out.append(StagedData(name, "regenerated", rel=rel, files=files,
                                      note=f"regenerated by the training script (generator {src.get('generator')} "
                                           f"version {src.get('version')}, seed {src.get('seed')}); the run "
                                           "verifies it against the manifest before step 0"))
                continue
            looked = ", ".join(str(p) for _, p in candidates) or "nowhere"
            hint = " It is tracked by DVC: `dvc pull` it and pass --data-root." if kind == "dvc" else \
                " Pass --data-root DIR."
            raise Refused(f"dataset '{name}': its files were not found (looked in {looked}).{hint}")
        how, folder = found
        paths = []
        for e in files:
            p = folder / e["path"]
            if not p.is_file():
                raise Refused(f"dataset '{name}': file {e['path']} is missing from {folder} ({how}); "
                              f"expected sha256:{e.get('sha256')}")
            paths.append(p)
        digests = hash_files(paths)
        for e, p in zip(files, paths, strict=True):
            if digests[p] != e.get("sha256") or p.stat().st_size != e.get("size"):
                raise Refused(_mismatch_message(orig, name, man, e, p, digests[p], how), dataset=name,
                              file=e["path"], expected=f"sha256:{e.get('sha256')}", found=f"sha256:{digests[p]}")
        out.append(StagedData(name, how, source=folder, rel=rel, files=files))
        say(f"data: {name}: {len(files)} files from {how} {folder}, every file matches the manifest")
    for s in out:
        if s.how in ("regenerated", "derived"):
            say(f"data: {s.name}: {s.note}")
    return out


_PATHLIKE = ("path", "dir", "root", "folder", "file")


def _dataset_keys(orig: Original, staged: list[StagedData], data_dir: Path) -> list[tuple[str, Path]]:
    """Config keys that name a staged dataset's recorded folder (e.g. data.path of a local corpus),
    each with the staged folder to point them at. data.root is redirected apart (generated data)."""
    flat = pdiff.flatten(orig.config)
    out: list[tuple[str, Path]] = []
    for s in staged:
        if s.source is None or s.rel is None:
            continue
        src = (orig.manifests.get(s.name) or {}).get("source") or {}
        targets = [PurePath(v) for v in (src.get("path"), src.get("local_path")) if isinstance(v, str) and v]
        for key, value in flat.items():
            last = key.rsplit(".", 1)[-1]
            if key in PATH_KEYS or not isinstance(value, str) or not value or not any(w in last for w in _PATHLIKE):
                continue
            v = PurePath(value)
            if any(v == t or (not v.is_absolute() and t.parts[-len(v.parts):] == v.parts) for t in targets):
                out.append((key, data_dir / s.rel))
    return out


def _stage(staged: list[StagedData], data_dir: Path) -> None:
    for s in staged:
        if s.source is None or s.rel is None:
            continue
        dest = data_dir / s.rel
        dest.mkdir(parents=True, exist_ok=True)
        total = sum(int(e.get("size") or 0) for e in s.files)
        for e in s.files:
            src, dst = s.source / e["path"], dest / e["path"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            if total <= COPY_LIMIT:
                shutil.copyfile(src, dst)
            else:
                os.symlink(src.resolve(), dst)


# --- code -------------------------------------------------------------------------------------------


def _git_isolate(code: Path, label: str) -> None:
    """Make the code folder its own git repository (one commit of exactly its files), so that the run's
    code capture records these files even when the work folder lies inside another repository."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "prov reproduce", "GIT_AUTHOR_EMAIL": "prov@localhost",
           "GIT_COMMITTER_NAME": "prov reproduce", "GIT_COMMITTER_EMAIL": "prov@localhost",
           "GIT_AUTHOR_DATE": "1970-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "1970-01-01T00:00:00Z",
           "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}
    cmds = [["git", "init", "-q"], ["git", "add", "-f", "-A", "--", "."],
            ["git", "-c", "commit.gpgsign=false", "commit", "-q", "--no-verify", "--allow-empty", "-m",
             f"source snapshot of {label}"]]
    try:
        for i, cmd in enumerate(cmds):
            subprocess.run(cmd, cwd=code, env=env, check=True, capture_output=True)
            if i == 0:
                (code / ".git" / "info").mkdir(parents=True, exist_ok=True)
                (code / ".git" / "info" / "exclude").write_text("__pycache__/\n*.pyc\n")
    except (OSError, subprocess.CalledProcessError):
        pass
    top = git_toplevel(code)
    if top is not None and top.resolve() != code.resolve():
        raise Refused(f"the work folder {code.parent} lies inside the git repository {top}, and the code folder "
                      "could not be made a repository of its own; choose --workdir outside it")


def _prepare_code(orig: Original, opts: Options, dest: Path, say: Say) -> list[str]:
    """Materialise the code to run into dest; return the files that differ from the original's."""
    if opts.code is not None:
        folder = opts.code.resolve()
        if not folder.is_dir():
            raise Refused(f"--code {opts.code}: not a folder")
        cap = capture_code(folder)
        tar = cap.snapshot
        where = f"--code {folder}"
    else:
        tar = (orig.root / formats.CODE_SNAPSHOT).read_bytes()
        where = "the bundle's source snapshot"
    dest.mkdir(parents=True)
    try:
        digests = materialise_snapshot(tar, dest)
    except (ValueError, OSError) as exc:
        raise Refused(f"{where}: cannot be materialised: {exc}") from None
    recorded = {k: v.split(":", 1)[-1] for k, v in (orig.code.get("files") or {}).items()}
    differ = sorted(k for k in set(recorded) | set(digests) if recorded.get(k) != digests.get(k)) if recorded else []
    if opts.code is None and differ:
        raise Refused(f"{formats.CODE_SNAPSHOT} does not match {formats.CODE_JSON}: {', '.join(differ[:5])}")
    _git_isolate(dest, orig.run.get("run_id") or orig.root.name)
    say(f"code: {len(digests)} files from {where}, in {dest}")
    if differ:
        say(f"code: {len(differ)} files differ from the original's (no bitwise claim across a difference): "
            + ", ".join(differ[:10]) + (" ..." if len(differ) > 10 else ""))
    return differ


# --- the command --------------------------------------------------------------------------------------


def _looks_like_config(arg: str) -> bool:
    return "=" not in arg and arg.endswith((".yaml", ".yml", ".json"))


def build_command(orig: Original, opts: Options, code_dir: Path, config_path: Path,
                  overrides: list[str]) -> list[str]:
    """The recorded command, run by this interpreter: the recorded resolved config (written to
    config_path) replaces the config file and its overrides; `overrides` come last (last wins)."""
    argv = orig.argv
    if argv[1] == "-m" and len(argv) >= 3:
        head, rest = [opts.python, "-m", argv[2]], argv[3:]
    else:
        script = argv[1]
        p = PurePath(script)
        if p.is_absolute():  # the original checkout's path: find the script in the code folder
            parts = p.parts
            match = next((PurePath(*parts[i:]) for i in range(1, len(parts))
                          if (code_dir / PurePath(*parts[i:])).is_file()), None)
            if match is None:
                raise Refused(f"the recorded script {script} is not in the code snapshot")
            script = match.as_posix()
        head, rest = [opts.python, script], argv[2:]
    # the resolved config holds the recorded config file and every recorded override
    if "--config" in rest or (rest and _looks_like_config(rest[0])):
        return [*head, "--config", str(config_path), *overrides]
    return [*head, *rest, *overrides]


def _child_env(orig: Original, stop: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({REPLAY_ENV: str(orig.root), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
                "PYTHONDONTWRITEBYTECODE": "1", "DVC_NO_ANALYTICS": "1"})
    if stop is not None:
        env[STOP_ENV] = str(stop)
    else:
        env.pop(STOP_ENV, None)
    for k in ("PROV_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    recorded = orig.env.get("env_vars") or {}
    for k in NUMERIC_ENV_VARS:
        if k in recorded:
            env[k] = str(recorded[k])
        else:
            env.pop(k, None)
    if orig.env.get("pythonhashseed") is not None:
        env["PYTHONHASHSEED"] = str(orig.env["pythonhashseed"])
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path, opts: Options) -> tuple[int, float]:
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                log.write(raw)
                if opts.echo is not None:
                    opts.echo(raw.decode("utf-8", "replace").rstrip("\n"))
                if opts.timeout is not None and time.monotonic() - t0 > opts.timeout:
                    proc.kill()
                    break
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return rc, time.monotonic() - t0


# --- the verdict ----------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    return repr(v) if not isinstance(v, str) else v


def find_causes(d: dict[str, Any], first: dict[str, Any] | None, summary: dict[str, Any],
                path_keys: frozenset[str] = PATH_KEYS) -> list[dict[str, Any]]:
    """Every difference that could explain a divergence, most likely first:
    data, config, code, environment (thread count, packages, ...), then data order, then numerics.
    Config keys in `path_keys` (where this machine keeps things) are not differences."""
    causes: list[dict[str, Any]] = []
    for name, ds in d["data"]["datasets"].items():
        for ch in ds["changed"]:
            s = f"different data: {name}/{ch['path']}"
            if "sample" in ch:
                s += f" (sample {ch['sample']}" + (f", first used at step {ch['first_step_using_sample']})"
                                                   if ch.get("first_step_using_sample") is not None else ")")
            causes.append({"kind": "data", "dataset": name, "file": ch["path"], "summary": s,
                           **{k: ch[k] for k in ("sample", "line", "first_step_using_sample") if k in ch}})
        for p in ds["only_a"] + ds["only_b"]:
            causes.append({"kind": "data", "dataset": name, "file": p, "summary": f"different data: {name}/{p}"})
    for name in d["data"]["only_a"] + d["data"]["only_b"]:
        causes.append({"kind": "data", "dataset": name, "summary": f"different data: dataset {name}"})
    metrics_other = d["metrics"]["other_keys"]
    threads: list[dict[str, Any]] = []
    cfg = d["config"]
    for ch in [*cfg["changed"], *({"key": c["key"], "a": c["value"], "b": None} for c in cfg["only_a"]),
               *({"key": c["key"], "a": None, "b": c["value"]} for c in cfg["only_b"])]:
        key = ch["key"]
        if key in path_keys:
            continue
        if key in THREAD_KEYS:
            threads.append({"kind": "environment", "what": "thread count", "key": key, "a": ch["a"], "b": ch["b"],
                            "summary": f"different environment: thread count {ch['a']} → {ch['b']} ({key})"})
            continue
        causes.append({"kind": "config", "key": key, "a": ch["a"], "b": ch["b"],
                       "summary": f"different config: {key} {_fmt(ch['a'])} → {_fmt(ch['b'])}"})
    for ch in d["code"]["changed"]:
        causes.append({"kind": "code", "file": ch["path"], "a": ch["a"], "b": ch["b"],
                       "summary": f"different code: {ch['path']}"})
    for p in d["code"]["only_a"]:
        causes.append({"kind": "code", "file": p, "summary": f"different code: {p} (only in the original)"})
    for p in d["code"]["only_b"]:
        causes.append({"kind": "code", "file": p, "summary": f"different code: {p} (only in the reproduction)"})
    env = [x for x in d["environment"]["differences"] if x["significant"]]
    for x in env:
        if x["category"] == "threads":
            if x["name"] == "num_threads" and threads:
                continue  # already named through the config key
            threads.append({"kind": "environment", "what": "thread count", "a": x["a"], "b": x["b"],
                            "summary": f"different environment: {pdiff.env_line(x)}"})
    causes += threads
    for x in env:
        if x["category"] != "threads":
            causes.append({"kind": "environment", "what": f"{x['category']} {x['name']}", "a": x["a"], "b": x["b"],
                           "summary": f"different environment: {pdiff.env_line(x)}"})
    if first is not None and first.get("kind") == "order":
        causes.append({"kind": "order", "step": first["step"], "position": first.get("position"),
                       "recorded_sample": first.get("recorded_sample"), "computed_sample": first.get("computed_sample"),
                       "summary": f"different data order: at step {first['step']} the training chose sample "
                                  f"{first.get('computed_sample')} where the original had "
                                  f"{first.get('recorded_sample')} (position {first.get('position')})"})
    if first is not None and not causes:
        diffv = summary.get("max_loss_abs_diff") or d["metrics"].get("max_abs_diff") or 0.0
        causes.append({"kind": "numerics", "max_abs_loss_diff": diffv,
                       "summary": "numerics only: same inputs (every batch matched; same config, code, data and "
                                  f"environment), different floats; largest |Δloss| {diffv:.3g}"})
    for c in causes:  # supporting evidence from the logged values (e.g. lr differs from step 1)
        if c["kind"] in ("config", "code") and metrics_other:
            c["logged_values_differ"] = {k: v["first_diff_step"] for k, v in metrics_other.items()}
    return causes


def decide(orig: Original, repro: Path, plan: tuple[int, int | None, int], training_rc: int,
           pre_env: list[dict[str, Any]], path_keys: frozenset[str] = PATH_KEYS) -> dict[str, Any]:
    """The verdict: from the replay's summary and the diff of the two bundles."""
    first_step, stop, expected_last = plan
    summary_path = repro / SUMMARY
    summary = formats.read_json(summary_path) if summary_path.is_file() else {}
    d = pdiff.diff_bundles(orig.root, repro)
    # one definition of the first divergent step (provenance.replay.first_divergence): the replay's,
    # and the diff's of the two bundles (the same comparisons after the fact, with the checkpoints the
    # reproduction did not save and the evaluations); on a tie the replay's record (more detail) wins
    first = first_divergence([summary.get("first_divergence"), d["first_divergence"]])
    expected_ckpts = sorted(s for s in orig.checkpoints if first_step <= s <= expected_last)
    missing_ckpts = [s for s in expected_ckpts if s not in pdiff.checkpoint_digests(repro)]
    repro_run = formats.read_json(repro / formats.RUN_JSON) if (repro / formats.RUN_JSON).is_file() else {}
    last_checked = summary.get("last_step", repro_run.get("last_step"))
    steps_checked = summary.get("steps_checked", d["metrics"]["steps_compared"])
    steps_expected = sum(1 for s in orig.metric_steps if first_step <= s <= expected_last)
    complete = training_rc == 0 and last_checked == expected_last and steps_checked == steps_expected
    causes = find_causes(d, first, summary, path_keys)
    scope = {"first_step": first_step, "last_step": expected_last, "stop_after": stop,
             "steps_checked": steps_checked, "steps_expected": steps_expected,
             "checkpoints_checked": summary.get("checkpoints_checked", len(expected_ckpts) - len(missing_ckpts)),
             "checkpoints_expected": len(expected_ckpts), "last_step_reached": last_checked}
    env_all = [x for x in d["environment"]["differences"] if x["category"] != "env_vars"]
    out: dict[str, Any] = {"first_divergence": first, "causes": causes, "scope": scope, "summary": summary,
                           "environment_differences": env_all, "pre_run_environment_differences": pre_env,
                           "diff": d}
    rng = f"steps {first_step}–{expected_last}"
    if first is not None:
        cause = causes[0] if causes else None
        out.update(verdict=DIVERGED, exit_status=EXIT_DIVERGED, cause=cause, bitwise=False,
                   headline=f"diverged at step {first['step']}: {pdiff.divergence_text(first)}; most likely cause: "
                            + (cause["summary"] if cause else "unknown"))
        if summary.get("max_loss_abs_diff"):
            out["headline"] += f" (largest |Δloss| over the run {summary['max_loss_abs_diff']:.3g})"
    elif not complete:
        what = (f"the training exited with status {training_rc}" if training_rc != 0 else
                f"the reproduction checked {steps_checked} of {steps_expected} steps (last step {last_checked}, "
                f"expected {expected_last})")
        out.update(verdict=INCOMPLETE, exit_status=EXIT_DIVERGED, cause=causes[0] if causes else None,
                   bitwise=False, headline=f"incomplete: {what}; no divergence before that")
    elif causes:
        out.update(verdict=NOT_CLAIMED, exit_status=EXIT_DIVERGED, cause=causes[0], bitwise=False,
                   headline=f"every loss and checkpoint digest of {rng} matched, but no bitwise claim is made "
                            "across a difference: " + "; ".join(c["summary"] for c in causes[:5]))
    else:
        out.update(verdict=BITWISE, exit_status=EXIT_REPRODUCED, cause=None, bitwise=True,
                   headline=f"{BITWISE}: {steps_checked} steps ({rng}): every batch and loss, and "
                            f"{scope['checkpoints_checked']} checkpoint digests")
    return out


# --- the consistency check that `prov audit` runs on a reproduction bundle -------------------------------


def _register_audit_check() -> None:
    from provenance import audit as A

    def check_reproduction(view: Any, out: Any) -> None:
        info = view.run_info
        rep = info.get("reproduces") if isinstance(info.get("reproduces"), dict) else None
        has = [f for f in (SUMMARY, STEPS_LOG, REPORT) if view.has(f)]
        if rep is None and not has:
            raise A.SkipCheck("not a reproduction")
        if rep is None:
            out.error("reproduction files are present, but run.json does not name the original (reproduces)",
                      file=formats.RUN_JSON)
            return
        if not view.has(SUMMARY):
            raise A.BundleFileError(SUMMARY, "missing: a reproduction records its summary")
        summ = view.json(SUMMARY)
        if not isinstance(summ, dict) or summ.get("schema") != SUMMARY_SCHEMA:
            out.error("unknown schema", file=SUMMARY, expected=SUMMARY_SCHEMA,
                      actual=repr(summ.get("schema") if isinstance(summ, dict) else summ))
            return
        if (summ.get("original") or {}).get("root_digest") != rep.get("root_digest"):
            out.error("names another original than run.json", file=SUMMARY,
                      expected=str(rep.get("root_digest")), actual=str((summ.get("original") or {}).get("root_digest")))
        steps: list[dict[str, Any]] = []
        ckpts: list[dict[str, Any]] = []
        if view.has(STEPS_LOG):
            records, problems = view.jsonl(STEPS_LOG)
            for p in problems:
                out.error(p, file=STEPS_LOG)
            for _, r in records:
                (ckpts if "checkpoint" in r else steps).append(r)
        if len(steps) != summ.get("steps_checked"):
            out.error(f"{len(steps)} step records, but the summary says {summ.get('steps_checked')} steps were "
                      "checked", file=STEPS_LOG)
        if len(ckpts) != summ.get("checkpoints_checked"):
            out.error(f"{len(ckpts)} checkpoint records, but the summary says {summ.get('checkpoints_checked')}",
                      file=STEPS_LOG)
        metrics = {r.get("step"): r for r in (view.try_jsonl(formats.METRICS) or [])}
        bad = [r.get("step") for r in steps if "loss" in r and isinstance(r.get("loss"), float)
               and not pdiff._same_value(r["loss"], (metrics.get(r.get("step")) or {}).get("loss"))]
        if bad:
            out.error(f"the losses compared at steps {bad[:5]} are not the losses this run logged", file=STEPS_LOG)
        index = view.try_json(formats.CHECKPOINT_INDEX) or {}
        own = {e.get("step"): e.get("sha256") for e in index.get("checkpoints", []) if isinstance(e, dict)}
        badc = [r.get("step") for r in ckpts if own.get(r.get("step")) != r.get("sha256")]
        if badc:
            out.error(f"the checkpoint digests compared at steps {badc[:5]} are not this run's", file=STEPS_LOG)
        diverged = [r for r in steps if r.get("loss_match") is False or r.get("order") in ("differs", "not recorded")]
        diverged += [r for r in ckpts if r.get("checkpoint_match") is False]
        if summ.get("bitwise") and (diverged or summ.get("first_divergence") is not None):
            out.error("claims bitwise, but the step records show a divergence", file=SUMMARY)
        if not view.has(REPORT):
            out.warn("no report: this reproduction was not made by `prov reproduce`", file=REPORT)
            out.summary = f"reproduces {rep.get('run_id')}; replay summary only"
            return
        report = view.json(REPORT)
        if not isinstance(report, dict) or report.get("schema") != REPORT_SCHEMA:
            out.error("unknown schema", file=REPORT, expected=REPORT_SCHEMA,
                      actual=repr(report.get("schema") if isinstance(report, dict) else report))
            return
        if (report.get("original") or {}).get("root_digest") != rep.get("root_digest"):
            out.error("names another original than run.json", file=REPORT, expected=str(rep.get("root_digest")),
                      actual=str((report.get("original") or {}).get("root_digest")))
        verdict = report.get("verdict")
        if verdict == BITWISE and (not summ.get("bitwise") or diverged):
            out.error(f"says {BITWISE!r}, but the replay summary does not", file=REPORT)
        if verdict == BITWISE and report.get("exit_status") != EXIT_REPRODUCED:
            out.error("a bitwise reproduction has exit status 0", file=REPORT, expected="0",
                      actual=repr(report.get("exit_status")))
        if verdict == DIVERGED and (report.get("first_divergence") or {}).get("step") is None:
            out.error("says diverged, but names no first divergent step", file=REPORT)
        out.summary = f"reproduces {rep.get('run_id')} (sha256:{str(rep.get('root_digest'))[:12]}…): {verdict}"

    A.register_check("reproduction", "reproduction report", check_reproduction, replace=True)


try:
    _register_audit_check()
except ImportError:  # pragma: no cover - audit is optional for reproducing
    pass


# --- the whole reproduction --------------------------------------------------------------------------------


def default_workdir(run_id: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return (Path.cwd() / ".cache" / "reproduce" / f"{run_id}-{stamp}").resolve()


def _config_yaml(config: dict[str, Any]) -> bytes:
    text = yaml.safe_dump(config, sort_keys=True, allow_unicode=True)
    if yaml.safe_load(text) != config:
        raise Refused("the recorded config does not survive a YAML round trip; it cannot be passed to the script")
    return text.encode()


def reproduce(bundle: str | os.PathLike[str], opts: Options | None = None, say: Say | None = None) -> Outcome:
    """Reproduce `bundle` (a run folder or a release archive). Never raises for a refusal: see Outcome."""
    opts = opts or Options()
    opts = replace(opts, **{k: Path(getattr(opts, k)) for k in ("workdir", "data_root", "code")
                            if getattr(opts, k) is not None})
    say = say or (lambda s: None)
    t0 = time.monotonic()
    try:
        return _reproduce(Path(bundle), opts, say, t0)
    except (Refused, OSError, ValueError) as exc:  # ValueError includes formats.FormatError
        message = str(exc) if isinstance(exc, Refused) else f"{type(exc).__name__}: {exc}"
        details = exc.details if isinstance(exc, Refused) else {}
        report = {"schema": REPORT_SCHEMA, "verdict": REFUSED, "exit_status": EXIT_REFUSED, "headline": message,
                  "refused": {"message": message, **details}, "original": {"path": str(bundle)}}
        return Outcome(EXIT_REFUSED, REFUSED, f"refused: {message}", report)


def _reproduce(src: Path, opts: Options, say: Say, t0: float) -> Outcome:
    if not src.exists():
        raise Refused(f"{src}: no such bundle")
    digest, _audit_report = _audit(src, say)
    archive_input = src.is_file()
    run_id = None
    if not archive_input:
        run_json = src / formats.RUN_JSON
        run_id = (formats.read_json(run_json).get("run_id") if run_json.is_file() else None) or src.name
    workdir = (opts.workdir or default_workdir(run_id or src.name.split(".")[0])).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise Refused(f"--workdir {workdir}: not empty; a reproduction starts in an empty folder")
    made_workdir = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return _in_workdir(src, digest, archive_input, workdir, opts, say, t0)
    except (Refused, OSError, ValueError):
        if any((workdir / "runs").glob(f"*/{formats.RUN_JSON}")):
            raise  # a run was written: keep everything for inspection
        if made_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for child in workdir.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        raise


def _in_workdir(src: Path, digest: str, archive_input: bool, workdir: Path, opts: Options, say: Say,
                t0: float) -> Outcome:
    if archive_input:
        from provenance.archive import ArchiveError, extract

        dest = workdir / "original"
        dest.mkdir()
        try:
            root = extract(src, dest).root
        except ArchiveError as exc:
            raise Refused(str(exc)) from None
        say(f"original: unpacked {src} into {root}")
    else:
        root = src.resolve()
    orig = _read_original(root, digest)
    plan = _plan_steps(orig, opts)
    sets = _parse_sets(opts.sets, orig.config)
    first_step, stop, expected_last = plan
    scope = f"steps {first_step}–{expected_last}" + (f" (from the checkpoint of step {opts.from_step})"
                                                     if opts.from_step is not None else "")
    say(f"original: {orig.run.get('run_id')} ({orig.run.get('status')}, {max(orig.metric_steps)} steps, "
        f"{len(orig.checkpoints)} checkpoints); checking {scope}")
    resumed = pdiff.flatten(orig.config).get("run.resume_from")
    if resumed and opts.from_step is None and not Path(resumed).is_file():
        raise Refused(f"the original resumed from the checkpoint {resumed}, which is not here; reproduce the run "
                      "that saved it, or check this one's own steps with --from-step K")
    flat = pdiff.flatten(orig.config)
    for key, value in sets.items():
        was = flat.get(key, "(not set)")
        say(f"config: --set {key}: {_fmt(was)} → {_fmt(value)}" + ("" if was == value else
                                                                   " (no bitwise claim across a difference)"))
    pre_env = _env_check(orig, sets, opts, say)
    staged = _locate_data(orig, opts, say)

    code_dir, data_dir, runs_dir = workdir / "code", workdir / "data", workdir / "runs"
    code_differs = _prepare_code(orig, opts, code_dir, say)
    data_dir.mkdir()
    _stage(staged, data_dir)
    config_path = workdir / "config.yaml"
    config_path.write_bytes(_config_yaml(orig.config))
    overrides = []
    if "data.root" in flat:
        overrides.append(f"data.root={data_dir}")
    if "run.runs_dir" in flat:
        overrides.append(f"run.runs_dir={runs_dir}")
    redirects = _dataset_keys(orig, staged, data_dir)
    overrides += [f"{k}={v}" for k, v in redirects]
    if opts.from_step is not None:
        overrides.append(f"run.resume_from={orig.root / formats.checkpoint_name(opts.from_step)}")
    overrides += opts.sets
    cmd = build_command(orig, opts, code_dir, config_path, overrides)
    env = _child_env(orig, stop)
    say("running: " + " ".join(cmd))
    say(f"  in {code_dir} with {REPLAY_ENV}={orig.root}" + (f" {STOP_ENV}={stop}" if stop is not None else ""))
    rc, train_wall = _run(cmd, code_dir, env, workdir / "training.log", opts)

    found = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    if not found:
        tail = (workdir / "training.log").read_text(errors="replace").splitlines()[-15:]
        errors = [ln for ln in tail if ln.startswith("error:")]
        if rc == 2 and errors:
            raise Refused("the training refused to start, and wrote nothing: " + " / ".join(errors), exit_status=rc)
        hint = f" The code differs from the original's in: {', '.join(code_differs[:5])}." if code_differs else ""
        raise Refused(f"the training exited with status {rc} before its run started; nothing was written.{hint} "
                      "Last lines:\n  " + "\n  ".join(tail), exit_status=rc, code_differs=code_differs)
    repro = found[-1]
    decision = decide(orig, repro, plan, rc, pre_env, PATH_KEYS | frozenset(k for k, _ in redirects))
    repro_run = formats.read_json(repro / formats.RUN_JSON)
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "verdict": decision["verdict"],
        "exit_status": decision["exit_status"],
        "headline": decision["headline"],
        "bitwise": decision["bitwise"],
        "first_divergence": decision["first_divergence"],
        "cause": decision["cause"],
        "other_causes": decision["causes"][1:],
        "scope": {**decision["scope"], "from_step": opts.from_step},
        "original": {"run_id": orig.run.get("run_id"), "root_digest": orig.root_digest, "path": str(src)},
        "reproduction": {"run_id": repro_run.get("run_id")},
        "environment": {"differences": decision["environment_differences"],
                        "before_run": decision["pre_run_environment_differences"], "strict": opts.strict_env},
        "overrides": {"set": list(opts.sets), "code": str(opts.code) if opts.code else None,
                      "data_root": str(opts.data_root) if opts.data_root else None,
                      "data_keys": {k: str(v) for k, v in redirects}},
        "data": [s.to_dict() for s in staged],
        "command": cmd,
        "training_exit_status": rc,
        "durations": {"original_s": orig.run.get("duration_s"), "reproduction_s": repro_run.get("duration_s"),
                      "training_wall_s": round(train_wall, 3)},
        "replay_summary": decision["summary"],
        "diff": {k: v for k, v in decision["diff"].items() if k not in ("a", "b")},
    }
    report["durations"]["total_wall_s"] = round(time.monotonic() - t0, 3)
    root_digest = _reseal_with_report(repro, report)
    return Outcome(decision["exit_status"], decision["verdict"], decision["headline"], report, bundle=repro,
                   root_digest=root_digest, workdir=workdir)


def _reseal_with_report(repro: Path, report: dict[str, Any]) -> str:
    """Add reproduction/report.json to the run's bundle and seal it again, after checking its seal
    (a re-seal must never cover a change made since the run sealed it)."""
    from provenance.audit import AuditRefused, audit

    with folder_lock(repro):  # a concurrent `prov note` reseals under the same lock
        try:
            integrity = audit(repro).integrity
        except AuditRefused as exc:
            raise RuntimeError(f"{repro}: the reproduction's own bundle was refused by the audit: {exc}") from None
        if not integrity.ok:
            bad = [d.name for d in (*integrity.missing, *integrity.extra, *integrity.changed)]
            raise RuntimeError(f"{repro}: the reproduction's own bundle does not match its seal "
                               f"({', '.join(bad[:5]) or 'not sealed'}); not re-sealed")
        formats.atomic_write_json(repro / REPORT, report)
        return seal_folder_locked(repro)
