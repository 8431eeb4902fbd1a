"""`ptuning check`: does each row's max validation accuracy lie within a tolerance of the report's?

For every job with a reference accuracy, the row's faithful-protocol runs (the report's protocol: max test
accuracy over epochs) must exist, all have completed, all come from full-protocol runs (no train/eval limit,
the job's number of epochs), and their mean over seeds — the figure `ptuning tables` shows — must be at most
`tolerance` points away from the reference, in either direction. Anything else fails: a seed that failed, or
only heldout-protocol results (a different figure from the report's).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ptuning.errors import PtuningError

# Accuracy points. The only place the default lives (the CLI and CI workflows use it unless told
# otherwise). Other students' runs of the protocol agree within about +-0.5 points without a seed
# (docs/protocol.md); 1.0 leaves room for a different GPU and library versions.
DEFAULT_TOLERANCE = 1.0


def _partial_run(result: dict[str, Any], job) -> str | None:
    """Why a result does not count as a reproduction of the full protocol, or None."""
    config = result.get("config") or {}
    limits = [f"{key}={config[key]}" for key in ("train_limit", "eval_limit") if config.get(key) is not None]
    want_epochs = job.settings.epochs
    if config.get("epochs") not in (None, want_epochs):
        limits.append(f"epochs={config['epochs']} (job file: {want_epochs})")
    return ", ".join(limits) or None


def _problem(row, others: list[str], results_dir: Path) -> str | None:
    """Why a job's faithful-protocol runs (`row`) cannot be compared with the reference, or None.
    `others`: the protocols the job has results under besides faithful."""
    if row is None or not (row.completed or row.failed):
        if others:
            return (f"only {', '.join(others)}-protocol results; the reference is the faithful protocol's figure "
                    "(run without --protocol heldout)")
        return f"did not run (no result in {results_dir})"
    if row.failed:
        reason = row.failed[0].get("reason", "")
        seeds = f"{len(row.failed)} of {len(row.failed) + len(row.completed)} seeds" if len(row.failed) + len(row.completed) > 1 else "the run"
        return f"failed ({seeds}): {reason}".rstrip(": ")
    for result in row.completed:
        if not isinstance(result.get("max_accuracy"), (int, float)):
            return "result has no max_accuracy"
        if (why := _partial_run(result, row.job)) is not None:
            return f"not a full-protocol run ({why}): {result['max_accuracy']:.2f}%"
    return None


def check(results_dir: str | Path, tolerance: float = DEFAULT_TOLERANCE, jobs=None) -> tuple[bool, list[str]]:
    """Compare every job's result in `results_dir` with its reference accuracy.

    Returns (ok, lines): ok is True only when every job with a reference passes and at least one did;
    lines is one human-readable line per job plus a summary line.
    """
    from ptuning.report import stats
    from ptuning.report.results import load_results
    from ptuning.settings import load_all_jobs

    if math.isnan(tolerance) or tolerance < 0:  # nan compares false with everything: every row would fail
        raise PtuningError(f"tolerance must be >= 0 points, got {tolerance}")
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise PtuningError(f"results directory {results_dir} does not exist; run jobs first or pass --results DIR")
    jobs = load_all_jobs() if jobs is None else jobs
    skipped: list[str] = []
    faithful, others = {}, {}
    for row in stats.rows(jobs, load_results(results_dir, skipped)):
        if row.protocol == "faithful":
            faithful[row.job.name] = row
        elif row.protocol is not None:
            others.setdefault(row.job.name, []).append(row.protocol)

    lines: list[str] = [f"WARN left out: {line}" for line in skipped]
    passed = failed = unreferenced = 0
    for job in jobs:
        ref = job.reference_accuracy
        head = f"{job.name:<28}"
        if ref is None:
            unreferenced += 1
            lines.append(f"SKIP {head} no reference accuracy in the job file")
            continue
        problem = _problem(faithful.get(job.name), others.get(job.name, []), results_dir)
        if problem is None:
            row = faithful[job.name]
            best = stats.summarize(r["max_accuracy"] for r in row.completed).mean
            diff = best - ref
            verdict = "ok  " if abs(diff) <= tolerance + 1e-9 else "FAIL"
            passed += verdict == "ok  "
            failed += verdict == "FAIL"
            n = len(row.completed)
            what = f"max {best:.2f}%" + (f" (mean of {n} seeds)" if n > 1 else "")
            lines.append(f"{verdict} {head} {what} vs reference {ref:.1f}%: {diff:+.2f} points (tolerance {tolerance:g})")
            continue
        failed += 1
        lines.append(f"FAIL {head} {problem}")

    ok = failed == 0 and passed > 0
    summary = f"check: {passed} within ±{tolerance:g} points, {failed} failed"
    if unreferenced:
        summary += f", {unreferenced} without a reference"
    if passed == 0 and failed == 0:
        summary += " (nothing to check)"
    lines.append(summary)
    return ok, lines
