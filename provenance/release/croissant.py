"""Croissant 1.1 data cards (JSON-LD), one for each dataset of a bundle.

A card sits next to the dataset's manifest (data/<name>/croissant.json) and describes
what the manifest records: every file as a FileObject with its sha256 and size, the
records of each line-oriented file as a RecordSet whose fields are read from the file
(JSON lines: the keys of the first record; CSV/TSV: the header; text: one `text` field),
the license, and the responsible-AI (RAI) facts the bundle knows (how the data was
collected or generated, how it was used). contentUrl is relative to the card, so
`mlcroissant` can load the records straight from the bundle.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from provenance import formats
from provenance.release.facts import Facts

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"

CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "description": {"@container": "@language"},
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "name": {"@container": "@language"},
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

ENCODINGS = {
    ".jsonl": "application/jsonlines",
    ".json": "application/json",
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".txt": "text/plain",
    ".parquet": "application/x-parquet",
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".gz": "application/gzip",
}


def card_path(dataset: str) -> str:
    return f"{formats.DATA_DIR}/{dataset}/{formats.CROISSANT_NAME}"


def _ident(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "x"


def _data_type(value: Any) -> str:
    if isinstance(value, bool):
        return "sc:Boolean"
    if isinstance(value, int):
        return "sc:Integer"
    if isinstance(value, float):
        return "sc:Float"
    return "sc:Text"


def _first_line(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            line = f.readline(1 << 20)
    except OSError:
        return None
    return line if line.strip() else None


def _fields(path: Path, suffix: str) -> list[tuple[str, str]] | None:
    """[(name, dataType)] of a record of a line-oriented file, or None when it has none we can read."""
    line = _first_line(path)
    if line is None:
        return None
    if suffix == ".jsonl":
        try:
            rec = json.loads(line)
        except ValueError:
            return None
        if not isinstance(rec, dict) or not rec:
            return None
        return [(k, _data_type(v)) for k, v in rec.items() if not isinstance(v, dict | list)] or None
    if suffix in (".csv", ".tsv"):
        header = next(csv.reader(io.StringIO(line.decode("utf-8", "replace")),
                                 delimiter="," if suffix == ".csv" else "\t"), [])
        return [(h, "sc:Text") for h in header if h] or None
    return None


def _record_set(dataset: str, file_id: str, rel: str, fields: list[tuple[str, str]],
                records: Any, role: str) -> dict[str, Any]:
    rs_id = _ident(Path(rel).stem)
    return {
        "@type": "cr:RecordSet",
        "@id": rs_id,
        "name": rs_id,
        "description": f"Records of {rel} ({records} records; {role})." if isinstance(records, int)
        else f"Records of {rel} ({role}).",
        "field": [
            {"@type": "cr:Field", "@id": f"{rs_id}/{_ident(name)}", "name": name,
             "description": f"'{name}' of each record.", "dataType": dtype,
             "source": {"fileObject": {"@id": file_id}, "extract": {"column": name}}}
            for name, dtype in fields
        ],
    }


def _rai(f: Facts, dataset: str, m: dict[str, Any]) -> dict[str, Any]:
    """The responsible-AI facts the bundle knows; nothing is guessed."""
    src = m.get("source") if isinstance(m.get("source"), dict) else {}
    kind = str(src.get("type", "")).lower()
    out: dict[str, Any] = {}
    params = json.dumps(src.get("parameters"), sort_keys=True) if src.get("parameters") else None
    if kind == "generated":
        what = f"Generated by {src.get('generator') or 'a program'}"
        if src.get("code"):
            what += f" ({src['code']}, in the run's code snapshot {formats.CODE_SNAPSHOT})"
        if src.get("version"):
            what += f", version {src['version']}"
        if src.get("seed") is not None:
            what += f", seed {src['seed']}"
        if params:
            what += f", parameters {params}"
        out["rai:dataCollection"] = what + ". Regenerating it with the same code, version and seed gives the " \
                                           "same bytes (the sha256 of every file is recorded)."
        out["rai:dataCollectionType"] = "Synthetic data (generated by a program)"
        out["rai:personalSensitiveInformation"] = "None: every record is produced by a program from templates; " \
                                                  "no person's data was collected."
    elif kind == "derived":
        what = f"Derived from {src.get('from') or 'other data of the run'}"
        if src.get("trainer"):
            what += f" with {src['trainer']}"
        if params:
            what += f", parameters {params}"
        out["rai:dataCollection"] = what + (f" (code: {src['code']})" if src.get("code") else "") + "."
        out["rai:dataPreprocessingProtocol"] = out["rai:dataCollection"]
    elif src:
        desc = ", ".join(f"{k}: {v}" for k, v in sorted(src.items()) if isinstance(v, str | int | float))
        out["rai:dataCollection"] = f"Obtained from a {kind or 'stated'} source ({desc})." if desc else \
            f"Obtained from a {kind or 'stated'} source."
    role = "training" if dataset in f.training_datasets else "tokenizer / auxiliary data"
    uses = f"Used for {role} in run {f.run_id} ({f.name})"
    samples = m.get("samples")
    if isinstance(samples, dict) and samples.get("file"):
        uses += f"; sample ids in the run's data order index the records of {samples['file']} (0-based)"
    out["rai:dataUseCases"] = uses + "."
    return out


def build_card(f: Facts, dataset: str, date: str, producer: str | None = None) -> dict[str, Any]:
    """The Croissant 1.1 JSON-LD description of one dataset of the bundle."""
    m = f.manifests[dataset]
    src = m.get("source") if isinstance(m.get("source"), dict) else {}
    lic = m.get("license") if isinstance(m.get("license"), str) else None
    training = dataset in f.training_datasets
    distribution: list[dict[str, Any]] = []
    record_sets: list[dict[str, Any]] = []
    bundled = bool(m.get("bundled_files"))
    for e in m.get("files", []):
        if not isinstance(e, dict) or not isinstance(e.get("path"), str):
            continue
        rel = e["path"]
        suffix = Path(rel).suffix.lower()
        fo: dict[str, Any] = {
            "@type": "cr:FileObject",
            "@id": _ident(rel),
            "name": rel,
            "description": f"{rel}: {e.get('records')} records" if "records" in e else rel,
            "contentUrl": f"files/{rel}" if bundled else (src.get("url") or rel),
            "encodingFormat": ENCODINGS.get(suffix, "application/octet-stream"),
            "sha256": str(e.get("sha256", "")).removeprefix("sha256:"),
        }
        if isinstance(e.get("size"), int):
            fo["contentSize"] = f"{e['size']} B"
        distribution.append(fo)
        local = f.root / f.data_file(dataset, rel)
        fields = _fields(local, suffix) if bundled and local.is_file() else None
        if fields:
            role = "the training samples" if isinstance(m.get("samples"), dict) and \
                m["samples"].get("file") == rel else "evaluation" if any(
                    w in rel.lower() for w in ("valid", "eval", "test")) else "data"
            record_sets.append(_record_set(dataset, fo["@id"], rel, fields, e.get("records"), role))
    description = (f"Dataset '{dataset}' of training run {f.run_id} ({f.name}), "
                   f"{'used to train the model' if training else 'used by the run'}; "
                   f"source: {src.get('type', 'unknown')}. Every file is listed with its sha256 as recorded in the "
                   f"run's data manifest ({formats.DATA_DIR}/{dataset}/manifest.json).")
    card: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "name": dataset,
        "description": description,
        "conformsTo": CONFORMS_TO,
        "datePublished": date,
        "url": src.get("url") if isinstance(src.get("url"), str) else f"{formats.DATA_DIR}/{dataset}/",
        "distribution": distribution,
    }
    card["citeAs"] = (f"@misc{{{_ident(f.run_id)}_{_ident(dataset)}, title = {{{dataset}: data of training run "
                      f"{f.run_id}}}, note = {{files listed with sha256 in "
                      f"{formats.DATA_DIR}/{dataset}/manifest.json}}, year = {{{date[:4]}}}}}")
    if lic:
        card["license"] = f"https://spdx.org/licenses/{lic}.html" if " " not in lic else lic
    if src.get("version"):
        card["version"] = str(src["version"])
    if producer:
        card["creator"] = {"@type": "sc:Organization", "name": producer}
    if record_sets:
        card["recordSet"] = record_sets
    card.update(_rai(f, dataset, m))
    return card


def validate(path: str | Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of mlcroissant's validation of a card (offline). Needs mlcroissant."""
    import logging

    import mlcroissant as mlc

    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # mlcroissant logs its warnings; they are returned instead
    try:
        ds = mlc.Dataset(jsonld=str(path))
    except mlc.ValidationError as exc:
        return [str(exc)], []
    finally:
        absl_logger.setLevel(level)
    return [], sorted(ds.metadata.ctx.issues.warnings)
