"""What a run's result.json holds: the fields every result shares, and those of a completed or a failed run.

The file format (where results live, how they are written and read) is `ptuning.report.results`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ptuning import protocol
from ptuning.errors import PtuningError
from ptuning.report import results
from ptuning.run.state import Run, RunState


def peak_memory(device: torch.device) -> dict[str, int]:
    """The process's peak GPU memory so far (allocated, reserved), in bytes; nothing on CPU."""
    if device.type != "cuda":
        return {}
    return {"peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(device),
            "peak_gpu_memory_reserved_bytes": torch.cuda.max_memory_reserved(device)}


def shared(run: Run, status: str, epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fields of every result, completed or failed."""
    job = run.job
    return {
        "job": job.name,
        "variant": job.variant or None,
        "title": job.title,
        "row": job.row,
        "status": status,
        "config": run.config,
        "force_id": run.force_id,
        "reference": {"accuracy": job.reference_accuracy, "total_params": job.reference_total_params},
        "epochs": epochs,
        "params": run.params,
        "environment": results.environment(run.device),
    }


def completed(run: Run, state: RunState, artifact: Path | None) -> dict[str, Any]:
    """A completed run: the selected epoch and figure, the maxima, times, memory, speed path and the saved state."""
    epochs, device = state.epochs, run.device
    best = max(epochs, key=lambda e: e["accuracy"])  # first epoch reaching the max
    return {
        **shared(run, "completed", epochs),
        **protocol.select(epochs, run.job.settings.protocol),
        "max_accuracy": best["accuracy"],
        "max_epoch": best["epoch"],
        "final_accuracy": epochs[-1]["accuracy"],
        "train_seconds": sum(e["train_seconds"] for e in epochs),
        "eval_seconds": sum(e["eval_seconds"] for e in epochs),
        "eval_reviews": {split: len(ds) for split, ds in run.eval_sets.items()},  # evaluated after every epoch
        "wall_seconds": state.wall_seconds,
        # outside train + eval: before the first step (this process's load, method, tokenizing, device), and the
        # checkpoint and parameter writes inside wall_seconds
        "setup_seconds": state.setup_seconds,
        "save_seconds": state.save_seconds,
        "resumed_from": state.resumed_from,
        "speed": run.engine.describe(),
        # reserved: what the process held, also the memory a CUDA graph's private pool keeps for its replays, which
        # the allocated figure does not count once the capture is over
        "peak_gpu_memory_bytes": None, "peak_gpu_memory_reserved_bytes": None, **peak_memory(device),
        "artifact": Path(artifact).name if artifact else None,
        "artifact_bytes": results.disk_bytes(artifact),
    }


def failed(run: Run, state: RunState, reason: str) -> dict[str, Any]:
    return {**shared(run, "failed", state.epochs), "reason": reason}


def write_failure(run: Run, state: RunState, reason: str) -> None:
    """Write a `failed` result (the tables show it), unless it would replace a completed one."""
    path = run.result_path
    if path.is_file():
        try:
            if results.read_result(path).get("status") == "completed":
                return  # a forced rerun failed: keep the earlier completed result
        except PtuningError:
            pass
    results.write_result(path, failed(run, state, reason))
