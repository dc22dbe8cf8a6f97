"""A tiny start_run loop whose config holds non-finite numbers (clip=inf: no gradient clipping; a NaN)."""
import math
import sys

import torch
from torch import nn

from provenance import start_run

config = {"lr": 0.1, "clip": float("inf"), "best_val": float("inf"), "floor": -math.inf, "unset": math.nan,
          "name": "NaN", "steps": 4}
with start_run(config, name="nonfinite", seed=0, threads=1, license="Apache-2.0") as run:
    assert math.isinf(config["clip"]) and math.isnan(config["unset"]) and config["name"] == "NaN"
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    for step in range(1, config["steps"] + 1):
        run.record_batch(step, list(range(8)))
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config["clip"])
        opt.step()
        run.log(step, loss=loss.item())
    run.checkpoint(config["steps"], model, opt, extra={"best_val": config["best_val"]})
    run.save_model(model, init_args={"in_features": 4, "out_features": 1, "clip": config["clip"]})
print(f"run: {run.root}", file=sys.stderr)
