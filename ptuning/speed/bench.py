"""`ptuning bench`: the exercise's loop and the fast path, timed in one run on the current device.

No download: the model is a random-weight T5 built from a configuration (`--size t5-small` has the hub
checkpoint's shapes and FLOPs; `--size small` is a tiny one for a CPU check in seconds) and the data are
synthetic token streams with IMDb-like lengths (about 48% of reviews at the 256-token limit, the rest
uniform in [40, 256], mean about 200). Both paths get the same weights, the same batches, the same
optimizer settings; only the machinery differs. Times are for this device, this run: compare paths within
one run, not across machines.
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch


EPOCH_STEPS = 782  # 25,000 reviews at batch 32
EVAL_REVIEWS = 25_000
TABLE_ROWS, TABLE_EPOCHS = 10, 10
LABEL_IDS = {"t5-small": [[2841, 1], [1465, 1]]}  # "negative</s>", "positive</s>" in the t5-small vocabulary


def synthetic_examples(n: int, max_length: int, vocab: int, placeholders: int, seed: int, full_fraction: float = 0.48,
                       min_length: int = 40) -> list[tuple[list[int], list[int]]]:
    """(input_ids, target_ids) pairs: `full_fraction` at max_length, the rest uniform in [min_length, max_length]."""
    rng = random.Random(seed)
    labels = LABEL_IDS["t5-small"] if vocab > 2841 else [[3, 1], [4, 1]]
    out = []
    for _ in range(n):
        length = max_length if rng.random() < full_fraction else rng.randint(min(min_length, max_length), max_length)
        text = max(1, length - placeholders - 1)
        ids = [0] * placeholders + [rng.randrange(3, vocab) for _ in range(text)] + [1]
        out.append((ids, list(labels[rng.randrange(2)])))
    return out


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, pairs):
        self.inputs = [x for x, _ in pairs]
        self.targets = [y for _, y in pairs]

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return self.inputs[i], self.targets[i]


class IdTokenizer:
    """Just enough of a tokenizer for evaluation on synthetic ids: pad id, and ids decoded to a space-joined string."""

    pad_token_id = 0
    special = {0, 1, 2}

    def batch_decode(self, rows, skip_special_tokens=True):
        rows = rows.tolist() if hasattr(rows, "tolist") else rows
        return [" ".join(str(t) for t in r if not (skip_special_tokens and t in self.special)) for r in rows]


@dataclass
class PathResult:
    name: str
    description: str
    step_seconds: float
    tokens_per_step: float
    params: int
    eval_seconds: float  # for the bench's eval reviews
    eval_reviews: int
    peak_memory: int | None
    predictions: list[str] = field(default_factory=list)
    note: str = ""
    setup_seconds: float = 0.0  # the warm-up's cost beyond its steps (capture, compile, lazy initialisation)
    windows: dict = field(default_factory=dict)  # wall-clock (time.time) start and end of the timed train and eval parts
    peak_reserved: int | None = None  # what the process held (a CUDA graph's pool included)
    # what a job does besides training and evaluating, timed with the runner's own calls (time_load, time_writes,
    # time_startup)
    load_seconds: float = 0.0  # the saved model read from disk, the method applied, moved to the device (once per job)
    checkpoint_seconds: float = 0.0  # one checkpoint of this row's state written (once per epoch)
    artifact_seconds: float = 0.0  # the trained parameters written (once per job)
    startup_seconds: float = 0.0  # a fresh process importing ptuning and initialising the device (once per run)
    collate_seconds: float = 0.0  # making one training batch on the CPU (the next is made while a step runs)

    @property
    def steps_per_second(self) -> float:
        return 1.0 / self.step_seconds

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.step_seconds

    @property
    def tflops(self) -> float:
        return 6.0 * self.params * self.tokens_per_second / 1e12

    @property
    def eval_epoch_seconds(self) -> float:
        return self.eval_seconds * EVAL_REVIEWS / self.eval_reviews

    @property
    def epoch_train_seconds(self) -> float:
        return EPOCH_STEPS * self.step_seconds

    @property
    def job_fixed_seconds(self) -> float:
        """A whole job's time besides its train and eval epochs: load, warm-up's extra, checkpoints, parameters."""
        return self.load_seconds + self.setup_seconds + TABLE_EPOCHS * self.checkpoint_seconds + self.artifact_seconds

    @property
    def table_seconds(self) -> float:
        return self.startup_seconds + TABLE_ROWS * (TABLE_EPOCHS * (self.epoch_train_seconds + self.eval_epoch_seconds)
                                                    + self.job_fixed_seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(job, config, device: torch.device, seed: int):
    """A random-weight T5 of `config` with the job's method applied, on `device`: (model, method)."""
    from transformers import T5ForConditionalGeneration

    from ptuning.methods import build_method

    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    method = build_method(job.method, job.implementation, job.knobs)
    model = method.apply(model)
    model.to(device)
    return model, method


