"""Full fine-tuning: every parameter of the model trains; nothing is added."""

from __future__ import annotations

from torch import nn

from ptuning.methods import formulas
from ptuning.methods.base import Method


class FullFineTuning(Method):
    name = "full"
    implementation = "hand"
    knobs = {}
    artifact = "model.pt"

    def apply(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def formula(self, config) -> formulas.Formula:
        return formulas.full(config)
