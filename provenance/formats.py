"""File formats of a run bundle: the only module that knows layouts and schema versions.

Everything here is pure encoding and decoding (plus atomic file writes);
the logic that decides *what* to write lives in higher layers.
See docs/bundle-format.md for the prose version of this module.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provenance import untrusted
from provenance.hashing import ALGORITHM, root_digest

BUNDLE_SCHEMA = "fullyopen.bundle/v1"
DATA_MANIFEST_SCHEMA = "fullyopen.data-manifest/v1"
CHECKPOINT_INDEX_SCHEMA = "fullyopen.checkpoint-index/v1"
NOTE_SCHEMA = "fullyopen.note/v1"
DATA_COMMITMENT_SCHEMA = "fullyopen.data-commitment/v1"  # data/<dataset>/commitment.json: Merkle roots, sample ids
TORCH_MODULE_SCHEMA = "fullyopen.torch-module/v1"  # model/config.json of a plain torch.nn.Module (run.save_model)
PROOF_SCHEMA = "fullyopen.data-proof/v1"  # prov prove: a record's membership (or absence) and when it was trained
CHECKPOINT_SCHEMA = "fullyopen.checkpoint/v1"  # metadata of a training-state checkpoint (capture/state.py)
WRAPPED_COMMAND_SCHEMA = "fullyopen.wrapped-command/v1"  # command.json of `prov run`
OUTPUTS_SCHEMA = "fullyopen.outputs/v1"  # outputs/index.json of `prov run`
HF_TRAINER_SCHEMA = "fullyopen.hf-trainer/v1"  # integrations/hf.json
WANDB_SCHEMA = "fullyopen.wandb/v1"  # integrations/wandb.json
REPRODUCTION_SCHEMA = "fullyopen.reproduction/v1"  # reproduction/summary.json (replay)
REPRODUCTION_REPORT_SCHEMA = "fullyopen.reproduction-report/v1"  # reproduction/report.json (prov reproduce)
REPRODUCTION_CHAIN_SCHEMA = "fullyopen.reproduction-chain/v1"  # prov reproduce --chain --json
REPRO_SUMMARY = "reproduction/summary.json"  # a replayed run's summary (records.ReproductionSummary)
REPRO_STEPS = "reproduction/steps.jsonl"  # each compared step and checkpoint
REPRO_REPORT = "reproduction/report.json"  # prov reproduce's verdict
DIFF_SCHEMA = "fullyopen.diff/v1"  # `prov diff --json`
AUDIT_SCHEMA = "fullyopen.audit/v1"  # `prov audit --json`
RELEASE_SCHEMA = "fullyopen.release/v1"  # release/release.json
HASH_CACHE_SCHEMA = "fullyopen.hash-cache/v1"  # the persistent data hash cache (datasets/hashcache.py)
LINEAGE_AUDIT_SCHEMA = "fullyopen.lineage-audit/v1"  # `prov audit --lineage --json`

# --- the environment a reproduction hands start_run (its one definition: run sets nothing, reproduce reads nothing)
RUNS_DIR_ENV = "PROV_RUNS_DIR"  # where start_run writes the bundle; wins over its runs_dir argument
DATA_ROOT_ENV = "PROV_DATA_ROOT"  # a reproduction's data folder: relative data paths resolve under it
THREADS_ENV = "PROV_THREADS"  # the thread count start_run sets; wins over its threads argument

# --- the layout of runs/<run_id>/ -------------------------------------------------------
RUN_JSON = "run.json"  # identity, status, times, exit status, seeds, threads
CONFIG_JSON = "config.json"  # resolved config, its digest, the command line
# keys of CONFIG_JSON's config that name places on the machine that ran: where the bundle was written, the
# data root, the checkpoint a run continued from. A reproduction sets its own by design (prov reproduce
# redirects them into its work folder), and they cannot change the numbers by themselves (the data, the
# checkpoints and the metrics are compared by content). The one definition: prov reproduce never counts them
# as a cause, prov diff shows them but does not count them (--exit-code)
PATH_KEYS = frozenset({"run.runs_dir", "data.root", "run.resume_from"})
CODE_JSON = "code/code.json"  # git facts and the per-file digests of the snapshot
CODE_DIFF = "code/diff.patch"  # uncommitted changes, untracked files included
CODE_SNAPSHOT = "code/source.tar"  # the source that ran (deterministic tar)
ENV_JSON = "env/environment.json"
# key of ENV_JSON, written when the run ends: {distribution: version} of what the process had imported
IMPORTED_DISTRIBUTIONS = "imported_distributions"
# key of ENV_JSON, written when the run ends: the device the run's process trained on (capture.env.training_device:
# {"type": "cpu" | "cuda" | "xpu" | "mps" | "unknown", "cuda_initialized", "max_memory_allocated": {device index:
# peak bytes} (cuda, xpu), "driver_allocated_memory" (mps), "available" (other accelerators torch had), "evidence"});
# any type but "cpu" makes no bitwise claim unless it is cuda with its determinism settings; absent for a
# `prov run` capture (the command trains in its own processes) and older bundles
TRAINING_DEVICE = "device"
DATA_DIR = "data"  # data/<dataset>/manifest.json and data/<dataset>/files/...

ORDER_DIR = "order"  # order/rank<R>.json, .ids.u32, .steps.bin
METRICS = "logs/metrics.jsonl"
EVALS = "logs/eval.jsonl"
EVENTS = "logs/events.jsonl"  # lifecycle events and contained observer failures
STDOUT = "logs/stdout.log"
STDERR = "logs/stderr.log"
NOTES = "notes.jsonl"
RESEALS = "reseals.jsonl"  # every re-seal of a sealed bundle: the root digest before, what changed, why
RESEAL_SCHEMA = "fullyopen.reseal/v1"
RELEASE_COMMAND = "prov release"  # the command its re-seal records name (a release's own re-seals)
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_INDEX = "checkpoints/index.json"
MODEL_DIR = "model"  # save_pretrained form of the final model, with its tokenizer
OUTPUTS_INDEX = "outputs/index.json"  # `prov run --outputs`: every declared output file (integrations.outputs)
MANIFEST = "manifest.json"  # the seal: OMS in-toto statement over every other file
LOCK = ".lock"  # held by the live writer; never part of the bundle
SIGNATURE = "release/model.sig"  # model_signing signature over the sealed bundle (written after the seal)
SIGSTORE_SIGNATURE = "release/model.sigstore.json"  # keyless Sigstore signature, when one is made

# files that are never part of the sealed resources
UNSEALED = frozenset({MANIFEST, LOCK, SIGNATURE, SIGSTORE_SIGNATURE})

STATUSES = ("running", "completed", "failed", "interrupted")
END_EVENTS = ("completed", "failed", "interrupted")  # a rank's last event: written after all its other files


def rank_log(rel: str, rank: int) -> str:
    """A per-rank log's name in a distributed run (events, stdout, stderr): `<stem>.rank<R><suffix>`."""
    stem, dot, suffix = rel.rpartition(".")
    return f"{stem}.rank{rank}{dot}{suffix}"

