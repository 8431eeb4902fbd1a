"""Shared by the `ptuning submit` tests: a folder of two real job files, the tiny assets, and helpers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import JOBS, REPO

#: two rows of the table, each run once per seed by the tests
JOB_NAMES = ("lora_8", "full_ft")


@pytest.fixture(scope="session")
def two_jobs(tmp_path_factory) -> Path:
    """A jobs folder holding the project's _defaults.yaml and two of its job files, unchanged."""
    folder = tmp_path_factory.mktemp("jobs")
    for name in ("_defaults", *JOB_NAMES):
        shutil.copy(JOBS / f"{name}.yaml", folder)
    return folder


def run_args(model: Path, data: Path, epochs: int = 1, train: int = 32, evals: int = 16) -> list[str]:
    """Short CPU runs on the tiny assets (32 training reviews in batches of 8: 4 steps an epoch)."""
    return ["--model", str(model), "--dataset", str(data), "--epochs", str(epochs), "--train-limit", str(train),
            "--eval-limit", str(evals), "--set", "batch_size=8", "--set", "max_length=32", "--device", "cpu"]


def ptuning(jobs_dir: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`ptuning --jobs-dir JOBS ARGS...` in a subprocess (as a user types it)."""
    return subprocess.run([sys.executable, "-m", "ptuning.cli", "--jobs-dir", str(jobs_dir), *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})},
                          cwd=REPO, timeout=timeout)


def metrics(out: Path, job: str, seed: int = 0) -> list[tuple[float, float]]:
    """A completed run's per-epoch (train loss, test accuracy): equal for equal runs on CPU."""
    data = json.loads((out / job / f"seed{seed}" / "result.json").read_text())
    assert data["status"] == "completed", data
    return [(e["train_loss"], e["accuracy"]) for e in data["epochs"]]


def all_metrics(out: Path, seeds=(0, 1)) -> dict:
    return {(job, seed): metrics(out, job, seed) for job in JOB_NAMES for seed in seeds}


@pytest.fixture(scope="session")
def reference(two_jobs, tiny_model_dir, tiny_data_dir, tmp_path_factory) -> dict:
    """The two jobs × seeds 0 and 1 run by a plain `ptuning run-all`, one run after another: what every executor
    must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference")
    done = ptuning(two_jobs, "run-all", "--seeds", "0,1", *run_args(tiny_model_dir, tiny_data_dir), "--output-dir", str(out))
    assert done.returncode == 0, done.stderr
    return all_metrics(out)
