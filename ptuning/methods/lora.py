"""Hand-written LoRA on the q and v projections of every T5 attention module.

Every `q` and `v` Linear (encoder self-attention, decoder self- and cross-attention) is replaced by a
`LoRALinear` that holds the frozen original and adds x·A·B·(alpha/r).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ptuning.errors import PtuningError
from ptuning.methods import formulas
from ptuning.methods.base import Knob, Method


class LoRALinear(nn.Module):
    """base(x) + x·A·B·(alpha/r), A (d_in×r) Kaiming-uniform, B (r×d_out) zeros; no dropout, no bias."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(base.in_features, rank, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(rank, base.out_features, device=w.device, dtype=w.dtype))
        # As in the exercise. With A stored d_in×r, kaiming_uniform_ takes fan_in = A.size(1) = r, so
        # the bound is 1/sqrt(r) — sqrt(d_in/r) times PEFT's (8× at d_in=512, r=8), whose A is r×d_in.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A @ self.lora_B) * self.scaling


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Every T5Attention (6 encoder self, 6 decoder self, 6 decoder cross on t5-small)."""
    from transformers.models.t5.modeling_t5 import T5Attention

    return [m for m in model.modules() if isinstance(m, T5Attention)]


class HandLoRA(Method):
    name = "lora"
    implementation = "hand"
    knobs = {
        "rank": Knob(int, None, 1, "LoRA rank r", maximum=2**16),
        "alpha": Knob(float, 4.0, None, "LoRA alpha (scaling alpha/r), > 0"),
    }
    artifact = "lora"  # a directory: lora.safetensors + ptuning_artifact.json
    legacy_artifact = "lora.pt"

    @classmethod
    def validate(cls, values):
        values = super().validate(values)
        if values["alpha"] <= 0:
            raise PtuningError(f"lora/hand: knob 'alpha' must be > 0, got {values['alpha']!r}")
        return values

    def apply(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(False)
        for attn in attention_modules(model):
            for key in ("q", "v"):
                base = getattr(attn, key)
                if isinstance(base, LoRALinear):
                    raise ValueError("LoRA is already applied to this model")
                setattr(attn, key, LoRALinear(base, self.rank, self.alpha))
        return model

    def merged(self, model: nn.Module) -> nn.Module:
        """Each LoRALinear replaced by one Linear with W + (A·B·alpha/r)ᵀ: the same outputs, no extra matmuls."""
        for attn in attention_modules(model):
            for key in ("q", "v"):
                lora = getattr(attn, key)
                if isinstance(lora, LoRALinear):
                    with torch.no_grad():
                        lora.base.weight += (lora.lora_A @ lora.lora_B * lora.scaling).T
                    setattr(attn, key, lora.base)
        return model

    def formula(self, config) -> formulas.Formula:
        return formulas.lora(config, self.rank)
