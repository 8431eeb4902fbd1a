"""The `ptuning` command line (click). Each command is a thin layer over one module."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from ptuning.check import DEFAULT_TOLERANCE
from ptuning.errors import PtuningError


class Cli(click.Group):
    """Turns a PtuningError into one line on stderr and exit status 1 (never a traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PtuningError as exc:
            click.echo(f"ptuning: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("ptuning: interrupted", err=True)
            sys.exit(130)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--jobs-dir", type=click.Path(file_okay=False), envvar="PTUNING_JOBS_DIR", help="Directory of job YAML files (default: ./jobs).")
@click.version_option(package_name="ptuning")
@click.pass_context
def main(ctx: click.Context, jobs_dir: str | None) -> None:
    """Fine-tune T5-small on IMDb ten ways and compare accuracy and parameter counts."""
    ctx.obj = {"jobs_dir": jobs_dir}


def _jobs_dir(ctx: click.Context) -> Path:
    from ptuning.jobs import jobs_dir

    return jobs_dir(ctx.obj.get("jobs_dir"))


def run_options(f):
    """Options shared by `run`, `run-all` (they override the job files)."""
    options = [
        click.option("--model", help="Hub id or local directory of a T5 model (default: t5-small)."),
        click.option("--dataset", help="Hub id or local path of an IMDb-shaped dataset (default: stanfordnlp/imdb)."),
        click.option("--epochs", type=int, help="Number of epochs (default: 10)."),
        click.option("--train-limit", type=int, help="Use N training reviews (a fixed sample) for a quick run."),
        click.option("--eval-limit", type=int, help="Use N test reviews (a fixed sample) for a quick run."),
        click.option("--seed", type=int, help="Random seed (default: the job's, 0)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--output-dir", type=click.Path(file_okay=False), default="results", show_default=True, help="Where results are written."),
    ]
    for option in reversed(options):
        f = option(f)

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


OVERRIDES = ("model", "dataset", "epochs", "train_limit", "eval_limit", "seed")


def _run_jobs(jobs, kwargs, echo=click.echo) -> list[tuple[str, str]]:
    """Run jobs one after another; a job that fails is reported and the next one runs. Returns failures."""
    from ptuning.runner import resolve_device, run_job

    resolve_device(kwargs["device"])  # a bad --device fails before anything runs
    overrides = {k: kwargs.get(k) for k in OVERRIDES}
    jobs = [job.override(**overrides) for job in jobs]  # validate every override first
    failures = []
    for job in jobs:
        try:
            run_job(job, Path(kwargs["output_dir"]), kwargs["device"], echo=echo)
        except PtuningError as exc:
            click.echo(f"ptuning: error: [{job.name}] {exc}", err=True)
            failures.append((job.name, str(exc)))
    return failures


def _print_tables(jobs, results_dir: Path) -> None:
    from ptuning.report import tables
    from ptuning.results import load_results

    click.echo(tables(jobs, load_results(results_dir)))


@main.command("list")
@click.pass_context
def list_jobs(ctx: click.Context) -> None:
    """List the jobs in jobs/ (name, row, title, method, implementation, knob)."""
    from tabulate import tabulate

    from ptuning.jobs import load_all_jobs

    jobs = load_all_jobs(_jobs_dir(ctx))
    rows = [[j.row, j.name, j.title, j.method, j.implementation, j.knob_summary, j.lr] for j in jobs]
    click.echo(tabulate(rows, headers=["row", "job", "title", "method", "implementation", "knob", "lr"], tablefmt="github", disable_numparse=True))


@main.command()
@click.argument("job_refs", metavar="JOB [JOB ...]", nargs=-1, required=True)
@run_options
@click.pass_context
def run(ctx: click.Context, job_refs: tuple[str, ...], **kwargs) -> None:
    """Run jobs by name (file stem in jobs/) or by path to a YAML file."""
    from ptuning.jobs import load_job

    directory = None if all(r.endswith((".yaml", ".yml")) for r in job_refs) else _jobs_dir(ctx)
    jobs = [load_job(ref, directory) for ref in job_refs]
    failures = _run_jobs(jobs, kwargs)
    if failures:
        sys.exit(1)


@main.command("run-all")
@run_options
@click.pass_context
def run_all(ctx: click.Context, **kwargs) -> None:
    """Run every job in jobs/, in table order, then print the tables."""
    from ptuning.jobs import load_all_jobs

    jobs = load_all_jobs(_jobs_dir(ctx))
    failures = _run_jobs(jobs, kwargs)
    _print_tables(jobs, Path(kwargs["output_dir"]))
    if failures:
        click.echo(f"ptuning: {len(failures)} of {len(jobs)} jobs failed: {', '.join(n for n, _ in failures)}", err=True)
        sys.exit(1)


@main.command("tables")
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default="results", show_default=True, help="Results directory.")
@click.pass_context
def tables_cmd(ctx: click.Context, results_dir: str) -> None:
    """Print the accuracy and parameter tables (markdown) from a results directory."""
    from ptuning.jobs import load_all_jobs

    if not Path(results_dir).is_dir():
        raise PtuningError(f"results directory {results_dir} does not exist; run jobs first (ptuning run JOB) or pass --results DIR")
    _print_tables(load_all_jobs(_jobs_dir(ctx)), Path(results_dir))


@main.command("check")
@click.option("--tolerance", type=float, default=DEFAULT_TOLERANCE, show_default=True, metavar="PTS",
              help="Allowed distance of a row's max accuracy from the reference, in points.")
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default="results", show_default=True, help="Results directory.")
@click.pass_context
def check_cmd(ctx: click.Context, tolerance: float, results_dir: str) -> None:
    """Fail (exit 1) when a row's max accuracy is farther than the tolerance from the reference, or did not run."""
    from ptuning.check import check
    from ptuning.jobs import load_all_jobs

    ok, lines = check(results_dir, tolerance, load_all_jobs(_jobs_dir(ctx)))
    for line in lines:
        click.echo(line)
    if not ok:
        sys.exit(1)


