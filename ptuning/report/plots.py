"""Plots of the results (matplotlib, Agg backend, PNG), written to `<results>/plots/`.

- `accuracy_per_epoch.png`: test accuracy per epoch, one line per table row (job × protocol), mean
  over seeds; a row that does not train (zero-shot) is a dashed horizontal line.
- `pareto.png`: reported accuracy (mean over seeds, ± sample std as error bars) against trainable
  parameters on a log axis; the Pareto front (no other row of the same protocol has at least the
  accuracy with at most the parameters) is connected and its points ringed. A row with 0 trainable
  parameters cannot sit on a log axis: it is a dashed horizontal line.
- `train_time.png`: mean training time per row that trains (bars, ± sample std over seeds), in seconds,
  minutes or hours, whichever reads best.

Every row is named by its number, approach and knob (`ptuning.report.labels.row_label`). The point labels
of the Pareto plot are placed so that no two overlap (rows with equal parameter counts sit on one
vertical line). Axes are chosen to read at a glance: whole epochs only, an accuracy axis at least a few
points tall and within 0–100 %. Results of a smoke test or a demo (`ptuning.report.kind`) say so in
every title.

Every `*_figure` function returns the matplotlib Figure so that tests can inspect its artists.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ptuning.errors import PtuningError
from ptuning.report import stats
from ptuning.report.kind import Kind
from ptuning.report.labels import row_label

FILES = {"accuracy": "accuracy_per_epoch.png", "pareto": "pareto.png", "time": "train_time.png"}
PLOTS_DIR = "plots"
#: the smallest accuracy axis, in points: a flat run (a smoke test's 0 %) gets 0–5 %, not -0.04…0.04 %
MIN_ACCURACY_SPAN = 5.0
ERROR_BARS = "error bars: ± sample std over seeds (none with one seed)"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label(row: stats.Row) -> str:
    return row_label(row.job, row.protocol)


def _title(text: str, kind: Kind | None) -> str:
    return text if kind is None else f"{text} — {kind.label}"


def _trains(row: stats.Row) -> bool:
    return any(r.get("config", {}).get("epochs", 1) != 0 for r in row.completed)


def plotted_rows(jobs, results: dict[str, list[dict[str, Any]]]) -> list[stats.Row]:
    return [r for r in stats.rows(jobs, results) if r.completed and r.accuracies]


def accuracy_limits(values: list[float], floor: float = 0.0, ceiling: float = 100.0,
                    min_span: float = MIN_ACCURACY_SPAN) -> tuple[float, float]:
    """Y limits for accuracies in percent: the values with a margin, at least `min_span` tall, inside [floor, ceiling]."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return floor, floor + min_span
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.08, 0.5)
    lo, hi = lo - pad, hi + pad
    if hi - lo < min_span:
        middle = (lo + hi) / 2
        lo, hi = middle - min_span / 2, middle + min_span / 2
    if lo < floor:
        lo, hi = floor, hi + (floor - lo)
    if hi > ceiling:
        lo, hi = max(floor, lo - (hi - ceiling)), ceiling
    edge = 0.03 * (hi - lo)  # a point at 0 % or 100 % stays clear of the frame
    return lo - edge, hi + edge