def path_settings(job, path: str, batch_size: int, max_length: int, precision: str = "auto", compile: bool = False,
                  cuda_graphs: bool = True, eval_batch_size: int | None = None, fast_eval_batch_size: int | None = None):
    """The job's settings on one path ('faithful' or 'fast') with the bench's sizes: what `make_engine` is given."""
    s = job.settings
    return dataclasses.replace(s, speed=path, precision=precision, compile=compile, cuda_graphs=cuda_graphs, batch_size=batch_size,
                               max_length=max_length, eval_batch_size=eval_batch_size or s.eval_batch_size,
                               fast_eval_batch_size=fast_eval_batch_size or s.fast_eval_batch_size)


def bench_path(path: str, job, config, train_pairs, warmup_pairs, eval_pairs, device: torch.device, batch_size: int,
               seed: int, precision: str = "auto", compile: bool = False, eval_batch_size: int | None = None,
               fast_eval_batch_size: int | None = None, cuda_graphs: bool = True,
               barrier: Callable[[str], None] | None = None, scratch: Path | None = None) -> PathResult:
    """Time training steps and an evaluation pass on one path ('faithful' or 'fast'), through the engine a run of this
    job would use; with `scratch` (a directory), also the job's writes: a checkpoint and the trained parameters, as the
    runner writes them."""
    from ptuning.engine import make_engine
    from ptuning.methods import count_parameters

    max_length = max(len(x) for x, _ in train_pairs)
    settings = path_settings(job, path, batch_size, max_length, precision, compile, cuda_graphs, eval_batch_size, fast_eval_batch_size)
    engine = make_engine(settings, device, lambda m: print(f"bench: {m}", file=sys.stderr))
    model, method = build_model(job, config, device, seed)
    params = count_parameters(model)[0]
    optimizer = engine.optimizer([p for _, p in method.trainable_parameters(model)], 1e-4, 0.01)
    tok = IdTokenizer()
    n_steps = len(train_pairs) // batch_size
    tokens = sum(len(x) for x, _ in train_pairs) / max(n_steps, 1)

    def run(pairs):  # in order (no shuffle): both paths see the same batches
        engine.train_epoch(model, engine.train_loader(ListDataset(pairs), tok.pad_token_id), optimizer, description="bench")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    run(warmup_pairs)  # first steps: lazy initialisation, and a graph capture (or compile) per new batch shape
    _sync(device)
    warmup_seconds = time.perf_counter() - t0
    if barrier is not None:  # several processes at once: each timed part starts when every process is ready for it
        barrier("train")
    windows = {"train_start": time.time()}
    t0 = time.perf_counter()
    run(train_pairs)
    _sync(device)
    step_seconds = (time.perf_counter() - t0) / max(n_steps, 1)
    windows["train_end"] = time.time()
    # what the warm-up cost beyond its steps at the steady rate: once per run (per batch shape), on top of the steps
    setup_seconds = max(0.0, warmup_seconds - (len(warmup_pairs) // batch_size) * step_seconds)

    eval_ds = ListDataset(eval_pairs)
    _sync(device)
    if barrier is not None:
        barrier("eval")
    windows["eval_start"] = time.time()
    t0 = time.perf_counter()
    predictions, _ = engine.predict(model, eval_ds, tok, "bench eval")
    _sync(device)
    eval_seconds = time.perf_counter() - t0
    windows["eval_end"] = time.time()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    reserved = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None
    description = engine.summary()
    graphs = engine.describe().get("cuda_graphs")
    if graphs is not None:
        if graphs["failure"]:
            description += f"; **graph capture failed, trained eagerly**: {graphs['failure']}"
        else:
            description += f"; {graphs['graphs']} graph(s), {graphs['replays']} replays"
    note = ""
    if path == "fast" and barrier is None:  # the decode itself vs generate, at the fast path's own precision (untimed)
        reference = make_engine(dataclasses.replace(settings, speed="faithful", precision=engine.plan.precision), device)
        note = "yes" if reference.predict(model, eval_ds, tok, "bench check")[0] == predictions else "NO"
    collate = engine.collator(ListDataset(train_pairs), tok.pad_token_id)
    batches = [train_pairs[i:i + batch_size] for i in range(0, n_steps * batch_size, batch_size)]
    t0 = time.perf_counter()
    for b in batches:
        collate(b)
    collate_seconds = (time.perf_counter() - t0) / max(len(batches), 1)
    writes = time_writes(job, method, model, optimizer, device, scratch) if scratch is not None else (0.0, 0.0)
    model = optimizer = engine = None  # free the weights before the next path (closures above still name them)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return PathResult(path, description, step_seconds, tokens, params, eval_seconds, len(eval_pairs), peak, predictions, note,
                      setup_seconds, windows, reserved, checkpoint_seconds=writes[0], artifact_seconds=writes[1],
                      collate_seconds=collate_seconds)


def time_writes(job, method, model, optimizer, device: torch.device, scratch: Path) -> tuple[float, float]:
    """(seconds to write one checkpoint, seconds to write the trained parameters) of this job's state, with the
    runner's own calls (`checkpoint.save_state`, `atomic_save` of `method.save`), into `scratch`; removed after."""
    from ptuning.atomic import atomic_save, remove
    from ptuning.run import checkpoint

    scratch = scratch / "writes"  # its own folder: the full fine-tuning artifact is called "model", like the saved base model
    ckpt = scratch / checkpoint.CHECKPOINT_FILE
    t0 = time.perf_counter()
    checkpoint.save_state(ckpt, {"job": job.name}, method, model, optimizer, device, generator=torch.Generator().get_state(),
                          epochs=[], step=0, loss_total=0.0, step_seconds=0.0, wall_seconds=0.0)
    t1 = time.perf_counter()
    if method.trains:
        atomic_save(scratch / method.artifact, lambda tmp: method.save(model, tmp))
    t2 = time.perf_counter()
    remove(scratch)
    return t1 - t0, t2 - t1


def time_load(job, config, device: torch.device, model_dir: Path) -> float:
    """Seconds to read a saved model of this shape (`from_pretrained`, as `ptuning.model.load_model` does; the
    tokenizer is not timed), apply the job's method and move it to the device."""
    from transformers import T5ForConditionalGeneration

    from ptuning.methods import build_method

    _sync(device)
    t0 = time.perf_counter()
    model = T5ForConditionalGeneration.from_pretrained(model_dir)
    model = build_method(job.method, job.implementation, job.knobs).apply(model)
    model.to(device)
    _sync(device)
    seconds = time.perf_counter() - t0
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return seconds


def time_startup(device: torch.device) -> float:
    """Seconds for a fresh Python process to import ptuning's runner (torch, transformers, the method libraries
    it imports at start) and initialise `device`: what each `ptuning` process pays before its first job."""
    import os
    import subprocess

    from ptuning.errors import PtuningError

    code = ("import torch, ptuning.cli, ptuning.run.runner\n"
            f"torch.zeros(1, device={str(device)!r}).sum().item()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # imports what this process imports
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PtuningError(f"bench: a fresh Python process could not import ptuning and use {device} ({last})")
    return seconds


# ---------------------------------------------------------------------------------------------
# report


def _fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def markdown(results: dict[str, tuple[PathResult, PathResult]], device: torch.device, size: str, params: int,
             steps: int, batch_size: int, eval_reviews: int, max_length: int = 256) -> str:
    import transformers

    cpu = device.type == "cpu"
    lines = [
        f"# ptuning bench on {device_name(device)}",
        "",
        *([f"> **A CPU measurement of the `{size}` model ({params:,} parameters).** Every figure below is about this CPU "
           "and this model, not a GPU and not a real run: the fast path's ratio to the faithful one, and the projected "
           "epoch and table times, do not carry over to a GPU (where the fast path adds bf16 and CUDA graphs) or to "
           "t5-small on this CPU (`ptuning run` without a GPU prints a measured estimate of one epoch). For GPU "
           "figures, run `make bench` on the GPU machine.", ""] if cpu else []),
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}",
        f"- device: {device} — {device_name(device)}" + (" (**CPU measurement**: says nothing about a GPU)" if device.type == "cpu" else ""),
        f"- model: random-weight T5 from the `{size}` configuration ({params:,} parameters before the method); "
        f"synthetic IMDb-length inputs (48% at {max_length} tokens, rest uniform {min(40, max_length)}–{max_length}), batch {batch_size}, {steps} timed training steps "
        f"after warm-up, {eval_reviews} eval reviews",
        "- TFLOP/s = 6 × parameters (all, frozen included) × input tokens per second / 1e12 (training estimate); "
        "tokens = non-pad input tokens",
        f"- projections: epoch = {EPOCH_STEPS} steps; eval epoch = {EVAL_REVIEWS:,} reviews; "
        f"table = a process start + {TABLE_ROWS} rows × ({TABLE_EPOCHS} epochs × (train epoch + eval epoch + checkpoint) "
        "+ load + warm-up beyond its steps + parameters written), each row assumed to cost what this row costs, one job "
        "at a time; not in it: tokenizing (cached after a run's first job of each input shape), tables and plots",
        f"- process start (a fresh Python importing ptuning, device initialised; once per run): "
        f"{_fmt_seconds(next(iter(results.values()))[0].startup_seconds) if results else '–'}",
        "",
    ]
    where = f" for this CPU and the {size} model" if cpu else ""
    for row, (a, b) in results.items():
        same = a.predictions == b.predictions

        def mem(r: PathResult, what: str = "peak_memory") -> str:
            value = getattr(r, what)
            return f"{value / 2**30:.2f} GiB" if value is not None else "–"

        table = [
            ("train step", f"{a.step_seconds * 1e3:.1f} ms", f"{b.step_seconds * 1e3:.1f} ms", a.step_seconds / b.step_seconds),
            ("steps/s", f"{a.steps_per_second:.2f}", f"{b.steps_per_second:.2f}", b.steps_per_second / a.steps_per_second),
            ("tokens/s", f"{a.tokens_per_second:,.0f}", f"{b.tokens_per_second:,.0f}", b.tokens_per_second / a.tokens_per_second),
            ("achieved TFLOP/s (6·N·tokens)", f"{a.tflops:.3g}", f"{b.tflops:.3g}", b.tflops / a.tflops),
            ("training batch made on the CPU (while the step before runs)", f"{a.collate_seconds * 1e3:.2f} ms",
             f"{b.collate_seconds * 1e3:.2f} ms", None),
            ("peak memory allocated", mem(a), mem(b), None),
            ("peak memory reserved (what the process held)", mem(a, "peak_reserved"), mem(b, "peak_reserved"), None),
            ("warm-up beyond its steps (once per run and batch shape)", _fmt_seconds(a.setup_seconds), _fmt_seconds(b.setup_seconds), None),
            ("saved model loaded, method applied, on the device (once per job)", _fmt_seconds(a.load_seconds),
             _fmt_seconds(b.load_seconds), None),
            ("checkpoint written (once per epoch)", _fmt_seconds(a.checkpoint_seconds), _fmt_seconds(b.checkpoint_seconds), None),
            ("trained parameters written (once per job)", _fmt_seconds(a.artifact_seconds), _fmt_seconds(b.artifact_seconds), None),
            (f"train epoch (782 steps, projected{where})", _fmt_seconds(a.epoch_train_seconds), _fmt_seconds(b.epoch_train_seconds),
             a.epoch_train_seconds / b.epoch_train_seconds),
            (f"eval epoch (25k reviews, projected{where})", _fmt_seconds(a.eval_epoch_seconds), _fmt_seconds(b.eval_epoch_seconds),
             a.eval_epoch_seconds / b.eval_epoch_seconds),
            (f"whole table (10 rows × 10 epochs, projected{where})", _fmt_seconds(a.table_seconds), _fmt_seconds(b.table_seconds),
             a.table_seconds / b.table_seconds),
        ]
        lines += [
            f"## {row}",
            "",
            f"- faithful: {a.description}",
            f"- fast: {b.description}",
            f"- fast path's greedy loop vs `generate` at the same precision ({b.description.split(',')[0]}), "
            f"{b.eval_reviews} bench reviews, identical predictions: {b.note}",
            f"- fast vs faithful path predictions identical: {'yes' if same else 'NO'}"
            + ("" if same or a.description.split(",")[0] == b.description.split(",")[0] else " (expected: they differ in precision)"),
            "",
            "| metric | faithful | fast | fast vs faithful |",
            "|---|---|---|---|",
        ]
        lines += [f"| {m} | {x} | {y} | {f'{r:.2f}×' if r else '–'} |" for m, x, y, r in table]
        lines.append("")
    return "\n".join(lines)


def summary(results: dict[str, tuple[PathResult, PathResult]], device: torch.device, size: str, params: int, steps: int,
            batch_size: int, eval_reviews: int, max_length: int = 256) -> dict:
    """The measurements as plain data (`ptuning bench --json`; scripts/gpu-check.sh projects a run from them)."""
    import transformers

    def path(r: PathResult) -> dict:
        return {"description": r.description, "step_seconds": r.step_seconds, "tokens_per_step": r.tokens_per_step,
                "eval_seconds": r.eval_seconds, "eval_reviews": r.eval_reviews, "eval_seconds_per_review": r.eval_seconds / r.eval_reviews,
                "peak_memory_bytes": r.peak_memory, "tflops": r.tflops, "table_seconds": r.table_seconds,
                "setup_seconds": r.setup_seconds, "peak_reserved_bytes": r.peak_reserved, "load_seconds": r.load_seconds,
                "checkpoint_seconds": r.checkpoint_seconds, "artifact_seconds": r.artifact_seconds,
                "collate_seconds": r.collate_seconds,
                "fast_decode_matches_generate": {"yes": True, "NO": False}.get(r.note)}

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "size": size, "params": params, "steps": steps, "batch_size": batch_size, "eval_reviews": eval_reviews,
        "max_length": max_length,
        "startup_seconds": next(iter(results.values()))[0].startup_seconds if results else None,
        "rows": {row: {"faithful": path(a), "fast": path(b)} for row, (a, b) in results.items()},
    }


