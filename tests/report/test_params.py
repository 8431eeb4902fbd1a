"""`ptuning params`: exact measured counts on the t5-small config (one model build for the module)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest

from ptuning.errors import PtuningError
from ptuning.methods import formulas
from ptuning.report.params import COLUMNS, load_config, parameter_rows, render_json, render_markdown
from ptuning.testing.tiny import tiny_t5_config


@dataclass
class Job:
    """Stand-in with the fields of a ptuning job that `parameter_rows` reads."""

    name: str
    method: str
    knobs: dict = field(default_factory=dict)
    implementation: str = "hand"
    title: str = ""


JOBS = [
    Job("full", "full", title="Full fine-tuning"),
    Job("soft_prompt_10", "soft_prompt", {"tokens": 10}, title="Soft prompt, hand-written"),
    Job("adapter_8", "adapter", {"bottleneck": 8}, title="Adapter, hand-written"),
    Job("lora_8", "lora", {"rank": 8}, title="LoRA, hand-written"),
    Job("soft_prompt_1", "soft_prompt", {"tokens": 1}),
    Job("adapter_1", "adapter", {"bottleneck": 1}),
    Job("lora_1", "lora", {"rank": 1}),
    Job("lora_4", "lora", {"rank": 4, "alpha": 8}),
]

BASE = 60_506_624
EXPECTED_TOTAL = {
    "full": BASE,
    "soft_prompt_10": 60_511_744,
    "adapter_8": 60_611_168,
    "lora_8": 60_801_536,
    "soft_prompt_1": BASE + 512,
    "adapter_1": BASE + 18_444,
    "lora_1": BASE + 36_864,
    "lora_4": BASE + 147_456,
}


@pytest.fixture(scope="module")
def rows():
    """All jobs measured on the t5-small config: one 60M-parameter build, deep-copied per job."""
    return {r["job"]: r for r in parameter_rows(JOBS)}


def test_rows_have_the_documented_columns(rows):
    assert list(rows) == [j.name for j in JOBS]
    assert all(list(r) == COLUMNS for r in rows.values())


@pytest.mark.parametrize("job", list(EXPECTED_TOTAL))
def test_exact_totals_on_t5_small(rows, job):
    assert rows[job]["total"] == EXPECTED_TOTAL[job]


@pytest.mark.parametrize("job", list(EXPECTED_TOTAL))
def test_measured_delta_equals_formula(rows, job):
    row = rows[job]
    assert row["added"] == row["total"] - BASE == row["formula_value"]
    assert row["match"] is True
    text = row["formula"].split(" = ")[-1]
    assert formulas.evaluate(text) == row["formula_value"]


def test_trainable_counts(rows):
    assert rows["full"]["trainable"] == BASE and rows["full"]["added"] == 0 and rows["full"]["formula"] == "0"
    for name, row in rows.items():
        if name != "full":
            assert row["trainable"] == row["added"], name


def test_formula_texts(rows):
    assert rows["soft_prompt_10"]["formula"] == "n·d = 10·512"
    assert rows["adapter_8"]["formula"] == "L·(2·d·b + d + b) = 12·(2·512·8 + 512 + 8)"
    assert rows["lora_8"]["formula"] == "M·2·r·(d_in + d_out) = 18·2·8·(512 + 512)"


def test_markdown_and_json(rows):
    table = list(rows.values())
    md = render_markdown(table)
    lines = md.splitlines()
    assert lines[0].startswith("| job") and len(lines) == 2 + len(table)
    assert "60,801,536" in md and "| yes" in md and "NO" not in md
    assert json.loads(render_json(table)) == table


def test_tiny_config_and_mismatch_is_reported():
    rows = parameter_rows([Job("lora_2", "lora", {"rank": 2})], config=tiny_t5_config(128))
    assert rows[0]["match"] and rows[0]["added"] == 6 * 2 * 2 * (32 + 32)
    broken = dict(rows[0], match=False)
    assert "| NO" in render_markdown([broken])


def test_load_config_from_local_dir_and_clear_error(tmp_path):
    tiny_t5_config(128).save_pretrained(tmp_path / "tiny")
    assert load_config(str(tmp_path / "tiny")).d_model == 32
    assert load_config(None).d_model == 512
    with pytest.raises(PtuningError, match="--model"):
        load_config(str(tmp_path / "does-not-exist"))


def test_load_config_refuses_non_t5(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(PtuningError, match="T5"):
        load_config(str(tmp_path / "gpt2"))


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """A jobs dir holding the repo's defaults and hand-written job files, and a tiny config dir."""
    import shutil
    from pathlib import Path

    root = tmp_path_factory.mktemp("cli")
    repo_jobs = Path(__file__).resolve().parents[2] / "jobs"
    jobs = root / "jobs"
    jobs.mkdir()
    for name in ("_defaults", "full_ft", "soft_prompt_10", "adapter_8", "lora_8"):
        shutil.copy(repo_jobs / f"{name}.yaml", jobs)
    tiny_t5_config(128).save_pretrained(root / "tiny")
    return jobs, root / "tiny"


def test_cli_params_markdown_and_json(cli_setup):
    from click.testing import CliRunner

    from ptuning.cli import main

    jobs, tiny = cli_setup
    result = CliRunner().invoke(main, ["--jobs-dir", str(jobs), "params", "--model", str(tiny)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("| job")
    assert "n·d = 10·32" in result.output and "NO" not in result.output
    result = CliRunner().invoke(main, ["--jobs-dir", str(jobs), "params", "--model", str(tiny), "--format", "json", "lora_8"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["job"] == "lora_8" and row["added"] == row["formula_value"] == 6 * 2 * 8 * 64 and row["match"]


def test_cli_params_unknown_job_is_one_line_and_exit_1(cli_setup):
    from click.testing import CliRunner

    from ptuning.cli import main

    jobs, tiny = cli_setup
    result = CliRunner().invoke(main, ["--jobs-dir", str(jobs), "params", "--model", str(tiny), "lora_8", "lora_88"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("ptuning: error")]
    assert len(errors) == 1 and "lora_88" in errors[0]
    assert "| lora_8 " in result.output  # the good job is still reported


def test_cli_params_exits_1_on_a_mismatch_and_on_a_method_that_cannot_be_built(cli_setup, monkeypatch):
    """A count that differs from its formula fails the command; a row whose library is missing is one error line
    while the other rows are still measured."""
    import sys
    from pathlib import Path

    from click.testing import CliRunner

    from ptuning.cli import main

    jobs, tiny = cli_setup
    real = formulas.lora
    monkeypatch.setattr(formulas, "lora", lambda config, rank: dataclasses.replace(real(config, rank), value=real(config, rank).value + 1))
    result = CliRunner().invoke(main, ["--jobs-dir", str(jobs), "params", "--model", str(tiny), "lora_8", "adapter_8"])
    assert result.exit_code == 1, result.output
    assert "| NO" in next(line for line in result.output.splitlines() if "| lora_8 " in line)
    assert "| yes" in next(line for line in result.output.splitlines() if "| adapter_8 " in line)
    monkeypatch.undo()

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    repo_jobs = Path(__file__).resolve().parents[2] / "jobs"
    result = CliRunner().invoke(main, ["--jobs-dir", str(repo_jobs), "params", "--model", str(tiny), "lora_8", "lora_8_peft"])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("ptuning: error")]
    assert len(errors) == 1 and errors[0].startswith("ptuning: error: [lora_8_peft] lora/peft needs the package 'peft'")
    assert "| lora_8 " in result.output and "| yes" in result.output and "| lora_8_peft " not in result.output
