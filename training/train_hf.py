"""Train the default open model through Hugging Face `Trainer` (same model, data and tokenizer as training/train.py).

    python -m training.train_hf --config configs/tiny-lm-hf.yaml [key=value ...]

The Trainer owns the loop: its sampler, gradient accumulation, AdamW and learning-rate
schedule. provenance.integrations.hf records the data order it produced, the exact loss
of every optimizer step, checkpoints (every train.checkpoint_every steps), evaluations
(the same ones as the plain loop, every train.eval_every steps) and the Trainer's arguments.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

import yaml

from provenance import ConfigError, start_run
from provenance.config import to_dict
from provenance.integrations.wandb import WandbCallback
from training.config import Config
from training.data import (
    EOS,
    PAD,
    collate,
    encode,
    load_arith_eval,
    load_hf_tokenizer,
    load_texts,
    train_tokenizer,
)
from training.train import Invocation, corpus_spec, evaluate, parse_command_line, tokenizer_dir
from training.train import main as train_main


@dataclass
class TrainerConfig:
    gradient_accumulation_steps: int = 1  # train.batch_size is split into this many micro-batches
    lr_scheduler_type: str = "cosine"
    optim: str = "adamw_torch"
    dataloader_num_workers: int = 0


@dataclass
class HFConfig(Config):
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def parse_args(argv: list[str] | None) -> tuple[HFConfig, Invocation]:
    return parse_command_line(HFConfig, "configs/tiny-lm-hf.yaml", argv)


def train(cfg: HFConfig, inv: Invocation) -> int:
    from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, TrainingArguments

    from provenance.integrations.hf import IndexedDataset, ProvenanceTrainer, SampleIdCollator

    t, tr = cfg.train, cfg.trainer
    if t.batch_size % tr.gradient_accumulation_steps:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by "
                          f"trainer.gradient_accumulation_steps={tr.gradient_accumulation_steps}")
    print("resolved config:\n" + yaml.safe_dump(to_dict(cfg), sort_keys=True), flush=True)
    corpus = corpus_spec(cfg.data)
    tok_spec = train_tokenizer(corpus.root / "train.jsonl", cfg.tokenizer, tokenizer_dir(cfg, corpus))
    tokenizer = load_hf_tokenizer(tok_spec.root)
    pad_id, eos_id = tokenizer.convert_tokens_to_ids(PAD), tokenizer.convert_tokens_to_ids(EOS)
    micro = t.batch_size // tr.gradient_accumulation_steps
    sampler = {"algorithm": "transformers.Trainer", "seed": cfg.run.seed, "data_seed": cfg.run.seed,
               "per_device_train_batch_size": micro, "gradient_accumulation_steps": tr.gradient_accumulation_steps,
               "drop_last": True, "definition": "the Trainer's seeded random sampler; an optimizer step's ids are "
                                                "its micro-batches' ids, concatenated"}

    with start_run(to_dict(cfg), name=cfg.run.name, runs_dir=cfg.run.runs_dir, seed=cfg.run.seed,
                   threads=cfg.run.threads, deterministic=cfg.run.deterministic, datasets=[corpus, tok_spec],
                   argv=[sys.executable, "-m", "training.train_hf", *inv.argv], license=cfg.run.license,
                   documents=cfg.run.documents, sampler=sampler, purpose=cfg.run.purpose, notes=inv.notes,
                   overrides=inv.overrides,
                   callbacks=[WandbCallback(cfg.run.wandb, cfg.run.wandb_project, cfg.run.wandb_entity)]) as run, \
            tempfile.TemporaryDirectory(prefix="prov-hf-trainer-") as out_dir:
        texts = load_texts(corpus)
        train_ids = encode(tokenizer, texts["train"], cfg.model.block_size)
        val_ids = encode(tokenizer, texts["validation"], cfg.model.block_size)
        arith = load_arith_eval(corpus, t.arith_eval_size)

        m = cfg.model
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=len(tokenizer), n_positions=m.block_size, n_embd=m.n_embd, n_layer=m.n_layer,
            n_head=m.n_head, resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout,
            bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id, loss_type="ForCausalLM"))
        model.loss_type = "ForCausalLM"  # transformers derives it from the class name and warns on every loss
        print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters; "
              f"{len(train_ids):,} training samples", flush=True)
        args = TrainingArguments(
            output_dir=out_dir, max_steps=t.steps, per_device_train_batch_size=micro,
            gradient_accumulation_steps=tr.gradient_accumulation_steps, learning_rate=t.lr,
            weight_decay=t.weight_decay, adam_beta1=t.beta1, adam_beta2=t.beta2, max_grad_norm=t.grad_clip,
            lr_scheduler_type=tr.lr_scheduler_type, warmup_steps=t.warmup_steps, optim=tr.optim,
            seed=cfg.run.seed, data_seed=cfg.run.seed, dataloader_drop_last=True,
            dataloader_num_workers=tr.dataloader_num_workers, logging_steps=1, eval_strategy="no",
            save_strategy="no", report_to="none", disable_tqdm=True, remove_unused_columns=False,
            dataloader_pin_memory=False)

        class Evaluate(TrainerCallback):  # the plain loop's evaluations, at the same steps
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                step = state.global_step
                if step % t.eval_every == 0 or step == t.steps:
                    metrics = evaluate(model, val_ids, arith, tokenizer, cfg, pad_id, eos_id)
                    run.log_eval(step, **metrics)
                    print(f"step {step}: val_loss {metrics['val_loss']:.4f} "
                          f"arith {metrics['arith_exact_match']:.3f}", flush=True)

        run.log_eval(0, **evaluate(model, val_ids, arith, tokenizer, cfg, pad_id, eos_id))
        trainer = ProvenanceTrainer(
            model=model, args=args, train_dataset=IndexedDataset(train_ids),
            data_collator=SampleIdCollator(lambda feats: collate([f["input_ids"] for f in feats], pad_id)),
            run=run, checkpoint_every=t.checkpoint_every)
        trainer.add_callback(Evaluate())
        trainer.train()
        run.save_model(model, tokenizer)
    print(f"run: {run.root}\nroot digest: sha256:{run.root_digest}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return train_main(argv, parse=parse_args, train_fn=train)


if __name__ == "__main__":
    sys.exit(main())
