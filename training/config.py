"""The schema of a training config (configs/*.yaml). Every key is listed here."""

from __future__ import annotations

from dataclasses import dataclass, field

from provenance.config import path_field


@dataclass
class DataConfig:
    name: str = "tiny-corpus"
    generator_seed: int = 1234  # seed of training/corpus.py
    n_stories: int = 12000
    max_operand: int = 49
    root: str = "data"  # generated files go to <root>/<name>-v<version>-seed<seed>/
    manifest: str | None = path_field(None)  # committed manifest the data must match (data_manifests/...)
    license: str = "CC0-1.0"
    in_bundle: bool = True  # copy the data files into the bundle (small datasets)
    # where the corpus comes from: generated (training/corpus.py), local (a folder), or hub (a Hub dataset);
    # local and hub read train.jsonl, validation.jsonl and arithmetic_eval.jsonl ({"text": ...} records)
    source: str = "generated"
    path: str | None = path_field(None, must_exist=False)  # source local: the folder (DVC-tracked: pulled if missing)
    hub_repo: str | None = None  # source hub: the dataset repository, e.g. "org/name" (needs network)
    hub_revision: str | None = None  # source hub: the commit sha (40 hex digits); branches and tags are refused
    # lines: a sample is a story (a line of train.jsonl); token-stream: a window of model.block_size tokens of
    # the training split tokenized once into a flat uint16 stream by a recorded step (training/tokens.py)
    layout: str = "lines"


@dataclass
class TokenizerConfig:
    vocab_size: int = 1024
    min_frequency: int = 2
    # a folder holding a trained tokenizer.json (e.g. a tokenization step's outputs/) to use instead of training one
    path: str | None = path_field(None)


@dataclass
class ModelConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0


@dataclass
class TrainConfig:
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 8
    arith_eval_size: int = 250
    checkpoint_every: int = 200
    # shard the model with FSDP2 (torch.distributed.fsdp.fully_shard) under torchrun: checkpoints are then
    # sharded (torch.distributed.checkpoint, checkpoints/step-<N>/); the data order split is the same
    fsdp: bool = False
    # the process group's timeout under torchrun: a collective waiting on a lost rank fails after this
    dist_timeout_s: float = 1800.0


@dataclass
class RunConfig:
    name: str = "tiny-lm"
    # why this run exists: recorded as a decision note (category purpose) at step 0
    purpose: str | None = None
    runs_dir: str = "runs"
    seed: int = 1337
    threads: int = 2  # torch intra-op threads; CPU runs are bitwise repeatable only at a fixed count
    deterministic: bool = True
    license: str = "Apache-2.0"  # license of the weights and code released with the run
    resume_from: str | None = path_field(None)  # a checkpoint (.safetensors, or a DCP folder) to continue from
    # what a resume may change from the segment it continues: world_size, data, config, or config keys
    allow_resume_change: list[str] = field(default_factory=list)
    # warm start: the weights (only) of a checkpoint or a bundle's model/; recorded as an `init` lineage edge
    init_from: str | None = path_field(None)
    # documents a run cannot produce by itself: file paths or URLs, checked for presence by audit
    documents: dict[str, str] = field(default_factory=dict)
    # mirror config and metrics to Weights & Biases (offline without an API key; WANDB_MODE=disabled wins)
    wandb: bool = False
    wandb_project: str = "fullyopen"
    wandb_entity: str | None = None


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