# notes
NOTE_CATEGORIES = (
    "purpose",  # why the run exists (run.purpose, --note)
    "override",  # a config key changed from the config file on the command line (details: key, old, new)
    "reproduction",  # a run that reproduces another one (details: the original, what differs)
    "hyperparameter",
    "data",
    "restart",
    "incident",
    "evaluation",
    "release",
    "code",
    "other",
)

# --- small helpers ---------------------------------------------------------------------


def data_manifest_path(name: str) -> str:
    """data/<name>/manifest.json: the manifest of dataset `name` in a bundle."""
    return f"{DATA_DIR}/{name}/manifest.json"


def utc_now() -> str:
    """UTC ISO-8601 timestamp with microseconds and a Z suffix."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Strict JSON (RFC 8259) has no NaN or infinities (Python's json writes them as the bare words NaN, Infinity,
# which strict parsers, jq and JavaScript's JSON.parse reject). Every JSON the package writes is strict: a
# non-finite float is written as one of these strings, and readers that expect a number decode it (as_float).
NON_FINITE = ("NaN", "Infinity", "-Infinity")


def _non_finite_name(x: float) -> str:
    return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")


def strict_json(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, ±inf) replaced by its name ("NaN", "Infinity", "-Infinity")."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else _non_finite_name(obj)
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    return obj


def as_float(value: Any) -> float | None:
    """A number read from a bundle's JSON as a float: a JSON number, or a non-finite one as strict_json wrote it
    ("NaN", "Infinity", "-Infinity"); None for anything else (a bool, a string, null)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value in NON_FINITE:
        return float(value)
    return None


def _strict_dumps(obj: Any, **kw: Any) -> str:
    try:
        return json.dumps(obj, allow_nan=False, **kw)
    except ValueError as exc:  # a non-finite float somewhere (the common case pays nothing for the walk)
        if "Out of range float" not in str(exc):  # e.g. a circular reference: not ours to rewrite
            raise
        return json.dumps(strict_json(obj), allow_nan=False, **kw)


def strict_dumps(obj: Any, **kw: Any) -> str:
    """json.dumps(obj, **kw) as strict JSON: the same text for finite numbers, a NaN/inf written by name (for the
    JSON strings inside a safetensors header, whose bytes a checkpoint's sha256 covers)."""
    return _strict_dumps(obj, **kw)


def dumps(obj: Any) -> str:
    """Canonical strict JSON: sorted keys, UTF-8, a non-finite float written as "NaN"/"Infinity"/"-Infinity"."""
    return _strict_dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def dumps_ascii(obj: Any) -> str:
    """Strict JSON for a terminal or a pipe (as dumps, every non-ASCII character escaped)."""
    return _strict_dumps(obj, sort_keys=True, indent=2, ensure_ascii=True) + "\n"


def dumps_line(obj: Any) -> str:
    """One strict JSON line (as dumps, compact)."""
    return _strict_dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"


def digest_str(hex_digest: str, algorithm: str = ALGORITHM) -> str:
    """A digest that names its algorithm: 'sha256:<hex>'."""
    return f"{algorithm}:{hex_digest}"


def parse_digest(value: str) -> tuple[str, str]:
    algo, sep, hexd = value.partition(":")
    if not sep or not algo or not hexd:
        raise ValueError(f"digest {value!r} does not name its algorithm (expected 'sha256:<hex>')")
    return algo, hexd


