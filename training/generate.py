"""Inference with a trained model from a run bundle: greedy continuation of prompts.

    python -m training.generate runs/<run_id>/model "17+25=" "Once upon a time,"
"""

from __future__ import annotations

import argparse
import sys

import torch


def generate(model_dir: str, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args(argv)
    for prompt, text in zip(args.prompts, generate(args.model_dir, args.prompts, args.max_new_tokens), strict=True):
        print(f"{prompt}{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
