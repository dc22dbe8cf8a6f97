"""Overhead of provenance on a training step of the default model (issue 3).

    .venv/bin/python bench/bench_overhead.py [--steps 300] [--n-stories 12000] [--json out.json]

Runs the default model's training loop (configs/tiny-lm.yaml: GPT-2, 4 layers, n_embd 128,
batch 32, block 64) several times in ONE process, interleaved step by step so that drift
of the machine (other processes, frequency, ...) cancels out:

  bare     the loop of training/train.py with no provenance call at all; it still evaluates
           and saves the same full-state checkpoint (safetensors, atomically) every
           --checkpoint-every steps, as any resumable training loop does
           (--bare-saves none: it saves nothing);
  wrapped  the same loop inside `start_run` (capture_output on) with run.batch (which calls
           run.record_batch) and run.log every step, run.log_eval, and run.checkpoint every --checkpoint-every steps;
  control  a second bare loop (--no-control drops it): bare/control is the noise floor.

Step k of every loop runs before step k+1 of any loop; the order within a step rotates, and
the wrapped loop runs last on a checkpoint step and first on the step after, so that the
background hashing of its checkpoint overlaps its own next step and not a bare one.

Same seed, same data, same batches: the losses of all loops must be bitwise equal, which
the benchmark checks. The figure of merit is the per-step wall time (the step, its
provenance calls and its checkpoint save; the evaluation forward passes are timed apart
because they are identical in every loop), median and mean over every step but the first
--warmup. It prints wrapped/bare ratios of the median and mean, the median of the per-step
ratios, and, with much less noise, the time spent inside provenance calls (plus the CPU time
of the background hash thread) as a fraction of the bare step time.

It also checks that checkpoint hashing does not block the training thread: sha256 of each
checkpoint must run on another thread, and run.checkpoint() must return in about the time
of the save alone, not save + hash.

A ratio, never a timed assertion: nothing here fails because the machine is slow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import provenance.run.recorder as prun
from provenance import start_run
from provenance.capture.state import apply_determinism, save_checkpoint, seed_everything
from provenance.config import load, to_dict
from provenance.hashing import sha256_file
from training.config import Config
from training.data import (
    EOS,
    PAD,
    EpochSampler,
    collate,
    encode,
    load_arith_eval,
    load_hf_tokenizer,
    load_texts,
    prepare_corpus,
    train_tokenizer,
)
from training.train import evaluate, lr_at

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Data:
    cfg: Config
    corpus: Any
    tok_spec: Any
    tokenizer: Any
    pad_id: int
    eos_id: int
    sampler: EpochSampler
    train_ids: list[list[int]]
    val_ids: list[list[int]]
    arith: list[dict[str, str]]


@dataclass
class Result:
    mode: str
    step_times: list[float] = field(default_factory=list)  # seconds a step; eval forward passes excluded
    prov_times: list[float] = field(default_factory=list)  # seconds a step inside run.batch/log/log_eval
    ckpt_call_times: dict[int, float] = field(default_factory=dict)  # step -> run.checkpoint() or the bare save
    eval_time: float = 0.0
    losses: list[float] = field(default_factory=list)
    enter_s: float = 0.0  # wrapped: start_run.__enter__ (capture before training)
    exit_s: float = 0.0  # wrapped: __exit__ (wait for hashes, close logs, seal)
    root: Path | None = None


def prepare(cfg: Config, work: Path) -> Data:
    corpus = prepare_corpus(cfg.data, work / "corpus")
    tok_spec = train_tokenizer(corpus.root / "train.jsonl", cfg.tokenizer, work / "tokenizer")
    tokenizer = load_hf_tokenizer(tok_spec.root)
    pad_id, eos_id = tokenizer.convert_tokens_to_ids(PAD), tokenizer.convert_tokens_to_ids(EOS)
    with open(corpus.root / "train.jsonl") as f:
        n_train = sum(1 for _ in f)
    sampler = EpochSampler(n_train, cfg.train.batch_size, cfg.run.seed)
    texts = load_texts(corpus)
    return Data(cfg, corpus, tok_spec, tokenizer, pad_id, eos_id, sampler,
                encode(tokenizer, texts["train"], cfg.model.block_size),
                encode(tokenizer, texts["validation"], cfg.model.block_size),
                load_arith_eval(corpus, cfg.train.arith_eval_size))


def build_model(d: Data) -> tuple[Any, Any]:
    """As training/train.py builds it (seeded by the caller)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    m, t = d.cfg.model, d.cfg.train
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(d.tokenizer), n_positions=m.block_size, n_embd=m.n_embd, n_layer=m.n_layer,
        n_head=m.n_head, resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout,
        bos_token_id=d.eos_id, eos_token_id=d.eos_id, pad_token_id=d.pad_id))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=t.lr, betas=(t.beta1, t.beta2), foreach=False)
    return model, optimizer