def run_bench(device: torch.device, size: str = "small", steps: int = 5, rows: Sequence[str] = ("full_ft",),
              batch_size: int = 32, max_length: int = 256, eval_reviews: int | None = None, warmup: int | None = None,
              precision: str = "auto", compile: bool = False, cuda_graphs: bool = True, seed: int = 0, jobs_dir=None,
              echo: Callable[[str], None] = print, data: dict | None = None, concurrency: int = 1) -> str:
    """Bench `rows` on both paths; returns the markdown report (and fills `data`, if given, with `summary`).

    With `concurrency` K > 1, K processes then bench the fast path on the first row together (`concurrent_fast`).
    """
    from ptuning.methods import count_parameters
    from ptuning.settings import load_job
    from ptuning.testing.tiny import sized_config

    config = sized_config(size)
    from transformers import T5ForConditionalGeneration

    params = count_parameters(T5ForConditionalGeneration(config))[0]
    if eval_reviews is None:
        eval_reviews = 2048 if device.type == "cuda" else 64
    if warmup is None:
        warmup = default_warmup(device, compile)
    jobs = [load_job(ref, jobs_dir) for ref in rows]  # an unknown row fails before anything is timed
    results = {}
    echo(f"bench: a fresh process's start on {device}")
    startup = time_startup(device)
    with tempfile.TemporaryDirectory(prefix="ptuning-bench-") as tmp:
        scratch = Path(tmp)
        T5ForConditionalGeneration(config).save_pretrained(scratch / "model")  # for the load timing (untimed)
        for job in jobs:
            train, warm, evals = bench_data(job, config, steps, warmup, eval_reviews, batch_size, max_length, seed)
            echo(f"bench: {job.name}: loading the saved model, applying the method, moving it to {device}")
            load = time_load(job, config, device, scratch / "model")
            pair = []
            for path in ("faithful", "fast"):
                echo(f"bench: {job.name}, {path} path: {warmup} warm-up + {steps} timed steps, {eval_reviews} eval reviews, "
                     f"a checkpoint and the parameters written, on {device}")
                r = bench_path(path, job, config, train, warm, evals, device, batch_size, seed, precision, compile,
                               job.settings.eval_batch_size, job.settings.fast_eval_batch_size, cuda_graphs, scratch=scratch)
                r.load_seconds, r.startup_seconds = load, startup
                pair.append(r)
            results[job.name] = tuple(pair)
    text = markdown(results, device, size, params, steps, batch_size, eval_reviews, max_length)
    together = None
    if concurrency > 1:
        first = next(iter(results))
        echo(f"bench: {first}, fast path, {concurrency} processes at once: {steps} timed steps, {eval_reviews} eval reviews each")
        try:
            faithful, single = results[first]
            together = concurrent_fast(device, size, steps, first, concurrency, batch_size, max_length, eval_reviews, precision,
                                       cuda_graphs, seed, jobs_dir,
                                       fixed_per_row=single.job_fixed_seconds - single.setup_seconds, startup=startup)
            text += "\n" + "\n".join(concurrency_markdown(together, single, faithful))
        except (RuntimeError, OSError, ValueError) as exc:
            together = {"concurrency": concurrency, "error": str(exc)}
            text += f"\n## {first}: {concurrency} processes at once\n\n**failed**: {exc}\n"
    if data is not None:
        data.update(summary(results, device, size, params, steps, batch_size, eval_reviews, max_length))
        if together is not None:
            data["concurrent"] = together
    return text


