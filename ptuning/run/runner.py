"""Runs one job end to end: prepare (model + method, counts, data, engine) → restore (from a checkpoint) → train
and evaluate, epoch by epoch → record (result.json and the trained parameters).

This is the only module that knows the whole chain. How a step trains and how a review is scored is the engine's
(`ptuning.engine`); what a method adds to the model is the method's (`ptuning.methods`); what a result holds is
`ptuning.run.record`'s; the skip/resume rules and the checkpoint format are `ptuning.run.checkpoint`'s.
"""

from __future__ import annotations

import gc
import os
import random
import secrets
import time
from pathlib import Path
from typing import Any, Callable

import click
import torch

from ptuning import data as data_mod
from ptuning import protocol as protocol_mod
from ptuning.atomic import atomic_save, remove
from ptuning.engine import NonFiniteLoss, StopEpoch, make_engine
from ptuning.errors import PtuningError, one_line
from ptuning.methods import build_method, count_parameters
from ptuning.model import load_model
from ptuning.report.results import run_dir, threads, write_result
from ptuning.run import checkpoint, record
from ptuning.run.interrupt import StopRequest, pause_hook
from ptuning.run.lock import RunLock
from ptuning.run.metrics import MetricsLog
from ptuning.run.state import Run, RunState
from ptuning.settings import Job

_SPLITS: dict[tuple[str, str | None], Any] = {}


