"""Fixture: a loop that fails once at step CRASH_AT, for `torchrun --max-restarts 1` to relaunch.

    torchrun --max-restarts=1 --standalone --nproc_per_node=1 tests/scripts/restart_once.py RUNS STEPS CRASH_AT
A checkpoint every 2 steps. The first attempt (TORCHELASTIC_RESTART_COUNT=0) raises at step CRASH_AT;
the relaunched one continues from run.resume_point(), the previous attempt's latest valid checkpoint,
and saves the final model. CRASH_AT=0 (or no torchrun): never fails (the uninterrupted run).
FIXTURE_CRASH=kill: the first attempt SIGKILLs itself instead (nothing sealed it).
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from provenance import start_run


def main() -> int:
    runs, steps, crash_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # the first attempt fails (a reproduction, under PROV_REPLAY, never: the failure stands for a lost node)
    first = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and not os.environ.get("PROV_REPLAY")
    with start_run({"steps": steps}, name="restart-once", runs_dir=runs, seed=7, threads=1,
                   argv=[sys.executable, *sys.argv]) as run:
        model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=0.05, foreach=False)
        start = 0
        resume = run.resume_point()
        if resume is not None:
            start, _ = run.restore(resume, model, opt)
        for step in range(start + 1, steps + 1):
            ids = run.batch(step, lambda s: [(s * 3 + i) % 50 for i in range(4)])
            x = torch.stack([torch.cos(torch.arange(5, dtype=torch.float32) * (i + 1)) for i in ids])
            x = x + 0.05 * torch.randn_like(x)  # the RNG stream is part of the resumable state
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            run.log(step, loss=loss.item())
            if step % 2 == 0:
                run.checkpoint(step, model, opt, tokens_seen=step * 4)
            if first and step == crash_at:
                if os.environ.get("FIXTURE_CRASH") == "kill":  # no seal: the relaunch seals it
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"simulated failure at step {step}")
        run.save_model(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