def config_digest(config: dict[str, Any]) -> str:
    """Digest of a resolved config: sha256 of its canonical compact strict JSON (a non-finite float as its name,
    "Infinity" for float("inf"), as config.json stores it). For a config of finite numbers it is the digest of
    Python's plain json.dumps text, as before non-finite values were named."""
    canon = _strict_dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return digest_str(hashlib.sha256(canon.encode()).hexdigest())


def bare_config_digest(config: dict[str, Any]) -> str:
    """The digest a bundle written before non-finite values were named (2026-12-01) recorded for a config holding
    a NaN/inf: over Python's bare NaN/Infinity text. The audit accepts it for such a bundle's config.json."""
    canon = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return digest_str(hashlib.sha256(canon.encode()).hexdigest())


ConfigPath = list[str | int]  # a value's place in a config: its keys and list indexes from the top


def non_finite_paths(obj: Any, path: tuple[str | int, ...] = ()) -> list[ConfigPath]:
    """Where `obj` holds a non-finite float (config.json's "non_finite": which of its "NaN"/"Infinity"/
    "-Infinity" strings are numbers, so that a genuine string "NaN" stays a string)."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [list(path)]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in non_finite_paths(v, (*path, k))]
    if isinstance(obj, list | tuple):
        return [p for i, v in enumerate(obj) for p in non_finite_paths(v, (*path, i))]
    return []


def _bad_path(config: Any, path: Any) -> str | None:
    if not isinstance(path, list) or not path:
        return f"{path!r} is not a non-empty list of keys"
    node = config
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return f"{path!r} is not a place in the config"
    last = path[-1]
    ok = (isinstance(node, dict) and isinstance(last, str) and last in node) or (
        isinstance(node, list) and isinstance(last, int) and not isinstance(last, bool) and 0 <= last < len(node))
    if not ok:
        return f"{path!r} is not a place in the config"
    if node[last] not in NON_FINITE:
        return f"{path!r} holds {node[last]!r}, not one of {', '.join(NON_FINITE)}"
    return None


def config_non_finite_problems(config: Any, paths: Any) -> list[str]:
    """What is wrong with config.json's "non_finite" list (each entry must name a "NaN"/"Infinity"/"-Infinity")."""
    if paths is None:
        return []
    if not isinstance(paths, list):
        return [f"non_finite must be a list of key paths, got {type(paths).__name__}"]
    return [p for p in (_bad_path(config, path) for path in paths) if p is not None]


def config_values(config: dict[str, Any], paths: Any) -> dict[str, Any]:
    """The config a run was given, from config.json's "config" and "non_finite": each named place read back as
    the float it was (float("inf") for "Infinity"); an old bundle's bare NaN/Infinity is a float already.
    A list that names no "NaN"/"Infinity"/"-Infinity" (a damaged one) changes nothing there."""
    out: dict[str, Any] = restore_non_finite(config, paths)
    return out


def restore_non_finite(obj: Any, paths: Any) -> Any:
    """`obj` (JSON as read) with each place `paths` names (non_finite_paths of what was written) read back as
    its float; `obj` itself when there is nothing to restore or a path does not name a NaN/inf name."""
    if not paths or config_non_finite_problems(obj, paths):
        return obj
    out = copy.deepcopy(obj)
    for path in paths:
        node = out
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = float(node[path[-1]])
    return out


def command_digest(argv: list[str]) -> str:
    """Digest of a recorded command line (config.json "command_digest"): sha256 of its canonical JSON."""
    canon = json.dumps(list(argv), separators=(",", ":"), ensure_ascii=False)
    return digest_str(hashlib.sha256(canon.encode()).hexdigest())


_UMASK: int | None = None


def file_mode() -> int:
    """The mode a newly created file gets from open(): 0666 less the process umask (read once)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write via a temp file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; a bundle file gets what open() would give it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, dumps(obj).encode())


def is_temp_name(name: str) -> bool:
    """Leftovers of an interrupted atomic write: never part of a bundle."""
    return name.startswith(".") and name.endswith(".tmp")


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line with a single O_APPEND write, under an exclusive lock.

    Concurrent writers (several shells running `prov note`) never interleave
    or lose lines; the line is on disk when this returns.
    """
    import fcntl

    data = line.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


MAX_JSON_BYTES = untrusted.MAX_JSON_BYTES  # a bundle's JSON file larger than this is refused as hostile


class FormatError(ValueError):
    """A bundle file is malformed; the message names the file."""


def read_json(path: str | os.PathLike[str], max_bytes: int = MAX_JSON_BYTES) -> Any:
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise FormatError(f"{path.name}: {size} bytes is larger than the {max_bytes}-byte limit for JSON")
    try:
        return untrusted.loads(path.read_bytes(), untrusted.JSONLimits(max_bytes=max_bytes))
    except untrusted.UntrustedJSONError as exc:
        raise FormatError(f"{path}: {exc}" if str(exc).startswith("malformed") else
                          f"{path}: malformed JSON ({exc})") from None


