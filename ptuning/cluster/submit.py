"""`ptuning submit`: the jobs × seeds as one SLURM job array (submitit), or the same plan on this machine.

The plan: every job of the command line (each point of a job's grid, `sweep:`), once per seed, less the runs
already completed with the same configuration. Each run is one task running one `ptuning run` command line (ptuning/cluster/task.py), which writes
into `<output-dir>/<job>/seed<N>/` as a local run would; a task that is requeued (preemption, `scontrol requeue`,
the time limit) resumes from the run's checkpoint. submitit writes the task scripts and logs into
`<output-dir>/logs/slurm/` (or `logs/local/`): one log per task, `<array>_<task>_0_log.out`.

`--wait` follows the tasks' states (sacct, through submitit's watcher) until each has ended, says which failed and
why (one line each, with the log), and prints the tables. `--executor local` always waits: it starts each run
here as a submitit local job, at most `--max-parallel` at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from ptuning.errors import PtuningError, one_line

#: how many times a run is requeued at its time limit before it is reported as failed (preemptions do not count)
MAX_TIME_LIMIT_REQUEUES = 10
#: the time limit of local runs (submitit's LocalExecutor kills a job at its limit): a year
LOCAL_TIMEOUT_MIN = 60 * 24 * 365


@dataclasses.dataclass(frozen=True)
class ClusterOptions:
    executor: str = "slurm"
    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem: str | None = None
    time: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    max_parallel: int | None = None
    signal_before: int = 120
    container: str | None = None
    wait: bool = False
    poll_seconds: float = 10.0


@dataclasses.dataclass(frozen=True)
class Run:
    job: Any  # ptuning.settings.Job, for one seed
    label: str
    rdir: Path
    command: list[str]


# ---------------------------------------------------------------------------------------------
# the plan


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise PtuningError("ptuning submit needs submitit, which is not installed: pip install 'ptuning[slurm]' "
                           "(or pip install submitit)") from None
    return submitit


def check_device_name(name: str) -> None:
    """The --device words `ptuning run` accepts; on SLURM they are judged on the node, which has the GPUs."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", (name or "auto").lower()):
        raise PtuningError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")


def completed(job, output_dir: Path) -> bool:
    """Whether `job` (one seed) has a completed result.json with the configuration it would run with now: the
    check `ptuning run` makes before skipping a run."""
    from ptuning.methods import method_class
    from ptuning.report import results as results_mod
    from ptuning.run import checkpoint

    config = job.config()
    if not getattr(method_class(job.method, job.implementation), "trains", True):
        config["epochs"] = 0  # the runner's rule: a method that does not train runs no epochs
    path = results_mod.run_dir(output_dir, job.name, job.settings.seed, job.settings.protocol) / results_mod.RESULT_FILE
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(result, dict) and result.get("status") == "completed" and result.get("config") == checkpoint.canonical(config)


def container_prefix(image: str, binds: list[Path]) -> list[str]:
    """`apptainer exec --nv --bind ... IMAGE` (singularity where apptainer is not installed). The image's
    HF_HOME is /hf-cache: the host's Hugging Face cache is bound there."""
    runtime = "apptainer" if shutil.which("apptainer") or not shutil.which("singularity") else "singularity"
    hf_cache = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    mounts = list(dict.fromkeys(str(p) for p in binds)) + [f"{hf_cache}:/hf-cache"]
    return [runtime, "exec", "--nv", "--bind", ",".join(mounts), str(Path(image).resolve())]


