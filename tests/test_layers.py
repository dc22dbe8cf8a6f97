"""The layering of provenance/: lower layers never import higher ones."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "provenance"

# lowest first; a module may import its own layer and the ones below
LAYERS = [
    {"hashing"},
    {"formats", "redact", "config", "untrusted"},
    {"bundle", "archive", "reader", "records", "store"},
    {"capture", "datasets"},
    {"replay"},
    {"run", "recover"},
    {"verify"},
    {"openness", "audit", "sealcheck"},
    {"diff", "reproduce", "lineage"},
    {"release"},
    {"integrations"},
    {"cli"},
]
OPTIONAL = {"wandb", "dvc"}  # optional tools: imported only under provenance/integrations


def _layer(module: str) -> int:
    top = module.split(".")[1] if module.startswith("provenance.") else module
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"provenance.{top} is in no layer: add it to LAYERS in {__file__}")


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
            if node.module == "provenance":
                out += [(f"provenance.{a.name}", node.lineno) for a in node.names]
    return out


def test_lower_layers_never_import_higher_ones() -> None:
    from provenance import _EXPORTS

    exported = {f"provenance.{n}" for n in [*_EXPORTS, "__version__"]}
    bad = []
    modules = [p for p in PKG.rglob("*.py") if p.parent != PKG or p.name != "__init__.py"]
    assert len(modules) > 15
    for path in modules:
        rel = path.relative_to(PKG.parent).with_suffix("").as_posix().replace("/", ".")
        own = _layer(rel)
        for name, line in _imports(path):
            if name in exported:
                continue  # re-exports of provenance/__init__ resolve to their own modules
            if name.startswith("provenance.") and _layer(name) > own:
                bad.append(f"{rel}:{line} imports {name}")
            if name.split(".")[0] in OPTIONAL and ".integrations" not in rel:
                bad.append(f"{rel}:{line} imports optional {name} outside provenance.integrations")
    assert not bad, "\n".join(bad)


def test_training_script_uses_only_the_public_api_and_capture() -> None:
    """The default training script reads like nanoGPT: provenance appears in a handful of lines."""
    train = (PKG.parent / "training" / "train.py").read_text().splitlines()
    assert sum(bool(re.search(r"(?<![\w.])run\.", line)) for line in train) <= 10
