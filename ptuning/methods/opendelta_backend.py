"""Soft prompt through OpenDelta 0.3.2 (`opendelta.SoftPromptModel`), as the exercise used it.

OpenDelta is imported only when the method is applied (see `ptuning.methods.library`), through
`ptuning.methods.opendelta_compat`, which holds the three import-time fixes OpenDelta 0.3.2 needs
with the pinned transformers.

How OpenDelta's soft prompt works, and how it differs from the hand-written one:
  * `SoftPromptModel` wraps the encoder's `forward`: it embeds `input_ids` itself and PREPENDS its n
    soft vectors (initialised from embedding rows 0..n-1, like the hand prompt), so the encoder sees
    n more positions than the caller passed.
  * It grows the caller's `attention_mask` by n leading ones IN PLACE (`mask.data = cat(...)`). That
    is what keeps the decoder's cross-attention mask (the same tensor object inside
    `T5ForConditionalGeneration.forward` / `generate`) as long as the encoder output. It happens once
    per forward or generate call (not once per decoding step), and a mask that already grew is not
    grown again, so calling forward or generate twice on the same batch gives the same result
    (tests/test_library_methods.py checks both). The caller's batch tensor is left grown.
  * The exercise ALSO kept the `<pad>` placeholder tokens (id 0, attention 1) in the input, so
    OpenDelta's n vectors sit in front of them and the encoder sees [n soft | p pad | text]: we
    reproduce that, hence `placeholder_tokens()` returns p, the `placeholders` knob (default n; the
    1-token row's job file sets 10, as the course's notebook fed it). (The hand-written prompt instead
    REPLACES the placeholders: [n prompt | text].)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ptuning.errors import PtuningError
from ptuning.methods import formulas
from ptuning.methods.base import Knob, SameAs
from ptuning.methods.library import LibraryMethod, import_library
from ptuning.methods.soft_prompt import describe_tokens


class OpenDeltaSoftPrompt(LibraryMethod):
    """OpenDelta `SoftPromptModel(backbone_model=model, soft_token_num=n)`, then
    `freeze_module(exclude=["deltas"])`: only the n·d soft-prompt vectors train.

    The data pipeline still prepends `<pad>` placeholders (`placeholder_tokens()` = the `placeholders`
    knob, n by default), as the exercise did; OpenDelta puts its own n vectors in front of them.
    """

    name = "soft_prompt"
    implementation = "opendelta"
    library = "opendelta"
    knobs = {
        "tokens": Knob(int, None, 1, "number of soft-prompt vectors n", maximum=2**16),
        "placeholders": Knob(int, SameAs("tokens"), 0, "<pad> placeholders left in front of every input; OpenDelta puts "
                             "its vectors before them (default: tokens)", maximum=2**16),
    }
    artifact = "prompts"  # a directory: prompts.safetensors + ptuning_artifact.json
    legacy_artifact = "prompts.pt"

    @classmethod
    def _import(cls):
        who = f"{cls.name}/{cls.implementation}"
        import_library(cls.library, "ptuning.methods.opendelta_compat", who=who)  # fixes, then opendelta
        return import_library(cls.library, who=who)

    def placeholder_tokens(self) -> int:
        # The exercise kept the <pad> placeholders in the input in its OpenDelta rows as well (OpenDelta prepends
        # its own vectors in front of them); ptuning reproduces that (docs/protocol.md). By default as many as the
        # prompt has vectors; the 1-token row's job file asks for the 10 the course's notebook fed it.
        return self.placeholders

    def describe_knob(self, key: str, value) -> str:
        return describe_tokens(key, value) or super().describe_knob(key, value)

    def apply(self, model: nn.Module) -> nn.Module:
        opendelta = self._import()
        encoder = model.get_encoder()
        if hasattr(encoder, "soft_prompt_layer"):
            raise PtuningError("soft_prompt/opendelta: the model already has an OpenDelta soft prompt")
        delta = opendelta.SoftPromptModel(backbone_model=model, soft_token_num=self.tokens)
        layer = encoder.soft_prompt_layer
        if not isinstance(layer.soft_embeds, nn.Parameter):
            # OpenDelta does `nn.Parameter(...).to(device)`; for a model on a GPU that returns a plain
            # tensor (not a registered parameter) and the prompt would never train. Re-register it.
            layer.soft_embeds = nn.Parameter(layer.soft_embeds.detach().clone())
            delta.mark_as_delta()
        # Freezes everything but the deltas; also makes model.state_dict() return only the deltas.
        delta.freeze_module(exclude=["deltas"])
        self._delta = delta  # keep OpenDelta's bookkeeping object alive with the method
        return model

    def formula(self, config: Any) -> formulas.Formula:
        return formulas.soft_prompt(config, self.tokens)

    # Persistence: OpenDelta's delta state dict, i.e. exactly the soft-prompt parameter
    # ("encoder.soft_prompt_layer.soft_embeds", n×d) as prompts/prompts.safetensors; see Method.save / Method.load.
    def state_dict(self, model: nn.Module) -> dict:
        state = super().state_dict(model)
        if list(state) != ["encoder.soft_prompt_layer.soft_embeds"]:
            raise PtuningError(f"soft_prompt/opendelta: unexpected trainable parameters {list(state)[:3]}")
        return state
