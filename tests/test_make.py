"""The Makefile front end: what `make -n` would run for the documented targets (nothing is executed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(*args: str) -> str:
    out = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout


def docker_run_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("docker run"))


def test_docker_run_all_rows_with_gpus_cache_and_results_mounted():
    line = docker_run_line(dry_run("docker-run", "HF_CACHE=/hf", "RESULTS=/tmp/r", "USER_ID=1234", "GROUP_ID=99"))
    assert "--gpus all" in line and "--user 1234:99" in line
    assert '-v "/hf":/hf-cache' in line and '-v "/tmp/r":/app/results' in line
    assert line.rstrip().endswith("ptuning:latest run-all")


def test_docker_run_one_job_and_variables():
    line = docker_run_line(dry_run("docker-run", "JOB=lora_8_peft", "IMAGE=me/pt:1", "GPUS=device=1"))
    assert line.rstrip().endswith("me/pt:1 run lora_8_peft") and "--gpus device=1" in line
    assert "--gpus" not in docker_run_line(dry_run("docker-run", "GPUS="))
    # the image a result ran in is recorded in it (environment.image)
    assert "-e PTUNING_IMAGE=me/pt:1 -e PTUNING_IMAGE_ID=$(docker image inspect -f '{{.Id}}' me/pt:1 2>/dev/null)" in line


def test_local_run_targets():
    assert ".venv/bin/ptuning run-all --output-dir results" in dry_run("run", "-W", ".venv/bin/ptuning")
    assert ".venv/bin/ptuning run lora_8 --output-dir results" in dry_run("run", "JOB=lora_8", "-W", ".venv/bin/ptuning")


def test_bench_target_writes_markdown_and_json_under_results():
    line = dry_run("bench", "ARGS=--concurrency 4", "-W", ".venv/bin/ptuning")
    assert ".venv/bin/ptuning bench --output results/bench.md --json results/bench.json --concurrency 4" in line
