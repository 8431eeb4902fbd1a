"""scripts/gpu-check.sh and its Python pieces (ptuning.speed.gpucheck, ptuning.testing.tiny.build_t5_small_shaped), on CPU."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tests.conftest import REPO

GIB = 2**30


def test_sized_configs_have_t5_smalls_rules_and_their_own_shapes():
    from transformers import T5ForConditionalGeneration

    from ptuning.methods import count_parameters
    from ptuning.testing.tiny import sized_config

    small, full = sized_config("small"), sized_config("t5-small")
    assert count_parameters(T5ForConditionalGeneration(small))[0] == 2_286_592
    assert count_parameters(T5ForConditionalGeneration(full))[0] == 60_506_624
    for config in (small, full):
        assert (config.vocab_size, config.feed_forward_proj, config.dropout_rate, config.tie_word_embeddings) == (32128, "relu", 0.1, True)
        assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (0, 1, 0)


def test_t5_small_shaped_assets_load_with_t5_small_counts_and_imdb_lengths(tmp_path):
    from ptuning.data import preprocess
    from ptuning.methods import count_parameters
    from ptuning.model import load_model
    from ptuning.testing.tiny import build_t5_small_shaped

    model_dir, data_dir = build_t5_small_shaped(tmp_path, n_train=64, n_test=800, seed=3)
    model, tokenizer = load_model(str(model_dir))
    assert count_parameters(model)[0] == 60_506_624
    assert len(tokenizer) < model.config.vocab_size == 32128
    assert [len(tokenizer(w)["input_ids"]) for w in ("negative", "positive")] == [2, 2]  # word + </s>, as in t5-small
    rows = [json.loads(line) for line in (data_dir / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 800 and {r["label"] for r in rows} == {0, 1}
    assert len((data_dir / "train.jsonl").read_text().splitlines()) == 64
    lengths = [len(ids) for ids in tokenizer([preprocess(r["text"]) for r in rows], truncation=True, max_length=256)["input_ids"]]
    full = sum(n == 256 for n in lengths) / len(lengths)
    assert 0.42 <= full <= 0.54, full  # bench's synthetic streams: 48% at the limit
    rest = [n for n in lengths if n < 256]
    assert min(rest) >= 40 and 130 <= sum(rest) / len(rest) <= 165  # uniform in [40, 255]: mean 147.5
    assert 190 <= sum(lengths) / len(lengths) <= 210  # IMDb under truncation at 256: about 200
    stamp = (tmp_path / "assets.json").stat().st_mtime_ns
    assert build_t5_small_shaped(tmp_path, n_train=64, n_test=800, seed=3) == (model_dir, data_dir)
    assert (tmp_path / "assets.json").stat().st_mtime_ns == stamp  # reused, not rebuilt


BENCH = {"startup_seconds": 4.0, "rows": {
    "full_ft": {"faithful": {"step_seconds": 0.070, "eval_seconds_per_review": 0.0014},
                "fast": {"step_seconds": 0.060, "eval_seconds_per_review": 0.0006, "setup_seconds": 0.5, "load_seconds": 1.0,
                         "checkpoint_seconds": 2.0, "artifact_seconds": 0.6}},
    "lora_8_peft": {"faithful": {"step_seconds": 0.080, "eval_seconds_per_review": 0.0016},
                    "fast": {"step_seconds": 0.070, "eval_seconds_per_review": 0.0008, "setup_seconds": 0.3, "load_seconds": 0.8,
                             "checkpoint_seconds": 0.2, "artifact_seconds": 0.1}},
}}


def _result(job, row, epochs, train, evals, status="completed", path="fast", peak=None):
    return {"job": job, "row": row, "status": status, "config": {"epochs": epochs, "batch_size": 32},
            "speed": {"path": path, "precision": "bf16"}, "train_seconds": train, "eval_seconds": evals,
            "wall_seconds": train + evals + 1, "setup_seconds": 2.0, "save_seconds": 0.5,
            "epochs": [{"epoch": e, "train_seconds": train / max(epochs, 1), "eval_seconds": evals / max(epochs, 1)}
                       for e in range(max(epochs, 1))],
            "peak_gpu_memory_bytes": peak, "peak_gpu_memory_reserved_bytes": None if peak is None else 2 * peak}


def test_projection_uses_the_benched_row_or_the_mean_on_the_jobs_path():
    from ptuning.speed.gpucheck import project_job, rates

    assert rates(BENCH, "fast", "full_ft") == {"step": 0.060, "review": 0.0006, "warmup": 0.5, "load": 1.0, "checkpoint": 2.0,
                                               "artifact": 0.6}
    mean = rates(BENCH, "fast", "adapter_8")
    assert mean == pytest.approx({"step": 0.065, "review": 0.0007, "warmup": 0.4, "load": 0.9, "checkpoint": 1.1, "artifact": 0.35})
    # a bench without warm-up, load or write numbers: none added
    assert rates(BENCH, "faithful", "full_ft") == {"step": 0.070, "review": 0.0014, "warmup": 0.0, "load": 0.0, "checkpoint": 0.0,
                                                   "artifact": 0.0}
    assert rates({}, "fast") is None
    # 2 epochs x ceil(1000 / 32) = 64 steps; 2 passes over 500 reviews; the warm-up's extra cost once;
    # whole: + load + 2 checkpoints + the parameters
    work = 64 * 0.060 + 1000 * 0.0006 + 0.5
    assert project_job(BENCH, _result("full_ft", 1, 2, 0, 0), 1000, 500) == pytest.approx({"work": work, "total": 1.0 + work + 2 * 2.0 + 0.6})
    work = 64 * 0.075 + 1000 * 0.0015
    assert project_job(BENCH, _result("adapter_8", 5, 2, 0, 0, path="faithful"), 1000, 500) == pytest.approx({"work": work, "total": work})
    # zero-shot: one pass, no steps, no writes; the model is loaded all the same
    assert project_job(BENCH, _result("zero_shot", 0, 0, 0, 0), 1000, 500) == pytest.approx({"work": 500 * 0.0007, "total": 0.9 + 500 * 0.0007})


def test_comparison_and_report_say_within_20_percent_or_not():
    from ptuning.speed.gpucheck import comparison, report

    results = [_result("zero_shot", 0, 0, 0.0, 0.4), _result("full_ft", 1, 2, 3.9, 1.2, peak=int(1.5 * GIB))]
    zero, full = 500 * 0.0007, 64 * 0.060 + 1000 * 0.0006 + 0.5
    projected = zero + full
    projected_wall = 4.0 + (0.9 + zero) + (1.0 + full + 2 * 2.0 + 0.6)  # process start + every whole job
    comp = comparison(BENCH, results, 1000, 500, wall=projected_wall * 1.5, expected_jobs=2)
    assert comp["complete"] and comp["projected"] == pytest.approx(projected)
    assert comp["projected_wall"] == pytest.approx(projected_wall)
    assert comp["measured"] == pytest.approx(5.5) and comp["measured_within"] is (abs(5.5 / projected - 1) <= 0.2)
    assert comp["wall_ratio"] == pytest.approx(1.5) and comp["wall_within"] is False
    # each job's whole time is its setup + wall (2 + 1.4 and 2 + 6.1); what is left of the wall is outside them
    assert [j["measured_total"] for j in comp["jobs"]] == pytest.approx([3.4, 8.1])
    assert comp["outside_jobs"] == pytest.approx(projected_wall * 1.5 - 11.5)
    assert comparison(BENCH, results, 1000, 500, wall=projected_wall * 1.1, expected_jobs=2)["wall_within"] is True
    settings = {"device": "cuda", "epochs": 2, "train_limit": 1000, "eval_limit": 500, "concurrency": 1, "expected_jobs": 2,
                "model": "t5-small shapes", "data": "synthetic"}
    text = report(card="NVIDIA H100 80GB HBM3", bench=BENCH, bench_markdown="# ptuning bench\n\n| a | b |", bench_status="completed in 40 s",
                  comp=comp, runall_status="completed in 9 s", settings=settings, extras=[("pytest", "19 passed")],
                  versions={"torch": "2.11.0", "transformers": "4.57.6"})
    assert text.startswith("# ptuning GPU check on NVIDIA H100 80GB HBM3")
    assert "torch 2.11.0, transformers 4.57.6" in text and "## ptuning bench" in text  # bench headings demoted
    assert "1.50× projected; within 20%: **NO**" in text
    assert "| projected: run-all wall time (process start + the whole jobs) | 15.8 s |  |" in text
    assert "| full_ft | completed | fast, bf16 | 2 | 3.90 s | 1.20 s | 2.00 s | 0.50 s | 8.10 s |" in text
    assert "| 1.50 GiB | 3.00 GiB |" in text
    assert "19 passed" in text

    # a job short: no verdict, only what was measured
    comp = comparison(BENCH, results[:1], 1000, 500, wall=300.0, expected_jobs=2)
    assert comp["measured"] is None and "wall_ratio" not in comp and comp["outside_jobs"] is None
    text = report(card=None, bench=BENCH, bench_markdown=None, bench_status="completed", comp=comp,
                  runall_status="**stopped by its timeout**", settings=settings, extras=[], versions={})
    assert "not compared: 1 of 2 jobs completed" in text and "within 20%" not in text
    # no bench: no projection
    comp = comparison(None, results, 1000, 500, wall=10.0, expected_jobs=2)
    assert comp["projected"] is None and comp["projected_wall"] is None
    text = report(card=None, bench=None, bench_markdown=None, bench_status="**failed**", comp=comp, runall_status="completed",
                  settings=settings, extras=[], versions={})
    assert "no projection (the bench did not finish)" in text and "bench step: **failed**" in text
    # jobs at the same time: nothing to compare with a projection made for one at a time
    comp = comparison(BENCH, results, 1000, 500, wall=1.0, expected_jobs=2)
    text = report(card=None, bench=BENCH, bench_markdown=None, bench_status="completed", comp=comp, runall_status="completed",
                  settings={**settings, "concurrency": 4}, extras=[], versions={})
    assert "not compared: jobs ran 4 at a time" in text and "within 20%" not in text
    assert "outside the jobs" not in text

    # the run-all's data and tables/plots, timed apart, join the whole-job and wall projections
    extra = {"data": {"zero_shot": 1.5, "full_ft": 0.25}, "tables_plots": 2.0}
    comp = comparison(BENCH, results, 1000, 500, wall=20.0, expected_jobs=2, extra=extra)
    assert [j["projected_total"] for j in comp["jobs"]] == pytest.approx([0.9 + zero + 1.5, 1.0 + full + 2 * 2.0 + 0.6 + 0.25])
    assert comp["projected_wall"] == pytest.approx(projected_wall + 1.75 + 2.0) and comp["projected"] == pytest.approx(projected)
    text = report(card=None, bench=BENCH, bench_markdown=None, bench_status="completed", comp=comp, runall_status="completed",
                  settings=settings, extras=[], versions={})
    assert "| projected: run-all wall time (process start + the whole jobs + tables and plots) | 19.5 s |" in text
    assert "| timed apart: the jobs' data (splits loaded, reviews tokenized; in the whole jobs above) | 1.75 s |" in text
    assert "| timed apart: tables and plots (in the run-all's projected wall time) | 2.00 s |" in text


def test_overheads_times_every_jobs_data_and_the_tables(tmp_path, tiny_model_dir, tiny_data_dir, monkeypatch):
    from ptuning.cli import main
    from ptuning.settings import load_all_jobs
    from ptuning.speed.gpucheck import overheads

    monkeypatch.setenv("PTUNING_CACHE", str(tmp_path / "mine"))
    out = tmp_path / "runall"
    result = CliRunner().invoke(main, ["run", "zero_shot", "--model", str(tiny_model_dir), "--dataset", str(tiny_data_dir),
                                       "--device", "cpu", "--eval-limit", "8", "--output-dir", str(out)], env={"HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 0, result.output
    measured = overheads(str(tiny_model_dir), str(tiny_data_dir), 16, 8, out)
    assert sorted(measured["data"]) == sorted(job.name for job in load_all_jobs()) and all(v > 0 for v in measured["data"].values())
    assert measured["tables_plots"] > 0 and (out / "plots").is_dir()
    assert os.environ["PTUNING_CACHE"] == str(tmp_path / "mine")  # its own cache came and went; the caller's is back
    assert overheads(str(tiny_model_dir), str(tiny_data_dir), 16, 8)["tables_plots"] is None


def test_equivalence_writes_each_row_as_soon_as_it_is_measured(tmp_path, monkeypatch):
    """The GPU check's equivalence step runs under a timeout: the rows measured before it are kept."""
    from ptuning.engine import fast
    from ptuning.speed import gpucheck

    calls = []

    def train_epoch(model, loader, optimizer, device, plan, description, on_step=None, step=None, **kwargs):
        calls.append(step is not None)
        if len(calls) == 3:  # bf16, eager: stopped here
            raise TimeoutError("stopped by the step's timeout")
        on_step(1, 2.0)
        return 2.0

    monkeypatch.setattr(fast, "train_epoch", train_epoch)
    out = tmp_path / "equivalence.md"
    with pytest.raises(TimeoutError):
        gpucheck.main(["equivalence", "--device", "cpu", "--steps", "1", "--size", "small", "--rows", "lora_8",
                       "--output", str(out)])
    assert calls == [False, True, False]
    assert "| lora_8 | fp32 | 2.00000 | 2.00000 | 0.00e+00 |" in out.read_text()


