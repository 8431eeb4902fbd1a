"""The analytic formulas: values from docs/protocol.md, and printed arithmetic that adds up."""

from __future__ import annotations

import pytest

from ptuning.methods import formulas
from ptuning.testing.tiny import t5_small_config, tiny_t5_config

SMALL = t5_small_config()


@pytest.mark.parametrize(
    "formula, value",
    [
        (formulas.full(SMALL), 0),
        (formulas.soft_prompt(SMALL, 10), 5_120),
        (formulas.soft_prompt(SMALL, 1), 512),
        (formulas.adapter(SMALL, 8), 104_544),
        (formulas.adapter(SMALL, 1), 18_444),
        (formulas.lora(SMALL, 8), 294_912),
        (formulas.lora(SMALL, 1), 36_864),
        (formulas.lora(SMALL, 4), 147_456),
    ],
)
def test_protocol_values_and_arithmetic_adds_up(formula, value):
    assert formula.value == value
    assert formulas.evaluate(formula.text) == value
    assert str(formula).endswith(f"{value:,}")


@pytest.mark.parametrize("config", [SMALL, tiny_t5_config(128)], ids=["t5-small", "tiny"])
@pytest.mark.parametrize("knob", [1, 2, 3, 8, 16, 64])
def test_every_formula_text_evaluates_to_its_value(config, knob):
    for formula in (
        formulas.full(config),
        formulas.soft_prompt(config, knob),
        formulas.adapter(config, knob),
        formulas.lora(config, knob),
    ):
        assert formulas.evaluate(formula.text) == formula.value, formula


def test_lora_formula_is_not_the_reports_broken_one():
    report = "6·2·(512·8·2) + 6·2·2·(512·8)"  # as printed in the report: the arithmetic gives 196,608
    assert formulas.evaluate(report) != 294_912
    assert formulas.evaluate(formulas.lora(SMALL, 8).text) == 294_912


def test_evaluate_accepts_only_arithmetic():
    assert formulas.evaluate("12·(2×512·8 + 512 + 8)") == 104_544
    with pytest.raises(ValueError):
        formulas.evaluate("__import__('os')")
    with pytest.raises(ValueError):
        formulas.evaluate("d·n")
