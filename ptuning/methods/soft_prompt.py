"""Hand-written soft prompt: n learned vectors replace the n `<pad>` placeholders at the encoder input.

The data pipeline prepends n placeholder ids (attention 1) to every input; this method swaps the
*encoder's* embedding module for `PromptedEmbedding`, which embeds the ids as usual and then
overwrites positions 0..n-1 with the prompt. T5 shares one embedding (`model.shared`) between the
encoder, the decoder and the tied LM head: only the encoder's reference is replaced, so the decoder
and the head keep using `model.shared` unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from ptuning.errors import PtuningError
from ptuning.methods import formulas
from ptuning.methods.base import Knob, Method, SameAs


class PromptedEmbedding(nn.Module):
    """Token embedding whose first n output positions are the learned prompt vectors."""

    def __init__(self, embedding: nn.Embedding, tokens: int) -> None:
        super().__init__()
        self.embedding = embedding  # the shared, frozen embedding (same object as model.shared)
        # initialised from the embeddings of ids 0..n-1, as in the exercise
        self.prompt = nn.Parameter(embedding.weight[:tokens].detach().clone())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.embedding(input_ids)
        n = self.prompt.shape[0]
        if embeds.shape[1] < n:
            raise ValueError(f"input has {embeds.shape[1]} positions, fewer than the {n} prompt placeholders")
        prompt = self.prompt.to(embeds.dtype).unsqueeze(0).expand(embeds.shape[0], -1, -1)
        return torch.cat([prompt, embeds[:, n:]], dim=1)


def describe_tokens(key: str, value) -> str | None:
    """A soft prompt's length as the report writes it ('10 tokens', '1 token'); None for another knob."""
    if key != "tokens":
        return None
    return f"{value} token" + ("s" if value != 1 else "")


class HandSoftPrompt(Method):
    name = "soft_prompt"
    implementation = "hand"
    knobs = {
        "tokens": Knob(int, None, 1, "number of prompt vectors n", maximum=2**16),
        "placeholders": Knob(int, SameAs("tokens"), 1, "<pad> placeholders in front of every input; the prompt replaces "
                             "the first n (default: tokens)", maximum=2**16),
    }
    artifact = "prompts"  # a directory: prompts.safetensors + ptuning_artifact.json
    legacy_artifact = "prompts.pt"

    @classmethod
    def validate(cls, values):
        values = super().validate(values)
        if values["placeholders"] < values["tokens"]:
            raise PtuningError(f"soft_prompt/hand: knob 'placeholders' ({values['placeholders']}) must be at least 'tokens' "
                               f"({values['tokens']}): the prompt's vectors replace placeholders, never text")
        return values

    def describe_knob(self, key: str, value) -> str:
        return describe_tokens(key, value) or super().describe_knob(key, value)

    def placeholder_tokens(self) -> int:
        return self.placeholders

    def apply(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(False)
        encoder = model.get_encoder()
        if isinstance(encoder.embed_tokens, PromptedEmbedding):
            raise ValueError("the soft prompt is already applied to this model")
        # registered as model.encoder.embed_tokens.prompt, so named_parameters/save/load see it
        encoder.embed_tokens = PromptedEmbedding(model.get_input_embeddings(), self.tokens)
        return model

    def formula(self, config) -> formulas.Formula:
        return formulas.soft_prompt(config, self.tokens)
