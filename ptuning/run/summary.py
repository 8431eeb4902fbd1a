"""The lines a command that runs jobs ends with: runs completed, skipped and failed, the time it took, where the
results are and what to run next. `run-all`, `smoke` and a waiting `submit` print them.

Which runs completed and which were skipped is read from the result files: a run whose completed `result.json` is
older than the command was skipped (it had finished before), one written since completed now. The runs a command
saw fail are passed in; a run with neither a result nor a failure did not run (stopped before it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable


@dataclass
class Tally:
    """Run labels ('lora_8', or 'lora_8 seed 1' for a job with several seeds) by outcome."""

    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return len(self.completed) + len(self.skipped) + len(self.failed) + len(self.not_run)


def run_labels(job) -> list[tuple[str, int]]:
    """(label, seed) of each run of `job`, labelled as the commands label them in their messages."""
    seeds = job.seed_list
    return [(job.name if len(seeds) == 1 else f"{job.name} seed {seed}", seed) for seed in seeds]


def tally(jobs, output_dir: Path, started: float, failed: Iterable[str] = ()) -> Tally:
    """The outcome of every run of `jobs` (with the command's overrides applied) in `output_dir`, for a command
    that started at `started` (time.time()). `failed`: the labels of the runs (or names of whole jobs) it saw fail."""
    from ptuning.report.results import RESULT_FILE, read_result, run_dir
    from ptuning.errors import PtuningError

    failed = set(failed)
    out = Tally()
    for job in jobs:
        for label, seed in run_labels(job):
            if label in failed or job.name in failed:
                out.failed.append(label)
                continue
            path = run_dir(output_dir, job.name, seed, job.settings.protocol) / RESULT_FILE
            try:
                result, mtime = read_result(path), os.stat(path).st_mtime
            except (PtuningError, OSError):
                out.not_run.append(label)
                continue
            if result.get("status") != "completed":
                out.failed.append(label)
            elif mtime < started:
                out.skipped.append(label)
            else:
                out.completed.append(label)
    known = {label for job in jobs for label, _ in run_labels(job)} | {job.name for job in jobs}
    out.failed += sorted(failed - known)  # jobs that failed before they were even loaded (a broken job file)
    return out


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 13 min'."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def summary_lines(result: Tally, seconds: float, results_dir: Path, next_steps: list[str], command: str = "ptuning") -> list[str]:
    """The closing lines: outcomes (naming the failed runs), time, the results folder, and each next step."""
    counts = [f"{_runs(len(result.completed))} completed", f"{len(result.skipped)} skipped (already completed)",
              f"{len(result.failed)} failed" + (f" ({', '.join(result.failed)})" if result.failed else "")]
    if result.not_run:
        counts.append(f"{len(result.not_run)} not run ({', '.join(result.not_run)})")
    lines = [f"{command}: {', '.join(counts)}; {duration(seconds)} in all", f"results: {results_dir}"]
    lines += [f"next: {step}" for step in next_steps]
    return lines
