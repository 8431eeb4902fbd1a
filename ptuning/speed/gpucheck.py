"""The pieces of scripts/gpu-check.sh that are Python: the assets, graphs-vs-eager equivalence, the step profile,
the projection of a scaled run and its overheads, the report.

`python -m ptuning.speed.gpucheck assets DIR ...` builds the T5-small-shaped model and IMDb-length data
(`ptuning.testing.tiny.build_t5_small_shaped`) and prints their paths. `python -m ptuning.speed.gpucheck report ...` reads
what the script measured (the bench's JSON, the run-all's result JSONs, its wall time) and writes
BENCHMARKS.md: only measured numbers, and projections computed from them, each labelled so.

The projection of a job, from the bench numbers of the job's path (result JSON's `speed.path`; the bench row
of the same name if it was benched, else the mean of the benched rows: the bench's own "each row costs what
this row costs"):
* its train + eval: training steps (epochs × ceil(train reviews / batch size)) × the step time, + evaluated
  reviews (one pass per epoch; zero-shot: one pass) × the eval time per review, + (if it trains) the warm-up's
  cost beyond its steps (the CUDA-graph capture); compared with the sum of its epochs' train and eval seconds;
* its whole time: that, + loading the saved model with its method onto the device, + a checkpoint per epoch
  and the trained parameters (if it trains); compared with its `setup_seconds` + `wall_seconds`.
The run-all's projected wall time: the bench's process start + every job's whole time. `python -m ptuning.speed.gpucheck
overheads` times, apart from the run-all and with its functions, what neither the bench nor the jobs' train and
eval cover: each job's data (loading the splits, tokenizing at the run's limits into a fresh cache, as the run-all
does job after job) and the tables and plots at the end; given (`report --overheads`), they join the projection.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

#: the issue's criterion: the scaled run-all finishes within this fraction of the projected time
TOLERANCE = 0.20
#: the issue's other criteria: the fast path at least this many times the exercise's loop on the whole table's
#: projected time, the whole table within this many seconds, and any one job's GPU memory under this many bytes
TARGET_RATIO, TARGET_SECONDS, MEMORY_LIMIT = 10.0, 15 * 60, 8 * 10**9


def rates(bench: dict, path: str, row: str | None = None) -> dict[str, float] | None:
    """The bench's seconds on `path` (the row's own if benched, else the mean of the benched rows): per training
    step ("step"), per evaluated review ("review"), warm-up beyond its steps ("warmup"), loading ("load"), one
    checkpoint ("checkpoint") and the trained parameters ("artifact"); a number the bench did not time is 0."""
    rows = bench.get("rows") or {}
    chosen = [rows[row]] if row in rows else list(rows.values())
    measured = [r[path] for r in chosen if path in r]
    if not measured:
        return None
    keys = {"step": "step_seconds", "review": "eval_seconds_per_review", "warmup": "setup_seconds", "load": "load_seconds",
            "checkpoint": "checkpoint_seconds", "artifact": "artifact_seconds"}
    return {k: sum(m.get(field, 0.0) for m in measured) / len(measured) for k, field in keys.items()}


def project_job(bench: dict, result: dict, n_train: int, n_eval: int) -> dict[str, float] | None:
    """A job's projected seconds (see the module docstring): {"work": train + eval, "total": the whole job};
    None without a bench."""
    path = (result.get("speed") or {}).get("path", "fast")
    r = rates(bench, path, result.get("job"))
    if r is None:
        return None
    config = result.get("config") or {}
    epochs = int(config.get("epochs") or 0)
    steps = epochs * math.ceil(n_train / int(config.get("batch_size") or 32))
    work = steps * r["step"] + max(epochs, 1) * n_eval * r["review"] + (r["warmup"] if steps else 0.0)
    writes = epochs * r["checkpoint"] + r["artifact"] if steps else 0.0
    return {"work": work, "total": r["load"] + work + writes}


def comparison(bench: dict | None, results: list[dict], n_train: int, n_eval: int, wall: float | None,
               expected_jobs: int, extra: dict | None = None) -> dict[str, Any]:
    """Projected vs measured for the scaled run-all: per job (train + eval, and whole) and in total (the sum of the
    jobs' train + eval, and the run-all's wall time). `extra` (`overheads`'s output) adds each job's data and the
    tables and plots to the whole-time projections."""
    data = (extra or {}).get("data") or {}
    jobs = []
    for res in sorted(results, key=lambda r: (r.get("row", 99), r.get("job", ""))):
        projected = project_job(bench, res, n_train, n_eval) if bench else None
        if projected is not None:
            projected["total"] += data.get(res.get("job"), 0.0)
        measured = total = None
        if res.get("status") == "completed":
            measured = sum((e.get("train_seconds") or 0) + (e.get("eval_seconds") or 0) for e in res.get("epochs", []))
            if res.get("setup_seconds") is not None and res.get("wall_seconds") is not None:
                total = res["setup_seconds"] + res["wall_seconds"]
        jobs.append({"job": res.get("job"), "status": res.get("status"), "speed": res.get("speed") or {},
                     "epochs": (res.get("config") or {}).get("epochs"), "train_seconds": res.get("train_seconds"),
                     "eval_seconds": res.get("eval_seconds"), "wall_seconds": res.get("wall_seconds"),
                     "setup_seconds": res.get("setup_seconds"), "save_seconds": res.get("save_seconds"),
                     "measured": measured, "measured_total": total,
                     "projected": projected["work"] if projected else None, "projected_total": projected["total"] if projected else None,
                     "peak_gpu_memory_bytes": res.get("peak_gpu_memory_bytes"),
                     "peak_gpu_memory_reserved_bytes": res.get("peak_gpu_memory_reserved_bytes")})
    complete = len(jobs) == expected_jobs and all(j["status"] == "completed" for j in jobs)
    projected = sum(j["projected"] for j in jobs) if jobs and all(j["projected"] is not None for j in jobs) else None
    projected_wall = None
    if projected is not None:
        projected_wall = ((bench or {}).get("startup_seconds", 0.0) + sum(j["projected_total"] for j in jobs)
                          + ((extra or {}).get("tables_plots") or 0.0))
    measured = sum(j["measured"] for j in jobs) if complete else None
    outside = None
    if complete and wall is not None and all(j["measured_total"] is not None for j in jobs):
        outside = wall - sum(j["measured_total"] for j in jobs)
    out = {"jobs": jobs, "complete": complete, "projected": projected, "projected_wall": projected_wall, "measured": measured,
           "wall": wall, "outside_jobs": outside, "overheads": extra}
    for key, versus in (("measured", projected), ("wall", projected_wall)):
        value = out[key]
        if versus and value is not None and complete:
            out[f"{key}_ratio"] = value / versus
            out[f"{key}_within"] = abs(value / versus - 1) <= TOLERANCE
    return out


def checks(bench: dict | None, comp: dict, concurrency: int = 1) -> list[dict[str, Any]]:
    """The issue's checks, each {"check", "value", "met"} (met: True, False, or None when not measured).

    The whole table on each path is the mean of the benched rows' projections (each row costing what a benched row
    costs); with `ptuning bench --concurrency K` the fast path's table at K processes counts too (labelled)."""
    out: list[dict[str, Any]] = []
    rows = (bench or {}).get("rows") or {}
    paths = {p: [r[p]["table_seconds"] for r in rows.values() if "table_seconds" in r.get(p, {})] for p in ("faithful", "fast")}
    tables = {p: sum(v) / len(v) for p, v in paths.items() if v}
    baseline, best, best_label = tables.get("faithful"), tables.get("fast"), "one job at a time"
    together = (bench or {}).get("concurrent") or {}
    reference = (rows.get(together.get("row")) or {}).get("faithful", {}).get("table_seconds")
    if together.get("table_seconds") and reference and (best is None or together["table_seconds"] < best):
        # the K processes ran one row: compare with that row's exercise loop, as the bench does
        baseline, best, best_label = reference, together["table_seconds"], f"{together['concurrency']} jobs at once"
    def check(label: str, value: str, met: bool | None) -> None:
        out.append({"check": label, "value": value, "met": met})

    if baseline and best:
        ratio = baseline / best
        check(f"whole table, fast path ({best_label}) vs the exercise's loop (bench projection)",
              f"{ratio:.2f}× (target ≥ {TARGET_RATIO:g}×)", ratio >= TARGET_RATIO)
        check(f"whole table on the fast path ({best_label}, bench projection)",
              f"{_s(best)} (target ≤ {TARGET_SECONDS // 60} min)", best <= TARGET_SECONDS)
    else:
        check("whole table, fast path vs the exercise's loop", "not measured (no bench)", None)
    runall = "scaled run-all's wall time vs its projection"
    if concurrency > 1:
        check(runall, f"not compared (jobs ran {concurrency} at a time)", None)
    elif "wall_ratio" in comp:
        check(runall, f"{comp['wall_ratio']:.2f}× (within {TOLERANCE:.0%})", comp["wall_within"])
    else:
        check(runall, "not compared (see section 2)", None)
    peaks = [j.get("peak_gpu_memory_reserved_bytes") or j.get("peak_gpu_memory_bytes") for j in comp.get("jobs", [])]
    peaks = [p for p in peaks if p is not None]
    memory = "largest peak GPU memory reserved by one job (run-all)"
    if peaks:
        check(memory, f"{max(peaks) / 1e9:.2f} GB (target < {MEMORY_LIMIT / 1e9:g} GB)", max(peaks) < MEMORY_LIMIT)
    else:
        check(memory, "not measured (no GPU job)", None)
    return out


