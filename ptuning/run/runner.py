"""Runs one job end to end: job → model + method → data → train/eval → result JSON.

This is the only module that knows the whole chain; every step below it is a plain function.
"""

from __future__ import annotations

import gc
import random
import time
from pathlib import Path
from typing import Any, Callable

import click
import torch

from ptuning import data as data_mod
from ptuning import protocol as protocol_mod
from ptuning.atomic import atomic_save
from ptuning.engine import fast
from ptuning.engine.evaluate import evaluate
from ptuning.engine.graphs import GraphedTrainStep
from ptuning.engine.train import NonFiniteLoss, StopEpoch, make_optimizer, train_epoch
from ptuning.errors import PtuningError, one_line
from ptuning.methods import build_method, count_parameters
from ptuning.model import load_model
from ptuning.report import results as results_mod
from ptuning.run import checkpoint
from ptuning.run.interrupt import StopRequest, pause_hook
from ptuning.settings import Job

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


def reset_peak_memory(device: torch.device) -> None:
    """Start this job's peak GPU memory figures from what it holds itself.

    run-all runs its jobs one after another in one process: what the job before held stays cached (and its CUDA
    graphs' pool stays reserved) until an empty_cache, and reset_peak_memory_stats starts the peaks from what is
    reserved now, so without this a small job would report as its own peak the memory of the job before it."""
    if device.type == "cuda":
        gc.collect()  # the job before's model and optimizer, if a reference cycle still holds them
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy ships with the stack
        pass


def splits_for(job: Job, cache: dict | None = None):
    """The job's dataset splits, loaded once per process (or per `cache`) and shared by the jobs that name it."""
    cache = _SPLITS if cache is None else cache
    key = (job.settings.dataset, job.settings.dataset_config)
    if key not in cache:
        cache[key] = data_mod.load_splits(job.settings.dataset, job.settings.dataset_config)
    return cache[key]


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{random.getrandbits(32):08x}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PtuningError(f"cannot write to output directory {directory}: {exc.strerror or exc}; pass --output-dir with a writable directory") from None


