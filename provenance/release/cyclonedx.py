"""CycloneDX 1.7 ML-BOM (JSON) of a run, from the bundle's own records.

- the model: a `machine-learning-model` component with its files (nested `file` components
  with sha256), license, a `modelCard` (model parameters: approach, task, architecture,
  datasets by reference, input and output formats; quantitative analysis: the final
  evaluation; considerations: the technical report's intended uses and limitations when
  the run ships one) and a `pedigree` whose ancestors are the run's checkpoints (each a
  machine-learning-model component with its sha256 and step);
- each dataset: a `data` component (source, license, generator or origin), with one nested
  `data` component per file carrying its sha256, size and record count;
- the software environment: one `library` component per installed package (from
  env/environment.json) with its version and purl;
- `dependencies`: the model depends on its datasets and on the environment.

A license that is not an SPDX id is given as a license `name` and said so in a property; a
license the bundle does not state is left out and a property says "unknown"; a dataset whose
source is not recorded says so. The serial number is derived from the run files' root digest,
so exporting the same bundle twice gives the same BOM.
"""

from __future__ import annotations

import uuid
from typing import Any

from provenance import __version__, formats
from provenance.release import licenses
from provenance.release.facts import Facts, markdown_section_items
from provenance.release.mot import architecture_family

NS = uuid.UUID("6f1c1d3e-6a0b-5c57-9d43-0b8f8e0f7a11")  # namespace of our BOM serial numbers
PROP = "fullyopen:"


def _prop(name: str, value: Any) -> dict[str, str]:
    return {"name": PROP + name, "value": str(value)}


def _licenses(value: Any) -> tuple[list[dict[str, Any]] | None, list[dict[str, str]]]:
    """(licenseChoice or None, properties saying what the bundle states)."""
    kind, text = licenses.classify(value)
    if kind == "id":
        return [{"license": {"id": text}}], []
    if kind == "expression":
        return [{"expression": text}], []
    if kind == "name":
        return [{"license": {"name": text}}], [_prop("license-note", f"'{text}' is not an SPDX license identifier")]
    return None, [_prop("license-note", "no license is stated in the bundle (unknown)")]


def _sha(hexd: str | None) -> list[dict[str, str]]:
    return [{"alg": "SHA-256", "content": hexd}] if hexd else []


