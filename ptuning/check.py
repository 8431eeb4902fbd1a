"""`ptuning check`: does each row's max validation accuracy lie within a tolerance of the report's?

For every job with a reference accuracy, the row's result (the one `ptuning tables` shows) must exist,
have completed, come from a full-protocol run (no train/eval limit, the job's number of epochs) and
be at most `tolerance` points away from the reference, in either direction. Anything else fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ptuning.errors import PtuningError

# Accuracy points. The only place the default lives (the CLI and CI workflows use it unless told
# otherwise). Other students' runs of the protocol agree within about +-0.5 points without a seed
# (PROTOCOL.md); 1.0 leaves room for a different GPU and library versions.
DEFAULT_TOLERANCE = 1.0


def _partial_run(result: dict[str, Any], job) -> str | None:
    """Why a result does not count as a reproduction of the full protocol, or None."""
    config = result.get("config") or {}
    limits = [f"{key}={config[key]}" for key in ("train_limit", "eval_limit") if config.get(key) is not None]
    want_epochs = getattr(job, "epochs", None)
    if want_epochs is not None and config.get("epochs") not in (None, want_epochs):
        limits.append(f"epochs={config['epochs']} (job file: {want_epochs})")
    return ", ".join(limits) or None


def check(results_dir: str | Path, tolerance: float = DEFAULT_TOLERANCE, jobs=None) -> tuple[bool, list[str]]:
    """Compare every job's result in `results_dir` with its reference accuracy.

    Returns (ok, lines): ok is True only when every job with a reference passes and at least one did;
    lines is one human-readable line per job plus a summary line.
    """
    from ptuning.jobs import load_all_jobs
    from ptuning.report import pick
    from ptuning.results import load_results

    if tolerance < 0:
        raise PtuningError(f"tolerance must be >= 0 points, got {tolerance}")
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise PtuningError(f"results directory {results_dir} does not exist; run jobs first or pass --results DIR")
    jobs = load_all_jobs() if jobs is None else jobs
    results = load_results(results_dir)

    lines: list[str] = []
    passed = failed = skipped = 0
    for job in jobs:
        ref = job.reference_accuracy
        head = f"{job.name:<28}"
        if ref is None:
            skipped += 1
            lines.append(f"SKIP {head} no reference accuracy in the job file")
            continue
        result = pick(results.get(job.name))
        if result is None:
            problem = f"did not run (no result in {results_dir})"
        elif result.get("status") != "completed":
            problem = f"{result.get('status', 'unknown status')}: {result.get('reason', '')}".rstrip(": ")
        elif not isinstance(result.get("max_accuracy"), (int, float)):
            problem = "result has no max_accuracy"
        elif (why := _partial_run(result, job)) is not None:
            problem = f"not a full-protocol run ({why}): {result['max_accuracy']:.2f}%"
        else:
            best = float(result["max_accuracy"])
            diff = best - ref
            verdict = "ok  " if abs(diff) <= tolerance + 1e-9 else "FAIL"
            passed += verdict == "ok  "
            failed += verdict == "FAIL"
            lines.append(f"{verdict} {head} max {best:.2f}% vs reference {ref:.1f}%: {diff:+.2f} points (tolerance {tolerance:g})")
            continue
        failed += 1
        lines.append(f"FAIL {head} {problem}")

    ok = failed == 0 and passed > 0
    summary = f"check: {passed} within ±{tolerance:g} points, {failed} failed"
    if skipped:
        summary += f", {skipped} without a reference"
    if passed == 0 and failed == 0:
        summary += " (nothing to check)"
    lines.append(summary)
    return ok, lines
