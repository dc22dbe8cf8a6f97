"""An unmodified Hugging Face Trainer script; imports nothing of this project (a fixture of tests/test_capture*.py).

    python capture_hf_trainer.py OUT_DIR [--seed N]

A tiny GPT-2 trained from scratch by transformers.Trainer on a map-style dataset of token rows,
gradient accumulation 2, a checkpoint-N/ folder every 3 steps. For the tests it writes, to
OUT_DIR/side.json, what the Trainer computed: every micro-step's loss as training_step returned
it, and every sample index the dataset was asked for, in order.
"""

import argparse
import json
import os

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, set_seed
from transformers.utils import logging as hf_logging

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--seed", type=int, default=42)
args = p.parse_args()
hf_logging.set_verbosity_error()
torch.set_num_threads(1)
side = {"losses": [], "fetched": []}


class Rows(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.rows = torch.randint(0, 64, (48, 17), generator=g)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        side["fetched"].append(int(i))
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


class SideTrainer(Trainer):
    def training_step(self, *a, **k):
        loss = super().training_step(*a, **k)
        side["losses"].append(loss.item())
        return loss


set_seed(args.seed)  # as run_clm.py does: before the model is created
model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=17, n_embd=32, n_layer=1, n_head=2,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, loss_type="ForCausalLM"))
targs = TrainingArguments(output_dir=os.path.join(args.out, "trainer"), per_device_train_batch_size=4,
                          gradient_accumulation_steps=2, max_steps=6, learning_rate=1e-3, logging_steps=2,
                          save_strategy="steps", save_steps=3, report_to=[], seed=args.seed, use_cpu=True,
                          dataloader_num_workers=0, disable_tqdm=True)
SideTrainer(model=model, args=targs, train_dataset=Rows()).train()
with open(os.path.join(args.out, "side.json"), "w") as f:
    json.dump(side, f)
