"""Data preparation steps: generate -> filter/dedup -> tokenize, and the arithmetic subset.
A plain script (no provenance imports): each step is recorded by running it under `prov run` (see `make pipeline`):

    prov run --name data-generate --outputs work/raw -- python -m training.prepare generate --out work/raw
    prov run --name data-filter --data raw=runs/<gen>/outputs/raw --outputs work/corpus -- \\
        python -m training.prepare filter --input runs/<gen>/outputs/raw --out work/corpus
    prov run --name data-tokenize --data corpus=runs/<filter>/outputs/corpus --outputs work/tokenizer -- \\
        python -m training.prepare tokenize --input runs/<filter>/outputs/corpus --out work/tokenizer
    prov run --name data-subset --data corpus=runs/<filter>/outputs/corpus --outputs work/arith -- \\
        python -m training.prepare subset --input runs/<filter>/outputs/corpus --out work/arith

Each step reads the previous bundle's outputs/ (declared with --data, so lineage.json links it to
that bundle by digest) and writes a folder that `prov run --outputs` copies into its own bundle.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from training import corpus as corpus_gen

FILES = list(corpus_gen.FILES)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def generate(args: argparse.Namespace, out: Path) -> dict[str, int]:
    corpus_gen.generate(out, args.seed, n_stories=args.n_stories, max_operand=args.max_operand)
    return {f"records_{Path(f).stem}": len(_lines(out / f)) for f in FILES}


def filter_dedup(args: argparse.Namespace, out: Path) -> dict[str, int]:
    """Exact dedup of the training split; drop empty records and training records that appear
    in the validation or evaluation split. The other splits pass through unchanged."""
    src = Path(args.input)
    held_out = {line for f in FILES[1:] for line in _lines(src / f)}
    seen: set[str] = set()
    kept: list[str] = []
    dups = leaked = empty = 0
    for line in _lines(src / "train.jsonl"):
        if not str(json.loads(line).get("text", "")).strip():
            empty += 1
        elif line in seen:
            dups += 1
        elif line in held_out:
            leaked += 1
        else:
            seen.add(line)
            kept.append(line)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(x + "\n" for x in kept), encoding="utf-8")
    for f in FILES[1:]:
        (out / f).write_bytes((src / f).read_bytes())
    return {"kept": len(kept), "duplicates": dups, "held_out_overlap": leaked, "empty": empty}


def tokenize(args: argparse.Namespace, out: Path) -> dict[str, int]:
    """The byte-level BPE of the default training script, trained on the filtered training split."""
    from training.config import TokenizerConfig
    from training.data import train_tokenizer

    train_tokenizer(Path(args.input) / "train.jsonl", TokenizerConfig(vocab_size=args.vocab_size), out)
    return {"vocab_size": len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"])}


ARITH = re.compile(r"^\d+\+\d+=\d+$")


def subset(args: argparse.Namespace, out: Path) -> dict[str, int]:
    """The arithmetic subset of the training split (records that are a sum: `a+b=c`); the other splits
    pass through unchanged (a second training stage continues on it)."""
    src = Path(args.input)
    lines = _lines(src / "train.jsonl")
    kept = [line for line in lines if ARITH.match(str(json.loads(line).get("text", "")))]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(x + "\n" for x in kept), encoding="utf-8")
    for f in FILES[1:]:
        (out / f).write_bytes((src / f).read_bytes())
    return {"kept": len(kept), "dropped": len(lines) - len(kept)}


STEPS = {"generate": generate, "filter": filter_dedup, "tokenize": tokenize, "subset": subset}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=sorted(STEPS))
    p.add_argument("--out", required=True, help="the folder this step writes")
    p.add_argument("--input", default=None, help="the previous step's folder (filter, tokenize)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--n-stories", type=int, default=12000)
    p.add_argument("--max-operand", type=int, default=49)
    p.add_argument("--vocab-size", type=int, default=1024)
    args = p.parse_args(argv)
    if args.step != "generate" and (not args.input or not Path(args.input).is_dir()):
        print(f"error: {args.step}: --input must be the previous step's folder", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: --out {out} is not empty; refusing to overwrite", file=sys.stderr)
        return 2
    stats = STEPS[args.step](args, out)
    print(f"{args.step}: {json.dumps(stats, sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
