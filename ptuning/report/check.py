"""`ptuning check`: does each row's figure lie within a tolerance of the report's?

The figure compared is the faithful protocol's (the report's): the max test accuracy over epochs, mean over
seeds — the figure `ptuning tables` shows. For every job with a reference accuracy, its faithful-protocol runs
must exist, all have completed, all come from full-protocol runs (no train/eval limit, the job's number of
epochs), and that figure must be at most `tolerance` points away from the reference, in either direction.
Each row's line gives the reference, the measured figure and the distance, and every reason the runs do not
count (a failed seed, a limit, fewer epochs, only heldout-protocol results, no run at all).
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


def _reasons(row, others: list[str], results_dir: Path) -> list[str]:
    """Every reason a job's faithful-protocol runs (`row`) do not count as a reproduction of the report's figure
    (empty: they do). `others`: the protocols the job has results under besides faithful."""
    if row is None or not (row.completed or row.failed):
        if others:
            return [f"only {', '.join(others)}-protocol results; the reference is the faithful protocol's figure "
                    "(run without --protocol heldout)"]
        return [f"did not run (no result in {results_dir})"]
    from ptuning.report import stats

    runs = sorted(row.completed + row.failed, key=stats.seed_of)
    several = len(runs) > 1
    reasons = []
    for result in runs:
        who = f"seed {stats.seed_of(result)}" if several else "the run"
        if result.get("status") != "completed":
            reasons.append(f"{who} failed: {result.get('reason') or 'no reason recorded'}")
            continue
        if not isinstance(result.get("max_accuracy"), (int, float)):
            reasons.append(f"{who}: result has no max_accuracy")
        if (why := _partial_run(result, row.job)) is not None:
            reasons.append(f"{who}: not a full-protocol run ({why})")
    return reasons


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
        row = faithful.get(job.name)
        reasons = _reasons(row, others.get(job.name, []), results_dir)
        figures = [r["max_accuracy"] for r in (row.completed if row else []) if isinstance(r.get("max_accuracy"), (int, float))]
        measured = distance = "–"
        within = False
        if figures:
            best = stats.summarize(figures).mean
            diff = best - ref
            within = abs(diff) <= tolerance + 1e-9
            measured = f"{best:.2f}%" + (f" (mean of {len(figures)} seeds)" if len(figures) > 1 else "")
            distance = f"{diff:+.2f} points"
        ok = within and not reasons
        passed += ok
        failed += not ok
        line = f"{'ok  ' if ok else 'FAIL'} {head} reference {ref:.1f}%, measured {measured}, distance {distance} (tolerance {tolerance:g})"
        if reasons:
            line += "; incomplete: " + "; ".join(reasons)
        lines.append(line)

    ok = failed == 0 and passed > 0
    summary = f"check: {passed} within ±{tolerance:g} points, {failed} failed"
    if unreferenced:
        summary += f", {unreferenced} without a reference"
    if passed == 0 and failed == 0:
        summary += " (nothing to check)"
    lines.append(summary)
    return ok, lines