def overheads(model_ref: str, dataset_ref: str, n_train: int, n_eval: int, results_dir: Path | None = None,
              jobs_dir: Path | None = None) -> dict[str, Any]:
    """Seconds the run-all spends besides the bench's parts, timed with the run-all's own functions:
    {"data": {job: loading the splits (the first job) and tokenizing its train and test reviews, with a cache that
    starts empty and is shared job after job, as in the run-all}, "tables_plots": writing the plots and making the
    tables of `results_dir` (None without one)}."""
    import os
    import tempfile
    import time

    from transformers import AutoTokenizer

    from ptuning import protocol
    from ptuning.methods import build_method
    from ptuning.run import runner
    from ptuning.settings import load_all_jobs

    jobs = [job.override(model=model_ref, dataset=dataset_ref, train_limit=n_train, eval_limit=n_eval)
            for job in load_all_jobs(jobs_dir)]
    tokenizer = AutoTokenizer.from_pretrained(model_ref, use_fast=True, legacy=True)  # as ptuning.model.load_model
    data: dict[str, float] = {}
    before = os.environ.get("PTUNING_CACHE")
    with tempfile.TemporaryDirectory(prefix="ptuning-overheads-") as cache:
        os.environ["PTUNING_CACHE"] = cache
        loaded: dict = {}  # the splits, loaded by the first job and shared, as in one run-all process
        try:
            for job in jobs:
                placeholders = build_method(job.method, job.implementation, job.knobs).placeholder_tokens()
                t0 = time.perf_counter()
                protocol.build_datasets(job, tokenizer, placeholders, runner.splits_for(job, loaded))
                data[job.name] = time.perf_counter() - t0
        finally:
            if before is None:
                os.environ.pop("PTUNING_CACHE", None)
            else:
                os.environ["PTUNING_CACHE"] = before
    tables_plots = None
    if results_dir is not None and Path(results_dir).is_dir():
        from ptuning.report.plots import plot_paths, write_plots
        from ptuning.report.results import load_results
        from ptuning.report.tables import tables

        t0 = time.perf_counter()
        write_plots(jobs, load_results(Path(results_dir)), Path(results_dir))
        tables(jobs, load_results(Path(results_dir)), plot_paths(Path(results_dir)))
        tables_plots = time.perf_counter() - t0
    return {"data": data, "tables_plots": tables_plots}


