"""Issue 18 item 5: secrets in files of the working folder and on the command line reach no byte of a bundle,
code snapshot members included."""

from __future__ import annotations

import io
import secrets
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import offline_env
from test_integrations_common import assert_sealed, prov

from provenance import formats
from provenance.redact import Redactor, is_secret_arg_name, secret_arg_values

SCRIPT = "import sys\nprint('argv:', ' '.join(sys.argv), flush=True)\nprint('err:', sys.argv[-1], file=sys.stderr)\n"


def _plant(work: Path) -> tuple[dict[str, str], list[str]]:
    """Secret-bearing files and secret arguments; returns ({name: secret}, the command's arguments)."""
    s = {k: f"{k}-{secrets.token_hex(10)}" for k in ("envfile", "rsa", "pem", "cred", "netrc", "url", "hf", "api",
                                                      "wandb", "pw", "in_source")}
    (work / ".env").write_text(f"ONLY_IN_ENV_FILE={s['envfile']}\n")
    (work / "id_rsa").write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{s['rsa']}\n")
    (work / "server.pem").write_text(f"-----BEGIN PRIVATE KEY-----\n{s['pem']}\n")
    (work / "credentials.json").write_text(f'{{"secret": "{s["cred"]}"}}\n')
    (work / ".netrc").write_text(f"machine example.com login bob password {s['netrc']}\n")
    (work / "settings.py").write_text(f'INDEX = "https://bob:{s["url"]}@pypi.example.invalid/simple"\n'
                                      f'# the token also pasted here: {s["hf"]}\n')
    (work / "train.py").write_text(SCRIPT)
    args = ["train.py", f"--hf_token={s['hf']}", "--api-key", s["api"], f"wandb.api_key={s['wandb']}",
            "--db-password", s["pw"], "--max_tokens=100"]
    return s, args


def _scan(root: Path, planted: dict[str, str]) -> int:
    """Every byte of every file, and every member of the code snapshot, extracted."""
    blobs = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with tarfile.open(fileobj=io.BytesIO(blobs[formats.CODE_SNAPSHOT])) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m)
            blobs[f"{formats.CODE_SNAPSHOT}::{m.name}"] = f.read() if f else b""
    for name, data in blobs.items():
        for key, value in planted.items():
            assert value.encode() not in data, f"the {key} secret leaked into {name}"
    return len(blobs)


@pytest.mark.parametrize("in_git", [False, True])
def test_planted_secrets_reach_no_byte_of_the_bundle(tmp_path: Path, in_git: bool) -> None:
    work = tmp_path / "work"
    work.mkdir()
    planted, args = _plant(work)
    if in_git:  # the secret files are untracked and not ignored
        subprocess.run(["git", "init", "-q", str(work)], check=True)
        subprocess.run(["git", "-C", str(work), "add", "train.py"], check=True)
        subprocess.run(["git", "-C", str(work), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "t"],
                       check=True)
    proc = prov("run", "--runs-dir", str(tmp_path / "runs"), "--", sys.executable, *args, cwd=work,
                env=offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    root = next((tmp_path / "runs").iterdir())
    assert _scan(root, planted) > 10
    code = formats.read_json(root / formats.CODE_JSON)
    excluded = set(code["snapshot"]["secret_files_excluded"])
    assert {".env", "id_rsa", "server.pem", "credentials.json", ".netrc"} <= excluded
    assert "settings.py" in code["files"] and "settings.py" in code["snapshot"]["redacted_files"]
    cfg = formats.read_json(root / formats.CONFIG_JSON)
    assert "--hf_token=[REDACTED]" in cfg["argv"] and "--max_tokens=100" in cfg["argv"]
    assert "argv:" in (root / formats.STDOUT).read_text() and "[REDACTED]" in (root / formats.STDOUT).read_text()
    command = formats.read_json(root / "command.json")
    assert command["command"] == cfg["argv"]
    assert_sealed(root)  # the audit passes: the config digest is the redacted config's


def test_secret_argument_names() -> None:
    for name in ("--hf_token", "--api-key", "wandb.api_key", "--db-password", "--auth", "--secret", "TOKEN"):
        assert is_secret_arg_name(name), name
    for name in ("--max_tokens", "--tokenizer", "--key_dim", "--n_tokens", "--author", "--keys_per_batch"):
        assert not is_secret_arg_name(name), name
    assert secret_arg_values(["--use-auth", "true", "--token", "123456"]) == []
    r = Redactor({}, ["--api-key", "sk-0123456789"])
    assert r.text("called with sk-0123456789") == "called with [REDACTED]"