# ---------------------------------------------------------------------------------------------
# several jobs at once: K processes bench the fast path together (`ptuning bench --concurrency K`)


def file_barrier(directory: Path, index: int, count: int, timeout: float = 600.0) -> Callable[[str], None]:
    """A barrier between `count` processes through marker files in `directory` (tag.index)."""

    def wait(tag: str) -> None:
        (directory / f"{tag}.{index}").touch()
        deadline = time.monotonic() + timeout
        while len(list(directory.glob(f"{tag}.*"))) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"bench worker {index}: the other processes never reached {tag!r}")
            time.sleep(0.02)

    return wait


def concurrent_fast(device: torch.device, size: str, steps: int, row: str, count: int, batch_size: int, max_length: int,
                    eval_reviews: int, precision: str, cuda_graphs: bool, seed: int = 0, jobs_dir=None,
                    timeout: float = 900.0, fixed_per_row: float = 0.0, startup: float = 0.0) -> dict:
    """`count` processes bench the fast path on `row` together; their aggregate step and review rates.

    Each process warms up alone, then all start the timed steps together, and then all start decoding together
    (file barriers); the aggregate rate is all processes' steps (reviews) over the wall time from the first start
    to the last end. Raises RuntimeError with the failing worker's last output line if one fails.
    The whole table's projection adds, per row, a process start (`run-all --concurrency` runs each job in a process
    of its own), `fixed_per_row` (load, checkpoints, parameters: timed alone) and the workers' warm-up beyond their
    steps, all shared among the `count` processes, and the parent's `startup` once.
    """
    import json
    import subprocess

    with tempfile.TemporaryDirectory(prefix="ptuning-bench-") as tmp:
        work = Path(tmp)
        procs = []
        for i in range(count):
            cmd = [sys.executable, "-m", "ptuning.speed.bench", "--barrier", str(work), "--index", str(i), "--count", str(count),
                   "--device", str(device), "--size", size, "--steps", str(steps), "--row", row, "--batch-size", str(batch_size),
                   "--max-length", str(max_length), "--eval-reviews", str(eval_reviews), "--precision", precision,
                   "--seed", str(seed + i), "--output", str(work / f"worker{i}.json")]
            cmd += [] if cuda_graphs else ["--no-cuda-graphs"]
            cmd += ["--jobs-dir", str(jobs_dir)] if jobs_dir else []
            with open(work / f"worker{i}.log", "w") as log:  # a file, not a pipe: nothing reads while we wait
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        try:
            while any(p.poll() is None for p in procs):
                failed = [p for p in procs if p.poll() not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        bad = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
        if bad:
            i, code = bad[0]
            last = (work / f"worker{i}.log").read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"bench worker {i} of {count} exited with {code}: {last[0]}")
        workers = [json.loads((work / f"worker{i}.json").read_text()) for i in range(count)]
    w = [x["windows"] for x in workers]
    train_wall = max(x["train_end"] for x in w) - min(x["train_start"] for x in w)
    eval_wall = max(x["eval_end"] for x in w) - min(x["eval_start"] for x in w)
    steps_per_second = count * steps / train_wall
    reviews_per_second = count * eval_reviews / eval_wall
    setup = sum(x["setup_seconds"] for x in workers) / count
    # run-all --concurrency K starts a process per job (ptuning/run/parallel.py): each job's start is shared out too
    table = (startup + TABLE_ROWS * TABLE_EPOCHS * (EPOCH_STEPS / steps_per_second + EVAL_REVIEWS / reviews_per_second)
             + TABLE_ROWS * (startup + setup + fixed_per_row) / count)
    return {"concurrency": count, "row": row, "steps": steps, "eval_reviews": eval_reviews,
            "aggregate_steps_per_second": steps_per_second, "aggregate_reviews_per_second": reviews_per_second,
            "train_wall_seconds": train_wall, "eval_wall_seconds": eval_wall, "setup_seconds": setup,
            "fixed_per_row_seconds": fixed_per_row, "startup_seconds": startup,
            "peak_memory_bytes": [x["peak_memory_bytes"] for x in workers], "description": workers[0]["description"],
            "table_seconds": table}


