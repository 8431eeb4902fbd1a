"""Zero-shot: the pre-trained model as it is. Every parameter is frozen and nothing is added.

The runner evaluates a method whose `trains` is False exactly once (recorded as epoch 0), creates
no optimizer and writes no trained-parameter artifact.
"""

from __future__ import annotations

from torch import nn

from ptuning.methods import formulas
from ptuning.methods.base import Method


class ZeroShot(Method):
    name = "zero_shot"
    implementation = "hand"
    knobs = {}
    trains = False
    artifact = ""

    def apply(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def formula(self, config) -> formulas.Formula:
        return formulas.Formula("0", "0", 0)

    def save(self, model: nn.Module, path):  # nothing trained, nothing to save
        return None
