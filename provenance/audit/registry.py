"""The explicit list of the audit's consistency checks.

    audit(path)                                  # checks=None: default_checks()
    audit(path, checks=builtin_checks())         # only the built-ins
    audit(path, checks=[*default_checks(), Check("mine", "my claim", my_check)])

default_checks() is the built-ins, then the extension checks that pyproject.toml declares in
the entry-point group `fullyopen.audit_checks` (and any other installed distribution declares
in it): `name = "module:attribute"`, where the attribute is a Check or a plain function
`func(view, result)` (its title is its docstring's first line). An extension check named like
a built-in replaces it in place (integrations/checks.py makes `metrics`, `model` and
`checkpoints` understand wrapped and captured commands). Nothing registers itself on import,
so `audit()` from Python and `prov audit` run the same checks.

A check reads the bundle through `view` (provenance.audit.view.BundleView) and reports with
`result.error(...)` / `result.warn(...)`, sets `result.summary`, and raises SkipCheck("why")
when it does not apply. A BundleFileError it lets escape becomes an error naming the file;
any other exception fails the check (never a silent pass).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provenance.audit import checks_code, checks_data, checks_run, checks_training
from provenance.audit.checks_signature import check_signature
from provenance.audit.results import CheckResult, SkipCheck
from provenance.audit.segments import check_segments
from provenance.audit.view import BundleFileError, BundleView

ENTRY_POINT_GROUP = "fullyopen.audit_checks"

CheckFunc = Callable[[BundleView, CheckResult], None]


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    func: CheckFunc

    def __call__(self, view: BundleView, out: CheckResult) -> None:
        self.func(view, out)


BUILTIN_CHECKS: tuple[Check, ...] = (
    Check("run", "run status and identity", checks_run.check_run),
    Check("config", "config digest and recorded command", checks_run.check_config),
    Check("code", "code snapshot", checks_code.check_code),
    Check("data", "data manifests", checks_data.check_data),
    Check("order", "data order", checks_data.check_order),
    Check("metrics", "metrics and evaluations", checks_training.check_metrics),
    Check("checkpoints", "checkpoint index", checks_training.check_checkpoints),
    Check("model", "final model", checks_training.check_model),
    Check("notes", "decision notes", checks_run.check_notes),
    Check("logs", "event and output logs", checks_run.check_logs),
    Check("signature", "release signature", check_signature),
    Check("segments", "restart segments back to step 0", check_segments),
)


def builtin_checks() -> list[Check]:
    return list(BUILTIN_CHECKS)


def _pyproject() -> Path:
    return Path(__file__).resolve().parents[2] / "pyproject.toml"


@functools.cache
def declared_extensions() -> tuple[tuple[str, str], ...]:
    """(name, "module:attribute") of every extension check, in declaration order.

    This package's own list is read from pyproject.toml when it runs from a source checkout
    (an editable install's metadata can predate the file), else from the installed entry
    points; other distributions' entry points in the group follow, sorted by name."""
    out: list[tuple[str, str]] = []
    own_from_source = False
    pp = _pyproject()
    if pp.is_file():
        project = tomllib.loads(pp.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == "fullyopen":
            out += list((project.get("entry-points", {}).get(ENTRY_POINT_GROUP) or {}).items())
            own_from_source = True
    others = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None)
        if own_from_source and dist == "fullyopen":
            continue
        others.append((ep.name, ep.value))
    return tuple(out + sorted(others))


def _load(name: str, value: str) -> Check:
    mod_name, _, attr = value.partition(":")
    try:
        obj: object = importlib.import_module(mod_name.strip())
        for part in attr.strip().split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # an extension that cannot load fails its check; it never passes silently
        message = f"extension check {name} ({value}) cannot be loaded: {type(exc).__name__}: {exc}"

        def broken(view: BundleView, out: CheckResult, _m: str = message) -> None:
            out.error(_m)

        return Check(name, "extension check (not loaded)", broken)
    if isinstance(obj, Check):
        return obj if obj.name == name else Check(name, obj.title, obj.func)
    if callable(obj):
        doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
        title = getattr(obj, "title", None) or (doc[0].rstrip(".") if doc else name)
        return Check(name, str(title), obj)  # type: ignore[arg-type]
    raise TypeError(f"extension check {name} ({value}) is neither a Check nor a function")


def extension_checks() -> list[Check]:
    return [_load(name, value) for name, value in declared_extensions()]


def default_checks() -> list[Check]:
    """The built-ins, then the declared extensions (one named like a built-in replaces it in place)."""
    checks = builtin_checks()
    index = {c.name: i for i, c in enumerate(checks)}
    seen: set[str] = set()
    for ext in extension_checks():
        if ext.name in seen:
            raise ValueError(f"two extension checks are named {ext.name!r} (entry points {ENTRY_POINT_GROUP})")
        seen.add(ext.name)
        if ext.name in index:
            checks[index[ext.name]] = ext
        else:
            index[ext.name] = len(checks)
            checks.append(ext)
    return checks


def run_checks(view: BundleView, checks: list[Check] | None = None) -> list[CheckResult]:
    results = []
    for chk in checks if checks is not None else default_checks():
        res = CheckResult(chk.name, chk.title, limit=getattr(view.limits, "max_findings", 1000))
        try:
            chk.func(view, res)
        except SkipCheck as exc:
            res.status, res.summary = "skip", str(exc)
        except BundleFileError as exc:
            res.error(exc.message, file=exc.rel)
        except Exception as exc:  # a bug or an input nobody foresaw: fail loudly, never pass silently
            res.error(f"the check stopped unexpectedly: {type(exc).__name__}: {exc}")
        res.settle()
        results.append(res)
    return results
