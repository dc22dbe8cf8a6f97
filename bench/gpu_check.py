"""GPU check (issue 15.7): train the default model on one GPU twice with deterministic algorithms off, then
twice with them on, and report for each whether the two runs are bitwise identical, or the measured noise
floor in the terms of the noise model of `prov reproduce --tolerance auto` (docs/reproduce.md):
per-step relative loss difference, and the largest tensor relative L2 of the weights at the end, each
divided by the step (eps_loss, eps_ckpt).

    python bench/gpu_check.py [--steps 100] [--config configs/tiny-lm.yaml] [--json]

The model, optimizer and hyperparameters are the config's (GPT-2 of `model`, AdamW of `train`, vocabulary
`tokenizer.vocab_size`); the batches are seeded random tokens (generated on the CPU, the same for every
run), so that no corpus or tokenizer is needed: what is measured is the GPU's arithmetic. TF32 and the
reduced-precision reductions are left at torch's defaults and reported. Without CUDA it exits with status
2 and says so. (Written without a GPU to run it on: see docs/reproduce.md.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def train_once(cfg: dict[str, Any], steps: int, deterministic: bool) -> tuple[list[float], dict[str, Any]]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    m, t, seed = cfg["model"], cfg["train"], int(cfg["run"]["seed"])
    vocab = int(cfg["tokenizer"]["vocab_size"])
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=m["block_size"], n_embd=m["n_embd"],
                                       n_layer=m["n_layer"], n_head=m["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                                       loss_type="ForCausalLM")).cuda()
    model.loss_type = "ForCausalLM"  # as training/train.py: transformers warns on every loss otherwise
    betas = (t.get("beta1", 0.9), t.get("beta2", 0.95))  # training/config.py's defaults
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], betas=betas, weight_decay=t["weight_decay"],
                            foreach=False)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randint(0, vocab, (t["batch_size"], m["block_size"]), generator=gen).cuda()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, {k: v.detach().double().cpu() for k, v in model.state_dict().items()}


def compare(a: tuple[list[float], dict[str, Any]], b: tuple[list[float], dict[str, Any]]) -> dict[str, Any]:
    (la, wa), (lb, wb) = a, b
    rel = [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(la, lb)]
    w = {k: float((wa[k] - wb[k]).norm() / max(float(wa[k].norm()), 1e-30)) for k in wa}
    worst = max(w, key=lambda k: w[k])
    n = len(la)
    return {"bitwise": la == lb and all(v == 0 for v in w.values()),
            "first_differing_step": next((i + 1 for i, r in enumerate(rel) if r != 0), None),
            "max_loss_rel": max(rel), "eps_loss": max(r / (i + 1) for i, r in enumerate(rel)),
            "max_weight_rel_l2": w[worst], "worst_tensor": worst, "eps_ckpt": w[worst] / n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny-lm.yaml"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: needed by deterministic mode
    import torch
    import yaml

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda}): nothing to check here. Run it on a machine "
              "with an NVIDIA GPU and a CUDA build of torch.", file=sys.stderr)
        return 2
    cfg = yaml.safe_load(Path(args.config).read_text())
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0), "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(), "steps": args.steps}
    for det in (False, True):
        out[f"deterministic_{'on' if det else 'off'}"] = compare(train_once(cfg, args.steps, det),
                                                                 train_once(cfg, args.steps, det))
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    print(f"{out['device']} (sm {out['capability']}), torch {out['torch']}, CUDA {out['cuda']}, cuDNN {out['cudnn']}, "
          f"TF32 matmul {out['tf32_matmul']}, {args.steps} steps of the default model, twice per mode")
    for mode in ("off", "on"):
        r = out[f"deterministic_{mode}"]
        if r["bitwise"]:
            print(f"  deterministic {mode}: bitwise identical (every loss and every weight)")
        else:
            print(f"  deterministic {mode}: not bitwise (first loss difference at step {r['first_differing_step']}); "
                  f"largest relative loss difference {r['max_loss_rel']:.3g}, weights' largest relative L2 "
                  f"{r['max_weight_rel_l2']:.3g} ({r['worst_tensor']}); noise floor eps_loss {r['eps_loss']:.3g}, "
                  f"eps_ckpt {r['eps_ckpt']:.3g} per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