# ---------------------------------------------------------------------------------------------
# the report


def _s(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.{2 if abs(value) < 10 else 1}f} s" + (f" ({value / 60:.2f} min)" if value >= 60 else "")


def _gib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**30:.2f} GiB"


def _demote(markdown: str) -> str:
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def report(*, card: str | None, bench: dict | None, bench_markdown: str | None, bench_status: str, comp: dict,
           runall_status: str, settings: dict, extras: list[tuple[str, str]], versions: dict[str, str]) -> str:
    """BENCHMARKS.md: what this GPU check measured; a step that failed says so instead of a number."""
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    device = card or (bench or {}).get("device_name") or settings.get("device", "?")
    lines = [
        f"# ptuning GPU check on {device}",
        "",
        f"- date: {now}; card (nvidia-smi): {card or '–'}; device: {settings.get('device')}",
        "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "- written by `scripts/gpu-check.sh`: every number below was measured in this run, or is a projection computed "
        "from the bench numbers of this run and labelled so. Models are random-weight, data synthetic: accuracies mean nothing.",
        "",
        "## The issue's checks",
        "",
        "| check | measured | met |",
        "|---|---|---|",
        *[f"| {c['check']} | {c['value']} | {({True: 'yes', False: '**NO**', None: '–'})[c['met']]} |"
          for c in checks(bench, comp, int(settings.get("concurrency", 1)))],
        "",
        "## 1. Bench: the exercise's loop and the fast path, one run",
        "",
    ]
    if bench_markdown:
        lines += [_demote(bench_markdown.strip()), ""]
    lines += [f"bench step: {bench_status}", ""]

    n = settings
    lines += [
        "## 2. Scaled-down run-all: measured vs projected",
        "",
        f"- `ptuning run-all` over {n['expected_jobs']} jobs (every row + zero-shot), {n['epochs']} epoch(s), "
        f"`--train-limit {n['train_limit']} --eval-limit {n['eval_limit']}`, `--concurrency {n['concurrency']}`, "
        f"`--device {n['device']}`; model: random weights, {n['model']}; data: synthetic IMDb-length reviews ({n['data']})",
        f"- run-all step: {runall_status}",
        "- projection, per job on its path (the benched row's own numbers, else the mean of the benched rows): train + "
        "eval = training steps × the bench's step time + evaluated reviews × its eval time per review + its warm-up's "
        "cost beyond its steps (graph capture) once; the whole job = that + loading the saved model with its method "
        "onto the device + a checkpoint per epoch + the trained parameters written"
        + (" + its data (splits loaded, reviews tokenized: timed apart, `gpucheck overheads`). The run-all's wall time = "
           "the bench's process start + every whole job + the tables and plots (timed apart)" if comp.get("overheads") else
           ". The run-all's wall time = the bench's process start + every whole job; the data (loading, tokenizing), "
           "tables and plots were not timed apart and are not in it")
        + ("; with concurrency > 1 the jobs overlap and share the device: neither the sum of their times nor the wall time "
           "is comparable with it" if int(n["concurrency"]) > 1 else ""),
        "",
    ]
    within = {True: "yes", False: "**NO**"}
    done = sum(j["status"] == "completed" for j in comp.get("jobs", []))
    overlap = int(n["concurrency"]) > 1
    if overlap:
        why = f"not compared: jobs ran {n['concurrency']} at a time, sharing the device"
    elif not comp.get("projected"):
        why = "not compared: no projection (the bench did not finish)"
    elif not comp.get("complete"):
        why = f"not compared: {done} of {n['expected_jobs']} jobs completed"
    else:
        why = ""

    def versus(key: str) -> str:
        if f"{key}_ratio" not in comp or overlap:
            return why
        return f"{comp[f'{key}_ratio']:.2f}× projected; within {TOLERANCE:.0%}: {within[comp[f'{key}_within']]}"

    rows = [("projected: the jobs' train + eval (from this run's bench)", _s(comp.get("projected")), "")]
    if comp.get("measured") is not None:
        rows.append(("measured: sum of the jobs' train + eval seconds (result JSONs)", _s(comp["measured"]), versus("measured")))
    rows.append(("projected: run-all wall time (process start + the whole jobs"
                 + (" + tables and plots)" if comp.get("overheads") else ")"), _s(comp.get("projected_wall")), ""))
    if comp.get("wall") is not None:
        rows.append(("measured: run-all wall time (start to tables printed)", _s(comp["wall"]), versus("wall")))
        if comp.get("outside_jobs") is not None and not overlap:
            rows.append(("measured: outside the jobs (wall − every job's setup + wall): process start, tables, plots",
                         _s(comp["outside_jobs"]), ""))
    if comp.get("overheads"):
        o = comp["overheads"]
        rows.append(("timed apart: the jobs' data (splits loaded, reviews tokenized; in the whole jobs above)",
                     _s(sum((o.get("data") or {}).values())), ""))
        rows.append(("timed apart: tables and plots (in the run-all's projected wall time)", _s(o.get("tables_plots")), ""))
    lines += ["| what | time | vs projection |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows] + [""]
    if comp.get("jobs"):
        lines += ["| job | status | path, precision | epochs | train | eval | setup (load, tokenize, device) | writes (checkpoints, "
                  "parameters) | whole job (setup + wall) | projected train + eval | measured / projected | projected whole job "
                  "| whole / projected | peak GPU memory allocated | peak reserved (what the process held) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

        def ratio(a: float | None, b: float | None) -> str:
            return f"{a / b:.2f}×" if a is not None and b else "–"

        for j in comp["jobs"]:
            speed = j["speed"]
            lines.append(f"| {j['job']} | {j['status']} | {speed.get('path', '–')}, {speed.get('precision', '–')} | {j['epochs']} "
                         f"| {_s(j['train_seconds'])} | {_s(j['eval_seconds'])} | {_s(j.get('setup_seconds'))} "
                         f"| {_s(j.get('save_seconds'))} | {_s(j.get('measured_total'))} | {_s(j['projected'])} "
                         f"| {ratio(j['measured'], j['projected'])} | {_s(j.get('projected_total'))} "
                         f"| {ratio(j.get('measured_total'), j.get('projected_total'))} "
                         f"| {_gib(j['peak_gpu_memory_bytes'])} | {_gib(j.get('peak_gpu_memory_reserved_bytes'))} |")
        lines.append("")
    else:
        lines += ["no job finished: nothing measured", ""]
    if extras:
        lines += ["## 3. Other steps", ""]
        for title, text in extras:
            lines += [f"### {title}", "", _demote(_demote(text.strip())), ""]
    return "\n".join(lines).rstrip() + "\n"


def _read_json(path: str | None) -> dict | None:
    if not path or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _versions() -> dict[str, str]:
    out = {"Python": sys.version.split()[0]}
    try:
        import torch

        out["torch"] = torch.__version__ + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else "")
    except ImportError:
        out["torch"] = "not importable"
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        out["transformers"] = "not importable"
    return out


def _collector(on_line) -> tuple[list[str], Callable[[str], None]]:
    """(lines, add): `add` keeps a markdown line and hands it to `on_line` at once (a step stopped by its timeout
    keeps what it had measured)."""
    lines: list[str] = []

    def add(line: str) -> None:
        lines.append(line)
        if on_line is not None:
            on_line(line)

    return lines, add


class FastTrainer:
    """A row's random-weight model on the fast path, trained through the engine a run uses, in batches of 32 at
    t5-small's length limit (eagerly, or with the step as CUDA graphs): for the equivalence and the profile."""

    def __init__(self, job, config, device, seed: int, precision: str, graphs: bool):
        from ptuning.engine import make_engine
        from ptuning.speed.bench import build_model, path_settings

        self.device = device
        self.model, self.method = build_model(job, config, device, seed)
        # padded to the length buckets eagerly too, so that graphed and eager steps see the same shapes
        self.engine = make_engine(path_settings(job, "fast", 32, 256, precision, False, graphs), device, graphs=graphs, buckets=True)
        self.plan = self.engine.plan
        self.optimizer = self.engine.optimizer([p for _, p in self.method.trainable_parameters(self.model)], 1e-4, 0.01)

    def train(self, pairs, description: str, on_step=None) -> None:
        from ptuning.speed.bench import IdTokenizer, ListDataset

        loader = self.engine.train_loader(ListDataset(pairs), IdTokenizer.pad_token_id)
        self.engine.train_epoch(self.model, loader, self.optimizer, description=description, on_step=on_step)

    @property
    def step(self):
        """The graphed step (None eagerly)."""
        return self.engine.graphed_step


def equivalence(device, rows=("full_ft", "lora_8_peft"), steps: int = 30, size: str = "t5-small", seed: int = 0,
                on_line=None) -> str:
    """Markdown: training losses with the step as CUDA graphs vs eager, same weights, data and updates, dropout off.

    `on_line` gets each line as soon as it is known (the GPU check's step may be stopped by its timeout).

    Dropout is off so that both runs compute the same thing (with it on they draw different masks); what is
    left is kernel rounding (fp32) or bf16 rounding. A graph that replayed stale inputs, missed zeroing the
    gradients or updated the wrong tensors would show here as diverging losses.
    """
    import torch

    from ptuning.settings import load_job
    from ptuning.speed.bench import job_placeholders, synthetic_examples
    from ptuning.testing.tiny import sized_config

    config = sized_config(size)
    config.dropout_rate = 0.0
    lines, add = _collector(on_line)
    for line in (f"graphed vs eager training, {steps} steps of batch 32, dropout 0, same seed and data, on {device}", "",
                 "| row | precision | first loss (eager) | last loss (eager) | max relative difference over the steps | graphs |",
                 "|---|---|---|---|---|---|"):
        add(line)
    for ref in rows:
        job = load_job(ref)
        pairs = synthetic_examples(steps * 32, 256, config.vocab_size, job_placeholders(job), seed + 1)
        for precision in ("fp32", "bf16"):
            losses, info = {}, ""
            for graphs in (False, True):
                trainer = FastTrainer(job, config, device, seed, precision, graphs)
                for module in trainer.model.modules():  # the method's own dropout too (PEFT's lora_dropout)
                    if isinstance(module, torch.nn.Dropout):
                        module.p = 0.0
                seen: list[float] = []
                trainer.train(pairs, "equivalence", on_step=lambda s, v: seen.append(v))
                losses[graphs] = seen
                if trainer.step is not None:
                    d = trainer.step.describe()
                    info = f"failed: {d['failure']}" if d["failure"] else f"{d['graphs']} captured, {d['replays']} replays"
                trainer = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            eager, graphed = losses[False], losses[True]
            worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(eager, graphed)) if eager and len(eager) == len(graphed) else float("nan")
            add(f"| {job.name} | {precision} | {eager[0]:.5f} | {eager[-1]:.5f} | {worst:.2e} | {info} |")
    return "\n".join(lines) + "\n"


