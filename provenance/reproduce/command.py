"""The command of a reproduction: the code it runs (materialised from the bundle's snapshot), the
command line and environment of the training child, and running it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path, PurePath
from typing import Any

import yaml

from provenance import formats, reader
from provenance.capture.code import capture_code, git_toplevel, materialise_snapshot
from provenance.replay import REPLAY_ENV, STOP_ENV
from provenance.reproduce.options import Options, Refused, Say
from provenance.reproduce.plan import Original

# where the child writes its bundle, finds its data and how many threads it runs (read by start_run)
RUNS_DIR_ENV, DATA_ROOT_ENV, THREADS_ENV = formats.RUNS_DIR_ENV, formats.DATA_ROOT_ENV, formats.THREADS_ENV
TRAINING_LOG = "training.log"  # in the work folder: the child's output; it exists once the child started
# environment variables that can change the numbers: set to their recorded values in the child
# (only those whose prefix provenance.capture.env records, so that "absent" is known too)
NUMERIC_ENV_VARS = ("PYTHONHASHSEED", "OMP_NUM_THREADS", "OMP_DYNAMIC", "OMP_SCHEDULE", "MKL_NUM_THREADS",
                    "MKL_CBWR", "MKL_DYNAMIC", "OPENBLAS_NUM_THREADS", "KMP_AFFINITY", "KMP_BLOCKTIME",
                    "GOMP_CPU_AFFINITY", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                    "CUBLAS_WORKSPACE_CONFIG", "TOKENIZERS_PARALLELISM")

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


def prepare_code(orig: Original, opts: Options, dest: Path, say: Say) -> tuple[int, list[str]]:
    """Materialise the code to run into dest; return its number of files and those that differ from the
    original's."""
    if opts.code is not None:
        folder = opts.code.resolve()
        if not folder.is_dir():
            raise Refused(f"--code {opts.code}: not a folder")
        cap = capture_code(folder)
        tar = cap.snapshot
        where = f"--code {folder}"
    else:
        snap = reader.Bundle.of_files(orig.root, [formats.CODE_SNAPSHOT])
        if not snap.has(formats.CODE_SNAPSHOT):
            raise Refused(f"{orig.root}: {formats.CODE_SNAPSHOT} is missing; this bundle cannot be reproduced")
        tar = snap.read_bytes(formats.CODE_SNAPSHOT, min(snap.size(formats.CODE_SNAPSHOT),
                                                         snap.limits.archive.max_file_bytes))
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
    return len(digests), differ


# --- the command --------------------------------------------------------------------------------------


def _looks_like_config(arg: str) -> bool:
    return "=" not in arg and arg.endswith((".yaml", ".yml", ".json"))


def entry_point(argv: list[str]) -> str:
    """What the recorded command runs: `-m module`, or the script."""
    return f"-m {argv[2]}" if argv[1] == "-m" and len(argv) >= 3 else argv[1]


def launcher(orig: Original, opts: Options) -> list[str]:
    """How the training is started: this interpreter, or for an original that ran as several processes on
    one node, this interpreter's torchrun at the same world size (`python -m torch.distributed.run --standalone
    --nproc_per_node=W`): each rank's data order and the gradient reduction depend on the world size. An
    original trained on several nodes is refused (a reproduction launches on this machine only)."""
    world = orig.run.get("world_size", 1)
    if not isinstance(world, int) or isinstance(world, bool) or world <= 1:
        return [opts.python]
    dist = orig.run.get("distributed") if isinstance(orig.run.get("distributed"), dict) else {}
    nodes = dist.get("nnodes", 1)
    if nodes != 1:
        raise Refused(f"the original trained on {nodes} nodes (world size {world}); prov reproduce launches on one "
                      "machine only: reproduce it with PROV_REPLAY=<bundle> under the same torchrun on every node "
                      "(docs/integrations.md); nothing ran")
    return [opts.python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]


def build_command(orig: Original, opts: Options, code_dir: Path, config_path: Path,
                  overrides: list[str]) -> list[str]:
    """The recorded command, run by this interpreter (under torchrun at the recorded world size for a
    multi-process original: launcher()): the recorded resolved config (written to config_path) replaces the
    config file and its overrides; `overrides` come last (last wins)."""
    argv = orig.argv
    start = launcher(orig, opts)
    if argv[1] == "-m" and len(argv) >= 3:
        head, rest = [*start, "-m", argv[2]], argv[3:]
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
        head, rest = [*start, script], argv[2:]
    # the resolved config holds the recorded config file and every recorded override
    if "--config" in rest or (rest and _looks_like_config(rest[0])):
        return [*head, "--config", str(config_path), *overrides]
    return [*head, *rest, *overrides]


def child_env(orig: Original, stop: int | None, runs_dir: Path, data_dir: Path,
              threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(THREADS_ENV, None)
    if threads is not None:  # --calibrate of a script whose config has no run.threads
        env[THREADS_ENV] = str(threads)
    env.update({REPLAY_ENV: str(orig.root), RUNS_DIR_ENV: str(runs_dir), DATA_ROOT_ENV: str(data_dir),
                "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONDONTWRITEBYTECODE": "1",
                "DVC_NO_ANALYTICS": "1"})
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


# --- the sandbox (--sandbox): bubblewrap, network off, the file system read-only but the work folder ---


def find_sandbox() -> str:
    """The bubblewrap executable, checked to work here; Refused (before anything runs) otherwise."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise Refused("--sandbox: no sandbox is available: bubblewrap (bwrap) is not installed "
                      "(Debian/Ubuntu: apt-get install bubblewrap); nothing ran")
    probe = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net",
             "--die-with-parent", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Refused(f"--sandbox: bubblewrap does not start here ({exc}); nothing ran") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise Refused(f"--sandbox: bubblewrap cannot make a sandbox here ({why}; user namespaces may be "
                      "disabled); nothing ran")
    return bwrap


def sandboxed(cmd: list[str], bwrap: str, workdir: Path, cwd: Path, readable: list[Path]) -> list[str]:
    """`cmd` under bubblewrap: no network, / read-only, /tmp an empty tmpfs, /dev and /proc fresh, the
    work folder the only writable place; `readable` (e.g. the original bundle) stay visible read-only
    even where they lie under /tmp."""
    args = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session"]
    seen: set[str] = set()
    # the interpreter, its environment and the installed provenance package stay visible, wherever they lie
    # (a checkout or a venv under /tmp would otherwise be hidden by the private /tmp)
    here = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).parent,
            Path(__file__).resolve().parents[2]]
    for p in [*here, *readable]:
        p = p.resolve()
        if p.exists() and str(p) not in seen and (p == Path("/tmp") or Path("/tmp") in p.parents):
            seen.add(str(p))
            args += ["--ro-bind", str(p), str(p)]
    w = str(workdir.resolve())
    args += ["--bind", w, w, "--chdir", str(cwd.resolve())]
    return [*args, "--", *cmd]


def run_child(cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path, opts: Options) -> tuple[int, float]:
    """Run the training child; its output goes to log_path, which exists only once the process started."""
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise Refused(f"the training command could not be started ({exc}); nothing ran") from None
    with open(log_path, "wb") as log:
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


def config_yaml(config: dict[str, Any]) -> bytes:
    text = yaml.safe_dump(config, sort_keys=True, allow_unicode=True)
    if formats.strict_json(yaml.safe_load(text)) != formats.strict_json(config):  # NaN (.nan) is NaN here
        raise Refused("the recorded config does not survive a YAML round trip; it cannot be passed to the script")
    return text.encode()


