#!/usr/bin/env bash
# GPU check of the fast path, for a machine with an NVIDIA GPU: `ptuning bench`, then a scaled-down `ptuning run-all`
# over every row whose measured time is compared with the bench's projection, all on a random-weight model with
# t5-small's shapes and synthetic IMDb-length reviews (no hub, no download; the accuracies mean nothing).
# docs/speed.md says what it measures and what it writes.
#
# Usage: bash scripts/gpu-check.sh [--device cuda|cpu] [--quick] [--budget S] [--concurrency K] [--work DIR]
#                                  [--epochs E] [--train-limit N] [--eval-limit M]
#   With this checkout's .venv: `make gpu-check` (ARGS="--budget 900" for more time). PYTHON=... picks the
#   interpreter (default python3).
#   --budget S (default 420): the whole script ends within about S seconds whatever happens: each step has a
#   timeout cut to what the budget leaves; a step that fails or runs out of time is reported and the next one runs.
#   --quick: tiny sizes (bench's `small` model, 64 train / 32 test reviews, 1 epoch): the same steps in 2 to 3
#   minutes on 2 CPU cores (what tests/speed/test_gpu_check.py runs); CPU numbers say nothing about a GPU.
#
# A GPU machine without a package index (Python 3.12 and a CUDA torch installed, nothing else reachable):
#   1. on a machine with PyPI: scripts/gpu-prep.sh (the pinned wheels such a machine lacks -> .whl/, about 22 MB);
#   2. copy the checkout with .whl/ to the GPU machine and run  PYTHONUNBUFFERED=1 bash scripts/gpu-check.sh
#      there: unless the pinned transformers already imports, it installs .whl/*.whl into .site/
#      (pip --no-index --no-deps --target) and puts .site/ ahead of the installed packages; it stops at once unless
#      transformers 4.57.6 is the one imported.
#
# Everything goes to --work (default results/gpu-check/; results/ is ignored by git): BENCHMARKS.md, gpu-check.log,
# tables.md, bench.md, bench.json, summary.json, equivalence.md, bench-eager.md (and assets.txt, overheads.json,
# profile.md, bench-compile.md). With --device cuda, BENCHMARKS.md is also copied to results/BENCHMARKS.md.
# If OUT is set to a folder, the first eight of those are copied there as they are written (every 15 s while the
# script runs), so a batch job stopped by its time limit still leaves what was measured so far.
#
# Sizes (GPU): the bench times 50 steps and 2,048 reviews per path on full_ft and lora_8_peft. Sized from the
# exercise's loop measured on one H200 (about 70 ms per fp32 step and 36 s per 25,000 reviews decoded; 55-75 ms per
# bf16 eager step and 16 s per 25,000 reviews with batched greedy decoding): about 20 s per row. The run-all:
# 10 rows x 2 epochs x (64 steps of 32 reviews + 2,048 reviews decoded) + zero-shot = 1,280 steps (~83 s at 65 ms)
# + 21 passes over 2,048 reviews (~28 s at 0.64 ms per review) = about 2 minutes of train + eval, plus per-job setup
# (load, tokenize, checkpoint): 2 to 3 minutes in all. The whole script: about 7 minutes (the budget; the compile
# bench at the end takes what is left), 8 at worst.
# Order: stack check, assets, the graphs-vs-eager equivalence (correctness before speed), bench, run-all, the run-all's
# data and tables/plots timed apart (they join the projection of its wall time; summary.json keeps them), then, while
# the budget lasts, a profile of the training step (kernels per step, eager and graphed: in BENCHMARKS.md, for
# choosing the next lever) and the fast path without graphs and with torch.compile for comparison.
set -uo pipefail
CALLER_DIR=$PWD
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD

