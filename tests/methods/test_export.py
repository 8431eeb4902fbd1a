"""`ptuning export RUN_DIR --to peft DIR`: a hand LoRA run on the tiny model becomes a PEFT adapter directory that
`PeftModel.from_pretrained` loads, giving the logits of ptuning's own model; every refusal is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ptuning.cli import main
from ptuning.methods.artifacts import read_state_dict
from tests.run.test_reliability import write_jobs

JOBS = {
    # a large learning rate, so that B moves far from its zero start in 4 steps
    "l": "title: L\nrow: 8\nmethod: {name: lora, implementation: hand, rank: 4, alpha: 8.0}\nlr: 1.0e-2\n",
    "p": "title: P\nrow: 9\nmethod: {name: lora, implementation: peft, rank: 2}\nlr: 1.0e-3\n",
    "z": "title: Z\nrow: 0\nmethod: {name: zero_shot, implementation: hand}\nlr: 1.0e-4\n",
}


def cli(*args: str, jobs_dir: Path | None = None):
    prefix = ["--jobs-dir", str(jobs_dir)] if jobs_dir else []
    return CliRunner().invoke(main, [*prefix, *args], env={"HF_HUB_OFFLINE": "1"}, catch_exceptions=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tiny_data_dir) -> Path:
    """The output folder of one tiny run of each job: l (hand LoRA), p (PEFT LoRA), z (zero-shot)."""
    jobs_dir = write_jobs(tmp_path_factory.mktemp("jobs"), tiny_model_dir, tiny_data_dir, JOBS)
    out = tmp_path_factory.mktemp("results")
    result = cli("run", "l", "p", "z", "--device", "cpu", "--output-dir", str(out), jobs_dir=jobs_dir)
    assert result.exit_code == 0, result.output
    return out


def ptuning_model(tiny_model_dir, run_dir: Path):
    """ptuning's own model of the hand LoRA run: the base, HandLoRA applied, the saved parameters loaded."""
    from ptuning.methods import build_method
    from ptuning.model import load_model

    method = build_method("lora", "hand", {"rank": 4, "alpha": 8.0})
    model = method.apply(load_model(str(tiny_model_dir))[0]).eval()
    method.load(model, run_dir / json.loads((run_dir / "result.json").read_text())["artifact"])
    return model


