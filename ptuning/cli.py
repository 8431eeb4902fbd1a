"""The `ptuning` command line (click). Each command is a thin layer over one module."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import click

from ptuning.errors import PtuningError
from ptuning.report.check import DEFAULT_TOLERANCE


class Cli(click.Group):
    """Turns a PtuningError into one line on stderr and exit status 1 (never a traceback)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["ptuning.argv"] = list(args)  # for the resume command printed on interruption
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        from ptuning.run.interrupt import Interrupted

        try:
            return super().invoke(ctx)
        except PtuningError as exc:
            click.echo(f"ptuning: error: {exc}", err=True)
            sys.exit(1)
        except Interrupted as exc:
            click.echo(f"ptuning: interrupted by {exc.signal_name}: {exc.detail}; to resume, run: {resume_command(ctx)}", err=True)
            sys.exit(exc.exit_status)
        except KeyboardInterrupt:
            click.echo("ptuning: interrupted", err=True)
            sys.exit(130)


def resume_command(ctx: click.Context) -> str:
    """The command line that continues this run: the same one, with the id of a --force run (`--force-id`), so that
    the resumed run keeps what this one finished and resumes what it checkpointed, and still starts the rest afresh."""
    import shlex

    args, words = [], iter(ctx.meta.get("ptuning.argv", []))
    for word in words:
        if word == "--force-id":
            next(words, None)
        elif not word.startswith("--force-id="):
            args.append(word)
    force_id = ctx.meta.get("ptuning.force_id")
    if force_id:
        args += ["--force-id", force_id]
    return " ".join([ctx.info_name or "ptuning", *map(shlex.quote, args)])


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--jobs-dir", type=click.Path(file_okay=False), envvar="PTUNING_JOBS_DIR", help="Directory of job YAML files (default: ./jobs).")
@click.version_option(package_name="ptuning")
@click.pass_context
def main(ctx: click.Context, jobs_dir: str | None) -> None:
    """Fine-tune T5-small on IMDb ten ways and compare accuracy and parameter counts."""
    from ptuning import quiet

    quiet.install()
    ctx.obj = {"jobs_dir": jobs_dir}


def _jobs_dir(ctx: click.Context) -> Path:
    from ptuning.settings import jobs_dir

    return jobs_dir(ctx.obj.get("jobs_dir"))