def test_profile_says_where_a_steps_time_goes(tmp_path, monkeypatch):
    """On CPU: the eager step only (graphs are CUDA's) and the fast evaluation, each its wall time, the operators' time
    under the profiler and the top operators, written to the file as they come."""
    from ptuning.engine import fast
    from ptuning.speed import gpucheck

    trained, decoded = [], []
    train_epoch, fast_predict = fast.train_epoch, fast.fast_predict
    monkeypatch.setattr(fast, "train_epoch", lambda *a, **k: trained.append((len(a[1].dataset), k["step"])) or train_epoch(*a, **k))
    monkeypatch.setattr(fast, "fast_predict", lambda *a, **k: decoded.append((len(a[1]), a[4])) or fast_predict(*a, **k))
    out = tmp_path / "profile.md"
    assert gpucheck.main(["profile", "--device", "cpu", "--steps", "1", "--size", "small", "--rows", "lora_8", "--top", "4",
                          "--eval-reviews", "12", "--output", str(out)]) == 0
    assert trained == [(3 * 32, None), (32, None), (32, None)]  # warm-up, timed, profiled; eager: no graphed step
    assert decoded == [(8, fast.FAST_EVAL_BATCH_SIZE), (12, fast.FAST_EVAL_BATCH_SIZE), (12, fast.FAST_EVAL_BATCH_SIZE)]  # warm-up, timed, profiled
    text = out.read_text()
    assert text.splitlines()[0] == ("on cpu, small shapes; training: batches of 32, 1 steps timed, then profiled, per mode; evaluation: "
                                    "12 reviews; busy = time in CPU operators (no GPU: nothing here says anything about one)")
    sections = text.split("\n### ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["lora_8, training, eager, fp32",
                                                     "lora_8, evaluation (greedy decode, sorted batches of 256), fp32"]
    for section, unit in zip(sections, ("step", "1,000 reviews")):
        lines = section.splitlines()
        head = re.fullmatch(rf"wall ([\d.,]+) ms per {unit}; busy ([\d.,]+) ms per {unit} \((\d+)% of the wall time, under the "
                            rf"profiler\); ([\d,]+) operator calls per {unit}", lines[2])
        assert head and float(head[1].replace(",", "")) > 0 and float(head[2].replace(",", "")) > 0
        assert int(head[4].replace(",", "")) > 100
        table = lines[4:]
        assert table[:2] == [f"| operator | calls per {unit} | µs per {unit} | share |", "|---|---|---|---|"] and len(table) == 2 + 4
        shares = [float(row.rsplit("|", 2)[1].strip().rstrip("%")) for row in table[2:]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.05
        assert any("aten::mm" in row or "aten::bmm" in row or "aten::addmm" in row for row in table[2:])


def test_the_issues_checks_say_met_not_met_or_not_measured():
    from ptuning.speed.gpucheck import checks, comparison

    bench = {"rows": {"full_ft": {"faithful": {**BENCH["rows"]["full_ft"]["faithful"], "table_seconds": 8000.0},
                                  "fast": {**BENCH["rows"]["full_ft"]["fast"], "table_seconds": 1000.0}},
                      "lora_8_peft": {"faithful": {**BENCH["rows"]["lora_8_peft"]["faithful"], "table_seconds": 9000.0},
                                      "fast": {**BENCH["rows"]["lora_8_peft"]["fast"], "table_seconds": 1200.0}}}}
    results = [_result("zero_shot", 0, 0, 0.0, 0.4, peak=int(1e9)), _result("full_ft", 1, 2, 3.9, 1.2, peak=int(3.5e9))]
    comp = comparison(bench, results, 1000, 500, wall=None, expected_jobs=2)
    got = checks(bench, comp)
    # serial: the mean of the benched rows' tables, 8500 s / 1100 s; reserved memory (2 x allocated here) counts
    assert [c["met"] for c in got] == [False, False, None, True]
    assert got[0]["value"] == "7.73× (target ≥ 10×)" and "one job at a time" in got[0]["check"]
    assert got[1]["value"] == "1100.0 s (18.33 min) (target ≤ 15 min)"
    assert got[3]["value"] == "7.00 GB (target < 8 GB)"
    # 4 jobs at once on full_ft: compared with full_ft's own exercise loop
    together = {**bench, "concurrent": {"concurrency": 4, "row": "full_ft", "table_seconds": 700.0}}
    comp = comparison(together, [*results[:1], _result("full_ft", 1, 2, 3.9, 1.2, peak=int(4.5e9))], 1000, 500, wall=1.0,
                      expected_jobs=2)
    got = checks(together, comp)
    assert got[0]["value"].startswith("11.43×") and "4 jobs at once" in got[0]["check"] and got[0]["met"] is True
    assert got[1]["met"] is True and got[2]["met"] is False and got[3]["met"] is False  # 9.0 GB reserved
    assert checks(together, comp, concurrency=4)[2] == {"check": "scaled run-all's wall time vs its projection",
                                                        "value": "not compared (jobs ran 4 at a time)", "met": None}
    assert [c["met"] for c in checks(None, comparison(None, [], 1, 1, None, 2))] == [None, None, None]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils timeout")
def test_gpu_check_script_quick_on_cpu(tmp_path):
    """The GPU check's every step at tiny sizes on CPU: assets, bench, run-all over all rows, the report, $OUT."""
    # the budget is the GPU run's 420 s with room to spare: the steps' timeouts are cut to what the budget leaves, and on
    # 2 busy cores the quick bench alone has taken 90 s; the test checks what the steps produce, not how fast
    out, work = tmp_path / "out", tmp_path / "work"
    committed = REPO / "results" / "BENCHMARKS.md"
    before = committed.read_bytes() if committed.exists() else None
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), "--device", "cpu", "--quick", "--work", str(work),
                           "--budget", "900"], env=env, capture_output=True, text=True, timeout=1100)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "installing" not in proc.stdout  # transformers 4.57.6 already: no wheels
    assert "transformers: 4.57.6" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["BENCHMARKS.md", "bench.json", "bench.md", "equivalence.md", "gpu-check.log",
                                                     "summary.json", "tables.md"]
    equivalence = (out / "equivalence.md").read_text()
    assert "| lora_8 | fp32 |" in equivalence and "| lora_8 | bf16 |" in equivalence and "equivalence step: completed" in equivalence
    summary = json.loads((out / "summary.json").read_text())
    comp = summary["comparison"]
    assert comp["complete"] and len(comp["jobs"]) == 11 and all(j["status"] == "completed" for j in comp["jobs"])
    assert comp["projected"] > 0 and comp["measured"] > 0 and comp["wall"] > comp["measured"]
    assert len(comp["overheads"]["data"]) == 11 and comp["overheads"]["tables_plots"] > 0  # timed apart, after the run-all
    assert comp["projected_wall"] > comp["projected"] and comp["outside_jobs"] is not None
    assert {j["speed"]["path"] for j in comp["jobs"]} == {"faithful"}  # what `auto` runs on CPU
    text = (out / "BENCHMARKS.md").read_text()
    assert [c["met"] for c in summary["checks"]][-1] is None  # no GPU: no memory figure
    for needle in ("## The issue's checks", "timed apart: tables and plots", "| projected: run-all wall time (process start + the whole jobs + tables and plots) |",
                   "# ptuning GPU check on CPU", "## 1. Bench", "training with CUDA graphs vs eagerly", "2 processes at once", "| train step |", "## 2. Scaled-down run-all", "× projected; within 20%",
                   "| lora_1_peft | completed | faithful, fp32 | 1 |", "--train-limit 64 --eval-limit 32",
                   "### where a training step's time goes", "##### lora_8, training, eager, fp32", "| operator | calls per step |",
                   "##### lora_8, evaluation (greedy decode, sorted batches of 256), fp32",
                   "profile step: completed"):
        assert needle in text, needle
    assert "lora_1_peft" in (out / "tables.md").read_text()
    assert (committed.read_bytes() if committed.exists() else None) == before  # only a CUDA run writes results/BENCHMARKS.md
