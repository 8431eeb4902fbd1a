#!/usr/bin/env bash
# Run HERE (a machine with PyPI), before the GPU check: puts into ./.whl the pinned wheels that the GPU machine
# (Python 3.12, torch and transformers 5.x preinstalled, no package index; /work/.library/device/KINDS.md) lacks.
# It uses ../shared/tools/device-wheels.sh (transformers 4.57.6, tokenizers, huggingface_hub, adapters, peft,
# datasets and what datasets/OpenDelta import that the machine lacks: dill, multiprocess, fsspec, hf-xet, web.py and
# its deps) plus the pins below. Everything else ptuning imports is already there (click, tabulate, tqdm, pyyaml,
# matplotlib, numpy, sentencepiece, protobuf, rich, pytest, hypothesis, accelerate, safetensors, pyarrow, xxhash).
# Usage: scripts/gpu-prep.sh [NAME==VERSION ...]   (then the `run` call at the top of scripts/gpu-check.sh, with carry [".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
tool=$(cd .. && pwd)/shared/tools/device-wheels.sh
[ -f "$tool" ] || { echo "gpu-prep: $tool not found" >&2; exit 1; }
# Pins beyond the tool's list: none needed (checked 2026-11 against each carried wheel's Requires-Dist and the
# machine's package list: aiohttp, pyarrow, pandas, httpx, xxhash, psutil, accelerate 1.15.0, safetensors 0.8.0 are
# there, the last two at the versions our suite passed with). More can be given as arguments: NAME==VERSION ...
extra=("$@")
# The tool appends /.whl/ to .git/info/exclude, which a git worktree (.git is a file) does not have: run it in a
# scratch folder with one, then move the wheels here (.gitignore ignores /.whl/ and /.site/ in this repo).
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/.git/info"
(cd "$scratch" && bash "$tool" "${extra[@]}")
rm -rf .whl
mv "$scratch/.whl" .whl
# one version of each distribution, or pip's install there stops
wheels=(.whl/*.whl)
dupes=$(printf '%s\n' "${wheels[@]##*/}" | sed -E 's/-[0-9][^-]*-.*//' | tr 'A-Z_.' 'a-z--' | sort | uniq -d)
[ -z "$dupes" ] || { echo "gpu-prep: two versions of: $dupes" >&2; exit 1; }
printf '%s\n' "${wheels[@]##*/}"
echo "gpu-prep: ${#wheels[@]} wheels, $(du -sk .whl | cut -f1) KiB in .whl (the device tool carries at most 64 MiB with the tree)"
