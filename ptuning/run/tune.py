"""`ptuning tune`: for each row, choose a point of its grid on held-out validation data, then report that point's
test accuracy beside the job file's own settings (the exercise's fixed learning rate).

For each job, in order:

1. search: every point of the job's grid (its `sweep:`, with `--sweep KEY=V1,V2` replacing or adding keys) runs under
   the heldout protocol with the search seeds, for `budget_epochs` epochs, into `<output>/search/`;
2. choice: the point with the best validation accuracy (each run's selected epoch), averaged over the search seeds;
   a tie goes to the first point in grid order. Nothing of the test split is read for the choice;
3. final: the chosen point runs with every seed under the heldout protocol, with the job's epochs, into `<output>/`;
4. fixed: the job as its file has it runs with the same seeds under the heldout protocol, into `<output>/`.

`<output>/tune.json` records each job's grid with every point's validation accuracy, the choice and the settings of
the search. Every run is an ordinary run: finished ones are skipped, interrupted ones resumed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

from ptuning.atomic import atomic_save
from ptuning.errors import PtuningError
from ptuning.report import stats
from ptuning.settings import Job, parse_value

TUNE_FILE = "tune.json"
SEARCH_DIR = "search"


def parse_sweep_option(text: str) -> tuple[str, list[Any]]:
    """`--sweep lr=1e-4,3e-4` → ("lr", [1e-4, 3e-4]), each value typed and checked like `--set`'s."""
    from ptuning.settings import SETTINGS, knob_spec

    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise PtuningError(f"--sweep {text!r}: expected KEY=V1,V2,..., e.g. --sweep lr=1e-4,3e-4 or --sweep rank=1,8")
    if key not in SETTINGS and not key.startswith("method.") and knob_spec(f"method.{key}") is not None:
        key = f"method.{key}"  # a knob may be named alone, as in a job file's sweep
    return key, [parse_value(key, value.strip(), f"--sweep {key}") for value in values.split(",")]


def with_grid(job: Job, sweeps: list[tuple[str, list[Any]]]) -> Job:
    """The job with `--sweep` keys replacing or adding to its file's grid (checked like the file's)."""
    from ptuning.methods import method_class
    from ptuning.settings import parse_sweep

    if not sweeps:
        if not job.sweep:
            raise PtuningError(f"{job.name} has no grid to tune: add `sweep:` to its job file or give --sweep KEY=V1,V2")
        return job
    grid: dict[str, Any] = {(k[len("method."):] if k.startswith("method.") else k): v for k, v in job.sweep.items()}
    for key, values in sweeps:
        grid.pop(key[len("method."):] if key.startswith("method.") else key, None)
        grid[key] = values
    cls = method_class(job.method, job.implementation)
    return dataclasses.replace(job, sweep=parse_sweep(job.name, grid, cls, job.knobs, label="--sweep"))


def validation_accuracy(result: dict[str, Any]) -> float:
    value = result.get("selected_val_accuracy")
    if value is None:
        raise PtuningError(f"{result.get('job')}: a search run has no validation accuracy (it must run under the heldout protocol)")
    return value


def choose(grid: dict[str, list[float]]) -> str:
    """The point with the best mean validation accuracy; the first in grid order on a tie."""
    best, best_value = None, -math.inf
    for point, values in grid.items():
        mean = math.fsum(values) / len(values)
        if mean > best_value:
            best, best_value = point, mean
    return best


def tune(jobs: list[Job], output_dir: Path, run: Callable[[Job, Path], dict[str, Any]], search_seeds: list[int] | None,
         budget_epochs: int | None, echo: Callable[[str], None]) -> dict[str, Any]:
    """Search, choose, run the choice and the fixed settings (see the module docstring); returns tune.json's content.

    `run(job, output_dir)` runs one job for one seed (the caller's `run_job`, with its device, signals and force) and
    returns its result; a failed run raises PtuningError, which stops the tuning (the runs done are kept). Each job runs
    its own seeds (`job.seed_list`); the search uses `search_seeds`, else the first of the job's seeds."""
    output_dir = Path(output_dir)
    summary: dict[str, Any] = {"budget_epochs": budget_epochs, "jobs": {}}
    path = output_dir / TUNE_FILE
    if path.is_file():  # keep what an earlier tune of other jobs recorded
        try:
            summary["jobs"] = json.loads(path.read_text())["jobs"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    for job in jobs:
        heldout = job.override(protocol="heldout")
        points, seeds = heldout.points(), job.seed_list
        search = search_seeds or seeds[:1]
        grid: dict[str, list[float]] = {}
        for point in points:
            searched = point.override(epochs=budget_epochs) if budget_epochs else point
            grid[point.variant] = [validation_accuracy(run(searched.for_seed(s), output_dir / SEARCH_DIR)) for s in search]
        chosen = choose(grid)
        echo(f"[{job.name}] chose {chosen} (validation accuracy {math.fsum(grid[chosen]) / len(grid[chosen]):.2f}% over "
             f"{len(search)} search seed(s), best of {len(grid)} points)")
        final = next(p for p in points if p.variant == chosen)
        for seed in seeds:
            run(final.for_seed(seed), output_dir)
        fixed = dataclasses.replace(heldout, sweep={})
        for seed in seeds:
            run(fixed.for_seed(seed), output_dir)
        summary["jobs"][job.name] = {
            "grid": {point: {"validation_accuracy": values, "mean": math.fsum(values) / len(values)} for point, values in grid.items()},
            "chosen": chosen,
            "chosen_job": final.name,
            "keys": list(heldout.sweep),
            "search_seeds": search,
            "seeds": seeds,
        }
        atomic_save(path, lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary


def tune_rows(jobs: list[Job], summary: dict[str, Any], results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per tuned job: the chosen point, its search accuracy, the tuned and fixed rows' test accuracies (heldout) with
    95% intervals, and the comparison of each tuned row with tuned full fine-tuning (paired by seed, Holm-adjusted)."""
    out = []
    for job in jobs:
        entry = summary["jobs"].get(job.name)
        if entry is None:
            continue
        tuned = _heldout(results.get(entry["chosen_job"]))
        fixed = _heldout(results.get(job.name))
        out.append({"job": job, "entry": entry, "tuned": tuned, "fixed": fixed})
    reference = next((r for r in out if r["job"].name == stats.REFERENCE_JOB), None)
    comparisons = stats.compare_runs({r["job"].name: r["tuned"] for r in out},
                                     reference["tuned"] if reference else [], stats.REFERENCE_JOB)
    for r in out:
        r["comparison"] = comparisons.get(r["job"].name)
    return out


def _heldout(runs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return sorted((r for r in runs or [] if r.get("status") == "completed" and stats.protocol_of(r) == "heldout"), key=stats.seed_of)