def plan(jobs, refs: dict[str, str], kwargs: dict, jobs_dir: Path, container: str | None) -> tuple[list[Run], list[Run]]:
    """(runs to start, runs already completed) for these jobs with this command line's settings."""
    from ptuning.cli import child_options, force_id, overrides
    from ptuning.report import results as results_mod
    from ptuning.settings import confirm_runs, expand

    values = overrides(kwargs)
    jobs = [job.override(values) for job in jobs]  # every override is checked before anything is submitted
    confirm_runs(jobs, kwargs.get("yes", False))
    for job in jobs:
        if job.sweep and job.name in refs:  # a point is named `<job>/<point>`, which finds the job in the jobs folder
            raise PtuningError(f"{refs[job.name]}: the grid of a job file given by its path cannot be submitted; "
                               "put the file in the jobs folder (--jobs-dir) and name the job")
    jobs = expand(jobs)  # a job with a grid runs its points, each a run of its own
    output_dir = Path(kwargs["output_dir"]).resolve()
    # the seed list is expanded here: each task gets its one seed, whatever gave the list (--seed, --seeds, --set)
    assignments = tuple(a for a in kwargs.get("assignments") or () if a.partition("=")[0].strip() not in ("seed", "seeds"))
    if container:
        binds = [output_dir, jobs_dir.resolve()]
        binds += [Path(values[k]).resolve() for k in ("model", "dataset") if isinstance(values.get(k), str) and Path(values[k]).exists()]
        head = [*container_prefix(container, binds), "ptuning"]
    else:
        head = [sys.executable, "-m", "ptuning.cli"]
    force_id(kwargs)  # one --force-id for every task of the submission (a requeued task keeps what its run wrote)
    todo, done = [], []
    for job in jobs:
        for seed in job.seed_list:
            one = job.for_seed(seed)
            words = child_options({**kwargs, "seed": None, "seeds": str(seed), "assignments": assignments})
            command = [*head, "--jobs-dir", str(jobs_dir.resolve()), "run", *words, "--", refs.get(job.name, job.name)]
            rdir = results_mod.run_dir(output_dir, one.name, seed, one.settings.protocol)
            run = Run(one, f"{one.name} seed {seed}", rdir, command)
            (done if not kwargs.get("force") and completed(one, output_dir) else todo).append(run)
    return todo, done


# ---------------------------------------------------------------------------------------------
# submitting


def submit(jobs, refs: dict[str, str], kwargs: dict, jobs_dir: Path, options: ClusterOptions,
           echo: Callable[[str], None], tables: Callable[[], None]) -> int:
    """Plan, submit, and (with --wait, or locally) follow the runs; returns the exit status."""
    if options.executor == "local":
        from ptuning.run.runner import resolve_device

        resolve_device(kwargs["device"])
    else:
        check_device_name(kwargs["device"])
    from ptuning.run.metrics import check_trackers

    check_trackers(kwargs.get("trackers") or ())
    if options.container and not Path(options.container).is_file():
        raise PtuningError(f"--container {options.container}: no such image file; build one from the Docker image "
                           "(docs/cluster.md) and pass its path")
    submitit = require_submitit()
    slurm_checks = _slurm_checks(options, Path(kwargs["output_dir"])) if options.executor == "slurm" else None
    todo, done = plan(jobs, refs, kwargs, jobs_dir, options.container)
    output_dir = Path(kwargs["output_dir"]).resolve()
    skipped = f"; {len(done)} already completed, not submitted again" if done else ""
    if not todo:
        echo(f"ptuning: all {len(done)} runs are already completed in {output_dir}; nothing to submit (--force runs them again)")
        tables()
        return 0
    from ptuning.run.runner import check_writable

    existed, before = output_dir.exists(), _files(output_dir)
    check_writable(output_dir)
    folder = output_dir / "logs" / options.executor
    tasks = [_task(run) for run in todo]
    if options.executor == "slurm":
        assert slurm_checks is not None
        try:
            jobs_out = _submit_slurm(submitit, folder, tasks, options, slurm_checks, echo, skipped)
        except PtuningError:  # nothing was submitted: leave nothing behind either
            _remove_new(output_dir, before)
            if not existed:
                output_dir.rmdir()
            raise
        _write_runs(folder, jobs_out, todo)
        if not options.wait:
            return 0
        failed = _watch(jobs_out, todo, options.poll_seconds, echo)
    else:
        failed = _run_local(submitit, folder, tasks, todo, options, echo, skipped)
    return _finish(todo, failed, echo, tables)


def _task(run: Run):
    from ptuning.cluster.task import RunTask

    return RunTask(run.command, run.label)


def _slurm_checks(options: ClusterOptions, output_dir: Path) -> dict:
    """Ask the cluster, before planning anything: the commands, the partition, its time limit, accounting."""
    from ptuning.cluster import slurm

    slurm.require_commands()
    partition = slurm.check_partition(options.partition)
    minutes = slurm.parse_time(options.time) if options.time else slurm.time_limit_minutes(partition)
    if options.wait:
        kind = slurm.accounting()
        if kind.endswith("/none"):
            raise PtuningError(slurm.NO_ACCOUNTING.format(kind=kind, results=output_dir))
    return {"partition": partition, "minutes": minutes}