def read_jsonl(path: str | os.PathLike[str], max_bytes: int = MAX_JSON_BYTES) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSON-lines file; a torn last line (crash mid-append) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    size = path.stat().st_size
    if size > max_bytes * 16:
        raise FormatError(f"{path.name}: {size} bytes is larger than the limit for a JSON-lines file")
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = untrusted.loads(raw, untrusted.JSONLimits(max_bytes=max(len(raw), 1)))
        except untrusted.UntrustedJSONError:
            if i == len(lines):  # unterminated last line: a crash mid-write
                return
            raise FormatError(f"{path.name}: line {i} is not valid JSON") from None
        if not isinstance(rec, dict):
            raise FormatError(f"{path.name}: line {i} is not a JSON object")
        yield rec


def note_record(text: str, category: str, author: str | None, links: Sequence[str], step: int | None,
                about: str | None = None, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A decision note; ValueError names what is wrong with it. `about`: the root digest of another
    bundle the note refers to (lineage views show it with that bundle). `details`: the structured facts
    of an automatic note (e.g. an override's key, old and new value), kept under "details"."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("note text must be a non-empty string")
    if category not in NOTE_CATEGORIES:
        raise ValueError(f"note category {category!r} is not one of {', '.join(NOTE_CATEGORIES)}")
    rec = {"schema": NOTE_SCHEMA, "time": utc_now(), "step": step,
           "author": author or os.environ.get("USER") or "unknown", "category": category,
           "text": text, "links": list(links)}
    if about is not None:
        hexd = about.removeprefix(f"{ALGORITHM}:").lower()
        if len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
            raise ValueError(f"note --about {about!r} is not a root digest 'sha256:<64 hex>'")
        rec["about"] = digest_str(hexd)
    if details:
        rec["details"] = details
    return rec


def reseal_record(previous_root_digest: str, changes: Sequence[dict[str, Any]], reason: str,
                  command: str) -> dict[str, Any]:
    """One line of reseals.jsonl: a sealed bundle was sealed again.

    `previous_root_digest` is the root digest of the seal that was replaced; `changes` lists
    every file that differs between that seal and the new one (reseals.jsonl itself aside):
    {"path", "change": "added" | "modified" | "removed", "sha256_before", "sha256_after"}
    (digests "sha256:<hex>" or None). The new root digest is the manifest's; the seal before
    can be recomputed from the new one, these changes and the earlier lines of this file.
    """
    return {"schema": RESEAL_SCHEMA, "time": utc_now(), "command": command, "reason": reason,
            "previous_root_digest": digest_str(previous_root_digest), "changes": list(changes)}


# --- data order ------------------------------------------------------------------------
# Per rank: order/rank<R>.ids.u64 (v2; .ids.u32 in v1) holds every sample id of every step as
# little-endian uint64 (uint32 in v1); order/rank<R>.steps.bin holds one 32-byte record a step:
#   <u32 step><u32 n_samples><24 bytes: chain digest>
# v2: chain_k = sha256(b"fullyopen-order-v2" + chain_{k-1} + u32 step + u32 n + ids bytes)[:24]
# v1: the same with b"fullyopen-order-v1" and uint32 ids; chain_{-1} = 24 zero bytes.
# Changing any step's batch changes every later digest. Readers accept both versions; the
# version is the header's schema (and the ids file's suffix).

ORDER_SCHEMA_V1 = "fullyopen.data-order/v1"
ORDER_SCHEMAS = {ORDER_SCHEMA_V1: 1, "fullyopen.data-order/v2": 2}
ORDER_WRITE_VERSION = 2  # what a run writes now (64-bit ids)
ORDER_SCHEMA = "fullyopen.data-order/v2" if ORDER_WRITE_VERSION == 2 else ORDER_SCHEMA_V1
ORDER_STEP_RECORD = struct.Struct("<II24s")
ORDER_CHAIN_SEED = bytes(24)
_ORDER_IDS = {1: ("ids.u32", "I", 4, b"fullyopen-order-v1"), 2: ("ids.u64", "Q", 8, b"fullyopen-order-v2")}


def order_paths(rank: int, version: int = ORDER_WRITE_VERSION) -> tuple[str, str, str]:
    base = f"{ORDER_DIR}/rank{rank}"
    return f"{base}.json", f"{base}.{_ORDER_IDS[version][0]}", f"{base}.steps.bin"


def order_id_width(version: int) -> int:
    """Bytes a sample id: 4 in v1, 8 in v2."""
    return _ORDER_IDS[version][2]


def order_ids_version(ids_name: str) -> int:
    """The order version of an ids file, by its suffix (.ids.u64: 2, .ids.u32: 1)."""
    return 2 if ids_name.endswith(".u64") else 1


def order_version(header: Any) -> int:
    """1 or 2 from an order header's schema; FormatError for anything else."""
    schema = header.get("schema") if isinstance(header, dict) else None
    if schema not in ORDER_SCHEMAS:
        raise FormatError(f"not a data-order header (schema {schema!r}, expected one of {', '.join(ORDER_SCHEMAS)})")
    return ORDER_SCHEMAS[schema]


def order_files(root: Path, rank: int) -> tuple[str, str, str, int]:
    """(header, ids, steps, version) of a rank in a bundle folder, v1 or v2, by the ids file present."""
    for version in (2, 1):
        paths = order_paths(rank, version)
        if (root / paths[1]).exists():
            return (*paths, version)
    return (*order_paths(rank), ORDER_WRITE_VERSION)


def encode_ids(sample_ids: Sequence[int], version: int = ORDER_WRITE_VERSION) -> bytes:
    _, code, width, _ = _ORDER_IDS[version]
    limit = 1 << (8 * width)
    for s in sample_ids:
        if not 0 <= int(s) < limit:
            raise ValueError(f"sample id {s} does not fit in uint{8 * width}")
    return struct.pack(f"<{len(sample_ids)}{code}", *(int(s) for s in sample_ids))


def batch_digest(sample_ids: Sequence[int], version: int = ORDER_WRITE_VERSION) -> str:
    """sha256 of the batch's ids as little-endian uint64 (uint32 in v1): what reproduce compares step by step."""
    return ids_digest(encode_ids(sample_ids, version))


def ids_digest(ids_bytes: bytes) -> str:
    """batch_digest of ids already encoded with encode_ids."""
    return digest_str(hashlib.sha256(ids_bytes).hexdigest())


def chain_next(prev: bytes, step: int, ids_bytes: bytes, version: int = ORDER_WRITE_VERSION) -> bytes:
    _, _, width, domain = _ORDER_IDS[version]
    n = len(ids_bytes) // width
    h = hashlib.sha256(domain)
    h.update(prev)
    h.update(struct.pack("<II", step, n))
    h.update(ids_bytes)
    return h.digest()[:24]


@dataclass(frozen=True)
class OrderStep:
    step: int
    sample_ids: tuple[int, ...]
    chain: bytes
    version: int = ORDER_WRITE_VERSION


def order_header(rank: int, world_size: int, sampler: dict[str, Any], dataset: str,
                 version: int = ORDER_WRITE_VERSION) -> dict[str, Any]:
    ids, _, width, domain = _ORDER_IDS[version]
    header = {
        "schema": ORDER_SCHEMA_V1 if version == 1 else "fullyopen.data-order/v2",
        "rank": rank,
        "world_size": world_size,
        "dataset": dataset,
        "sampler": sampler,
        "ids_dtype": f"uint{8 * width}-le",
        "step_record": "<u32 step><u32 n_samples><24-byte chain digest>",
        "chain": f"sha256(b'{domain.decode()}' + prev + u32 step + u32 n + ids)[:24], prev0 = 24 zero bytes",
    }
    if version == 2:
        header["ids_file"] = f"rank{rank}.{ids}"
    return header


def decode_step_records(steps_raw: bytes) -> list[tuple[int, int, bytes]]:
    """(step, n_samples, chain) of every whole 32-byte record; a torn tail is ignored."""
    usable = len(steps_raw) - len(steps_raw) % ORDER_STEP_RECORD.size
    return list(ORDER_STEP_RECORD.iter_unpack(steps_raw[:usable]))


def decode_order(ids_all: bytes, steps_raw: bytes, version: int) -> Iterator[OrderStep]:
    """Decode one rank's order from its two files' bytes; a torn tail (crash mid-append) is ignored."""
    _, code, width, _ = _ORDER_IDS[version]
    offset = 0
    for (step, n, chain) in decode_step_records(steps_raw):
        chunk = ids_all[offset : offset + width * n]
        if len(chunk) != width * n:
            return
        offset += width * n
        yield OrderStep(step, struct.unpack(f"<{n}{code}", chunk), chain, version)


def read_order(ids_path: Path, steps_path: Path) -> Iterator[OrderStep]:
    """Decode one rank's order (v1 or v2, by the ids file's suffix; when ids_path does not exist the
    other version's file next to it is read); a torn tail (crash mid-append) is ignored."""
    if not ids_path.exists():
        for suffix, *_rest in _ORDER_IDS.values():
            alt = ids_path.with_name(f"{ids_path.name.split('.ids.')[0]}.{suffix}")
            if alt.exists():
                ids_path = alt
                break
    version = order_ids_version(ids_path.name)
    ids_all = ids_path.read_bytes() if ids_path.exists() else b""
    steps_raw = steps_path.read_bytes() if steps_path.exists() else b""
    yield from decode_order(ids_all, steps_raw, version)


def verify_order_chain(steps: Iterable[OrderStep]) -> tuple[int, int] | None:
    """None if the chain is intact, else (index, step) of the first broken link."""
    prev = ORDER_CHAIN_SEED
    for i, st in enumerate(steps):
        expect = chain_next(prev, st.step, encode_ids(st.sample_ids, st.version), st.version)
        if expect != st.chain:
            return i, st.step
        prev = st.chain
    return None


# --- the seal: OpenSSF model-signing (OMS) manifest, in-toto Statement v1 ----------------
INTOTO_STATEMENT = "https://in-toto.io/Statement/v1"
OMS_PREDICATE = "https://model_signing/signature/v1.0"


def resource_sort_key(name: str) -> tuple[str, ...]:
    """model-signing sorts resources as PurePosixPath, i.e. by path components."""
    return tuple(name.split("/"))


def oms_statement(subject_name: str, resources: dict[str, str]) -> dict[str, Any]:
    """Build the OMS statement over {relative name: hex sha256}; names sorted.

    The subject digest (the bundle's root digest) is sha256 over the raw
    resource digests concatenated in name order, as model-signing computes it.
    """
    names = sorted(resources, key=resource_sort_key)
    root = root_digest(resources[n] for n in names)
    return {
        "_type": INTOTO_STATEMENT,
        "subject": [{"name": subject_name, "digest": {"sha256": root}}],
        "predicateType": OMS_PREDICATE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": ALGORITHM,
                "allow_symlinks": False,
                "ignore_paths": sorted(UNSEALED),
            },
            "resources": [{"name": n, "algorithm": ALGORITHM, "digest": resources[n]} for n in names],
        },
    }


