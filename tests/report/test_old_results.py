"""A results folder written by an older version (pickled `.pt` artifacts) still works with tables, check and plots,
and a forced rerun there replaces the old file by the new artifact directory. Tiny model, CPU."""

from __future__ import annotations

import json
import shutil

import torch
from click.testing import CliRunner

from ptuning.cli import main
from ptuning.methods.artifacts import read_state_dict
from ptuning.report.tables import _fmt_bytes
from tests.conftest import JOBS


def invoke(*args):
    return CliRunner().invoke(main, ["--jobs-dir", str(JOBS), *args], env={"HF_HUB_OFFLINE": "1"}, catch_exceptions=False)


def test_tables_check_plots_read_an_older_versions_results_and_a_rerun_replaces_the_pt(tmp_path, tiny_model_dir, tiny_data_dir):
    out = tmp_path / "results"
    run = ["run", "full_ft", "lora_8", "--model", str(tiny_model_dir), "--dataset", str(tiny_data_dir), "--epochs", "2",
           "--train-limit", "16", "--eval-limit", "8", "--device", "cpu", "--output-dir", str(out)]
    assert invoke(*run).exit_code == 0
    new_tables, new_check = invoke("tables", "--wide", "--results", str(out)), invoke("check", "--results", str(out))

    # the folder as older versions left it: model.pt and lora.pt (pickled state dicts), no sidecar, result.json naming them
    sizes = {}
    for job, artifact, old in (("full_ft", "model", "model.pt"), ("lora_8", "lora", "lora.pt")):
        rdir = out / job / "seed0"
        torch.save(read_state_dict(rdir / artifact), rdir / old)
        shutil.rmtree(rdir / artifact)
        result = json.loads((rdir / "result.json").read_text())
        sizes[job] = (result["artifact_bytes"], (rdir / old).stat().st_size)
        (rdir / "result.json").write_text(json.dumps({**result, "artifact": old, "artifact_bytes": sizes[job][1]}, indent=2))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name not in ("metrics.jsonl", "TABLES.md")) == [
        "full_ft/seed0/model.pt", "full_ft/seed0/result.json", "lora_8/seed0/lora.pt", "lora_8/seed0/result.json"]

    tables = invoke("tables", "--wide", "--results", str(out))
    assert tables.exit_code == 0 and not tables.stderr
    expected = new_tables.output
    for new_size, old_size in sizes.values():
        expected = expected.replace(f"| {_fmt_bytes(new_size)} ", f"| {_fmt_bytes(old_size)} ")
    assert tables.output == expected and expected != new_tables.output  # only the size column differs
    check = invoke("check", "--results", str(out))
    assert (check.exit_code, check.output) == (new_check.exit_code, new_check.output)
    plots = invoke("plots", "--results", str(out))
    assert plots.exit_code == 0 and len(plots.output.splitlines()) == 3
    assert all((out / "plots" / name).is_file() for name in (line.rsplit("/", 1)[-1] for line in plots.output.splitlines()))

    # a forced rerun writes the new artifact directory and removes the older version's file
    assert invoke(*run, "--force").exit_code == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and "plots" not in p.parts and p.name not in ("metrics.jsonl", "TABLES.md")) == [
        "full_ft/seed0/model/config.json", "full_ft/seed0/model/generation_config.json", "full_ft/seed0/model/model.safetensors",
        "full_ft/seed0/model/ptuning_artifact.json", "full_ft/seed0/result.json",
        "lora_8/seed0/lora/lora.safetensors", "lora_8/seed0/lora/ptuning_artifact.json", "lora_8/seed0/result.json"]
