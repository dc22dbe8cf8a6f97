"""A progress bar for a run on a terminal: step, loss, tokens/s and ETA (tqdm).

Off when stdout is not a terminal (a pipe, a file, CI) and on ranks other than 0. The bar is
drawn on the terminal itself (run.terminal(): the original stdout, not the run's captured one),
so that logs/stdout.log never holds its carriage-return redraws.
"""

from __future__ import annotations

import os
from typing import IO, TYPE_CHECKING, Any

from provenance.run.callback import Callback

if TYPE_CHECKING:
    from provenance.run.core import Run


class ProgressBar(Callback):
    def __init__(self, total_steps: int, *, enabled: bool = True, tokens_key: str = "tokens") -> None:
        self.total = total_steps
        self.enabled = enabled
        self.tokens_key = tokens_key
        self.bar: Any = None
        self._stream: IO[str] | None = None
        self._val: float | None = None

    def on_start(self, run: Run) -> None:
        if not self.enabled or run.rank != 0:
            return
        self._stream = run.terminal(1)  # off unless stdout is a terminal
        if self._stream is None:
            return
        from tqdm import tqdm

        try:
            cols = os.get_terminal_size(self._stream.fileno()).columns
        except OSError:
            cols = 0
        self.bar = tqdm(total=self.total, file=self._stream, unit="step", leave=True, desc=run.name[:24],
                        dynamic_ncols=cols > 0, ncols=None if cols > 0 else 100)  # a new pty has 0 columns

    def on_log(self, run: Run, step: int, metrics: dict[str, Any]) -> None:
        if self.bar is None:
            return
        post: dict[str, str] = {}
        if isinstance(metrics.get("loss"), float):
            post["loss"] = f"{metrics['loss']:.4f}"
        tokens, dt = metrics.get(self.tokens_key), metrics.get("step_time")
        if isinstance(tokens, int | float) and isinstance(dt, float) and dt > 0:
            post["tok/s"] = f"{tokens / dt:,.0f}"
        if self._val is not None:
            post["val_loss"] = f"{self._val:.4f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(max(0, step - self.bar.n))

    def on_eval(self, run: Run, step: int, metrics: dict[str, Any]) -> None:
        if isinstance(metrics.get("val_loss"), float):
            self._val = metrics["val_loss"]

    def on_finish(self, run: Run) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None
