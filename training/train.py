"""Train the default open model: a small GPT-2 on the generated corpus, from scratch.

    python -m training.train --config configs/tiny-lm.yaml [key=value ...]

Reads top to bottom. The provenance lines are the ones that mention `run`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from provenance import ConfigError, DataMismatch, data_path, start_run
from provenance.config import load, override_changes, to_dict
from provenance.integrations.wandb import WandbCallback
from provenance.lineage import LineageCallback
from provenance.lineage.merge import load_weights
from provenance.replay import WorldSizeMismatch
from provenance.run.progress import ProgressBar
from training import corpus as corpus_gen
from training import tokens
from training.config import Config, DataConfig
from training.data import (
    EOS,
    PAD,
    EpochSampler,
    collate,
    encode,
    existing_tokenizer,
    load_arith_eval,
    load_hf_tokenizer,
    load_texts,
    prepare_corpus,
    train_tokenizer,
)


def lr_at(step: int, cfg: Config) -> float:
    """Linear warm-up, then cosine decay to min_lr at the last step."""
    t = cfg.train
    if step <= t.warmup_steps:
        return t.lr * step / max(1, t.warmup_steps)
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(model: Any, val: list[list[int]], arith: list[dict[str, str]], tokenizer: Any,
             cfg: Config, pad_id: int, eos_id: int) -> dict[str, float]:
    """Held-out loss and perplexity, and exact-match accuracy on held-out sums (greedy)."""
    model.eval()
    b = cfg.train.batch_size
    losses = []
    for i in range(cfg.train.eval_batches):
        chunk = val[i * b:(i + 1) * b]
        if chunk:
            losses.append(model(**collate(chunk, pad_id)).loss.item())
    by_len: dict[int, list[tuple[list[int], str]]] = {}
    for ex in arith:
        ids = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
        by_len.setdefault(len(ids), []).append((ids, ex["answer"]))
    correct = 0
    for items in by_len.values():
        x = torch.tensor([ids for ids, _ in items])
        for _ in range(4):  # at most 3 digits and the end token
            nxt = model(input_ids=x).logits[:, -1].argmax(-1, keepdim=True)
            x = torch.cat([x, nxt], dim=1)
        for row, (ids, answer) in zip(x.tolist(), items, strict=True):
            gen = row[len(ids):]
            gen = gen[:gen.index(eos_id)] if eos_id in gen else gen
            correct += tokenizer.decode(gen).strip() == answer
    model.train()
    loss = sum(losses) / len(losses)
    return {"val_loss": loss, "val_perplexity": math.exp(loss), "arith_exact_match": correct / max(1, len(arith))}


@dataclass
class Invocation:
    """What the command line asked for besides the config: the re-runnable arguments, the notes given
    with --note, and every key=value override that changed the config file (recorded as decisions)."""

    argv: list[str]
    notes: list[str] = field(default_factory=list)
    overrides: list[dict[str, Any]] = field(default_factory=list)


def command_line_parser(default_config: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=default_config)
    p.add_argument("--note", action="append", default=[], metavar="TEXT",
                   help="why this run: a decision note recorded at step 0 (repeatable)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.steps=100")
    return p


def parse_command_line(cls: type[Any], default_config: str, argv: list[str] | None) -> tuple[Any, Invocation]:
    args = command_line_parser(default_config).parse_intermixed_args(argv)
    cfg = load(cls, args.config, args.overrides)
    notes = [f"--note={n}" for n in args.note]
    return cfg, Invocation(["--config", args.config, *notes, *args.overrides], list(args.note),
                           override_changes(cls, args.config, args.overrides))


def parse_args(argv: list[str] | None) -> tuple[Config, Invocation]:
    return parse_command_line(Config, "configs/tiny-lm.yaml", argv)


def init_distributed(cfg: Config) -> tuple[int, int]:
    """(rank, world size). Under torchrun (WORLD_SIZE > 1) the gloo process group is set up here:
    each rank trains on its contiguous share of every global batch and gradients are averaged."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if cfg.train.batch_size % world:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by the world size {world}")
    import torch.distributed as dist

    if not dist.is_initialized():  # a collective waiting on a lost rank fails after train.dist_timeout_s
        from datetime import timedelta

        if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0 \
                and os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") != "1":
            # torch elastic shares its rendezvous store with the workers; a relaunch may read the previous
            # attempt's addresses there and connect to ranks that are gone (pytorch/pytorch#135712)
            print("warning: a torchrun relaunch without TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's "
                  "environment may connect to the previous attempt's addresses and fail or hang in "
                  "init_process_group (pytorch/pytorch#135712)", file=sys.stderr, flush=True)

        dist.init_process_group("gloo", timeout=timedelta(seconds=cfg.train.dist_timeout_s))
    return dist.get_rank(), world


