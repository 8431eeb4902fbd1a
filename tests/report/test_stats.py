"""Aggregation over seeds (mean, sample std, n) and the comparison rule, on hand-made numbers and files."""

from __future__ import annotations

import math
import re

import pytest

from ptuning.report import results, stats
from ptuning.report import tables as report
from ptuning.settings import load_all_jobs
from tests.conftest import JOBS


def run(job: str, accuracy: float, seed: int, protocol: str = "faithful", **extra):
    epochs = [{"epoch": 1, "accuracy": accuracy - 1.0}, {"epoch": 2, "accuracy": accuracy}]
    return {
        "job": job, "status": "completed", "protocol": protocol, "config": {"seed": seed, "epochs": 2, "protocol": protocol},
        "epochs": epochs, "selected_epoch": 2, "reported_accuracy": accuracy, "max_accuracy": accuracy, "max_epoch": 2,
        "train_seconds": 60.0 * (seed + 1), "artifact_bytes": 2048, "peak_gpu_memory_bytes": None,
        "params": {"total": 100, "trainable": 294_912, "added": 0, "formula": "0", "formula_value": 0, "match": True},
        **extra,
    }


def write(tmp_path, job, accuracies, protocol="faithful"):
    for seed, acc in enumerate(accuracies):
        path = results.run_dir(tmp_path, job, seed, protocol) / results.RESULT_FILE
        results.write_result(path, run(job, acc, seed, protocol))


def test_summary_of_three_seeds_is_exact():
    s = stats.summarize([88.0, 89.0, 91.0])
    assert s.n == 3 and s.mean == pytest.approx(268.0 / 3, abs=1e-12)
    assert s.std == pytest.approx(math.sqrt(7.0 / 3.0), abs=1e-12)  # sample std: sum of squares 14/3 over n-1 = 2
    assert s.text() == "89.3 ± 1.5 (n=3)"
    one = stats.summarize([90.25])
    assert (one.n, one.mean, one.std, one.text()) == (1, 90.25, None, "90.2 (n=1)")
    assert stats.summarize([]).text() == "–"


def test_result_files_of_several_seeds_aggregate_per_job_and_protocol(tmp_path):
    write(tmp_path, "full_ft", [90.0, 90.5, 91.0])
    write(tmp_path, "full_ft", [89.0, 90.0], protocol="heldout")
    write(tmp_path, "lora_8", [88.0])
    loaded = results.load_results(tmp_path)
    assert sorted(len(v) for v in loaded.values()) == [1, 5]
    rows = {(r.job.name, r.protocol): r for r in stats.rows(load_all_jobs(JOBS), loaded)}
    faithful, heldout = rows[("full_ft", "faithful")], rows[("full_ft", "heldout")]
    assert (faithful.accuracy.n, faithful.accuracy.mean, faithful.accuracy.std) == (3, 90.5, 0.5)
    assert (heldout.accuracy.n, heldout.accuracy.mean) == (2, 89.5)
    assert heldout.accuracy.std == pytest.approx(math.sqrt(0.5), abs=1e-12)
    assert faithful.mean_of("train_seconds") == 120.0
    assert faithful.curve() == ([1, 2], [89.5, 90.5])
    assert rows[("adapter_8", None)].completed == []  # not run: one row without a protocol
    text = report.tables(load_all_jobs(JOBS), loaded)
    line = next(x for x in text.splitlines() if "| full_ft " in x and "| faithful " in x)
    assert "| 90.5 ± 0.5 (n=3) " in line and "| 2, 2, 2 " in line and "| 2.0 kB " in line and "| 2.0 min " in line
    assert "| 294.9K " in line and re.search(r"\| –\s+\|$", line)  # no peak GPU memory on CPU: "–"
    lora = next(x for x in text.splitlines() if "| lora_8 " in x and "| faithful " in x)
    assert "| 88.0 (n=1) " in lora and "| n too small " in lora and "±" not in lora
    assert "| heldout " in next(x for x in text.splitlines() if "| full_ft " in x and "89.5" in x)


def test_the_memory_column_shows_what_the_process_held_when_recorded(tmp_path):
    """A CUDA graph's pool is reserved but not counted as allocated after its capture: the table shows reserved."""
    for job, allocated, reserved in (("full_ft", 3 << 30, 5 << 30), ("lora_8", 2 << 30, None)):
        record = run(job, 90.0, 0, peak_gpu_memory_bytes=allocated, peak_gpu_memory_reserved_bytes=reserved)
        results.write_result(tmp_path / job / "seed0" / "result.json", record)
    text = report.tables(load_all_jobs(JOBS), results.load_results(tmp_path))
    assert re.search(r"\| 5\.0 GB\s+\|$", next(x for x in text.splitlines() if "| full_ft " in x))
    assert re.search(r"\| 2\.0 GB\s+\|$", next(x for x in text.splitlines() if "| lora_8 " in x))  # older results: allocated


