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
import random
from pathlib import Path
from typing import Any

import torch

from ptuning.atomic import atomic_save
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
    return atomic_save(path, lambda tmp: torch.save(payload, tmp))


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
    return payload


#: what a resume reads from a checkpoint, and its type (a checkpoint of this format missing one was edited by hand)
_FIELDS: dict[str, Any] = {"config": dict, "trainable": dict, "rng": dict, "generator": torch.Tensor, "epochs": list, "step": int,
                           "loss_total": (int, float), "step_seconds": (int, float), "wall_seconds": (int, float)}


def plan(rdir: Path, config: dict[str, Any], force: bool) -> tuple[str, Any]:
    """What to do with a job whose files live in `rdir`:

    ("skip", result)      a completed result.json with this configuration exists;
    ("resume", payload)   a checkpoint with this configuration exists;
    ("fresh", None)       nothing to reuse (or --force).
    Refuses (PtuningError, suggesting --force) when a checkpoint or a completed result of a
    *different* configuration is in the way, so nothing is overwritten unasked.
    """
    if force:
        return "fresh", None
    config = canonical(config)
    result_path = rdir / results_mod.RESULT_FILE
    result = None
    if result_path.is_file():
        try:
            result = results_mod.read_result(result_path)
        except PtuningError:
            result = None  # unreadable: treat as absent (it is replaced atomically)
    if result and result.get("status") == "completed" and result.get("config") == config:
        return "skip", result
    ckpt_path = rdir / CHECKPOINT_FILE
    if ckpt_path.is_file():
        payload = load(ckpt_path)
        if payload["config"] != config:
            raise PtuningError(
                f"{ckpt_path} was written for a different configuration ({differences(payload['config'], config)}); "
                "rerun with --force to start over"
            )
        return "resume", payload
    if result and result.get("status") == "completed":
        raise PtuningError(
            f"{result_path} holds a completed run with a different configuration "
            f"({differences(result.get('config') or {}, config)}); rerun with --force to replace it, or pass another --output-dir"
        )
    return "fresh", None
