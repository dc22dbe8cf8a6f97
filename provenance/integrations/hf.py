"""Hugging Face Trainer: record what a `Trainer` does into a Run.

    run = start_run(...)
    train = IndexedDataset(samples)                 # items carry their sample id
    trainer = ProvenanceTrainer(run=run, model=model, args=args, train_dataset=train,
                                data_collator=SampleIdCollator(my_collate), checkpoint_every=200)
    trainer.train()

How each thing is recorded, and why this way:

* Data order. The Trainer's sampler (seeded, shuffled, sharded, with gradient
  accumulation) decides which samples form each batch, and the Trainer prefetches the
  micro-batches of a step ahead of time, so a collator cannot tell which step it is
  collating for. Instead every item carries its index (`IndexedDataset`), the collator
  puts the ids of a micro-batch into the batch itself (`sample_ids`), and the trainer's
  `training_step` takes them out just before the forward pass: the ids recorded for an
  optimizer step are the concatenated ids of its micro-batches, in the order they were
  trained, as the Trainer's sampler produced them. This also holds with dataloader
  workers (the ids travel in the batch).
* Exact per-step loss. The Trainer logs a rounded average over `logging_steps`. The
  loss recorded here is the sum of what `training_step` returns for the step's
  micro-batches (each already scaled for gradient accumulation), i.e. exactly the
  value the Trainer adds to its running loss for that step, as a full-precision float.
  The Trainer's own (rounded) log records are kept too, in integrations/hf_trainer_log.jsonl.
* Checkpoints: `run.checkpoint` (safetensors, full training state, sha256 in the index)
  every `checkpoint_every` steps and at the last step. The Trainer's own checkpoint
  folders (save_strategy), if any, are hashed file by file (never loaded) and listed
  with their digests in integrations/hf_trainer.json.
* Evaluations: the Trainer's evaluation metrics (timings left out), as run.log_eval.
* Arguments: `TrainingArguments.to_dict()` (redacted like every other file) in
  integrations/hf_trainer.json, with the Trainer's class and the transformers version.

In a reproduction (PROV_REPLAY) the batches still come from the Trainer's sampler; the
recorded order is compared with them step by step, like every other loss and checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from provenance import formats
from provenance.hashing import sha256_file
from provenance.integrations.layout import HF_TRAINER_JSON
from provenance.replay import StopRun
from provenance.run import Run

SAMPLE_ID = "sample_id"  # key of an item's id in a dataset item
SAMPLE_IDS = "sample_ids"  # key of a batch's ids (a 1-d int64 tensor), removed before the forward pass
HF_TRAINER_LOG = "integrations/hf_trainer_log.jsonl"
_TIMING = ("runtime", "per_second")


class IndexedDataset(torch.utils.data.Dataset):
    """A map-style dataset whose items carry their index as `sample_id`.

    `samples` is any indexable dataset: token-id lists (an item becomes {"input_ids": [...]}) or
    records such as the rows of a Hugging Face `datasets.Dataset` (every column is kept: input_ids,
    attention_mask, labels, ...).
    """

    def __init__(self, samples: Any, with_ids: bool = True) -> None:
        self.samples = samples
        self.with_ids = with_ids

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        if isinstance(sample, Mapping):
            if SAMPLE_ID in sample:
                raise ValueError(f"IndexedDataset: item {i} already has a '{SAMPLE_ID}' column")
            item: dict[str, Any] = dict(sample)
        else:
            item = {"input_ids": list(sample)}
        if self.with_ids:
            item[SAMPLE_ID] = int(i)
        return item


class SampleIdCollator:
    """Wrap a collator: strip `sample_id` from the items, add the batch's ids as `sample_ids`."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.collate = collate

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features or SAMPLE_ID not in features[0]:
            return self.collate(features)
        ids = [int(f[SAMPLE_ID]) for f in features]
        batch = self.collate([{k: v for k, v in f.items() if k != SAMPLE_ID} for f in features])
        batch[SAMPLE_IDS] = torch.tensor(ids, dtype=torch.int64)
        return batch


