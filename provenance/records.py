"""Typed records of a bundle's JSON files, parsed strictly by provenance.config's loader.

    info = bundle.run_record()          # = records.parse(records.RunInfo, bundle.json("run.json"), "run.json")
    info.status, info.exit_status, info.last_step

A known key with the wrong type, a missing required key or a schema id that is not the
record's raise RecordError naming the file and the key. Keys a record does not know are
kept in `extra` (a v1 file that a newer writer extended still reads); they are never
refused, so the format stays v1-compatible. The layouts and schema ids come from
provenance.formats; the files are read through provenance.reader.

Which file each record is, its one writer, and its accessor on provenance.reader.Bundle:
  RunInfo             run.json                   bundle.write_run_info       run_record()
  ConfigRecord        config.json                run/core.py                 config_record()
  CheckpointIndex     checkpoints/index.json     bundle.write_checkpoint_index  checkpoint_index()
  DataManifest        data/<name>/manifest.json  run/core.py (capture/data)  data_manifest(name)
  OrderHeader         order/rank<R>.json         bundle.write_order_header   order_header(rank)
  Note                notes.jsonl, one a line    bundle.append_note          notes()
  CommandRecord       command.json               integrations/wrap.py        record(CommandRecord, rel)
  ReproductionSummary reproduction/summary.json  bundle.write_reproduction_summary  record(ReproductionSummary, rel)
(docs/architecture.md has the table of every bundle file.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from provenance import config, formats

T = TypeVar("T")

Status = Literal[formats.STATUSES]  # type: ignore[valid-type]  # "running", "completed", "failed", "interrupted"
NoteCategory = Literal[formats.NOTE_CATEGORIES]  # type: ignore[valid-type]


class RecordError(ValueError):
    """A bundle file does not hold the record it should; the message names the file and the key."""


def parse(cls: type[T], obj: Any, where: str) -> T:
    """`obj` (parsed JSON of bundle file `where`) as record `cls`; RecordError names what is wrong."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: not a JSON object")
    try:
        return config.from_dict(cls, obj, where)
    except config.ConfigError as exc:
        raise RecordError(str(exc)) from None


def parse_lines(cls: type[T], lines: list[tuple[int, dict[str, Any]]], where: str
                ) -> tuple[list[tuple[int, T]], list[str]]:
    """Each (line number, object) of a JSON-lines file as record `cls`: ([(line, record)], problems), a
    problem for each line that is not one ("line 3: key 'category' must be one of ...")."""
    out: list[tuple[int, T]] = []
    problems: list[str] = []
    for line, obj in lines:
        here = f"{where} line {line}"
        try:
            out.append((line, parse(cls, obj, here)))
        except RecordError as exc:
            msg = str(exc)
            problems.append(f"line {line}: {msg[len(here) + 2:] if msg.startswith(here + ': ') else msg}")
    return out, problems


def to_dict(rec: Any) -> dict[str, Any]:
    """The JSON object of a record: its fields, then the unknown keys it kept."""
    out = dataclasses.asdict(rec)
    extra = out.pop("extra", {}) or {}
    return {**extra, **out}


@dataclass(frozen=True)
class RunInfo:
    schema: Literal[formats.BUNDLE_SCHEMA]
    run_id: str
    status: Status | None = None  # required of a finished run; the audit names a run.json without it
    name: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    exit_status: int | None = None
    error: dict[str, Any] | None = None
    pid: int | None = None
    host: str | None = None
    seed: Any = None  # an int; a captured command's first seed call as it was made
    seeds: dict[str, Any] = field(default_factory=dict)  # python, numpy, torch (None: not set), source
    determinism: dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    license: str | None = None
    documents: dict[str, str] = field(default_factory=dict)
    reproduces: dict[str, Any] | None = None
    datasets: list[str] = field(default_factory=list)
    last_step: int | None = None
    distributed: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict, metadata=config.EXTRA)