def corpus_spec(cfg: DataConfig) -> Any:
    """The corpus as data.source says: generated, a local folder, or a Hub dataset at a pinned commit.
    For local and hub, the manifest lists exactly the files read (and where they came from)."""
    from provenance.capture.data import load_manifest
    from provenance.integrations.sources import files_dataset, hub_dataset

    expected = load_manifest(cfg.manifest) if cfg.manifest else None
    kw = {"license": cfg.license, "samples_file": "train.jsonl", "in_bundle": cfg.in_bundle, "expected": expected}
    if cfg.source == "generated":
        return prepare_corpus(cfg)
    if cfg.source == "local":
        if not cfg.path:
            raise ConfigError("data.source is local: set data.path to the folder holding the corpus files")
        try:
            return files_dataset(cfg.name, cfg.path, list(corpus_gen.FILES), **kw)
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.source == "hub":
        if not cfg.hub_repo or not cfg.hub_revision:
            raise ConfigError("data.source is hub: set data.hub_repo and data.hub_revision (a commit sha)")
        try:
            return hub_dataset(cfg.name, cfg.hub_repo, cfg.hub_revision, list(corpus_gen.FILES), **kw)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    raise ConfigError(f"data.source must be generated, local or hub, got {cfg.source!r}")


def tokenizer_dir(cfg: Config, corpus: Any) -> Any:
    """Next to a generated corpus; under data.root for a local or hub corpus (never inside someone's data)."""

    base = corpus.root if cfg.data.source == "generated" else data_path(cfg.data.root) / f"{cfg.data.name}-tokenizer"
    return base / f"tokenizer-bpe{cfg.tokenizer.vocab_size}"


def prepare_data(cfg: Config, rank: int, world: int) -> tuple[Any, Any, Any]:
    """The corpus, the tokenizer and (token-stream layout) the token stream: rank 0 makes them, the other
    ranks receive rank 0's specs."""
    specs: list[Any] = [None, None, None]
    if rank == 0:
        corpus = corpus_spec(cfg.data)
        tok = (existing_tokenizer(cfg.tokenizer.path) if cfg.tokenizer.path else
               train_tokenizer(corpus.root / "train.jsonl", cfg.tokenizer, tokenizer_dir(cfg, corpus)))
        specs = [corpus, tok, None]
        if cfg.data.layout == "token-stream":  # a recorded tokenization step: its manifest names its inputs
            specs[2] = tokens.tokenize_corpus(corpus, specs[1], load_hf_tokenizer(specs[1].root), cfg.model.block_size)
        elif cfg.data.layout != "lines":
            raise ConfigError(f"data.layout must be lines or token-stream, got {cfg.data.layout!r}")
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(specs, src=0)
    return specs[0], specs[1], specs[2]


def all_reduce_step(model: Any, loss: torch.Tensor, n_tokens: int, world: int) -> tuple[torch.Tensor, int]:
    """Average the gradients over the ranks; return the mean of the ranks' losses and the global token count."""
    import torch.distributed as dist

    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)
    stats = torch.stack([loss.detach(), torch.tensor(float(n_tokens))])
    dist.all_reduce(stats)
    return stats[0] / world, int(stats[1].item())