def loop(d: Data, model: Any, optimizer: Any, res: Result, run: Any | None, ckpt_every: int,
         save_dir: Path | None) -> Iterator[None]:
    """The loop of training/train.py, one step per next(); `run` is None for a bare loop."""
    cfg, t = d.cfg, d.cfg.train
    ev = (model, d.val_ids, d.arith, d.tokenizer, cfg, d.pad_id, d.eos_id)
    metrics = evaluate(*ev)
    if run is not None:
        run.log_eval(0, **metrics)
    yield
    inner = [0.0]  # time of the sampler inside run.batch: not provenance

    def compute(s: int) -> list[int]:
        c0 = time.perf_counter()
        ids = d.sampler.batch(s)
        inner[0] = time.perf_counter() - c0
        return ids

    tokens_seen = 0
    for step in range(1, t.steps + 1):
        prov = 0.0
        t0 = time.perf_counter()
        if run is None:
            batch_ids = d.sampler.batch(step)
        else:  # as training/train.py: run.batch computes the ids and records them
            p0 = time.perf_counter()
            batch_ids = run.batch(step, compute)
            prov += time.perf_counter() - p0 - inner[0]
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = collate([d.train_ids[i] for i in batch_ids], d.pad_id)
        loss = model(**batch).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        n_tokens = int(batch["attention_mask"].sum())
        tokens_seen += n_tokens
        loss_v = loss.item()
        res.losses.append(loss_v)
        if run is not None:
            p0 = time.perf_counter()
            run.log(step, loss=loss_v, lr=lr, grad_norm=grad_norm, tokens=n_tokens,
                    tokens_seen=tokens_seen, step_time=p0 - t0)
            prov += time.perf_counter() - p0
        eval_dur = 0.0
        if step % t.eval_every == 0 or step == t.steps:
            e0 = time.perf_counter()
            metrics = evaluate(*ev)
            eval_dur = time.perf_counter() - e0
            res.eval_time += eval_dur
            if run is not None:
                p0 = time.perf_counter()
                run.log_eval(step, **metrics)
                prov += time.perf_counter() - p0
        if step % ckpt_every == 0 or step == t.steps:
            c0 = time.perf_counter()
            if run is not None:
                run.checkpoint(step, model, optimizer, tokens_seen=tokens_seen)
            elif save_dir is not None:  # what a plain resumable loop does: save, atomically
                path = save_dir / f"step-{step:08d}.safetensors"
                tmp = path.with_name(f".{path.name}.tmp")
                save_checkpoint(tmp, step, model, optimizer, tokens_seen)
                os.replace(tmp, path)
            res.ckpt_call_times[step] = time.perf_counter() - c0
        res.step_times.append(time.perf_counter() - t0 - eval_dur)
        res.prov_times.append(prov)
        yield


def bare_loop(d: Data, res: Result, ckpt_every: int, save_dir: Path | None) -> Iterator[None]:
    cfg = d.cfg
    apply_determinism(cfg.run.threads, cfg.run.deterministic)  # what start_run sets for the wrapped loop
    seed_everything(cfg.run.seed)
    model, optimizer = build_model(d)
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    yield from loop(d, model, optimizer, res, None, ckpt_every, save_dir)


def wrapped_loop(d: Data, res: Result, ckpt_every: int, runs_dir: Path) -> Iterator[None]:
    cfg = d.cfg
    t0 = time.perf_counter()
    run = start_run(to_dict(cfg), name=cfg.run.name, runs_dir=runs_dir, seed=cfg.run.seed,
                    threads=cfg.run.threads, deterministic=cfg.run.deterministic,
                    datasets=[d.corpus, d.tok_spec], argv=[sys.executable, *sys.argv], license=cfg.run.license,
                    documents=cfg.run.documents, sampler=d.sampler.describe(), code_root=REPO,
                    capture_output=True)
    with run:
        res.enter_s = time.perf_counter() - t0
        model, optimizer = build_model(d)  # start_run seeded everything, as in training/train.py
        yield from loop(d, model, optimizer, res, run, ckpt_every, None)
        t1 = time.perf_counter()
    res.exit_s = time.perf_counter() - t1
    res.root = run.root


