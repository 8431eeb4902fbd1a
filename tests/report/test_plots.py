"""Plots: one series per row, the Pareto front, valid PNGs, the `plots` command and the links in the tables."""

from __future__ import annotations

import pytest
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
    assert ax.get_xscale() == "log" and len(ax.containers) == 4  # error bars, one set per row with trainable parameters
    fronts = [line for line in ax.lines if line.get_label().startswith("Pareto front")]
    assert [line.get_label() for line in fronts] == ["Pareto front (faithful)", "Pareto front (heldout)"]
    # zero-shot (0 trainable, 80.0) is off the log axis and dominates nothing here; faithful front: soft prompt, lora, full
    assert list(fronts[0].get_xdata()) == [5_000, 300_000, 60_000_000]
    assert any(line.get_label().startswith("0. Zero-shot") for line in ax.lines)
    ax = plots.train_time_figure(rows).axes[0]
    assert len(ax.patches) == 4  # zero-shot trains nothing: no bar
    assert [round(p.get_width(), 6) for p in ax.patches][:1] == [round(601.0 / 60, 6)] and "(min)" in ax.get_xlabel()


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
    assert tables.output.rstrip().splitlines()[-1] == f"Plots: {tmp_path / 'plots'}"
    tail = (tmp_path / "TABLES.md").read_text().rstrip().splitlines()[-3:]  # relative to the tables file
    assert tail == ["![accuracy per epoch](plots/accuracy_per_epoch.png)", "![pareto](plots/pareto.png)",
                    "![train time](plots/train_time.png)"]


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


# -- read at a glance ---------------------------------------------------------------------------------------


def _rows(runs):
    return plots.plotted_rows(load_all_jobs(JOBS), runs)


def test_every_row_is_named_by_number_approach_and_knob(eleven_rows):
    from ptuning.report.labels import row_label

    _, runs = eleven_rows
    rows = _rows(runs)
    expected = [row_label(job) for job in load_all_jobs(JOBS)]
    assert "3. Soft prompt, OpenDelta (10 tokens)" in expected and "4. Soft prompt, OpenDelta (1 token)" in expected
    assert "9. LoRA, PEFT (rank 8)" in expected and "10. LoRA, PEFT (rank 1)" in expected and len(set(expected)) == 11
    ax = plots.accuracy_per_epoch_figure(rows).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == expected
    ax = plots.train_time_figure(rows).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == expected[1:]  # zero-shot trains nothing
    ax = plots.pareto_figure(rows).axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert set(expected[1:]) <= set(legend) and f"{expected[0]}: 0 trainable" in legend
    assert plots.ERROR_BARS in legend  # what the bars are is said


def _label_boxes(fig):
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    return {note.get_text(): plots.label_box(note, renderer) for note in ax.texts}


def _overlapping(boxes):
    names = sorted(boxes)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if boxes[a].overlaps(boxes[b])]


def test_pareto_labels_of_rows_with_equal_counts_never_overprint(tmp_path):
    """Rows 5/6 and 8/9 have the same trainable parameters; here also the same accuracy: the worst case."""
    from tests.report.conftest import run_result

    jobs = {job.name: job for job in load_all_jobs(JOBS)}
    accuracy = {"full_ft": 90.0, "soft_prompt_10": 86.8, "soft_prompt_10_opendelta": 86.8, "soft_prompt_1_opendelta": 84.9,
                "adapter_8": 90.5, "adapter_8_adapterhub": 90.5, "adapter_1_adapterhub": 89.1, "lora_8": 89.0,
                "lora_8_peft": 89.0, "lora_1_peft": 88.8, "zero_shot": 71.3}
    runs = {name: [run_result(jobs[name], 0, a)] for name, a in accuracy.items()}
    fig = plots.pareto_figure(_rows(runs))
    fig.canvas.draw()
    boxes = _label_boxes(fig)
    assert sorted(boxes, key=int) == [str(n) for n in range(1, 11)]
    assert _overlapping(boxes) == []
    axes_box = fig.axes[0].get_window_extent()
    assert all(axes_box.x0 - 1 <= b.x0 and b.x1 <= axes_box.x1 + 1 for b in boxes.values())  # inside the plot, left to right


def test_pareto_labels_never_overprint_on_eleven_rows_with_seeds(eleven_rows):
    _, runs = eleven_rows
    fig = plots.pareto_figure(_rows(runs))
    fig.canvas.draw()
    assert _overlapping(_label_boxes(fig)) == []


def test_axes_read_at_a_glance_one_epoch_flat_zero_and_seconds():
    """A smoke-like run: one epoch, every accuracy 0, a few seconds of training."""
    from tests.report.conftest import run_result

    jobs = {job.name: job for job in load_all_jobs(JOBS)}
    runs = {name: [run_result(jobs[name], 0, 0.0, epochs=1, seconds=2.5)] for name in ("zero_shot", "full_ft", "lora_8")}
    rows = _rows(runs)
    ax = plots.accuracy_per_epoch_figure(rows).axes[0]
    assert ax.get_xlim() == (0.5, 1.5) and list(ax.get_xticks()) == [1]
    lo, hi = ax.get_ylim()
    assert -0.5 < lo <= 0 and hi >= 4.5  # not -0.04 … 0.04
    ax = plots.pareto_figure(rows).axes[0]
    lo, hi = ax.get_ylim()
    assert -0.5 < lo <= 0 and hi >= 4.5
    ax = plots.train_time_figure(rows).axes[0]
    assert ax.get_xlabel().startswith("training time per run (s)") and [round(p.get_width(), 3) for p in ax.patches] == [2.5, 2.5]


def test_train_time_unit_follows_the_durations():
    assert plots.time_unit(90) == ("s", 1.0) and plots.time_unit(600) == ("min", 60.0) and plots.time_unit(3 * 3600) == ("h", 3600.0)
    from tests.report.conftest import run_result

    jobs = {job.name: job for job in load_all_jobs(JOBS)}
    ax = plots.train_time_figure(_rows({"full_ft": [run_result(jobs["full_ft"], 0, 90.0, seconds=3 * 3600)]})).axes[0]
    assert "(h)" in ax.get_xlabel() and [round(p.get_width(), 3) for p in ax.patches] == [3.0]


def test_accuracy_limits():
    assert plots.accuracy_limits([0.0, 0.0]) == pytest.approx((-0.15, 5.15))
    assert plots.accuracy_limits([100.0]) == pytest.approx((94.85, 100.15))
    lo, hi = plots.accuracy_limits([71.3, 84.9, 90.6])
    assert lo < 71.3 and hi > 90.6 and hi - lo < 25


def test_smoke_results_say_so_in_every_title(eleven_rows):
    from ptuning.report import kind

    folder, runs = eleven_rows
    kind.mark(folder, kind.SMOKE)
    rows = _rows(runs)
    for build in (plots.accuracy_per_epoch_figure, plots.pareto_figure, plots.train_time_figure):
        assert build(rows, kind.SMOKE).axes[0].get_title().endswith(" — smoke test")
        assert "—" not in build(rows).axes[0].get_title()
    out = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "plots", "--results", str(folder)], catch_exceptions=False)
    assert out.exit_code == 0 and len(out.output.splitlines()) == 3