@main.command("params")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True, help="Output format.")
@click.option("--model", help="Hub id or local directory whose config to build (default: t5-small's, nothing downloaded).")
@click.argument("job_refs", metavar="[JOB ...]", nargs=-1)
@click.pass_context
def params_cmd(ctx: click.Context, fmt: str, model: str | None, job_refs: tuple[str, ...]) -> None:
    """Count each job's parameters on a random-weight model and check the added ones against the formula."""
    from ptuning import params
    from ptuning.jobs import job_names, load_job

    directory = _jobs_dir(ctx)
    config = params.load_config(model)
    jobs, failures = [], []
    for name in job_refs or job_names(directory):
        try:
            jobs.append(load_job(name, directory))
        except PtuningError as exc:
            failures.append((name, str(exc)))
    jobs.sort(key=lambda j: (j.row, j.name))
    rows = params.parameter_rows(jobs, config, errors=failures)
    click.echo(params.render_json(rows) if fmt == "json" else params.render_markdown(rows))
    for name, message in failures:
        click.echo(f"ptuning: error: [{name}] {message}", err=True)
    if failures or not all(r["match"] for r in rows):
        sys.exit(1)


@main.command()
@click.option("--output-dir", type=click.Path(file_okay=False), default="results/smoke", show_default=True, help="Where the smoke results go.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Where the tiny model and data are built (default: ~/.cache/ptuning).")
@click.argument("job_refs", metavar="[JOB ...]", nargs=-1)
@click.pass_context
def smoke(ctx: click.Context, output_dir: str, workdir: str | None, job_refs: tuple[str, ...]) -> None:
    """Run every job (or the named ones) for one short epoch on a tiny offline T5, on CPU."""
    from ptuning import smoke as smoke_mod
    from ptuning.jobs import job_names, load_job
    from ptuning.runner import run_job

    directory = _jobs_dir(ctx)
    names = list(job_refs) or job_names(directory)
    click.echo(smoke_mod.BANNER)
    model_dir, data_dir = smoke_mod.prepare(Path(workdir) if workdir else None)
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
            run_job(job.override(model=str(model_dir), dataset=str(data_dir), **smoke_mod.SMOKE_SETTINGS), Path(output_dir), "cpu")
        except PtuningError as exc:
            click.echo(f"ptuning: error: [{job.name}] {exc}", err=True)
            failures.append(job.name)
    click.echo(smoke_mod.BANNER)
    _print_tables(jobs, Path(output_dir))
    click.echo(smoke_mod.BANNER)
    passed = len(names) - len(failures)
    click.echo(f"smoke: {passed} of {len(names)} jobs passed" + (f"; failed: {', '.join(failures)}" if failures else ""))
    if failures:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
