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


# -- the statistics and the inference cost of the wide table --------------------------------------------------------


def _cells(document: str, row: int) -> dict[str, str]:
    line = next(line for line in document.splitlines() if line.startswith(f"| {row} "))
    return dict(zip(report.ACCURACY_HEADERS, (c.strip() for c in line.strip().strip("|").split("|"))))


FULL = [90.1, 89.6, 90.4, 89.9]
LORA = [88.7, 88.9, 89.6, 88.1]  # seeds 0-3 like full_ft: paired
ADAPTER = [90.6, 89.2, 91.0]  # seeds 10-12: Welch's


def _three_rows(folder):
    jobs = {job.name: job for job in load_all_jobs(JOBS)}
    write_runs(folder, {"full_ft": [run_result(jobs["full_ft"], s, a) for s, a in enumerate(FULL)],
                        "lora_8": [run_result(jobs["lora_8"], s, a) for s, a in enumerate(LORA)],
                        "adapter_8": [run_result(jobs["adapter_8"], 10 + s, a) for s, a in enumerate(ADAPTER)]})


def test_the_wide_table_gives_ci_paired_or_welch_holm_and_seeds_needed_as_scipy_does(tmp_path):
    scipy_stats = pytest.importorskip("scipy.stats")
    import numpy as np

    _three_rows(tmp_path)
    document = tables(tmp_path, "--wide").stdout
    lora, adapter, full = _cells(document, 8), _cells(document, 5), _cells(document, 1)

    def ci(values):
        low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
        return f"[{low:.1f}, {high:.1f}]"

    assert (lora["95% CI"], adapter["95% CI"], full["95% CI"]) == (ci(LORA), ci(ADAPTER), ci(FULL))
    p_lora = scipy_stats.ttest_rel(LORA, FULL).pvalue  # the same seeds on the same data: paired
    p_adapter = scipy_stats.ttest_ind(ADAPTER, FULL, equal_var=False).pvalue  # other seeds: Welch's
    low, high = sorted([p_lora, p_adapter])  # Holm over the two rows compared: 2·p(1), then max(that, 1·p(2))
    holm = {low: min(1.0, 2 * low), high: max(min(1.0, 2 * low), high)}

    def verdict(p):
        return "differs" if holm[p] < 0.05 else "within noise"

    assert lora["vs full FT"] == (f"{np.mean(LORA) - np.mean(FULL):.1f}, p={p_lora:.3f} (Holm {holm[p_lora]:.3f}, paired): "
                                  f"{verdict(p_lora)}")
    assert adapter["vs full FT"] == (f"+{np.mean(ADAPTER) - np.mean(FULL):.1f}, p={p_adapter:.3f} (Holm {holm[p_adapter]:.3f}, "
                                     f"welch): {verdict(p_adapter)}")
    assert full["vs full FT"] == "–" and full["seeds for 80% power"] == "–"

    # the seeds column: the first n whose power, from scipy's noncentral t, reaches 80%
    diffs = np.subtract(LORA, FULL)

    def paired_power(n):
        df, nc = n - 1, diffs.mean() / (diffs.std(ddof=1) / np.sqrt(n))
        critical = scipy_stats.t.ppf(0.975, df)
        return scipy_stats.nct.sf(critical, df, nc) + scipy_stats.nct.cdf(-critical, df, nc)

    needed = int(lora["seeds for 80% power"])
    assert paired_power(needed) >= 0.8 > paired_power(needed - 1)
    assert adapter["seeds for 80% power"] == str(stats.seeds_needed(float(np.mean(ADAPTER) - np.mean(FULL)),
                                                                     float(np.std(ADAPTER, ddof=1)), float(np.std(FULL, ddof=1))))


def test_one_seed_has_no_interval_and_no_test(tmp_path):
    jobs = {job.name: job for job in load_all_jobs(JOBS)}
    write_runs(tmp_path, {"full_ft": [run_result(jobs["full_ft"], 0, 90.0)], "lora_8": [run_result(jobs["lora_8"], 0, 89.0)]})
    lora = _cells(tables(tmp_path, "--wide").stdout, 8)
    assert (lora["95% CI"], lora["vs full FT"], lora["seeds for 80% power"]) == ("–", "n too small", "–")


