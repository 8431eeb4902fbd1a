"""Analytic counts of the parameters each method adds to T5 — one function per method family.

Every function returns a `Formula` whose `text` is the arithmetic written out with the job's numbers
and whose `value` is what that arithmetic evaluates to (checked by the tests: the exercise's own LoRA
formula printed arithmetic that did not add up, see docs/protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Formula:
    symbolic: str  # e.g. "n·d"
    text: str  # e.g. "10·512"
    value: int

    def __str__(self) -> str:
        parts = dict.fromkeys([self.symbolic, self.text, f"{self.value:,}"])  # "0", not "0 = 0 = 0"
        return " = ".join(parts)


def _blocks(config) -> tuple[int, int]:
    enc = config.num_layers
    dec = config.num_decoder_layers if config.num_decoder_layers is not None else enc
    return enc, dec


def full(config) -> Formula:
    """Full fine-tuning adds nothing; every existing parameter trains."""
    return Formula("0", "0", 0)


def soft_prompt(config, tokens: int) -> Formula:
    """n learned d-dim vectors in front of the encoder input."""
    d = config.d_model
    return Formula("n·d", f"{tokens}·{d}", tokens * d)


def adapter(config, bottleneck: int) -> Formula:
    """One Linear(d,b) → ReLU → Linear(b,d) per block (encoder + decoder), weights then biases."""
    d, b = config.d_model, bottleneck
    enc, dec = _blocks(config)
    n = enc + dec
    return Formula("L·(2·d·b + d + b)", f"{n}·(2·{d}·{b} + {d} + {b})", n * (2 * d * b + d + b))


def lora(config, rank: int) -> Formula:
    """A (d_in×r) and B (r×d_out) on q and v of every attention module.

    T5 has one self-attention per encoder block and a self- and a cross-attention per decoder block;
    q and v map d_model → heads·d_kv.
    """
    d_in, d_out = config.d_model, config.num_heads * config.d_kv
    enc, dec = _blocks(config)
    modules = enc + 2 * dec
    value = modules * 2 * rank * (d_in + d_out)
    return Formula("M·2·r·(d_in + d_out)", f"{modules}·2·{rank}·({d_in} + {d_out})", value)


def evaluate(text: str) -> int:
    """Evaluate a formula's written-out arithmetic (digits, + · × * ( ) and spaces only)."""
    allowed = set("0123456789+*() ")
    expr = text.replace("·", "*").replace("×", "*")
    if not set(expr) <= allowed:
        raise ValueError(f"not plain arithmetic: {text!r}")
    return int(eval(expr, {"__builtins__": {}}, {}))  # noqa: S307 - restricted to digits and operators