def inputs(vocab: int) -> dict:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, vocab, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    ids[2, -4:], mask[2, -4:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": torch.randint(3, vocab, (3, 4), generator=g)}


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_export_gives_a_peft_adapter_with_the_same_logits(runs, tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    run_dir, out = runs / "l" / "seed0", tmp_path / "exported"
    result = cli("export", str(run_dir), "--to", "peft", str(out))
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"exported l ({run_dir}) to {out}: a PEFT LoRA adapter, r=4, lora_alpha=8, 12 q/v projections; load it with "
        f"PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained({str(tiny_model_dir)!r}), {str(out)!r})\n")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert {k: config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "bias", "base_model_name_or_path")} == {
        "peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "r": 4, "lora_alpha": 8.0, "lora_dropout": 0.0, "bias": "none",
        "base_model_name_or_path": str(tiny_model_dir)}
    assert sorted(config["target_modules"]) == ["q", "v"]

    peft_model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(config["base_model_name_or_path"]), str(out)).eval()
    ours = ptuning_model(tiny_model_dir, run_dir)
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir).eval()
    batch = inputs(base.config.vocab_size)
    expected = logits(ours, batch)
    torch.testing.assert_close(logits(peft_model, batch), expected, rtol=1e-5, atol=1e-5)
    assert (logits(base, batch) - expected).abs().max() > 1e-2  # the LoRA changed the model: the comparison means something

    # the tensors PEFT itself would write for this configuration: same names, same shapes
    import peft

    own = tmp_path / "peft-own"
    fresh = AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir)
    peft.get_peft_model(fresh, peft.LoraConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, r=4, lora_alpha=8.0, target_modules=["q", "v"])).save_pretrained(own)
    theirs, mine = load_file(own / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert len(mine) == 6 * 2 * 2  # 6 attention modules (2 encoder, 2+2 decoder with cross-attention), q and v, A and B
    assert {k: tuple(v.shape) for k, v in mine.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_an_older_versions_run_exports_the_same_tensors(runs, tmp_path):
    run_dir = tmp_path / "old"
    shutil.copytree(runs / "l" / "seed0", run_dir)
    torch.save(read_state_dict(run_dir / "lora"), run_dir / "lora.pt")  # as older versions wrote it: a pickle, no sidecar
    shutil.rmtree(run_dir / "lora")
    result = json.loads((run_dir / "result.json").read_text())
    (run_dir / "result.json").write_text(json.dumps({**result, "artifact": "lora.pt"}))
    assert cli("export", str(runs / "l" / "seed0"), "--to", "peft", str(tmp_path / "new")).exit_code == 0
    assert cli("export", str(run_dir), "--to", "peft", str(tmp_path / "from-old")).exit_code == 0
    new, old = load_file(tmp_path / "new" / "adapter_model.safetensors"), load_file(tmp_path / "from-old" / "adapter_model.safetensors")
    assert list(new) == list(old) and all(torch.equal(new[k], old[k]) for k in new)
    assert json.loads((tmp_path / "from-old" / "adapter_config.json").read_text()) == json.loads((tmp_path / "new" / "adapter_config.json").read_text())


def test_base_model_option_is_recorded(runs, tmp_path):
    assert cli("export", str(runs / "l" / "seed0"), "--to", "peft", str(tmp_path / "x"), "--base-model", "t5-small").exit_code == 0
    assert json.loads((tmp_path / "x" / "adapter_config.json").read_text())["base_model_name_or_path"] == "t5-small"


def test_into_an_empty_existing_directory(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    assert cli("export", str(runs / "l" / "seed0"), "--to", "peft", str(tmp_path / "empty")).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no temporary left beside it


def _copy(runs, tmp_path, job="l", edit=None, damage=None) -> Path:
    run_dir = tmp_path / f"copy-{job}"
    shutil.copytree(runs / job / "seed0", run_dir)
    if edit:
        result = json.loads((run_dir / "result.json").read_text())
        (run_dir / "result.json").write_text(json.dumps({**result, **edit}))
    if damage:
        damage(run_dir)
    return run_dir


@pytest.mark.parametrize("case, message", [
    ("job dir", "{runs}/l is not a run directory (no result.json); pass one such as results/lora_8/seed0"),
    ("failed", "{run} holds a run that did not complete (status 'failed'); finish it first (rerun the same ptuning run command)"),
    ("damaged", "{run}/result.json: unreadable result file ("),
    ("peft", "only hand-written LoRA runs (lora/hand, e.g. lora_8) export to PEFT; {runs}/p/seed0 ran lora/peft, and its artifact "
             "{runs}/p/seed0/lora already is a PEFT adapter directory: PeftModel.from_pretrained loads it as it is"),
    ("zero-shot", "only hand-written LoRA runs (lora/hand, e.g. lora_8) export to PEFT; {runs}/z/seed0 ran zero_shot/hand, "
                  "and it trained nothing, so there is nothing to export"),
    ("no artifact", "{run}: the trained parameters {run}/lora are missing"),
    ("not empty", "{out} already exists and is not an empty directory; pass a new or empty one"),
    ("a file", "{out} already exists and is not an empty directory; pass a new or empty one"),
    ("not a lora", "{run}/lora: not a hand-written LoRA's parameters (expected pairs <module>.lora_A, <module>.lora_B)"),
])
def test_refusals_are_one_line_and_write_nothing(runs, tmp_path, case, message):
    out = tmp_path / "out"
    run = {
        "job dir": lambda: runs / "l",
        "failed": lambda: _copy(runs, tmp_path, edit={"status": "failed", "reason": "out of memory"}),
        "damaged": lambda: _copy(runs, tmp_path, damage=lambda d: (d / "result.json").write_text("{")),
        "peft": lambda: runs / "p" / "seed0",
        "zero-shot": lambda: runs / "z" / "seed0",
        "no artifact": lambda: _copy(runs, tmp_path, damage=lambda d: shutil.rmtree(d / "lora")),
        "not empty": lambda: runs / "l" / "seed0",
        "a file": lambda: runs / "l" / "seed0",
        "not a lora": lambda: _copy(runs, tmp_path, damage=_swap_in_adapter_tensors),
    }[case]()
    if case == "not empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    if case == "a file":
        out.write_text("mine")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    result = cli("export", str(run), "--to", "peft", str(out))
    assert result.exit_code == 1
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ptuning: error: "), err
    assert message.format(runs=runs, run=run, out=out) in err[0]
    assert "Traceback" not in result.output
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before  # nothing written, nothing removed


def _swap_in_adapter_tensors(run_dir: Path) -> None:
    from safetensors.torch import save_file

    save_file({"encoder.block.0.layer.1.adapter.down.weight": torch.zeros(4, 32)}, str(run_dir / "lora" / "lora.safetensors"))


def test_unknown_target_format_is_a_usage_error(runs, tmp_path):
    result = cli("export", str(runs / "l" / "seed0"), "--to", "onnx", str(tmp_path / "x"))
    assert result.exit_code == 2 and "Invalid value for '--to': 'onnx' is not 'peft'" in result.stderr
    assert not (tmp_path / "x").exists()
