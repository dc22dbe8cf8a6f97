"""The layering of provenance/: lower layers never import higher ones."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "provenance"

# lowest first; a module may import its own layer and the ones below
LAYERS = [
    {"hashing"},
    {"formats", "redact", "config", "untrusted"},
    {"bundle", "archive", "reader", "records", "store", "tensors"},
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


# --- the import graph of provenance/ ---------------------------------------------------------------


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("").as_posix().replace("/", ".")
    return rel.removesuffix(".__init__")


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING"
                                         or getattr(test, "attr", None) == "TYPE_CHECKING"):
            for child in node.body:
                out.update(id(x) for x in ast.walk(child))
    return out


@functools.cache
def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]], list[str]]:
    """(module-level import edges, all import edges, private-name imports across modules) of provenance/."""
    paths = {_module_name(p): p for p in PKG.rglob("*.py")}
    top_level: dict[str, set[str]] = {}
    every: dict[str, set[str]] = {}
    private: list[str] = []
    for mod, path in paths.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_nodes(tree)
        module_level = {id(n) for n in tree.body} | {id(x) for n in tree.body if isinstance(n, ast.Try | ast.If)
                                                     for x in ast.walk(n)}
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        aliases: dict[str, str] = {}
        top_level[mod], every[mod] = set(), set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[tuple[str, str | None]] = []  # (module imported, private name taken from it)
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in paths:
                        targets.append((a.name, None))
                        aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    if sub in paths:
                        targets.append((sub, None))
                        aliases[a.asname or a.name] = sub
                    elif base in paths and base != "provenance":  # provenance/__init__ re-exports lazily
                        is_private = a.name.startswith("_") and not a.name.startswith("__")
                        targets.append((base, a.name if is_private else None))
            for target, name in targets:
                if target == mod:
                    continue
                every[mod].add(target)
                if id(node) in module_level:
                    top_level[mod].add(target)
                if name is not None:
                    private.append(f"{mod}:{node.lineno} imports {name} from {target}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != mod:
                private.append(f"{mod}:{node.lineno} uses {node.value.id}.{node.attr} of {aliases[node.value.id]}")
    return top_level, every, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v, 0) == 0:
                visit(v)
            elif state[v] == 1:
                found.append([*stack[stack.index(v):], v])
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if state.get(m, 0) == 0:
            visit(m)
    return found


def test_no_import_cycle_in_provenance() -> None:
    """No cycle among the imports a module makes when it is imported (module level, outside TYPE_CHECKING).
    Imports deferred into a function are left out: they are how a lower layer reaches an optional part."""
    top_level, _, _ = _graph()
    cycles = _cycles(top_level)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_takes_another_modules_private_names() -> None:
    _, _, private = _graph()
    assert not private, "\n".join(private)


def test_schema_ids_live_only_in_formats() -> None:
    pattern = re.compile(r"""["']fullyopen\.[a-z0-9-]+/v\d+""")
    bad = []
    for path in [*PKG.rglob("*.py"), *(PKG.parent / "training").rglob("*.py")]:
        if path == PKG / "formats.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                bad.append(f"{path.relative_to(PKG.parent)}:{i}: {line.strip()}")
    assert not bad, "schema ids belong in provenance/formats.py:\n" + "\n".join(bad)