def _submit_slurm(submitit, folder: Path, tasks: list, options: ClusterOptions, checks: dict,
                  echo: Callable[[str], None], skipped: str) -> list:
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_TIME_LIMIT_REQUEUES)
    extra: dict[str, Any] = {"requeue": True}  # a preempted or requeued task comes back and resumes
    if options.mem:
        extra["mem"] = options.mem  # as given (16G, 4000M): submitit would read a bare number as GB
    parameters = {
        "job_name": "ptuning",
        "partition": checks["partition"],
        "time": checks["minutes"],  # None: the partition has no limit (submitit's default would be 5 minutes)
        "gpus_per_node": options.gpus_per_job or None,
        "cpus_per_task": options.cpus_per_job,
        "account": options.account,
        "qos": options.qos,
        "constraint": options.constraint,
        "array_parallelism": options.max_parallel or len(tasks),
        "signal_delay_s": options.signal_before,
        "stderr_to_stdout": True,
        "wckey": None,  # submitit's default ("submitit") is refused where SLURM checks workload keys
        "additional_parameters": extra,
    }
    executor.update_parameters(**parameters)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit repeats sbatch's complaint there
            with executor.batch():
                jobs = [executor.submit(task) for task in tasks]
    except submitit.core.utils.FailedJobError as exc:
        lines = [line.removeprefix("sbatch: error: ") for line in str(exc).strip().splitlines() if line.strip()]
        raise PtuningError(f"sbatch refused the array: {lines[-1] if lines else one_line(exc)}; nothing was submitted") from None
    array = jobs[0].job_id.split("_")[0]
    what = f"as SLURM job array {array} ({len(jobs)} tasks" if len(jobs) > 1 else f"as SLURM job {array} (1 task"
    throttle = f", at most {options.max_parallel} at once" if options.max_parallel and options.max_parallel < len(jobs) else ""
    echo(f"ptuning: submitted {_runs(len(jobs))} {what} on partition {checks['partition']}{throttle}){skipped}")
    log = str(jobs[0].paths.stdout).replace(jobs[0].job_id, f"{array}_TASK" if len(jobs) > 1 else array)
    echo(f"ptuning: logs: {log}; which task runs what: {folder / f'{array}_runs.tsv'}")
    echo(f"ptuning: follow it with: squeue -j {array}  ·  sacct -j {array} -X  ·  tail -f {jobs[0].paths.stdout}  ·  "
         f"ptuning tables --results {folder.parent.parent}")
    return jobs


def _files(directory: Path) -> set[Path]:
    return set(directory.rglob("*")) if directory.exists() else set()


