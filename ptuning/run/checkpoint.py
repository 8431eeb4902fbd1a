"""Per-job checkpoints, and the rules for skipping, resuming or refusing a job.

A job that trains (not zero-shot) writes `<run_dir>/checkpoint.pt` (atomically) at the end of every epoch, and also in the
middle of an epoch when it is stopped by SIGINT/SIGTERM. A checkpoint holds:

- `config`: the job's configuration (JSON), which must equal the current one to resume;
- `trainable`: only the parameters the optimizer updates (all of them for full fine-tuning);
- `optimizer`: the AdamW state;
- `rng`: python `random` and torch CPU (and CUDA, if used) generator states at the moment of saving;
- `generator`: the DataLoader shuffle generator's state at the start of the epoch in progress
  (`step` > 0) or of the next epoch (`step` == 0), so the shuffle order of every epoch is the same
  as in an uninterrupted run;
- `epochs`: the finished epochs' metrics; `step`, `loss_total`, `step_seconds`: how far the epoch in
  progress got (0 at an epoch boundary).

A resumed run restores all of it and skips the `step` batches already trained, so on CPU it
reproduces the uninterrupted run's losses and accuracies exactly. numpy's generator is seeded but
unused by training and evaluation, so it is not saved.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any, Callable

import torch

from ptuning.atomic import TEMPORARY, atomic_save, remove, torch_writer
from ptuning.errors import PtuningError
from ptuning.report import results as results_mod

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1


def canonical(config: dict[str, Any]) -> dict[str, Any]:
    """The config as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(config))


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str:
    """'epochs: 3 → 2, seed: 0 → 1' for the keys that differ."""
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    text = ", ".join(f"{k}: {json.dumps(old.get(k))} → {json.dumps(new.get(k))}" for k in keys[:limit])
    return text + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# -- random number generators ----------------------------------------------------------------------
def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


# -- trainable state ---------------------------------------------------------------------------------
def trainable_state(method, model) -> dict[str, torch.Tensor]:
    """Only what the optimizer updates, on CPU (for PEFT rows a tiny fraction of the model)."""
    return {name: p.detach().cpu().clone() for name, p in method.trainable_parameters(model)}


def load_trainable_state(method, model, state: dict[str, torch.Tensor], where: Path) -> None:
    params = dict(method.trainable_parameters(model))
    if set(params) != set(state):
        odd = sorted(set(params) ^ set(state))[:3]
        raise PtuningError(f"{where}: the checkpoint's parameters do not fit this model ({odd}); rerun with --force to start over")
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != state[name].shape:
                raise PtuningError(f"{where}: parameter {name} has shape {tuple(state[name].shape)} in the checkpoint, {tuple(p.shape)} here; rerun with --force")
            p.copy_(state[name])


