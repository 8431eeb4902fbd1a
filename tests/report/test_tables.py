"""The tables as a reader meets them: a compact table that fits the terminal, the full tables in TABLES.md."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from ptuning.cli import main
from ptuning.report import kind as kinds
from ptuning.report import stats
from ptuning.report import tables as report
from ptuning.settings import load_all_jobs
from tests.conftest import JOBS
from tests.report.conftest import run_result, write_runs


def tables(folder, *args, columns=100):
    out = CliRunner(env={"COLUMNS": str(columns)}).invoke(main, ["--jobs-dir", str(JOBS), "tables", "--results", str(folder), *args],
                                                          catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return out


def test_eleven_rows_fit_a_100_column_terminal_and_tables_md_has_every_column(eleven_rows):
    folder, _ = eleven_rows
    out = tables(folder)
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100, "\n".join(line for line in lines if len(line) > 100)
    rows = [line for line in lines if re.match(r"^ *\d+  ", line)]
    assert len(rows) == 11
    # the columns a reader needs first: row, approach, knob, accuracy ± std (n), vs full FT with its verdict, reference
    # and the trainable parameters: every compact column fits 100
    assert re.match(r"^ +8  LoRA, hand-written +rank 8 +87\.9 ± 0\.4 \(3\)  -1\.9 differs +88\.9 +-1\.0 +294\.9K$", rows[8]), rows[8]
    assert re.match(r"^ +1  Full fine-tuning +– +89\.9 ± 0\.4 \(3\)  – +90\.0 +-0\.1 +60\.5M$", rows[1]), rows[1]
    assert "Left out" not in out.stdout
    assert f"Every column, and the parameter table with its formulas: {folder / 'TABLES.md'}" in " ".join(out.stdout.split())
    assert "Parameters: 11 of 11 rows add exactly what their formula says." in out.stdout
    document = (folder / "TABLES.md").read_text()
    header = next(line for line in document.splitlines() if line.startswith("| row "))
    assert [h.strip() for h in header.strip("|").split("|")] == report.ACCURACY_HEADERS
    assert "## Parameters" in document and document.count("| yes ") == 11
    wide = tables(folder, "--wide")
    assert wide.stdout == document  # --wide prints what the file holds


@pytest.mark.parametrize("columns", [80, 120, 200])
def test_the_compact_table_follows_the_terminal_width(eleven_rows, columns):
    folder, _ = eleven_rows
    out = tables(folder, columns=columns)
    table = [line for line in out.stdout.splitlines() if re.match(r"^ *\d+  ", line) or line.startswith("---")]
    assert max(len(line) for line in out.stdout.splitlines()) <= columns
    left_out = [line for line in out.stdout.splitlines() if line.startswith("Left out")]
    if columns >= 120:
        assert left_out == [] and "294.9K" in table[9]  # every compact column, trainable parameters included
    else:  # the last columns go first; the row, its name and its accuracy stay
        assert len(left_out) == 1 and ("Left out to fit 80 columns: trained params, diff, ref. (%) (ptuning tables --wide shows "
                                       "every column).") in " ".join(out.stdout.split())
        assert re.match(r"^ +8  LoRA, hand-written +rank 8 +87\.9 ± 0\.4 \(3\)  -1\.9 differs$", table[9]), table[9]


def test_the_knob_reads_like_the_report_and_rows_never_read_alike():
    jobs = {job.name: job for job in load_all_jobs(JOBS)}
    expected = {"zero_shot": "–", "full_ft": "–", "soft_prompt_10": "10 tokens", "soft_prompt_10_opendelta": "10 tokens",
                "soft_prompt_1_opendelta": "1 token", "adapter_8": "bottleneck 8", "adapter_8_adapterhub": "bottleneck 8",
                "adapter_1_adapterhub": "bottleneck 1", "lora_8": "rank 8", "lora_8_peft": "rank 8", "lora_1_peft": "rank 1"}
    from ptuning.report.labels import knob_label, row_label

    assert {name: knob_label(job) for name, job in jobs.items()} == expected
    assert knob_label(jobs["lora_8_peft"].override({"method.alpha": 8})) == "rank 8, alpha 8"  # a changed knob shows
    labels = [row_label(job) for job in jobs.values()]
    assert len(set(labels)) == 11 and "4. Soft prompt, OpenDelta (1 token)" in labels and "0. Zero-shot (no training)" in labels


def test_no_minus_zero_and_no_train_time_where_nothing_trains(tmp_path):
    jobs = {job.name: job for job in load_all_jobs(JOBS)}
    runs = {"full_ft": [run_result(jobs["full_ft"], s, 90.0 + d) for s, d in ((0, 0.02), (1, -0.02))],
            "lora_8": [run_result(jobs["lora_8"], s, 88.9 + d) for s, d in ((0, 0.0), (1, -0.06))],  # mean 88.87: diff -0.03
            "zero_shot": [run_result(jobs["zero_shot"], 0, 71.3)]}
    write_runs(tmp_path, runs)
    out = tables(tmp_path, "--wide").stdout
    assert "-0.0" not in out and "+0.0" not in out
    lora = next(line for line in out.splitlines() if line.startswith("| 8 "))
    assert "| 0.0    |" in lora  # the diff column
    zero = next(line for line in out.splitlines() if line.startswith("| 0 "))
    cells = [c.strip() for c in zero.strip("|").split("|")]
    assert cells[report.ACCURACY_HEADERS.index("train time")] == "–" and cells[report.ACCURACY_HEADERS.index("saved")] == "–"
    assert stats.signed(-0.04) == "0.0" and stats.signed(0.04) == "0.0" and stats.signed(-0.06) == "-0.1"
    assert stats.welch([88.9, 88.84], [90.02, 89.98]).text().startswith("-1.1, ")


def test_a_smoke_marker_captions_the_tables(eleven_rows):
    folder, _ = eleven_rows
    kinds.mark(folder, kinds.SMOKE)
    out = tables(folder).stdout
    assert out.startswith("SMOKE TEST: a tiny random T5 trained for one short epoch on synthetic reviews")
    assert (folder / "TABLES.md").read_text().startswith("> **SMOKE TEST**: a tiny random T5")
    (folder / kinds.KIND_FILE).write_text("[1, 2]")  # damaged: the tables carry on as for real runs, with a warning
    out = tables(folder)
    assert not out.stdout.startswith("SMOKE") and out.stderr.startswith(f"ptuning: warning: {folder / kinds.KIND_FILE}: a marker needs")
    (folder / kinds.KIND_FILE).write_text(json.dumps({"kind": "demo", "label": "synthetic demo", "note": "a toy task"}))
    assert tables(folder).stdout.startswith("SYNTHETIC DEMO: a toy task")


def test_tables_md_that_cannot_be_written_is_a_warning_and_the_table_still_prints(eleven_rows):
    folder, _ = eleven_rows
    (folder / "TABLES.md").mkdir()  # a folder in its place: the rename fails
    out = tables(folder)
    assert out.stderr.startswith(f"ptuning: warning: cannot write {folder / 'TABLES.md'}")
    assert "Accuracy (test split)" in out.stdout and "Every column" not in out.stdout


def test_a_failed_seed_is_named_under_the_compact_table(eleven_rows):
    folder, runs = eleven_rows
    failed = {"job": "lora_8", "title": "LoRA, hand-written", "status": "failed", "reason": "loss is nan at step 3",
              "protocol": "faithful", "config": {"seed": 3, "protocol": "faithful"}}
    write_runs(folder, {"lora_8": [failed]})
    out = tables(folder).stdout
    assert "87.9 ± 0.4 (3), 1 failed" in out and "failed: lora_8 seed 3: loss is nan at step 3" in out


def test_points_of_a_grid_are_named_by_their_values(tmp_path):
    from ptuning.report.labels import knob_label, row_label
    from ptuning.settings import load_job_file

    (tmp_path / "_defaults.yaml").write_text((JOBS / "_defaults.yaml").read_text())
    (tmp_path / "lora.yaml").write_text("title: L\nrow: 3\nmethod: {name: lora, implementation: hand, rank: 8}\nlr: 1.0e-3\n"
                                        "sweep: {lr: [1.0e-3, 3.0e-2]}\n")
    points = load_job_file(tmp_path / "lora.yaml").points()
    assert [knob_label(p) for p in points] == ["lr=1e-3", "lr=0.03"]  # the learning rate is no knob, and still shows
    assert [row_label(p) for p in points] == ["3. L (lr=1e-3)", "3. L (lr=0.03)"]
