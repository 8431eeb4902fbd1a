"""Plots of the results (matplotlib, Agg backend, PNG), written to `<results>/plots/`.

- `accuracy_per_epoch.png`: test accuracy per epoch, one line per table row (job × protocol), mean
  over seeds; a row that does not train (zero-shot) is a dashed horizontal line.
- `pareto.png`: reported accuracy (mean over seeds, ± std as error bars) against trainable
  parameters on a log axis; the Pareto front (no other row of the same protocol has at least the
  accuracy with at most the parameters) is connected and its points ringed. A row with 0 trainable
  parameters cannot sit on a log axis: it is a dashed horizontal line.
- `train_time.png`: mean training time per row (bars, ± std over seeds).

Every `*_figure` function returns the matplotlib Figure so that tests can inspect its artists. A `note` (e.g.
`ptuning demo`'s "SYNTHETIC DEMO TASK ...") is a first title line on every plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ptuning.errors import PtuningError
from ptuning.report import stats

FILES = {"accuracy": "accuracy_per_epoch.png", "pareto": "pareto.png", "time": "train_time.png"}
PLOTS_DIR = "plots"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label(row: stats.Row) -> str:
    suffix = "" if row.protocol == "faithful" else f" [{row.protocol}]"
    return f"{row.job.row}. {row.job.title}{suffix}"


def _title(ax, title: str, note: str | None) -> None:
    ax.set_title(f"{note}\n{title}" if note else title)


def _trains(row: stats.Row) -> bool:
    return any(r.get("config", {}).get("epochs", 1) != 0 for r in row.completed)


def plotted_rows(jobs, results: dict[str, list[dict[str, Any]]]) -> list[stats.Row]:
    return [r for r in stats.rows(jobs, results) if r.completed and r.accuracies]


def accuracy_per_epoch_figure(rows: list[stats.Row], note: str | None = None):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for row in rows:
        epochs, values = row.curve("accuracy")
        if not _trains(row):
            ax.axhline(values[0], linestyle="--", color="grey", label=_label(row))
        else:
            ax.plot(epochs, values, marker="o", markersize=3, linestyle="-" if row.protocol == "faithful" else ":", label=_label(row))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%), mean over seeds")
    _title(ax, "Test accuracy per epoch", note)
    ax.grid(True, alpha=0.3)
    if rows:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (params, accuracy) points that no other point dominates, by increasing params.

    A point dominates another when it has at most the parameters and at least the accuracy, and is
    strictly better in one of the two.
    """
    front = []
    for i, (p, a) in enumerate(points):
        dominated = any((q <= p and b >= a) and (q < p or b > a) for j, (q, b) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def pareto_figure(rows: list[stats.Row], note: str | None = None):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    protocols = sorted({r.protocol for r in rows}, key=lambda p: (p != "faithful", p))
    markers = {"faithful": "o", "heldout": "s"}
    for protocol in protocols:
        mine = [r for r in rows if r.protocol == protocol and r.params]
        points = [(r.params["trainable"], r.accuracy.mean) for r in mine]
        front = set(pareto_front(points))
        on_axis = [i for i, (p, _) in enumerate(points) if p > 0]
        for i, (p, a) in enumerate(points):
            if p <= 0:
                ax.axhline(a, linestyle="--", color="grey", label=f"{_label(mine[i])}: 0 trainable")
        if on_axis:
            xs = [points[i][0] for i in on_axis]
            ys = [points[i][1] for i in on_axis]
            errs = [mine[i].accuracy.std or 0.0 for i in on_axis]
            ax.errorbar(xs, ys, yerr=errs, fmt=markers.get(protocol, "^"), capsize=3, label=f"rows ({protocol})")
            for i in on_axis:
                ax.annotate(mine[i].job.name, points[i], fontsize=7, xytext=(4, 4), textcoords="offset points")
            line = [points[i] for i in sorted(front & set(on_axis), key=lambda i: points[i])]
            if line:
                ax.plot([p for p, _ in line], [a for _, a in line], color="red", linewidth=1, marker="o",
                        markerfacecolor="none", markersize=12, label=f"Pareto front ({protocol})")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("reported test accuracy (%), mean ± std over seeds")
    _title(ax, "Accuracy against trainable parameters", note)
    ax.grid(True, which="both", alpha=0.3)
    if rows:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def train_time_figure(rows: list[stats.Row], note: str | None = None):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.4 * len(rows) + 1.5)))
    labels, means, errs = [], [], []
    for row in rows:
        times = [r["train_seconds"] for r in row.completed if r.get("train_seconds") is not None]
        summary = stats.summarize(times)
        labels.append(_label(row))
        means.append((summary.mean or 0.0) / 60)
        errs.append((summary.std or 0.0) / 60)
    positions = list(range(len(rows)))
    ax.barh(positions, means, xerr=errs, capsize=3, color="tab:blue")
    ax.set_yticks(positions, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("training time per run (minutes), mean over seeds")
    _title(ax, "Training time", note)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_paths(results_dir: Path) -> list[Path]:
    directory = Path(results_dir) / PLOTS_DIR
    return [directory / name for name in FILES.values()]


def write_plots(jobs, results: dict[str, list[dict[str, Any]]], results_dir: Path, note: str | None = None) -> list[Path]:
    """Write the three PNGs into `<results_dir>/plots/`, `note` atop every title; nothing when no row has completed."""
    rows = plotted_rows(jobs, results)
    if not rows:
        return []
    from ptuning.atomic import atomic_save

    plt = _pyplot()
    directory = Path(results_dir) / PLOTS_DIR
    advice = "make it a writable directory (the results and the tables do not need it)"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only results directory, a file named plots
        raise PtuningError(f"cannot write the plots to {directory}: {exc.strerror or exc}; {advice}") from None
    written = []
    for key, build in (("accuracy", accuracy_per_epoch_figure), ("pareto", pareto_figure), ("time", train_time_figure)):
        fig = build(rows, note)
        try:  # never a half-written PNG; a write error is one line
            written.append(atomic_save(directory / FILES[key], lambda tmp: fig.savefig(tmp, dpi=120, format="png"), writable=advice))
        finally:
            plt.close(fig)
    return written
