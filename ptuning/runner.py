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
from ptuning import fast
from ptuning import protocol as protocol_mod
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
    """Train and evaluate one job (one seed); write its result.json and trained parameters.

    The run directory is `<output_dir>/<job>/seed<seed>` (faithful protocol) or
    `<output_dir>/<job>/heldout-seed<seed>`. A method that does not train (zero-shot) is evaluated
    once, as epoch 0, with no optimizer and no artifact.
    """
    output_dir = Path(output_dir)
    device = resolve_device(device_name)
    check_writable(output_dir)
    seed_everything(job.seed)

    method = build_method(job.method, job.implementation, job.knobs)
    check_library = getattr(method, "check_library", None)
    if check_library is not None:  # a missing library fails before the model loads
        check_library()
    model, tokenizer = load_model(job.model)
    base_total, _ = count_parameters(model)
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

    train_set, eval_sets = protocol_mod.build_datasets(job, tokenizer, method.placeholder_tokens(), splits_for(job))
    collate = data_mod.Collator(tokenizer.pad_token_id)
    generator = torch.Generator().manual_seed(job.seed)
    pin = device.type == "cuda"
    speed = fast.plan(job, device, echo)  # fast or faithful path (see ptuning/fast.py)
    if speed.fast:
        train_loader = fast.train_loader(job, train_set, tokenizer, speed, generator)
    else:
        train_loader = torch.utils.data.DataLoader(train_set, batch_size=job.batch_size, shuffle=True, generator=generator, collate_fn=collate, pin_memory=pin)
    eval_loaders = {
        split: torch.utils.data.DataLoader(ds, batch_size=job.eval_batch_size, shuffle=False, collate_fn=collate, pin_memory=pin)
        for split, ds in eval_sets.items()
    }
    n_epochs = job.epochs if method.trains else 0

    model.to(device)
    optimizer, loss_fn = None, None
    if method.trains:
        trainable_params = [p for _, p in method.trainable_parameters(model)]
        if speed.fast:
            optimizer = fast.make_optimizer(trainable_params, job.lr, job.weight_decay, speed)
            loss_fn = fast.LossFn(model, speed.compile, echo)
        else:
            optimizer = make_optimizer(trainable_params, job.lr, job.weight_decay)
    generation_model = method.generation_model(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    echo(f"[{job.name}] {job.title} ({job.knob_summary}): {trainable:,} trainable of {total:,} parameters; "
         f"{len(train_set):,} train / {', '.join(f'{len(ds):,} {s}' for s, ds in eval_sets.items())} reviews on {device}, "
         f"{job.protocol} protocol, seed {job.seed}, {'fast' if speed.fast else 'faithful'} path, {speed.precision}")
    epochs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for epoch in range(0 if n_epochs == 0 else 1, n_epochs + 1):
        t0 = time.perf_counter()
        description = f"{job.name} epoch {epoch}/{n_epochs}"
        if optimizer is None:
            loss = None
        elif speed.fast:
            loss = fast.train_epoch(model, train_loader, optimizer, device, speed, description, loss_fn=loss_fn)
        else:
            loss = train_epoch(model, train_loader, optimizer, device, speed.precision, description)
        t1 = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch, "train_loss": loss}
        for split, loader in eval_loaders.items():
            key = "accuracy" if split == "test" else "val_accuracy"  # "accuracy" is always the test split's
            description = f"{job.name} eval {split} {epoch}"
            if speed.fast:
                record[key] = fast.evaluate(generation_model, eval_sets[split], tokenizer, list(job.labels), device, speed.eval_batch_size,
                                            job.generate_max_length, speed.precision, description)
            else:
                record[key] = evaluate(generation_model, loader, tokenizer, list(job.labels), device, job.generate_max_length, speed.precision, description)
        t2 = time.perf_counter()
        record.update(train_seconds=t1 - t0, eval_seconds=t2 - t1)
        epochs.append(record)
        val = f", validation {record['val_accuracy']:.2f}%" if "val_accuracy" in record else ""
        echo(f"[{job.name}] epoch {epoch}/{n_epochs}: " + (f"loss {loss:.4f}, " if loss is not None else "no training, ")
             + f"test accuracy {record['accuracy']:.2f}%{val}, train {t1 - t0:.1f}s, eval {t2 - t1:.1f}s")

    best = max(epochs, key=lambda e: e["accuracy"])  # first epoch reaching the max
    selection = protocol_mod.select(epochs, job.protocol)
    rdir = results_mod.run_dir(output_dir, job.name, job.seed, job.protocol)
    rdir.mkdir(parents=True, exist_ok=True)
    artifact = method.save(model, rdir / method.artifact) if method.trains else None
    config = job.config()
    config["epochs"] = n_epochs
    result = {
        "job": job.name,
        "title": job.title,
        "row": job.row,
        "status": "completed",
        "config": config,
        "reference": {"accuracy": job.reference_accuracy, "total_params": job.reference_total_params},
        "epochs": epochs,
        **selection,
        "max_accuracy": best["accuracy"],
        "max_epoch": best["epoch"],
        "final_accuracy": epochs[-1]["accuracy"],
        "params": params,
        "train_seconds": sum(e["train_seconds"] for e in epochs),
        "eval_seconds": sum(e["eval_seconds"] for e in epochs),
        "wall_seconds": time.perf_counter() - started,
        "speed": speed.describe(),
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "artifact": Path(artifact).name if artifact else None,
        "artifact_bytes": results_mod.disk_bytes(artifact),
        "environment": results_mod.environment(device),
    }
    results_mod.write_result(rdir / results_mod.RESULT_FILE, result)
    echo(f"[{job.name}] reported test accuracy {selection['reported_accuracy']:.2f}% at epoch {selection['selected_epoch']} "
         f"(selected by {selection['selected_by']}); result: {rdir / results_mod.RESULT_FILE}")
    return result