def run_job(
    job: Job,
    output_dir: Path,
    device_name: str | None = None,
    echo: Callable[[str], None] = click.echo,
    force: bool = False,
    stop: StopRequest | None = None,
) -> dict[str, Any]:
    """Train and evaluate one job (one seed); write its result.json and trained parameters.

    The run directory is `<output_dir>/<job>/seed<seed>` (faithful protocol) or
    `<output_dir>/<job>/heldout-seed<seed>`. A method that does not train (zero-shot) is evaluated
    once, as epoch 0, with no optimizer and no artifact.

    A completed result with the same configuration is skipped, a checkpoint with the same
    configuration is resumed (see ptuning/run/checkpoint.py); `force` starts from scratch. `stop` is
    looked at after every training step: when a signal asked to stop, a checkpoint is written and
    `Interrupted` raised.
    """
    output_dir = Path(output_dir)
    device = resolve_device(device_name)
    check_writable(output_dir)
    method = build_method(job.method, job.implementation, job.knobs)
    n_epochs = job.settings.epochs if method.trains else 0
    config = job.config()
    config["epochs"] = n_epochs
    rdir = results_mod.run_dir(output_dir, job.name, job.settings.seed, job.settings.protocol)
    result_path = rdir / results_mod.RESULT_FILE
    ckpt_path = rdir / checkpoint.CHECKPOINT_FILE
    action, found = checkpoint.plan(rdir, config, force)
    if action == "skip":
        echo(f"[{job.name}] already completed with this configuration ({result_path}); skipping (--force reruns it)")
        return found
    if stop is not None:
        stop.check(f"{job.name} had not started; nothing new was saved")
    entered = time.perf_counter()
    seed_everything(job.settings.seed)

    check_library = getattr(method, "check_library", None)
    if check_library is not None:  # a missing library fails before the model loads
        check_library()
    model, tokenizer = load_model(job.settings.model)
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
    generator = torch.Generator().manual_seed(job.settings.seed)
    pin = device.type == "cuda"
    speed = fast.plan(job, device, echo)  # fast or faithful path (see ptuning/engine/fast.py)
    if speed.fast:
        train_loader = fast.train_loader(job, train_set, tokenizer, speed, generator)
    else:
        train_loader = torch.utils.data.DataLoader(train_set, batch_size=job.settings.batch_size, shuffle=True, generator=generator, collate_fn=collate, pin_memory=pin)
    eval_loaders = {
        split: torch.utils.data.DataLoader(ds, batch_size=job.settings.eval_batch_size, shuffle=False, collate_fn=collate, pin_memory=pin)
        for split, ds in eval_sets.items()
    }

    model.to(device)
    optimizer, loss_fn, graphed = None, None, None
    if method.trains:
        trainable_params = [p for _, p in method.trainable_parameters(model)]
        if speed.fast:
            optimizer = fast.make_optimizer(trainable_params, job.settings.lr, job.settings.weight_decay, speed)
            loss_fn = fast.LossFn(model, speed.compile, echo)
            if speed.graphs:  # forward, backward and update replayed as CUDA graphs (ptuning/engine/graphs.py)
                graphed = GraphedTrainStep(model, optimizer, device, speed.precision, lambda m: echo(f"[{job.name}] {m}"))
        else:
            optimizer = make_optimizer(trainable_params, job.settings.lr, job.settings.weight_decay)
    generation_model = method.generation_model(model)
    reset_peak_memory(device)

    echo(f"[{job.name}] {job.title} ({job.knob_summary}): {trainable:,} trainable of {total:,} parameters; "
         f"{len(train_set):,} train / {', '.join(f'{len(ds):,} {s}' for s, ds in eval_sets.items())} reviews on {device}, "
         f"{job.settings.protocol} protocol, seed {job.settings.seed}, {'fast' if speed.fast else 'faithful'} path, {speed.precision}")

    epochs: list[dict[str, Any]] = []
    steps_per_epoch = len(train_loader)
    start_step, start_total, start_seconds, prior_wall = 0, 0.0, 0.0, 0.0
    resumed_from = None
    if found is not None:
        checkpoint.load_trainable_state(method, model, found["trainable"], ckpt_path)
        try:  # the parts checkpoint.load checked the types of; their contents only the libraries can judge
            if optimizer is not None:
                optimizer.load_state_dict(found["optimizer"])
            generator.set_state(found["generator"])
            epochs = list(found["epochs"])
            start_step, start_total, start_seconds = found["step"], found["loss_total"], found["step_seconds"]
            prior_wall = found["wall_seconds"]
            checkpoint.set_rng_state(found["rng"], device)  # last: nothing after this may draw random numbers
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise PtuningError(f"{ckpt_path}: the checkpoint does not fit this run ({one_line(exc)}); "
                               "rerun with --force to start over") from None
        resumed_from = {"epochs_done": len(epochs), "step": start_step}
        where = f"epoch {len(epochs) + 1}, after step {start_step} of {steps_per_epoch}" if start_step else f"the end of epoch {len(epochs)}"
        echo(f"[{job.name}] resuming from {ckpt_path} at {where}")

    started = time.perf_counter()
    setup_seconds = started - entered  # load, method, data, device (before the first step: not in wall_seconds)
    save_seconds = 0.0  # spent writing checkpoints and the trained parameters (inside wall_seconds)

    def save_checkpoint(generator_state, step: int, loss_total: float, step_seconds: float) -> None:
        nonlocal save_seconds
        t = time.perf_counter()
        checkpoint.save_state(ckpt_path, config, method, model, optimizer, device, generator=generator_state, epochs=epochs,
                              step=step, loss_total=loss_total, step_seconds=step_seconds,
                              wall_seconds=prior_wall + t - started)
        save_seconds += time.perf_counter() - t

    def should_stop() -> bool:
        return stop is not None and stop.requested

    first_epoch = len(epochs) + 1 if n_epochs else 0
    try:
        for epoch in range(first_epoch, n_epochs + 1):
            epoch_start_generator = generator.get_state()  # replaying it gives this epoch's shuffle order
            t0 = time.perf_counter()
            description = f"{job.name} epoch {epoch}/{n_epochs}"

            def on_step(step: int, value: float, epoch: int = epoch) -> None:
                pause_hook(epoch, step, stop)  # test hook; does nothing unless PTUNING_TEST_PAUSE is set

            loss = None
            if optimizer is not None:
                resume = {"on_step": on_step, "start_step": start_step, "start_total": start_total, "should_stop": should_stop}
                try:
                    if speed.fast:
                        loss = fast.train_epoch(model, train_loader, optimizer, device, speed, description, loss_fn=loss_fn, step=graphed,
                                               **resume)
                    else:
                        loss = train_epoch(model, train_loader, optimizer, device, speed.precision, description, **resume)
                except StopEpoch as halt:
                    save_checkpoint(epoch_start_generator, halt.steps, halt.total, start_seconds + time.perf_counter() - t0)
                    stop.check(f"{job.name} stopped in epoch {epoch}/{n_epochs} after step {halt.steps} of {steps_per_epoch}; checkpoint: {ckpt_path}")
            t1 = time.perf_counter()
            record: dict[str, Any] = {"epoch": epoch, "train_loss": loss}
            for split, loader in eval_loaders.items():
                key = "accuracy" if split == "test" else "val_accuracy"  # "accuracy" is always the test split's
                description = f"{job.name} eval {split} {epoch}"
                if speed.fast:
                    record[key] = fast.evaluate(generation_model, eval_sets[split], tokenizer, list(job.settings.labels), device, speed.eval_batch_size,
                                                job.settings.generate_max_length, speed.precision, description)
                else:
                    record[key] = evaluate(generation_model, loader, tokenizer, list(job.settings.labels), device, job.settings.generate_max_length, speed.precision, description)
            t2 = time.perf_counter()
            record.update(train_seconds=start_seconds + t1 - t0, eval_seconds=t2 - t1)
            epochs.append(record)
            start_step, start_total, start_seconds = 0, 0.0, 0.0
            if optimizer is not None:
                save_checkpoint(generator.get_state(), 0, 0.0, 0.0)
            val = f", validation {record['val_accuracy']:.2f}%" if "val_accuracy" in record else ""
            echo(f"[{job.name}] epoch {epoch}/{n_epochs}: " + (f"loss {loss:.4f}, " if loss is not None else "no training, ")
                 + f"test accuracy {record['accuracy']:.2f}%{val}, train {record['train_seconds']:.1f}s, eval {t2 - t1:.1f}s")
            if stop is not None and epoch < n_epochs:  # after the last epoch, finish the job instead
                stop.check(f"{job.name} stopped after epoch {epoch}/{n_epochs}; checkpoint: {ckpt_path}")
    except (NonFiniteLoss, torch.OutOfMemoryError) as exc:
        reason = str(exc) if isinstance(exc, NonFiniteLoss) else f"out of memory on {device} in {job.name} (try a smaller batch_size)"
        record_failure(job, config, result_path, reason, epochs, params, device)
        raise PtuningError(f"{reason}; recorded as failed in {result_path}") from None

    best = max(epochs, key=lambda e: e["accuracy"])  # first epoch reaching the max
    selection = protocol_mod.select(epochs, job.settings.protocol)
    rdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    artifact = atomic_save(rdir / method.artifact, lambda tmp: method.save(model, tmp)) if method.trains else None
    save_seconds += time.perf_counter() - t
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
        "wall_seconds": prior_wall + time.perf_counter() - started,
        # outside train + eval: before the first step (this process's load, method, tokenizing, device), and the
        # checkpoint and parameter writes inside wall_seconds
        "setup_seconds": setup_seconds,
        "save_seconds": save_seconds,
        "resumed_from": resumed_from,
        "speed": {**speed.describe(), **({"cuda_graphs": graphed.describe()} if graphed is not None else {})},
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        # what the process held: also the memory a CUDA graph's private pool keeps for its replays, which the
        # allocated figure does not count once the capture is over
        "peak_gpu_memory_reserved_bytes": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None,
        "artifact": Path(artifact).name if artifact else None,
        "artifact_bytes": results_mod.disk_bytes(artifact),
        "environment": results_mod.environment(device),
    }
    results_mod.write_result(result_path, result)
    try:
        ckpt_path.unlink()  # the result and the parameters now hold everything
    except FileNotFoundError:
        pass
    echo(f"[{job.name}] reported test accuracy {selection['reported_accuracy']:.2f}% at epoch {selection['selected_epoch']} "
         f"(selected by {selection['selected_by']}); result: {result_path}")
    return result


def record_failure(job: Job, config: dict, result_path: Path, reason: str, epochs: list, params: dict, device: torch.device) -> None:
    """Write a `failed` result (the tables show it), unless it would replace a completed one."""
    if result_path.is_file():
        try:
            if results_mod.read_result(result_path).get("status") == "completed":
                return  # a forced rerun failed: keep the earlier completed result
        except PtuningError:
            pass
    results_mod.write_result(result_path, {
        "job": job.name,
        "title": job.title,
        "row": job.row,
        "status": "failed",
        "reason": reason,
        "config": config,
        "reference": {"accuracy": job.reference_accuracy, "total_params": job.reference_total_params},
        "epochs": epochs,
        "params": params,
        "environment": results_mod.environment(device),
    })
