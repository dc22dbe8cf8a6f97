"""Audit checks for what the integrations write: wrapped commands (`prov run`), their outputs, wandb.

Listed as extension checks in pyproject.toml (entry points `fullyopen.audit_checks`), so
`audit()` and `prov audit` both run them; nothing registers itself on import. The
`metrics`, `model` and `checkpoints` entries replace the built-ins of those names with
versions that also understand wrapped and captured commands. A wrapped command does not log steps or
save a model in the bundle's own layout: for a bundle with command.json, the `metrics`
and `model` checks skip instead of failing when those files are absent (and check them
as usual when present); the `command` check verifies command.json against run.json and
outputs/index.json against the files, and re-recognises every model file by its bytes.
"""

from __future__ import annotations

from typing import Any

from provenance import audit, formats
from provenance.audit.checks_training import check_checkpoints, check_metrics, check_model
from provenance.integrations.captured import captured_checkpoints
from provenance.integrations.layout import COMMAND_JSON, OUTPUTS_INDEX, OUTPUTS_SCHEMA, WANDB_JSON
from provenance.integrations.outputs import MODEL_ROLES, sniff
from provenance.records import CommandRecord


def _is_wrapped(view: audit.BundleView) -> bool:
    return view.has(COMMAND_JSON)


def _tolerate_wrapped(func: audit.CheckFunc, needs: str, what: str) -> audit.CheckFunc:
    def check(view: audit.BundleView, out: audit.CheckResult) -> None:
        if _is_wrapped(view) and not (view.has(needs) or view.under(needs)):
            raise audit.SkipCheck(f"a wrapped command (command.json): {what} are the command's own")
        func(view, out)

    check.__doc__ = func.__doc__
    return check


def check_command(view: audit.BundleView, out: audit.CheckResult) -> None:
    if not _is_wrapped(view):
        raise audit.SkipCheck("not a wrapped command")
    rec = view.record(CommandRecord, COMMAND_JSON)  # typed and strict: schema, command, exit status, outputs
    info = view.run_info
    cfg = view.try_json(formats.CONFIG_JSON)
    if isinstance(cfg, dict) and cfg.get("argv") != rec.command:
        out.error("the command differs from config.json's argv", file=COMMAND_JSON)
    if rec.exit_status is not None and rec.exit_status != info.get("exit_status"):
        out.error("the command's exit status differs from run.json's", file=COMMAND_JSON,
                  expected=repr(info.get("exit_status")), actual=repr(rec.exit_status))
    status = info.get("status")
    if status == "completed" and rec.returncode != 0:
        out.error("run.json says completed but the command did not exit 0", file=COMMAND_JSON)
    n_files = n_models = 0
    if view.has(OUTPUTS_INDEX):
        index = view.json(OUTPUTS_INDEX)
        if not isinstance(index, dict) or index.get("schema") != OUTPUTS_SCHEMA:
            raise audit.BundleFileError(OUTPUTS_INDEX, f"not a {OUTPUTS_SCHEMA} index")
        for entry in index.get("outputs") or []:
            for f in entry.get("files") or []:
                n_files += 1
                n_models += f.get("role") in MODEL_ROLES
                _check_output_file(view, out, f)
    elif rec.outputs:
        out.error("command.json names outputs but outputs/index.json is missing", file=COMMAND_JSON)
    out.summary = (f"exit {rec.exit_status}" + (f" ({rec.signal})" if rec.signal else "")
                   + f", {n_files} output files, {n_models} model files")


def _check_output_file(view: audit.BundleView, out: audit.CheckResult, f: dict[str, Any]) -> None:
    rel = f.get("bundle_path")
    if rel is None:  # hashed only, not copied
        return
    path = view.path(rel, OUTPUTS_INDEX)
    actual = view.digest(rel)
    if actual is not None and actual != f.get("sha256"):
        out.error(f"{rel}: digest differs from the outputs index", file=OUTPUTS_INDEX,
                  expected=f"sha256:{f.get('sha256')}", actual=f"sha256:{actual}")
    fmt = sniff(path)
    recorded = (f.get("format") or {}).get("format")
    if (fmt or {}).get("format") != recorded:
        out.error(f"{rel}: recorded as {recorded!r} but its bytes are {(fmt or {}).get('format')!r}",
                  file=OUTPUTS_INDEX)


def check_wandb(view: audit.BundleView, out: audit.CheckResult) -> None:
    if not view.has(WANDB_JSON):
        raise audit.SkipCheck("no wandb run")
    rec = view.json(WANDB_JSON)
    if not isinstance(rec, dict):
        raise audit.BundleFileError(WANDB_JSON, "not a JSON object")
    folder = rec.get("bundle_folder")
    if folder and not view.under(folder):
        out.error(f"the wandb run folder {folder}/ is missing", file=WANDB_JSON)
    out.summary = f"wandb run {rec.get('id')} ({rec.get('mode')})" + (f", folder {folder}/" if folder else "")


METRICS = audit.Check("metrics", "metrics and evaluations",
                      _tolerate_wrapped(check_metrics, formats.METRICS, "step metrics"))
MODEL = audit.Check("model", "final model", _tolerate_wrapped(check_model, formats.MODEL_DIR, "models"))
CHECKPOINTS = audit.Check("checkpoints", "checkpoint index", captured_checkpoints(check_checkpoints))
COMMAND = audit.Check("command", "wrapped command and its outputs", check_command)
WANDB = audit.Check("wandb", "wandb run", check_wandb)