# -- files -------------------------------------------------------------------------------------------
def save_state(path: Path, config: dict[str, Any], method, model, optimizer, device: torch.device, **progress: Any) -> Path:
    """A job's checkpoint: `config`, the trainable parameters, the optimizer's and the generators' states,
    and `progress` (generator, epochs, step, loss_total, step_seconds, wall_seconds; see the module docstring).

    One function for the runner and for `ptuning bench`, which times it at the row's real state size."""
    return save(path, {
        "config": config,
        "trainable": trainable_state(method, model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng_state(device),
        **progress,
    })


def save(path: Path, payload: dict[str, Any]) -> Path:
    payload = {"format": FORMAT, **payload, "config": json.dumps(payload["config"])}
    return atomic_save(path, torch_writer(payload))


def load(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        payload["config"] = json.loads(payload["config"])
    except Exception as exc:  # truncated by hand, foreign file, ...
        raise PtuningError(f"{path}: unreadable checkpoint ({type(exc).__name__}); rerun with --force to start over") from None
    if payload.get("format") != FORMAT:
        raise PtuningError(f"{path}: checkpoint format {payload.get('format')!r} is not {FORMAT}; rerun with --force to start over")
    for key, kind in _FIELDS.items():
        value = payload.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise PtuningError(f"{path}: unreadable checkpoint ({key!r} is missing or of the wrong type); rerun with --force to start over")
    problem = _progress_problem(payload)
    if problem:
        raise PtuningError(f"{path}: unreadable checkpoint ({problem}); rerun with --force to start over")
    return payload


#: what a resume reads from a checkpoint, and its type (a checkpoint of this format missing one was edited by hand)
_FIELDS: dict[str, Any] = {"config": dict, "trainable": dict, "rng": dict, "generator": torch.Tensor, "epochs": list, "step": int,
                           "loss_total": (int, float), "step_seconds": (int, float), "wall_seconds": (int, float)}
#: what each finished epoch's record holds (`val_accuracy` too under the heldout protocol)
_EPOCH: dict[str, Any] = {"epoch": int, "train_loss": (int, float), "accuracy": (int, float), "train_seconds": (int, float),
                          "eval_seconds": (int, float)}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _progress_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with the progress a checkpoint records (hand-edited: a NaN loss sum, a step below zero, epochs
    that are not the records of epochs 1, 2, ...), or None. How many steps an epoch has, `restore` checks."""
    epochs, total = payload["epochs"], payload["config"].get("epochs")
    if payload["step"] < 0:
        return f"'step' is {payload['step']}, below 0"
    for key in ("loss_total", "step_seconds", "wall_seconds"):
        if not _finite(payload[key]) or payload[key] < 0:
            return f"{key!r} is {payload[key]!r}, not a finite number of at least 0"
    if isinstance(total, int) and len(epochs) + (payload["step"] > 0) > total:
        return f"it records {len(epochs)} finished epochs{' and one in progress' if payload['step'] else ''} of {total}"
    for number, record in enumerate(epochs, 1):
        if not isinstance(record, dict):
            return f"epoch {number}'s record is a {type(record).__name__}, not a mapping"
        for key, kind in _EPOCH.items():
            if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
                return f"epoch {number}'s {key!r} is missing or of the wrong type"
            if kind is not int and not _finite(record[key]):
                return f"epoch {number}'s {key!r} is {record[key]!r}, not a finite number"
        if record["epoch"] != number:
            return f"epoch {number}'s record says epoch {record['epoch']}"
    if payload.get("force_id") is not None and not isinstance(payload["force_id"], str):
        return "'force_id' is not text"
    return None


def check_step(payload: dict[str, Any], steps: int, path: Path) -> None:
    """A checkpoint's `step` must be inside the epoch: at most `steps`, the steps an epoch of this run has."""
    if payload["step"] > steps:
        raise PtuningError(f"{path}: unreadable checkpoint (it is at step {payload['step']} of an epoch of {steps} steps); "
                           "rerun with --force to start over")


# -- the threads of a CPU run -------------------------------------------------------------------------------
def threads_warning(payload: dict[str, Any], device: torch.device) -> str | None:
    """One line when a CPU run resumes with another thread count than its checkpoint was written with."""
    then, now = payload.get("threads"), results_mod.threads()
    if device.type != "cpu" or not isinstance(then, dict) or then.get("torch") == now["torch"]:
        return None
    return (f"warning: this checkpoint was written with {then.get('torch')} CPU threads, this process has {now['torch']}; "
            "the resumed run may differ from an uninterrupted one in the last digits (set OMP_NUM_THREADS="
            f"{then.get('torch')} to match)")


# -- skip / resume / refuse ----------------------------------------------------------------------------------
def tidy(rdir: Path, say: Callable[[str], None] | None = None) -> list[str]:
    """Remove what a killed run left in `rdir`: the temporary folders of its writes (`atomic_save`). Only under the
    run directory's lock, so that no live run is writing them. Returns the names removed (and says so)."""
    try:
        names = sorted(entry.name for entry in os.scandir(rdir) if TEMPORARY.match(entry.name))
    except OSError:
        return []
    for name in names:
        remove(rdir / name)
    if names and say is not None:
        say(f"removed what an interrupted run left in {rdir}: {', '.join(names)}")
    return names


def plan(rdir: Path, config: dict[str, Any], force: str | None, say: Callable[[str], None] | None = None) -> tuple[str, Any]:
    """What to do with a job whose files live in `rdir`:

    ("skip", result)      a completed result.json with this configuration exists;
    ("resume", payload)   a checkpoint with this configuration exists;
    ("fresh", None)       nothing to reuse.
    Refuses (PtuningError, suggesting --force) when a checkpoint or a completed result of a
    *different* configuration is in the way, so nothing is overwritten unasked.

    `force` (the id of a --force run, or None): everything is started afresh, except a completed result or a
    checkpoint that a run with this same id wrote (an interrupted --force run continued with its resume command).
    First removes the temporaries of a killed run (`tidy`) and, beside a completed result, the checkpoint of that same
    run left by a kill between the two (`say` hears of each).
    """
    tidy(rdir, say)
    config = canonical(config)
    result_path, ckpt_path = rdir / results_mod.RESULT_FILE, rdir / CHECKPOINT_FILE
    result = None
    if result_path.is_file():
        try:
            result = results_mod.read_result(result_path)
        except PtuningError as exc:  # unreadable: treat as absent (it is replaced atomically)
            if say is not None:
                say(f"warning: {exc}; it is not used, and is replaced when this run completes")
    completed = result is not None and result.get("status") == "completed"
    payload = None
    if ckpt_path.is_file():
        try:
            payload = load(ckpt_path)
        except PtuningError:
            if force is None:
                raise
            # --force: an unreadable checkpoint is replaced by this run's first one
    if completed and payload is not None and _same_run(payload, result):
        remove(ckpt_path)
        if say is not None and not ckpt_path.exists():
            say(f"removed {ckpt_path}: the run it belongs to had completed ({result_path})")
        payload = None
    if force is not None:
        if completed and result.get("config") == config and result.get("force_id") == force:
            return "skip", result
        if payload is not None and payload["config"] == config and payload.get("force_id") == force:
            return "resume", payload
        return "fresh", None
    if completed and result.get("config") == config:
        return "skip", result
    if payload is not None:
        if payload["config"] != config:
            raise PtuningError(
                f"{ckpt_path} was written for a different configuration ({differences(payload['config'], config)}); "
                "rerun with --force to start over"
            )
        return "resume", payload
    if completed:
        raise PtuningError(
            f"{result_path} holds a completed run with a different configuration "
            f"({differences(result.get('config') or {}, config)}); rerun with --force to replace it, or pass another --output-dir"
        )
    return "fresh", None


def _same_run(payload: dict[str, Any], result: dict[str, Any]) -> bool:
    """Whether a checkpoint is the last one of the run that wrote `result` (all its epochs done, the same
    configuration and --force id): a kill between the result's write and the checkpoint's removal leaves it."""
    config = result.get("config") or {}
    return (payload["config"] == config and payload["step"] == 0 and len(payload["epochs"]) == config.get("epochs")
            and payload.get("force_id") == result.get("force_id"))
