"""Bottleneck adapter through AdapterHub's `adapters` library (1.3.0).

The exercise used the old adapter-transformers `PfeifferConfig(reduction_factor=d/b)`; in `adapters`
that architecture is `SeqBnConfig`: one adapter after the feed-forward sublayer of every block
(`encoder.block.*.layer.1`, `decoder.block.*.layer.2`), Linear(d, d/rf) → ReLU → Linear(d/rf, d) plus a
residual, no extra layer norm (T5 passes none), weights N(0, 0.02) and zero biases ("bert" init).
On T5 it computes y + up(relu(down(y))) with y = x + FFN(LN(x)): the hand-written adapter's function.

`adapters` is imported only when the method is applied (see `ptuning.methods.library`).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from torch import nn

from ptuning.errors import PtuningError
from ptuning.methods import artifacts, formulas
from ptuning.methods.base import Knob, count_parameters
from ptuning.methods.library import LibraryMethod

ADAPTER_NAME = "imdb"


class _DropSpuriousWarning(logging.Filter):
    # set_active_adapters() resets the layers inside a forward context before the new setup is active,
    # so adapters 1.3.0 logs "adapters available but none are activated" while activating one.
    def filter(self, record: logging.LogRecord) -> bool:
        return "none are activated for the forward pass" not in record.getMessage()


@contextlib.contextmanager
def _quiet_activation():
    logger = logging.getLogger("adapters.model_mixin")
    quiet = _DropSpuriousWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class AdapterHubBottleneck(LibraryMethod):
    """`adapters.init(model)`, `add_adapter(name, SeqBnConfig(reduction_factor=d/b))`,
    `train_adapter(name)` (freezes everything else), `set_active_adapters(name)`."""

    name = "adapter"
    implementation = "adapterhub"
    library = "adapterhub"
    knobs = {"bottleneck": Knob(int, None, 1, "adapter bottleneck width b (reduction factor d/b)", maximum=2**16)}
    artifact = "adapter"  # a directory written by save_adapter

    def reduction_factor(self, config: Any) -> float:
        return config.d_model / self.bottleneck

    def apply(self, model: nn.Module) -> nn.Module:
        adapters = self._import()
        d = model.config.d_model
        if self.bottleneck > d:
            raise PtuningError(f"adapter/adapterhub: bottleneck {self.bottleneck} exceeds d_model {d}")
        was_training = model.training
        total_before, _ = count_parameters(model)
        adapters.init(model)
        config = adapters.SeqBnConfig(reduction_factor=self.reduction_factor(model.config))
        model.add_adapter(ADAPTER_NAME, config=config)
        with _quiet_activation():
            model.train_adapter(ADAPTER_NAME)  # freezes every non-adapter parameter (and calls model.train())
            model.set_active_adapters(ADAPTER_NAME)
        model.train(was_training)  # leave the train/eval mode to the caller
        # adapters sizes the bottleneck as int(d // (d/b)); make sure float rounding gave exactly b
        added = count_parameters(model)[0] - total_before
        expected = self.formula(model.config).value
        if added != expected:
            raise PtuningError(
                f"adapter/adapterhub: bottleneck {self.bottleneck} gave {added:,} parameters, expected {expected:,}"
            )
        return model

    def formula(self, config: Any) -> formulas.Formula:
        return formulas.adapter(config, self.bottleneck)

    # -- persistence: AdapterHub's own format, as safetensors (adapter_config.json + adapter.safetensors) --------------
    def save(self, model: nn.Module, path: Path) -> Path:
        path = Path(path)
        model.save_adapter(str(path), ADAPTER_NAME, use_safetensors=True)
        trained = sum(p.numel() for _, p in self.trainable_parameters(model))
        artifacts.write_sidecar(path, self, model, artifacts.ADAPTERHUB, "adapter.safetensors", trained)
        return path

    def load(self, model: nn.Module, path: Path) -> None:
        if not (Path(path) / "adapter_config.json").exists():
            raise PtuningError(f"{path}: not an AdapterHub adapter directory (no adapter_config.json)")
        was_training = model.training
        # replaces the freshly added adapter of the same name with the saved one
        with _quiet_activation():
            # use_safetensors: adapter.safetensors, or an older version's pytorch_adapter.bin when there is none
            model.load_adapter(str(path), load_as=ADAPTER_NAME, set_active=True, use_safetensors=True)
            model.train_adapter(ADAPTER_NAME)
            model.set_active_adapters(ADAPTER_NAME)
        model.train(was_training)
