"""Data for the default model: generate the corpus, train the tokenizer, batch by sample id."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from provenance.capture.data import DatasetSpec, data_path, load_manifest
from training import corpus
from training.config import DataConfig, TokenizerConfig

EOS, PAD = "<|endoftext|>", "<|pad|>"


def corpus_dir(cfg: DataConfig) -> Path:
    return data_path(cfg.root) / f"{cfg.name}-v{corpus.GENERATOR_VERSION}-seed{cfg.generator_seed}"


def prepare_corpus(cfg: DataConfig, root_override: Path | None = None) -> DatasetSpec:
    """Generate the corpus unless its files are already there, and describe it for the manifest.

    Existing files are not regenerated: they are verified against the manifest instead.
    """
    out = root_override or corpus_dir(cfg)
    params = {"n_stories": cfg.n_stories, "max_operand": cfg.max_operand}
    if not all((out / f).is_file() for f in corpus.FILES):
        corpus.generate(out, cfg.generator_seed, **params)
    return DatasetSpec(
        name=cfg.name,
        root=out,
        files=list(corpus.FILES),
        source={"type": "generated", "generator": corpus.GENERATOR_NAME, "version": corpus.GENERATOR_VERSION,
                "seed": cfg.generator_seed, "parameters": params, "code": "training/corpus.py",
                "local_path": str(out)},
        license=cfg.license,
        samples_file="train.jsonl",
        expected=load_manifest(cfg.manifest) if cfg.manifest else None,
        in_bundle=cfg.in_bundle,
    )


def train_tokenizer(train_file: Path, cfg: TokenizerConfig, out_dir: Path) -> DatasetSpec:
    """Byte-level BPE (digits split one by one) trained on the training split."""
    import tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                  special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [json.loads(line)["text"] for line in train_file.read_text(encoding="utf-8").splitlines()]
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".tokenizer.json.tmp"
    tok.save(str(tmp))
    dest = out_dir / "tokenizer.json"
    if dest.is_file() and dest.read_bytes() == tmp.read_bytes():
        tmp.unlink()  # the same tokenizer: the file (and its mtime) stays, so the hash cache still knows it
    else:
        tmp.replace(dest)
    return DatasetSpec(
        name="tokenizer",
        root=out_dir,
        files=["tokenizer.json"],
        source={"type": "derived", "from": f"{train_file.parent.name}/{train_file.name}",
                "trainer": "tokenizers.trainers.BpeTrainer", "tokenizers_version": tokenizers.__version__,
                "parameters": {"vocab_size": cfg.vocab_size, "min_frequency": cfg.min_frequency,
                               "pre_tokenizer": "Digits(individual)+ByteLevel", "special_tokens": [EOS, PAD]},
                "code": "training/data.py", "local_path": str(out_dir)},
        license="CC0-1.0",
    )


def existing_tokenizer(folder: str | Path) -> DatasetSpec:
    """A tokenizer trained elsewhere (tokenizer.path, e.g. a recorded tokenization step's outputs/), used as is."""
    from provenance import ConfigError

    root = Path(folder).resolve()
    if not (root / "tokenizer.json").is_file():
        raise ConfigError(f"tokenizer.path: {folder} holds no tokenizer.json")
    return DatasetSpec(name="tokenizer", root=root, files=["tokenizer.json"], license="CC0-1.0",
                       source={"type": "local", "path": str(root), "local_path": str(root), "code": "training/data.py"})


def load_hf_tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_dir / "tokenizer.json"),
                                   eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=PAD)


def load_texts(spec: DatasetSpec) -> dict[str, list[str]]:
    """Read both splits through `datasets` from the local files (a fresh cache: no stale reads)."""
    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="prov-datasets-") as cache:
        ds = datasets.load_dataset("json", cache_dir=cache, keep_in_memory=True, data_files={
            "train": str(spec.root / "train.jsonl"), "validation": str(spec.root / "validation.jsonl")})
        return {split: list(ds[split]["text"]) for split in ("train", "validation")}


def load_arith_eval(spec: DatasetSpec, limit: int) -> list[dict[str, str]]:
    lines = (spec.root / "arithmetic_eval.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines[:limit]]


def encode(tokenizer: Any, texts: list[str], block_size: int) -> list[list[int]]:
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [[*x, eos][:block_size] for x in ids]


@dataclass
class EpochSampler:
    """Sample ids for each step: a fresh seeded permutation per epoch, full batches only."""

    n_samples: int
    batch_size: int
    seed: int
    algorithm: str = "epoch-randperm"

    def describe(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "seed": self.seed, "batch_size": self.batch_size,
                "n_samples": self.n_samples, "drop_last": True,
                "definition": "step s (1-based) takes positions [(s-1)*B, s*B) of the concatenation of "
                              "torch.randperm(n, generator=manual_seed(seed + epoch)) over epochs"}

    def batch(self, step: int) -> list[int]:
        per_epoch = self.n_samples // self.batch_size
        epoch, k = divmod(step - 1, per_epoch)
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.n_samples, generator=g)
        return perm[k * self.batch_size:(k + 1) * self.batch_size].tolist()


def collate(samples: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        input_ids[i, :len(s)] = torch.tensor(s)
        attn[i, :len(s)] = 1
    labels = input_ids.masked_fill(attn == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attn, "labels": labels}
