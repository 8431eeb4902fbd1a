"""The one interface every fine-tuning method implements, hand-written or library-backed.

A method is built from its knobs (job-file fields), applied to a loaded T5 model, and then
reports which parameters train. The runner never needs to know which method it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class SameAs:
    """A knob's default that is another knob's value (a soft prompt's placeholders: its number of tokens)."""

    knob: str

    def __str__(self) -> str:
        return f"the value of {self.knob}"


@dataclass(frozen=True)
class Knob:
    """One job-file field of a method: its type, default (None = required; `SameAs(other)` = that knob's value) and
    allowed range."""

    type: type
    default: Any = None
    minimum: float | None = None
    help: str = ""
    maximum: float | None = None


class Method:
    """Base class. Subclasses set `name`, `implementation`, `knobs` and override `apply`.

    Lifecycle used by the runner:
        method = MethodClass(**knobs)          # validated knob values
        model = method.apply(model)            # may return a wrapper; freezes what must not train
        params = method.trainable_parameters(model)
        ... train ...
        method.save(model, path); method.load(fresh_model_after_apply, path)

    `save` writes a directory: safetensors weights and a `ptuning_artifact.json` sidecar (see
    ptuning/methods/artifacts.py); `load` also reads the pickled torch file of an older version.
    """

    name: ClassVar[str] = ""
    implementation: ClassVar[str] = ""
    knobs: ClassVar[dict[str, Knob]] = {}
    #: name of the directory of saved trained parameters written next to the result (e.g. "lora")
    artifact: ClassVar[str] = "trainable"
    #: the file older versions wrote instead (a pickled torch state dict, e.g. "lora.pt"); `load` still reads it,
    #: and a rerun that writes `artifact` removes it (see `remove_legacy_artifact`)
    legacy_artifact: ClassVar[str] = ""
    #: False for a method that only evaluates (zero-shot): no optimizer, one evaluation, no artifact
    trains: ClassVar[bool] = True

    def __init__(self, **values: Any) -> None:
        self.values = self.validate(dict(values))

    @classmethod
    def validate(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Check knob values against `knobs` (unknown, missing, type, minimum); return them coerced.

        Subclasses may extend this for rules a `Knob` cannot express (e.g. a strict lower bound).
        """
        from ptuning.errors import PtuningError

        where = f"{cls.name}/{cls.implementation}"
        unknown = sorted(set(values) - set(cls.knobs))
        if unknown:
            raise PtuningError(f"{where}: unknown knob(s) {unknown}; known: {sorted(cls.knobs) or 'none'}")
        out: dict[str, Any] = {}
        for key, spec in cls.knobs.items():
            value = values.get(key, spec.default)
            if isinstance(value, SameAs):
                value = values.get(value.knob, cls.knobs[value.knob].default)
            if value is None:
                raise PtuningError(f"{where}: knob {key!r} is required ({spec.help or spec.type.__name__})")
            ok = not isinstance(value, bool) or spec.type is bool
            if ok and spec.type is int:
                ok = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            elif ok and spec.type is float:
                ok = isinstance(value, (int, float))
            elif ok:
                ok = isinstance(value, spec.type)
            if not ok:
                raise PtuningError(f"{where}: knob {key!r} must be {spec.type.__name__}, got {value!r}")
            value = spec.type(value)
            if spec.minimum is not None and value < spec.minimum:
                raise PtuningError(f"{where}: knob {key!r} must be >= {spec.minimum}, got {value!r}")
            if spec.maximum is not None and value > spec.maximum:
                raise PtuningError(f"{where}: knob {key!r} must be <= {spec.maximum}, got {value!r}")
            out[key] = value
        return out

    def __getattr__(self, item: str) -> Any:  # knob access as attributes: method.rank
        values = self.__dict__.get("values", {})
        if item in values:
            return values[item]
        raise AttributeError(item)

    # -- data ------------------------------------------------------------------------------
    def placeholder_tokens(self) -> int:
        """How many `<pad>` placeholder tokens the data pipeline prepends to every input."""
        return 0

    def knob_summary(self) -> str:
        """The knob a table row is named by, as the report writes it ('rank 8', 'bottleneck 8', '10 tokens'); then
        any other knob whose value is not its default ('rank 1, alpha 8'). '–' for methods without knobs."""
        parts = []
        for i, (key, spec) in enumerate(self.knobs.items()):
            value = self.values[key]
            if i == 0 or (not isinstance(spec.default, SameAs) and value != spec.default):
                parts.append(self.describe_knob(key, value))
        return ", ".join(parts) or "–"

    def describe_knob(self, key: str, value: Any) -> str:
        """One knob in words, for `knob_summary`."""
        return f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"

    # -- model -----------------------------------------------------------------------------
    def apply(self, model: nn.Module) -> nn.Module:
        """Add the method's parameters to `model`, freeze the rest; return the model to train."""
        raise NotImplementedError

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs that the optimizer updates."""
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def generation_model(self, model: nn.Module) -> nn.Module:
        """The object whose `.generate()` evaluation calls (usually `model` itself)."""
        return model

    def merged(self, model: nn.Module) -> nn.Module | None:
        """The adapted model with the method's weights folded into the base weights, computing the same function with
        no added inference cost; None for a method that cannot be merged (adapters, prompts). May change `model`."""
        return None

    def formula(self, config: Any):
        """The analytic count of added parameters (a `ptuning.methods.formulas.Formula`) for this method."""
        raise NotImplementedError

    # -- persistence -----------------------------------------------------------------------
    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Only the trained parameters, detached on CPU."""
        return {n: p.detach().cpu().clone() for n, p in self.trainable_parameters(model)}

    def save(self, model: nn.Module, path: Path) -> Path:
        """Write the directory `path`: `<artifact>.safetensors` with the trained parameters, and the sidecar."""
        from ptuning.methods import artifacts

        return artifacts.write_state_dict(Path(path), self.state_dict(model), self, model)

    def load(self, model: nn.Module, path: Path) -> None:
        """Load parameters saved by `save` (or an older version's torch file) into a model `apply` prepared."""
        from ptuning.methods import artifacts

        artifacts.copy_into(model, artifacts.read_state_dict(Path(path)), Path(path),
                            require=[n for n, _ in self.trainable_parameters(model)])

    def remove_legacy_artifact(self, run_dir: Path) -> None:
        """Remove an older version's artifact file from `run_dir` (once the new artifact is written there)."""
        if self.legacy_artifact and self.legacy_artifact != self.artifact:
            from ptuning.atomic import remove

            remove(Path(run_dir) / self.legacy_artifact)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters, counting a shared (tied) tensor once."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return total, trainable
