"""Hand-written bottleneck adapter after the feed-forward sublayer of every T5 block.

Each `T5LayerFF` (encoder `block[i].layer[1]`, decoder `block[i].layer[2]`) gets an `Adapter` child
module and a forward hook that passes the sublayer's output (already including its own residual)
through it. The base model's parameter names and code are untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from ptuning.methods import formulas
from ptuning.methods.base import Knob, Method


class Adapter(nn.Module):
    """x + up(relu(down(x))): Linear(d,b) → ReLU → Linear(b,d) with a residual; PyTorch default init."""

    def __init__(self, d_model: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck)
        self.up = nn.Linear(bottleneck, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(torch.relu(self.down(x)))


def _run_adapter(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    # a plain function (not a closure) so that deep-copied models call their own adapter
    return module.adapter(output)


def feed_forward_layers(model: nn.Module) -> list[nn.Module]:
    """The T5LayerFF module of every encoder and decoder block, in order."""
    return [block.layer[-1] for stack in (model.encoder, model.decoder) for block in stack.block]


class HandAdapter(Method):
    name = "adapter"
    implementation = "hand"
    knobs = {"bottleneck": Knob(int, None, 1, "adapter bottleneck width b", maximum=2**16)}
    artifact = "adapter"  # a directory: adapter.safetensors + ptuning_artifact.json
    legacy_artifact = "adapter.pt"

    def apply(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(False)
        for ff in feed_forward_layers(model):
            if hasattr(ff, "adapter"):
                raise ValueError("the adapter is already applied to this model")
            ref = ff.DenseReluDense.wo.weight
            ff.adapter = Adapter(model.config.d_model, self.bottleneck).to(ref.device, ref.dtype)
            ff.register_forward_hook(_run_adapter)
        return model

    def formula(self, config) -> formulas.Formula:
        return formulas.adapter(config, self.bottleneck)
