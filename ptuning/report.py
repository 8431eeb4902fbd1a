"""Markdown tables (tabulate) of accuracy and parameter counts, from result files and job files.

A row without a result shows as "not run", a failed one as "failed" — never as a number.
"""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

NOT_RUN = "not run"


def _fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _fmt_int(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value / 60:.1f} min" if value >= 60 else f"{value:.1f} s"


def pick(results: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The result a table row shows: the lowest seed's (multi-seed summaries are separate)."""
    if not results:
        return None
    return sorted(results, key=lambda r: r.get("config", {}).get("seed", 0))[0]


def accuracy_rows(jobs, results: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    rows = []
    for job in jobs:
        result = pick(results.get(job.name))
        head = [job.row, job.name, job.title, job.knob_summary]
        ref = _fmt_pct(job.reference_accuracy)
        if result is None or result.get("status") not in ("completed", "failed"):
            rows.append(head + [NOT_RUN, "", "", ref, "", ""])
            continue
        if result["status"] == "failed":
            rows.append(head + [f"failed: {result.get('reason', '')}"[:60], "", "", ref, "", ""])
            continue
        best = result.get("max_accuracy")
        diff = "–" if best is None or job.reference_accuracy is None else f"{best - job.reference_accuracy:+.1f}"
        rows.append(
            head
            + [
                _fmt_pct(best),
                str(result.get("max_epoch", "–")),
                _fmt_pct(result.get("final_accuracy")),
                ref,
                diff,
                _fmt_seconds(result.get("train_seconds")),
            ]
        )
    return rows


ACCURACY_HEADERS = ["row", "job", "approach", "knob", "max acc. (%)", "epoch", "final acc. (%)", "reference (%)", "diff", "train time"]
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


def tables(jobs, results: dict[str, list[dict[str, Any]]]) -> str:
    """Both tables as one markdown document."""
    return "\n".join(
        [
            "## Validation accuracy",
            "",
            markdown(ACCURACY_HEADERS, accuracy_rows(jobs, results)),
            "",
            "## Parameters",
            "",
            markdown(PARAMETER_HEADERS, parameter_rows(jobs, results)),
            "",
        ]
    )
