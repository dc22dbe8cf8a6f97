"""Declared outputs of a wrapped command: copied into the bundle, hashed, model files recognised.

Model and checkpoint files are recognised by their bytes (magic numbers and headers),
never by loading them: a pickle is named as such and never unpickled.

    outputs/index.json             what was declared, and every file with size, sha256, format
    outputs/<label>/<path>         the copied files (unless only hashed)
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

from provenance import reader
from provenance.bundle import BundleWriter
from provenance.hashing import sha256_file
from provenance.integrations.layout import OUTPUTS_DIR, OUTPUTS_INDEX, OUTPUTS_SCHEMA

_CHECKPOINT_HINTS = ("checkpoint", "ckpt", "optimizer", "step-", "step_", "global_step")
_MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx")


def _safetensors(path: Path, head: bytes, size: int) -> dict[str, Any] | None:
    """The facts of a safetensors file, from its header checked by the one parser (reader.safetensors_header:
    dtypes, shapes and offsets against the file's size); None when it is not one."""
    if len(head) < 9 or head[8:9] != b"{":
        return None
    try:
        h = reader.safetensors_header(path)
    except (OSError, reader.HeaderError):
        return None
    return {"format": "safetensors", "tensors": len(h.tensors), "parameters": h.parameters, "dtypes": h.dtypes,
            "metadata_keys": sorted(h.metadata)}


def _zip(path: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return {"format": "zip", "readable": False}
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return {"format": "pytorch-zip", "contains_pickle": True, "unpickled": False, "entries": len(names),
                "note": "torch.save archive; recognised by its zip layout, never loaded"}
    return {"format": "zip", "entries": len(names)}


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while i < len(buf):
        b = buf[i]
        out |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return out, i
        shift += 7
    raise ValueError("truncated varint")


def sniff(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Recognise a model or checkpoint file by its bytes; None when it is not one."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
    st = _safetensors(path, head, size)
    if st is not None:
        return st
    if head[:4] == b"GGUF" and len(head) >= 24:
        version, tensors, kvs = struct.unpack("<IQQ", head[4:24])
        return {"format": "gguf", "version": version, "tensors": tensors, "metadata_entries": kvs}
    if head[:4] == b"PK\x03\x04":
        return _zip(path)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return {"format": "pickle", "protocol": head[1], "unpickled": False,
                "note": "legacy torch.save or plain pickle; recognised by its opcode, never loaded"}
    if head[:6] == b"\x93NUMPY":
        return {"format": "npy", "version": f"{head[6]}.{head[7]}"}
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return {"format": "hdf5"}
    if path.suffix == ".onnx" and head[:1] == b"\x08":  # ModelProto field 1 (ir_version), varint
        try:
            ir_version, _ = _varint(head, 1)
        except ValueError:
            return None
        return {"format": "onnx", "ir_version": ir_version}
    return None


# roles of output files (outputs/index.json "role"); the openness assessment reads them
WEIGHTS, CHECKPOINT, TRAINING_STATE, MODEL_CONFIG, SAMPLE_OUTPUT, LOG = (
    "weights", "checkpoint", "training_state", "model_config", "sample_output", "log")
MODEL_ROLES = (WEIGHTS, CHECKPOINT)  # files that hold a model's tensors
_STATE_NAMES = ("optimizer", "scheduler", "rng_state", "training_args", "trainer_state", "scaler")
_CONFIG_NAMES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model",
                 "added_tokens.json", "preprocessor_config.json", "chat_template.jinja")
_SAMPLE_HINTS = ("sample", "generation", "generated", "prediction", "completion", "outputs_of")
_SAMPLE_SUFFIXES = (".txt", ".md", ".json", ".jsonl", ".csv", ".tsv", ".html", ".png", ".jpg", ".jpeg",
                    ".gif", ".webp", ".wav", ".mp3", ".flac", ".svg")
_LOG_SUFFIXES = (".log",)
_MAX_PICKLE_SCAN = 64 << 20


def pickle_holds_tensors(data: bytes) -> bool | None:
    """Whether a pickle stream rebuilds tensors, read opcode by opcode (never executed); None if unreadable."""
    import pickletools

    found_globals: list[str] = []
    stream = io.BytesIO(data)
    try:
        # a legacy torch.save is several pickles in a row (magic number, protocol, system info, the object)
        for _ in range(4):
            if stream.tell() >= len(data):
                break
            recent: list[str] = []
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8") and isinstance(arg, str):
                    recent = [*recent, arg][-2:]
                elif op.name == "GLOBAL" and isinstance(arg, str):
                    found_globals.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(recent) == 2:
                    found_globals.append(".".join(recent))
    except Exception:  # a truncated or malformed stream (or raw storage bytes after the pickles)
        if not found_globals:
            return None
    return any("_rebuild_tensor" in g or g.endswith("Storage") or "_rebuild_parameter" in g
               for g in found_globals)


def _zip_holds_tensors(path: Path) -> bool | None:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            pkl = next((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), None)
            if pkl is None:
                return None
            if any("/data/" in n for n in names):  # tensor storages are stored as <archive>/data/<key>
                return True
            info = z.getinfo(pkl)
            if info.file_size > _MAX_PICKLE_SCAN:
                return None
            return pickle_holds_tensors(z.read(pkl))
    except (zipfile.BadZipFile, OSError, KeyError, ValueError):
        return None


def role(rel: str, fmt: dict[str, Any] | None, path: Path | None = None) -> str | None:
    """What an output file is, from its bytes first and its name second.

    'weights' (tensors of a model), 'checkpoint' (tensors saved mid-run, by their path:
    checkpoint-500/, ckpt, step-...), 'training_state' (an optimizer, scheduler or RNG
    state, or a pickle without tensors such as an HF `training_args.bin`), 'model_config'
    (config and tokenizer files), 'sample_output' (text, tables or media under a folder or
    name that says samples, generations or predictions), 'log'; None for anything else.
    """
    low = rel.lower()
    base = low.rsplit("/", 1)[-1]
    in_checkpoint = any(h in low for h in _CHECKPOINT_HINTS)
    if fmt is not None:
        kind = fmt.get("format")
        if kind in ("zip", "npy", "hdf5") and Path(rel).suffix not in _MODEL_SUFFIXES:
            return None  # an archive or array that is not named as a model file
        tensors: bool | None = True
        if kind == "pytorch-zip" and path is not None:
            tensors = _zip_holds_tensors(path)
        elif kind == "pickle" and path is not None:
            try:
                with open(path, "rb") as f:
                    tensors = pickle_holds_tensors(f.read(_MAX_PICKLE_SCAN))
            except OSError:
                tensors = None
        elif kind == "safetensors" and not fmt.get("tensors"):
            tensors = False
        if tensors is False:
            return TRAINING_STATE  # e.g. training_args.bin: a pickled object, no tensors
        if any(base.startswith(n) for n in _STATE_NAMES):
            return TRAINING_STATE
        return CHECKPOINT if in_checkpoint else WEIGHTS
    if base in _CONFIG_NAMES:
        return MODEL_CONFIG if not in_checkpoint else None
    if base.endswith(_LOG_SUFFIXES) or base.startswith("events.out.tfevents"):
        return LOG
    if any(h in low for h in _SAMPLE_HINTS) and base.endswith(_SAMPLE_SUFFIXES):
        return SAMPLE_OUTPUT
    return None


def files_by_role(index: dict[str, Any]) -> dict[str, list[str]]:
    """{role: [bundle path (or outputs/<label>/<path> when only hashed)]} of an outputs index."""
    out: dict[str, list[str]] = {}
    for entry in index.get("outputs") or []:
        for f in entry.get("files") or []:
            r = f.get("role")
            if isinstance(r, str):
                where = f.get("bundle_path") or f"{OUTPUTS_DIR}/{entry.get('label')}/{f.get('path')}"
                out.setdefault(r, []).append(where)
    return out


def _label(path: Path, taken: set[str]) -> str:
    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in path.name).strip(".") or "output"
    if base == "index.json":
        base = "index.json-output"
    label, i = base, 2
    while label in taken:
        label, i = f"{base}-{i}", i + 1
    taken.add(label)
    return label


def _walk(path: Path, exclude: Path | None) -> tuple[list[str], list[str]]:
    """(regular files, skipped entries) under path, relative posix paths, sorted."""
    if path.is_file() and not path.is_symlink():
        return [path.name], []
    files: list[str] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(path):
        d = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            p = d / name
            if p.is_symlink() or (exclude is not None and p.resolve() == exclude):
                skipped.append(p.relative_to(path).as_posix())
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            p = d / name
            rel = p.relative_to(path).as_posix()
            if p.is_symlink() or not p.is_file():
                skipped.append(rel)
            else:
                files.append(rel)
    return sorted(files), sorted(skipped)


def snapshot_stats(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """{absolute file path: (size, mtime_ns)} of what the outputs held before the command ran."""
    out: dict[str, tuple[int, int]] = {}
    for p in paths:
        if not p.exists():
            continue
        files, _ = _walk(p, None)
        base = p.parent if p.is_file() else p
        for rel in files:
            st = (base / rel).stat()
            out[str(base / rel)] = (st.st_size, st.st_mtime_ns)
    return out


def collect_outputs(writer: BundleWriter, declared: list[str], cwd: Path, before: dict[str, tuple[int, int]],
                    copy: bool = True) -> dict[str, Any]:
    """Copy (or only hash) the declared outputs into the bundle; write and return outputs/index.json."""
    taken: set[str] = set()
    entries = []
    exclude = writer.root.resolve()
    for text in declared:
        path = (cwd / text).resolve()
        label = _label(path, taken)
        entry: dict[str, Any] = {"declared": text, "label": label, "exists": path.exists(), "files": [],
                                 "skipped": []}
        if path.exists():
            if exclude == path or exclude in path.parents:
                entry["skipped"] = ["(inside the run's own bundle)"]
                entries.append(entry)
                continue
            files, entry["skipped"] = _walk(path, exclude)
            entry["kind"] = "file" if path.is_file() else "folder"
            base = path.parent if path.is_file() else path
            for rel in files:
                src = base / rel
                bundle_rel = f"{OUTPUTS_DIR}/{label}" + ("" if path.is_file() else f"/{rel}")
                if copy:
                    hexd = writer.copy_file(src, bundle_rel)
                    fmt = sniff(writer.path(bundle_rel))
                else:
                    hexd = sha256_file(src)
                    fmt = sniff(src)
                st = src.stat()
                prev = before.get(str(src))
                change = "new" if prev is None else ("unchanged" if prev == (st.st_size, st.st_mtime_ns)
                                                     else "modified")
                item: dict[str, Any] = {"path": rel, "size": st.st_size, "sha256": hexd, "during_run": change}
                if copy:
                    item["bundle_path"] = bundle_rel
                if fmt is not None:
                    item["format"] = fmt
                r = role(rel, fmt, writer.path(bundle_rel) if copy else src)
                if r is not None:
                    item["role"] = r
                entry["files"].append(item)
        entries.append(entry)
    index = {"schema": OUTPUTS_SCHEMA, "copied": copy, "outputs": entries,
             "model_files": [f"{e['label']}/{f['path']}" for e in entries for f in e["files"]
                             if f.get("role") in MODEL_ROLES]}
    writer.write_json(OUTPUTS_INDEX, index)
    return index
