"""A recorded tokenization step: the training split as one flat uint16 token stream.

    tokens = tokenize_corpus(corpus, tokenizer_spec, tokenizer, window=block_size)

Each story of train.jsonl, in file order, encoded without special tokens and followed by the end
token, concatenated into `train.bin` (little-endian uint16). The dataset's manifest names what it
was made from: the digest of the corpus manifest (sha256 of its canonical compact JSON, the bundle's
copy without `bundled_files`), the corpus' Merkle root and the tokenizer file's sha256. A sample id
is a window index: sample k is tokens [k*window, (k+1)*window) (layout `token-stream`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from provenance import formats
from provenance.capture.data import DatasetSpec, build_manifest

TOKENS_FILE = "train.bin"
CODE = "training/tokens.py"


def tokenize_corpus(corpus: DatasetSpec, tok_spec: DatasetSpec, tokenizer: Any, window: int) -> DatasetSpec:
    from training.data import EOS

    source_manifest = build_manifest(corpus)  # the hash cache makes this a lookup for an unchanged corpus
    tok_file = tok_spec.root / "tokenizer.json"
    tok_sha = hashlib.sha256(tok_file.read_bytes()).hexdigest()
    out = corpus.root / f"tokens-{tok_sha[:16]}"
    eos = tokenizer.convert_tokens_to_ids(EOS)
    if len(tokenizer) > 65536:
        raise ValueError(f"a vocabulary of {len(tokenizer)} does not fit in uint16 tokens")
    texts = [json.loads(line)["text"] for line in
             (corpus.root / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    stream = np.fromiter((t for x in ids for t in (*x, eos)), dtype="<u2")
    data = stream.tobytes()
    target = out / TOKENS_FILE
    if not target.is_file() or target.read_bytes() != data:
        formats.atomic_write_bytes(target, data)
    return DatasetSpec(
        name=f"{corpus.name}-tokens",
        root=out,
        files=[TOKENS_FILE],
        source={"type": "derived", "step": "tokenize", "code": CODE, "from": corpus.name,
                "from_manifest": formats.config_digest(source_manifest),
                "from_manifest_digest": "sha256 of the canonical compact JSON of the source's data manifest "
                                        "(without bundled_files)",
                "from_merkle_root": source_manifest["merkle"]["root"], "from_file": "train.jsonl",
                "tokenizer": formats.digest_str(tok_sha), "tokenizer_dataset": tok_spec.name,
                "tokenizer_file": "tokenizer.json", "eos_id": eos, "dtype": "uint16",
                "definition": "every record's text, in file order, encoded without special tokens, then eos",
                "local_path": str(out)},
        license=corpus.license,
        in_bundle=corpus.in_bundle,
        layout={"type": "token-stream", "dtype": "uint16", "window": window, "sample": "window"},
    )


def n_windows(spec: DatasetSpec) -> int:
    assert spec.layout is not None
    return (spec.root / TOKENS_FILE).stat().st_size // 2 // int(spec.layout["window"])


def windows(spec: DatasetSpec) -> list[list[int]]:
    """Sample k: tokens [k*window, (k+1)*window) of the stream (read once, as the manifest hashed it)."""
    assert spec.layout is not None
    w = int(spec.layout["window"])
    tokens = np.fromfile(spec.root / TOKENS_FILE, dtype="<u2").astype(np.int64)
    n = len(tokens) // w
    return tokens[: n * w].reshape(n, w).tolist()
