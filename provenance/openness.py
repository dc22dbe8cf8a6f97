"""Openness of a bundle: the Model Openness Framework (MOF) components and the "fully open" list.

Each MOF component is looked for in the bundle (or in the run's `documents`, for what a
run cannot produce by itself: papers, reports, cards, links to code kept elsewhere), and
reported as found or missing, with the files that satisfy it and their license. A
component *counts* for a class when it is found and its license is an open one (see
OPEN_LICENSES); the highest class whose required components all count is the bundle's
class. docs/audit.md has the mapping in prose.

This module only reads: JSON through the loader it is given, file names from the list
it is given. It never opens a document that lies outside the bundle and never fetches a URL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlparse

from provenance import formats, records
from provenance.reader import BundleFileError

MOF_VERSION = "1.0"
CLASSES = ("III", "II", "I")  # from the entry class to the most open
CLASS_NAMES = {"III": "Open Model", "II": "Open Tooling", "I": "Open Science"}


@dataclass(frozen=True)
class ComponentSpec:
    id: str
    name: str
    mof_class: str  # "III", "II" or "I": the first class that includes it
    kind: str  # model | code | data | document: which licenses count as open for it
    optional: bool = False


COMPONENTS: tuple[ComponentSpec, ...] = (
    ComponentSpec("model_architecture", "Model architecture", "III", "model"),
    ComponentSpec("final_parameters", "Model parameters (final)", "III", "model"),
    ComponentSpec("technical_report", "Technical report", "III", "document"),
    ComponentSpec("evaluation_results", "Evaluation results", "III", "document"),
    ComponentSpec("model_card", "Model card", "III", "document"),
    ComponentSpec("data_card", "Data card", "III", "document"),
    ComponentSpec("sample_outputs", "Sample model outputs", "III", "document", optional=True),
    ComponentSpec("training_code", "Training code", "II", "code"),
    ComponentSpec("inference_code", "Inference code", "II", "code"),
    ComponentSpec("evaluation_code", "Evaluation code", "II", "code"),
    ComponentSpec("evaluation_data", "Evaluation data", "II", "data"),
    ComponentSpec("supporting_libraries", "Supporting libraries and tools", "II", "code", optional=True),
    ComponentSpec("datasets", "Datasets", "I", "data"),
    ComponentSpec("data_preprocessing_code", "Data preprocessing code", "I", "code"),
    ComponentSpec("intermediate_parameters", "Model parameters (intermediate)", "I", "model"),
    ComponentSpec("research_paper", "Research paper", "I", "document"),
    ComponentSpec("model_metadata", "Model metadata", "I", "model", optional=True),
)
COMPONENT_IDS = frozenset(c.id for c in COMPONENTS)

# run.documents keys (lower case, '-' and ' ' read as '_') that name a component
DOCUMENT_ALIASES: dict[str, str] = {
    "report": "technical_report", "tech_report": "technical_report",
    "paper": "research_paper",
    "datasheet": "data_card", "dataset_card": "data_card",
    "samples": "sample_outputs", "sample_output": "sample_outputs",
    "inference": "inference_code", "evaluation": "evaluation_code", "eval_code": "evaluation_code",
    "preprocessing_code": "data_preprocessing_code",
}

FULLY_OPEN = (
    ("weights", "Weights"),
    ("data", "Data"),
    ("training_code", "Training code"),
    ("logs", "Logs"),
    ("decision_notes", "Decision notes"),
)

# --- licenses ------------------------------------------------------------------------
# SPDX identifiers counted as open. Code needs an OSI-approved license (or a public-domain
# dedication); data, documents and parameters may also use open data / content licenses.
OSI_LICENSES = frozenset(s.lower() for s in (
    "Apache-2.0", "MIT", "MIT-0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "0BSD", "Zlib", "BSL-1.0", "MPL-2.0",
    "EPL-2.0", "EUPL-1.2", "CDDL-1.0", "Artistic-2.0", "UPL-1.0", "ECL-2.0", "PostgreSQL", "BlueOak-1.0.0",
    "OSL-3.0", "AFL-3.0", "NCSA", "LGPL-2.1-only", "LGPL-2.1-or-later", "LGPL-3.0-only", "LGPL-3.0-or-later",
    "GPL-2.0-only", "GPL-2.0-or-later", "GPL-3.0-only", "GPL-3.0-or-later", "AGPL-3.0-only",
    "AGPL-3.0-or-later", "LGPL-2.1", "LGPL-3.0", "GPL-2.0", "GPL-3.0", "AGPL-3.0",
))
PUBLIC_DOMAIN = frozenset(s.lower() for s in ("CC0-1.0", "Unlicense", "PDDL-1.0"))
OPEN_CONTENT_LICENSES = frozenset(s.lower() for s in (
    "CC-BY-4.0", "CC-BY-SA-4.0", "CC-BY-3.0", "CC-BY-SA-3.0", "CDLA-Permissive-1.0", "CDLA-Permissive-2.0",
    "CDLA-Sharing-1.0", "ODC-By-1.0", "ODbL-1.0", "OGL-UK-3.0", "GFDL-1.3-or-later", "GFDL-1.3-only",
))
OPEN_LICENSES: dict[str, frozenset[str]] = {
    "code": OSI_LICENSES | PUBLIC_DOMAIN,
    "model": OSI_LICENSES | PUBLIC_DOMAIN | OPEN_CONTENT_LICENSES,
    "data": OSI_LICENSES | PUBLIC_DOMAIN | OPEN_CONTENT_LICENSES,
    "document": OSI_LICENSES | PUBLIC_DOMAIN | OPEN_CONTENT_LICENSES,
}


def license_is_open(expression: str | None, kind: str = "model") -> bool | None:
    """True/False for an SPDX expression (OR: any option, AND: every part); None if none is stated."""
    if not isinstance(expression, str) or not expression.strip():
        return None
    allowed = OPEN_LICENSES[kind]
    expr = expression.replace("(", " ").replace(")", " ")
    options = re.split(r"\s+OR\s+", expr.strip(), flags=re.IGNORECASE)
    for opt in options:
        parts = re.split(r"\s+AND\s+", opt.strip(), flags=re.IGNORECASE)
        ids = [re.split(r"\s+WITH\s+", p.strip(), flags=re.IGNORECASE)[0].strip().rstrip("+").lower() for p in parts]
        if ids and all(i in allowed for i in ids):
            return True
    return False


# --- results -------------------------------------------------------------------------


@dataclass
class Component:
    id: str
    name: str
    mof_class: str
    optional: bool
    found: bool = False
    files: list[str] = field(default_factory=list)  # bundle files that satisfy it
    links: list[str] = field(default_factory=list)  # URLs from run.documents (stated, not fetched)
    license: str | None = None
    license_source: str | None = None
    license_open: bool | None = None
    note: str = ""

    @property
    def met(self) -> bool:
        return self.found and self.license_open is True

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "class": self.mof_class, "optional": self.optional,
                "found": self.found, "met": self.met, "files": self.files, "links": self.links,
                "license": self.license, "license_source": self.license_source, "license_open": self.license_open,
                "note": self.note}


@dataclass
class FullyOpenItem:
    id: str
    name: str
    found: bool
    files: list[str]
    license: str | None = None
    license_open: bool | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "found": self.found, "files": self.files,
                "license": self.license, "license_open": self.license_open, "note": self.note}


@dataclass
class OpennessReport:
    components: list[Component]
    fully_open: list[FullyOpenItem]
    run_license: str | None
    documents: list[dict[str, Any]]  # every run.documents entry and what it resolved to
    required_class: str | None = None

    def component(self, cid: str) -> Component:
        return next(c for c in self.components if c.id == cid)

    def class_missing(self, cls: str) -> list[str]:
        """Required components of `cls` (and of the classes below it) that do not count yet."""
        upto = CLASSES[: CLASSES.index(cls) + 1]
        return [c.id for c in self.components if c.mof_class in upto and not c.optional and not c.met]

    @property
    def highest_class(self) -> str | None:
        best = None
        for cls in CLASSES:
            if self.class_missing(cls):
                break
            best = cls
        return best

    @property
    def fully_open_ok(self) -> bool:
        return all(i.found and i.license_open is not False for i in self.fully_open)

    @property
    def requirement_met(self) -> bool | None:
        if self.required_class is None:
            return None
        return class_at_least(self.highest_class, self.required_class)

    def to_dict(self) -> dict[str, Any]:
        return {
            "framework": {"name": "Model Openness Framework", "version": MOF_VERSION},
            "highest_class": self.highest_class,
            "required_class": self.required_class,
            "requirement_met": self.requirement_met,
            "classes": {cls: {"name": CLASS_NAMES[cls], "met": not self.class_missing(cls),
                              "missing": self.class_missing(cls)} for cls in CLASSES},
            "components": [c.to_dict() for c in self.components],
            "fully_open": {"ok": self.fully_open_ok, "items": [i.to_dict() for i in self.fully_open]},
            "run_license": self.run_license,
            "documents": self.documents,
        }


def class_at_least(have: str | None, want: str) -> bool:
    """Class I is the most open: I >= II >= III >= none."""
    if want not in CLASSES:
        raise ValueError(f"unknown MOF class {want!r} (expected I, II or III)")
    return have is not None and CLASSES.index(have) >= CLASSES.index(want)


# --- looking for the components ------------------------------------------------------


class BundleReader(Protocol):
    """What the assessment needs from a bundle; provenance.audit.BundleView is one."""

    @property
    def files(self) -> Collection[str]: ...  # every file of the bundle, relative posix names

    def try_json(self, rel: str) -> Any: ...  # parsed JSON, or None when missing or malformed

    def try_jsonl(self, rel: str) -> list[dict[str, Any]] | None: ...  # records, or None

    def size(self, rel: str) -> int: ...

    def record(self, cls: type[Any], rel: str) -> Any: ...  # a typed record (provenance.records); BundleFileError


def _typed(reader: BundleReader, cls: type[Any], rel: str) -> Any:
    """The typed record of `rel`, or None when it is missing or not that record (the audit's checks say why)."""
    if rel not in reader.files:
        return None
    try:
        return reader.record(cls, rel)
    except BundleFileError:
        return None


class _Inputs:
    """What the assessment reads, gathered once."""

    def __init__(self, reader: BundleReader) -> None:
        self.reader = reader
        self.files = set(reader.files)
        load_json = reader.try_json
        self.load_json = load_json
        run = load_json(formats.RUN_JSON)
        self.run: dict[str, Any] = run if isinstance(run, dict) else {}
        info: records.RunInfo | None = _typed(reader, records.RunInfo, formats.RUN_JSON)
        lic = info.license if info is not None else None
        self.run_license: str | None = lic if lic and lic.strip() else None
        self.documents: dict[str, Any] = dict(info.documents) if info is not None else {}
        cfg: records.ConfigRecord | None = _typed(reader, records.ConfigRecord, formats.CONFIG_JSON)
        self.argv = list(cfg.argv) if cfg is not None and cfg.argv is not None else []
        code = load_json(formats.CODE_JSON)
        snap = code.get("files") if isinstance(code, dict) else None
        self.snapshot: list[str] = sorted(snap) if isinstance(snap, dict) and formats.CODE_SNAPSHOT in self.files \
            else []
        self.manifests: dict[str, dict[str, Any]] = {}
        self._sorted = sorted(self.files)
        data_prefix, order_prefix = f"{formats.DATA_DIR}/", f"{formats.ORDER_DIR}/"
        for rel in self._sorted:
            if not rel.startswith(data_prefix):
                continue
            parts = rel.split("/")
            if len(parts) == 3 and parts[0] == formats.DATA_DIR and parts[2] == "manifest.json":
                m = load_json(rel)
                if isinstance(m, dict):
                    self.manifests[parts[1]] = m
        self.order_datasets: set[str] = set()
        for rel in self._sorted:
            if rel.startswith(order_prefix) and re.fullmatch(rf"{formats.ORDER_DIR}/rank\d+\.json", rel):
                hdr = load_json(rel)
                if isinstance(hdr, dict) and isinstance(hdr.get("dataset"), str) and hdr["dataset"]:
                    self.order_datasets.add(hdr["dataset"])
        self.entry = _entry_point(self.argv, self.snapshot)
        self.roles = _output_roles(load_json(formats.OUTPUTS_INDEX), self.files) \
            if formats.OUTPUTS_INDEX in self.files else {}

    def under(self, folder: str) -> list[str]:
        prefix = folder.rstrip("/") + "/"
        return [f for f in self._sorted if f.startswith(prefix)]

    def nonempty(self, rel: str) -> bool:
        return rel in self.files and self.reader.size(rel) > 0


def _norm_key(key: str) -> str:
    return re.sub(r"[\s-]+", "_", key.strip().lower())


def resolve_document(value: Any, files: Collection[str]) -> tuple[str | None, str, str]:
    """(kind, where, note): kind 'link' (an http(s) URL, not fetched), 'file' (in the bundle) or None."""
    if not isinstance(value, str) or not value.strip():
        return None, repr(value), "not a path or URL"
    value = value.strip()
    parsed = urlparse(value)
    if parsed.scheme and len(parsed.scheme) > 1:
        if parsed.scheme in ("http", "https") and parsed.netloc:
            return "link", value, "a link: stated, not fetched (an audit reads nothing outside the bundle)"
        return None, value, f"unsupported URL scheme {parsed.scheme!r} (use http or https)"
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or "\\" in value or (len(value) > 1 and value[1] == ":"):
        return None, value, "refers to a file outside the bundle; not read (put the file in the bundle or link it)"
    rel = p.as_posix()
    if rel in files:
        return "file", rel, ""
    if any(f.startswith(rel.rstrip("/") + "/") for f in files):
        return "file", rel.rstrip("/") + "/", ""
    return None, rel, "no such file in the bundle"


def _entry_point(argv: list[Any], snapshot: list[str]) -> str | None:
    args = [a for a in argv if isinstance(a, str)]
    if "-m" in args and args.index("-m") + 1 < len(args):
        mod = args[args.index("-m") + 1].replace(".", "/")
        for cand in (f"{mod}.py", f"{mod}/__main__.py"):
            if cand in snapshot:
                return cand
        return None
    for a in args[1:]:
        if a.endswith(".py"):
            base = PurePosixPath(a.replace("\\", "/")).name
            hits = [s for s in snapshot if s == base or s.endswith("/" + base)]
            return hits[0] if len(hits) == 1 else None
    return None


_INFERENCE_RE = re.compile(r"(^|/)(infer|inference|generate|generation|predict|serve|server|chat|sample|sampling)"
                           r"[^/]*\.py$")
_EVAL_RE = re.compile(r"(^|/)[^/]*eval[^/]*\.py$")
_PREPROCESS_RE = re.compile(r"(^|/)[^/]*(preprocess|prepare|tokeni[sz]|corpus|dataset)[^/]*\.py$")
_EVAL_DATA_RE = re.compile(r"(valid|eval|test|held[-_]?out|(^|[^a-z])dev([^a-z]|$))", re.IGNORECASE)
_PUBLIC_SOURCES = ("hub", "huggingface", "url", "http", "https", "zenodo", "doi")


def _snapshot_hits(snapshot: list[str], pattern: re.Pattern[str]) -> list[str]:
    return [s for s in snapshot if pattern.search(s) and not s.startswith(("tests/", "test/", "bench/"))]


def _dataset_available(name: str, m: dict[str, Any], files: set[str]) -> tuple[bool, list[str], list[str], str]:
    """(available, bundle files, links, note) for one data manifest."""
    base = f"{formats.DATA_DIR}/{name}"
    entries = [e for e in m.get("files", []) if isinstance(e, dict) and isinstance(e.get("path"), str)]
    if m.get("bundled_files") and entries:
        paths = [f"{base}/files/{e['path']}" for e in entries]
        absent = [p for p in paths if p not in files]
        if not absent:
            return True, [f"{base}/manifest.json"], [], ""
        return False, [], [], f"{len(absent)} of its files are missing from the bundle (e.g. {absent[0]})"
    src = m.get("source") if isinstance(m.get("source"), dict) else {}
    urls = [v for k, v in sorted(src.items()) if k in ("url", "uri", "homepage", "repo_url") and isinstance(v, str)
            and urlparse(v).scheme in ("http", "https")]
    if isinstance(src.get("repo_id"), str):  # a Hub dataset, at its pinned revision when recorded
        rev = src.get("revision")
        urls.append(f"https://huggingface.co/datasets/{src['repo_id']}"
                    + (f"/tree/{rev}" if isinstance(rev, str) and rev else ""))
    if str(src.get("type", "")).lower() in _PUBLIC_SOURCES and urls:
        return True, [f"{base}/manifest.json"], urls, "not in the bundle; public source linked"
    return False, [], [], (f"'{name}' is described by {base}/manifest.json but its files are not in the bundle "
                           f"and its source ({src.get('type', 'unknown')}) is not public")


# --- one evidence function per component -----------------------------------------------------
# Each takes the gathered inputs and returns Evidence (found, with its files) or Missing (why not).
# A component that a run.documents entry already satisfies keeps that, and gains the bundle's files.


@dataclass
class Evidence:
    files: list[str]
    note: str = ""
    links: list[str] = field(default_factory=list)
    data_licenses: list[str | None] | None = None  # a data component: the manifests' licenses, not the run's
    own_licenses: bool = False  # each part has its own license (supporting libraries): no single one applies


@dataclass
class Missing:
    note: str


Found = Evidence | Missing


def _output_roles(index: Any, files: Collection[str]) -> dict[str, list[tuple[str, str | None]]]:
    """{role: [(bundle path, format)]} from outputs/index.json: the roles `prov run` gave each declared
    output from its bytes (weights, checkpoint, training_state, model_config, sample_output, log)."""
    out: dict[str, list[tuple[str, str | None]]] = {}
    if not isinstance(index, dict) or not isinstance(index.get("outputs"), list):
        return out
    for entry in index["outputs"]:
        for f in (entry.get("files") or []) if isinstance(entry, dict) else []:
            if not isinstance(f, dict) or not isinstance(f.get("role"), str):
                continue
            where = f.get("bundle_path")
            if isinstance(where, str) and where in files:
                fmt = f.get("format") if isinstance(f.get("format"), dict) else {}
                out.setdefault(f["role"], []).append((where, fmt.get("format")))
    return out


def _ev_model_architecture(x: _Inputs) -> Found:
    mcfg = x.load_json(f"{formats.MODEL_DIR}/config.json")
    if isinstance(mcfg, dict) and (mcfg.get("architectures") or mcfg.get("model_type")):
        arch = mcfg.get("architectures") or [mcfg.get("model_type")]
        return Evidence([f"{formats.MODEL_DIR}/config.json"], ", ".join(map(str, arch)))
    return Missing("no model/config.json naming the architecture")


def _ev_final_parameters(x: _Inputs) -> Found:
    weights = [f for f in x.under(formats.MODEL_DIR) if f.endswith(".safetensors")]
    weights += [p for p, fmt in x.roles.get("weights", []) if fmt == "safetensors"]
    if weights:
        return Evidence(weights, "safetensors")
    other = [f for f in x.under(formats.MODEL_DIR) if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    other += [p for p, fmt in x.roles.get("weights", []) if fmt != "safetensors"]
    return Missing("no model/*.safetensors" + (f" ({', '.join(other)} is pickle-based and is not counted)"
                                               if other else ""))


def _ev_technical_report(x: _Inputs) -> Found:
    return Missing("supply it as run.documents.technical_report (a file in the bundle or a URL)")


def _ev_evaluation_results(x: _Inputs) -> Found:
    if x.nonempty(formats.EVALS):
        return Evidence([formats.EVALS])
    return Missing(f"{formats.EVALS} is missing or empty")


def _ev_model_card(x: _Inputs) -> Found:
    card = [f for f in (formats.MODEL_CARD, "MODEL_CARD.md", "README.md") if f in x.files]
    if card:
        return Evidence(card)
    return Missing(f"supply it as run.documents.model_card, or write {formats.MODEL_CARD} (`prov release` does)")


def _ev_data_card(x: _Inputs) -> Found:
    described = {n for n, m in x.manifests.items() if m.get("source") and m.get("license")}
    croissant = [f"{formats.DATA_DIR}/{n}/{formats.CROISSANT_NAME}" for n in sorted(x.manifests)]
    if x.manifests and all(f in x.files for f in croissant):
        return Evidence(croissant, "Croissant data cards")
    if x.manifests and len(described) == len(x.manifests):
        return Evidence([f"{formats.DATA_DIR}/{n}/manifest.json" for n in sorted(x.manifests)],
                        "machine-readable data cards (source, license, files, digests, record counts)")
    if not x.manifests:
        return Missing("no data manifest")
    return Missing(f"data manifests without a source or license: {', '.join(sorted(set(x.manifests) - described))}")


def _ev_sample_outputs(x: _Inputs) -> Found:
    samples = x.under("samples") + [p for p, _ in x.roles.get("sample_output", [])]
    if samples:
        return Evidence(samples)
    return Missing("optional: supply it as run.documents.sample_outputs")


def _ev_training_code(x: _Inputs) -> Found:
    if not x.snapshot:
        return Missing(f"no {formats.CODE_SNAPSHOT} with files listed in {formats.CODE_JSON}")
    if x.entry is not None:
        return Evidence([formats.CODE_SNAPSHOT], f"entry point {x.entry} (+{len(x.snapshot) - 1} files)")
    if not any(isinstance(a, str) and (a == "-m" or a.endswith(".py")) for a in x.argv):
        return Evidence([formats.CODE_SNAPSHOT], f"{len(x.snapshot)} files (entry point not recorded)")
    return Missing("the entry point named in config.json argv is not in the code snapshot")


def _ev_inference_code(x: _Inputs) -> Found:
    hits = _snapshot_hits(x.snapshot, _INFERENCE_RE)
    if hits:
        return Evidence([formats.CODE_SNAPSHOT], f"in the snapshot: {', '.join(hits)}")
    return Missing("no inference script in the code snapshot; add one to the repository or supply "
                   "run.documents.inference_code")


def _ev_evaluation_code(x: _Inputs) -> Found:
    hits = _snapshot_hits(x.snapshot, _EVAL_RE)
    if hits:
        return Evidence([formats.CODE_SNAPSHOT], f"in the snapshot: {', '.join(hits)}")
    if x.entry is not None and x.nonempty(formats.EVALS):
        return Evidence([formats.CODE_SNAPSHOT],
                        f"the evaluations in {formats.EVALS} were logged by {x.entry}, which is in the snapshot")
    return Missing("no evaluation code in the code snapshot")


def _ev_evaluation_data(x: _Inputs) -> Found:
    files: list[str] = []
    lic: list[str | None] = []
    for name, m in sorted(x.manifests.items()):
        ok, _, links, _ = _dataset_available(name, m, x.files)
        if not ok:
            continue
        hits = [e["path"] for e in m.get("files", []) if isinstance(e, dict) and isinstance(e.get("path"), str)
                and _EVAL_DATA_RE.search(e["path"])]
        if hits:
            files += [f"{formats.DATA_DIR}/{name}/files/{h}" if not links else f"{formats.DATA_DIR}/{name}: {h}"
                      for h in hits]
            lic.append(m.get("license") if isinstance(m.get("license"), str) else None)
    if files:
        return Evidence(files, data_licenses=lic)
    return Missing("no validation / evaluation / test files among the bundled datasets")


def _ev_supporting_libraries(x: _Inputs) -> Found:
    env = x.load_json(formats.ENV_JSON)
    if isinstance(env, dict) and isinstance(env.get("packages"), dict) and env["packages"]:
        lock = [s for s in x.snapshot if re.search(r"(^|/)(requirements[^/]*\.(txt|lock)|pyproject\.toml|"
                                                   r"poetry\.lock|uv\.lock|environment\.ya?ml)$", s)]
        return Evidence([formats.ENV_JSON], f"{len(env['packages'])} packages with exact versions"
                        + (f"; {', '.join(lock)}" if lock else ""), own_licenses=True)
    return Missing(f"optional: no package list in {formats.ENV_JSON}")


def _ev_datasets(x: _Inputs) -> Found:
    training = sorted(x.order_datasets) or sorted(n for n, m in x.manifests.items() if m.get("samples")) \
        or sorted(x.manifests)
    files: list[str] = []
    links: list[str] = []
    lic: list[str | None] = []
    notes: list[str] = []
    for name in training:
        m = x.manifests.get(name)
        if m is None:
            notes.append(f"'{name}' has no {formats.DATA_DIR}/{name}/manifest.json")
            continue
        ok, f_, links_, note = _dataset_available(name, m, x.files)
        if ok:
            files += f_
            links += links_
            lic.append(m.get("license") if isinstance(m.get("license"), str) else None)
        else:
            notes.append(note)
    if training and not notes:
        return Evidence(files, f"training data: {', '.join(training)}", links, data_licenses=lic)
    return Missing("; ".join(notes) or "no data manifest in the bundle")


def _ev_data_preprocessing_code(x: _Inputs) -> Found:
    pre: list[str] = []
    for m in x.manifests.values():
        src = m.get("source") if isinstance(m.get("source"), dict) else {}
        code = src.get("code")
        for c_ in [code] if isinstance(code, str) else (code if isinstance(code, list) else []):
            if isinstance(c_, str) and c_ in x.snapshot and c_ not in pre:
                pre.append(c_)
    pre = pre or _snapshot_hits(x.snapshot, _PREPROCESS_RE)
    if pre:
        return Evidence([formats.CODE_SNAPSHOT], f"in the snapshot: {', '.join(sorted(pre))}")
    return Missing("no data preparation code (data manifests' source.code) in the snapshot")


def _ev_intermediate_parameters(x: _Inputs) -> Found:
    ckpts = [f for f in x.under(formats.CHECKPOINT_DIR) if f.endswith((".safetensors", ".distcp"))]  # DCP shards too
    ckpts += [p for p, _ in x.roles.get("checkpoint", [])]
    if ckpts:
        return Evidence(ckpts, f"{len(ckpts)} checkpoints")
    return Missing(f"no checkpoints in {formats.CHECKPOINT_DIR}/")


def _ev_research_paper(x: _Inputs) -> Found:
    return Missing("supply it as run.documents.research_paper (a file in the bundle or a URL)")


def _ev_model_metadata(x: _Inputs) -> Found:
    meta = [f for f in (f"{formats.MODEL_DIR}/config.json", f"{formats.MODEL_DIR}/generation_config.json",
                        formats.RUN_JSON, formats.CONFIG_JSON) if f in x.files]
    if f"{formats.MODEL_DIR}/config.json" in meta:
        return Evidence(meta)
    return Missing("optional: no model/config.json")


EVIDENCE: dict[str, Callable[[_Inputs], Found]] = {  # one evidence function per component, in COMPONENTS order
    "model_architecture": _ev_model_architecture,
    "final_parameters": _ev_final_parameters,
    "technical_report": _ev_technical_report,
    "evaluation_results": _ev_evaluation_results,
    "model_card": _ev_model_card,
    "data_card": _ev_data_card,
    "sample_outputs": _ev_sample_outputs,
    "training_code": _ev_training_code,
    "inference_code": _ev_inference_code,
    "evaluation_code": _ev_evaluation_code,
    "evaluation_data": _ev_evaluation_data,
    "supporting_libraries": _ev_supporting_libraries,
    "datasets": _ev_datasets,
    "data_preprocessing_code": _ev_data_preprocessing_code,
    "intermediate_parameters": _ev_intermediate_parameters,
    "research_paper": _ev_research_paper,
    "model_metadata": _ev_model_metadata,
}


def _documents(x: _Inputs, comps: dict[str, Component]) -> list[dict[str, Any]]:
    """run.documents entries first: each may satisfy any component (the run's license covers it)."""
    report: list[dict[str, Any]] = []
    for key, value in sorted(x.documents.items(), key=lambda kv: str(kv[0])):
        nk = _norm_key(str(key))
        cid = nk if nk in COMPONENT_IDS else DOCUMENT_ALIASES.get(nk)
        kind, where, note = resolve_document(value, x.files)
        report.append({"key": str(key), "component": cid, "value": value if isinstance(value, str) else None,
                       "present": kind is not None, "kind": kind, "where": where, "note": note})
        if cid is None or kind is None:
            continue
        c = comps[cid]
        c.found = True
        (c.links if kind == "link" else c.files).append(where)
        c.note = f"from run.documents['{key}']" + (f"; {note}" if note else "")
        c.license = x.run_license
        c.license_source = "run.json license (covers what is released with the run)" if x.run_license else None
    return report


def _apply(c: Component, ev: Found, x: _Inputs) -> None:
    if isinstance(ev, Missing):
        if not c.found:
            c.note = ev.note
        return
    if c.found:  # a document already satisfies it; add the bundle's own evidence
        c.files.extend(f for f in ev.files if f not in c.files)
        return
    c.found, c.files, c.links, c.note = True, list(ev.files), list(ev.links), ev.note
    c.license, c.license_source = x.run_license, "run.json license" if x.run_license else None
    if ev.data_licenses is not None:
        _data_license(c, ev.data_licenses, "data manifest license")
    if ev.own_licenses:
        c.license, c.license_source = None, "each package's own license"


def _fully_open(x: _Inputs, comps: dict[str, Component]) -> list[FullyOpenItem]:
    notes_n = len(x.reader.try_jsonl(formats.NOTES) or []) if formats.NOTES in x.files else 0
    logs = [f for f in (formats.METRICS, formats.EVENTS, formats.EVALS, formats.STDOUT, formats.STDERR)
            if f in x.files]
    have_logs = formats.METRICS in x.files and formats.EVENTS in x.files
    return [
        _item("weights", comps["final_parameters"]),
        _item("data", comps["datasets"]),
        _item("training_code", comps["training_code"]),
        FullyOpenItem("logs", "Logs", have_logs, logs,
                      note="" if have_logs else f"{formats.METRICS} and {formats.EVENTS} are both needed"),
        FullyOpenItem("decision_notes", "Decision notes", notes_n > 0, [formats.NOTES] if notes_n else [],
                      note=f"{notes_n} notes" if notes_n
                      else f"no notes in {formats.NOTES} (add them with `prov note`)"),
    ]


def assess(reader: BundleReader, required_class: str | None = None) -> OpennessReport:
    """Score a bundle against the MOF and the fully open list.

    Never raises on a malformed bundle: what cannot be read counts as missing.
    """
    if required_class is not None and required_class not in CLASSES:
        raise ValueError(f"unknown MOF class {required_class!r} (expected I, II or III)")
    x = _Inputs(reader)
    comps = {c.id: Component(c.id, c.name, c.mof_class, c.optional) for c in COMPONENTS}
    doc_report = _documents(x, comps)
    for spec in COMPONENTS:
        _apply(comps[spec.id], EVIDENCE[spec.id](x), x)
    for spec in COMPONENTS:
        c = comps[spec.id]
        if spec.id == "supporting_libraries":  # each package has its own license: no single verdict
            c.license_open = None
            continue
        if c.license_source is None and c.found and c.license is None:
            c.note = (c.note + "; " if c.note else "") + "no license stated"
        c.license_open = license_is_open(c.license, spec.kind)
    return OpennessReport(components=[comps[c.id] for c in COMPONENTS], fully_open=_fully_open(x, comps),
                          run_license=x.run_license, documents=doc_report, required_class=required_class)


def _item(iid: str, c: Component) -> FullyOpenItem:
    name = dict(FULLY_OPEN)[iid]
    return FullyOpenItem(iid, name, c.found, list(c.files) + list(c.links), c.license, c.license_open,
                         "" if c.found else c.note)


def _data_license(c: Component, licenses: list[str | None], source: str) -> None:
    if c.license_source and c.license_source.startswith("run.json") and c.note.startswith("from run.documents"):
        return  # supplied as a document: the run's license applies
    stated = sorted({lic for lic in licenses if lic})
    if not stated or len(stated) < len(set(licenses)):
        c.license, c.license_source = None, None
        c.note = (c.note + "; " if c.note else "") + "a dataset states no license"
        return
    c.license = " AND ".join(stated) if len(stated) > 1 else stated[0]
    c.license_source = source
