"""The plan of a reproduction: the original's integrity, what it recorded, which steps to check, and the
config overrides asked for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provenance import diff as pdiff
from provenance import formats, reader
from provenance.reproduce.options import PATH_KEYS, Options, Refused, Say, printable


def audit_original(path: Path, say: Say) -> tuple[str, Any]:
    """Audit `path`; refuse on an integrity failure. Returns (root hex digest, report)."""
    from provenance.audit import AuditRefused, audit

    try:
        report = audit(path)
    except AuditRefused as exc:
        raise Refused(f"the audit refused the bundle: {exc}") from None
    i = report.integrity
    if not i.ok:
        problems = [f"missing: {d.name} (expected sha256:{d.expected})" for d in i.missing]
        problems += [f"not covered by the seal: {d.name} (sha256:{d.actual})" for d in i.extra]
        problems += [f"changed: {d.name} (expected sha256:{d.expected}, found sha256:{d.actual})" for d in i.changed]
        problems += [f"{f.file or ''}: {f.message}" for f in i.findings if f.level == "error"]
        if not i.sealed:
            problems.insert(0, "the bundle is not sealed (manifest.json is missing)")
        raise Refused(f"{path}: the bundle fails its integrity check: " + "; ".join(problems[:10])
                      + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""), failures=problems)
    say(f"audit: integrity ok ({i.files} files, root sha256:{i.root_manifest})")
    # what would be executed must be what was recorded: a config or recorded command that does not match its
    # digest, or a code snapshot that is not a safe archive, refuses before anything is made or run
    unsafe = [printable(f"{c.name}: {e.message}" + (f" ({e.file})" if e.file else ""))
              for c in report.checks if c.name in _EXECUTED for e in c.errors]
    if unsafe:
        raise Refused(f"{path}: what a reproduction would execute fails the audit; not running it: "
                      + "; ".join(unsafe[:5]), failures=unsafe)
    for w in audit_failures(report)[:10]:
        say(f"audit: consistency fails: {w} (no bitwise claim for a bundle that fails its audit)")
    return i.root_manifest or "", report


_EXECUTED = frozenset({"config", "code", "command"})  # the audit checks of what a reproduction runs


def audit_failures(report: Any) -> list[str]:
    """The consistency errors of an audit report, one line each."""
    return [printable(f"{c.name}: " + (f"{e.file}: " if e.file and e.file not in e.message else "") + e.message)
            for c in report.checks for e in c.errors]


# --- reading the original ------------------------------------------------------------------------


@dataclass
class Original:
    root: Path
    root_digest: str
    run: dict[str, Any]
    config: dict[str, Any]
    argv: list[str]
    code: dict[str, Any]
    env: dict[str, Any]
    manifests: dict[str, dict[str, Any]]
    checkpoints: dict[int, str]
    metric_steps: list[int]


def read_original(root: Path, digest: str) -> Original:
    """What the reproduction needs of the original bundle, read through reader.Bundle (bounded)."""
    try:
        bundle = reader.Bundle(root)
    except reader.Refused as exc:
        raise Refused(str(exc)) from None
    with bundle:
        return _read_original(bundle, root, digest)


def _read_original(b: reader.Bundle, root: Path, digest: str) -> Original:
    def rj(rel: str, required: bool = True) -> Any:
        if not b.has(rel):
            if required:
                raise Refused(f"{root}: {rel} is missing; this bundle cannot be reproduced")
            return {}
        try:
            val = b.json(rel)
        except reader.BundleFileError as exc:
            raise Refused(f"{root}: {exc}") from None
        if not isinstance(val, dict):
            raise Refused(f"{root}: {rel} is not a JSON object")
        return val

    if not b.has(formats.CONFIG_JSON):
        raise Refused(f"{root}: {formats.CONFIG_JSON} is missing; this bundle cannot be reproduced")
    try:
        cfg = b.config_record()  # typed and strict: the resolved config, argv a list of strings
        index = b.checkpoint_index()
        metrics = b.records(formats.METRICS)  # a torn last line (a crash mid-append) is skipped
        manifests: dict[str, dict[str, Any]] = {}
        for folder in sorted(r.split("/")[1] for r in b.files if r.startswith(formats.DATA_DIR + "/")
                             and r.count("/") == 2 and r.endswith("/manifest.json")):
            manifests[b.data_manifest(folder).name] = b.json(formats.data_manifest_path(folder))
    except reader.BundleFileError as exc:
        raise Refused(f"{root}: {exc}") from None
    argv = cfg.argv
    if argv is None or len(argv) < 2:
        raise Refused(f"{root}: {formats.CONFIG_JSON} does not record the command line (argv)")
    if not b.has(formats.CODE_SNAPSHOT):
        raise Refused(f"{root}: {formats.CODE_SNAPSHOT} is missing: the code that ran is not in the bundle")
    ckpts = {e.step: e.sha256 for e in index.checkpoints} if index is not None else {}
    steps = [int(r["step"]) for r in metrics if isinstance(r.get("step"), int)]
    return Original(root=root, root_digest=digest, run=rj(formats.RUN_JSON), config=cfg.values(), argv=argv,
                    code=rj(formats.CODE_JSON), env=rj(formats.ENV_JSON, required=False),
                    manifests=manifests, checkpoints=ckpts, metric_steps=steps)


# --- the plan: steps, config overrides ----------------------------------------------------------


def parse_sets(sets: list[str], config: dict[str, Any]) -> dict[str, Any]:
    from provenance.config import ConfigError, parse_override

    flat = pdiff.flatten(config)
    out: dict[str, Any] = {}
    for text in sets:
        try:
            key, value = parse_override(text)
        except ConfigError as exc:
            raise Refused(f"--set {text!r}: {exc}") from None
        parts = key.split(".")
        known = key in flat or any(".".join(parts[:i]) in flat and isinstance(flat[".".join(parts[:i])], dict)
                                   for i in range(1, len(parts)))
        if not known:
            raise Refused(f"--set {text!r}: the recorded config has no key {key!r}")
        if key in PATH_KEYS:
            raise Refused(f"--set {text!r}: {key} is set by prov reproduce itself")
        out[key] = value
    return out


@dataclass(frozen=True)
class Plan:
    first_step: int  # the first step checked
    stop: int | None  # stop after this step (None: run to the end)
    expected_last: int  # the last step expected


def plan_steps(orig: Original, opts: Options) -> Plan:
    """Which steps the reproduction checks."""
    if not orig.metric_steps:
        raise Refused(f"{orig.root}: the original logged no steps; there is nothing to compare")
    last = max(orig.metric_steps)
    start = min(orig.metric_steps) - 1  # 0, or the step a resumed original restarted from
    if opts.from_step is not None:
        k = opts.from_step
        if k not in orig.checkpoints:
            have = ", ".join(str(s) for s in sorted(orig.checkpoints)) or "none"
            raise Refused(f"--from-step {k}: the original saved no checkpoint at step {k} (checkpoints: {have})")
        if not (orig.root / formats.checkpoint_name(k)).is_file() and \
                not (orig.root / formats.dcp_checkpoint_dir(k)).is_dir():  # full-state file or DCP folder
            raise Refused(f"--from-step {k}: {formats.checkpoint_name(k)} is missing from the bundle")
        if k >= last:
            raise Refused(f"--from-step {k}: the original's last step is {last}; there is nothing after it to check")
        start = k
    stop: int | None = None
    if opts.steps is not None:
        if opts.steps < 1:
            raise Refused(f"--steps {opts.steps}: must be at least 1")
        stop = min(start + opts.steps, last)
    elif orig.run.get("status") != "completed":
        stop = last  # the original ended early: check what it recorded
    if stop is not None and stop >= last and orig.run.get("status") == "completed":
        stop = None
    expected_last = last if stop is None else stop
    return Plan(start + 1, stop, expected_last)


