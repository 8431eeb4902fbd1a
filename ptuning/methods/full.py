"""Full fine-tuning: every parameter of the model trains; nothing is added.

The trained model is saved as a `save_pretrained` directory (config, generation config, safetensors weights
with T5's tied embeddings stored once) that `AutoModelForSeq2SeqLM.from_pretrained` loads as it is.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ptuning.methods import artifacts, formulas
from ptuning.methods.base import Method, count_parameters


class FullFineTuning(Method):
    name = "full"
    implementation = "hand"
    knobs = {}
    artifact = "model"  # a save_pretrained directory + ptuning_artifact.json
    legacy_artifact = "model.pt"

    def apply(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def formula(self, config) -> formulas.Formula:
        return formulas.full(config)

    def save(self, model: nn.Module, path: Path) -> Path:
        path = Path(path)
        model.save_pretrained(str(path), safe_serialization=True)
        index = path / "model.safetensors.index.json"  # only for a model too large for one file
        weights = index.name if index.exists() else "model.safetensors"
        artifacts.write_sidecar(path, self, model, artifacts.TRANSFORMERS, weights, count_parameters(model)[1])
        return path
