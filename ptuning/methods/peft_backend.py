"""LoRA through Hugging Face PEFT (0.21.2), as the exercise used it.

`get_peft_model(model, LoraConfig(task_type=SEQ_2_SEQ_LM, r, lora_alpha=alpha, lora_dropout=dropout))`
with PEFT's default T5 targets, `q` and `v` of every attention module (18 on t5-small). PEFT computes
base(x) + B(A(dropout(x)))·(alpha/r), A (r×d_in) Kaiming-uniform(a=√5) so fan_in = d_in, B zeros.

Design differences from the hand-written LoRA, kept as the exercise had them: the hand LoRA stores A as
d_in×r, so the same Kaiming call sees fan_in = r and draws A about √(d_in/r) times larger (8× at
d_in=512, r=8); and PEFT applies dropout 0.1 to the LoRA input while the hand LoRA has none. Both
scale by alpha/r (alpha 4: 0.5 at r=8, 4.0 at r=1).

`peft` is imported only when the method is applied (see `ptuning.methods.library`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ptuning.errors import PtuningError
from ptuning.methods import artifacts, formulas
from ptuning.methods.base import Knob
from ptuning.methods.library import LibraryMethod


class PeftLoRA(LibraryMethod):
    """PEFT LoRA; `apply` returns the `PeftModel` wrapper, which is also what `.generate()` is called on."""

    name = "lora"
    implementation = "peft"
    library = "peft"
    knobs = {
        "rank": Knob(int, None, 1, "LoRA rank r", maximum=2**16),
        "alpha": Knob(float, 4.0, None, "LoRA alpha (scaling alpha/r), > 0"),
        "dropout": Knob(float, 0.1, 0.0, "dropout on the LoRA input, in [0, 1)"),
    }
    artifact = "lora"  # a directory written by PeftModel.save_pretrained

    @classmethod
    def validate(cls, values):
        values = super().validate(values)
        if values["alpha"] <= 0:
            raise PtuningError(f"lora/peft: knob 'alpha' must be > 0, got {values['alpha']!r}")
        if not values["dropout"] < 1:
            raise PtuningError(f"lora/peft: knob 'dropout' must be < 1, got {values['dropout']!r}")
        return values

    def lora_config(self):
        peft = self._import()
        return peft.LoraConfig(
            task_type=peft.TaskType.SEQ_2_SEQ_LM,
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
        )

    def apply(self, model: nn.Module) -> nn.Module:
        peft = self._import()
        if isinstance(model, peft.PeftModel):
            raise PtuningError("lora/peft: the model already has PEFT LoRA applied")
        return peft.get_peft_model(model, self.lora_config())  # freezes the base model

    def generation_model(self, model: nn.Module) -> nn.Module:
        # PeftModelForSeq2SeqLM.generate runs the LoRA-adapted model
        return model

    def merged(self, model: nn.Module) -> nn.Module:
        """PEFT's merge_and_unload: the base model with the LoRA weights folded in."""
        return model.merge_and_unload()

    def formula(self, config: Any) -> formulas.Formula:
        return formulas.lora(config, self.rank)

    # -- persistence: PEFT's own format (adapter_config.json + adapter_model.safetensors) -------------
    def save(self, model: nn.Module, path: Path) -> Path:
        path = Path(path)
        model.save_pretrained(str(path), safe_serialization=True)
        trained = sum(p.numel() for _, p in self.trainable_parameters(model))
        artifacts.write_sidecar(path, self, model, artifacts.PEFT, "adapter_model.safetensors", trained)
        return path

    def load(self, model: nn.Module, path: Path) -> None:
        peft = self._import()
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        if not isinstance(model, peft.PeftModel):
            raise PtuningError("lora/peft: load needs the model returned by apply (a PeftModel)")
        if not (Path(path) / "adapter_config.json").exists():
            raise PtuningError(f"{path}: not a PEFT adapter directory (no adapter_config.json)")
        weights = load_peft_weights(str(path), device="cpu")
        result = set_peft_model_state_dict(model, weights)
        lora_missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or lora_missing:
            bad = (result.unexpected_keys or lora_missing)[:3]
            raise PtuningError(f"{path}: saved LoRA weights do not fit this model ({bad})")
