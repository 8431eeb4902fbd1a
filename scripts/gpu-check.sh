#!/usr/bin/env bash
# GPU check of the fast path (never run yet: written on a CPU-only machine).
# Prepare on a machine with an index:  ../shared/tools/device-wheels.sh   (puts the pinned wheels in .whl/)
# Then on the GPU machine, from the repository root:  bash scripts/gpu-check.sh
# Writes results/BENCHMARKS.md (bench: exercise loop vs fast path, in one run) and results/gpu-check/ (a
# scaled-down run-all with --concurrency, tiny offline model: it checks the machinery, its accuracies mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python3 -c "import transformers, sys; sys.exit(transformers.__version__ != '4.57.6')" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl
  export PYTHONPATH="$PWD/.site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PT="python3 -m ptuning.cli"
nvidia-smi --query-gpu=name,memory.total --format=csv || true
mkdir -p results
# 1. exactness first (fast decode == generate, on CPU and on this GPU's torch build), a few seconds
python3 -m pytest -q -x tests/test_fast.py -k "greedy or fast_predict or bucket or fast_training" -p no:cacheprovider
# 2. bench: eager fast path on two rows, then with torch.compile
$PT bench --device cuda --size t5-small --steps 50 --rows full_ft,lora_8_peft --output results/BENCHMARKS.md
$PT bench --device cuda --size t5-small --steps 50 --rows full_ft --compile --output results/BENCHMARKS-compile.md || echo "compile bench failed"
# 3. scaled-down run-all, 4 at a time, fast path, on the tiny offline assets (checks concurrency + fast path on CUDA)
ASSETS=$(python3 -c "from ptuning.smoke import prepare; m, d = prepare(); print(m, d)")
set -- $ASSETS
$PT run-all --concurrency 4 --model "$1" --dataset "$2" --epochs 1 --device cuda --output-dir results/gpu-check
echo "done: results/BENCHMARKS.md, results/BENCHMARKS-compile.md, results/gpu-check/"