def parse_oms_statement(obj: Any) -> tuple[str, dict[str, str]]:
    """Return (root hex digest, {name: hex digest}); FormatError names what is wrong."""
    where = MANIFEST
    if not isinstance(obj, dict) or obj.get("_type") != INTOTO_STATEMENT:
        raise FormatError(f"{where}: not an in-toto Statement v1")
    if obj.get("predicateType") != OMS_PREDICATE:
        raise FormatError(f"{where}: predicateType is not {OMS_PREDICATE}")
    subj = obj.get("subject")
    if not isinstance(subj, list) or len(subj) != 1 or not isinstance(subj[0], dict):
        raise FormatError(f"{where}: expected exactly one subject")
    root = (subj[0].get("digest") or {}).get("sha256")
    if not isinstance(root, str):
        raise FormatError(f"{where}: subject has no sha256 digest")
    res = (obj.get("predicate") or {}).get("resources")
    if not isinstance(res, list):
        raise FormatError(f"{where}: predicate.resources is missing")
    out: dict[str, str] = {}
    for i, r in enumerate(res):
        if not isinstance(r, dict) or not isinstance(r.get("name"), str) or not isinstance(r.get("digest"), str):
            raise FormatError(f"{where}: resource #{i} is malformed")
        if r.get("algorithm") != ALGORITHM:
            raise FormatError(f"{where}: resource {r['name']!r} uses algorithm {r.get('algorithm')!r}")
        if r["name"] in out:
            raise FormatError(f"{where}: resource {r['name']!r} is listed twice")
        out[r["name"]] = r["digest"]
    return root, out