def _hex(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return None
    return v.split(":", 1)[1] if v.startswith("sha256:") else v


def model_ref(f: Facts) -> str:
    return f"model:{f.run_id}"


def data_ref(name: str) -> str:
    return f"data:{name}"


def _considerations(f: Facts) -> dict[str, Any]:
    text = f.document_text("technical_report", "report", "tech_report")
    out: dict[str, Any] = {}
    if text:
        uses = markdown_section_items(text, "intended use", "uses")
        limits = markdown_section_items(text, "limitation")
        if uses:
            out["useCases"] = uses
        if limits:
            out["technicalLimitations"] = limits
    return out


def _metrics(f: Facts) -> list[dict[str, str]]:
    final = f.final_eval
    step = final.get("step")
    out = []
    for k in sorted(final):
        v = final[k]
        if k in ("step", "time") or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        where = "validation split" if k.startswith("val_") else "held-out evaluation data"
        out.append({"type": k, "value": repr(v) if isinstance(v, float) else str(v),
                    "slice": f"{where}, step {step}"})
    return out


def _model(f: Facts) -> dict[str, Any]:
    lic, lic_props = _licenses(f.license)
    files = [{"type": "file", "bom-ref": f"file:{n}", "name": n, "hashes": _sha(f.resources.get(n))}
             for n in f.model_files() or f.output_files()]
    ancestors = []
    for c in f.checkpoints:
        path = c.get("path")
        if not isinstance(path, str):
            continue
        props = [_prop("step", c.get("step"))]
        if c.get("tokens_seen") is not None:
            props.append(_prop("tokens_seen", c.get("tokens_seen")))
        ancestors.append({"type": "machine-learning-model", "bom-ref": f"checkpoint:{path}",
                          "name": f"{f.name} checkpoint at step {c.get('step')}", "version": f"step-{c.get('step')}",
                          "hashes": _sha(_hex(c.get("sha256")) or f.resources.get(path)),
                          "properties": [*props, _prop("path", path)]})
    card: dict[str, Any] = {
        "bom-ref": f"modelcard:{f.run_id}",
        "modelParameters": {
            "approach": {"type": "self-supervised"},
            "task": "text-generation" if f.model_config else "other",
            "architectureFamily": architecture_family(f) or "not recorded",
            "modelArchitecture": f.architecture,
            "datasets": [{"ref": data_ref(n)} for n in f.manifests],
            "inputs": [{"format": "text"}] if f.model_config else [],
            "outputs": [{"format": "text"}] if f.model_config else [],
        },
        "quantitativeAnalysis": {"performanceMetrics": _metrics(f)},
        "properties": [_prop("parameters", f.parameters)] if f.parameters is not None else [],
    }
    cons = _considerations(f)
    if cons:
        card["considerations"] = cons
    if not card["modelParameters"]["inputs"]:
        del card["modelParameters"]["inputs"], card["modelParameters"]["outputs"]
    comp: dict[str, Any] = {
        "type": "machine-learning-model", "bom-ref": model_ref(f), "name": f.name, "version": f.run_id,
        "description": f"{f.architecture} trained in run {f.run_id}; every file is listed with its sha256 in the "
                       f"bundle's seal ({formats.MANIFEST})",
        "modelCard": card,
        "components": files,
        "properties": [_prop("run-files-root-digest", f"sha256:{f.content_root_digest}"),
                       _prop("config-digest", f.config.get("digest")), *lic_props],
        "externalReferences": _references(f),
    }
    if lic:
        comp["licenses"] = lic
    if ancestors:
        comp["pedigree"] = {"ancestors": ancestors,
                            "notes": "checkpoints written by this run, in step order (checkpoints/index.json)"}
    if not files:
        del comp["components"]
    return comp


def _references(f: Facts) -> list[dict[str, Any]]:
    refs: list[dict[str, Any]] = [{"type": "model-card", "url": formats.MODEL_CARD,
                                   "comment": "Hugging Face model card, relative to the bundle"},
                                  {"type": "attestation", "url": formats.SLSA_ENVELOPE,
                                   "comment": "SLSA provenance v1, signed (DSSE)"},
                                  {"type": "log", "url": formats.METRICS, "comment": "exact per-step metrics",
                                   "hashes": _sha(f.resources.get(formats.METRICS))}]
    kinds = {"technical_report": "documentation", "research_paper": "citation", "data_card": "documentation"}
    for key, where in sorted(f.documents.items()):
        refs.append({"type": kinds.get(key, "other"), "url": where, "comment": f"run.documents.{key}",
                     **({"hashes": _sha(f.resources[where])} if where in f.resources else {})})
    return [r for r in refs if "hashes" not in r or r["hashes"]]


def _dataset(f: Facts, name: str) -> dict[str, Any]:
    m = f.manifests[name]
    src = f.source(name)
    lic, lic_props = _licenses(m.get("license"))
    props = [*lic_props]
    if src:
        props += [_prop(f"source.{k}", v) for k, v in sorted(src.items())
                  if isinstance(v, str | int | float) and not isinstance(v, bool) and k != "local_path"]
    else:
        props.append(_prop("source", "not recorded in the data manifest (unknown; not invented)"))
    files = []
    for e in f.data_files(name):
        role = f.file_role(name, e["path"])
        rel = f.data_file(name, e["path"])
        fprops = [_prop("role", role), _prop("size", e.get("size"))]
        if "records" in e:
            fprops.append(_prop("records", e["records"]))
        files.append({"type": "data", "bom-ref": f"data:{name}/{e['path']}", "name": e["path"],
                      "hashes": _sha(_hex(e.get("sha256"))),
                      "data": [{"type": "dataset", "name": e["path"],
                                "contents": {"url": rel if rel in f.resources else
                                             (src.get("url") if isinstance(src.get("url"), str) else e["path"])},
                                "description": f"{role} data of dataset {name}"}],
                      "properties": fprops})
    kind = str(src.get("type") or "unknown")
    comp: dict[str, Any] = {
        "type": "data", "bom-ref": data_ref(name), "name": name,
        "description": f"dataset {name}; source: {kind}"
                       + (f" ({src.get('generator')} {src.get('version')}, seed {src.get('seed')})"
                          if kind == "generated" else ""),
        "data": [{"type": "dataset", "name": name, "contents": {"url": f"{formats.DATA_DIR}/{name}/manifest.json"},
                  "classification": "public" if m.get("bundled_files") else "not recorded",
                  "description": "every file with its sha256, size and record count is in the data manifest"}],
        "components": files,
        "properties": props,
    }
    if isinstance(src.get("version"), str):
        comp["version"] = src["version"]
    if lic:
        comp["licenses"] = lic
    if not files:
        del comp["components"]
    return comp


def _libraries(f: Facts) -> list[dict[str, Any]]:
    pkgs = f.env.get("packages") if isinstance(f.env.get("packages"), dict) else {}
    out = []
    for name, version in sorted(pkgs.items()):
        if not isinstance(name, str) or not isinstance(version, str):
            continue
        purl = f"pkg:pypi/{name.lower()}@{version}"
        out.append({"type": "library", "bom-ref": purl, "name": name, "version": version, "purl": purl})
    return out


def build_bom(f: Facts, timestamp: str, producer: str | None = None) -> dict[str, Any]:
    """The BOM as a JSON-ready dict. timestamp: UTC ISO-8601 (the release time)."""
    model = _model(f)
    data = [_dataset(f, n) for n in f.manifests]
    libs = _libraries(f)
    seed = f.content_root_digest or f.run_id
    meta: dict[str, Any] = {
        "timestamp": timestamp,
        "lifecycles": [{"phase": "build"}],
        "tools": {"components": [{"type": "application", "name": "fullyopen", "version": __version__,
                                  "description": "prov release / prov export"}]},
        "properties": [_prop("run-id", f.run_id), _prop("bundle-schema", f.run.get("schema"))],
    }
    if producer:
        meta["manufacturer"] = {"name": producer}
    deps = [{"ref": model_ref(f), "dependsOn": [data_ref(n) for n in f.manifests] + [lib["bom-ref"] for lib in libs]}]
    deps += [{"ref": data_ref(n)} for n in f.manifests] + [{"ref": lib["bom-ref"]} for lib in libs]
    return {
        "$schema": "http://cyclonedx.org/schema/bom-1.7.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": formats.CYCLONEDX_SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid5(NS, seed)}",
        "version": 1,
        "metadata": meta,
        "components": [model, *data, *libs],
        "dependencies": deps,
    }


def validate(bom: dict[str, Any]) -> list[str]:
    """Errors of cyclonedx-python-lib's strict JSON-schema validation for 1.7 (empty: valid)."""
    import json

    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    err = JsonStrictValidator(SchemaVersion.V1_7).validate_str(json.dumps(bom))
    if err is None:
        return []
    data = getattr(err, "data", None)
    msg = getattr(data, "message", None) or str(err).split("\n", 1)[0]
    path = "/".join(str(p) for p in getattr(data, "absolute_path", []) or [])
    return [f"{path}: {msg}" if path else str(msg)]