def concurrency_markdown(c: dict, single: PathResult, faithful: PathResult) -> list[str]:
    k = c["concurrency"]
    mem = ", ".join(f"{m / 2**30:.2f} GiB" for m in c["peak_memory_bytes"] if m is not None) or "–"
    rows = [
        ("training steps/s (all processes)", f"{single.steps_per_second:.2f}", f"{c['aggregate_steps_per_second']:.2f}",
         c["aggregate_steps_per_second"] / single.steps_per_second),
        ("eval reviews/s (all processes)", f"{single.eval_reviews / single.eval_seconds:,.0f}", f"{c['aggregate_reviews_per_second']:,.0f}",
         c["aggregate_reviews_per_second"] / (single.eval_reviews / single.eval_seconds)),
        ("whole table (projected)", _fmt_seconds(single.table_seconds), _fmt_seconds(c["table_seconds"]),
         single.table_seconds / c["table_seconds"]),
    ]
    return [
        f"## {c['row']}: {k} processes at once (`run-all --concurrency {k}`), fast path",
        "",
        f"- {k} processes each warm up alone, then train {c['steps']} steps together, then decode {c['eval_reviews']} reviews "
        f"together; rates are all processes' work over the wall time from the first start to the last end",
        f"- fast path: {c['description']}; peak memory reserved per process: {mem}",
        f"- whole table at --concurrency {k}: a process start + 10 rows × 10 epochs of work at these aggregate rates + each "
        f"row's process start, warm-up, load and writes / {k}, every row assumed to cost what this row costs; vs the exercise's loop one job at a time "
        f"({_fmt_seconds(faithful.table_seconds)}): **{faithful.table_seconds / c['table_seconds']:.2f}×**",
        "",
        f"| metric | one process | {k} at once | gain |",
        "|---|---|---|---|",
        *[f"| {m} | {x} | {y} | {r:.2f}× |" for m, x, y, r in rows],
        "",
    ]


