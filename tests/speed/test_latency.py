"""`ptuning latency`: merged LoRA computes what unmerged LoRA does; the added latency is the method's time minus the
plain model's, review by review; latency.json is written where the tables look for it."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import T5ForConditionalGeneration

from ptuning.cli import main
from ptuning.methods import build_method
from ptuning.settings import load_job
from ptuning.speed import latency
from ptuning.testing.tiny import tiny_t5_config
from tests.conftest import JOBS


@pytest.mark.parametrize("implementation, knobs", [("hand", {"rank": 4, "alpha": 4.0}), ("peft", {"rank": 4, "alpha": 4.0, "dropout": 0.0})])
def test_merged_lora_gives_the_same_outputs_with_no_lora_left(implementation, knobs):
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(tiny_t5_config(64)).eval()
    method = build_method("lora", implementation, knobs)
    model = method.apply(model).eval()
    with torch.no_grad():  # B starts at zero: give LoRA something to add
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = torch.randint(3, 64, (3, 11))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": torch.zeros(3, 2, dtype=torch.long)}
    with torch.no_grad():
        before = model(**batch).logits
        merged = method.merged(model).eval()
        after = merged(**batch).logits
    assert torch.allclose(before, after, atol=1e-5) and not torch.allclose(before, method.generation_model(T5ForConditionalGeneration(
        tiny_t5_config(64)).eval())(**batch).logits, atol=1e-3)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert build_method("adapter", "hand", {"bottleneck": 2}).merged(model) is None


def test_added_latency_is_the_median_of_paired_differences(monkeypatch):
    jobs = [load_job("lora_8", JOBS), load_job("soft_prompt_10", JOBS)]
    seen = []

    def fake(models, inputs, device, max_length, precision):  # seconds per model, review by review
        seen.append((len(models), [len(x) for x in inputs]))
        return [[1.0, 1.2, 0.9], [1.5, 1.6, 1.2], [1.1, 1.2, 0.9]][: len(models)]

    monkeypatch.setattr(latency, "_interleaved", fake)
    data = latency.measure(jobs, torch.device("cpu"), size="small", reviews=3, echo=lambda m: None)
    assert [n for n, _ in seen] == [3, 2]  # LoRA: plain, unmerged, merged; a soft prompt: plain, with the prompt
    assert seen[1][1] == [3, 3]
    lora, prompt = data["rows"]["lora_8"], data["rows"]["soft_prompt_10"]
    assert lora["ms"] == pytest.approx(1500.0) and lora["added_ms"] == pytest.approx(400.0)  # median of 0.5, 0.4, 0.3
    assert lora["merged_ms"] == pytest.approx(1100.0) and lora["added_merged_ms"] == pytest.approx(0.0)  # of 0.1, 0, 0
    assert prompt["added_ms"] == pytest.approx(400.0) and prompt["merged_ms"] is None and prompt["added_merged_ms"] is None
    assert data["base_ms"] == pytest.approx(1000.0) and data["device"] == "cpu" and data["reviews"] == 3
    text = latency.markdown(data)
    assert "| lora_8 | 1500.00 | +400.00 | 1100.00 | +0.00 |" in text and "| soft_prompt_10 | 1500.00 | +400.00 | – | – |" in text


def test_the_models_take_turns_review_by_review(monkeypatch):
    order = []

    class Model:
        def __init__(self, name):
            self.name = name

        def eval(self):
            return self

    monkeypatch.setattr(latency, "_decode_seconds", lambda model, ids, device, max_length: order.append((model.name, ids[0])) or 1.0)
    times = latency._interleaved([Model("a"), Model("b")], [[[1], [2]], [[7], [8]]], torch.device("cpu"), 5, "fp32")
    assert order == [("a", 1), ("b", 7), ("a", 1), ("b", 7), ("a", 2), ("b", 8)]  # warm-ups, then turns
    assert times == [[1.0, 1.0], [1.0, 1.0]]


def test_latency_command_writes_its_json_into_the_results_folder(tmp_path):
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "latency", "lora_1_peft", "--device", "cpu", "--reviews", "2",
                                       "--results", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads((out / latency.LATENCY_FILE).read_text())
    assert list(data["rows"]) == ["lora_1_peft"] and data["rows"]["lora_1_peft"]["merged_ms"] is not None
    assert data["size"] == "small" and data["precision"] == "fp32"
    (tmp_path / "a-file").write_text("")
    bad = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "latency", "lora_1_peft", "--device", "cpu", "--results",
                                    str(tmp_path / "a-file" / "r")])
    assert bad.exit_code == 1 and "cannot write there" in bad.stderr and "pass --results with a writable path" in bad.stderr