def run_job(job: Job, output_dir: Path, device_name: str | None = None, echo: Callable[[str], None] = click.echo,
            force: bool | str = False, stop: StopRequest | None = None, trackers: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train and evaluate one job (one seed) in `<output_dir>/<job>/seed<N>` (`heldout-seed<N>` under the heldout
    protocol); write its result.json and trained parameters. A method that does not train (zero-shot) is evaluated
    once, as epoch 0. A completed result of the same configuration is skipped, a checkpoint of it resumed; `force`
    starts afresh (a string: the id of the --force run, whose own results and checkpoints are kept; `checkpoint.plan`).
    `stop` is looked at after every step: when a signal asked to stop, a checkpoint is written and `Interrupted`
    raised. The run directory is locked while it runs (another process running it is refused); its metrics go to
    metrics.jsonl as it goes, and to the `trackers` named (ptuning/run/metrics.py)."""
    output_dir, device = Path(output_dir), resolve_device(device_name)
    check_writable(output_dir)
    method = build_method(job.method, job.implementation, job.knobs)
    config = {**job.config(), "epochs": job.settings.epochs if method.trains else 0}
    run = Run(job, method, config, device, run_dir(output_dir, job.name, job.settings.seed, job.settings.protocol), echo,
              force_id=(force if isinstance(force, str) else secrets.token_hex(4)) if force else None)
    with RunLock(run.rdir, root=output_dir):
        action, found = checkpoint.plan(run.rdir, config, run.force_id, run.say)
        if action == "skip":
            run.say(f"already completed with this configuration ({run.result_path}); skipping (--force reruns it)")
            return found
        if stop is not None:
            stop.check(f"{job.name} had not started; nothing new was saved")
        state = RunState()
        prepare(run)
        if found is not None:
            restore(run, state, found)
        run.metrics = MetricsLog(run.rdir, trackers, fresh=found is None)
        try:
            run.metrics.event("resume" if found else "start", **state.progress(), path=run.engine.name, seed=job.settings.seed)
            state.start()
            for epoch in range(len(state.epochs) + 1 if run.n_epochs else 0, run.n_epochs + 1):
                train_and_evaluate(run, state, epoch, stop)
            return finish(run, state)
        except (NonFiniteLoss, torch.OutOfMemoryError) as exc:
            reason = str(exc) if isinstance(exc, NonFiniteLoss) else f"out of memory on {device} in {job.name} (try a smaller batch_size)"
            record.write_failure(run, state, reason)
            run.metrics.event("failed", reason=reason)
            raise PtuningError(f"{reason}; recorded as failed in {run.result_path}") from None
        finally:
            run.metrics.close()


def prepare(run: Run) -> None:
    """The model with its method, the parameter counts, the data, the engine, the loader and the optimizer."""
    job, method, device = run.job, run.method, run.device
    seed_everything(job.settings.seed)
    check_library = getattr(method, "check_library", None)
    if check_library is not None:  # a missing library fails before the model loads
        check_library()
    model, run.tokenizer = load_model(job.settings.model)
    base_total, _ = count_parameters(model)
    run.model = method.apply(model)
    total, trainable = count_parameters(run.model)
    formula = method.formula(run.model.config if hasattr(run.model, "config") else None)
    run.params = {"base_total": base_total, "total": total, "trainable": trainable, "added": total - base_total,
                  "formula": str(formula), "formula_value": formula.value, "match": total - base_total == formula.value}
    run.train_set, run.eval_sets = protocol_mod.build_datasets(job, run.tokenizer, method.placeholder_tokens(), splits_for(job))
    run.engine = make_engine(job.settings, device, run.say)
    run.generator = torch.Generator().manual_seed(job.settings.seed)
    run.loader = run.engine.train_loader(run.train_set, run.tokenizer.pad_token_id, run.generator)
    run.model.to(device)
    if method.trains:
        run.optimizer = run.engine.optimizer([p for _, p in method.trainable_parameters(run.model)], job.settings.lr,
                                             job.settings.weight_decay)
    run.generation_model = method.generation_model(run.model)
    reset_peak_memory(device)
    sizes = ", ".join(f"{len(ds):,} {split}" for split, ds in run.eval_sets.items())
    run.say(f"{job.title} ({job.knob_summary}): {trainable:,} trainable of {total:,} parameters; {len(run.train_set):,} train / "
            f"{sizes} reviews on {device}, {job.settings.protocol} protocol, seed {job.settings.seed}, {run.engine.name} path, "
            f"{run.engine.plan.precision}")


def restore(run: Run, state: RunState, found: dict[str, Any]) -> None:
    """Continue from a checkpoint: the trained parameters, the optimizer, the shuffle, the epochs and the RNGs."""
    checkpoint.load_trainable_state(run.method, run.model, found["trainable"], run.checkpoint_path)
    checkpoint.check_step(found, len(run.loader), run.checkpoint_path)
    try:  # the parts checkpoint.load checked the types of; their contents only the libraries can judge
        if run.optimizer is not None:
            run.optimizer.load_state_dict(found["optimizer"])
        run.generator.set_state(found["generator"])
        state.epochs = list(found["epochs"])
        state.step, state.loss_total, state.step_seconds = found["step"], found["loss_total"], found["step_seconds"]
        state.prior_wall = found["wall_seconds"]
        checkpoint.set_rng_state(found["rng"], run.device)  # last: nothing after this may draw random numbers
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise PtuningError(f"{run.checkpoint_path}: the checkpoint does not fit this run ({one_line(exc)}); "
                           "rerun with --force to start over") from None
    state.resumed_from = {"epochs_done": len(state.epochs), "step": state.step}
    steps = len(run.loader)
    where = f"epoch {len(state.epochs) + 1}, after step {state.step} of {steps}" if state.step else f"the end of epoch {len(state.epochs)}"
    run.say(f"resuming from {run.checkpoint_path} at {where}")
    warning = checkpoint.threads_warning(found, run.device)
    if warning:
        run.say(warning)


def train_and_evaluate(run: Run, state: RunState, epoch: int, stop: StopRequest | None) -> None:
    """One epoch: train (epoch 0: nothing to train), evaluate every split, checkpoint, report; stop if asked."""
    n = run.n_epochs
    epoch_start = run.generator.get_state()  # replaying it gives this epoch's shuffle order
    t0 = time.perf_counter()
    loss = None
    if run.optimizer is not None:
        try:
            loss = run.engine.train_epoch(
                run.model, run.loader, run.optimizer, description=f"{run.job.name} epoch {epoch}/{n}", start_step=state.step,
                start_total=state.loss_total, should_stop=lambda: stop is not None and stop.requested,
                on_step=lambda step, value: on_step(run, epoch, step, value, stop))
        except StopEpoch as halt:
            save_checkpoint(run, state, epoch_start, halt.steps, halt.total, state.step_seconds + time.perf_counter() - t0)
            run.metrics.event("stopped", epoch=epoch, step=halt.steps)
            stop.check(f"{run.job.name} stopped in epoch {epoch}/{n} after step {halt.steps} of {len(run.loader)}; "
                       f"checkpoint: {run.checkpoint_path}")
    t1 = time.perf_counter()
    done: dict[str, Any] = {"epoch": epoch, "train_loss": loss}
    for split, dataset in run.eval_sets.items():
        key = "accuracy" if split == "test" else "val_accuracy"  # "accuracy" is always the test split's
        done[key] = run.engine.evaluate(run.generation_model, dataset, run.tokenizer, list(run.job.settings.labels),
                                        f"{run.job.name} eval {split} {epoch}")
    t2 = time.perf_counter()
    done.update(train_seconds=state.step_seconds + t1 - t0, eval_seconds=t2 - t1)
    state.epoch_done(done)
    run.metrics.epoch(done, len(run.loader), **record.peak_memory(run.device))
    if run.optimizer is not None:
        save_checkpoint(run, state, run.generator.get_state(), 0, 0.0, 0.0)
    val = f", validation {done['val_accuracy']:.2f}%" if "val_accuracy" in done else ""
    run.say(f"epoch {epoch}/{n}: " + (f"loss {loss:.4f}, " if loss is not None else "no training, ")
            + f"test accuracy {done['accuracy']:.2f}%{val}, train {done['train_seconds']:.1f}s, eval {t2 - t1:.1f}s")
    if stop is not None and epoch < n:  # after the last epoch, finish the job instead
        stop.check(f"{run.job.name} stopped after epoch {epoch}/{n}; checkpoint: {run.checkpoint_path}")


def on_step(run: Run, epoch: int, step: int, value: float, stop: StopRequest | None) -> None:
    run.metrics.step(epoch, step, len(run.loader), value)
    pause_hook(epoch, step, stop)  # a test hook; does nothing unless PTUNING_TEST_PAUSE is set


def save_checkpoint(run: Run, state: RunState, generator_state: torch.Tensor, step: int, loss_total: float,
                    step_seconds: float) -> None:
    t = time.perf_counter()
    checkpoint.save_state(run.checkpoint_path, run.config, run.method, run.model, run.optimizer, run.device,
                          generator=generator_state, epochs=state.epochs, step=step, loss_total=loss_total,
                          step_seconds=step_seconds, wall_seconds=state.prior_wall + t - state.started, force_id=run.force_id,
                          threads=threads())
    state.save_seconds += time.perf_counter() - t


def finish(run: Run, state: RunState) -> dict[str, Any]:
    """Write the trained parameters and the completed result; the checkpoint is then removed."""
    t = time.perf_counter()
    artifact = None
    if run.method.trains:
        artifact = atomic_save(run.rdir / run.method.artifact, lambda tmp: run.method.save(run.model, tmp))
        run.method.remove_legacy_artifact(run.rdir)  # an older version's pickled file from an earlier run here
    state.save_seconds += time.perf_counter() - t
    result = record.completed(run, state, artifact)
    write_result(run.result_path, result)
    remove(run.checkpoint_path)  # the result and the parameters now hold everything
    run.metrics.event("end", reported_accuracy=result["reported_accuracy"], selected_epoch=result["selected_epoch"],
                      wall_seconds=result["wall_seconds"])
    run.say(f"reported test accuracy {result['reported_accuracy']:.2f}% at epoch {result['selected_epoch']} "
            f"(selected by {result['selected_by']}); result: {run.result_path}")
    return result


# ---------------------------------------------------------------------------------------------
# the device, the seed, the data, the output folder


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
            raise PtuningError(f"--device {name} was asked for but no CUDA GPU is visible; use --device cpu (slow) or run on a GPU machine")
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
        probe = directory / f".write-test-{secrets.token_hex(8)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))  # never through a link
        probe.unlink()
    except OSError as exc:
        raise PtuningError(f"cannot write to output directory {directory}: {exc.strerror or exc}; pass --output-dir with a writable directory") from None
