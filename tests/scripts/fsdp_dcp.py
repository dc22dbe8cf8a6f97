"""Fixture: a tiny model sharded with FSDP2 (fully_shard) on gloo, checkpointed with DCP through run.checkpoint.

    torchrun --standalone --nproc_per_node=2 tests/scripts/fsdp_dcp.py RUNS STEPS [RESUME_FOLDER]
Every step logs the exact loss; a checkpoint at every even step. With RESUME_FOLDER the run restores
from that sharded checkpoint first and continues. FIXTURE_KILL_RANK1_AT=N: rank 1 SIGKILLs itself as the
checkpoint of step N begins (rank 0 is then inside the collective DCP save).
FIXTURE_KILL_RANK1_AFTER_SAVE=N: rank 1 SIGKILLs itself once DCP has written every file of step N
(its shards, rank 0's .metadata) but before it hashed them and left its shard record: the index is
never written for that step.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from provenance import start_run


def kill_rank1_after_save(step: int) -> None:
    """Rank 1 dies between DCP's save of `step` and its shard record (the recorder's save call, wrapped)."""
    import provenance.run.recorder as recorder

    save = recorder.save_sharded

    def save_then_die(folder: Any, model: Any, optimizer: Any, rank: int) -> dict[str, Any]:
        facts = save(folder, model, optimizer, rank)
        if rank == 1 and os.path.basename(str(folder)) == f"step-{step:08d}":
            os.kill(os.getpid(), signal.SIGKILL)
        return facts

    recorder.save_sharded = save_then_die  # type: ignore[assignment]


def main() -> int:
    runs, steps = sys.argv[1], int(sys.argv[2])
    if os.environ.get("FIXTURE_KILL_RANK1_AFTER_SAVE"):
        kill_rank1_after_save(int(os.environ["FIXTURE_KILL_RANK1_AFTER_SAVE"]))
    resume = sys.argv[3] if len(sys.argv) > 3 else None
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    with start_run({"steps": steps, "resume": resume}, name="fsdp-dcp", runs_dir=runs, seed=3, threads=1,
                   argv=[sys.executable, *sys.argv]) as run:
        model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
        fully_shard(model[0])
        fully_shard(model[2])
        fully_shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=0.05, foreach=False)
        start = 0
        if resume:
            start, _ = run.restore(resume, model, opt)
        for step in range(start + 1, steps + 1):
            ids = run.batch(step, lambda s: [(s * 4 + i) % 97 for i in range(rank * 2, rank * 2 + 2)])
            x = torch.stack([torch.sin(torch.arange(6, dtype=torch.float32) * (i + 1)) for i in ids])
            x = x + 0.01 * torch.randn_like(x)  # the RNG stream is part of the resumable state
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            stat = loss.detach().clone()
            dist.all_reduce(stat)
            run.log(step, loss=stat.item() / world)
            if step % 2 == 0:
                if os.environ.get("FIXTURE_KILL_RANK1_AT") == str(step) and rank == 1:
                    os.kill(os.getpid(), signal.SIGKILL)  # rank 1 dies as rank 0 enters the collective save
                run.checkpoint(step, model, opt, tokens_seen=step * 4)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
