"""The one bundle reader, the bounded JSON parser, escaped printing and the typed records."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from provenance import config, formats, records
from provenance.reader import Bundle, BundleFileError, HeaderError, Refused, parse_jsonl, read_safetensors_header
from provenance.untrusted import UntrustedJSONError, escape, escape_lines, loads


def test_bounded_json_refuses_depth_digits_size_and_non_utf8() -> None:
    assert loads(b'{"a": [1, 2.5, "x"], "n": 123456789012345678901234567890}')["n"] == 123456789012345678901234567890
    with pytest.raises(UntrustedJSONError, match="nested more than 64 levels"):
        loads(b"[" * 65 + b"]" * 65)
    with pytest.raises(UntrustedJSONError, match="nested more than"):
        loads(b"[" * 100_000 + b"]" * 100_000)  # deeper than the interpreter's stack: still one clear error
    loads(b"[" * 64 + b"]" * 64)
    with pytest.raises(UntrustedJSONError, match="an integer with 5000 digits"):
        loads(b'{"step": ' + b"7" * 5000 + b"}")
    with pytest.raises(UntrustedJSONError, match="number literal"):
        loads(b"[1." + b"5" * 100 + b"]")
    with pytest.raises(UntrustedJSONError, match="not UTF-8"):
        loads(b'{"name": "\xff\xfe"}')
    with pytest.raises(UntrustedJSONError, match="larger than the 10-byte limit"):
        from provenance.untrusted import JSONLimits

        loads(b'{"a": "0123456789"}', JSONLimits(max_bytes=10))
    with pytest.raises(formats.FormatError, match="an integer with 5000 digits"):
        p = Path(os.environ.get("TMPDIR", "/tmp")) / f"prov-test-{os.getpid()}.json"
        p.write_bytes(b"[" + b"1" * 5000 + b"]")
        try:
            formats.read_json(p)
        finally:
            p.unlink()


def test_escape_never_lets_a_control_character_through() -> None:
    forged = "x\nINTEGRITY    PASS  \x1b[32mok\u202e\ud800"
    out = escape(forged)
    assert "\n" not in out and "\x1b" not in out and "\u202e" not in out and "\ud800" not in out
    assert out == "x\\nINTEGRITY    PASS  \\x1b[32mok\\u202e\\ud800"
    assert escape_lines("a\nb\x07") == "a\nb\\x07"
    assert escape("plain naïve ünïcode") == "plain naïve ünïcode"


def test_jsonl_names_lines_and_a_torn_tail() -> None:
    recs, problems = parse_jsonl(b'{"step": 1}\n[1]\n{"step": 2}\n{"step": 3', "logs/metrics.jsonl")
    assert [r["step"] for _, r in recs] == [1, 2]
    assert problems[0] == "line 2: not a JSON object"
    assert problems[1].startswith("line 4:") and "unterminated" in problems[1]


def _safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_safetensors_header_is_checked_against_the_file() -> None:
    good = _safetensors({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                         "__metadata__": {"fullyopen": '{"step": 3}'}}, bytes(16))
    h = read_safetensors_header(io.BytesIO(good), len(good))
    assert h.parameters == 4 and h.dtypes == ["F32"] and h.fullyopen_metadata() == {"step": 3}
    cases = {
        "outside the file": _safetensors({"w": {"dtype": "F32", "shape": [2**58], "data_offsets": [0, 2**60]}},
                                         bytes(16)),
        "needs 16 bytes": _safetensors({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}, bytes(8)),
        "unknown dtype": _safetensors({"w": {"dtype": "EVIL", "shape": [1], "data_offsets": [0, 1]}}, bytes(1)),
        "nested more than": _safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4],
                                                "x": [[[[[[[[[[1]]]]]]]]]]}}, bytes(4)),
        "limit": struct.pack("<Q", 2**60) + b"{}",
    }
    for says, blob in cases.items():
        with pytest.raises(HeaderError, match=says):
            read_safetensors_header(io.BytesIO(blob), len(blob))


def test_the_real_safetensors_writer_passes_the_checks(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"a": np.zeros((3, 5), dtype=np.float32), "b": np.ones(7, dtype=np.int64)}, str(tmp_path / "m.st"),
              metadata={"k": "v"})
    from provenance.reader import safetensors_header

    h = safetensors_header(tmp_path / "m.st")
    assert h.parameters == 22 and h.metadata == {"k": "v"}


def _tar(members: list[tuple[str, bytes, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def _folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    root = tmp_path / "b"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.mark.parametrize("members,says", [
    ([("../x", tarfile.REGTYPE, b"x")], "escapes the destination"),
    ([("/etc/x", tarfile.REGTYPE, b"x")], "absolute path"),
    ([("a", tarfile.SYMTYPE, b"")], "symbolic link"),
    ([("dev", tarfile.CHRTYPE, b"")], "character device"),
    ([("a", tarfile.REGTYPE, b"x"), ("a/b", tarfile.REGTYPE, b"y")], "needs 'a' to be a folder"),
    ([("a/b", tarfile.REGTYPE, b"x"), ("a", tarfile.REGTYPE, b"y")], "appears more than once"),
    ([("a", tarfile.REGTYPE, b"x"), ("a", tarfile.REGTYPE, b"y")], "appears more than once"),
])
def test_tar_members_of_a_bundle_file_are_read_like_an_archive(tmp_path: Path, members: list, says: str) -> None:
    root = _folder(tmp_path, {"run.json": b"{}", "code/source.tar": _tar(members)})
    with Bundle(root) as b, pytest.raises(BundleFileError, match=says) as exc:
        b.tar_members("code/source.tar")
    assert exc.value.rel == "code/source.tar"


def test_bundle_reads_a_folder_and_refuses_escapes(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"run.json": b'{"run_id": "r"}', "logs/metrics.jsonl": b'{"step": 0}\n{"step": 1}\n',
                              "code/source.tar": _tar([("train.py", tarfile.REGTYPE, b"print(1)\n")]),
                              "deep.json": b"[" * 200 + b"]" * 200})
    b = Bundle(root)
    assert b.kind == "folder" and b.has("run.json") and b.run_info == {"run_id": "r"}
    assert b.metric_steps() == [0, 1]
    assert [m.name for m in b.tar_members("code/source.tar") if not m.is_dir] == ["train.py"]
    with pytest.raises(BundleFileError, match="escapes the bundle"):
        b.path("../outside", where="checkpoints/index.json")
    with pytest.raises(BundleFileError, match=r"deep\.json: JSON nested too deeply; refused"):
        b.json("deep.json")
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(Refused, match="link: a symbolic link"):
        Bundle(root)
    (root / "link").unlink()
    os.mkfifo(root / "fifo")
    with pytest.raises(Refused, match="fifo: a FIFO"):
        Bundle(root)


def test_records_are_strict_on_known_keys_and_keep_unknown_ones() -> None:
    info = records.parse(records.RunInfo, {"schema": formats.BUNDLE_SCHEMA, "run_id": "r", "status": "completed",
                                           "exit_status": 0, "added_later": {"x": 1}}, formats.RUN_JSON)
    assert info.status == "completed" and info.extra == {"added_later": {"x": 1}}
    assert records.to_dict(info)["added_later"] == {"x": 1}
    with pytest.raises(records.RecordError, match=r"run.json: key 'status' must be one of 'running'"):
        records.parse(records.RunInfo, {"schema": formats.BUNDLE_SCHEMA, "run_id": "r", "status": "done"}, "run.json")
    with pytest.raises(records.RecordError, match=r"key 'exit_status' must be int \| None"):
        records.parse(records.RunInfo, {"schema": formats.BUNDLE_SCHEMA, "run_id": "r", "status": "failed",
                                        "exit_status": "1"}, "run.json")
    idx = records.parse(records.CheckpointIndex, formats.checkpoint_index([
        {"step": 2, "path": formats.checkpoint_name(2), "sha256": "0" * 64, "size": 10}]), formats.CHECKPOINT_INDEX)
    assert idx.checkpoints[0].path == "checkpoints/step-00000002.safetensors"
    note = formats.note_record("why", "data", "me", [], 3)
    assert records.parse(records.Note, note, "notes.jsonl line 1").step == 3
    with pytest.raises(records.RecordError, match="missing required key 'text'"):
        records.parse(records.Note, {k: v for k, v in note.items() if k != "text"}, "notes.jsonl line 1")
    for cls, schema in records.SCHEMAS.items():
        with pytest.raises(records.RecordError, match=f"must be one of '{schema}'"):
            records.parse(cls, {"schema": "fullyopen.other/v9"}, "f.json")


@dataclass
class C:
    mode: Literal["a", "b"] = "a"
    n: Literal[1, 2] = 1


def test_config_loader_supports_literal() -> None:
    assert config.from_dict(C, {"mode": "b", "n": 2}) == C("b", 2)
    with pytest.raises(config.ConfigError, match="key 'mode' must be one of 'a', 'b', got 'c'"):
        config.from_dict(C, {"mode": "c"})
    with pytest.raises(config.ConfigError, match="key 'n' must be one of 1, 2, got True"):
        config.from_dict(C, {"n": True})


def test_typed_accessors_of_a_real_bundle(tiny_bundle: Path) -> None:
    with Bundle(tiny_bundle) as b:
        info, cfg, index = b.run_record(), b.config_record(), b.checkpoint_index()
        assert info.status == "completed" and info.exit_status == 0 and info.world_size == 1
        assert cfg.digest_ok() and cfg.argv and cfg.command_digest == formats.command_digest(cfg.argv)
        assert index is not None and [e.step for e in index.checkpoints] == [6, 12]
        assert all(b.data_manifest(d).name == d for d in info.datasets)
        assert b.order_header(0).rank == 0 and [s.step for s in b.order(0)] == list(range(1, 13))
        notes, problems = b.notes()
        assert notes and not problems and {n.category for _, n in notes} >= {"purpose"}
        assert [r["step"] for r in b.records(formats.METRICS)] == list(range(1, 13))


def test_typed_accessors_name_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / formats.RUN_JSON).write_text(json.dumps({"schema": formats.BUNDLE_SCHEMA, "run_id": "r",
                                                          "status": "completed", "world_size": "2"}))
    (tmp_path / formats.METRICS).write_text('{"step": 1}\n[2]\n{"step": 3')
    (tmp_path / formats.NOTES).write_text(json.dumps({"schema": formats.NOTE_SCHEMA, "time": "t", "author": "a",
                                                       "category": "gossip", "text": "x"}) + "\n")
    with Bundle(tmp_path) as b:
        with pytest.raises(BundleFileError, match=r"^run.json: key 'world_size' must be int, got '2'"):
            b.run_record()
        with pytest.raises(BundleFileError, match=r"^logs/metrics.jsonl: line 2: not a JSON object"):
            b.records(formats.METRICS)
        assert b.checkpoint_index() is None and b.order(0) == []
        notes, problems = b.notes()
        assert notes == [] and problems[0].startswith("line 1: key 'category' must be one of 'purpose'")


def test_rank_summaries_are_merged_through_the_reader(tmp_path: Path) -> None:
    from provenance.replay import SUMMARY, merge_rank_summaries

    rank0 = {"schema": formats.REPRODUCTION_SCHEMA, "divergences": {"order": 0, "loss": 0, "checkpoint": 0},
             "first_divergence": None, "bitwise": True, "steps_checked": 4}
    rank1 = {**rank0, "divergences": {"order": 0, "loss": 1, "checkpoint": 0}, "bitwise": False,
             "first_divergence": {"step": 3, "kind": "loss"}}
    (tmp_path / "reproduction").mkdir()
    (tmp_path / SUMMARY.replace(".json", ".rank1.json")).write_text(json.dumps(rank1))
    out = merge_rank_summaries(rank0, tmp_path, 3)
    assert out["divergences"]["loss"] == 1 and out["first_divergence"] == {"step": 3, "kind": "loss", "rank": 1}
    assert out["bitwise"] is False and out["ranks"][2] == {"rank": 2, "bitwise": False, "missing": "summary.rank2.json"}
    (tmp_path / SUMMARY.replace(".json", ".rank1.json")).write_text(json.dumps({**rank1, "bitwise": "no"}))
    with pytest.raises(formats.FormatError, match=r"summary.rank1.json: key 'bitwise' must be bool"):
        merge_rank_summaries(rank0, tmp_path, 2)
