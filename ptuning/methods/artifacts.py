"""Trained artifacts: what a finished run leaves next to its result, in formats other tools load.

Every row that trains writes one directory (its name is the method's `artifact`) holding

* the weights as safetensors, never a pickle:
    - hand-written rows and OpenDelta: `<artifact>.safetensors`, keyed by the parameter names of ptuning's
      model (e.g. `encoder.block.0.layer.0.SelfAttention.q.lora_A`);
    - full fine-tuning: a `save_pretrained` model directory (`config.json`, `model.safetensors`, ...) that
      `AutoModelForSeq2SeqLM.from_pretrained` loads;
    - PEFT: `PeftModel.save_pretrained`'s directory (`adapter_config.json`, `adapter_model.safetensors`);
    - AdapterHub: `save_adapter(..., use_safetensors=True)`'s directory (`adapter_config.json`,
      `adapter.safetensors`, `head_config.json`, `model_head.safetensors`);
* `ptuning_artifact.json`, a small sidecar: the method, its implementation and knobs, the base model the
  run started from, the weights' format and file, and how many parameters were trained.

Results written by older versions of ptuning hold a pickled torch file instead (`lora.pt`, `model.pt`, ...);
`read_state_dict` still reads those (with `weights_only=True`, so no code runs). docs/artifacts.md shows how
to load every kind in plain transformers, PEFT and AdapterHub.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptuning.errors import PtuningError, one_line

SIDECAR = "ptuning_artifact.json"
SIDECAR_VERSION = 1

#: the `format` field of the sidecar
STATE_DICT = "safetensors"  # <artifact>.safetensors keyed by ptuning's parameter names
TRANSFORMERS = "transformers"  # a save_pretrained model directory
PEFT = "peft"  # a PEFT adapter directory
ADAPTERHUB = "adapterhub"  # an AdapterHub adapter directory


def base_model_of(model: nn.Module) -> str | None:
    """The hub id or local directory the model was loaded from (`config.name_or_path`), or None."""
    config = getattr(model, "config", None)
    name = getattr(config, "name_or_path", None) if config is not None else None
    return str(name) if name else None


def describe(method: Any, model: nn.Module, fmt: str, weights: str, trained: int) -> dict[str, Any]:
    """The sidecar's content."""
    try:
        version = metadata.version("ptuning")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        version = None
    return {
        "ptuning_artifact": SIDECAR_VERSION,
        "method": method.name,
        "implementation": method.implementation,
        "knobs": dict(method.values),
        "base_model": base_model_of(model),
        "format": fmt,
        "weights": weights,
        "trained_parameters": trained,
        "ptuning_version": version,
    }


def write_sidecar(directory: Path, method: Any, model: nn.Module, fmt: str, weights: str, trained: int) -> Path:
    """Write the sidecar into an artifact directory whose weights are already there (the last step of every save)."""
    path = Path(directory) / SIDECAR
    path.write_text(json.dumps(describe(method, model, fmt, weights, trained), indent=2) + "\n", encoding="utf-8")
    usual_permissions(Path(directory))
    return path


def usual_permissions(directory: Path) -> None:
    """safetensors creates its files readable by their owner only (0600); give them the permissions every other
    result file gets (0666 less the umask), so that results shared with a group or copied elsewhere stay readable."""
    umask = os.umask(0)
    os.umask(umask)
    for child in directory.rglob("*"):
        if child.is_file():
            child.chmod(0o666 & ~umask)


def read_sidecar(directory: Path) -> dict[str, Any]:
    """The sidecar of an artifact directory; one PtuningError line when it is missing or damaged."""
    path = Path(directory) / SIDECAR
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PtuningError(f"{directory}: not a ptuning artifact directory (no {SIDECAR})") from None
    except (OSError, ValueError) as exc:
        raise PtuningError(f"{path}: unreadable ({one_line(exc)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("weights"), str):
        raise PtuningError(f"{path}: unreadable (not an object with a 'weights' file name)")
    return data


def trained_count(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in state.values())


def write_state_dict(directory: Path, state: dict[str, torch.Tensor], method: Any, model: nn.Module) -> Path:
    """`directory/` with `<name>.safetensors` (the tensors, contiguous, on CPU) and the sidecar; returns `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=False)
    weights = f"{method.artifact}.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(directory / weights), metadata={"format": "pt"})
    write_sidecar(directory, method, model, STATE_DICT, weights, trained_count(state))
    return directory


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an artifact: a directory written by `write_state_dict`, or an older version's torch file."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file():  # an older version's pickled state dict (lora.pt, ...): weights only, no code runs
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise PtuningError(f"{path}: unreadable trained parameters ({one_line(exc)})") from None
        if not isinstance(state, dict):
            raise PtuningError(f"{path}: unreadable trained parameters (a {type(state).__name__}, not a state dict)")
        return state
    if not path.is_dir():
        raise PtuningError(f"{path}: no trained parameters there")
    sidecar = read_sidecar(path)
    weights = path / sidecar["weights"]
    try:
        if weights.name.endswith(".index.json"):  # a sharded save_pretrained checkpoint (a model larger than t5-small)
            shards = dict.fromkeys(json.loads(weights.read_text(encoding="utf-8"))["weight_map"].values())
            return {k: v for shard in shards for k, v in load_file(str(path / shard), device="cpu").items()}
        return load_file(str(weights), device="cpu")
    except Exception as exc:  # missing, truncated or foreign file: SafetensorError, OSError, a damaged index
        raise PtuningError(f"{weights}: unreadable trained parameters ({one_line(exc)})") from None


def copy_into(model: nn.Module, state: dict[str, torch.Tensor], where: Path, require: list[str] | None = None) -> None:
    """Copy saved tensors into the model's parameters of the same names (tied names included).

    `require`: parameter names that must all be in `state` (the ones the method trains)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    unknown = [n for n in state if n not in params]
    if unknown:
        raise PtuningError(f"{where}: saved parameters {unknown[:3]} do not exist in this model")
    missing = [n for n in (require or []) if n not in state]
    if missing:
        raise PtuningError(f"{where}: the trained parameters {missing[:3]} are not in it")
    with torch.no_grad():
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise PtuningError(f"{where}: parameter {name} has shape {tuple(tensor.shape)} there, "
                                   f"{tuple(params[name].shape)} in this model")
            params[name].copy_(tensor)