#: settings with an option of their own on `run` and `run-all`; every setting (and method knob) is also `--set KEY=VALUE`
SHORTCUTS = ("model", "dataset", "epochs", "train_limit", "eval_limit", "seed", "protocol", "heldout_size", "speed", "precision",
             "compile", "cuda_graphs")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def run_options(f):
    """Options shared by `run` and `run-all` (they override the job files): the shortcuts and `--set`, drawn from the
    settings schema (ptuning/settings.py), and what is not a setting (device, output folder, --force)."""
    from ptuning.settings import SETTINGS, SWEEP_CONFIRM

    options = []
    for key in SHORTCUTS:
        spec = SETTINGS[key]
        if spec.type is bool:
            options.append(click.option(f"{_flag(key)}/--no-{key.replace('_', '-')}", key, default=None, help=f"{spec.help[0].upper()}{spec.help[1:]}."))
        else:
            metavar = "|".join(spec.choices) if spec.choices else {int: "N", float: "X"}.get(spec.type, "TEXT")
            options.append(click.option(_flag(key), key, metavar=metavar, help=f"{spec.help[0].upper()}{spec.help[1:]}."))
    options += [
        click.option("--seeds", metavar="N,M,...", help="Several seeds, e.g. 0,1,2: one run each; tables show mean ± std."),
        click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                     help="Any setting (`ptuning settings` lists them) or method knob (method.rank=4); repeatable."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--output-dir", type=click.Path(file_okay=False), default="results", show_default=True, help="Where results are written."),
        click.option("--force", is_flag=True, help="Rerun from scratch: ignore finished results and checkpoints of these jobs."),
        click.option("--force-id", metavar="ID", help="With --force: continue the interrupted --force run with this id (its "
                     "resume command gives it): keep what it finished, resume what it checkpointed."),
        click.option("--yes", is_flag=True, help=f"Run grids (`sweep:` in a job file) even when they start more than {SWEEP_CONFIRM} runs."),
        click.option("--tracker", "trackers", multiple=True, metavar="NAME",
                     help="Also send each run's metrics to a tracker: tensorboard (event files in the run's folder). "
                          "metrics.jsonl is always written."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` → [0, 1, 2], checked as a whole (range, repeats) before anything runs."""
    from ptuning.settings import check_setting

    parts = [part.strip() for part in text.split(",")]
    if not all(part.lstrip("-").isdigit() for part in parts):
        raise PtuningError(f"--seeds: expected comma-separated integers such as 0,1,2, got {text!r}")
    return check_setting("--seeds", "seeds", [int(part) for part in parts])


def overrides(kwargs: dict) -> dict:
    """The settings this command line gives: the shortcut options, --seeds, then each --set; a key given twice is
    an error. `--seed N` replaces a job file's seed list."""
    from ptuning.settings import parse_assignment, parse_value

    out: dict = {}
    source: dict[str, str] = {}

    def put(key: str, value, where: str) -> None:
        if key in out:
            raise PtuningError(f"{where}: {key!r} is given twice ({source[key]} and {where}); give it once")
        out[key], source[key] = value, where

    for key in SHORTCUTS:
        value = kwargs.get(key)
        if value is not None:
            put(key, value if isinstance(value, bool) else parse_value(key, value, _flag(key)), _flag(key))
    if kwargs.get("seeds") is not None:
        put("seeds", parse_seeds(kwargs["seeds"]), "--seeds")
    for text in kwargs.get("assignments") or ():
        key, value = parse_assignment(text)
        put(key, value, f"--set {key}")
    if "seed" in out:
        if "seeds" in out:
            raise PtuningError("give either --seed N or --seeds N,M,..., not both")
        out["seeds"] = [out["seed"]]
    return out


def override_args(values: dict) -> list[str]:
    """`overrides` written back as command-line words (`--set seeds=[0, 1]` ...): what a child `ptuning run` gets."""
    from ptuning.settings import format_value

    return [word for key, value in values.items() for word in ("--set", f"{key}={format_value(value)}")]


def _parse_rows(ctx, param, value: str) -> list[str]:
    rows = [r.strip() for r in value.split(",") if r.strip()]
    if not rows:
        raise click.BadParameter(f"expected at least one job name such as full_ft,lora_8, got {value!r}")
    repeated = sorted({r for r in rows if rows.count(r) > 1})
    if repeated:  # timed twice, reported once
        raise click.BadParameter(f"{', '.join(repeated)} named more than once in {value!r}")
    return rows


def force_id(kwargs: dict) -> str | None:
    """The id of this --force run (None without --force): `--force-id`'s, or a new one. Results and checkpoints record
    it; the resume command printed on interruption passes it on (`resume_command`)."""
    import secrets

    if not kwargs.get("force"):
        if kwargs.get("force_id"):
            raise PtuningError("--force-id goes with --force (it continues an interrupted --force run)")
        return None
    if not kwargs.get("force_id"):
        kwargs["force_id"] = secrets.token_hex(4)
    elif not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", kwargs["force_id"]):
        raise PtuningError(f"--force-id: expected the id an interrupted --force run printed (letters, digits), got {kwargs['force_id']!r}")
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().meta["ptuning.force_id"] = kwargs["force_id"]
    return kwargs["force_id"]


def check_jobs(jobs, device) -> None:
    """Refuse, before anything runs, what a job asks for and this device cannot give."""
    for job in jobs:
        if job.settings.compile and device.type != "cuda":
            raise PtuningError(f"{job.name}: compile: true (--compile) needs a CUDA device, and this run is on {device}; "
                               "drop --compile (or pass --no-compile), or run on a GPU")


def _prepare_runs(jobs, kwargs) -> list:
    """What is checked before the first run of `run` or `run-all` (serial or --concurrency) starts, each a one-line
    refusal: the device, the trackers, the command's overrides on every job, the size of the grids, a long run on a
    CPU nobody asked for, and what a job needs of the device. Returns the jobs to run, overridden, each grid expanded
    into its points."""
    from ptuning.run.cpu import refuse_slow_cpu_run
    from ptuning.run.metrics import check_trackers
    from ptuning.run.runner import resolve_device, splits_for
    from ptuning.settings import confirm_runs, expand

    device = resolve_device(kwargs["device"])  # a bad --device fails before anything runs
    check_trackers(kwargs.get("trackers") or ())
    values = overrides(kwargs)
    jobs = [job.override(values) for job in jobs]  # validate every override first
    confirm_runs(jobs, kwargs.get("yes", False))
    jobs = expand(jobs)  # a job with a grid runs its points
    refuse_slow_cpu_run(jobs, kwargs["device"], splits_for)  # --device auto without a GPU: no run of many hours
    check_jobs(jobs, device)
    return jobs


def _run_jobs(jobs, kwargs, echo=click.echo) -> list[tuple[str, str]]:
    """Run jobs one after another, each once per seed; a run that fails is reported and the next one runs. Returns failures.

    Each run locks its own run directory; SIGINT/SIGTERM stop after the current training step (ptuning/run/interrupt.py).
    """
    from ptuning.run.interrupt import StopRequest
    from ptuning.run.runner import run_job
    from ptuning.run.summary import run_labels

    jobs = _prepare_runs(jobs, kwargs)
    forced = force_id(kwargs)
    failures = []
    with StopRequest() as stop:
        for job in jobs:
            for label, seed in run_labels(job):
                stop.check(f"stopped before {label}")
                try:
                    run_job(job.for_seed(seed), Path(kwargs["output_dir"]), kwargs["device"], echo=echo,
                            force=forced or False, stop=stop, trackers=tuple(kwargs.get("trackers") or ()))
                except PtuningError as exc:
                    click.echo(f"ptuning: error: [{label}] {exc}", err=True)
                    failures.append((label, str(exc)))
    return failures


def child_options(kwargs: dict) -> list[str]:
    """This command line's run options for a child `ptuning run`: the settings as `--set` (local model and dataset
    paths made absolute), the device, the output folder (absolute) and --force with this run's --force-id."""
    values = overrides(kwargs)
    for key in ("model", "dataset"):
        if isinstance(values.get(key), str) and Path(values[key]).exists():
            values[key] = str(Path(values[key]).resolve())
    words = override_args(values) + ["--device", kwargs["device"], "--output-dir", str(Path(kwargs["output_dir"]).resolve())]
    words += [word for name in kwargs.get("trackers") or () for word in ("--tracker", name)]
    forced = force_id(kwargs)
    return words + (["--force", "--force-id", forced] if forced else []) + (["--yes"] if kwargs.get("yes") else [])


def _run_concurrently(ctx: click.Context, jobs, kwargs, concurrency: int) -> list[tuple[str, int]]:
    from ptuning.run.parallel import run_concurrently
    from ptuning.run.runner import check_writable

    names = [job.name for job in _prepare_runs(jobs, kwargs)]  # each point of a grid in a process of its own
    output_dir = Path(kwargs["output_dir"])
    check_writable(output_dir)
    options = child_options(kwargs)
    # each child locks the run directories it runs; SIGINT/SIGTERM are passed on to the children (ptuning/run/parallel.py)
    click.echo(f"ptuning: running {len(names)} jobs, {concurrency} at a time; logs in {output_dir / 'logs'}")
    return run_concurrently(names, options, output_dir, concurrency, jobs_dir=_jobs_dir(ctx), device=kwargs["device"],
                            echo=click.echo)


def _load_results(results_dir: Path, quiet: bool = False) -> dict:
    """The results in `results_dir`; each unreadable result file is one warning line on stderr (unless `quiet`)."""
    from ptuning.report.results import load_results

    skipped: list[str] = []
    results = load_results(results_dir, skipped)
    if not quiet:
        for line in skipped:
            click.echo(f"ptuning: warning: left out: {line}", err=True)
    return results


def report_jobs(jobs, results: dict) -> list:
    """The rows a report shows: each job, and after a job with a grid its points (the job itself only if it has
    results of its own: a job with a grid runs its points)."""
    out = []
    for job in jobs:
        points = job.points()
        if not points or job.name in results:
            out.append(job)
        out += points
    return out


def _kind(results_dir: Path, quiet: bool = False):
    """What kind of results the folder holds (a smoke test, a demo; None for real runs), for captions and titles."""
    from ptuning.report import kind

    problems: list[str] = []
    found = kind.read(results_dir, problems)
    if not quiet:
        for line in problems:
            click.echo(f"ptuning: warning: {line}", err=True)
    return found


def terminal_width() -> int:
    """The terminal's width ($COLUMNS first); 100 when the output is not a terminal."""
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


def _print_tables(jobs, results_dir: Path, wide: bool = False) -> None:
    """Write the full tables to RESULTS/TABLES.md; print the compact table (or, `wide`, the full markdown)."""
    from ptuning.atomic import atomic_save
    from ptuning.report import tables
    from ptuning.report.plots import PLOTS_DIR, plot_paths
    from ptuning.report.results import read_latency

    results_dir = Path(results_dir)
    results, kind = _load_results(results_dir), _kind(results_dir)
    jobs = report_jobs(jobs, results)
    problems: list[str] = []
    latency = read_latency(results_dir, problems)
    for line in problems:
        click.echo(f"ptuning: warning: {line}", err=True)
    document = tables.document(jobs, results, plot_paths(results_dir), base=results_dir, kind=kind, latency=latency)
    path: Path | None = results_dir / tables.TABLES_FILE
    try:
        atomic_save(path, lambda tmp: tmp.write_text(document + "\n", encoding="utf-8"),
                    writable="make the results folder writable to keep the tables in a file")
    except PtuningError as exc:  # the tables are still printed
        click.echo(f"ptuning: warning: {exc}", err=True)
        path = None
    if wide:
        click.echo(document)
    else:
        click.echo(tables.compact(jobs, results, terminal_width(), path, results_dir / PLOTS_DIR, kind))


def _write_plots(jobs, results_dir: Path, quiet: bool = False) -> list[Path]:
    from ptuning.report.plots import write_plots

    results = _load_results(results_dir, quiet)
    return write_plots(report_jobs(jobs, results), results, results_dir, _kind(results_dir, quiet))


@main.command("list")
@click.option("--points", "with_points", is_flag=True, help="Also list each point of the jobs' grids (`sweep:`).")
@click.argument("job_refs", metavar="[JOB ...]", nargs=-1)
@click.pass_context
def list_jobs(ctx: click.Context, with_points: bool, job_refs: tuple[str, ...]) -> None:
    """List the jobs in jobs/ (row, name, title, method, implementation, knob, learning rate)."""
    from tabulate import tabulate

    from ptuning.settings import load_all_jobs, load_job

    jobs = [load_job(ref, _jobs_dir(ctx)) for ref in job_refs] if job_refs else load_all_jobs(_jobs_dir(ctx))
    if with_points:
        jobs = [j for job in jobs for j in (job, *job.points())]
    rows = [[j.row, j.name, j.title, j.method, j.implementation, j.knob_summary, format_lr(j.settings.lr)] for j in jobs]
    click.echo(tabulate(rows, headers=["row", "job", "title", "method", "implementation", "knob", "lr"], tablefmt="github", disable_numparse=True))


def format_lr(lr: float | None) -> str:
    """A learning rate in one format for every job: '1e-4', '3e-4', '2.5e-5', '1e-1' ('–' for none)."""
    if lr is None:
        return "–"
    mantissa, exponent = f"{lr:.6e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


@main.command("settings")
@click.pass_context
def settings_cmd(ctx: click.Context) -> None:
    """List every setting a job file, `_defaults.yaml` or `--set KEY=VALUE` may give: type, allowed values, default."""
    from tabulate import tabulate

    from ptuning.settings import describe_settings, load_defaults

    rows = describe_settings(load_defaults(_jobs_dir(ctx)))
    click.echo(tabulate(rows, headers=["key", "type", "allowed", "default", "meaning"], tablefmt="github", disable_numparse=True))
    click.echo("\nMethod knobs: --set method.KNOB=VALUE (e.g. method.rank=4); `ptuning list` shows each job's.")


@main.command()
@click.argument("job_refs", metavar="JOB [JOB ...]", nargs=-1, required=True)
@run_options
@click.pass_context
def run(ctx: click.Context, job_refs: tuple[str, ...], **kwargs) -> None:
    """Run jobs by name (file stem in jobs/) or by path to a YAML file."""
    from ptuning.settings import load_job

    directory = None if all(r.endswith((".yaml", ".yml")) for r in job_refs) else _jobs_dir(ctx)
    jobs = [load_job(ref, directory) for ref in job_refs]
    failures = _run_jobs(jobs, kwargs)
    if failures:
        sys.exit(1)


@main.command("run-all")
@run_options
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run K jobs at once, each in its own process (logs in OUTPUT_DIR/logs/).")
@click.pass_context
def run_all(ctx: click.Context, concurrency: int, **kwargs) -> None:
    """Run every job in jobs/, in table order, then write the plots and the tables and say how it went."""
    import time

    from ptuning.settings import load_all_jobs

    started = time.time()
    jobs = load_all_jobs(_jobs_dir(ctx))
    if not jobs:  # exiting 0 having run nothing would read as success
        from ptuning.settings import jobs_dir

        raise PtuningError(f"no job files (*.yaml) in {_jobs_dir(ctx) or jobs_dir()}; pass --jobs-dir with the folder of job files")
    if concurrency > 1:
        failures = _run_concurrently(ctx, jobs, kwargs, concurrency)
    else:
        failures = _run_jobs(jobs, kwargs)
    outcome = _report_runs(jobs, kwargs, started, [name for name, _ in failures])
    if failures:
        click.echo(f"ptuning: {len(outcome.failed)} of {outcome.runs} runs failed: {', '.join(outcome.failed)}", err=True)
        sys.exit(1)


def _report_runs(jobs, kwargs, started: float, failed: list[str]):
    """The end of a command that ran `jobs` with the options `kwargs` since `started`: the plots, the tables, and
    the summary of the runs (each job, each point of a grid), then the next command (run-all, a waiting submit).
    Returns the runs' outcome (ptuning/run/summary.py's Tally)."""
    from ptuning.settings import expand

    output_dir = Path(kwargs["output_dir"])
    _write_plots(jobs, output_dir, quiet=True)  # the tables' warnings say it once
    _print_tables(jobs, output_dir)
    click.echo("")
    ran = expand([job.override(overrides(kwargs)) for job in jobs])
    return run_summary(ran, output_dir, started, failed,
                       [f"ptuning check --results {output_dir}   (each row against the report's figure)"])


def run_summary(jobs, output_dir: Path, started: float, failed: list[str], next_steps: list[str]):
    """Print the closing lines of a command that ran `jobs` since `started`, and return the runs' outcome
    (ptuning/run/summary.py's Tally)."""
    import time

    from ptuning.run import summary

    outcome = summary.tally(jobs, output_dir, started, failed)
    for line in summary.summary_lines(outcome, time.time() - started, output_dir, next_steps):
        click.echo(line)
    return outcome


@main.command()
@click.argument("job_refs", metavar="JOB [JOB ...]", nargs=-1, required=True)
@run_options
@click.option("--sweep", "sweeps", multiple=True, metavar="KEY=V1,V2",
              help="The grid of one key (a setting or method knob), replacing the job file's for it; repeatable.")
@click.option("--search-seeds", metavar="N,M,...", help="Seeds of the search runs (default: the first of --seeds).")
@click.option("--budget-epochs", type=click.IntRange(min=1), help="Epochs of each search run (default: the job's).")
@click.pass_context
def tune(ctx: click.Context, job_refs: tuple[str, ...], sweeps: tuple[str, ...], search_seeds: str | None,
         budget_epochs: int | None, **kwargs) -> None:
    """Choose each job's grid point on held-out validation data, then report its test accuracy beside the job's own settings.

    Search runs go to OUTPUT_DIR/search/, the chosen point and the job's own settings (every seed, heldout protocol)
    to OUTPUT_DIR/, the choice to OUTPUT_DIR/tune.json, the tables to OUTPUT_DIR/TUNE.md.
    """
    from ptuning.atomic import atomic_save
    from ptuning.report.tuning import tune_table
    from ptuning.run import tune as tune_mod
    from ptuning.run.interrupt import StopRequest
    from ptuning.run.metrics import check_trackers
    from ptuning.run.runner import resolve_device, run_job
    from ptuning.settings import confirm_runs, load_job

    device = resolve_device(kwargs["device"])
    check_trackers(kwargs.get("trackers") or ())
    values = overrides(kwargs)
    if values.get("protocol", "heldout") != "heldout":
        raise PtuningError("tune chooses on validation data: it runs the heldout protocol (drop --protocol)")
    search = parse_seeds(search_seeds) if search_seeds else None
    grids = [tune_mod.parse_sweep_option(text) for text in sweeps]
    jobs = [tune_mod.with_grid(load_job(ref, _jobs_dir(ctx)).override(values), grids) for ref in job_refs]
    confirm_runs([job.override(seeds=search or job.seed_list[:1]) for job in jobs], kwargs.get("yes", False))
    check_jobs(jobs, device)
    forced = force_id(kwargs)
    total = sum(len(job.points()) * len(search or job.seed_list[:1]) + 2 * len(job.seed_list) for job in jobs)
    output_dir = Path(kwargs["output_dir"])
    click.echo(f"ptuning: tuning {len(jobs)} job(s), {total} runs in all (search seeds: {search or 'the first of each job'})")
    with StopRequest() as stop:
        def run(job, out):
            return run_job(job, out, kwargs["device"], force=forced or False, stop=stop,
                           trackers=tuple(kwargs.get("trackers") or ()))

        summary = tune_mod.tune(jobs, output_dir, run, search, budget_epochs, click.echo)
    text = tune_table(tune_mod.tune_rows(jobs, summary, _load_results(output_dir)))
    atomic_save(output_dir / "TUNE.md", lambda tmp: tmp.write_text(text + "\n"))
    click.echo(text)
    click.echo(f"ptuning: the choice is in {output_dir / tune_mod.TUNE_FILE}, the tables in {output_dir / 'TUNE.md'}")


@main.command()
@click.argument("job_refs", metavar="[JOB ...]", nargs=-1)
@run_options
@click.option("--executor", type=click.Choice(["slurm", "local"]), default="slurm", show_default=True,
              help="slurm: one job array on the cluster (run this on its login node); local: the same runs here.")
@click.option("--partition", help="SLURM partition (default: the cluster's default one).")
@click.option("--gpus-per-job", type=click.IntRange(min=0), default=1, show_default=True, help="GPUs for each run.")
@click.option("--cpus-per-job", type=click.IntRange(min=1), help="CPUs for each run (default: the cluster's, usually 1).")
@click.option("--mem", metavar="SIZE", help="Memory for each run, as SLURM writes it: 16G, 8000M.")
@click.option("--time", "time_limit", metavar="TIME", help="Time limit of each run: minutes, HH:MM:SS or D-HH:MM:SS "
              "(default: the partition's); a run that reaches it is requeued and resumes.")
@click.option("--account", help="SLURM account to charge.")
@click.option("--qos", help="SLURM quality of service.")
@click.option("--constraint", help="SLURM node features the runs need, e.g. a100.")
@click.option("--max-parallel", type=click.IntRange(min=1),
              help="At most N runs at once (SLURM: the array's throttle; local default: one per GPU, or 1).")
@click.option("--signal-before", type=click.IntRange(min=10), default=120, show_default=True, metavar="SECONDS",
              help="Warn a run this long before its time limit: it writes its checkpoint and is requeued.")
@click.option("--container", type=click.Path(dir_okay=False), metavar="IMAGE",
              help="Run each task in this Apptainer/Singularity image of ptuning (see docs/cluster.md).")
@click.option("--wait", is_flag=True, help="Follow the runs until they end, then print the tables (exit 1 if one failed).")
@click.option("--poll-seconds", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="With --wait: how often SLURM is asked for the tasks' states.")
@click.pass_context
def submit(ctx: click.Context, job_refs: tuple[str, ...], executor: str, partition, gpus_per_job, cpus_per_job, mem, time_limit,
           account, qos, constraint, max_parallel, signal_before, container, wait, poll_seconds, **kwargs) -> None:
    """Run jobs (default: all) × seeds as one SLURM job array, or here with --executor local.

    Each run is one task running `ptuning run JOB --seeds N` into the same --output-dir (a shared filesystem);
    runs already completed are not submitted again. See docs/cluster.md."""
    from ptuning.cluster.submit import ClusterOptions, submit as submit_runs
    from ptuning.settings import load_all_jobs, load_job

    if executor == "local":
        slurm_only = {"--partition": partition, "--mem": mem, "--time": time_limit, "--account": account, "--qos": qos,
                      "--constraint": constraint}
        given = [name for name, value in slurm_only.items() if value is not None]
        if given:
            raise PtuningError(f"{', '.join(given)}: SLURM options, for --executor slurm only")
    if mem is not None and not re.fullmatch(r"\d+[KMGT]?", mem):
        raise PtuningError(f"--mem {mem!r}: expected a size as SLURM writes it, e.g. 16G or 8000M")
    directory = _jobs_dir(ctx)
    if job_refs:
        jobs = [load_job(ref, None if ref.endswith((".yaml", ".yml")) else directory) for ref in job_refs]
        refs = {job.name: str(Path(ref).resolve()) for job, ref in zip(jobs, job_refs) if ref.endswith((".yaml", ".yml"))}
    else:
        jobs, refs = load_all_jobs(directory), {}
        if not jobs:
            raise PtuningError(f"no job files (*.yaml) in {directory}; pass --jobs-dir with the folder of job files")
    options = ClusterOptions(executor=executor, partition=partition, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job,
                             mem=mem, time=time_limit, account=account, qos=qos, constraint=constraint,
                             max_parallel=max_parallel, signal_before=signal_before, container=container, wait=wait,
                             poll_seconds=poll_seconds)

    import time

    started = time.time()

    def tables() -> None:  # failed runs are read from their result files
        _report_runs(jobs, kwargs, started, [])

    status = submit_runs(jobs, refs, kwargs, directory, options, echo=click.echo, tables=tables)
    if status:
        sys.exit(status)


@main.command()
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--size", type=click.Choice(["small", "t5-small"]), default=None, help="Model shape (default: t5-small on CUDA, small on CPU).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Timed training steps per path (default: 50 on CUDA, 3 on CPU).")
@click.option("--rows", default="full_ft", show_default=True, callback=_parse_rows, help="Comma-separated jobs to bench (e.g. full_ft,lora_8).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Training batch size.")
@click.option("--max-length", type=click.IntRange(min=8), default=256, show_default=True, help="Input length limit of the synthetic reviews.")
@click.option("--eval-reviews", type=click.IntRange(min=1), default=None, help="Reviews decoded per path (default: 2048 on CUDA, 64 on CPU).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True, help="Fast path precision.")
@click.option("--compile/--no-compile", "compile_", default=False, show_default=True, help="Fast path: torch.compile over length buckets (CUDA only).")
@click.option("--cuda-graphs/--no-cuda-graphs", "cuda_graphs", default=True, show_default=True, help="Fast path on CUDA: the training step as CUDA graphs.")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True, help="Also bench K processes at once on the first row's fast path (run-all --concurrency K).")
@click.option("--output", type=click.Path(dir_okay=False), help="Also write the markdown to this file.")
@click.option("--json", "json_output", type=click.Path(dir_okay=False), help="Also write the measurements as JSON to this file.")
@click.pass_context
def bench(ctx: click.Context, device: str, size: str | None, steps: int | None, rows: list[str], batch_size: int, max_length: int,
          eval_reviews: int | None,
          precision: str, compile_: bool, cuda_graphs: bool, concurrency: int, output: str | None, json_output: str | None) -> None:
    """Time the exercise's loop and the fast path in one run on this device (random weights, synthetic data)."""
    from ptuning.atomic import atomic_save
    from ptuning.run.runner import resolve_device
    from ptuning.speed.bench import run_bench

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    if compile_ and not cuda:
        raise PtuningError("--compile needs a CUDA device")
    for option, path in (("--output", output), ("--json", json_output)):
        _check_writable_file(option, path)  # before minutes of timing, not after
    data: dict = {}
    text = run_bench(dev, size or ("t5-small" if cuda else "small"), steps or (50 if cuda else 3),
                     rows, batch_size=batch_size, max_length=max_length, eval_reviews=eval_reviews, precision=precision,
                     compile=compile_, cuda_graphs=cuda_graphs, concurrency=concurrency, jobs_dir=_jobs_dir(ctx), echo=lambda m: click.echo(m, err=True), data=data)
    click.echo(text)
    for option, path, content in (("--output", output, text + "\n"), ("--json", json_output, json.dumps(data, indent=2) + "\n")):
        if path:  # an earlier file stays whole if this fails
            atomic_save(Path(path), lambda tmp: tmp.write_text(content), writable=f"pass {option} with a writable path")
            click.echo(f"bench: written to {path}", err=True)


@main.command()
@click.argument("job_refs", metavar="[JOB ...]", nargs=-1)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--size", type=click.Choice(["small", "t5-small"]), default=None, help="Model shape (default: t5-small on CUDA, small on CPU).")
@click.option("--reviews", type=click.IntRange(min=1, max=10_000), default=20, show_default=True, help="Reviews decoded one at a time (the median counts).")
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Where latency.json goes (the tables of this folder show it).")
@click.pass_context
def latency(ctx: click.Context, job_refs: tuple[str, ...], device: str, size: str | None, reviews: int, results_dir: str) -> None:
    """Measure the inference latency each method adds at batch 1 on this device (LoRA unmerged and merged)."""
    from ptuning.run.runner import resolve_device
    from ptuning.settings import load_all_jobs, load_job
    from ptuning.speed import latency as latency_mod

    dev = resolve_device(device)
    jobs = [load_job(ref, _jobs_dir(ctx)) for ref in job_refs] if job_refs else load_all_jobs(_jobs_dir(ctx))
    _check_writable_file("--results", str(Path(results_dir) / latency_mod.LATENCY_FILE))
    data = latency_mod.measure(jobs, dev, size or ("t5-small" if dev.type == "cuda" else "small"), reviews,
                               echo=lambda m: click.echo(m, err=True))
    click.echo(latency_mod.markdown(data))
    click.echo(f"latency: written to {latency_mod.write(data, Path(results_dir))}", err=True)


def _check_writable_file(option: str, path: str | None) -> None:
    """Refuse a file path whose nearest existing folder is not a writable directory."""
    if path is None:
        return
    folder = Path(path).absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        problem = "is not a directory" if not folder.is_dir() else "is not writable"
        raise PtuningError(f"{option} {path}: cannot write there ({folder} {problem}); pass {option} with a writable path")


def _require_results(results_dir: str) -> None:
    if not Path(results_dir).is_dir():
        raise PtuningError(f"results directory {results_dir} does not exist; run jobs first (ptuning run JOB) or pass --results DIR")


@main.command("tables")
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default="results", show_default=True, help="Results directory.")
@click.option("--wide", is_flag=True, help="Print the full markdown tables (every column, the parameter table) instead of the compact one.")
@click.pass_context
def tables_cmd(ctx: click.Context, results_dir: str, wide: bool) -> None:
    """Print the accuracy table, compact to fit the terminal, and write the full tables to RESULTS/TABLES.md.

    The compact table has the row, approach, knob, accuracy (mean ± std over seeds, n), the difference from full
    fine-tuning with its t-test's verdict (paired by seed or Welch's, Holm-adjusted), the report's figure and the distance from it, and the trainable parameters.
    TABLES.md (and --wide) add every other column and the parameter table with its formulas."""
    from ptuning.settings import load_all_jobs

    _require_results(results_dir)
    _print_tables(load_all_jobs(_jobs_dir(ctx)), Path(results_dir), wide=wide)


@main.command("check")
@click.option("--tolerance", type=float, default=DEFAULT_TOLERANCE, show_default=True, metavar="PTS",
              help="Allowed distance of a row's figure from the reference, in points, either way.")
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default="results", show_default=True, help="Results directory.")
@click.pass_context
def check_cmd(ctx: click.Context, tolerance: float, results_dir: str) -> None:
    """Compare each row with the report's accuracy; exit 1 if one is off or incomplete.

    The figure compared is the one the tables show: the faithful protocol's max test accuracy over epochs, mean
    over seeds. Each row's line gives the reference, the measured figure and the distance. A row fails when the
    distance is over the tolerance, and when its runs do not count as a full reproduction; the line names every
    reason: a seed that failed, a train or eval limit, fewer or more epochs than the job file, only heldout-protocol
    results, no result at all. Rows without a reference accuracy are skipped."""
    from ptuning.report.check import check
    from ptuning.settings import load_all_jobs

    ok, lines = check(results_dir, tolerance, load_all_jobs(_jobs_dir(ctx)))
    for line in lines:
        click.echo(line)
    if not ok:
        sys.exit(1)


@main.command("plots")
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default="results", show_default=True, help="Results directory.")
@click.pass_context
def plots_cmd(ctx: click.Context, results_dir: str) -> None:
    """Write accuracy-per-epoch, Pareto and training-time PNGs into RESULTS/plots/."""
    from ptuning.settings import load_all_jobs

    _require_results(results_dir)
    written = _write_plots(load_all_jobs(_jobs_dir(ctx)), Path(results_dir))
    if not written:
        raise PtuningError(f"no completed results in {results_dir}: nothing to plot")
    for path in written:
        click.echo(str(path))


@main.command("params")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True, help="Output format.")
@click.option("--model", help="Hub id or local directory whose config to build (default: t5-small's, nothing downloaded).")
@click.option("--recount", is_flag=True, help="Count every job again, even one whose counts are in the count cache.")
@click.argument("job_refs", metavar="[JOB ...]", nargs=-1)
@click.pass_context
def params_cmd(ctx: click.Context, fmt: str, model: str | None, recount: bool, job_refs: tuple[str, ...]) -> None:
    """Count each job's parameters on a random-weight model and check the added ones against the formula.

    Counts are cached: a job counted before with the same ptuning code, method and knobs, model config and library
    versions (Python, torch, transformers, PEFT, AdapterHub, OpenDelta) is read back, and stderr says so.
    """
    from ptuning.report import params
    from ptuning.settings import job_names, load_job

    directory = _jobs_dir(ctx)
    jobs, failures = [], []
    for name in job_refs or job_names(directory):
        try:
            jobs.append(load_job(name, directory))
        except PtuningError as exc:
            failures.append((name, str(exc)))
    jobs.sort(key=lambda j: (j.row, j.name))
    rows, cached = params.cached_parameter_rows(jobs, model, recount=recount, errors=failures, progress=_progress_line())
    click.echo(params.render_json(rows) if fmt == "json" else params.render_markdown(rows))
    if cached:
        click.echo(f"ptuning: {cached} of {len(rows)} counts read from the count cache ({params.count_cache_dir()}), "
                   "counted before with the same ptuning code, job settings, model config and library versions; "
                   "--recount counts them again", err=True)
    for name, message in failures:
        click.echo(f"ptuning: error: [{name}] {message}", err=True)
    if failures or not all(r["match"] for r in rows):
        sys.exit(1)


def _progress_line():
    """`progress(i, n, name)` that shows 'counting 3/11: adapter_8' in place on a terminal's stderr; None elsewhere."""
    if not sys.stderr.isatty():
        return None

    def progress(i: int, n: int, name: str) -> None:  # i == n: done, clear the line
        click.echo("\r\033[K" + (f"counting parameters {i + 1}/{n}: {name}" if i < n else ""), err=True, nl=False)

    return progress


@main.command()
@click.option("--output-dir", type=click.Path(file_okay=False), default="results/smoke", show_default=True, help="Where the smoke results go.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Where the tiny model and data are built (default: smoke-assets-v1 in ptuning's cache, ~/.cache/ptuning).")
@click.argument("job_refs", metavar="[JOB ...]", nargs=-1)
@click.pass_context
def smoke(ctx: click.Context, output_dir: str, workdir: str | None, job_refs: tuple[str, ...]) -> None:
    """Run every job (or the named ones) for one short epoch on a tiny offline T5, on CPU."""
    import time

    from ptuning.report import kind
    from ptuning.run.runner import check_writable, run_job
    from ptuning.settings import job_names, load_job
    from ptuning.testing import smoke as smoke_mod

    started = time.time()
    directory = _jobs_dir(ctx)
    names = list(job_refs) or job_names(directory)
    click.echo(smoke_mod.BANNER)
    model_dir, data_dir = smoke_mod.prepare(Path(workdir) if workdir else None)
    check_writable(Path(output_dir))
    kind.mark(Path(output_dir), kind.SMOKE)  # the tables and plots of these results say "smoke test"
    jobs, failures = [], []
    for name in names:  # a job whose method is not available fails alone, with one line
        try:
            jobs.append(load_job(name, directory))
        except PtuningError as exc:
            click.echo(f"ptuning: error: [{name}] {exc}", err=True)
            failures.append(name)
    jobs.sort(key=lambda j: (j.row, j.name))
    for job in jobs:
        try:
            settings = {"model": str(model_dir), "dataset": str(data_dir), **smoke_mod.SMOKE_SETTINGS}
            run_job(job.override(settings, where="smoke"), Path(output_dir), "cpu", force=True)
        except PtuningError as exc:
            click.echo(f"ptuning: error: [{job.name}] {exc}", err=True)
            failures.append(job.name)
    click.echo(smoke_mod.BANNER)
    _print_tables(jobs, Path(output_dir))
    click.echo(smoke_mod.BANNER)
    passed = len(names) - len(failures)
    click.echo(f"smoke: {passed} of {len(names)} jobs passed" + (f"; failed: {', '.join(failures)}" if failures else ""))
    run_summary(jobs, Path(output_dir), started, failures, smoke_mod.next_steps(Path(output_dir)))
    if failures:
        sys.exit(1)


@main.command("export")
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--to", "fmt", type=click.Choice(["peft"]), required=True, help="Target format: peft (a PEFT LoRA adapter directory).")
@click.argument("out_dir", metavar="DIR")
@click.option("--base-model", help="base_model_name_or_path to record (default: the model the run started from).")
def export_cmd(run_dir: str, fmt: str, out_dir: str, base_model: str | None) -> None:
    """Write a hand-written LoRA run (RUN_DIR, e.g. results/lora_8/seed0) as a PEFT adapter directory DIR."""
    from ptuning.methods.export import export_peft

    click.echo(export_peft(Path(run_dir), Path(out_dir), base_model))


@main.command()
@click.option("--output-dir", type=click.Path(file_okay=False), default="results/demo", show_default=True, help="Where the demo's results go.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Where the synthetic backbone and task are built (default: ptuning's cache, ~/.cache/ptuning).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, help="Training seed of every row (the backbone's is part of its recipe).")
@click.option("--quick", is_flag=True, help="The test suite's smaller demo: a smaller backbone, fewer reviews and steps (about a third of the time).")
@click.argument("job_refs", metavar="[JOB ...]", nargs=-1)
@click.pass_context
def demo(ctx: click.Context, output_dir: str, workdir: str | None, seed: int, quick: bool, job_refs: tuple[str, ...]) -> None:
    """Zero-shot and every row on a synthetic task each method can learn: offline, on CPU, in minutes."""
    from ptuning.settings import job_names, load_job
    from ptuning.testing import demo as demo_mod

    directory = _jobs_dir(ctx)
    jobs = [load_job(name, directory) for name in job_refs or job_names(directory)]  # a bad name: one line, nothing run
    if not jobs:
        raise PtuningError(f"no job files (*.yaml) in {directory}; pass --jobs-dir with the folder of job files")
    jobs.sort(key=lambda j: (j.row, j.name))
    outcome = demo_mod.run(jobs, demo_mod.PROFILES["quick" if quick else "demo"], Path(output_dir), _print_tables,
                           Path(workdir) if workdir else None, seed, echo=click.echo, error=lambda line: click.echo(line, err=True))
    ran = len(jobs) - len(outcome.failures)
    click.echo(f"demo: {ran} of {len(jobs)} jobs ran in {outcome.seconds:.0f} s; results and plots in {output_dir}")
    if outcome.failures:
        raise PtuningError(f"demo: {len(outcome.failures)} of {len(jobs)} jobs failed: {', '.join(outcome.failures)}")
    if not outcome.passed:
        raise PtuningError("demo: the learning check failed (see above): a method did not learn the synthetic task")


if __name__ == "__main__":  # pragma: no cover
    main()
