"""What the release documents say about a bundle, read once from the bundle's own files.

Every reader here is forgiving: a missing or malformed file gives an empty value, so a
document about a partial bundle still says what is known (and the audit says what is not).
Everything is read once, in `Facts.load`, through reader.Bundle (typed records where the file
has one: run.json, the checkpoint index, notes, order headers); nothing is read after that.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance import formats, reader, records, untrusted

EVAL_FILE = re.compile(r"(valid|eval|test|held[-_]?out|(^|[^a-z])dev([^a-z]|$))", re.IGNORECASE)


def is_release_file(rel: str) -> bool:
    """A file `prov release` writes (documents and signatures), as opposed to what the run wrote."""
    if rel.startswith(formats.RELEASE_DIR + "/") or rel == formats.MODEL_CARD:
        return True
    parts = rel.split("/")
    return len(parts) == 3 and parts[0] == formats.DATA_DIR and parts[2] == formats.CROISSANT_NAME


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def safetensors_parameters(path: Path) -> tuple[int, list[str]] | None:
    """(number of parameters, dtypes) from a safetensors header (reader's one parser), without loading tensors."""
    try:
        header = reader.safetensors_header(path)
    except (OSError, ValueError):  # reader.HeaderError is a ValueError
        return None
    return header.parameters, header.dtypes


@dataclass
class Facts:
    root: Path
    run: dict[str, Any]
    config: dict[str, Any]  # config.json: {"config", "digest", "argv", ...}
    code: dict[str, Any]
    env: dict[str, Any]
    manifests: dict[str, dict[str, Any]]  # dataset name -> data manifest
    metrics: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    notes: list[dict[str, Any]]
    events: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]
    model_config: dict[str, Any]
    resources: dict[str, str]  # manifest.json: name -> hex sha256
    root_digest: str | None
    reproduction: dict[str, Any] | None  # reproduction/summary.json when this run is a reproduction
    repro_steps: list[dict[str, Any]] = field(default_factory=list)
    repro_report: dict[str, Any] | None = None  # reproduction/report.json (its verdict and divergence curve)
    parameters: int | None = None
    dtypes: list[str] = field(default_factory=list)
    run_record: records.RunInfo | None = None  # run.json typed (None when it is not a valid RunInfo)
    order_datasets: list[str] = field(default_factory=list)  # the datasets the order headers name, in rank order
    reseals: bytes | None = None  # reseals.jsonl as sealed (read with the rest)
    document_bytes: dict[str, bytes] = field(default_factory=dict)  # run.documents files: their first MiB

    DOCUMENT_LIMIT = 1 << 20

    @classmethod
    def load(cls, root: str | Path) -> Facts:
        """Every fact, read once through reader.Bundle (bounded; a file that cannot be read is left empty)."""
        root = Path(root)
        with reader.Bundle(root) as b:
            return cls._from_bundle(root, b)

    @classmethod
    def _from_bundle(cls, root: Path, b: reader.Bundle) -> Facts:
        def js(rel: str) -> Any:
            return b.try_json(rel)

        def jl(rel: str) -> list[dict[str, Any]]:
            return b.try_jsonl(rel) or []

        manifests: dict[str, dict[str, Any]] = {}
        for rel in sorted(b.files):
            parts = rel.split("/")
            if len(parts) == 3 and parts[0] == formats.DATA_DIR and parts[2] == "manifest.json":
                m = js(rel)
                if isinstance(m, dict):
                    manifests[parts[1]] = m
        manifests = dict(sorted(manifests.items()))
        resources: dict[str, str] = {}
        root_d: str | None = None
        try:
            root_d, resources = formats.parse_oms_statement(b.json(formats.MANIFEST))
        except (reader.BundleFileError, formats.FormatError):
            pass
        def typed(read: Any) -> Any:
            try:
                return read()
            except reader.BundleFileError:
                return None

        index = typed(b.checkpoint_index)
        ckpts = [records.to_dict(e) for e in index.checkpoints] if index is not None else []
        run_rec = typed(b.run_record) if b.has(formats.RUN_JSON) else None
        order_datasets: list[str] = []
        for rel in sorted(b.under(formats.ORDER_DIR)):
            rank = rel.removeprefix(f"{formats.ORDER_DIR}/rank").removesuffix(".json")
            hdr = typed(lambda r=int(rank): b.order_header(r)) if rank.isdigit() and rel.endswith(".json") else None
            if hdr is not None and hdr.dataset and hdr.dataset not in order_datasets:
                order_datasets.append(hdr.dataset)
        docs: dict[str, bytes] = {}
        for rel in (run_rec.documents.values() if run_rec is not None else []):
            if "://" not in rel and rel in resources and b.has(rel):
                with b.open(rel) as fh:
                    docs[rel] = fh.read(cls.DOCUMENT_LIMIT)
        facts = cls(
            root=root, run=_dict(js(formats.RUN_JSON)), config=_dict(js(formats.CONFIG_JSON)),
            code=_dict(js(formats.CODE_JSON)), env=_dict(js(formats.ENV_JSON)),
            manifests=manifests, metrics=jl(formats.METRICS), evals=jl(formats.EVALS),
            notes=[records.to_dict(n) for _, n in b.notes()[0]] if b.has(formats.NOTES) else [],
            events=jl(formats.EVENTS), checkpoints=sorted(ckpts, key=lambda e: e.get("step", 0)),
            model_config=_dict(js(formats.MODEL_DIR + "/config.json")), resources=resources,
            root_digest=root_d, reproduction=js("reproduction/summary.json"),
            repro_steps=jl("reproduction/steps.jsonl"), run_record=run_rec, order_datasets=order_datasets,
            reseals=typed(lambda: b.read_bytes(formats.RESEALS, b.limits.max_jsonl_bytes))
            if b.has(formats.RESEALS) else None,
            document_bytes=docs, repro_report=js("reproduction/report.json"),
        )
        weights = sorted(rel for rel in b.files if rel.startswith(formats.MODEL_DIR + "/")
                         and rel.count("/") == 1 and rel.endswith(".safetensors"))
        counted: list[tuple[int, list[str]] | None] = []
        for w in weights:
            try:
                h = b.safetensors_header(w)
            except reader.BundleFileError:
                counted.append(None)
                continue
            counted.append((h.parameters, h.dtypes))
        if weights and all(c is not None for c in counted):
            facts.parameters = sum(c[0] for c in counted if c)
            facts.dtypes = sorted({d for c in counted if c for d in c[1]})
        return facts

    # --- convenience ----------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return str(self.run.get("run_id") or self.root.name)

    @property
    def name(self) -> str:
        return str(self.run.get("name") or self.run_id)

    @property
    def license(self) -> str | None:
        lic = self.run_record.license if self.run_record is not None else None
        return lic if lic and lic.strip() else None

    @property
    def cfg(self) -> dict[str, Any]:
        return _dict(self.config.get("config"))

    @property
    def argv(self) -> list[str]:
        a = self.config.get("argv")
        return [str(x) for x in a] if isinstance(a, list) else []

    @property
    def training_datasets(self) -> list[str]:
        """Datasets whose samples the data order indexes (else those with samples, else all)."""
        with_samples = [n for n, m in self.manifests.items() if m.get("samples")]
        return list(self.order_datasets) or with_samples or list(self.manifests)

    @property
    def content_root_digest(self) -> str | None:
        """Root digest over the run's own files, release documents left out.

        Before the first release this is the bundle's root digest; a release adds
        documents but never changes it (the release re-seals over more files).
        """
        if not self.resources:
            return None
        from provenance.hashing import root_digest, sha256_bytes

        digests = {n: d for n, d in self.resources.items() if not is_release_file(n)}
        if formats.RESEALS in digests:  # the release records its own re-seals: take reseals.jsonl as it was before
            kept = []
            for line in io.BytesIO(self.reseals or b""):  # line by line, as the file reads
                try:
                    rec = untrusted.loads(line)
                except ValueError:
                    rec = None
                if isinstance(rec, dict) and str(rec.get("command", "")).startswith(formats.RELEASE_COMMAND):
                    break
                kept.append(line)
            if kept:
                digests[formats.RESEALS] = sha256_bytes(b"".join(kept))
            else:
                del digests[formats.RESEALS]
        names = sorted(digests, key=formats.resource_sort_key)
        return root_digest(digests[n] for n in names)

    @property
    def tokens_seen(self) -> int | None:
        for m in reversed(self.metrics):
            if isinstance(m.get("tokens_seen"), int):
                return int(m["tokens_seen"])
        return None

    @property
    def last_step(self) -> int | None:
        if self.run_record is not None and self.run_record.last_step is not None:
            return self.run_record.last_step
        return self.metrics[-1].get("step") if self.metrics else None

    @property
    def final_eval(self) -> dict[str, Any]:
        return self.evals[-1] if self.evals else {}

    def model_files(self) -> list[str]:
        """The final model's files (the model card excluded), from the seal."""
        prefix = formats.MODEL_DIR + "/"
        return sorted(n for n in self.resources if n.startswith(prefix) and n != formats.MODEL_CARD)

    def checkpoint_files(self) -> list[str]:
        prefix = formats.CHECKPOINT_DIR + "/"
        return sorted(n for n in self.resources if n.startswith(prefix) and n != formats.CHECKPOINT_INDEX)

    def output_files(self) -> list[str]:
        """Files a wrapped command (`prov run`) declared as outputs: outputs/<label>/<path>."""
        return sorted(n for n in self.resources if n.startswith("outputs/") and n != "outputs/index.json")

    def data_file(self, dataset: str, path: str) -> str:
        return f"{formats.DATA_DIR}/{dataset}/files/{path}"

    def data_files(self, dataset: str) -> list[dict[str, Any]]:
        """A manifest's file entries (path, sha256, size, records), malformed ones left out."""
        m = self.manifests.get(dataset) or {}
        return [e for e in m.get("files", []) if isinstance(e, dict) and isinstance(e.get("path"), str)]

    def file_role(self, dataset: str, path: str) -> str:
        """'training' (the file whose records the data order indexes), 'evaluation' (held-out files by
        name), or 'auxiliary' (everything else, e.g. a tokenizer)."""
        m = self.manifests.get(dataset) or {}
        samples = m.get("samples") if isinstance(m.get("samples"), dict) else {}
        if dataset in self.training_datasets and samples.get("file") == path:
            return "training"
        if dataset in self.training_datasets and not samples and not EVAL_FILE.search(path):
            return "training"
        if EVAL_FILE.search(path):
            return "evaluation"
        return "auxiliary"

    def source(self, dataset: str) -> dict[str, Any]:
        m = self.manifests.get(dataset) or {}
        return m.get("source") if isinstance(m.get("source"), dict) else {}

    def document_text(self, *keys: str, limit: int = 1 << 20) -> str | None:
        """The text of the first run.documents entry among keys that is a file in the bundle (bounded)."""
        docs = self.documents
        for key in keys:
            rel = docs.get(key)
            if not rel or "://" in rel or rel not in self.resources:
                continue
            if rel in self.document_bytes:
                return self.document_bytes[rel][:limit].decode("utf-8", "replace")
        return None

    @property
    def documents(self) -> dict[str, str]:
        """run.json documents: {key: bundle path or URL} (what the run shipped for what it cannot produce)."""
        return dict(self.run_record.documents) if self.run_record is not None else {}

    @property
    def architecture(self) -> str:
        arch = self.model_config.get("architectures")
        if isinstance(arch, list) and arch:
            return ", ".join(map(str, arch))
        return str(self.model_config.get("model_type") or "unknown")


def markdown_section_items(text: str, *headings: str) -> list[str]:
    """The list items (or, failing those, the paragraphs) under the first '## <heading>' found."""
    lines = text.splitlines()
    wanted = [h.lower() for h in headings]
    for i, line in enumerate(lines):
        m = re.match(r"^#{2,3}\s+(.*?)\s*$", line)
        if not m or not any(m.group(1).lower().startswith(w) for w in wanted):
            continue
        body: list[str] = []
        for ln in lines[i + 1:]:
            if re.match(r"^#{1,3}\s", ln):
                break
            body.append(ln)
        items = [re.sub(r"^\s*[-*]\s+", "", ln).strip() for ln in body if re.match(r"^\s*[-*]\s+", ln)]
        if items:
            return items
        paras = [p.strip().replace("\n", " ") for p in "\n".join(body).split("\n\n") if p.strip()]
        return paras
    return []