def _kernel_table(prof, device, per: float, top: int) -> tuple[float, float, list[str]]:
    """(busy µs per unit, kernels per unit, markdown rows of the `top` entries) from a finished profiler, `per` units
    (steps, or thousands of reviews) profiled: on CUDA the GPU kernels by their own device time; elsewhere the
    operators by their own CPU time."""
    from torch.autograd import DeviceType

    cuda = device.type == "cuda"
    events = [e for e in prof.key_averages() if (e.device_type == DeviceType.CUDA if cuda else e.device_type == DeviceType.CPU)]
    timed = [(e.self_device_time_total if cuda else e.self_cpu_time_total, e) for e in events]
    timed = sorted(((t, e) for t, e in timed if t > 0), key=lambda te: -te[0])
    total = sum(t for t, _ in timed)
    rows = []
    for t, e in timed[:top]:
        name = e.key.replace("|", "/")
        name = name if len(name) <= 90 else name[:87] + "..."
        rows.append(f"| `{name}` | {e.count / per:,.1f} | {t / per:,.0f} | {100 * t / total:.1f}% |")
    return total / per, sum(e.count for _, e in timed) / per, rows


def profile(device, rows=("full_ft", "lora_8_peft"), steps: int = 10, size: str = "t5-small", seed: int = 0, top: int = 15,
            eval_reviews: int = 512, on_line=None) -> str:
    """Markdown: where the fast path's time goes, training (eager and, on CUDA, replayed as a CUDA graph) and evaluation.

    For each row and mode: the wall time per step (timed without the profiler), then under `torch.profiler` the
    time per step the GPU spent in kernels (on CPU: in operators), their number per step, and the `top` kernels by
    their own time. Busy time close to the wall time means the step is bound by its kernels (fewer or cheaper
    kernels are the lever); far below it, by launches and Python (graphs are). Then the same for the fast
    evaluation (`fast.fast_predict`, per 1,000 reviews) on the first row. Batches of 32 synthetic reviews at IMDb's
    lengths, the row's method and the job's precision plan, dropout on in training.
    """
    import time

    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from ptuning.settings import load_job
    from ptuning.speed.bench import IdTokenizer, ListDataset, job_placeholders, synthetic_examples
    from ptuning.testing.tiny import sized_config

    cuda = device.type == "cuda"
    config = sized_config(size)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    lines, add = _collector(on_line)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def section(title: str, run, per: float, unit: str, note: str = "") -> None:
        """`run` timed, then `run` again under the profiler; `per` units of `unit` each time."""
        t0 = time.perf_counter()
        run()
        sync()
        wall = (time.perf_counter() - t0) / per * 1e6
        with torch_profile(activities=activities) as prof:
            run()
            sync()
        busy, count, table = _kernel_table(prof, device, per, top)
        add("")
        add(f"### {title}")
        add("")
        add(f"wall {wall / 1000:,.2f} ms per {unit}; busy {busy / 1000:,.2f} ms per {unit} ({100 * busy / wall:.0f}% of the wall "
            f"time, under the profiler); {count:,.0f} {'kernels' if cuda else 'operator calls'} per {unit}")
        if note and count == 0:
            add(note)
        add("")
        add(f"| {'kernel' if cuda else 'operator'} | calls per {unit} | µs per {unit} | share |")
        add("|---|---|---|---|")
        for row in table:
            add(row)

    what = "GPU kernels" if cuda else "CPU operators (no GPU: nothing here says anything about one)"
    add(f"on {device}, {size} shapes; training: batches of 32, {steps} steps timed, then profiled, per mode; evaluation: "
        f"{eval_reviews} reviews; busy = time in {what}")
    for ref in rows:
        job = load_job(ref)
        pairs = synthetic_examples((3 + steps) * 32, 256, config.vocab_size, job_placeholders(job), seed + 1)
        for graphs in (False, True) if cuda else (False,):
            trainer = FastTrainer(job, config, device, seed, "auto", graphs)
            plan = trainer.plan
            trainer.train(pairs[: 3 * 32], "profile warm-up")  # graphs: the eager first step and the capture
            sync()
            mode = "CUDA graph" if graphs else "eager"
            if graphs and trainer.step.failure:
                mode += f" (capture failed: {trainer.step.failure}; these steps ran eagerly)"
            section(f"{job.name}, training, {mode}, {plan.precision}", lambda: trainer.train(pairs[3 * 32 :], "profile"), steps, "step",
                    "(the profiler recorded no kernel inside the graph replays: read the eager table for the kernel mix)")
            if ref == rows[0] and graphs == cuda:  # evaluation once, on the first row's trained model
                eval_pairs = synthetic_examples(eval_reviews, 256, config.vocab_size, job_placeholders(job), seed + 2)
                evals = ListDataset(eval_pairs)

                def decode() -> None:
                    trainer.engine.predict(generation, evals, IdTokenizer(), "profile eval")

                generation = trainer.method.generation_model(trainer.model)
                trainer.engine.predict(generation, ListDataset(eval_pairs[:8]), IdTokenizer(), "profile eval warm-up")
                section(f"{job.name}, evaluation (greedy decode, sorted batches of {plan.eval_batch_size}), {plan.precision}", decode,
                        eval_reviews / 1000, "1,000 reviews")
            trainer = generation = None
            if cuda:
                torch.cuda.empty_cache()
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptuning.speed.gpucheck", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("assets", help="build the model and data; print MODEL_DIR DATA_DIR")
    a.add_argument("directory")
    a.add_argument("--n-train", type=int, default=4096)
    a.add_argument("--n-test", type=int, default=4096)
    a.add_argument("--size", choices=["t5-small", "small"], default="t5-small")
    a.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("equivalence", help="graphed vs eager training losses (markdown), dropout off")
    e.add_argument("--device", default="cuda")
    e.add_argument("--steps", type=int, default=30)
    e.add_argument("--size", choices=["t5-small", "small"], default="t5-small")
    e.add_argument("--rows", default="full_ft,lora_8_peft")
    e.add_argument("--output")
    pr = sub.add_parser("profile", help="where a training step's time goes: kernels per step, eager and graphed (markdown)")
    pr.add_argument("--device", default="cuda")
    pr.add_argument("--steps", type=int, default=10)
    pr.add_argument("--size", choices=["t5-small", "small"], default="t5-small")
    pr.add_argument("--rows", default="full_ft,lora_8_peft")
    pr.add_argument("--top", type=int, default=15)
    pr.add_argument("--eval-reviews", type=int, default=512)
    pr.add_argument("--output")
    o = sub.add_parser("overheads", help="time the run-all's data per job and its tables and plots (JSON)")
    o.add_argument("--model", required=True)
    o.add_argument("--dataset", required=True)
    o.add_argument("--train-limit", type=int, required=True)
    o.add_argument("--eval-limit", type=int, required=True)
    o.add_argument("--results", help="the run-all's output directory (for the tables and plots)")
    o.add_argument("--output", required=True, help="write the JSON here")
    r = sub.add_parser("report", help="write BENCHMARKS.md from what the script measured")
    r.add_argument("--overheads", help="`overheads`'s JSON, if it ran")
    r.add_argument("--bench-json")
    r.add_argument("--bench-md")
    r.add_argument("--bench-status", default="not run")
    r.add_argument("--results", required=True, help="the run-all's output directory")
    r.add_argument("--wall", type=float, help="the run-all's wall time in seconds")
    r.add_argument("--runall-status", default="not run")
    r.add_argument("--card")
    r.add_argument("--device", default="cuda")
    r.add_argument("--epochs", type=int, required=True)
    r.add_argument("--train-limit", type=int, required=True)
    r.add_argument("--eval-limit", type=int, required=True)
    r.add_argument("--concurrency", type=int, default=1)
    r.add_argument("--expected-jobs", type=int, default=11)
    r.add_argument("--model-desc", default="t5-small shapes (60,506,624 parameters)")
    r.add_argument("--data-desc", default="48% at 256 tokens, mean about 200")
    r.add_argument("--extra", action="append", default=[], metavar="TITLE=FILE", help="a section from a file, if it exists")
    r.add_argument("--output", required=True)
    r.add_argument("--summary-json", help="also write the comparison as JSON here")
    args = parser.parse_args(argv)

    if args.command == "assets":
        from ptuning.testing.tiny import build_t5_small_shaped

        model_dir, data_dir = build_t5_small_shaped(Path(args.directory), args.n_train, args.n_test, args.seed, args.size)
        print(model_dir, data_dir)
        return 0

    if args.command in ("equivalence", "profile"):
        import torch

        output = open(args.output, "w") if args.output else None

        def line(text: str) -> None:  # each row as soon as it is measured: a timeout keeps the rows before it
            print(text, flush=True)
            if output is not None:
                output.write(text + "\n")
                output.flush()

        rows = [r for r in args.rows.split(",") if r]
        try:
            if args.command == "equivalence":
                equivalence(torch.device(args.device), rows, args.steps, args.size, on_line=line)
            else:
                profile(torch.device(args.device), rows, args.steps, args.size, top=args.top, eval_reviews=args.eval_reviews,
                        on_line=line)
        finally:
            if output is not None:
                output.close()
        return 0

    if args.command == "overheads":
        measured = overheads(args.model, args.dataset, args.train_limit, args.eval_limit, Path(args.results) if args.results else None)
        Path(args.output).write_text(json.dumps(measured, indent=2) + "\n")
        print(json.dumps(measured))
        return 0

    from ptuning.report.results import load_results

    bench = _read_json(args.bench_json)
    results = [r for runs in load_results(Path(args.results)).values() for r in runs] if Path(args.results).is_dir() else []
    comp = comparison(bench, results, args.train_limit, args.eval_limit, args.wall, args.expected_jobs, _read_json(args.overheads))
    bench_md = Path(args.bench_md).read_text() if args.bench_md and Path(args.bench_md).is_file() else None
    extras = []
    for spec in args.extra:
        title, _, path = spec.partition("=")
        if path and Path(path).is_file() and Path(path).read_text().strip():
            extras.append((title, Path(path).read_text()))
    settings = {"device": args.device, "epochs": args.epochs, "train_limit": args.train_limit, "eval_limit": args.eval_limit,
                "concurrency": args.concurrency, "expected_jobs": args.expected_jobs, "model": args.model_desc, "data": args.data_desc}
    text = report(card=args.card, bench=bench, bench_markdown=bench_md, bench_status=args.bench_status, comp=comp,
                  runall_status=args.runall_status, settings=settings, extras=extras, versions=_versions())
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps({"settings": settings, "checks": checks(bench, comp, args.concurrency),
                                                       "comparison": comp, "bench": bench}, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
