"""The default corpus: templated short stories plus arithmetic facts.

Seeded and versioned: the same (GENERATOR_VERSION, seed, sizes) gives the same
bytes on every machine. Bump GENERATOR_VERSION whenever the output changes.

Files written into the output folder:
  train.jsonl        {"text": ...} one record a line (stories and sums, shuffled)
  validation.jsonl   held-out stories and sums (sums whose operand pairs never appear in train)
  arithmetic_eval.jsonl  {"prompt": "a+b=", "answer": "c"} for the held-out pairs
"""

from __future__ import annotations

import json
import random
from pathlib import Path

GENERATOR_NAME = "fullyopen-tiny-corpus"
GENERATOR_VERSION = "1.0.0"
FILES = ("train.jsonl", "validation.jsonl", "arithmetic_eval.jsonl")

NAMES = ["Ada", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Juno", "Kai", "Lena",
         "Milo", "Nia", "Otto", "Pia", "Quin", "Rosa", "Sami", "Tess", "Uma", "Vik", "Wren", "Zoe"]
ANIMALS = ["fox", "owl", "cat", "dog", "bear", "frog", "duck", "mouse", "rabbit", "turtle", "goat", "crow"]
PLACES = ["a small village", "the deep forest", "a quiet harbor", "the old mill", "a sunny meadow",
          "the snowy hills", "a busy market", "the river bank", "a tall tower", "the green valley"]
ACTIVITIES = ["baked bread", "read old books", "counted the stars", "planted seeds", "sang by the fire",
              "fixed broken clocks", "painted the fences", "caught fish", "drew maps", "knitted warm hats"]
OBJECTS = ["a golden key", "a lost letter", "a tiny boat", "a glowing stone", "a silver bell",
           "a map of the sea", "a box of buttons", "a red kite", "a sleeping kitten", "a jar of honey"]
FEELINGS = ["happy", "curious", "brave", "surprised", "worried", "proud", "calm", "excited"]
ENDINGS = ["shared it with a friend", "took it home", "showed it to everyone", "hid it under a tree",
           "wrote a song about it", "gave it to the mayor", "kept it safe forever", "followed where it led"]
FRIENDS_SAY = ["That is wonderful", "What a day", "Let us go together", "I knew you could do it",
               "Be careful", "Tell me more"]


def _story(rng: random.Random) -> str:
    name, friend = rng.sample(NAMES, 2)
    animal = rng.choice(ANIMALS)
    parts = [
        f"Once upon a time, {name} the {animal} lived in {rng.choice(PLACES)}.",
        f"Every day {name} {rng.choice(ACTIVITIES)}.",
        f"One day, {name} found {rng.choice(OBJECTS)}.",
        f"{name} felt {rng.choice(FEELINGS)} and {rng.choice(ENDINGS)}.",
    ]
    if rng.random() < 0.5:
        parts.append(f'{friend} said, "{rng.choice(FRIENDS_SAY)}, {name}!"')
    parts.append("The end.")
    return " ".join(parts)


def _sum_text(a: int, b: int) -> str:
    return f"{a}+{b}={a + b}"


def generate(out_dir: str | Path, seed: int, n_stories: int = 12000, max_operand: int = 49,
             heldout_fraction: float = 0.1) -> dict[str, object]:
    """Write the corpus into out_dir; return what was made (counts, version, seed)."""
    rng = random.Random(f"{GENERATOR_NAME}/{GENERATOR_VERSION}/{seed}")
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    rng.shuffle(pairs)
    n_held = max(1, int(len(pairs) * heldout_fraction))
    held, seen = pairs[:n_held], pairs[n_held:]

    n_val_stories = max(1, n_stories // 20)
    train = [_story(rng) for _ in range(n_stories)]
    train += [_sum_text(a, b) for (a, b) in seen for _ in range(2)]
    rng.shuffle(train)
    validation = [_story(rng) for _ in range(n_val_stories)] + [_sum_text(a, b) for (a, b) in held]
    rng.shuffle(validation)
    arith_eval = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for (a, b) in held]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = {
        "train.jsonl": [{"text": t} for t in train],
        "validation.jsonl": [{"text": t} for t in validation],
        "arithmetic_eval.jsonl": arith_eval,
    }
    for name, rows in records.items():
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        tmp = out / f".{name}.tmp"
        tmp.write_text(data, encoding="utf-8")
        tmp.replace(out / name)
    return {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "parameters": {"n_stories": n_stories, "max_operand": max_operand, "heldout_fraction": heldout_fraction},
        "records": {name: len(rows) for name, rows in records.items()},
    }
