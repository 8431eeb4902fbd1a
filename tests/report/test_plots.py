"""Plots: one series per row, the Pareto front, valid PNGs, the `plots` command and the links in the tables."""

from __future__ import annotations

from click.testing import CliRunner

from ptuning.cli import main
from ptuning.report import plots, results
from ptuning.settings import load_all_jobs
from tests.conftest import JOBS

PNG = b"\x89PNG\r\n\x1a\n"


def result(job, accs, seed=0, protocol="faithful", trainable=1000, seconds=60.0):
    epochs = [{"epoch": i + (0 if len(accs) == 1 and trainable == 0 else 1), "accuracy": a} for i, a in enumerate(accs)]
    return {
        "job": job, "status": "completed", "protocol": protocol,
        "config": {"seed": seed, "epochs": 0 if trainable == 0 else len(accs), "protocol": protocol},
        "epochs": epochs, "reported_accuracy": max(accs), "selected_epoch": 1, "train_seconds": seconds,
        "params": {"total": 10_000, "trainable": trainable, "added": 0, "formula": "0", "formula_value": 0, "match": True},
    }


def fake_results():
    return {
        "zero_shot": [result("zero_shot", [80.0], trainable=0, seconds=0.0)],
        "full_ft": [result("full_ft", [88.0, 90.0], seed=s, trainable=60_000_000, seconds=600.0 + s) for s in (0, 1, 2)],
        "lora_8": [result("lora_8", [87.0, 89.0], seed=s, trainable=300_000) for s in (0, 1)],
        "soft_prompt_10": [result("soft_prompt_10", [84.0, 86.0], trainable=5_000)],
        "adapter_8": [result("adapter_8", [85.0, 89.5], trainable=100_000, protocol="heldout")],
        "adapter_1_adapterhub": [{"job": "adapter_1_adapterhub", "status": "failed", "reason": "boom", "config": {"seed": 0}}],
    }


def test_pareto_front_keeps_only_undominated_points():
    points = [(60e6, 90.0), (3e5, 89.0), (1e5, 89.5), (5e3, 86.0), (5e3, 85.0), (2e6, 89.5)]
    assert plots.pareto_front(points) == [3, 2, 0]  # by increasing parameters


def test_figures_have_one_series_per_row():
    rows = plots.plotted_rows(load_all_jobs(JOBS), fake_results())
    assert [(r.job.name, r.protocol) for r in rows] == [
        ("zero_shot", "faithful"), ("full_ft", "faithful"), ("soft_prompt_10", "faithful"), ("adapter_8", "heldout"), ("lora_8", "faithful"),
    ]  # the failed row has nothing to plot
    ax = plots.accuracy_per_epoch_figure(rows).axes[0]
    assert len(ax.lines) == 5 and len(ax.get_legend().get_texts()) == 5
    full = next(line for line in ax.lines if "Full fine-tuning" in line.get_label())
    assert list(full.get_xdata()) == [1, 2] and list(full.get_ydata()) == [88.0, 90.0]
    ax = plots.pareto_figure(rows).axes[0]
    assert ax.get_xscale() == "log" and len(ax.containers) == 2  # error bars, one set per protocol
    fronts = [line for line in ax.lines if line.get_label().startswith("Pareto front")]
    assert [line.get_label() for line in fronts] == ["Pareto front (faithful)", "Pareto front (heldout)"]
    # zero-shot (0 trainable, 80.0) is off the log axis and dominates nothing here; faithful front: soft prompt, lora, full
    assert list(fronts[0].get_xdata()) == [5_000, 300_000, 60_000_000]
    assert any(line.get_label().startswith("0. Zero-shot") for line in ax.lines)
    ax = plots.train_time_figure(rows).axes[0]
    assert len(ax.patches) == 5
    assert [round(p.get_width(), 6) for p in ax.patches][:2] == [0.0, round(601.0 / 60, 6)]


def test_write_plots_writes_three_pngs_and_tables_link_them(tmp_path):
    for job, runs in fake_results().items():
        for r in runs:
            results.write_result(results.run_dir(tmp_path, job, r["config"]["seed"], r.get("protocol", "faithful")) / results.RESULT_FILE, r)
    out = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "plots", "--results", str(tmp_path)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    written = sorted((tmp_path / "plots").iterdir())
    assert [p.name for p in written] == ["accuracy_per_epoch.png", "pareto.png", "train_time.png"]
    assert all(p.read_bytes().startswith(PNG) and p.stat().st_size > 1000 for p in written)
    tables = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "tables", "--results", str(tmp_path)], catch_exceptions=False)
    tail = tables.output.rstrip().splitlines()[-3:]
    assert tail == [f"![{p.stem.replace('_', ' ')}]({p.as_posix()})" for p in plots.plot_paths(tmp_path)]


def test_no_results_no_plots(tmp_path):
    assert plots.write_plots(load_all_jobs(JOBS), {}, tmp_path) == []
    out = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "plots", "--results", str(tmp_path)])
    assert out.exit_code == 1 and "nothing to plot" in out.stderr
    tables = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "tables", "--results", str(tmp_path)])
    assert "## Plots" not in tables.output


def test_plots_that_cannot_be_written_are_one_line_and_leave_nothing(tmp_path):
    for job, runs in fake_results().items():
        for r in runs:
            results.write_result(results.run_dir(tmp_path, job, r["config"]["seed"], r.get("protocol", "faithful")) / results.RESULT_FILE, r)
    (tmp_path / "plots").write_text("not a directory")  # as a read-only results directory would: mkdir fails
    out = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "plots", "--results", str(tmp_path)])
    assert out.exit_code == 1, out.exception
    assert out.stderr.strip() == f"ptuning: error: cannot write the plots to {tmp_path / 'plots'}: File exists; make it a writable directory (the results and the tables do not need it)"
    assert (tmp_path / "plots").read_text() == "not a directory"


def test_a_note_heads_every_plot_title(tmp_path):
    rows = plots.plotted_rows(load_all_jobs(JOBS), fake_results())
    titles = {"accuracy_per_epoch_figure": "Test accuracy per epoch", "pareto_figure": "Accuracy against trainable parameters",
              "train_time_figure": "Training time"}
    for name, title in titles.items():
        assert getattr(plots, name)(rows).axes[0].get_title() == title
        assert getattr(plots, name)(rows, "SYNTHETIC").axes[0].get_title() == f"SYNTHETIC\n{title}"