def test_eval_time_per_thousand_reviews_and_the_added_latency_with_their_devices(tmp_path):
    from ptuning.report.results import LATENCY_FILE

    jobs = {job.name: job for job in load_all_jobs(JOBS)}
    runs = {name: [run_result(jobs[name], s, 89.0 + s, epochs=2) for s in (0, 1)] for name in ("full_ft", "lora_8", "adapter_8")}
    for name, per_run in (("full_ft", (3.0, 5.0)), ("lora_8", (4.0, 4.0)), ("adapter_8", (1.0, 1.0))):
        for r, seconds in zip(runs[name], per_run):  # 2 epochs × (2,000 test + 500 validation reviews)
            r.update(eval_seconds=seconds * 5, eval_reviews={"test": 2000, "validation": 500},
                     environment={"device": "cpu", "gpu": None})
    write_runs(tmp_path, runs)
    document = tables(tmp_path, "--wide").stdout
    cells = {row: _cells(document, row) for row in (1, 5, 8)}
    assert [cells[row]["eval s / 1k reviews"] for row in (1, 5, 8)] == ["4", "1", "4"]  # (15 s, 25 s) / 5,000 reviews: 3 and 5 s per 1k, mean 4
    assert [cells[row]["added latency (ms)"] for row in (1, 5, 8)] == ["–", "–", "–"]
    assert ("Inference cost: eval s / 1k reviews measured on cpu; added latency: not measured (run `ptuning latency "
            "--results <this folder>` to fill it).") in document

    latency = {"date": "2026-11-29T10:00:00+00:00", "device": "cuda", "device_name": "NVIDIA H200", "size": "t5-small",
               "precision": "bf16", "reviews": 20, "rows": {"lora_8": {"ms": 9.0, "added_ms": 1.234, "merged_ms": 7.8,
                                                                         "added_merged_ms": 0.004},
                                                              "adapter_8": {"ms": 8.5, "added_ms": 0.71, "merged_ms": None,
                                                                            "added_merged_ms": None}}}
    (tmp_path / LATENCY_FILE).write_text(json.dumps(latency))
    runs["adapter_8"][0]["environment"] = {"device": "cuda", "gpu": "NVIDIA H200"}  # another device: each cell says its own
    write_runs(tmp_path, {"adapter_8": runs["adapter_8"]})
    out = tables(tmp_path, "--wide")
    document = out.stdout
    cells = {row: _cells(document, row) for row in (1, 5, 8)}
    assert [cells[row]["eval s / 1k reviews"] for row in (1, 5, 8)] == ["4 (cpu)", "1 (NVIDIA H200/cpu)", "4 (cpu)"]
    assert [cells[row]["added latency (ms)"] for row in (1, 5, 8)] == ["–", "+0.71", "+1.23 / merged +0.00"]
    assert ("Inference cost: added latency measured by `ptuning latency` on NVIDIA H200, 2026-11-29T10:00:00+00:00, "
            "t5-small shapes, bf16, median of 20 reviews.") in document and not out.stderr

    (tmp_path / LATENCY_FILE).write_text("{not json")  # damaged: one warning, the column empty, the tables still there
    out = tables(tmp_path, "--wide")
    assert out.stderr.startswith(f"ptuning: warning: {tmp_path / LATENCY_FILE}: unreadable latency file (")
    assert out.stderr.rstrip().endswith("; the tables leave the added latency out") and len(out.stderr.splitlines()) == 1
    assert _cells(out.stdout, 8)["added latency (ms)"] == "–"


def test_seeds_needed_reads_more_than_the_budget_for_a_difference_near_zero():
    assert stats.seeds_needed_text(stats.Comparison(0.003, 0.99, 3.0, "within noise", "paired", 0.99, None)) == ">1000"
    assert stats.seeds_needed_text(stats.Comparison(-1.2, 0.01, 3.0, "differs", "paired", 0.02, 5)) == "5"
    assert stats.seeds_needed_text(stats.Comparison(0.0, 1.0, None, "within noise", "welch", 1.0, None)) == "–"
    assert stats.seeds_needed_text(stats.Comparison(-1.0, None, None, "n too small")) == "–"
    assert stats.seeds_needed(0.0025, 0.46) is None  # the figure behind ">1000": no budget resolves it