def _legend_outside(fig, ax, handles=None, labels=None) -> None:
    """The legend to the right of the axes, where it covers neither lines nor labels."""
    handles, labels = (handles, labels) if handles is not None else ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def accuracy_per_epoch_figure(rows: list[stats.Row], kind: Kind | None = None):
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(11, 5.5), layout="constrained")
    values, epochs_seen = [], set()
    for row in rows:
        epochs, curve = row.curve("accuracy")
        values += curve
        if not _trains(row):
            ax.axhline(curve[0], linestyle="--", color="grey", label=_label(row))
        else:
            epochs_seen.update(epochs)
            ax.plot(epochs, curve, marker="o", markersize=3, linestyle="-" if row.protocol == "faithful" else ":", label=_label(row))
    first, last = (min(epochs_seen), max(epochs_seen)) if epochs_seen else (1, 1)
    ax.set_xlim(first - 0.5, last + 0.5)  # whole epochs: one epoch reads "1", not 0.945…1.05
    if last - first < 20:
        ax.set_xticks(range(first, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(*accuracy_limits(values))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%), mean over seeds")
    ax.set_title(_title("Test accuracy per epoch", kind))
    ax.grid(True, alpha=0.3)
    _legend_outside(fig, ax)
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


#: where a point's label may go (vertical offsets in points), tried in turn until it overlaps no label placed before
LABEL_OFFSETS = (0, -10, 10, -20, 20, -30, 30, -40, 40, -50, 50, -60, 60)
LEADER = {"arrowstyle": "-", "color": "grey", "lw": 0.5}


def label_box(note, renderer):
    """The window extent of an annotation's text alone (without its leader line), where it is drawn."""
    from matplotlib.text import Text

    note.update_positions(renderer)  # the offset text's place on screen, before any draw
    return Text.get_window_extent(note, renderer)


def place_labels(fig, ax, points: list[tuple[float, float]], texts: list[str], fontsize: float = 7) -> list:
    """Annotate each point with its text beside it, moved up or down (with a thin leader line) until it overlaps
    no label placed before; right of the point in the left half of the (log) x axis, left of it in the right half.
    Returns the annotations."""
    renderer = fig.canvas.get_renderer()
    placed, annotations = [], []
    x_lo, x_hi = (math.log10(v) for v in ax.get_xlim())
    for i in sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1])):
        x, y = points[i]
        right_half = (math.log10(x) - x_lo) / ((x_hi - x_lo) or 1) > 0.5
        dx, ha = (-8, "right") if right_half else (8, "left")
        for dy in LABEL_OFFSETS:
            note = ax.annotate(texts[i], (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, ha=ha,
                               va="center", annotation_clip=False, arrowprops=LEADER if dy else None)
            box = label_box(note, renderer)
            if not any(box.overlaps(other) for other in placed) or dy == LABEL_OFFSETS[-1]:
                break  # crowded beyond every offset: the last one (rare: more than a dozen rows on one spot)
            note.remove()
        placed.append(box)
        annotations.append(note)
    return annotations


def pareto_figure(rows: list[stats.Row], kind: Kind | None = None):
    """One colour per row, its number beside its point, and the legend naming every number (row, approach, knob)."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(11, 6), layout="constrained")
    protocols = sorted({r.protocol for r in rows}, key=lambda p: (p != "faithful", p))
    markers = {"faithful": "o", "heldout": "s"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labelled: list[tuple[tuple[float, float], str]] = []
    values: list[float] = []
    for protocol in protocols:
        mine = [r for r in rows if r.protocol == protocol and r.params]
        points = [(r.params["trainable"], r.accuracy.mean) for r in mine]
        front = set(pareto_front(points))
        for i, (p, a) in enumerate(points):
            row, color = mine[i], colors[mine[i].job.row % len(colors)]
            values.append(a)
            if p <= 0:  # no place on a log axis
                ax.axhline(a, linestyle="--", color="grey", label=f"{_label(row)}: 0 trainable")
                continue
            err = row.accuracy.std or 0.0
            values += [a - err, a + err]
            ax.errorbar([p], [a], yerr=[err], fmt=markers.get(protocol, "^"), color=color, capsize=3, label=_label(row))
            labelled.append(((p, a), str(row.job.row)))
        line = [points[i] for i in sorted((i for i in front if points[i][0] > 0), key=lambda i: points[i])]
        if line:
            ax.plot([p for p, _ in line], [a for _, a in line], color="red", linewidth=1, marker="o",
                    markerfacecolor="none", markersize=12, label=f"Pareto front ({protocol})")
    ax.set_xscale("log")
    if labelled:  # room on both sides of the points
        xs = [p for (p, _), _ in labelled]
        ax.set_xlim(min(xs) / 3, max(xs) * 3)
    ax.set_ylim(*accuracy_limits(values))
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("reported test accuracy (%), mean over seeds")
    ax.set_title(_title("Accuracy against trainable parameters", kind))
    ax.grid(True, which="both", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], linestyle="none"))
    names.append(ERROR_BARS)
    _legend_outside(fig, ax, handles, names)
    fig.canvas.draw()  # the layout is final before the labels are placed by their size on screen
    fig.set_layout_engine("none")  # and stays so: the labels must not move the axes once placed
    place_labels(fig, ax, [p for p, _ in labelled], [t for _, t in labelled], fontsize=8)
    return fig


def time_unit(seconds: float) -> tuple[str, float]:
    """The unit that reads best for durations up to `seconds`: ('s', 1), ('min', 60) or ('h', 3600)."""
    if seconds < 120:
        return "s", 1.0
    if seconds < 2 * 3600:
        return "min", 60.0
    return "h", 3600.0


def train_time_figure(rows: list[stats.Row], kind: Kind | None = None):
    """Bars for the rows that train (zero-shot trains nothing and has no bar)."""
    plt = _pyplot()
    trained = [row for row in rows if _trains(row)]
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.4 * len(trained) + 1.8)), layout="constrained")
    summaries = []
    for row in trained:
        times = [r["train_seconds"] for r in row.completed if r.get("train_seconds") is not None]
        summaries.append(stats.summarize(times))
    longest = max(((s.mean or 0.0) + (s.std or 0.0) for s in summaries), default=0.0)
    unit, scale = time_unit(longest)
    means = [(s.mean or 0.0) / scale for s in summaries]
    errs = [(s.std or 0.0) / scale for s in summaries]
    positions = list(range(len(trained)))
    ax.barh(positions, means, xerr=errs, capsize=3, color="tab:blue")
    ax.set_yticks(positions, [_label(row) for row in trained], fontsize=7)
    ax.invert_yaxis()
    if longest <= 0:
        ax.set_xlim(0, 1)
    else:
        ax.set_xlim(0, longest / scale * 1.1)
    ax.set_xlabel(f"training time per run ({unit}), mean over seeds\n{ERROR_BARS}")
    ax.set_title(_title("Training time", kind))
    ax.grid(True, axis="x", alpha=0.3)
    if not trained:
        ax.text(0.5, 0.5, "no row trains anything", transform=ax.transAxes, ha="center", va="center")
    return fig


def plot_paths(results_dir: Path) -> list[Path]:
    directory = Path(results_dir) / PLOTS_DIR
    return [directory / name for name in FILES.values()]


def write_plots(jobs, results: dict[str, list[dict[str, Any]]], results_dir: Path, kind: Kind | None = None) -> list[Path]:
    """Write the three PNGs into `<results_dir>/plots/`; nothing when no row has completed."""
    rows = plotted_rows(jobs, results)
    if not rows:
        return []
    from ptuning.atomic import atomic_save

    plt = _pyplot()
    directory = Path(results_dir) / PLOTS_DIR
    advice = "make it a writable directory (the results and the tables do not need it)"
    if directory.is_symlink():  # planted in a shared folder or an unpacked archive: the PNGs would land elsewhere
        raise PtuningError(f"{directory} is a symbolic link; ptuning does not write through one (remove it, or pass "
                           "--results with another directory)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only results directory, a file named plots
        raise PtuningError(f"cannot write the plots to {directory}: {exc.strerror or exc}; {advice}") from None
    written = []
    for key, build in (("accuracy", accuracy_per_epoch_figure), ("pareto", pareto_figure), ("time", train_time_figure)):
        fig = build(rows, kind)
        try:  # never a half-written PNG; a write error is one line
            written.append(atomic_save(directory / FILES[key], lambda tmp: fig.savefig(tmp, dpi=120, format="png"), writable=advice))
        finally:
            plt.close(fig)
    return written