DEVICE=cuda QUICK=0 BUDGET=420 CONCURRENCY=1 WORK=$REPO/results/gpu-check EPOCHS="" TRAIN_LIMIT="" EVAL_LIMIT=""
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --budget) BUDGET=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --work) WORK=$2; [[ $WORK == /* ]] || WORK=$CALLER_DIR/$WORK; shift 2 ;;
    --epochs) EPOCHS=$2; shift 2 ;;
    --train-limit) TRAIN_LIMIT=$2; shift 2 ;;
    --eval-limit) EVAL_LIMIT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$QUICK" = 1 ]; then
  SIZE=small N_DATA=256 BENCH_STEPS=2 BENCH_EVAL=16 EQ_STEPS=2 EQ_ROWS=lora_8 BENCH_K=2 PROFILE_STEPS=1 PROFILE_EVAL=16
  EPOCHS=${EPOCHS:-1} TRAIN_LIMIT=${TRAIN_LIMIT:-64} EVAL_LIMIT=${EVAL_LIMIT:-32}
  MODEL_DESC="bench's small shape (2+2 blocks, d_model 64, 32,128-token vocabulary)"
else
  SIZE=t5-small N_DATA=4096 BENCH_STEPS=50 BENCH_EVAL=2048 EQ_STEPS=30 EQ_ROWS=full_ft,lora_8_peft BENCH_K=4 PROFILE_STEPS=10 PROFILE_EVAL=512
  EPOCHS=${EPOCHS:-2} TRAIN_LIMIT=${TRAIN_LIMIT:-2048} EVAL_LIMIT=${EVAL_LIMIT:-2048}
  MODEL_DESC="t5-small's exact shapes (60,506,624 parameters)"
fi
[ "$N_DATA" -ge "$TRAIN_LIMIT" ] && [ "$N_DATA" -ge "$EVAL_LIMIT" ] || N_DATA=$(( TRAIN_LIMIT > EVAL_LIMIT ? TRAIN_LIMIT : EVAL_LIMIT ))
PY=${PYTHON:-python3}
START=$(date +%s)
mkdir -p "$WORK" || exit 1
WORK=$(cd "$WORK" && pwd)
rm -rf "$WORK/runall" "$WORK/cache"
rm -f "$WORK"/{BENCHMARKS.md,gpu-check.log,tables.md,bench.md,bench.json,summary.json,equivalence.md,bench-eager.md} \
  "$WORK"/{assets.txt,bench-compile.md,overheads.json,profile.md}
LOG=$WORK/gpu-check.log
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PTUNING_CACHE="$WORK/cache"

publish() {  # what has been measured so far, to $OUT when it is set
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT"
  for f in BENCHMARKS.md gpu-check.log tables.md bench.md bench.json summary.json equivalence.md bench-eager.md; do
    [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/$f"
  done
  return 0
}

left() { echo $(( START + BUDGET - $(date +%s) )); }

# step NAME WANT RESERVE OUTPUT CMD...: run CMD with a timeout of WANT seconds, cut so that RESERVE seconds of the
# budget remain; skip it when under 10 s would be left. CMD's stdout and stderr go to OUTPUT ('-': this log). Sets
# STATUS to one line that says what happened; returns CMD's status (99: skipped).
step() {
  local name=$1 want=$2 reserve=$3 output=$4 t rc t0
  shift 4
  t=$(( $(left) - reserve ))
  [ "$t" -lt "$want" ] || t=$want
  if [ "$t" -lt 10 ]; then
    STATUS="skipped: the budget (--budget $BUDGET s) was spent"
    echo "== $name: $STATUS"
    return 99
  fi
  echo "== $name (timeout ${t} s, $(left) s of the budget left): $*"
  t0=$(date +%s.%N)
  if [ "$output" = - ]; then timeout -k 15 "$t" "$@"; else timeout -k 15 "$t" "$@" > "$output" 2>&1; fi
  rc=$?
  STEP_SECONDS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) STATUS="completed in $STEP_SECONDS s" ;;
    124|137) STATUS="**stopped by its timeout** ($t s) after $STEP_SECONDS s" ;;
    *) STATUS="**failed** (exit status $rc) after $STEP_SECONDS s; see gpu-check.log" ;;
  esac
  echo "== $name: $STATUS"
  return $rc
}

main() {
  echo "gpu-check: $(date -Is) device $DEVICE, quick $QUICK, budget $BUDGET s, work $WORK"
  # -- 1. the pinned stack: wheels from .whl/ (scripts/gpu-prep.sh) shadow the preinstalled packages
  if [ -d .whl ] && ! "$PY" -c "import sys, transformers; sys.exit(transformers.__version__ != '4.57.6')" 2>/dev/null; then
    local wheels=(.whl/*.whl)
    echo "== installing ${#wheels[@]} wheels from .whl/ into .site/"
    rm -rf .site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target .site "${wheels[@]}" || echo "gpu-check: pip install from .whl failed"
  fi
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  if [ -d .site ]; then export PYTHONPATH="$REPO/.site:$PYTHONPATH"; fi  # ahead of the preinstalled site-packages
  local tv
  tv=$("$PY" -c "import transformers; print(transformers.__version__)" 2>&1 | tail -1)
  echo "transformers: $tv (from $("$PY" -c "import transformers, os; print(os.path.dirname(transformers.__file__))" 2>&1 | tail -1))"
  if [ "$tv" != "4.57.6" ]; then
    echo "gpu-check: transformers $tv, not the pinned 4.57.6: run scripts/gpu-prep.sh on a machine with PyPI and copy .whl/ here; stopping"
    return 1
  fi
  "$PY" - <<'EOF' || { echo "gpu-check: ptuning does not import; stopping"; return 1; }
import importlib, importlib.metadata as md, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
for name in ("tokenizers", "huggingface_hub", "datasets", "peft", "adapters", "opendelta", "accelerate", "safetensors",
             "sentencepiece", "protobuf", "fsspec", "pyarrow"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} MISSING")
import ptuning.cli  # noqa: F401
for module in ("datasets", "peft", "adapters", "ptuning.methods.opendelta_compat", "opendelta"):  # a failure here fails its rows only
    try:
        importlib.import_module(module)
    except Exception as exc:
        print(f"  import {module} FAILED: {type(exc).__name__}: {exc}")
EOF
  CARD=""
  if [[ $DEVICE == cuda* ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "gpu-check: torch sees no CUDA GPU; stopping"; return 1; }
  fi

  # -- 2. the assets: random-weight model + synthetic IMDb-length data, built locally (no hub)
  local assets model="" data=""
  step assets 150 300 "$WORK/assets.txt" "$PY" -m ptuning.speed.gpucheck assets "$WORK/assets" --n-train "$N_DATA" --n-test "$N_DATA" \
    --size "$SIZE"
  cat "$WORK/assets.txt"
  assets=$(tail -1 "$WORK/assets.txt" 2>/dev/null)
  read -r model data <<< "$assets"
  if [ -z "$data" ]; then echo "gpu-check: no assets; stopping"; return 1; fi
  echo "assets: model $model, data $data"

  # -- 3. correctness first: training with the step as CUDA graphs vs eagerly, dropout off (same losses?)
  step equivalence 120 300 - "$PY" -m ptuning.speed.gpucheck equivalence --device "$DEVICE" --steps "$EQ_STEPS" --size "$SIZE" \
    --rows "$EQ_ROWS" --output "$WORK/equivalence.md"
  echo "equivalence step: $STATUS" >> "$WORK/equivalence.md"
  publish

  # -- 4. bench: the exercise's loop vs the fast path, one run (its projection is what the run-all is compared with)
  #    (and BENCH_K processes at once on full_ft's fast path: what run-all --concurrency K gains)
  step bench 240 200 - "$PY" -m ptuning.cli bench --device "$DEVICE" --size "$SIZE" --steps "$BENCH_STEPS" --eval-reviews "$BENCH_EVAL" \
    --rows full_ft,lora_8_peft --concurrency "$BENCH_K" --output "$WORK/bench.md" --json "$WORK/bench.json"
  BENCH_STATUS=$STATUS
  publish

  # -- 5. the scaled-down run-all over every row, timed
  local t0
  t0=$(date +%s.%N)
  step run-all 330 40 - "$PY" -m ptuning.cli run-all --model "$model" --dataset "$data" --epochs "$EPOCHS" --train-limit "$TRAIN_LIMIT" \
    --eval-limit "$EVAL_LIMIT" --device "$DEVICE" --concurrency "$CONCURRENCY" --output-dir "$WORK/runall"
  local rc=$?
  RUNALL_STATUS=$STATUS
  WALL=""
  [ "$rc" = 99 ] || WALL=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  [ -d "$WORK/runall" ] && timeout 45 "$PY" -m ptuning.cli tables --wide --results "$WORK/runall" > "$WORK/tables.md"
  # what the projection needs besides the bench, timed apart with the run-all's functions: each job's data, tables, plots
  if [ -n "$WALL" ]; then
    step overheads 90 20 - "$PY" -m ptuning.speed.gpucheck overheads --model "$model" --dataset "$data" --train-limit "$TRAIN_LIMIT" \
      --eval-limit "$EVAL_LIMIT" --results "$WORK/runall" --output "$WORK/overheads.json"
  fi
  write_report
  publish

  # -- 6. if the budget allows: where a step's time goes (kernels per step, eager and graphed: the next lever), then the
  #    fast path without CUDA graphs (what the graphs bring), then with torch.compile (the profile covers evaluation too)
  step profile 90 20 - "$PY" -m ptuning.speed.gpucheck profile --device "$DEVICE" --size "$SIZE" --steps "$PROFILE_STEPS" \
    --eval-reviews "$PROFILE_EVAL" --rows "$EQ_ROWS" --output "$WORK/profile.md"
  echo "profile step: $STATUS" >> "$WORK/profile.md"
  write_report
  publish
  if [ "$QUICK" = 0 ] && [[ $DEVICE == cuda* ]]; then
    step bench-eager 120 60 - "$PY" -m ptuning.cli bench --device "$DEVICE" --size "$SIZE" --steps 30 --eval-reviews 512 \
      --rows full_ft,lora_8_peft --no-cuda-graphs --output "$WORK/bench-eager.md"
    echo "bench-eager step: $STATUS" >> "$WORK/bench-eager.md"
    step bench-compile 200 20 - "$PY" -m ptuning.cli bench --device "$DEVICE" --size "$SIZE" --steps "$BENCH_STEPS" --eval-reviews 512 \
      --rows full_ft --compile --output "$WORK/bench-compile.md"
    echo "bench-compile step: $STATUS" >> "$WORK/bench-compile.md"
    write_report
  fi
  echo "gpu-check: done in $(( $(date +%s) - START )) s; $WORK/BENCHMARKS.md"
}

write_report() {
  local extra=(--extra "training with CUDA graphs vs eagerly, same weights and data, dropout off=$WORK/equivalence.md"
               --extra "where a training step's time goes (torch.profiler: kernels per step, eager and as a CUDA graph)=$WORK/profile.md"
               --extra "bench of the fast path without CUDA graphs (--no-cuda-graphs)=$WORK/bench-eager.md"
               --extra "bench with --compile (torch.compile reduce-overhead over length buckets)=$WORK/bench-compile.md")
  timeout 45 "$PY" -m ptuning.speed.gpucheck report --bench-json "$WORK/bench.json" --bench-md "$WORK/bench.md" --bench-status "$BENCH_STATUS" \
    --overheads "$WORK/overheads.json" --results "$WORK/runall" ${WALL:+--wall "$WALL"} --runall-status "$RUNALL_STATUS" --card "$CARD" --device "$DEVICE" \
    --epochs "$EPOCHS" --train-limit "$TRAIN_LIMIT" --eval-limit "$EVAL_LIMIT" --concurrency "$CONCURRENCY" \
    --model-desc "$MODEL_DESC" "${extra[@]}" --output "$WORK/BENCHMARKS.md" --summary-json "$WORK/summary.json" > /dev/null \
    || echo "gpu-check: the report failed"
  if [[ $DEVICE == cuda* ]] && [ -f "$WORK/BENCHMARKS.md" ]; then cp "$WORK/BENCHMARKS.md" "$REPO/results/BENCHMARKS.md"; fi
  [ -f "$WORK/BENCHMARKS.md" ] && sed -n '/^## 2\./,/^## 3\./p' "$WORK/BENCHMARKS.md"
}

BENCH_STATUS="not run" RUNALL_STATUS="not run" WALL="" CARD="" STATUS=""
PUBLISHER=""
if [ -n "${OUT:-}" ]; then  # the log so far reaches $OUT even if a time limit stops us mid-step
  ( while sleep 15; do publish; done ) &
  PUBLISHER=$!
fi
main 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
if [ -n "$PUBLISHER" ]; then kill "$PUBLISHER" 2>/dev/null; fi
publish
exit "$rc"