class HashSpy:
    """Wraps provenance.run.recorder.sha256_file: which thread hashed each checkpoint, how long, how much CPU."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._orig = prun.sha256_file

    def __enter__(self) -> HashSpy:
        def spy(path: Any, progress: Any = None) -> str:
            t0, c0 = time.perf_counter(), time.thread_time()
            hexd = self._orig(path, progress)
            self.calls.append({"thread": threading.current_thread().name,
                               "main": threading.current_thread() is threading.main_thread(),
                               "seconds": time.perf_counter() - t0, "cpu_seconds": time.thread_time() - c0,
                               "bytes": os.path.getsize(path)})
            return hexd

        prun.sha256_file = spy
        return self

    def __exit__(self, *exc: Any) -> None:
        prun.sha256_file = self._orig


def schedule(names: list[str], k: int, ckpt_every: int, steps: int) -> list[str]:
    """Order of the loops at step k: rotating; wrapped last on a checkpoint step and first after it."""
    r = k % len(names)
    order = names[r:] + names[:r]
    if k % ckpt_every == 0 or k == steps:
        order = [n for n in order if n != "wrapped"] + ["wrapped"]
    elif k > 1 and (k - 1) % ckpt_every == 0:
        order = ["wrapped"] + [n for n in order if n != "wrapped"]
    return order


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "tiny-lm.yaml"))
    p.add_argument("--steps", type=int, default=300, help="training steps of each loop (>= 200)")
    p.add_argument("--warmup", type=int, default=10, help="first steps left out of the statistics")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--n-stories", type=int, default=None, help="corpus size (default: the config's)")
    p.add_argument("--bare-saves", choices=("same", "none"), default="same",
                   help="whether the bare loops save the same checkpoints (without hashing them)")
    p.add_argument("--no-control", action="store_true", help="no second bare loop (no noise floor)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)

    overrides = [f"train.steps={args.steps}"]
    if args.n_stories:
        overrides += [f"data.n_stories={args.n_stories}", "data.manifest=null"]  # the committed one is for 12000
    cfg = load(Config, args.config, overrides)
    work = Path(tempfile.mkdtemp(prefix="prov-bench-overhead-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = os.getloadavg()
    try:
        d = prepare(cfg, work)
        m = cfg.model
        print(f"model: n_layer {m.n_layer}, n_embd {m.n_embd}, block {m.block_size}, batch {cfg.train.batch_size}, "
              f"vocab {len(d.tokenizer)}; {len(d.train_ids)} training samples; {args.steps} steps a loop; "
              f"checkpoint every {args.checkpoint_every}; torch threads {cfg.run.threads}; "
              f"load average {load_before[0]:.2f}", flush=True)
        saves = args.bare_saves == "same"
        names = ["bare", "wrapped"] + ([] if args.no_control else ["control"])
        results = {n: Result(n) for n in names}
        loops = {
            "bare": bare_loop(d, results["bare"], args.checkpoint_every, work / "bare-ckpt" if saves else None),
            "wrapped": wrapped_loop(d, results["wrapped"], args.checkpoint_every, work / "runs"),
        }
        if "control" in names:
            loops["control"] = bare_loop(d, results["control"], args.checkpoint_every,
                                         work / "control-ckpt" if saves else None)
        spy = HashSpy()
        t_start = time.perf_counter()
        with spy:
            for n in names:  # set up, evaluate at step 0
                next(loops[n])
            for k in range(1, args.steps + 1):
                for n in schedule(names, k, args.checkpoint_every, args.steps):
                    next(loops[n])
                if k % 50 == 0:
                    print(f"step {k}: " + ", ".join(f"{n} {results[n].step_times[-1] * 1e3:.1f} ms" for n in names),
                          flush=True)
            for g in loops.values():  # finish: the wrapped run seals its bundle
                for _ in g:
                    pass
        wall = time.perf_counter() - t_start
        load_after = os.getloadavg()
        return report(args, cfg, results, spy, wall, load_before, load_after)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, cfg: Config, results: dict[str, Result], spy: HashSpy, wall: float,
           load_before: tuple[float, ...], load_after: tuple[float, ...]) -> int:
    w0 = args.warmup
    bare, wrapped, control = results["bare"], results["wrapped"], results.get("control")
    same = all(r.losses == bare.losses for r in results.values())
    st = {n: r.step_times[w0:] for n, r in results.items()}
    med = {n: statistics.median(v) for n, v in st.items()}
    mean = {n: statistics.fmean(v) for n, v in st.items()}
    paired = statistics.median(w / b for w, b in zip(st["wrapped"], st["bare"], strict=True))

    # accounted overhead: time inside provenance calls on the training thread, the part of
    # run.checkpoint() beyond the save itself, and the CPU time of the background hashing
    ckpt_steps = [s for s in wrapped.ckpt_call_times if s > w0]
    hashes = spy.calls
    hash_cpu = sum(h["cpu_seconds"] for h in hashes)
    ckpt_extra = sum(max(0.0, wrapped.ckpt_call_times[s] - bare.ckpt_call_times.get(s, 0.0)) for s in ckpt_steps)
    in_calls = sum(wrapped.prov_times[w0:])
    accounted = (in_calls + ckpt_extra + hash_cpu) / sum(st["bare"])

    on_main = [h for h in hashes if h["main"]]
    direct_hash_s = None
    ckpts = sorted((wrapped.root / "checkpoints").glob("step-*.safetensors")) if wrapped.root else []
    if ckpts and ckpts[0].exists():
        t0 = time.perf_counter()
        sha256_file(ckpts[0])
        direct_hash_s = time.perf_counter() - t0

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * 1e3, 3)

    out: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "steps": args.steps, "warmup_steps_excluded": w0, "checkpoint_every": args.checkpoint_every,
        "bare_saves": args.bare_saves, "torch_threads": cfg.run.threads, "cpus": os.cpu_count(),
        "wall_s": round(wall, 1), "load_average_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "losses_bitwise_equal": same,
        "median_step_ms": {n: ms(v) for n, v in med.items()},
        "mean_step_ms": {n: ms(v) for n, v in mean.items()},
        "ratio_median": round(med["wrapped"] / med["bare"], 4),
        "ratio_mean": round(mean["wrapped"] / mean["bare"], 4),
        "ratio_paired_median": round(paired, 4),
        "noise_floor_control_over_bare": None if control is None else {
            "ratio_median": round(med["control"] / med["bare"], 4),
            "ratio_mean": round(mean["control"] / mean["bare"], 4),
            "ratio_paired_median": round(statistics.median(
                c / b for c, b in zip(st["control"], st["bare"], strict=True)), 4)},
        "accounted_overhead": {
            "fraction_of_bare_step_time": round(accounted, 5),
            "in_calls_ms_per_step": ms(in_calls / len(st["bare"])),
            "checkpoint_call_beyond_save_ms_total": ms(ckpt_extra),
            "background_hash_cpu_ms_total": ms(hash_cpu),
        },
        "wrapped_enter_s": round(wrapped.enter_s, 3),
        "wrapped_exit_seal_s": round(wrapped.exit_s, 3),
        "checkpoint": {
            "bytes": hashes[0]["bytes"] if hashes else None,
            "bare_save_ms_median": ms(statistics.median(bare.ckpt_call_times.values()))
            if bare.ckpt_call_times and args.bare_saves == "same" else None,
            "run_checkpoint_call_ms_median": ms(statistics.median(wrapped.ckpt_call_times.values())),
            "background_sha256_ms_median": ms(statistics.median(h["seconds"] for h in hashes)) if hashes else None,
            "sha256_same_file_direct_ms": ms(direct_hash_s),
            "hash_threads": sorted({h["thread"] for h in hashes}),
            "hashes_on_training_thread": len(on_main),
            "hashes_total": len(hashes),
        },
    }
    print(json.dumps(out, indent=2))
    # the verdict is on the paired median (step k against step k: drift cancels); the pooled
    # median and mean are printed too, and trusted only when the control loop says the machine was quiet
    ok = out["ratio_paired_median"] <= 1.01
    print(f"wrapped/bare per-step time: paired median {out['ratio_paired_median']:.4f} (target <= 1.01: "
          f"{'MET' if ok else 'NOT MET'}); pooled median {out['ratio_median']:.4f}, mean {out['ratio_mean']:.4f}; "
          f"accounted overhead {accounted * 100:.3f}%")
    if control is not None:
        nf = out["noise_floor_control_over_bare"]
        print(f"noise floor control/bare: paired median {nf['ratio_paired_median']:.4f}, pooled median "
              f"{nf['ratio_median']:.4f}, mean {nf['ratio_mean']:.4f}")
        worst = max(abs(v - 1) for v in nf.values())
        if worst > 0.01:
            print(f"NOTE: two identical bare loops differ by up to {worst:.1%}: the machine was too busy for the "
                  f"pooled median/mean to resolve 1%; rely on the paired median and the accounted overhead, "
                  f"or re-run when it is idle (load average now {os.getloadavg()[0]:.2f})")
    print(f"checkpoint hashing on the training thread: {len(on_main)} of {len(hashes)} hashes "
          f"({'never blocks' if hashes and not on_main else 'BLOCKS'}); run.checkpoint() "
          f"{out['checkpoint']['run_checkpoint_call_ms_median']} ms vs bare save "
          f"{out['checkpoint']['bare_save_ms_median']} ms; sha256 of the file "
          f"{out['checkpoint']['sha256_same_file_direct_ms']} ms")
    if not same:
        print("WARNING: the losses of the loops differ: they are not the same loop", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
