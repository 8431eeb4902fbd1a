"""`ptuning smoke`: all ten rows end to end on the tiny offline model, through the CLI."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from ptuning.cli import main
from tests.conftest import JOBS


def test_smoke_runs_the_ten_rows_and_zero_shot(tmp_path, tiny_assets):
    model_dir, _ = tiny_assets
    out = tmp_path / "smoke"
    result = CliRunner().invoke(
        main, ["--jobs-dir", str(JOBS), "smoke", "--workdir", str(model_dir.parent), "--output-dir", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output + result.stderr
    assert "smoke: 11 of 11 jobs passed" in result.output
    assert "These numbers mean NOTHING" in result.output
    weights = {"full_ft": "model/model.safetensors", "soft_prompt_10": "prompts/prompts.safetensors",
               "adapter_8": "adapter/adapter.safetensors", "lora_8": "lora/lora.safetensors",
               "soft_prompt_1_opendelta": "prompts/prompts.safetensors", "adapter_8_adapterhub": "adapter/adapter.safetensors",
               "lora_1_peft": "lora/adapter_model.safetensors"}
    for job, file in weights.items():
        run = out / job / "seed0"
        data = json.loads((run / "result.json").read_text())
        assert data["status"] == "completed" and data["params"]["match"], job
        assert data["config"]["model"] == str(model_dir)
        assert data["artifact"] == file.split("/")[0] and (run / file).is_file(), job
        sidecar = json.loads((run / data["artifact"] / "ptuning_artifact.json").read_text())
        assert (sidecar["base_model"], sidecar["weights"]) == (str(model_dir), file.split("/")[1]), job
    # every trained artifact is safetensors: no pickle anywhere in the results (checkpoints are removed at the end)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.suffix in (".pt", ".bin", ".pkl", ".pth")) == []
    assert "Parameters: 11 of 11 rows add exactly what their formula says." in result.output
    tables = (out / "TABLES.md").read_text()
    assert tables.count("| yes") == 11  # every parameter count equals its formula, in the full tables
    assert tables.startswith("> **SMOKE TEST**: a tiny random T5") and json.loads((out / "results-kind.json").read_text())["kind"] == "smoke"
    assert result.output.count("SMOKE TEST: a tiny random T5 trained for one short epoch") == 1  # the compact table's caption
    tail = result.output.rstrip().splitlines()[-4:]
    assert re.fullmatch(r"ptuning: 11 runs completed, 0 skipped \(already completed\), 0 failed; (\d+ min )?\d+ s in all", tail[0]), tail
    assert tail[1:] == [f"results: {out}", f"next: ptuning plots --results {out}   (the three plots of these runs)",
                        "next: make run   (on a GPU with the Hugging Face hub: every row for real, 10 epochs; docs/speed.md)"]
    plots = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "plots", "--results", str(out)], catch_exceptions=False)
    assert plots.exit_code == 0 and len(plots.output.splitlines()) == 3


def test_smoke_workdir_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("kept")
    result = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "smoke", "--workdir", str(tmp_path / "a-file" / "w"),
                                       "--output-dir", str(tmp_path / "smoke"), "zero_shot"])
    assert result.exit_code == 1, result.exception
    assert result.stderr.strip() == (f"ptuning: error: cannot build the tiny model and data in {tmp_path / 'a-file' / 'w'}: "
                                     "Not a directory; pass --workdir with a writable directory")
    assert not (tmp_path / "smoke").exists()
