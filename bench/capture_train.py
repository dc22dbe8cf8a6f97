"""The default model's training step in a plain script that imports nothing of this project (bench_capture.py's worker).

    python bench/capture_train.py --ctl FIFO --ack FIFO --out DIR [--steps 200] [--data loader|randint]

GPT-2 as configs/tiny-lm.yaml builds it (4 layers, n_embd 128, 4 heads, block 64, batch 32, AdamW,
grad clip 1.0), one process thread. --data loader: a DataLoader(shuffle=True) over token rows (the
capture records sample ids); --data randint: rows cut at torch.randint offsets from one token
tensor, nanoGPT-style (the capture records content digests). Every step waits for a byte on --ctl,
runs, and writes its wall time (and that of a checkpoint save, every --checkpoint-every steps:
torch.save of the full state) to --ack, so that the driver can interleave processes step by step.
At the end it writes every loss to DIR/losses.json.
"""

import argparse
import json
import os
import time

import torch
from torch.utils.data import DataLoader, TensorDataset
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

p = argparse.ArgumentParser()
p.add_argument("--ctl", required=True)
p.add_argument("--ack", required=True)
p.add_argument("--out", required=True)
p.add_argument("--steps", type=int, default=200)
p.add_argument("--data", choices=("loader", "randint"), default="loader")
p.add_argument("--checkpoint-every", type=int, default=50)
args = p.parse_args()

hf_logging.set_verbosity_error()
torch.set_num_threads(1)
torch.manual_seed(1337)
vocab, block, batch = 1024, 64, 32
g = torch.Generator().manual_seed(0)
rows = torch.randint(0, vocab, (4096, block + 1), generator=g)
stream = rows.reshape(-1)
model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=block, n_embd=128, n_layer=4, n_head=4,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, loss_type="ForCausalLM"))
decay = [q for q in model.parameters() if q.dim() >= 2]
no_decay = [q for q in model.parameters() if q.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=3e-3, foreach=False)
loader = DataLoader(TensorDataset(rows), batch_size=batch, shuffle=True, drop_last=True)


def batches():
    while True:
        if args.data == "loader":
            for (b,) in loader:
                yield b
        else:
            ix = torch.randint(len(stream) - block - 1, (batch,))
            yield torch.stack([stream[i:i + block + 1] for i in ix])


os.makedirs(args.out, exist_ok=True)
it = batches()
losses = []
with open(args.ctl, "rb") as ctl, open(args.ack, "w") as ack:
    for step in range(1, args.steps + 1):
        if not ctl.read(1):
            break
        t0 = time.perf_counter()
        b = next(it)
        out = model(b[:, :-1], labels=b[:, :-1])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        save_dt = 0.0
        if step % args.checkpoint_every == 0:
            t1 = time.perf_counter()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step},
                       os.path.join(args.out, "ckpt.pt"))
            save_dt = time.perf_counter() - t1
        losses.append(out.loss.item())
        ack.write(f"{dt!r} {save_dt!r}\n")
        ack.flush()
with open(os.path.join(args.out, "losses.json"), "w") as f:
    json.dump(losses, f)
