"""DVC: a DVC-tracked dataset manifested with its md5 and fetched through DVC; `dvc repro` of the committed
dvc.yaml trains the default model as a stage whose output is the bundle; bundles pushed to and pulled from a
local-folder remote. Analytics off, site cache inside tmp."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY, offline_env
from test_integrations_common import assert_sealed, only_run, prov

from provenance import formats


def _sh(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _repo_copy(tmp: Path, env: dict[str, str]) -> Path:
    """The project's files (as git sees them) in a fresh git + DVC repository (`dvc init`, analytics off),
    with a local-folder DVC remote."""
    repo = tmp / "repo"
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = REPO / name
        wanted = (name.split("/")[0] in ("provenance", "training", "configs")  # docs/model: the config's documents
                  or name.startswith("docs/model/") or name in (
            "dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml"))
        if wanted and src.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    _sh(["git", "init", "-q"], repo, env)
    _sh(["dvc", "init", "-q"], repo, env)
    _sh(["dvc", "config", "core.analytics", "false"], repo, env)
    _sh(["git", "-c", "user.name=t", "-c", "user.email=t@e", "add", "-A"], repo, env)
    _sh(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "copy"], repo, env)
    _sh(["dvc", "remote", "add", "-d", "local", str(tmp / "remote")], repo, env)
    return repo


@pytest.mark.slow  # over a minute on 2 cores: run with `make test-slow`
def test_dvc_repro_push_pull_and_tracked_data(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    assert env["DVC_NO_ANALYTICS"] == "1" and env["DVC_SITE_CACHE_DIR"].startswith(str(tmp_path))
    repo = _repo_copy(tmp_path, env)
    assert "analytics = false" in (repo / ".dvc" / "config").read_text()

    # `dvc repro`: the committed stage (on the tiny config) trains the default model; its output is the bundle
    stage = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["train"]
    assert stage["outs"] == ["runs/dvc"] and "training.train" in stage["cmd"]
    text = (repo / "dvc.yaml").read_text().replace("run.runs_dir=runs/dvc", "run.runs_dir=runs/dvc " + " ".join(TINY))
    (repo / "dvc.yaml").write_text(text)
    _sh(["dvc", "repro"], repo, env)
    bundle = only_run(repo / "runs" / "dvc")
    assert_sealed(bundle)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["train"]["outs"][0]["path"] == "runs/dvc"
    root_digest = formats.read_json(bundle / formats.MANIFEST)["subject"][0]["digest"]["sha256"]

    # the stage's output goes to the remote and comes back, bit for bit
    _sh(["dvc", "push"], repo, env)
    shutil.rmtree(repo / "runs" / "dvc")
    shutil.rmtree(repo / ".dvc" / "cache")
    _sh(["dvc", "pull"], repo, env)
    assert_sealed(bundle)
    assert formats.read_json(bundle / formats.MANIFEST)["subject"][0]["digest"]["sha256"] == root_digest

    # any bundle: `prov dvc push` writes bundles/<run_id>.dvc; `prov dvc pull` restores and checks the seal
    proc = prov("dvc", "push", str(bundle), cwd=repo, env=env)
    assert proc.returncode == 0, proc.stderr
    pointer = repo / "bundles" / f"{bundle.name}.dvc"
    assert pointer.is_file()
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
    proc = prov("dvc", "pull", str(pointer), cwd=repo, env=env)
    assert proc.returncode == 0, proc.stderr
    assert_sealed(repo / "bundles" / bundle.name)

    # a DVC-tracked dataset: manifested with its DVC md5 as well as sha256
    (repo / "points").mkdir()
    (repo / "points" / "points.csv").write_text("".join(f"{i},{2 * i}\n" for i in range(20)))
    _sh(["dvc", "add", "points"], repo, env)
    tracked = yaml.safe_load((repo / "points.dvc").read_text())["outs"][0]
    read = [sys.executable, "-c", "print(open('points/points.csv').read().count(chr(10)))"]
    proc = prov("run", "--runs-dir", "wrapped", "--data", "points", "--", *read, cwd=repo, env=env)
    assert proc.returncode == 0, proc.stderr
    run = only_run(repo / "wrapped")
    assert_sealed(run)
    manifest = formats.read_json(run / "data" / "points" / "manifest.json")
    assert manifest["source"]["type"] == "dvc" and manifest["source"]["md5"] == tracked["md5"]
    assert manifest["source"]["dvc_file"] == "points.dvc" and manifest["source"]["remote"] == "local"
    assert manifest["source"]["fetched"] is None
    assert manifest["dvc"]["verified"] is True and list(manifest["dvc"]["files_md5"]) == ["points.csv"]
    assert manifest["files"][0]["sha256"]

    # ... and fetched through DVC when it is not in the workspace
    _sh(["dvc", "push", "points.dvc"], repo, env)
    shutil.rmtree(repo / "points")
    shutil.rmtree(repo / ".dvc" / "cache")
    proc = prov("run", "--runs-dir", "wrapped2", "--data", "points", "--", *read, cwd=repo, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "points through DVC" in proc.stderr and "20" in proc.stdout
    again = formats.read_json(only_run(repo / "wrapped2") / "data" / "points" / "manifest.json")
    assert again["files"] == manifest["files"] and again["source"]["fetched"] == "dvc pull"


def test_dvc_md5_checked_without_dvc(tmp_path: Path) -> None:
    import hashlib

    import pytest

    from provenance.capture.data import DataMismatch
    from provenance.integrations import dvc

    # DVC's own md5 of a folder holding a.txt ("a\n") and sub/b.txt ("b\n"), as `dvc add` wrote it
    md5s = {"a.txt": hashlib.md5(b"a\n").hexdigest(), "sub/b.txt": hashlib.md5(b"b\n").hexdigest()}
    assert dvc.dir_md5(md5s) == "849835d274483dc683eb416d6e4f887d.dir"
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    remote = store\n")
    (tmp_path / "x.txt").write_text("x\n")
    good = hashlib.md5(b"x\n").hexdigest()
    (tmp_path / "x.txt.dvc").write_text(f"outs:\n- md5: {good}\n  size: 2\n  hash: md5\n  path: x.txt\n")
    info = dvc.tracking_info(tmp_path / "x.txt")
    assert info is not None and info["source"]["md5"] == good and info["source"]["remote"] == "store"
    (tmp_path / "x.txt").write_text("changed\n")
    with pytest.raises(DataMismatch, match=f"expected md5:{good}"):
        dvc.tracking_info(tmp_path / "x.txt")
    assert dvc.tracking_info(tmp_path / ".dvc" / "config") is None
