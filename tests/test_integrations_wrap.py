"""`prov run -- COMMAND`: an unmodified training script (no provenance import) wrapped and sealed."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import offline_env
from test_integrations_common import assert_sealed, only_run, prov

from provenance import formats
from provenance.integrations.outputs import sniff

SCRIPT = textwrap.dedent('''
    """A plain training script: it imports nothing of this project."""
    import sys
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    rows = [line.split(",") for line in Path(sys.argv[1]).read_text().splitlines()]
    x = torch.tensor([[float(a)] for a, _ in rows])
    y = torch.tensor([[float(b)] for _, b in rows])
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(1, 21):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step} loss {loss.item():.6f}", flush=True)
    out = Path(sys.argv[2])
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_file(dict(model.state_dict()), str(out / "model.safetensors"))
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, out / "checkpoints" / "last.pt")
    (out / "notes.txt").write_text("done\\n")
    print("a warning on stderr", file=sys.stderr)
    sys.exit(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
''')


def _setup(tmp: Path) -> Path:
    work = tmp / "work"
    work.mkdir()
    (work / "train_plain.py").write_text(SCRIPT)
    (work / "data").mkdir()
    (work / "data" / "points.csv").write_text("".join(f"{i},{2 * i + 1}\n" for i in range(10)))
    return work


def test_prov_run_wraps_plain_script(tmp_path: Path) -> None:
    work = _setup(tmp_path)
    assert "import provenance" not in SCRIPT and "from provenance" not in SCRIPT
    env = offline_env(tmp_path)
    proc = prov("run", "--name", "plain", "--data", "data/points.csv", "--outputs", "out",
                "--runs-dir", str(tmp_path / "runs"), "--",
                sys.executable, "train_plain.py", "data/points.csv", "out", cwd=work, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step 20 loss" in proc.stdout  # the terminal still sees the child's output
    root = only_run(tmp_path / "runs")
    info = assert_sealed(root)
    assert info["status"] == "completed" and info["exit_status"] == 0 and info["name"] == "plain"
    stdout = (root / formats.STDOUT).read_text()
    assert "step 1 loss" in stdout and "step 20 loss" in stdout
    assert "a warning on stderr" in (root / formats.STDERR).read_text()
    cfg = formats.read_json(root / formats.CONFIG_JSON)
    assert cfg["argv"][1:] == ["train_plain.py", "data/points.csv", "out"]
    assert cfg["config"]["data"] == ["data/points.csv"] and cfg["config"]["outputs"] == ["out"]
    # the code: the working folder (not a git repository) is snapshotted
    code = formats.read_json(root / formats.CODE_JSON)
    assert code["in_git"] is False and "train_plain.py" in code["files"]
    # the declared data, manifested
    manifest = formats.read_json(root / "data" / "points.csv" / "manifest.json")
    assert manifest["files"][0]["path"] == "points.csv" and manifest["files"][0]["records"] == 10
    assert manifest["source"]["type"] == "local"
    # the outputs, copied, hashed and recognised
    index = formats.read_json(root / "outputs" / "index.json")
    files = {f["path"]: f for f in index["outputs"][0]["files"]}
    assert files["model.safetensors"]["format"]["format"] == "safetensors"
    assert files["model.safetensors"]["format"]["parameters"] == 2
    assert files["model.safetensors"]["role"] == "weights"
    assert files["checkpoints/last.pt"]["format"]["format"] == "pytorch-zip"
    assert files["checkpoints/last.pt"]["role"] == "checkpoint"
    assert "role" not in files["notes.txt"] and files["notes.txt"]["during_run"] == "new"
    assert sorted(index["model_files"]) == ["out/checkpoints/last.pt", "out/model.safetensors"]
    copied = root / "outputs" / "out" / "model.safetensors"
    assert copied.read_bytes() == (work / "out" / "model.safetensors").read_bytes()
    command = formats.read_json(root / "command.json")
    assert command["returncode"] == 0 and command["wall_s"] > 0 and command["signal"] is None
    assert command["rusage"]["user_s"] >= 0


def test_prov_run_failing_command_and_changed_data(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    (tmp_path / "d.txt").write_text("one\n")
    code = ("import pathlib, sys, time; time.sleep(0.01); pathlib.Path('d.txt').write_text('two\\n'); "
            "pathlib.Path('out').mkdir(); pathlib.Path('out/w.bin').write_bytes(b'x'); sys.exit(3)")
    proc = prov("run", "--runs-dir", str(tmp_path / "runs"), "--data", "d.txt", "--outputs", "out", "--",
                sys.executable, "-c", code, cwd=tmp_path, env=env)
    assert proc.returncode == 3, proc.stderr
    assert "was modified while the command ran" in proc.stderr
    root = only_run(tmp_path / "runs")
    info = assert_sealed(root)
    assert info["status"] == "failed" and info["exit_status"] == 3
    assert info["error"]["message"] == "the command exited with status 3"
    command = formats.read_json(root / "command.json")
    assert command["data_changed_during_run"][0]["path"] == "d.txt"
    assert (root / "outputs" / "out" / "w.bin").read_bytes() == b"x"  # what a failed run wrote is kept


def test_prov_run_forwards_signals(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "sleeper.py").write_text("import time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    env = offline_env(tmp_path)
    p = subprocess.Popen([sys.executable, "-m", "provenance.cli", "run", "--runs-dir", str(tmp_path / "runs"), "--",
                          sys.executable, "sleeper.py"], cwd=work, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        first = p.stdout.readline()
        assert first.strip() == "ready", first
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + signal.SIGTERM, err
    root = only_run(tmp_path / "runs")
    info = assert_sealed(root)
    assert info["status"] == "interrupted" and info["exit_status"] == 143
    command = formats.read_json(root / "command.json")
    assert command["signal"] == "SIGTERM"
    assert command["signals_received"][0]["signal"] == "SIGTERM"
    assert command["signals_received"][0]["forwarded_to"] == "process group"


def test_prov_run_killed_child_is_failed(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    code = "import os, signal; print('dying', flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    proc = prov("run", "--runs-dir", str(tmp_path / "runs"), "--", sys.executable, "-c", code, cwd=tmp_path, env=env)
    assert proc.returncode == 128 + signal.SIGKILL
    root = only_run(tmp_path / "runs")
    info = assert_sealed(root)
    assert info["status"] == "failed" and info["exit_status"] == 137
    assert "dying" in (root / formats.STDOUT).read_text()


def test_prov_run_missing_program_or_data(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    proc = prov("run", "--runs-dir", str(tmp_path / "runs"), "--", "no-such-program-xyz", cwd=tmp_path, env=env)
    assert proc.returncode == 127
    info = assert_sealed(only_run(tmp_path / "runs"))
    assert info["status"] == "failed"
    proc = prov("run", "--data", "missing.csv", "--", "true", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "runs" / "missing").exists()


def test_sniff_formats(tmp_path: Path) -> None:
    import struct

    (tmp_path / "m.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 5, 7))
    assert sniff(tmp_path / "m.gguf") == {"format": "gguf", "version": 3, "tensors": 5, "metadata_entries": 7}
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07\x12\x04test")
    assert sniff(tmp_path / "m.onnx") == {"format": "onnx", "ir_version": 7}
    (tmp_path / "m.bin").write_bytes(b"\x80\x02}q\x00.")
    assert sniff(tmp_path / "m.bin")["format"] == "pickle"
    (tmp_path / "x.bin").write_bytes(b"random bytes")
    assert sniff(tmp_path / "x.bin") is None


def test_sniff_reads_safetensors_through_the_checked_header(tmp_path: Path) -> None:
    import json
    import struct

    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3, 4), "b": torch.zeros(4, dtype=torch.float16)}, tmp_path / "m.safetensors",
              metadata={"step": "3"})
    assert sniff(tmp_path / "m.safetensors") == {"format": "safetensors", "tensors": 2, "parameters": 16,
                                                 "dtypes": ["F16", "F32"], "metadata_keys": ["step"]}
    raw = json.dumps({"w": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}}).encode()
    (tmp_path / "lies.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(16))
    assert sniff(tmp_path / "lies.safetensors") is None  # claims more than the file holds: not recognised


# --- issue 10.4: what a wrapped run's code snapshot leaves out; output roles from content; keygen -o ----

WRITER = textwrap.dedent('''
    import sys
    from pathlib import Path
    out = Path(sys.argv[1])
    out.mkdir(exist_ok=True)
    (out / "result.txt").write_text("x" * 100000)
''')


def _code_files(root: Path) -> set[str]:
    return set(formats.read_json(root / formats.CODE_JSON)["files"])


def test_wrapped_runs_keep_runs_outputs_and_data_out_of_the_snapshot(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "corpus").mkdir(parents=True)
    (work / "corpus" / "a.txt").write_text("some data\n")
    (work / "w.py").write_text(WRITER)
    env = offline_env(tmp_path)
    roots = []
    for _ in range(2):
        proc = prov("run", "--runs-dir", "results", "--data", "corpus", "--outputs", "out", "--",
                    sys.executable, "w.py", "out", cwd=work, env=env)
        assert proc.returncode == 0, proc.stderr
        roots = sorted((work / "results").iterdir())
    assert len(roots) == 2
    for root in roots:
        assert _code_files(root) == {"w.py"}, _code_files(root)
        excluded = formats.read_json(root / formats.CODE_JSON)["snapshot"]["excluded_paths"]
        assert {"results", "out", "corpus"} <= set(excluded)
    # the same in git, with a runs/ folder that .gitignore does not cover: the patch does not grow
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run(["git", "-C", str(work), "add", "w.py"], check=True)
    subprocess.run(["git", "-C", str(work), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "w"],
                   check=True)
    patches = []
    for _ in range(2):
        proc = prov("run", "--runs-dir", "runs", "--data", "corpus", "--outputs", "out", "--",
                    sys.executable, "w.py", "out", cwd=work, env=env)
        assert proc.returncode == 0, proc.stderr
        newest = max((work / "runs").iterdir(), key=lambda p: p.stat().st_mtime_ns)
        patches.append((newest / formats.CODE_DIFF).read_bytes())
        code = formats.read_json(newest / formats.CODE_JSON)
        assert not [n for n in code["untracked_files"] if n.split("/")[0] in ("runs", "out", "corpus")], code
        assert set(code["files"]) == {"w.py"}, code["files"]
    assert patches[0] == patches[1] and b"runs/" not in patches[1] and b"xxxxxxxx" not in patches[1]


HF_LIKE = textwrap.dedent('''
    import dataclasses, sys
    from pathlib import Path
    import torch
    from safetensors.torch import save_file

    @dataclasses.dataclass
    class TrainingArguments:
        output_dir: str = "out"
        learning_rate: float = 5e-5

    out = Path(sys.argv[1])
    (out / "checkpoint-2").mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    w = {"weight": torch.zeros(2, 2)}
    save_file(w, str(out / "model.safetensors"))
    save_file(w, str(out / "checkpoint-2" / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 0.1}]},
               out / "checkpoint-2" / "optimizer.pt")
    torch.save(TrainingArguments(), out / "training_args.bin")
    torch.save(TrainingArguments(), out / "checkpoint-2" / "training_args.bin")
    (out / "config.json").write_text('{"model_type": "gpt2"}')
    (out / "samples" / "generations.txt").write_text("once upon a time\\n")
    (out / "all_results.json").write_text("{}")
''')


def test_output_roles_come_from_content_and_feed_the_openness_assessment(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "hf_like.py").write_text(HF_LIKE)
    proc = prov("run", "--runs-dir", str(tmp_path / "runs"), "--outputs", "out", "--",
                sys.executable, "hf_like.py", "out", cwd=work, env=offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    root = only_run(tmp_path / "runs")
    index = formats.read_json(root / "outputs" / "index.json")
    roles = {f["path"]: f.get("role") for f in index["outputs"][0]["files"]}
    assert roles == {"model.safetensors": "weights", "checkpoint-2/model.safetensors": "checkpoint",
                     "checkpoint-2/optimizer.pt": "training_state", "training_args.bin": "training_state",
                     "checkpoint-2/training_args.bin": "training_state", "config.json": "model_config",
                     "samples/generations.txt": "sample_output", "all_results.json": None}
    assert sorted(index["model_files"]) == ["out/checkpoint-2/model.safetensors", "out/model.safetensors"]
    import provenance.integrations.checks  # noqa: F401
    from provenance.audit import audit

    report = audit(root).openness
    assert report.component("final_parameters").found
    assert report.component("final_parameters").files == ["outputs/out/model.safetensors"]
    assert report.component("sample_outputs").files == ["outputs/out/samples/generations.txt"]
    assert "outputs/out/checkpoint-2/model.safetensors" in report.component("intermediate_parameters").files


def test_keygen_takes_the_private_keys_path(tmp_path: Path) -> None:
    proc = prov("keygen", "-o", str(tmp_path / "key.pem"), env=offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "key.pem").is_file() and (tmp_path / "key.pub.pem").is_file()
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" in (tmp_path / "key.pem").read_bytes()
    again = prov("keygen", "-o", str(tmp_path / "key.pem"), env=offline_env(tmp_path))
    assert again.returncode == 2 and "already exists" in again.stderr
