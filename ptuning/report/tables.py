"""Markdown tables (tabulate) of accuracy and parameter counts, from result files and job files.

A row without a result shows as "not run", a failed one as "failed" — never as a number. The
accuracy table has one row per job and protocol: mean ± sample standard deviation over seeds
(`ptuning.report.stats`), the comparison with full fine-tuning, and the cost columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tabulate import tabulate

from ptuning.report import stats

NOT_RUN = "not run"


def _fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _fmt_int(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "–"
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


def accuracy_rows(jobs, results: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    table_rows = stats.rows(jobs, results)
    comparisons = stats.compare_with_reference(table_rows)
    out = []
    for row in table_rows:
        job = row.job
        head = [job.row, job.name, job.title, job.knob_summary, row.protocol or "–"]
        ref = _fmt_pct(job.reference_accuracy)
        if not row.completed:
            if row.failed:
                reason = row.failed[0].get("reason", "")
                out.append(head + [f"failed: {reason}"[:60]] + [""] * 3 + [ref] + [""] * 5)
            else:
                out.append(head + [NOT_RUN] + [""] * 3 + [ref] + [""] * 5)
            continue
        summary = row.accuracy
        accuracy = summary.text()
        if row.failed:
            accuracy += f"; {len(row.failed)} failed"
        diff = "–" if summary.mean is None or job.reference_accuracy is None else f"{summary.mean - job.reference_accuracy:+.1f}"
        comparison = comparisons.get((job.name, row.protocol))
        params = row.params or {}
        out.append(
            head
            + [
                accuracy,
                _epochs(row),
                _fmt_pct(row.mean_of("final_accuracy")),
                comparison.text() if comparison else "–",
                ref,
                diff,
                _fmt_count(params.get("trainable")),
                _fmt_bytes(row.max_of("artifact_bytes")),
                _fmt_seconds(row.mean_of("train_seconds")),
                _fmt_bytes(row.max_of("peak_gpu_memory_reserved_bytes") or row.max_of("peak_gpu_memory_bytes")),
            ]
        )
    return out


ACCURACY_HEADERS = [
    "row", "job", "approach", "knob", "protocol", "test acc. (%)", "epoch", "final acc. (%)", "vs full FT",
    "reference (%)", "diff", "trainable", "saved", "train time", "peak GPU mem.",
]
ACCURACY_NOTES = (
    "test acc.: mean ± sample std over seeds (n runs). faithful = max test accuracy over epochs (the exercise; "
    "optimistic), heldout = test accuracy at the epoch with the best validation accuracy. epoch: the selected "
    "epoch of each seed. final acc.: test accuracy after the last epoch (mean over seeds). vs full FT: difference of means and Welch's t-test against full fine-tuning under the "
    "same protocol, \"differs\" when p < 0.05 (needs n ≥ 2 on both sides). diff: mean minus the report's figure. "
    "saved: trained state on disk. train time: mean per run."
)
PARAMETER_HEADERS = ["row", "job", "approach", "knob", "total", "trainable", "added", "formula", "= formula"]


def parameter_rows(jobs, results: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    rows = []
    for job in jobs:
        result = pick(results.get(job.name))
        head = [job.row, job.name, job.title, job.knob_summary]
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


def plot_links(plots: list[Path] | None) -> list[str]:
    """Markdown image links to the plots that exist."""
    existing = [Path(p) for p in plots or [] if Path(p).is_file()]
    if not existing:
        return []
    return ["## Plots", ""] + [f"![{p.stem.replace('_', ' ')}]({p.as_posix()})" for p in existing] + [""]


def tables(jobs, results: dict[str, list[dict[str, Any]]], plots: list[Path] | None = None, caption: str | None = None) -> str:
    """Both tables as one markdown document, ending with links to `plots` (the PNGs that exist).

    `caption`, when given, is a bold first line (`ptuning demo` marks its synthetic task with it)."""
    return "\n".join(
        [
            *([f"**{caption}**", ""] if caption else []),
            "## Accuracy (test split)",
            "",
            markdown(ACCURACY_HEADERS, accuracy_rows(jobs, results)),
            "",
            ACCURACY_NOTES,
            "",
            "## Parameters",
            "",
            markdown(PARAMETER_HEADERS, parameter_rows(jobs, results)),
            "",
            *plot_links(plots),
        ]
    )