# --- checkpoint index ---------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_DIR}/step-{step:08d}.safetensors"


# A sharded (torch.distributed.checkpoint) checkpoint is a folder checkpoints/step-<N>/ holding DCP's own
# files (`__<rank>_<i>.distcp` shard files and the `.metadata` file, a pickle: never read by the audit) and
# ours: rng.rank<R>.json (that rank's RNG states) and shards.rank<R>.json (what rank R wrote and hashed).
# Its index entry (format "dcp") lists every file with size and sha256, the ranks, the world size and the
# sharding; its `sha256` is the content digest: over the shard and RNG files (not `.metadata`, which names
# the folder and a random save id).
DCP_FORMAT = "dcp"
DCP_METADATA = ".metadata"
DCP_SHARDS_SCHEMA = "fullyopen.dcp-shards/v1"


def dcp_checkpoint_dir(step: int) -> str:
    return f"{CHECKPOINT_DIR}/step-{step:08d}"


def dcp_rank_files(rank: int) -> tuple[str, str]:
    """(rng record, shard record) of one rank, inside the checkpoint folder."""
    return f"rng.rank{rank}.json", f"shards.rank{rank}.json"


def dcp_is_shard_of(name: str, rank: int) -> bool:
    """A DCP shard file written by `rank` (FileSystemWriter names them __<rank>_<i>.distcp)."""
    return name.startswith(f"__{rank}_") and name.endswith(".distcp")


