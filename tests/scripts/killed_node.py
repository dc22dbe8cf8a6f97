"""Fixture: a plain data-parallel loop on gloo under a multi-node torchrun, for the killed-node tests.

    torchrun --nnodes=2 --nproc_per_node=P --rdzv-backend=c10d ... tests/scripts/killed_node.py RUNS STEPS MARKERS
Each step all-reduces the gradients of a tiny model (every rank records its batch, rank 0 the mean loss).
FIXTURE_LOSE_NODE=N:K: at step K every rank writes MARKERS/rank<R>.json (rank, node, its pid, its
launcher's pid), and the ranks of node N stop there (they sleep) for the test to SIGKILL them and their
launcher, as when a node is lost; the other ranks go on into step K+1's all-reduce.
FIXTURE_RAISE_RANK0_AT=K: rank 0 raises at step K (the others go on into the next collective).
FIXTURE_PG_TIMEOUT_S: the process group's timeout (a lost peer that does not close its connections).
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from provenance import start_run


def main() -> int:
    runs, steps, markers = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    lose = os.environ.get("FIXTURE_LOSE_NODE")
    lose_node, lose_at = (int(x) for x in lose.split(":")) if lose else (-1, -1)
    timeout = timedelta(seconds=float(os.environ.get("FIXTURE_PG_TIMEOUT_S", "60")))
    dist.init_process_group("gloo", timeout=timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    node = int(os.environ["GROUP_RANK"])
    with start_run({"steps": steps}, name="killed-node", runs_dir=runs, seed=5, threads=1,
                   argv=[sys.executable, *sys.argv]) as run:
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(1, steps + 1):
            ids = run.batch(step, lambda s: [s * world + rank])
            x = torch.tensor([[float(i % 7), 1.0, -1.0, 0.5] for i in ids])
            loss = model(x).pow(2).mean()
            loss.backward()
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad.div_(world)
            stat = loss.detach().clone()
            dist.all_reduce(stat)
            opt.step()
            opt.zero_grad()
            run.log(step, loss=stat.item() / world)
            if rank == 0 and os.environ.get("FIXTURE_RAISE_RANK0_AT") == str(step):
                raise ValueError(f"rank 0 fails alone at step {step}")  # the other ranks wait in a collective
            if step == lose_at:
                markers.mkdir(parents=True, exist_ok=True)
                tmp = markers / f".rank{rank}.tmp"
                tmp.write_text(json.dumps({"rank": rank, "node": node, "pid": os.getpid(),
                                           "launcher_pid": os.getppid()}))
                os.replace(tmp, markers / f"rank{rank}.json")
                while node == lose_node:  # this node is lost here: the test kills it
                    time.sleep(1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