@dataclass(frozen=True)
class ConfigRecord:
    config: dict[str, Any]
    digest: str
    argv: list[str] | None = None
    cwd_name: str | None = None
    command_digest: str | None = None  # binds argv (formats.command_digest)
    non_finite: list[Any] | None = None  # where config holds a NaN/inf, written "NaN"/"Infinity" (key paths)
    extra: dict[str, Any] = field(default_factory=dict, metadata=config.EXTRA)

    def digest_form(self) -> str | None:
        """Which text the recorded digest covers: "strict" (a non-finite float as its name: every bundle since
        2026-12-01, and any config of finite numbers), "bare" (a bundle written before then whose config.json
        holds a bare NaN/Infinity, digested as Python wrote it), None when it matches neither."""
        if formats.config_digest(self.config) == self.digest:
            return "strict"
        if formats.non_finite_paths(self.config) and formats.bare_config_digest(self.config) == self.digest:
            return "bare"
        return None

    def digest_ok(self) -> bool:
        return self.digest_form() is not None

    def values(self) -> dict[str, Any]:
        """The config the run was given: each place non_finite names read back as its float."""
        return formats.config_values(self.config, self.non_finite)


@dataclass(frozen=True)
class CheckpointEntry:
    step: int
    path: str  # a file, or the folder of a sharded (DCP) checkpoint
    sha256: str  # the file's sha256; of a DCP checkpoint, formats.dcp_content_digest of its files
    size: int | None = None
    format: str | None = None  # formats.DCP_FORMAT for a sharded checkpoint
    files: list[Any] | None = None  # a sharded checkpoint's files (path, size, sha256, rank)
    world_size: int | None = None
    in_bundle: bool | None = None  # False: a captured command's file outside the bundle
    extra: dict[str, Any] = field(default_factory=dict, metadata=config.EXTRA)


@dataclass(frozen=True)
class CheckpointIndex:
    schema: Literal[formats.CHECKPOINT_INDEX_SCHEMA]
    checkpoints: list[CheckpointEntry]
    extra: dict[str, Any] = field(default_factory=dict, metadata=config.EXTRA)


@dataclass(frozen=True)
class DataFile:
    path: str
    size: int
    sha256: str
    records: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, metadata=config.EXTRA)


@dataclass(frozen=True)
class DataManifest:
    schema: Literal[formats.DATA_MANIFEST_SCHEMA]
    name: str
    files: list[DataFile]
    bundled_files: str | None = None
    samples: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict, metadata=config.EXTRA)


@dataclass(frozen=True)
class OrderHeader:
    schema: Literal[tuple(formats.ORDER_SCHEMAS)]  # v1 or v2
    rank: int
    world_size: int = 1
    dataset: str | None = None
    sampler: dict[str, Any] = field(default_factory=dict)
    ids_dtype: str = "uint32-le"
    step_record: str | None = None
    chain: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, metadata=config.EXTRA)


@dataclass(frozen=True)
class Note:
    schema: Literal[formats.NOTE_SCHEMA]
    time: str
    author: str
    category: NoteCategory
    text: str
    step: int | None = None
    links: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict, metadata=config.EXTRA)


@dataclass(frozen=True)
class CommandRecord:
    schema: Literal[formats.WRAPPED_COMMAND_SCHEMA]
    command: list[str]
    returncode: int | None = None
    exit_status: int | None = None
    signal: str | None = None
    outputs: dict[str, Any] | None = None  # {"index": outputs/index.json, "model_files": n} when declared
    extra: dict[str, Any] = field(default_factory=dict, metadata=config.EXTRA)


@dataclass(frozen=True)
class ReproductionSummary:
    schema: Literal[formats.REPRODUCTION_SCHEMA]
    original: dict[str, Any] = field(default_factory=dict)
    steps_checked: int | None = None
    checkpoints_checked: int | None = None
    bitwise: bool | None = None
    first_divergence: dict[str, Any] | None = None
    divergences: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict, metadata=config.EXTRA)


# the schema id of each record (its Literal names the same constant of formats)
SCHEMAS: dict[type[Any], str] = {
    RunInfo: formats.BUNDLE_SCHEMA, CheckpointIndex: formats.CHECKPOINT_INDEX_SCHEMA,
    DataManifest: formats.DATA_MANIFEST_SCHEMA, OrderHeader: formats.ORDER_SCHEMA_V1, Note: formats.NOTE_SCHEMA,
    CommandRecord: formats.WRAPPED_COMMAND_SCHEMA, ReproductionSummary: formats.REPRODUCTION_SCHEMA,
}
