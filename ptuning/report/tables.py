"""The tables of accuracy and parameter counts, from result files and job files.

Two forms of the same figures:

* the full markdown document (`document`): the accuracy table with every column, the parameter table with the
  formulas, the notes and links to the plots. `ptuning tables` writes it to `<results>/TABLES.md` (what a CI job
  summary or a paper takes) and `--wide` prints it;
* the compact table for a terminal (`compact`): the columns a reader needs first (row, approach, knob, accuracy
  ± std (n), the difference from full fine-tuning with the test's verdict, the report's figure and the distance
  from it, trainable parameters), no line wider than the terminal: when it does not fit, the last columns are
  left out, and the output says which.

A row without a result shows as "not run", a failed one as "failed" — never as a number. The accuracy table has
one row per job and protocol: mean ± sample standard deviation over seeds (`ptuning.report.stats`).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ptuning.report import stats
from ptuning.report.kind import Kind
from ptuning.report.labels import knob_label

NOT_RUN = "not run"
TABLES_FILE = "TABLES.md"


def _fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _fmt_int(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    return f"{value / 60:.1f} min" if value >= 60 else f"{value:.1f} s"


def _fmt_count(value: int | None) -> str:
    """Short parameter counts for the accuracy table: 294.9K, 60.5M (exact counts: parameter table)."""
    if value is None:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return str(value)


def _fmt_bytes(value: int | None) -> str:
    if value is None:
        return "–"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


def pick(results: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """One result of a job, for the parameter table: a completed one first, then the lowest seed."""
    if not results:
        return None
    return sorted(results, key=lambda r: (r.get("status") != "completed", stats.protocol_of(r) != "faithful", stats.seed_of(r)))[0]


def _epochs(row: stats.Row) -> str:
    values = [stats.selected_epoch(r) for r in row.completed]
    return ", ".join("–" if v is None else str(v) for v in values) or "–"


def trains(row: stats.Row) -> bool:
    """Whether the row's runs trained anything (zero-shot's record 0 epochs)."""
    return any((r.get("config") or {}).get("epochs", 1) != 0 for r in row.completed)


def _failure(row: stats.Row, limit: int = 60) -> str:
    reason = row.failed[0].get("reason", "") if row.failed else ""
    return f"failed: {reason}"[:limit] if reason else "failed"


def _ci(row: stats.Row) -> str:
    interval = stats.confidence_interval(row.accuracies)
    return interval.text() if interval else "–"


def eval_seconds_per_1k(result: dict[str, Any]) -> float | None:
    """Seconds to evaluate 1,000 reviews in this run: its evaluation time over the reviews it evaluated (every
    evaluation split, after every epoch)."""
    reviews, seconds, epochs = result.get("eval_reviews"), result.get("eval_seconds"), len(result.get("epochs") or [])
    if not isinstance(reviews, dict) or not isinstance(seconds, (int, float)) or not epochs:
        return None
    total = sum(v for v in reviews.values() if isinstance(v, int)) * epochs
    return 1000.0 * seconds / total if total else None


def _device(result: dict[str, Any]) -> str:
    env = result.get("environment") if isinstance(result.get("environment"), dict) else {}
    return str(env.get("gpu") or env.get("device") or "?")


def eval_cost(row: stats.Row) -> tuple[float | None, str | None]:
    """(mean seconds per 1,000 reviews over the row's runs, the device they ran on; several: joined by '/')."""
    pairs = [(v, _device(r)) for r in row.completed if (v := eval_seconds_per_1k(r)) is not None]
    if not pairs:
        return None, None
    return sum(v for v, _ in pairs) / len(pairs), "/".join(sorted({d for _, d in pairs}))


def common_device(costs: list[tuple[float | None, str | None]]) -> str | None:
    """The device of every row's evaluation (`eval_cost`), when it is one: then named once, under the table;
    otherwise each cell names its own."""
    devices = {device for _, device in costs if device is not None}
    return next(iter(devices)) if len(devices) == 1 else None


def _eval_cell(cost: tuple[float | None, str | None], named_below: str | None) -> str:
    seconds, device = cost
    if seconds is None:
        return "–"
    return f"{seconds:.3g}" + ("" if named_below else f" ({device})")


def _latency_cell(latency: dict[str, Any] | None, name: str) -> str:
    """'+1.23' ms added at batch 1 (LoRA: '+1.23 / merged +0.01'); '–' when not measured."""
    entry = ((latency or {}).get("rows") or {}).get(name)
    if not isinstance(entry, dict) or not isinstance(entry.get("added_ms"), (int, float)):
        return "–"
    text = f"{entry['added_ms']:+.2f}"
    if isinstance(entry.get("added_merged_ms"), (int, float)):
        text += f" / merged {entry['added_merged_ms']:+.2f}"
    return text


def accuracy_rows(jobs, results: dict[str, list[dict[str, Any]]], latency: dict[str, Any] | None = None) -> list[list[str]]:
    table_rows = stats.rows(jobs, results)
    costs = [eval_cost(row) for row in table_rows]
    return _accuracy_rows(table_rows, costs, common_device(costs), latency)


def _accuracy_rows(table_rows: list[stats.Row], costs: list[tuple[float | None, str | None]], device: str | None,
                   latency: dict[str, Any] | None) -> list[list[str]]:
    """The accuracy table's rows; `costs` are the rows' `eval_cost`, `device` their `common_device`."""
    comparisons = stats.compare_with_reference(table_rows)
    out = []
    for row, cost in zip(table_rows, costs):
        job = row.job
        head = [job.row, job.name, job.title, knob_label(job), row.protocol or "–"]
        ref = _fmt_pct(job.reference_accuracy)
        if not row.completed:
            out.append(head + [_failure(row) if row.failed else NOT_RUN] + [""] * 5 + [ref] + [""] * 5
                       + [_latency_cell(latency, job.name), ""])
            continue
        summary = row.accuracy
        accuracy = summary.text()
        if row.failed:
            accuracy += f"; {len(row.failed)} failed"
        diff = "–" if summary.mean is None or job.reference_accuracy is None else stats.signed(summary.mean - job.reference_accuracy)
        comparison = comparisons.get((job.name, row.protocol))
        params = row.params or {}
        out.append(
            head
            + [
                accuracy,
                _ci(row),
                _epochs(row),
                _fmt_pct(row.mean_of("final_accuracy")),
                comparison.text() if comparison else "–",
                stats.seeds_needed_text(comparison),
                ref,
                diff,
                _fmt_count(params.get("trainable")),
                _fmt_bytes(row.max_of("artifact_bytes")),
                _fmt_seconds(row.mean_of("train_seconds")) if trains(row) else "–",
                _eval_cell(cost, device),
                _latency_cell(latency, job.name),
                _fmt_bytes(row.max_of("peak_gpu_memory_reserved_bytes") or row.max_of("peak_gpu_memory_bytes")),
            ]
        )
    return out


ACCURACY_HEADERS = [
    "row", "job", "approach", "knob", "protocol", "test acc. (%)", "95% CI", "epoch", "final acc. (%)", "vs full FT",
    "seeds for 80% power", "reference (%)", "diff", "trainable", "saved", "train time", "eval s / 1k reviews",
    "added latency (ms)", "peak GPU mem.",
]
ACCURACY_NOTES = (
    "test acc.: mean ± sample std over seeds (n runs). 95% CI: t-based confidence interval of the mean (n ≥ 2). "
    "faithful = max test accuracy over epochs (the exercise; optimistic), heldout = test accuracy at the epoch with "
    "the best validation accuracy. epoch: the selected epoch of each seed. final acc.: test accuracy after the last "
    "epoch (mean over seeds). vs full FT: difference of means, the p-value of a two-sided t-test against full "
    "fine-tuning under the same protocol (paired by seed when both rows ran the same seeds on the same data, else "
    "Welch's) and Holm's adjusted p-value across the rows compared; \"differs\" when the adjusted p < 0.05 (needs "
    "n ≥ 2 on both sides). seeds for 80% power: seeds per row at which the test would detect the observed difference "
    "4 times in 5, the observed spreads taken as true. diff: mean minus the report's figure. saved: trained state "
    "on disk. train time: mean per run (– where nothing trains). eval s / 1k reviews: evaluation time per 1,000 "
    "test reviews in these runs. added latency: milliseconds one review's greedy decode at batch 1 takes over the "
    "plain model's (LoRA also merged), from `ptuning latency`."
)


def inference_note(device: str | None, latency: dict[str, Any] | None) -> str:
    """Where the inference figures were measured: the evaluation's device (when it is one for every row), and the
    latency's device, date and size."""
    parts = []
    if device is not None:
        parts.append(f"eval s / 1k reviews measured on {device}")
    if latency:
        parts.append(f"added latency measured by `ptuning latency` on {latency.get('device_name') or latency.get('device')}, "
                     f"{latency.get('date', '?')}, {latency.get('size', '?')} shapes, {latency.get('precision', '?')}, "
                     f"median of {latency.get('reviews', '?')} reviews")
    else:
        parts.append("added latency: not measured (run `ptuning latency --results <this folder>` to fill it)")
    return "Inference cost: " + "; ".join(parts) + "."


PARAMETER_HEADERS = ["row", "job", "approach", "knob", "total", "trainable", "added", "formula", "= formula"]


def parameter_rows(jobs, results: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    rows = []
    for job in jobs:
        result = pick(results.get(job.name))
        head = [job.row, job.name, job.title, knob_label(job)]
        params = (result or {}).get("params")
        if not params:
            rows.append(head + [NOT_RUN, "", "", "", ""])
            continue
        rows.append(
            head
            + [
                _fmt_int(params.get("total")),
                _fmt_int(params.get("trainable")),
                _fmt_int(params.get("added")),
                params.get("formula", "–"),
                "yes" if params.get("match") else "NO",
            ]
        )
    return rows


def markdown(headers: list[str], rows: list[list[Any]]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def plot_links(plots: list[Path] | None, base: Path | None = None) -> list[str]:
    """Markdown image links to the plots that exist, relative to `base` (the folder of the tables file)."""
    existing = [Path(p) for p in plots or [] if Path(p).is_file()]
    if not existing:
        return []

    def target(p: Path) -> str:
        if base is not None:
            try:
                return p.resolve().relative_to(Path(base).resolve()).as_posix()
            except ValueError:  # a plot outside the folder: its own path
                pass
        return p.as_posix()

    return ["## Plots", ""] + [f"![{p.stem.replace('_', ' ')}]({target(p)})" for p in existing] + [""]


def caption(kind: Kind | None) -> list[str]:
    """The line that says what kind of results these are (smoke test, demo); nothing for real runs."""
    return [] if kind is None else [f"> **{kind.label.upper()}**: {kind.note}" if kind.note else f"> **{kind.label.upper()}**", ""]


def document(jobs, results: dict[str, list[dict[str, Any]]], plots: list[Path] | None = None, base: Path | None = None,
             kind: Kind | None = None, latency: dict[str, Any] | None = None) -> str:
    """Both tables as one markdown document (TABLES.md), ending with links to `plots` (the PNGs that exist),
    relative to `base`, the folder the document is written to. `latency`: what `ptuning latency` wrote in the
    results folder (latency.json), if anything."""
    table_rows = stats.rows(jobs, results)
    costs = [eval_cost(row) for row in table_rows]
    device = common_device(costs)
    return "\n".join(
        [
            *caption(kind),
            "## Accuracy (test split)",
            "",
            markdown(ACCURACY_HEADERS, _accuracy_rows(table_rows, costs, device, latency)),
            "",
            ACCURACY_NOTES,
            "",
            inference_note(device, latency),
            "",
            "## Parameters",
            "",
            markdown(PARAMETER_HEADERS, parameter_rows(jobs, results)),
            "",
            *plot_links(plots, base),
        ]
    )


def tables(jobs, results: dict[str, list[dict[str, Any]]], plots: list[Path] | None = None) -> str:
    """The markdown document with links as given (kept for callers that print it)."""
    return document(jobs, results, plots)


# -- the compact table ----------------------------------------------------------------------------------------

#: (key, header (two lines at most), right-aligned); in the order shown, the first five always kept
COMPACT_COLUMNS = [
    ("row", "row", True),
    ("approach", "approach", False),
    ("knob", "knob", False),
    ("protocol", "protocol", False),
    ("accuracy", "accuracy (%)\n± std (n)", True),
    ("vs_full", "vs full FT\n(t-test, Holm)", False),
    ("reference", "ref.\n(%)", True),
    ("diff", "diff", True),
    ("trainable", "trained\nparams", True),
]
#: the columns left out when the table is wider than the terminal, the first one first (the reverse of what a
#: reader needs first, the row's name and its accuracy staying to the end)
DROP_ORDER = ["trainable", "diff", "reference", "knob", "vs_full"]
GAP = "  "


def compact_rows(jobs, results: dict[str, list[dict[str, Any]]]) -> tuple[list[dict[str, str]], list[str]]:
    """The compact table's rows (column key → text) and the failures to list under it ('lora_8 seed 1: reason')."""
    table_rows = stats.rows(jobs, results)
    comparisons = stats.compare_with_reference(table_rows)
    out, failures = [], []
    for row in table_rows:
        job = row.job
        cells = {"row": str(job.row), "approach": job.title, "knob": knob_label(job), "protocol": row.protocol or "–",
                 "reference": _fmt_pct(job.reference_accuracy), "accuracy": "", "vs_full": "", "diff": "", "trainable": ""}
        for failed in row.failed:
            failures.append(f"{job.name} seed {stats.seed_of(failed)}"
                            + (f" ({row.protocol})" if row.protocol != "faithful" else "") + f": {failed.get('reason') or 'no reason recorded'}")
        if not row.completed:
            cells["accuracy"] = "failed" if row.failed else NOT_RUN
            out.append(cells)
            continue
        summary = row.accuracy
        cells["accuracy"] = summary.text(compact=True) + (f", {len(row.failed)} failed" if row.failed else "")
        comparison = comparisons.get((job.name, row.protocol))
        if comparison is not None:
            cells["vs_full"] = comparison.short_text()
        else:
            cells["vs_full"] = "–"
        if summary.mean is not None and job.reference_accuracy is not None:
            cells["diff"] = stats.signed(summary.mean - job.reference_accuracy)
        else:
            cells["diff"] = "–"
        cells["trainable"] = _fmt_count((row.params or {}).get("trainable"))
        out.append(cells)
    return out, failures


def plain_table(columns: list[tuple[str, str, bool]], rows: list[dict[str, str]]) -> list[str]:
    """A table of plain text: headers of one or two lines, a rule of dashes, columns two spaces apart."""
    headers = [header.split("\n") for _, header, _ in columns]
    height = max(len(h) for h in headers)
    headers = [[""] * (height - len(h)) + h for h in headers]  # bottom-aligned
    widths = [max([len(line) for line in h] + [len(r[key]) for r in rows]) for (key, _, _), h in zip(columns, headers)]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if right else c.ljust(w) for c, w, (_, _, right) in zip(cells, widths, columns)]
        return GAP.join(parts).rstrip()

    lines = [line([h[i] for h in headers]) for i in range(height)]
    lines.append(GAP.join("-" * w for w in widths))
    lines += [line([r[key] for key, _, _ in columns]) for r in rows]
    return lines


def fit(rows: list[dict[str, str]], width: int, protocols: bool) -> tuple[list[str], list[str]]:
    """The compact table's lines at most `width` wide if possible (leaving out columns in DROP_ORDER), and the
    headers of the columns left out."""
    columns = [c for c in COMPACT_COLUMNS if protocols or c[0] != "protocol"]
    dropped: list[str] = []
    lines = plain_table(columns, rows)
    for key in DROP_ORDER:
        if max(len(line) for line in lines) <= width:
            break
        header = next(h for k, h, _ in columns if k == key)
        columns = [c for c in columns if c[0] != key]
        dropped.append(header.replace("\n", " "))
        lines = plain_table(columns, rows)
    return lines, dropped


COMPACT_NOTES = (
    "accuracy: test accuracy, mean ± sample std over seeds (n runs); faithful protocol: the max over epochs. "
    "vs full FT: difference of means; a t-test (paired by seed where the runs allow, else Welch's) with Holm's "
    "correction across the rows says \"differs\" (adjusted p < 0.05), \"within noise\" or \"n too small\" (fewer than "
    "2 seeds). ref.: the report's figure; diff: mean minus ref."
)


def compact(jobs, results: dict[str, list[dict[str, Any]]], width: int, tables_file: Path | None = None,
            plots_dir: Path | None = None, kind: Kind | None = None) -> str:
    """The terminal's view: the compact accuracy table, what it leaves out, the parameter check in one line, and
    where the full tables and the plots are. No line is wider than `width` (unless even the smallest table is)."""
    rows, failures = compact_rows(jobs, results)
    protocols = any(r["protocol"] not in ("faithful", "–") for r in rows)
    lines, dropped = fit(rows, width, protocols)
    wrap = textwrap.TextWrapper(width=max(width, 40), break_on_hyphens=False, break_long_words=False)  # paths stay whole
    out: list[str] = []
    if kind is not None:
        out += wrap.wrap(f"{kind.label.upper()}: {kind.note}" if kind.note else kind.label.upper()) + [""]
    out += ["Accuracy (test split)", "", *lines, ""]
    out += wrap.wrap(COMPACT_NOTES)
    if dropped:
        out += wrap.wrap(f"Left out to fit {width} columns: {', '.join(dropped)} (ptuning tables --wide shows every column).")
    for failure in failures:
        out += wrap.wrap(f"failed: {failure}")
    out += [""] + wrap.wrap(parameter_summary(jobs, results))
    where = []
    if tables_file is not None:
        where.append(f"Every column, and the parameter table with its formulas: {tables_file}")
    if plots_dir is not None and any(Path(plots_dir).glob("*.png")):
        where.append(f"Plots: {plots_dir}")
    for text in where:
        out += wrap.wrap(text)
    return "\n".join(out)


def parameter_summary(jobs, results: dict[str, list[dict[str, Any]]]) -> str:
    """One line on the parameter table: how many counted rows equal their formula, and which do not."""
    counted, wrong = 0, []
    for job in jobs:
        params = (pick(results.get(job.name)) or {}).get("params")
        if not params:
            continue
        counted += 1
        if not params.get("match"):
            wrong.append(f"{job.name} (added {_fmt_int(params.get('added'))}, formula {_fmt_int(params.get('formula_value'))})")
    if not counted:
        return "Parameters: no run has counted them yet."
    text = f"Parameters: {counted - len(wrong)} of {counted} rows add exactly what their formula says"
    return text + (f"; NOT: {', '.join(wrong)}." if wrong else ".")
