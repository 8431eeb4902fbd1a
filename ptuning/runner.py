"""Runs one job end to end: job → model + method → data → train/eval → result JSON.

This is the only module that knows the whole chain; every step below it is a plain function.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable

import click
import torch

from ptuning import data as data_mod
from ptuning import results as results_mod
from ptuning.errors import PtuningError
from ptuning.evaluate import evaluate
from ptuning.jobs import Job
from ptuning.methods import build_method, count_parameters
from ptuning.model import load_model
from ptuning.train import make_optimizer, train_epoch

_SPLITS: dict[tuple[str, str | None], Any] = {}


def resolve_device(name: str | None) -> torch.device:
    """'auto' (default) picks CUDA when present; asking for CUDA without a GPU is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PtuningError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PtuningError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu (slow) or run on a GPU machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PtuningError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    elif device.type != "cpu":
        raise PtuningError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy ships with the stack
        pass


def splits_for(job: Job):
    key = (job.dataset, job.dataset_config)
    if key not in _SPLITS:
        _SPLITS[key] = data_mod.load_splits(job.dataset, job.dataset_config)
    return _SPLITS[key]


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{random.getrandbits(32):08x}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PtuningError(f"cannot write to output directory {directory}: {exc.strerror or exc}; pass --output-dir with a writable directory") from None


def run_job(job: Job, output_dir: Path, device_name: str | None = None, echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    """Train and evaluate one job; write `<output_dir>/<job>/seed<seed>/result.json` and the trained parameters."""
    output_dir = Path(output_dir)
    device = resolve_device(device_name)
    check_writable(output_dir)
    seed_everything(job.seed)

    model, tokenizer = load_model(job.model)
    base_total, _ = count_parameters(model)
    method = build_method(job.method, job.implementation, job.knobs)
    model = method.apply(model)
    total, trainable = count_parameters(model)
    formula = method.formula(model.config if hasattr(model, "config") else None)
    params = {
        "base_total": base_total,
        "total": total,
        "trainable": trainable,
        "added": total - base_total,
        "formula": str(formula),
        "formula_value": formula.value,
        "match": total - base_total == formula.value,
    }

    train_set, test_set, _ = data_mod.build_datasets(job, tokenizer, method.placeholder_tokens(), splits_for(job))
    collate = data_mod.Collator(tokenizer.pad_token_id)
    generator = torch.Generator().manual_seed(job.seed)
    pin = device.type == "cuda"
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=job.batch_size, shuffle=True, generator=generator, collate_fn=collate, pin_memory=pin)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=job.eval_batch_size, shuffle=False, collate_fn=collate, pin_memory=pin)

    model.to(device)
    optimizer = make_optimizer([p for _, p in method.trainable_parameters(model)], job.lr, job.weight_decay)
    generation_model = method.generation_model(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    echo(f"[{job.name}] {job.title} ({job.knob_summary}): {trainable:,} trainable of {total:,} parameters; "
         f"{len(train_set):,} train / {len(test_set):,} test reviews on {device}")
    epochs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for epoch in range(1, job.epochs + 1):
        t0 = time.perf_counter()
        loss = train_epoch(model, train_loader, optimizer, device, job.precision, f"{job.name} epoch {epoch}/{job.epochs}")
        t1 = time.perf_counter()
        acc = evaluate(generation_model, test_loader, tokenizer, list(job.labels), device, job.generate_max_length, job.precision, f"{job.name} eval {epoch}")
        t2 = time.perf_counter()
        epochs.append({"epoch": epoch, "train_loss": loss, "accuracy": acc, "train_seconds": t1 - t0, "eval_seconds": t2 - t1})
        echo(f"[{job.name}] epoch {epoch}/{job.epochs}: loss {loss:.4f}, accuracy {acc:.2f}%, train {t1 - t0:.1f}s, eval {t2 - t1:.1f}s")

    best = max(epochs, key=lambda e: e["accuracy"])  # first epoch reaching the max
    rdir = results_mod.run_dir(output_dir, job.name, job.seed)
    rdir.mkdir(parents=True, exist_ok=True)
    artifact = method.save(model, rdir / method.artifact)
    result = {
        "job": job.name,
        "title": job.title,
        "row": job.row,
        "status": "completed",
        "config": job.config(),
        "reference": {"accuracy": job.reference_accuracy, "total_params": job.reference_total_params},
        "epochs": epochs,
        "max_accuracy": best["accuracy"],
        "max_epoch": best["epoch"],
        "final_accuracy": epochs[-1]["accuracy"],
        "params": params,
        "train_seconds": sum(e["train_seconds"] for e in epochs),
        "eval_seconds": sum(e["eval_seconds"] for e in epochs),
        "wall_seconds": time.perf_counter() - started,
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "artifact": Path(artifact).name,
        "environment": results_mod.environment(device),
    }
    results_mod.write_result(rdir / results_mod.RESULT_FILE, result)
    echo(f"[{job.name}] max accuracy {best['accuracy']:.2f}% at epoch {best['epoch']}; result: {rdir / results_mod.RESULT_FILE}")
    return result
