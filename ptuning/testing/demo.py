"""`ptuning demo`: zero-shot and the ten rows on a synthetic task that every method can learn, offline, on CPU.

The backbone and the task are `ptuning.testing.synthetic`'s: a small T5 that ptuning pre-trains itself on
made-up reviews with task prefixes, and the same reviews *without* a prefix as the target task. Each row runs
through the same code as a real run (`run_job`), with the settings below on top of its job file; its results,
tables and plots go to their own folder (default `results/demo/`), all marked as the synthetic task.

`check_learning` is the demo's verdict, and the test suite's: zero-shot stays low and every trained row ends
(after its last epoch) far above it. A method whose trainable parameters do not reach the loss stays at the
zero-shot accuracy and fails it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ptuning.testing.synthetic import LABEL_WORDS, Recipe, one_thread

CAPTION = "SYNTHETIC DEMO TASK — not IMDb, not t5-small"
BANNER = (
    "=" * 78
    + f"\n{CAPTION}: a small T5 pre-trained by ptuning on made-up reviews,\n"
    "fine-tuned to answer their sentiment without the task prefix it was pre-trained with.\n"
    "The numbers show that every method learns; they say nothing about IMDb or t5-small.\n"
    + "=" * 78
)


@dataclass(frozen=True)
class Profile:
    """One size of the demo: the backbone recipe, the settings of every row, and per-row changes on top."""

    name: str
    recipe: Recipe
    settings: dict[str, Any]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the learning check: zero-shot at most this, every trained row at least `row_min` after its last epoch
    zero_shot_max: float = 40.0
    row_min: float = 85.0


#: settings of every demo row whatever the profile: the CPU loop of the exercise, the backbone's label words
COMMON = {"max_length": 64, "eval_batch_size": 100, "speed": "faithful", "precision": "fp32", "protocol": "faithful",
          "train_limit": None, "eval_limit": None, "labels": list(LABEL_WORDS)}

#: The two sizes and, in `rows`, every per-row override (the only place the demo departs from a job file's
#: method, knobs and learning rate). The job files' learning rates are tuned for 7,820 steps on t5-small:
#: the demo's 500 steps are enough for each of them on this task; the quick profile's 100 steps are not for
#: the rows whose learning rate is 1e-4 or lower (AdamW moves a weight by about lr per step), so it raises those
#: ten-fold. docs/demo.md explains the choices and the measured accuracies.
PROFILES = {
    "demo": Profile(
        "demo",
        Recipe("demo"),
        {"epochs": 4, "batch_size": 16},
    ),
    "quick": Profile(
        "quick",
        Recipe("quick", steps=400, pool=12000, n_train=800, n_test=300),
        {"epochs": 2, "batch_size": 16},
        rows={
            "full_ft": {"lr": 1e-4},
            "adapter_8_adapterhub": {"lr": 1e-3},
            "adapter_1_adapterhub": {"lr": 1e-3},
            "lora_8": {"lr": 1e-3},
            "lora_8_peft": {"lr": 1e-3},
            "lora_1_peft": {"lr": 1e-3},
        },
    ),
}


def demo_job(job, profile: Profile, model_dir, data_dir, seed: int):
    """The job as the demo runs it: on the synthetic backbone and task, the profile's settings, one seed, and no
    reference figure (the report's IMDb accuracies do not apply to the synthetic task)."""
    values = {**COMMON, **profile.settings, **profile.rows.get(job.name, {}), "model": str(model_dir), "dataset": str(data_dir)}
    job = job.override(values, where="demo").for_seed(seed)
    return dataclasses.replace(job, reference_accuracy=None, reference_total_params=None)


def settings_lines(profile: Profile, jobs) -> list[str]:
    """What the demo changes, as printed before the runs: the shared settings, then each per-row override."""
    shared = {**COMMON, **profile.settings}
    recipe = profile.recipe
    lines = [
        f"demo profile '{profile.name}': {recipe.n_train:,} training and {recipe.n_test:,} test reviews; every row: "
        + ", ".join(f"{k} {v}" for k, v in shared.items() if k not in ("labels", "train_limit", "eval_limit")),
    ]
    names = {j.name for j in jobs}
    changed = [(name, values) for name, values in profile.rows.items() if name in names]
    for name, values in changed:
        job = next(j for j in jobs if j.name == name)
        lines.append(f"  override {name}: " + ", ".join(f"{k} {v:g} (job file: {getattr(job.settings, k):g})" if isinstance(v, float)
                                                        else f"{k} {v} (job file: {getattr(job.settings, k)})" for k, v in values.items()))
    if not changed:
        lines.append("  no per-row overrides: every row trains with its job file's learning rate")
    return lines


def _trains(job) -> bool:
    from ptuning.methods import method_class

    return getattr(method_class(job.method, job.implementation), "trains", True)


def _result(results: dict[str, list[dict]], name: str, seed: int) -> dict | None:
    for result in results.get(name, []):
        config = result.get("config", {})
        if config.get("seed") == seed and config.get("protocol", "faithful") == "faithful":
            return result
    return None


def check_learning(jobs, results: dict[str, list[dict]], profile: Profile, seed: int) -> tuple[bool, list[str]]:
    """(passed, one line per row): zero-shot at most `zero_shot_max`, each trained row's accuracy after its last
    epoch at least `row_min`. A row without a completed result fails."""
    ok, lines = True, []
    for job in jobs:
        result = _result(results, job.name, seed)
        trains = _trains(job)
        if result is None or result.get("status") != "completed":
            ok = False
            lines.append(f"learning check: {job.name}: no completed result: FAILED")
            continue
        accuracy = result["final_accuracy"]
        if trains:
            good = accuracy >= profile.row_min
            verdict = "learned" if good else "DID NOT LEARN"
            lines.append(f"learning check: {job.name}: {accuracy:.1f}% after the last epoch (needs at least {profile.row_min:g}%): {verdict}")
        else:
            good = accuracy <= profile.zero_shot_max
            verdict = "ok" if good else "TOO HIGH: the task is not new to the backbone"
            lines.append(f"learning check: {job.name}: {accuracy:.1f}% untrained (needs at most {profile.zero_shot_max:g}%): {verdict}")
        ok = ok and good
    return ok, lines


def prepare(profile: Profile, workdir: Path | None = None, echo: Callable[[str], None] = print):
    """The profile's backbone and task (`synthetic.Assets`), built on first use; a failure to write is one line."""
    from ptuning.data import cache_root
    from ptuning.errors import PtuningError
    from ptuning.testing.synthetic import build, describe

    where = Path(workdir) if workdir else cache_root()
    try:
        assets = build(profile.recipe, where, echo)
    except OSError as exc:
        raise PtuningError(f"cannot build the synthetic backbone in {where}: {exc.strerror or exc}; "
                           "pass --workdir with a writable directory") from None
    if not assets.built:
        echo(f"synthetic backbone '{profile.recipe.name}' from {assets.directory} (built in {assets.info['build_seconds']:.0f} s): "
             f"{describe(assets.info)}")
    return assets


@dataclass
class Outcome:
    failures: list[str]  # jobs that stopped with an error
    passed: bool  # the learning check
    lines: list[str]  # its lines
    seconds: float


def run(jobs, profile: Profile, output_dir: Path, report: Callable[[list, Path], None], workdir: Path | None = None,
        seed: int = 0, echo: Callable[[str], None] = print, error: Callable[[str], None] = print) -> Outcome:
    """Build (or reuse) the backbone, run `jobs` on it, write the plots, print the tables and the learning check.

    `report(runs, output_dir)` prints the tables (the command line's: the compact table, TABLES.md beside the
    results)."""
    from ptuning.errors import PtuningError
    from ptuning.report import kind
    from ptuning.report.plots import write_plots
    from ptuning.report.results import load_results
    from ptuning.run.runner import run_job

    started = time.perf_counter()
    output_dir = Path(output_dir)
    with one_thread():  # each run locks its own run directory (run_job)
        echo(BANNER)
        assets = prepare(profile, workdir, echo)
        for line in settings_lines(profile, jobs):
            echo(line)
        runs = [demo_job(job, profile, assets.model_dir, assets.data_dir, seed) for job in jobs]
        failures = []
        for job in runs:
            try:
                run_job(job, output_dir, "cpu", echo=echo, force=True)
            except PtuningError as exc:
                error(f"ptuning: error: [{job.name}] {exc}")
                failures.append(job.name)
        results = load_results(output_dir, [])
        kind.mark(output_dir, kind.DEMO)  # `ptuning tables` and `ptuning plots` of this folder say so too
        write_plots(runs, results, output_dir, kind.DEMO)
        echo(BANNER)
        report(runs, output_dir)
        echo(BANNER)
        passed, lines = check_learning(runs, results, profile, seed)
    for line in lines:
        echo(line)
    return Outcome(failures, passed, lines, time.perf_counter() - started)
