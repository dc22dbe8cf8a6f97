"""A plain DataLoader(shuffle=True) loop with gradient accumulation; imports nothing of this project.

    python capture_dataloader.py DATA.csv OUT_DIR [--seed N] [--epochs N] [--kill-at STEP]

A map-style dataset read from a CSV (x,y per line), SGD with a StepLR schedule, 3 micro-batches
per optimizer step, a weights-only torch.save and a safetensors file. It writes every
micro-step's loss value to OUT_DIR/losses.json, and the sample indices it trained on, per
optimizer step, to OUT_DIR/order.json. --kill-at STEP: SIGKILL itself after that step.
"""

import argparse
import json
import os
import random
import signal

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

p = argparse.ArgumentParser()
p.add_argument("data")
p.add_argument("out")
p.add_argument("--seed", type=int, default=7)
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--kill-at", type=int, default=None)
args = p.parse_args()

torch.set_num_threads(1)
random.seed(args.seed)
np.random.seed(args.seed)
torch.manual_seed(args.seed)


class Points(Dataset):
    def __init__(self, path):
        rows = [line.split(",") for line in open(path).read().splitlines() if line.strip()]
        self.x = torch.tensor([[float(a)] for a, _ in rows])
        self.y = torch.tensor([[float(b)] for _, b in rows])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return i, self.x[i], self.y[i]


loader = DataLoader(Points(args.data), batch_size=4, shuffle=True)
model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
os.makedirs(args.out, exist_ok=True)
losses, order, current = [], [], []
accum, step = 3, 0
for epoch in range(args.epochs):
    for micro, (idx, x, y) in enumerate(loader):
        loss = torch.nn.functional.mse_loss(model(x), y) / accum
        losses.append(loss.item())
        current += idx.tolist()
        loss.backward()
        if (micro + 1) % accum == 0:
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            order.append(current)
            current = []
            print(f"epoch {epoch} step {step} loss {loss.item() * accum:.5f}", flush=True)
            with open(os.path.join(args.out, "losses.json"), "w") as f:
                json.dump(losses, f)
            with open(os.path.join(args.out, "order.json"), "w") as f:
                json.dump(order, f)
            if args.kill_at is not None and step == args.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
    torch.save(model.state_dict(), os.path.join(args.out, f"weights-epoch{epoch}.pt"))
save_file(dict(model.state_dict()), os.path.join(args.out, "model.safetensors"))
