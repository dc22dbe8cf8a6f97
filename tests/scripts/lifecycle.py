"""A small script around start_run for lifecycle tests: python lifecycle.py MODE RUNS_DIR.

MODE: ok | fail | slow (runs until killed) | secrets | term-while-failing (a SIGTERM arrives while the
run's exit handler formats the failure, as when a launcher stops the survivors of a lost rank) |
term-while-sealing (a SIGTERM arrives while a completed run seals: an observer's on_finish sends it) |
term-then-str-raises (a SIGTERM arrives while the failure is formatted, and then its str() raises) |
term-then-seal-fails (a SIGTERM arrives while a completed run seals, and the seal itself raises)
"""

import ctypes
import os
import signal
import sys
import time

import torch

from provenance import Callback, start_run


class SigtermWhenFormatted(RuntimeError):
    sent = False

    def __str__(self) -> str:
        if not SigtermWhenFormatted.sent:  # once: the first formatting is inside the run's __exit__
            SigtermWhenFormatted.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return "failed, then stopped by the launcher"


class SigtermThenStrRaises(RuntimeError):
    def __str__(self) -> str:  # every formatting of it: a SIGTERM (noted while the run ends), then an error
        os.kill(os.getpid(), signal.SIGTERM)
        raise ValueError("str() of this exception raises")


class SigtermWhileSealing(Callback):
    def on_finish(self, run) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    def on_end(self, run, status, root_digest) -> None:
        print(f"on_end ran: {status} {root_digest}", flush=True)


mode, runs = sys.argv[1], sys.argv[2]
config = {"mode": mode, "token_in_config": os.environ.get("MY_API_TOKEN", "")}
callbacks = [SigtermWhileSealing()] if mode in ("term-while-sealing", "term-then-seal-fails") else []
with start_run(config, name=f"life-{mode}", runs_dir=runs, seed=1, threads=1, callbacks=callbacks) as run:
    print("python-level stdout", flush=True)
    os.write(1, b"fd-level stdout\n")
    libc = ctypes.CDLL(None)
    libc.printf(b"printf from C\n")
    libc.fflush(None)
    os.write(2, b"fd-level stderr\n")
    if mode == "secrets":
        for name in ("MY_API_TOKEN", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "DB_PASSWORD", "PIP_INDEX_URL"):
            print(f"{name}={os.environ[name]}", flush=True)
            print(f"{name}={os.environ[name]}", file=sys.stderr, flush=True)
        run.note(f"used token {os.environ['MY_API_TOKEN']}", category="incident")
    if mode == "term-then-seal-fails":
        def seal_fails() -> str:
            raise OSError("disk full while sealing")
        run.writer.seal = seal_fails
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters())
    for step in range(1, 10**9):
        run.record_batch(step, [step % 7, (step + 1) % 7])
        loss = model(torch.ones(1, 4)).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        run.log(step, loss=loss.item())
        if step % 5 == 0:
            run.checkpoint(step, model, opt, tokens_seen=step)
            print(f"checkpoint {step}", flush=True)
        if mode == "fail" and step == 3:
            raise RuntimeError("boom at step 3")
        if mode == "term-while-failing" and step == 3:
            raise SigtermWhenFormatted()
        if mode == "term-then-str-raises" and step == 3:
            raise SigtermThenStrRaises("not shown")
        if mode == "slow":
            time.sleep(0.02)
        elif step == 10:
            break
print("done", flush=True)
