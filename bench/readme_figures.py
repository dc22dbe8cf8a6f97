"""The README's training figures, from a fresh run of the default config (what `make train` runs).

    .venv/bin/python bench/readme_figures.py                 # trains (minutes), prints the table
    .venv/bin/python bench/readme_figures.py --bundle RUN    # the table of an existing default run
    .venv/bin/python bench/readme_figures.py --write-readme  # and replaces the table in README.md

The table states the CPU and the thread count it was measured on; the numbers are the
run's own evaluations (logs/eval.jsonl) at step 0 and at its last step, so they are what a
fresh clone's `make train` gets on any machine at the same thread count (CPU training is
bitwise repeatable at a fixed thread count; another CPU model may round differently).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- readme-figures:begin -->", "<!-- readme-figures:end -->"


def train_default(work: Path) -> Path:
    """Run the default training (configs/tiny-lm.yaml, nothing else changed) into work/runs; its bundle."""
    cmd = [sys.executable, "-m", "training.train", "--config", "configs/tiny-lm.yaml",
           f"run.runs_dir={work / 'runs'}", f"data.root={work / 'data'}"]
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    (run,) = sorted(p for p in (work / "runs").iterdir() if p.is_dir())
    return run


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def figures(bundle: Path) -> dict[str, Any]:
    evals = {int(e["step"]): e for e in _jsonl(bundle / "logs" / "eval.jsonl")}
    metrics = _jsonl(bundle / "logs" / "metrics.jsonl")
    env = json.loads((bundle / "env" / "environment.json").read_text())
    run = json.loads((bundle / "run.json").read_text())
    hw = env.get("hardware") or {}
    times = sorted(m["step_time"] for m in metrics if isinstance(m.get("step_time"), float))
    last = max(evals)
    return {"untrained": evals[0], "trained": evals[last], "last_step": last, "steps": len(metrics),
            "cpu": hw.get("cpu_model") or "unknown CPU", "cpus": hw.get("cpu_affinity") or hw.get("cpu_count"),
            "threads": (run.get("determinism") or {}).get("num_threads"), "duration_s": run.get("duration_s"),
            "step_time_median_s": times[len(times) // 2] if times else None, "run_id": run.get("run_id")}


def table(f: dict[str, Any]) -> str:
    u, t = f["untrained"], f["trained"]

    def pct(x: float) -> str:
        return f"{100 * x:.1f} %"

    minutes = f["duration_s"] / 60 if f["duration_s"] else math.nan
    return "\n".join([
        f"| | untrained (step 0) | after `make train` (step {f['last_step']}) |",
        "|---|---|---|",
        f"| held-out loss | {u['val_loss']:.4f} | {t['val_loss']:.4f} |",
        f"| held-out perplexity | {u['val_perplexity']:.1f} | {t['val_perplexity']:.2f} |",
        f"| exact match on held-out sums (`a+b=`, pairs never seen in training) | {pct(u['arith_exact_match'])} "
        f"| {pct(t['arith_exact_match'])} |",
        "",
        f"Measured by `bench/readme_figures.py` from a fresh run on {f['cpu']} ({f['cpus']} CPUs available, "
        f"{f['threads']} torch threads): the run took {minutes:.1f} min ({f['steps']} steps, median "
        f"{f['step_time_median_s']:.3f} s a step, evaluations and checkpoints included in the total).",
    ])


def write_readme(text: str) -> None:
    path = REPO / "README.md"
    readme = path.read_text()
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="an existing run of the default config (default: train one)")
    p.add_argument("--write-readme", action="store_true", help="replace the figures block in README.md")
    p.add_argument("--json", action="store_true", help="print the figures as JSON as well")
    args = p.parse_args(argv)
    if args.bundle is None:
        with tempfile.TemporaryDirectory(prefix="readme-figures-") as tmp:
            f = figures(train_default(Path(tmp)))
    else:
        f = figures(args.bundle)
    text = table(f)
    print(text)
    if args.json:
        print(json.dumps(f, indent=2, sort_keys=True))
    if args.write_readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