def _worker(argv: list[str] | None = None) -> int:
    """One of `concurrent_fast`'s processes: the fast path on one row, timed parts behind barriers, JSON out."""
    import argparse
    import json

    from ptuning.settings import load_job
    from ptuning.testing.tiny import sized_config

    parser = argparse.ArgumentParser(prog="python -m ptuning.speed.bench")
    for name, kind in (("--barrier", str), ("--index", int), ("--count", int), ("--device", str), ("--size", str), ("--steps", int),
                       ("--row", str), ("--batch-size", int), ("--max-length", int), ("--eval-reviews", int), ("--precision", str),
                       ("--seed", int), ("--output", str), ("--jobs-dir", str)):
        parser.add_argument(name, type=kind, required=name != "--jobs-dir")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    a = parser.parse_args(argv)
    device = torch.device(a.device)
    config = sized_config(a.size)
    job = load_job(a.row, Path(a.jobs_dir) if a.jobs_dir else None)
    train, warm, evals = bench_data(job, config, a.steps, default_warmup(device), a.eval_reviews, a.batch_size, a.max_length, a.seed)
    r = bench_path("fast", job, config, train, warm, evals, device, a.batch_size, a.seed, a.precision, False, job.settings.eval_batch_size,
                   job.settings.fast_eval_batch_size, not a.no_cuda_graphs, file_barrier(Path(a.barrier), a.index, a.count))
    Path(a.output).write_text(json.dumps({"step_seconds": r.step_seconds, "eval_seconds": r.eval_seconds, "windows": r.windows,
                                          "setup_seconds": r.setup_seconds, "peak_memory_bytes": r.peak_reserved or r.peak_memory,
                                          "description": r.description}))
    return 0


def default_warmup(device: torch.device, compile: bool = False) -> int:
    """Untimed warm-up steps before the timed ones: compiling takes a few more shapes' worth than capturing."""
    return (10 if compile else 3) if device.type == "cuda" else 1


def bench_data(job, config, steps: int, warmup: int, eval_reviews: int, batch_size: int, max_length: int, seed: int):
    """(timed training, warm-up, evaluation) examples for `job`: synthetic, with its placeholders, seeded."""
    n = job_placeholders(job)
    return (synthetic_examples(steps * batch_size, max_length, config.vocab_size, n, seed + 1),
            synthetic_examples(warmup * batch_size, max_length, config.vocab_size, n, seed + 2),
            synthetic_examples(eval_reviews, max_length, config.vocab_size, n, seed + 3))


def job_placeholders(job) -> int:
    from ptuning.methods import build_method

    return build_method(job.method, job.implementation, job.knobs).placeholder_tokens()


if __name__ == "__main__":  # pragma: no cover - run by concurrent_fast's subprocesses
    sys.exit(_worker())