def dcp_content_digest(files: list[dict[str, Any]]) -> str:
    """The digest of a sharded checkpoint's content: its files but `.metadata`, by name, size and sha256."""
    rows = sorted((f["path"].rsplit("/", 1)[-1], int(f["size"]), f["sha256"]) for f in files
                  if not f["path"].endswith("/" + DCP_METADATA))
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def checkpoint_index(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema": CHECKPOINT_INDEX_SCHEMA, "checkpoints": sorted(entries, key=lambda e: e["step"])}


# --- release (prov release): documents written into the bundle, then sealed and signed ----
RELEASE_DIR = "release"
RELEASE_JSON = "release/release.json"  # what was released, when, by which key, with which tools
SIGNER_PUBLIC_KEY = "release/signer.pub.pem"  # public half of the key that made SIGNATURE
SLSA_STATEMENT = "release/slsa-provenance.json"  # in-toto Statement, predicate SLSA provenance v1
SLSA_ENVELOPE = "release/slsa-provenance.intoto.jsonl"  # the statement in a signed DSSE envelope
OPENNESS_YAML = "release/openness.yaml"  # Model Openness Tool (MOT) model record
REPORT_HTML = "release/report.html"  # self-contained report page
MODEL_CARD = "model/README.md"  # Hugging Face model card
DATA_COMMITMENT = "commitment.json"  # data/<dataset>/commitment.json, written with the manifest
CROISSANT_NAME = "croissant.json"  # data/<dataset>/croissant.json: Croissant 1.1 data card
SLSA_PREDICATE = "https://slsa.dev/provenance/v1"
DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"


# --- capture of a wrapped command (`prov run`): written by the command's own Python processes ---
# The capture layer (provenance.capture.inject) writes the native files of a run as the
# command trains: order/rank<R>.ids.u32 + .steps.bin (the sample ids of each optimizer step;
# n = 0 for a step that carries content digests instead), logs/metrics.jsonl (rank 0: the
# exact loss of each step) and checkpoints/index.json (every file the command saved). What
# has no native place goes under capture/, one file per rank:
#   capture/order.rank<R>.jsonl       per step: which evidence it carries (sample ids or content
#                                     digests of its micro-batches' inputs), their digests
#   capture/seeds.rank<R>.jsonl       every seed call: function, value, the step before which it ran
#   capture/logged.rank<R>.jsonl      what the script itself logged (wandb, TensorBoard, HF Trainer)
#   capture/checkpoints.rank<R>.jsonl every saved file as it was hashed (the index is rebuilt from it)
#   capture/events.rank<R>.jsonl      capture events, observer_failed among them
#   capture/facts.rank<R>.json        determinism flags, threads, optimizers at the first step
#   capture/metrics.rank<R>.jsonl     ranks other than 0: their own exact losses
CAPTURE_DIR = "capture"
CAPTURE_SCHEMA = "fullyopen.capture/v1"
CAPTURE_ORDER_SCHEMA = "fullyopen.capture-order/v1"
EVIDENCE_IDS = "sample-ids"  # the DataLoader's sample indices (in order/rank<R>.ids.u32)
EVIDENCE_CONTENT = "content-digest"  # sha256 of each micro-batch's input tensors (dtype, shape, bytes)
EVIDENCE_NONE = "none"  # the step saw neither (no DataLoader indices, no tensor input to a forward)
CAPTURE_CHECKPOINT_ROLES = ("weights", "optimizer", "full-state", "other")


@dataclass(frozen=True)
class CapturePaths:
    order: str
    seeds: str
    logged: str
    checkpoints: str
    events: str
    facts: str
    metrics: str  # rank 0: logs/metrics.jsonl


def capture_paths(rank: int) -> CapturePaths:
    base = f"{CAPTURE_DIR}/"
    return CapturePaths(order=f"{base}order.rank{rank}.jsonl", seeds=f"{base}seeds.rank{rank}.jsonl",
                        logged=f"{base}logged.rank{rank}.jsonl", checkpoints=f"{base}checkpoints.rank{rank}.jsonl",
                        events=f"{base}events.rank{rank}.jsonl", facts=f"{base}facts.rank{rank}.json",
                        metrics=METRICS if rank == 0 else f"{base}metrics.rank{rank}.jsonl")


def float_bits(x: float) -> str:
    """The exact bits of a float as a big-endian IEEE-754 double, in hex."""
    return struct.pack(">d", x).hex()


def same_loss(a: float, b: float) -> bool:
    """Two logged losses are the same number: bitwise equal, or both NaN whatever their sign bit and payload
    (a strict-JSON "NaN" keeps neither). The one definition the native replay and a wrapped run's replay use."""
    return float_bits(a) == float_bits(b) or (math.isnan(a) and math.isnan(b))


def content_digest(parts: Iterable[tuple[str, tuple[int, ...], bytes]]) -> str:
    """sha256 over (dtype, shape, bytes) of each tensor of a micro-batch, in order."""
    h = hashlib.sha256(b"fullyopen-content-v1")
    for dtype, shape, data in parts:
        head = f"{dtype}:{','.join(str(d) for d in shape)}:{len(data)};".encode()
        h.update(head)
        h.update(data)
    return digest_str(h.hexdigest())


def step_content_digest(micro: Sequence[str]) -> str:
    """One step's content evidence: sha256 over its micro-batches' digests, in order."""
    return digest_str(hashlib.sha256("\n".join(micro).encode()).hexdigest())


def capture_order_record(step: int, evidence: str, micro_steps: int, n_samples: int, batch_digest: str | None,
                         content: Sequence[str], chain: bytes) -> dict[str, Any]:
    rec: dict[str, Any] = {"step": step, "evidence": evidence, "micro_steps": micro_steps, "n_samples": n_samples,
                           "chain": chain.hex()}
    if batch_digest is not None:
        rec["batch_digest"] = batch_digest
    if content:
        rec["content"] = list(content)
        rec["content_digest"] = step_content_digest(content)
    return rec


def capture_chain_next(prev: bytes, step: int, evidence: str, digest: str) -> bytes:
    """The capture order's own chain (over ids and content digests alike): 24 bytes, prev0 = 24 zero bytes."""
    h = hashlib.sha256(b"fullyopen-capture-order-v1")
    h.update(prev)
    h.update(struct.pack("<I", step))
    h.update(f"{evidence}:{digest}".encode())
    return h.digest()[:24]


def captured_checkpoint_index(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """checkpoints/index.json of a captured command: every file it saved (they lie outside the bundle,
    at `path` relative to the command's working folder, unless `prov run --outputs` copied them)."""
    out = checkpoint_index([dict(e, in_bundle=False) for e in entries])
    out["checkpoints"] = sorted(out["checkpoints"], key=lambda e: (e["step"], e["path"]))
    out["captured"] = True
    return out


# --- lineage (issue 16): edges from a bundle to the bundles that produced what it consumed ----
LINEAGE_JSON = "lineage.json"  # the consuming bundle's edges to its parents, by content digest
LINEAGE_SCHEMA = "fullyopen.lineage/v1"
EDGE_KINDS = ("data", "tokenizer", "init", "resume", "merge", "eval")
# where a bundle *produces* files (a file found elsewhere in it, e.g. data/<ds>/files/, is a copy of an input)
PRODUCED_PREFIXES = ("outputs/", f"{CHECKPOINT_DIR}/", f"{MODEL_DIR}/")
RELEASE_LINEAGE = "release/lineage.json"  # `prov release --lineage`: the ancestors' root digests (signed)
RELEASE_LINEAGE_HTML = "release/lineage.html"  # `prov release --lineage`: the graph picture
RELEASE_LINEAGE_SCHEMA = "fullyopen.release-lineage/v1"


def _hex_digest(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{where}: expected a digest 'sha256:<64 hex>', got {type(value).__name__}")
    algo, _, hexd = value.partition(":")
    if algo != ALGORITHM or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise FormatError(f"{where}: {value[:80]!r} is not a digest 'sha256:<64 lowercase hex>'")
    return value


def lineage_edge(kind: str, digest: str, parent: str | None, parent_path: str | None, consumed: str,
                 how: str = "auto", weight: float | None = None, parent_run_id: str | None = None) -> dict[str, Any]:
    """One edge (or, with parent None, an input no known bundle produced); ValueError names the bad field."""
    edge: dict[str, Any] = {"kind": kind, "digest": digest, "parent": parent, "parent_path": parent_path,
                            "parent_run_id": parent_run_id, "consumed": consumed, "how": how}
    if weight is not None:
        edge["weight"] = weight
    parse_lineage_edge(edge, "edge")
    return edge


def parse_lineage_edge(e: Any, where: str) -> dict[str, Any]:
    if not isinstance(e, dict):
        raise FormatError(f"{where}: not a JSON object")
    if e.get("kind") not in EDGE_KINDS:
        raise FormatError(f"{where}.kind: {str(e.get('kind'))[:40]!r} is not one of {', '.join(EDGE_KINDS)}")
    _hex_digest(e.get("digest"), f"{where}.digest")
    if e.get("parent") is not None:
        _hex_digest(e["parent"], f"{where}.parent")
        if not isinstance(e.get("parent_path"), str) or not e["parent_path"]:
            raise FormatError(f"{where}.parent_path: a parent's file path is required")
    for key in ("parent_path", "parent_run_id"):
        if e.get(key) is not None and not isinstance(e[key], str):
            raise FormatError(f"{where}.{key}: must be a string or null")
    if not isinstance(e.get("consumed"), str):
        raise FormatError(f"{where}.consumed: must say what consumed the file (a path or config key)")
    if e.get("how") not in ("auto", "declared"):
        raise FormatError(f"{where}.how: must be 'auto' or 'declared'")
    w = e.get("weight")
    if w is not None and (isinstance(w, bool) or not isinstance(w, int | float) or not w == w or w < 0):
        raise FormatError(f"{where}.weight: must be a non-negative number")
    return e


def lineage_record(edges: Sequence[dict[str, Any]], warnings: Sequence[str] = ()) -> dict[str, Any]:
    """lineage.json: edges sorted (kind, consumed, digest) so that the same inputs give the same bytes;
    warnings name producers that were passed over (a file that does not hash to what its seal claims)."""
    ordered = sorted(edges, key=lambda e: (e["kind"], e["consumed"], e["digest"], e.get("parent") or ""))
    return {"schema": LINEAGE_SCHEMA, "edges": ordered, "warnings": list(warnings)}


def parse_lineage(obj: Any, where: str = LINEAGE_JSON) -> list[dict[str, Any]]:
    """The edges of a lineage.json document; FormatError names the first bad field."""
    if not isinstance(obj, dict) or obj.get("schema") != LINEAGE_SCHEMA:
        raise FormatError(f"{where}: schema is not {LINEAGE_SCHEMA}")
    edges = obj.get("edges")
    if not isinstance(edges, list):
        raise FormatError(f"{where}: edges must be a list")
    return [parse_lineage_edge(e, f"{where}: edges[{i}]") for i, e in enumerate(edges)]

# documents for other ecosystems' readers (issue 17), all under release/ and sealed with the rest
CYCLONEDX_BOM = "release/bom.cdx.json"  # CycloneDX 1.7 ML-BOM (JSON)
SPDX_DOCUMENT = "release/sbom.spdx3.jsonld"  # SPDX 3.0.1 (JSON-LD) with the AI and Dataset profiles
EU_SUMMARY_JSON = "release/eu-training-content-summary.json"  # EU AI Act Art. 53(1)(d) public summary (draft)
EU_SUMMARY_MD = "release/eu-training-content-summary.md"  # the same summary, readable
EVAL_STATEMENT = "release/eval-results.json"  # in-toto Statement of the evaluation results
EVAL_ENVELOPE = "release/eval-results.intoto.jsonl"  # the statement in a signed DSSE envelope
EVAL_PREDICATE = "urn:fullyopen:predicate:eval-results:v1"  # documented in docs/release.md
CYCLONEDX_SPEC_VERSION = "1.7"
SPDX_SPEC_VERSION = "3.0.1"
SPDX_CONTEXT = "https://spdx.org/rdf/3.0.1/spdx-context.jsonld"
EU_SUMMARY_SCHEMA = "fullyopen.eu-training-content-summary/v1"
