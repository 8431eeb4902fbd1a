"""A results folder with all eleven rows as a real run would leave it: three seeds, ten epochs, t5-small's counts."""

from __future__ import annotations

import pytest

from ptuning.report import results
from ptuning.settings import load_all_jobs
from tests.conftest import JOBS

#: trainable parameters of each row on t5-small (README's table; rows 6/9 share rows 5/8's counts)
TRAINABLE = {
    "zero_shot": 0, "full_ft": 60_506_624, "soft_prompt_10": 5_120, "soft_prompt_10_opendelta": 5_120,
    "soft_prompt_1_opendelta": 512, "adapter_8": 104_544, "adapter_8_adapterhub": 104_544, "adapter_1_adapterhub": 18_444,
    "lora_8": 294_912, "lora_8_peft": 294_912, "lora_1_peft": 36_864,
}


def run_result(job, seed: int, accuracy: float, epochs: int = 10, seconds: float = 700.0) -> dict:
    """A completed result.json of `job`, shaped like the runner's, with the fields the tables and plots read."""
    trains = job.method != "zero_shot"
    curve = [accuracy - 3.0 + 3.0 * min(e, 6) / 6 for e in range(1, epochs + 1)] if trains else [accuracy]
    epoch_numbers = list(range(1, epochs + 1)) if trains else [0]
    best = max(range(len(curve)), key=lambda i: curve[i])
    return {
        "job": job.name, "title": job.title, "row": job.row, "status": "completed", "protocol": "faithful",
        "config": {**job.config(), "seed": seed, "seeds": None, "epochs": epochs if trains else 0},
        "epochs": [{"epoch": e, "accuracy": a, "train_loss": 0.3, "train_seconds": seconds / epochs} for e, a in zip(epoch_numbers, curve)],
        "reported_accuracy": curve[best], "max_accuracy": curve[best], "selected_epoch": epoch_numbers[best],
        "max_epoch": epoch_numbers[best], "final_accuracy": curve[-1], "train_seconds": seconds * trains,
        "artifact_bytes": 4 * TRAINABLE[job.name] or None,
        "params": {"base_total": 60_506_624, "total": 60_506_624 + (0 if job.method == "full" else TRAINABLE[job.name]),
                   "trainable": TRAINABLE[job.name], "added": 0 if job.method == "full" else TRAINABLE[job.name],
                   "formula": "0", "formula_value": 0 if job.method == "full" else TRAINABLE[job.name], "match": True},
    }


def write_runs(folder, runs: dict[str, list[dict]]) -> None:
    for runs_of_job in runs.values():
        for r in runs_of_job:
            path = results.run_dir(folder, r["job"], r["config"]["seed"], r["protocol"]) / results.RESULT_FILE
            results.write_result(path, r)


@pytest.fixture
def eleven_rows(tmp_path):
    """(results folder, runs by job): every row, seeds 0-2, accuracies near the report's (zero-shot: 71.3)."""
    runs = {}
    for job in load_all_jobs(JOBS):
        reference = job.reference_accuracy if job.reference_accuracy is not None else 71.3
        runs[job.name] = [run_result(job, seed, reference + (seed - 1) * 0.37 - 0.12 * job.row, seconds=600.0 + 40 * seed)
                          for seed in (0, 1, 2)]
    folder = tmp_path / "results"
    write_runs(folder, runs)
    return folder, runs