class ProvenanceCallback(TrainerCallback):
    """Records a Trainer's steps into a Run; fed micro-batch by micro-batch by ProvenanceTrainer."""

    def __init__(self, run: Run, checkpoint_every: int | None = None) -> None:
        self.run = run
        self.checkpoint_every = checkpoint_every
        self.fed = False  # set by ProvenanceTrainer: without it, no data order and no exact loss
        self.stopped = False
        self.tokens_seen = 0
        self._ids: list[int] = []
        self._loss: torch.Tensor | None = None
        self._tokens = 0
        self._micro = 0
        self._lr: float | None = None
        self._t0 = time.perf_counter()
        self.trainer_class: str | None = None
        self._info: dict[str, Any] = {}
        self._trainer_checkpoints: list[dict[str, Any]] = []

    # fed by ProvenanceTrainer.training_step
    def micro_batch(self, sample_ids: list[int] | None, loss: torch.Tensor, tokens: int) -> None:
        self.fed = True
        if sample_ids is not None:
            self._ids.extend(sample_ids)
        loss = loss.detach().float().cpu()
        self._loss = loss if self._loss is None else self._loss + loss
        self._tokens += tokens
        self._micro += 1

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import transformers

        self._info = {"schema": formats.HF_TRAINER_SCHEMA, "transformers_version": transformers.__version__,
                      "trainer_class": self.trainer_class, "arguments": _jsonable(args.to_dict()),
                      "gradient_accumulation_steps": args.gradient_accumulation_steps,
                      "per_device_train_batch_size": args.per_device_train_batch_size,
                      "world_size": args.world_size, "max_steps": state.max_steps,
                      "data_order": "per optimizer step: the sample ids of its micro-batches, concatenated, "
                                    "as the Trainer's sampler produced them (order/rank<R>.*)",
                      "loss": "per optimizer step: the sum of training_step's returned losses over its "
                              "micro-batches (scaled for gradient accumulation), full precision",
                      "trainer_checkpoints": []}
        self._write_info()
        self._t0 = time.perf_counter()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t0 = time.perf_counter()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if optimizer is not None:
            self._lr = float(optimizer.param_groups[0]["lr"])

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                    **kwargs: Any) -> None:
        step = int(state.global_step)
        ids, loss, tokens, micro = self._ids, self._loss, self._tokens, self._micro
        self._ids, self._loss, self._tokens, self._micro = [], None, 0, 0
        if not self.fed:
            return
        try:
            self.run.record_batch(step, ids)  # the Trainer chose the batch: recorded, and compared in a replay
        except StopRun:  # a replay reached the last step it was asked to check
            self.stopped = True
            control.should_training_stop = True
            return
        self.tokens_seen += tokens
        metrics: dict[str, Any] = {"loss": loss.item() if loss is not None else None, "lr": self._lr,
                                   "tokens": tokens, "tokens_seen": self.tokens_seen, "micro_batches": micro,
                                   "step_time": time.perf_counter() - self._t0}
        self.run.log(step, **metrics)
        every = self.checkpoint_every
        if every and model is not None and (step % every == 0 or step == state.max_steps):
            self.run.checkpoint(step, model, optimizer, tokens_seen=self.tokens_seen)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
        clean = {k: v for k, v in (metrics or {}).items()
                 if isinstance(v, int | float) and not isinstance(v, bool) and not any(t in k for t in _TIMING)}
        if clean:
            self.run.log_eval(int(state.global_step), **clean)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and self.run.writer is not None:
            self.run.append_jsonl(HF_TRAINER_LOG, {"step": int(state.global_step), **_jsonable(logs)})

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir() or self.run.rank != 0:
            return
        files = {p.relative_to(folder).as_posix(): f"sha256:{sha256_file(p)}"
                 for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}
        self._trainer_checkpoints.append({"step": int(state.global_step), "folder": folder.name, "files": files})
        self.run.event("hf_trainer_checkpoint", step=int(state.global_step), folder=folder.name, files=len(files))
        self._write_info()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.fed:
            self.run.event("hf_callback_not_fed", message="the Trainer is not a ProvenanceTrainer: no data order "
                            "and no exact losses were recorded")
        self._info["steps_trained"] = int(state.global_step)
        self._info["stopped_by_replay"] = self.stopped
        self._write_info()

    def _write_info(self) -> None:
        if self._info and self.run.writer is not None:
            self.run.add_file(HF_TRAINER_JSON, obj={**self._info, "trainer_checkpoints": self._trainer_checkpoints,
                                                    "updated_at": formats.utc_now()})


class ProvenanceTrainerMixin:
    """Mix into any Trainer subclass: takes the sample ids out of each batch and feeds the callback."""

    provenance: ProvenanceCallback

    def _provenance_setup(self, run: Run, checkpoint_every: int | None) -> None:
        self.provenance = ProvenanceCallback(run, checkpoint_every)
        self.provenance.trainer_class = f"{type(self).__module__}.{type(self).__qualname__}"
        self.add_callback(self.provenance)  # type: ignore[attr-defined]
        args = self.args  # type: ignore[attr-defined]
        if args.remove_unused_columns:  # it would drop `sample_id` from the items before the collator sees it
            args.remove_unused_columns = False
        if args.report_to not in ([], None, "none", ["none"]):
            run.event("hf_report_to", report_to=args.report_to)

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        ids = inputs.pop(SAMPLE_IDS, None)
        mask = inputs.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        loss = super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]
        self.provenance.micro_batch(ids.tolist() if ids is not None else None, loss, tokens)
        return loss

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        inputs.pop(SAMPLE_IDS, None)  # evaluation batches
        return super().compute_loss(model, inputs, *args, **kwargs)  # type: ignore[misc]


class ProvenanceTrainer(ProvenanceTrainerMixin, Trainer):
    def __init__(self, *args: Any, run: Run, checkpoint_every: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._provenance_setup(run, checkpoint_every)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            pass
    return str(obj)