def test_every_third_party_import_is_declared() -> None:
    """Each distribution that provenance/ or training/ imports directly is declared in pyproject.toml
    (a dependency, or an extra for optional features): nothing works only because another package
    happened to pull it in."""
    import importlib.metadata
    import sys
    import tomllib

    project = tomllib.loads((PKG.parent / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    declared = {norm(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in reqs}
    provides = importlib.metadata.packages_distributions()
    tops: set[str] = set()
    for root in ("provenance", "training"):
        for path in (PKG.parent / root).rglob("*.py"):
            tops |= {name.split(".")[0] for name, _ in _imports(path)}
    third = sorted(t for t in tops if t not in sys.stdlib_module_names and t not in ("provenance", "training"))
    assert len(third) > 10
    missing = [f"{t} ({', '.join(provides.get(t, ['not installed']))})" for t in third
               if not any(norm(d) in declared for d in provides.get(t, [t]))]
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


# --- one writer per shared bundle file ----------------------------------------------------------------

# the files several parts of the package update, and their one writer (provenance/bundle.py:
# write_run_info, write_checkpoint_index, append_note, append_reseal, write_lineage)
SHARED_FILES = {"RUN_JSON": "run.json", "NOTES": "notes.jsonl", "CHECKPOINT_INDEX": "checkpoints/index.json",
                "RESEALS": "reseals.jsonl", "LINEAGE_JSON": "lineage.json", "METRICS": "logs/metrics.jsonl",
                "REPRO_SUMMARY": "reproduction/summary.json", "REPRO_STEPS": "reproduction/steps.jsonl",
                "REPRO_REPORT": "reproduction/report.json",
                # their older names (replay.SUMMARY, replay.STEPS_LOG, reproduce.verdict.REPORT)
                "SUMMARY": "reproduction/summary.json", "STEPS_LOG": "reproduction/steps.jsonl",
                "REPORT": "reproduction/report.json"}
# the order files' bytes (order/rank<R>.json, .ids.u64, .steps.bin): whoever builds them writes them
ORDER_BUILDERS = {("formats", "order_header"), ("ORDER_STEP_RECORD", "pack")}
ONE_WRITER = "provenance.bundle"
_WRITE_CALLS = {"write_json", "write_bytes", "write_text", "atomic_write_json", "atomic_write_bytes", "append_line",
                "copy_file", "log", "raw_log", "copyfile", "copy2", "replace", "rename"}


def _names_shared_file(node: ast.AST) -> str | None:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr in SHARED_FILES:
            return SHARED_FILES[sub.attr]
        if isinstance(sub, ast.Name) and sub.id in SHARED_FILES:  # from provenance.formats import NOTES
            return SHARED_FILES[sub.id]
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value in SHARED_FILES.values():
            return sub.value
    return None


def _writes_of_shared_files(root: Path) -> list[str]:
    """Every call in provenance/ (the one writer module left out) that writes one of SHARED_FILES: a write
    function given the file's name, or an open() of it for writing."""
    found: list[tuple[str, int, str]] = []
    for path in sorted(root.rglob("*.py")):
        mod = _module_name(path) if root == PKG else path.relative_to(root).as_posix()
        if mod == ONE_WRITER:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            args = [*node.args, *(k.value for k in node.keywords)]
            if fn == "open":
                modes = [a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                flags = {s.attr for a in args for s in ast.walk(a) if isinstance(s, ast.Attribute)}
                if not (any(set(m) & set("wax+") for m in modes) or flags & {"O_WRONLY", "O_RDWR", "O_APPEND"}):
                    continue
            elif fn not in _WRITE_CALLS:
                continue
            name = next((n for n in map(_names_shared_file, args) if n), None)
            if name is not None:
                found.append((mod, node.lineno, f"{mod}:{node.lineno} writes {name} ({fn})"))
    return [x for _, _, x in sorted(found)]


def _builds_order_files(root: Path) -> list[str]:
    """Every call outside the one writer module that builds an order header or a steps.bin record."""
    found = []
    for path in sorted(root.rglob("*.py")):
        mod = _module_name(path) if root == PKG else path.relative_to(root).as_posix()
        if mod == ONE_WRITER:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
                if (name, node.func.attr) in ORDER_BUILDERS:
                    found.append(f"{mod}:{node.lineno} builds order files ({name}.{node.func.attr})")
    return found


def test_each_shared_bundle_file_has_one_writer() -> None:
    bad = _writes_of_shared_files(PKG) + _builds_order_files(PKG)
    assert not bad, f"write these through {ONE_WRITER} (its one writer):\n" + "\n".join(bad)


def test_the_writer_check_finds_a_second_writer(tmp_path: Path) -> None:
    (tmp_path / "other.py").write_text(
        "from provenance import formats\n"
        "def f(root, w, rec):\n"
        "    formats.atomic_write_json(root / formats.RUN_JSON, rec)\n"
        "    w.write_json(formats.CHECKPOINT_INDEX, rec)\n"
        "    formats.append_line(w.path(formats.NOTES), rec)\n"
        "    open(root / 'reseals.jsonl', 'ab').write(rec)\n"
        "    open(root / formats.NOTES, 'rb').read()\n"
        "    from provenance.formats import RUN_JSON\n"
        "    w.write_bytes(RUN_JSON, rec)\n"
        "    w.log(formats.METRICS).write_line(rec)\n"
        "    formats.atomic_write_json(root / formats.REPRO_SUMMARY, rec)\n"
        "    w.write_json(formats.order_header(0, 1, {}, ''), rec)\n"
        "    w.raw_log('x').write(formats.ORDER_STEP_RECORD.pack(1, 2, b''))\n")
    assert [x.split(" writes ")[1] for x in _writes_of_shared_files(tmp_path)] == [
        "run.json (atomic_write_json)", "checkpoints/index.json (write_json)", "notes.jsonl (append_line)",
        "reseals.jsonl (open)", "run.json (write_bytes)", "logs/metrics.jsonl (log)",
        "reproduction/summary.json (atomic_write_json)"]
    assert [x.split(" builds ")[1] for x in _builds_order_files(tmp_path)] == [
        "order files (formats.order_header)", "order files (ORDER_STEP_RECORD.pack)"]


# the reproduction reads bundles through reader.Bundle (bounded, typed); the raw bounded readers of formats are
# left only for files that are not a bundle's (docs/architecture.md "Reads outside a whole-bundle reader.Bundle")
RAW_READERS = {"read_json", "read_jsonl"}
RAW_READS_ALLOWED = {"provenance/reproduce/segments.py"}  # segments-report.json: a file of the work folder


def _raw_reads(root: Path, under: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted(p for d in under for p in (root / d).rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        if rel in RAW_READS_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            f = node.func if isinstance(node, ast.Call) else None
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in RAW_READERS:
                found.append(f"{rel}:{node.lineno} reads with {name}")
    return found


def test_the_reproduction_reads_bundles_through_the_reader() -> None:
    bad = _raw_reads(PKG, ("reproduce",))
    assert not bad, "read bundle files through provenance.reader.Bundle (or Bundle.of_files):\n" + "\n".join(bad)


def test_the_raw_read_check_finds_a_raw_read(tmp_path: Path) -> None:
    (tmp_path / "reproduce").mkdir()
    (tmp_path / "reproduce" / "chain.py").write_text(
        "from provenance import formats\n"
        "from provenance.formats import read_jsonl\n"
        "def f(root):\n"
        "    return formats.read_json(root / formats.RUN_JSON), list(read_jsonl(root / formats.METRICS))\n")
    assert [x.split(" reads ")[1] for x in _raw_reads(tmp_path, ("reproduce",))] == ["with read_json",
                                                                                    "with read_jsonl"]