def _remove_new(directory: Path, before: set[Path]) -> None:
    """Remove what a refused submission left (submitit's pickles and script; the folders it made)."""
    for path in sorted(_files(directory) - before, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _write_runs(folder: Path, jobs: list, runs: list[Run]) -> None:
    """<array>_runs.tsv: task id, run, run directory, log (what `squeue` cannot say)."""
    from ptuning.atomic import atomic_save

    array = jobs[0].job_id.split("_")[0]
    lines = ["task\trun\trun_dir\tlog"] + [f"{j.job_id}\t{r.label}\t{r.rdir}\t{j.paths.stdout}" for j, r in zip(jobs, runs)]
    atomic_save(folder / f"{array}_runs.tsv", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


# ---------------------------------------------------------------------------------------------
# following


def _progress(counts: dict[str, int], total: int) -> str:
    return (f"ptuning: {counts['done']} of {total} runs done, {counts['running']} running, "
            f"{counts['waiting']} waiting, {counts['failed']} failed")


def _slurm_outcome(state: str) -> str:
    from ptuning.cluster import slurm

    name = slurm.state_name(state)
    if name == "COMPLETED":
        return "done"
    if name in slurm.RUNNING:
        return "running"
    if name in slurm.ENDED:
        return "failed"
    return "waiting"  # PENDING, REQUEUED, PREEMPTED (requeued next), UNKNOWN (not in sacct yet), ...


def _watch(jobs: list, runs: list[Run], poll_seconds: float, echo: Callable[[str], None]) -> dict[str, tuple]:
    """Poll the array's states until every task has ended; returns {label: (state, log)} of the failed ones."""
    watcher = type(jobs[0]).watcher
    last = None
    try:
        while True:
            watcher.update()  # one sacct call for the whole array
            states = {run.label: watcher.get_state(job.job_id, mode="cache") for job, run in zip(jobs, runs)}
            outcome = {label: _slurm_outcome(state) for label, state in states.items()}
            counts = {k: sum(1 for v in outcome.values() if v == k) for k in ("done", "running", "waiting", "failed")}
            if counts != last:
                echo(_progress(counts, len(runs)))
                last = counts
            if counts["done"] + counts["failed"] == len(runs):
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        array = jobs[0].job_id.split("_")[0]
        raise PtuningError(f"stopped waiting; the runs go on on the cluster (squeue -j {array}; scancel {array} stops them)") from None
    from ptuning.cluster.slurm import state_name

    return {run.label: (state_name(states[run.label]), job.paths.stdout)
            for job, run in zip(jobs, runs) if outcome[run.label] == "failed"}


def _local_parallel(options: ClusterOptions) -> tuple[int, list[int]]:
    """(runs at once, the GPU ids to share out) for --executor local."""
    import torch

    gpus = list(range(torch.cuda.device_count())) if options.gpus_per_job else []
    if gpus and options.gpus_per_job > len(gpus):
        raise PtuningError(f"--gpus-per-job {options.gpus_per_job}: this machine has {len(gpus)} GPU(s)")
    fit = len(gpus) // options.gpus_per_job if gpus else 1
    return max(1, options.max_parallel or fit), gpus


def _run_local(submitit, folder: Path, tasks: list, runs: list[Run], options: ClusterOptions,
               echo: Callable[[str], None], skipped: str) -> dict[str, tuple]:
    """Each run as a submitit local job, at most `max_parallel` at once, each with its own GPUs when there are."""
    parallel, gpus = _local_parallel(options)
    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=MAX_TIME_LIMIT_REQUEUES)
    threads = options.cpus_per_job or max(1, (os.cpu_count() or 1) // parallel)
    echo(f"ptuning: running {len(runs)} runs here, {parallel} at a time{skipped}; logs in {folder}")
    queue = list(zip(tasks, runs))
    running: list[tuple[Any, Run, list[int]]] = []
    free = list(gpus)
    failed: dict[str, tuple] = {}
    counts = {"done": 0, "running": 0, "waiting": len(queue), "failed": 0}
    last = None
    try:
        while queue or running:
            while queue and len(running) < parallel and (not gpus or len(free) >= options.gpus_per_job):
                task, run = queue.pop(0)
                mine, free = (free[:options.gpus_per_job], free[options.gpus_per_job:]) if gpus else ([], free)
                task.env.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", str(threads)))
                executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, stderr_to_stdout=True,
                                           gpus_per_node=len(mine), visible_gpus=tuple(mine))
                running.append((executor.submit(task), run, mine))
            for entry in list(running):
                job, run, mine = entry
                if not job.done():
                    continue
                running.remove(entry)
                free += mine
                error = _local_error(job)
                if error is None:
                    counts["done"] += 1
                else:
                    counts["failed"] += 1
                    failed[run.label] = (error, job.paths.stdout)
            counts.update(running=len(running), waiting=len(queue))
            if counts != last:
                echo(_progress(counts, len(runs)))
                last = dict(counts)
            time.sleep(0.5)
    except KeyboardInterrupt:
        for job, _, _ in running:  # each run writes its checkpoint; the same command resumes them
            job.cancel(check=False)
        deadline = time.monotonic() + 60
        while any(not job.done() for job, _, _ in running) and time.monotonic() < deadline:
            time.sleep(0.2)
        raise
    return failed


def _local_error(job) -> str | None:
    try:
        exc = job.exception()
    except Exception as error:  # no result written: the task's process died
        return f"DIED ({one_line(error)})"
    return None if exc is None else "FAILED"


def _last_error_line(log: Path) -> str | None:
    """Why a task failed, from its log: the run's own last error line, else the task's line about the run."""
    from ptuning.cluster.task import FAILED_PREFIX

    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return None
    for prefix in ("ptuning: error: ", FAILED_PREFIX):
        said = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
        if said:
            return said[-1]
    return None


def _finish(runs: list[Run], failed: dict[str, tuple], echo: Callable[[str], None], tables: Callable[[], None]) -> int:
    from ptuning.cluster.slurm import ENDED

    for run in runs:
        if run.label in failed:
            state, log = failed[run.label]
            said = _last_error_line(log)
            what = ENDED.get(state, state.lower())
            detail = f": {said.removeprefix(f'[{run.label}] ')}" if said else ""
            click.echo(f"ptuning: error: [{run.label}] the task {what}{detail}; log: {log}", err=True)
    tables()
    if failed:
        click.echo(f"ptuning: {len(failed)} of {len(runs)} runs failed: {', '.join(failed)}", err=True)
        return 1
    return 0
