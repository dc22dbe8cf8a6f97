"""A nanoGPT-style training loop that imports nothing of this project (a fixture of tests/test_capture*.py).

    python capture_nanogpt.py DATA.bin OUT_DIR [--seed N] [--iters N]

Token ids from a uint16 memmap, batches cut at torch.randint offsets, gradient accumulation,
a torch.save checkpoint dict (nanoGPT's ckpt.pt, overwritten), print logging. It writes the
value of every micro-step's loss it calls backward() on to OUT_DIR/losses.json.
"""

import argparse
import json
import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

p = argparse.ArgumentParser()
p.add_argument("data")
p.add_argument("out")
p.add_argument("--seed", type=int, default=1337)
p.add_argument("--iters", type=int, default=8)
args = p.parse_args()

torch.set_num_threads(1)
torch.manual_seed(args.seed)
block_size, batch_size, vocab, accum = 16, 4, 64, 2
data = np.memmap(args.data, dtype=np.uint16, mode="r")


def get_batch():
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    return x, y


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(vocab, 32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, vocab)

    def forward(self, idx, targets=None):
        h = self.emb(idx)
        h = h + self.mlp(h)
        logits = self.head(h)
        loss = None if targets is None else F.cross_entropy(logits.view(-1, vocab), targets.view(-1))
        return logits, loss


@torch.no_grad()
def estimate_loss(model):
    model.eval()
    losses = torch.stack([model(*get_batch())[1] for _ in range(2)])
    model.train()
    return losses.mean().item()


model = TinyLM()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
os.makedirs(args.out, exist_ok=True)
side = []
for it in range(args.iters):
    lr = 3e-3 * (it + 1) / args.iters
    for g in optimizer.param_groups:
        g["lr"] = lr
    if it % 4 == 0:
        print(f"step {it}: val loss {estimate_loss(model):.4f}", flush=True)
    for _ in range(accum):
        X, Y = get_batch()
        _, loss = model(X, Y)
        loss = loss / accum
        side.append(loss.item())
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    print(f"iter {it}: loss {loss.item() * accum:.4f}", flush=True)
    if it % 4 == 3:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iter_num": it},
                   os.path.join(args.out, "ckpt.pt"))
with open(os.path.join(args.out, "losses.json"), "w") as f:
    json.dump(side, f)
