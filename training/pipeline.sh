#!/usr/bin/env bash
# `make pipeline`: the default open model as a graph of runs, offline, end to end (docs/lineage.md).
#   data: generate -> filter/dedup -> tokenize, and the arithmetic subset   (four `prov run` steps)
#   stage 1: pretraining on the filtered corpus with the recorded tokenizer
#   stage 2: continued training on the arithmetic subset, lower lr, warm-started from stage 1's last checkpoint
#   merge: the two stages' final checkpoints averaged (prov merge)
#   then prov lineage, prov audit --lineage and prov release --lineage on the merged model.
# Sizes are reduced so that it takes a few minutes on 2 cores; every size is an environment variable.
set -euo pipefail
PY=${PY:-.venv/bin/python}
PROV="$PY -m provenance.cli"
OUT=${PIPELINE_DIR:-runs/pipeline-$(date -u +%Y%m%dT%H%M%SZ)}
STORIES=${PIPELINE_STORIES:-6000}
STEPS1=${PIPELINE_STEPS1:-240}
STEPS2=${PIPELINE_STEPS2:-80}
VOCAB=${PIPELINE_VOCAB:-1024}
KEY=${RELEASE_KEY:-$HOME/.config/fullyopen/release-key.pem}
if [ -e "$OUT" ]; then echo "make pipeline: $OUT exists; refusing to overwrite it" >&2; exit 2; fi
mkdir -p "$OUT/.work"
W="$OUT/.work"  # the steps' scratch folders (the store skips hidden folders)
say() { printf '\n== %s\n' "$*"; }
run_of() { sed -n 's/^run: //p' | tail -1; }  # the bundle folder a `prov run` or training prints

say "data 1/4: generate ($STORIES stories)"
G=$($PROV run --name data-generate --runs-dir "$OUT" --license CC0-1.0 --outputs "$W/raw" -- \
    "$PY" -m training.prepare generate --out "$W/raw" --n-stories "$STORIES" ${PIPELINE_GENERATE_ARGS:-} 2>&1 | tee /dev/stderr | run_of)
say "data 2/4: filter and dedup"
F=$($PROV run --name data-filter --runs-dir "$OUT" --license CC0-1.0 --data "raw=$G/outputs/raw" \
    --outputs "$W/corpus" -- "$PY" -m training.prepare filter --input "$G/outputs/raw" --out "$W/corpus" \
    2>&1 | tee /dev/stderr | run_of)
say "data 3/4: tokenize (train the BPE tokenizer)"
K=$($PROV run --name data-tokenize --runs-dir "$OUT" --license CC0-1.0 --data "corpus=$F/outputs/corpus" \
    --outputs "$W/tokenizer" -- "$PY" -m training.prepare tokenize --input "$F/outputs/corpus" \
    --out "$W/tokenizer" --vocab-size "$VOCAB" 2>&1 | tee /dev/stderr | run_of)
say "data 4/4: the arithmetic subset"
A=$($PROV run --name data-subset --runs-dir "$OUT" --license CC0-1.0 --data "corpus=$F/outputs/corpus" \
    --outputs "$W/arith" -- "$PY" -m training.prepare subset --input "$F/outputs/corpus" --out "$W/arith" \
    2>&1 | tee /dev/stderr | run_of)
TRAIN=("$PY" -m training.train --config configs/tiny-lm.yaml "run.runs_dir=$OUT" data.source=local
       data.manifest=null "data.root=$W/data" "tokenizer.path=$K/outputs/tokenizer" ${PIPELINE_ARGS:-})
say "stage 1: pretraining ($STEPS1 steps)"
S1=$("${TRAIN[@]}" run.name=stage1-pretrain "data.path=$F/outputs/corpus" "train.steps=$STEPS1" \
     "train.eval_every=$STEPS1" "train.checkpoint_every=$((STEPS1 / 2))" 2>&1 | tee /dev/stderr | run_of)
say "stage 2: continued training on the arithmetic subset ($STEPS2 steps, lr 1e-3, warm start)"
S2=$("${TRAIN[@]}" run.name=stage2-arith "data.path=$A/outputs/arith" "train.steps=$STEPS2" \
     train.lr=0.001 train.min_lr=0.0001 train.warmup_steps=10 "train.eval_every=$STEPS2" \
     "train.checkpoint_every=$STEPS2" "run.init_from=$S1/checkpoints/step-$(printf %08d "$STEPS1").safetensors" \
     2>&1 | tee /dev/stderr | run_of)
say "merge: the two stages' final checkpoints, uniform"
S2_ROOT=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["subject"][0]["digest"]["sha256"])' \
          "$S2/manifest.json")
$PROV merge "$S1/checkpoints/step-$(printf %08d "$STEPS1").safetensors" \
    "$S2/checkpoints/step-$(printf %08d "$STEPS2").safetensors" --runs-dir "$OUT" --name merged \
    --note "uniform soup of pretraining and the arithmetic stage: keeps the stories, adds the sums" \
    --note-about "sha256:$S2_ROOT" 2>&1 | tee "$W/merge.log"
M=$(sed -n 's/^merged .* into //p' "$W/merge.log")
say "prov lineage"
$PROV lineage "$M" --no-audit --html "$OUT/lineage.html"
say "prov audit --lineage"
$PROV audit "$M" --lineage --no-progress | sed -n '/^LINEAGE/,$p'
say "prov release --lineage"
test -f "$KEY" || $PROV keygen -o "$(dirname "$KEY")"
$PROV release "$M" --key "$KEY" --lineage --no-progress
$PROV audit "$M" --lineage --no-progress > "$W/final-audit.txt" && echo "final prov audit --lineage: PASS ($M)"
echo "graph: $OUT/lineage.html"
