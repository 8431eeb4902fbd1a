"""A loud CPU fallback: `--device auto` on a machine without a GPU refuses a real-size training run.

A real run of one row trains on 25,000 reviews per epoch; on a CPU that is many hours per epoch, and `run-all`
would quietly start a run of hundreds of hours. So when the device is left to `auto`, no CUDA GPU is visible and
a job would train on more than `FULL_SIZE` reviews, the command stops before anything runs, with one line that
says how long one epoch would take on this CPU and how to go on: a GPU, `--device cpu` (the run is wanted here
after all), or `--train-limit N` for a short try. Smaller runs (the smoke test, `--train-limit 2000`) go ahead.

The estimate is measured, not guessed: the job's own model and method, a short warm-up pass and one timed forward and
backward pass on PROBE_REVIEWS inputs of `max_length` tokens, scaled to the epoch's reviews. It is an order of
magnitude, not a promise: reviews shorter than `max_length` train faster, a full batch uses the CPU better than two
reviews, and on a machine whose cores are busy with other work one measurement can differ from the next severalfold.
"""

from __future__ import annotations

import math
import time

from ptuning.errors import PtuningError

#: training reviews per epoch above which a CPU run needs --device cpu (a smoke test trains on 64, a real row 25,000)
FULL_SIZE = 5_000
#: reviews of `max_length` tokens in the timed step (one review alone runs far less efficiently than a batch)
PROBE_REVIEWS = 2


def train_reviews(job, splits) -> int:
    """How many reviews one epoch of `job` trains on: the train split, less the heldout protocol's validation
    reviews, at most `train_limit`."""
    n = len(splits["train"])
    if job.settings.protocol == "heldout":
        n = max(0, n - job.settings.heldout_size)
    if job.settings.train_limit is not None:
        n = min(n, job.settings.train_limit)
    return n


def seconds_per_review(job) -> float:
    """Training time of one review of `max_length` tokens on this CPU: the job's model and method in fp32, a short
    warm-up pass, then the forward and backward passes of PROBE_REVIEWS inputs of `max_length` tokens, shared by
    the reviews. The optimizer step is left out: once per batch of `batch_size` reviews, it is a few percent."""
    import torch

    from ptuning.methods import build_method
    from ptuning.model import load_model

    method = build_method(job.method, job.implementation, job.knobs)
    model, tokenizer = load_model(job.settings.model)
    model = method.apply(model)
    model.train()
    placeholders = method.placeholder_tokens()
    vocab = min(len(tokenizer), model.config.vocab_size)

    def passes(reviews: int, tokens: int) -> float:
        ids = torch.randint(3, vocab, (reviews, max(tokens, placeholders + 2)), generator=torch.Generator().manual_seed(0))
        ids[:, :placeholders] = tokenizer.pad_token_id
        labels = torch.tensor([[3, tokenizer.eos_token_id]]).repeat(reviews, 1)
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
        seconds = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return seconds

    passes(1, 8)  # warm-up: first-call allocations
    return passes(PROBE_REVIEWS, job.settings.max_length) / PROBE_REVIEWS


def duration(seconds: float) -> str:
    """'40 s', '12 min', '3.5 h', '14 h', '6.2 days'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    if hours < 48:
        return f"{hours:.1f} h" if hours < 10 else f"{hours:.0f} h"
    return f"{hours / 24:.1f} days"


def refuse_slow_cpu_run(jobs, device_name: str | None, splits_for, echo=None) -> None:
    """With `--device auto` and no CUDA GPU, refuse (PtuningError, one line) when a job that trains would train on
    more than FULL_SIZE reviews per epoch. `splits_for(job)` gives a job's dataset splits (loaded once)."""
    import torch

    if (device_name or "auto").lower() != "auto" or torch.cuda.is_available():
        return
    from ptuning.methods import method_class

    for job in jobs:
        if not getattr(method_class(job.method, job.implementation), "trains", True):
            continue
        try:
            splits = splits_for(job)
        except PtuningError:  # the run says what is wrong with the dataset, in its own order (the model first)
            return
        reviews = train_reviews(job, splits)
        if reviews <= FULL_SIZE:
            continue
        if echo is not None:
            echo(f"ptuning: no CUDA GPU here; timing one training step of {job.name} on this CPU ...")
        per_review = seconds_per_review(job)
        epoch = per_review * reviews
        epochs = job.settings.epochs
        total = f"; {epochs} epochs about {duration(epoch * epochs)}" if epochs > 1 else ""
        raise PtuningError(
            f"no CUDA GPU here, and {job.name} trains on {reviews:,} reviews per epoch: one epoch would take about "
            f"{duration(epoch)} on this CPU ({per_review:.2f} s per review of {job.settings.max_length} tokens, measured){total}. "
            f"Run on a GPU, pass --device cpu to run here anyway, or try a short run with --train-limit "
            f"{_short_limit(per_review)}"
        )


def _short_limit(per_review: float, minutes: float = 10.0) -> int:
    """A --train-limit whose epoch takes about `minutes` here: one significant digit, at least 100 (at most
    FULL_SIZE, so that the short run is let through)."""
    n = min(FULL_SIZE, max(100, int(minutes * 60 / max(per_review, 1e-9))))
    magnitude = 10 ** int(math.log10(n))
    return n // magnitude * magnitude