def shard_model(model: Any) -> Any:
    """FSDP2: each transformer block is one unit, the root (embeddings, tied head, final norm) another."""
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    return model


def full_model(model: Any, config: Any) -> Any:
    """An unsharded copy of an FSDP2 model (collective: every rank calls it; rank 0 gets the weights)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import GPT2LMHeadModel

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    plain = GPT2LMHeadModel(config)
    plain.loss_type = "ForCausalLM"
    if state:
        plain.load_state_dict(state)
    return plain


def all_reduce_stats(loss: torch.Tensor, n_tokens: int, world: int) -> tuple[torch.Tensor, int]:
    """The mean of the ranks' losses and the global token count (the gradients are already reduced)."""
    import torch.distributed as dist

    stats = torch.stack([loss.detach(), torch.tensor(float(n_tokens))])
    dist.all_reduce(stats)
    return stats[0] / world, int(stats[1].item())


def train(cfg: Config, inv: Invocation) -> int:
    from transformers import GPT2Config, GPT2LMHeadModel

    rank, world = init_distributed(cfg)
    print("resolved config:\n" + yaml.safe_dump(to_dict(cfg), sort_keys=True), flush=True)
    corpus, tok_spec, token_spec = prepare_data(cfg, rank, world)
    tokenizer = load_hf_tokenizer(tok_spec.root)
    pad_id, eos_id = tokenizer.convert_tokens_to_ids(PAD), tokenizer.convert_tokens_to_ids(EOS)
    n_samples = tokens.n_windows(token_spec) if token_spec else sum(1 for _ in open(corpus.root / "train.jsonl"))
    sampler = EpochSampler(n_samples, cfg.train.batch_size, cfg.run.seed)
    sampler_info, compute_batch = sampler.describe(), sampler.batch
    if world > 1:  # rank r trains on positions [r*B/W, (r+1)*B/W) of each step's global batch
        share = cfg.train.batch_size // world
        sampler_info = {**sampler_info, "world_size": world, "rank": rank, "rank_share":
                        f"contiguous: rank r takes positions [r*{share}, (r+1)*{share}) of the step's global batch"}

        def compute_batch(step: int) -> list[int]:
            return sampler.batch(step)[rank * share:(rank + 1) * share]

    with start_run(to_dict(cfg), name=cfg.run.name, runs_dir=cfg.run.runs_dir, seed=cfg.run.seed,
                   threads=cfg.run.threads, deterministic=cfg.run.deterministic,
                   datasets=[x for x in (token_spec, corpus, tok_spec) if x],
                   argv=[sys.executable, "-m", "training.train", *inv.argv], license=cfg.run.license,
                   documents=cfg.run.documents, sampler=sampler_info, purpose=cfg.run.purpose, notes=inv.notes,
                   overrides=inv.overrides,
                   callbacks=[WandbCallback(cfg.run.wandb, cfg.run.wandb_project, cfg.run.wandb_entity),
                              LineageCallback(init=cfg.run.init_from, resume=cfg.run.resume_from),
                              ProgressBar(cfg.train.steps)]) as run:
        texts = load_texts(corpus)
        block = cfg.model.block_size
        train_ids = tokens.windows(token_spec) if token_spec else encode(tokenizer, texts["train"], block)
        val_ids = encode(tokenizer, texts["validation"], cfg.model.block_size)
        arith = load_arith_eval(corpus, cfg.train.arith_eval_size)

        m = cfg.model
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=len(tokenizer), n_positions=m.block_size, n_embd=m.n_embd, n_layer=m.n_layer,
            n_head=m.n_head, resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout,
            bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id, loss_type="ForCausalLM"))
        model.loss_type = "ForCausalLM"  # transformers derives it from the class name and warns on every loss
        fsdp = cfg.train.fsdp and world > 1
        if cfg.train.fsdp and world == 1:
            print("train.fsdp=true on one process: nothing to shard, training unsharded", flush=True)
        if fsdp:
            if cfg.run.init_from:
                load_weights(model, cfg.run.init_from)  # before sharding: the weights are plain tensors
            shard_model(model)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        t = cfg.train
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=t.lr, betas=(t.beta1, t.beta2), foreach=False)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model: {n_params:,} parameters; {len(train_ids):,} training samples", flush=True)

        if cfg.run.init_from and not fsdp:  # warm start from another run's weights (lineage.json records the edge)
            load_weights(model, cfg.run.init_from)
        start_step, tokens_seen, untrained, metrics = 0, 0, None, None
        evaluates = rank == 0 or fsdp  # a sharded model's forward is collective: every rank evaluates
        # relaunched by `torchrun --max-restarts` after a failure: continue from the previous attempt's
        # latest valid checkpoint (a new segment of the record); else from run.resume_from when given
        resume = run.resume_point() or cfg.run.resume_from
        if resume:
            start_step, tokens_seen = run.restore(resume, model, optimizer, allow_change=cfg.run.allow_resume_change)
        elif evaluates:
            untrained = evaluate(model, val_ids, arith, tokenizer, cfg, pad_id, eos_id)
            if rank == 0:
                run.log_eval(0, **untrained)
        for step in range(start_step + 1, t.steps + 1):
            t0 = time.perf_counter()
            batch_ids = run.batch(step, compute_batch)
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = collate([train_ids[i] for i in batch_ids], pad_id)
            loss = model(**batch).loss
            loss.backward()
            n_tokens = int(batch["attention_mask"].sum())
            if fsdp:  # FSDP2 reduce-scattered (averaged) the gradients in backward
                loss, n_tokens = all_reduce_stats(loss, n_tokens, world)
            elif world > 1:
                loss, n_tokens = all_reduce_step(model, loss, n_tokens, world)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            grad_norm = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens_seen += n_tokens
            run.log(step, loss=loss.item(), lr=lr, grad_norm=grad_norm, tokens=n_tokens,
                    tokens_seen=tokens_seen, step_time=time.perf_counter() - t0)
            if (step % t.eval_every == 0 or step == t.steps) and evaluates:
                metrics = evaluate(model, val_ids, arith, tokenizer, cfg, pad_id, eos_id)
                if rank == 0:
                    run.log_eval(step, **metrics)
                    print(f"step {step}: loss {loss.item():.4f} val_loss {metrics['val_loss']:.4f} "
                          f"arith {metrics['arith_exact_match']:.3f}", flush=True)
            if step % t.checkpoint_every == 0 or step == t.steps:
                run.checkpoint(step, model, optimizer, tokens_seen=tokens_seen)
        run.save_model(full_model(model, model.config) if fsdp else model, tokenizer)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
        if rank != 0:
            return 0
    if metrics is not None and untrained is not None:
        print(f"final: val_loss {metrics['val_loss']:.4f} (untrained {untrained['val_loss']:.4f}), "
              f"held-out sums exact match {metrics['arith_exact_match']:.1%} "
              f"(untrained {untrained['arith_exact_match']:.1%})", flush=True)
    print(f"run: {run.root}\nroot digest: sha256:{run.root_digest}", flush=True)
    return 0


def main(argv: list[str] | None = None, parse: Callable[..., Any] = parse_args,
         train_fn: Callable[..., int] = train) -> int:
    """Parse, train, and turn bad input into exit status 2 (also for training/train_hf.py)."""
    try:
        cfg, args = parse(argv)
        return train_fn(cfg, args)
    except (ConfigError, DataMismatch, WorldSizeMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM: the bundle is already sealed as interrupted
        return 128 + int(getattr(exc, "signum", 2))


if __name__ == "__main__":
    sys.exit(main())
