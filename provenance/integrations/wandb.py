"""Weights & Biases: mirror a run's config and metrics to wandb; never required to train.

    run = start_run(..., callbacks=[WandbCallback(enabled=cfg.run.wandb, project=cfg.run.wandb_project)])

The training script always constructs the callback; it decides itself whether to act. It is
inactive when `enabled` is false, when WANDB_MODE=disabled, when wandb cannot be imported,
and on every rank but 0. Without WANDB_MODE and without an API key (WANDB_API_KEY or a
netrc entry) it runs offline instead of asking for a login.

What happens, in order:
  on_start   wandb.init(name=<run id>, config=<resolved config>, console off: the bundle
             already captures stdout and stderr); integrations/wandb.json records the
             wandb run's id, project, mode and URL (online).
  on_log     wandb.log(metrics, step=step); evaluations as eval/<name>.
  on_finish  (before the seal) the summary gets fullyopen/run_id and fullyopen/status;
             wandb.finish(); the wandb run folder (wandb/offline-run-* or run-*) is copied
             into the bundle under integrations/wandb/<folder>/ (text files redacted).
  on_end     (after the seal) the bundle's root digest is written to the wandb run's
             summary as fullyopen/root_digest: online through the public API; offline by
             resuming the run (same id) in a second offline folder next to the first, which
             `wandb sync` merges. That second folder is, necessarily, not in the bundle.
Any failure is contained by the run and recorded as an observer_failed event.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from pathlib import Path
from typing import Any

from provenance import formats
from provenance.integrations.layout import WANDB_DIR, WANDB_JSON
from provenance.run import Callback, Run

_TEXT_SUFFIXES = (".log", ".json", ".yaml", ".yml", ".txt", ".md", ".jsonl", ".patch", ".diff")


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbCallback(Callback):
    def __init__(self, enabled: bool = True, project: str = "fullyopen", entity: str | None = None,
                 tags: tuple[str, ...] = (), settings: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.project = project
        self.entity = entity
        self.tags = tuple(tags)
        self.settings = dict(settings or {})
        self.wb: Any = None
        self.mode: str | None = None
        self.info: dict[str, Any] = {}

    @property
    def reason_inactive(self) -> str | None:
        if not self.enabled:
            return "disabled in the config"
        if os.environ.get("WANDB_MODE", "").lower() == "disabled" or os.environ.get("WANDB_DISABLED", "").lower() in (
                "1", "true", "yes"):
            return "WANDB_MODE=disabled"
        if importlib.util.find_spec("wandb") is None:
            return "wandb is not installed"
        return None

    @property
    def active(self) -> bool:
        return self.wb is not None

    # --- hooks ------------------------------------------------------------------------------
    def on_start(self, run: Run) -> None:
        if self.reason_inactive is not None or run.rank != 0:
            return
        import wandb

        self.mode = os.environ.get("WANDB_MODE", "").lower() or ("online" if _has_api_key() else "offline")
        settings = wandb.Settings(console="off", silent=True, **self.settings)
        self.wb = wandb.init(project=self.project, entity=self.entity, name=run.run_id, config=run.config,
                             tags=list(self.tags) or None, mode=self.mode, settings=settings,  # type: ignore[arg-type]
                             notes=f"fullyopen run {run.run_id}")
        folder = Path(self.wb.dir).parent
        self.info = {"schema": formats.WANDB_SCHEMA, "id": self.wb.id, "project": self.wb.project,
                     "entity": getattr(self.wb, "entity", None) if self.mode == "online" else None,
                     "mode": self.mode, "url": self.wb.url if self.mode == "online" else None,
                     "run_folder": folder.name, "bundle_folder": None, "wandb_version": wandb.__version__,
                     "root_digest_in_summary": "fullyopen/root_digest (written after the seal)"}
        self._write_info(run)
        run.event("wandb_started", id=self.wb.id, mode=self.mode)

    def on_log(self, run: Run, step: int, metrics: dict[str, Any]) -> None:
        if self.wb is not None:
            self.wb.log(_numbers(metrics), step=step)

    def on_eval(self, run: Run, step: int, metrics: dict[str, Any]) -> None:
        if self.wb is not None:
            self.wb.log({f"eval/{k}": v for k, v in _numbers(metrics).items()}, step=step)

    def on_finish(self, run: Run) -> None:
        if self.wb is None:
            return
        folder = Path(self.wb.dir).parent
        self.wb.summary.update({"fullyopen/run_id": run.run_id, "fullyopen/status": run.status})
        self.wb.finish(exit_code=0 if run.status == "completed" else 1)
        import wandb

        wandb.teardown()  # the wandb service holds the run's stdout/stderr pipes: stop it before they close
        base = f"{WANDB_DIR}/{folder.name}"
        n = 0
        for p in sorted(folder.rglob("*")):
            if p.is_symlink() or not p.is_file():
                continue
            rel = f"{base}/{p.relative_to(folder).as_posix()}"
            if p.suffix in _TEXT_SUFFIXES:
                run.add_file(rel, p, redact=True)
            else:
                run.add_file(rel, p)
            n += 1
        self.info.update({"bundle_folder": base, "files_copied": n, "status": run.status})
        self._write_info(run)

    def on_end(self, run: Run, status: str, root_digest: str | None) -> None:
        if self.wb is None or root_digest is None:
            return
        wb_id = self.wb.id
        self.wb = None
        summary = {"fullyopen/root_digest": f"sha256:{root_digest}"}
        import wandb

        if self.mode == "online":
            path = "/".join(x for x in (self.info.get("entity"), self.info.get("project"), wb_id) if x)
            api_run = wandb.Api().run(path)
            api_run.summary.update(summary)
            return
        again = wandb.init(project=self.project, entity=self.entity, id=wb_id, resume="allow", mode=self.mode,
                           settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
        again.summary.update(summary)
        again.finish()

    def _write_info(self, run: Run) -> None:
        run.add_file(WANDB_JSON, obj={**self.info, "updated_at": formats.utc_now()})


def _numbers(metrics: dict[str, Any]) -> dict[str, float | int]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
