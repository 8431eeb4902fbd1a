#!/usr/bin/env bash
# For a GPU machine without a package index. Run it on a machine WITH PyPI access: it downloads into ./.whl the
# pinned wheels that such a machine usually lacks, so that scripts/gpu-check.sh (or your own command) can install
# them there with `pip install --no-index --no-deps --target .site .whl/*.whl`. Copy the checkout, .whl/ included,
# to the GPU machine afterwards (.whl/ is ignored by git).
#
# What the GPU machine is assumed to have already: Python 3.12 (or the version given by GPU_PYTHON_VERSION), a CUDA
# build of torch, and the common packages ptuning imports (click, tabulate, tqdm, pyyaml, matplotlib, numpy,
# sentencepiece, protobuf, rich, accelerate, safetensors, pyarrow, xxhash, pandas, aiohttp, httpx, psutil).
# What it brings: the Hugging Face stack at ptuning's pins (transformers, tokenizers, huggingface_hub, adapters, peft,
# datasets), OpenDelta and web.py, and what those import that such a machine tends not to have. Anything else the
# machine lacks can be added as arguments.
#
# Usage: scripts/gpu-prep.sh [NAME==VERSION ...]
#   GPU_PYTHON_VERSION (default 3.12): the GPU machine's Python, for which the wheels are chosen
#   PYTHON (default python3): the interpreter whose pip downloads them (any Python with pip)
# About 22 MB in 16 wheels. Every wheel is a binary for manylinux x86_64 or a pure-Python one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TARGET_PYTHON=${GPU_PYTHON_VERSION:-3.12}
CONSTRAINTS=requirements/constraints.txt

# ptuning's own pins, read from the one list of them
pin() {
  local line
  line=$(grep -iE "^$1==[^[:space:]]+" "$CONSTRAINTS" | head -1 | awk '{print $1}')
  [ -n "$line" ] || { echo "gpu-prep: no pin for $1 in $CONSTRAINTS" >&2; exit 1; }
  echo "$line"
}
specs=()
for name in transformers tokenizers huggingface_hub adapters peft datasets opendelta web.py; do
  specs+=("$(pin "$name")")
done
# What those import that is not a pin of ptuning's: web.py's (cheroot, multipart and theirs) and datasets' and the
# hub's (dill, multiprocess, fsspec, hf-xet), at versions that work with the pins above.
specs+=(cheroot==11.1.2 multipart==2.0.1 jaraco.functools==4.6.0 more-itertools==11.2.1
        dill==0.4.1 multiprocess==0.70.19 fsspec==2026.4.0 hf-xet==1.8.0)
specs+=("$@")

# Into a fresh folder first: a failed download leaves an earlier .whl/ as it was.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo "gpu-prep: downloading ${#specs[@]} wheels for Python $TARGET_PYTHON, manylinux x86_64: ${specs[*]}"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$TARGET_PYTHON" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$scratch" "${specs[@]}"

# One version of each distribution, or pip's install on the GPU machine stops.
wheels=("$scratch"/*.whl)
dupes=$(printf '%s\n' "${wheels[@]##*/}" | sed -E 's/-[0-9][^-]*-.*//' | tr 'A-Z_.' 'a-z--' | sort | uniq -d)
[ -z "$dupes" ] || { echo "gpu-prep: two versions of: $dupes" >&2; exit 1; }
[ "${#wheels[@]}" -eq "${#specs[@]}" ] || { echo "gpu-prep: ${#wheels[@]} wheels for ${#specs[@]} requirements" >&2; exit 1; }
rm -rf .whl
mv "$scratch" .whl
printf '%s\n' .whl/*.whl
echo "gpu-prep: ${#wheels[@]} wheels, $(du -sk .whl | cut -f1) KiB in .whl/"