def test_welch_p_values_match_closed_forms():
    # df = 1: p = 1 - (2/pi)·atan|t|; df = 2: p = 1 - |t|/sqrt(2 + t²)
    assert stats.t_two_sided_p(2.0, 1) == pytest.approx(1 - 2 / math.pi * math.atan(2.0), abs=1e-12)
    assert stats.t_two_sided_p(2.0, 2) == pytest.approx(1 - 2 / math.sqrt(6), abs=1e-12)
    assert stats.t_two_sided_p(2.228138851986, 10) == pytest.approx(0.05, abs=1e-9)  # the t table's 97.5% point
    # a = [1, 3] (mean 2, var 2), b = [0, 0]: t = 2 / sqrt(2/2) = 2, Welch df = 1
    c = stats.welch([1.0, 3.0], [0.0, 0.0])
    assert c.difference == 2.0 and c.df == pytest.approx(1.0) and c.p == pytest.approx(1 - 2 / math.pi * math.atan(2.0))
    # the rule's threshold, p < 0.05, on both sides of it (df = 1, so t = the difference of means here)
    near = stats.welch([0.0, 2.0], [-12.0, -12.0])  # t = 13: p = 0.0489
    assert near.p == pytest.approx(1 - 2 / math.pi * math.atan(13.0), abs=1e-12) and near.verdict == stats.DIFFERS
    far = stats.welch([0.0, 2.0], [-11.0, -11.0])  # t = 12: p = 0.0530
    assert far.p == pytest.approx(1 - 2 / math.pi * math.atan(12.0), abs=1e-12) and far.verdict == stats.WITHIN_NOISE


def test_welch_agrees_with_scipy_over_many_random_samples():
    # The in-house test against the field's standard implementation: scipy is a test-only dependency.
    import numpy as np
    import scipy.stats as scipy_stats  # the `test` extra installs it; a missing scipy fails here, never skips
    rng = np.random.default_rng(20261127)
    cases = []
    for _ in range(2000):  # unequal sizes (2..40) and spreads (1e-3..1e2), shifts from none to many standard errors
        na, nb = (int(n) for n in rng.integers(2, 41, size=2))
        sa, sb = 10.0 ** rng.uniform(-3, 2, size=2)
        shift = rng.normal(0, 3) * max(sa, sb) / math.sqrt(min(na, nb))
        cases.append((rng.normal(80, sa, na).tolist(), rng.normal(80 + shift, sb, nb).tolist()))
    # edges: the smallest samples (df near 1), one spread 10^6 times the other, a huge t (p ~ 1e-50)
    cases += [([1.0, 3.0], [0.0, 0.5]), ([90.0, 90.000001, 89.999999], [80.0, 95.0, 70.0, 99.0]),
              ([90.0 + 1e-3 * i for i in range(30)], [80.0 + 1e-3 * i for i in range(25)])]
    verdicts = {stats.DIFFERS: 0, stats.WITHIN_NOISE: 0}
    for a, b in cases:
        mine = stats.welch(a, b)
        ref = scipy_stats.ttest_ind(a, b, equal_var=False)
        assert mine.p == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-300), (a, b)
        assert mine.df == pytest.approx(float(ref.df), rel=1e-12), (a, b)
        assert mine.difference == pytest.approx(float(np.mean(a) - np.mean(b)), rel=1e-12, abs=1e-12)
        assert mine.verdict == (stats.DIFFERS if ref.pvalue < stats.ALPHA else stats.WITHIN_NOISE)
        verdicts[mine.verdict] += 1
    # the samples exercise both sides of the rule, not just one
    assert len(cases) == 2003 and min(verdicts.values()) > 300, verdicts


def test_comparison_rule_clear_difference_within_noise_and_too_small():
    full = [90.0, 90.1, 89.9]
    clear = stats.welch([88.0, 88.2, 87.8], full)
    assert clear.verdict == stats.DIFFERS and clear.difference == pytest.approx(-2.0) and clear.p < 0.01
    assert clear.text().startswith("-2.0, p") and clear.text().endswith(": differs")
    noisy = stats.welch([89.5, 90.5, 89.0], [90.0, 89.0, 91.0])
    assert noisy.verdict == stats.WITHIN_NOISE and noisy.p > 0.5
    assert stats.welch([88.0], full).verdict == stats.TOO_SMALL
    assert stats.welch([88.0, 88.5], [90.0]).text() == "n too small"
    assert stats.welch([85.0, 85.0], [85.0, 85.0]).verdict == stats.WITHIN_NOISE  # deterministic and equal
    assert stats.welch([80.0, 80.0], [85.0, 85.0]).verdict == stats.DIFFERS  # deterministic and different


def test_table_compares_each_row_with_full_ft_under_the_same_protocol(tmp_path):
    write(tmp_path, "full_ft", [90.0, 90.1, 89.9])
    write(tmp_path, "lora_8", [88.0, 88.2, 87.8])
    write(tmp_path, "adapter_8", [89.5, 90.5, 89.0])
    write(tmp_path, "adapter_8", [89.0, 89.5], protocol="heldout")  # no heldout full_ft: no comparison
    text = report.tables(load_all_jobs(JOBS), results.load_results(tmp_path))
    lines = text.splitlines()
    assert "| -2.0, p" in next(x for x in lines if "| lora_8 " in x and "±" in x)
    assert "differs" in next(x for x in lines if "| lora_8 " in x and "±" in x)
    assert "within noise" in next(x for x in lines if "| adapter_8 " in x and "| faithful " in x)
    heldout = next(x for x in lines if "| adapter_8 " in x and "| heldout " in x)
    assert "differs" not in heldout and "within noise" not in heldout and "| 89.2 ± 0.4 (n=2) " in heldout
