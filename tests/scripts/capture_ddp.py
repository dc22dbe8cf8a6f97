"""A DistributedDataParallel loop for torchrun (gloo, CPU); imports nothing of this project.

    torchrun --standalone --nproc_per_node=2 capture_ddp.py OUT_DIR

DataLoader with a DistributedSampler (shuffle, seed 3), 4 steps; rank 0 saves the weights. Each
rank writes its micro-step losses and the sample indices it trained on to OUT_DIR/rank<R>.json.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(1)
torch.manual_seed(3)
x = torch.randn(64, 4)
y = x.sum(dim=1, keepdim=True)
ds = TensorDataset(torch.arange(64), x, y)
sampler = DistributedSampler(ds, shuffle=True, seed=3)
loader = DataLoader(ds, batch_size=8, sampler=sampler)
model = DDP(torch.nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
side = {"losses": [], "order": []}
for idx, xb, yb in loader:
    loss = torch.nn.functional.mse_loss(model(xb), yb)
    opt.zero_grad()
    loss.backward()
    opt.step()
    side["losses"].append(loss.item())
    side["order"].append(idx.tolist())
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(side, f)
if rank == 0:
    torch.save(model.module.state_dict(), os.path.join(out, "weights.pt"))
dist.barrier()
dist.destroy_process_group()
