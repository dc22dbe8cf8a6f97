"""The run: `start_run` and its lifecycle (core.py), composed of small parts.

    with start_run(config, name="tiny-lm", seed=1337, threads=2, datasets=[spec]) as run:
        for step in ...:
            ids = run.batch(step, sampler.batch)
            run.log(step, loss=loss, lr=lr)
            run.checkpoint(step, model, optimizer, tokens_seen=n)
        run.save_model(model, tokenizer)
"""

from __future__ import annotations

from provenance.run.callback import Callback, Component
from provenance.run.core import Run, start_run
from provenance.run.guard import RunInterrupted

__all__ = ["Callback", "Component", "Run", "RunInterrupted", "start_run"]
