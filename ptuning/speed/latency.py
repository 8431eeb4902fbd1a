"""`ptuning latency`: what each method adds to inference, at batch 1, on this device.

For every job, on a random-weight T5 of t5-small's shapes (`--size small`: a small one for a quick CPU look) and
reviews of IMDb's token lengths: the time of one greedy decode (`generate`'s, up to `generate_max_length` tokens) of
one review, the median over `reviews` reviews, with the method applied and on the plain model; the difference is
the latency the method adds. A soft prompt's longer input counts (its placeholders are in the review); a LoRA row is
measured unmerged, as trained, and merged (its weights folded into the base weights: no added cost, the same
outputs). Writes `latency.json` (and the markdown) into the results folder; `ptuning tables` shows the added latency
next to each row, with the device it was measured on.
"""

from __future__ import annotations

import copy
import datetime
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from ptuning.report.results import LATENCY_FILE  # noqa: F401  (where it is written, and read by the tables)


def _decode_seconds(model, ids: list[int], device: torch.device, max_length: int) -> float:
    from ptuning.engine.fast import greedy_decode

    input_ids = torch.tensor([ids], device=device)
    mask = torch.ones_like(input_ids)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    greedy_decode(model, input_ids, mask, max_length)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _interleaved(models: list, inputs: list[list[list[int]]], device: torch.device, max_length: int, precision: str) -> list[list[float]]:
    """Seconds of each model's batch-1 decode of each review, the models taking turns review by review (so that a
    slow spell of the machine hits them alike), after one untimed warm-up each."""
    from ptuning.engine import autocast

    for model in models:
        model.eval()
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad(), autocast(device, precision):
        for model, reviews in zip(models, inputs):
            _decode_seconds(model, reviews[0], device, max_length)
        for i in range(len(inputs[0])):
            for k, (model, reviews) in enumerate(zip(models, inputs)):
                times[k].append(_decode_seconds(model, reviews[i], device, max_length))
    return times


def measure(jobs, device: torch.device, size: str = "t5-small", reviews: int = 20, precision: str = "auto", seed: int = 0,
            echo: Callable[[str], None] = print) -> dict:
    """{"base_ms", "rows": {job: {"ms", "added_ms", "merged_ms", "added_merged_ms"}}, device, ...} (milliseconds; an
    added figure is the median over reviews of the method's time minus the plain model's on the same review's turn)."""
    import transformers
    from transformers import T5ForConditionalGeneration

    from ptuning.methods import build_method
    from ptuning.speed.bench import device_name, synthetic_examples
    from ptuning.testing.tiny import sized_config

    config = sized_config(size)
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    torch.manual_seed(seed)
    base = T5ForConditionalGeneration(config).to(device)
    max_length = jobs[0].settings.generate_max_length if jobs else 5
    length = jobs[0].settings.max_length if jobs else 256
    plain = [x for x, _ in synthetic_examples(reviews, length, config.vocab_size, 0, seed + 1)]
    rows, base_times = {}, []
    for job in jobs:
        method = build_method(job.method, job.implementation, job.knobs)
        model = method.apply(copy.deepcopy(base).cpu()).to(device)
        inputs = [x for x, _ in synthetic_examples(reviews, length, config.vocab_size, method.placeholder_tokens(), seed + 1)]
        merged_model = method.merged(copy.deepcopy(model))  # None: nothing to merge
        echo(f"latency: {job.name} and the plain model, {reviews} reviews at batch 1 on {device}" + (", also merged" if merged_model else ""))
        models = [base, method.generation_model(model)] + ([merged_model] if merged_model is not None else [])
        times = _interleaved(models, [plain, inputs] + ([inputs] if merged_model is not None else []), device, max_length, precision)
        base_times += times[0]
        rows[job.name] = {"ms": 1e3 * statistics.median(times[1]),
                          "added_ms": 1e3 * statistics.median(m - b for m, b in zip(times[1], times[0])),
                          "merged_ms": 1e3 * statistics.median(times[2]) if merged_model is not None else None,
                          "added_merged_ms": (1e3 * statistics.median(m - b for m, b in zip(times[2], times[0]))
                                              if merged_model is not None else None)}
        model = merged_model = None
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "device": str(device),
            "device_name": device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
            "size": size, "precision": precision, "reviews": reviews, "max_length": length,
            "generate_max_length": max_length, "base_ms": 1e3 * statistics.median(base_times) if base_times else None,
            "rows": rows}


def markdown(data: dict) -> str:
    lines = [f"# Added inference latency at batch 1 on {data['device_name']}", "",
             f"- {data['date']}; torch {data['torch']}, transformers {data['transformers']}; {data['size']} shapes, random weights, "
             f"{data['precision']}; greedy decode of one review (IMDb-like length, up to {data['max_length']} tokens), median of "
             f"{data['reviews']}" + (f"; the plain model: {data['base_ms']:.2f} ms" if data["base_ms"] is not None else ""),
             "- merged: LoRA's weights folded into the base weights (same outputs, no added matmuls)", "",
             "| job | latency (ms) | added (ms) | merged (ms) | added, merged (ms) |", "|---|---|---|---|---|"]
    for job, r in data["rows"].items():
        merged = "–" if r["merged_ms"] is None else f"{r['merged_ms']:.2f}"
        added_merged = "–" if r["added_merged_ms"] is None else f"{r['added_merged_ms']:+.2f}"
        lines.append(f"| {job} | {r['ms']:.2f} | {r['added_ms']:+.2f} | {merged} | {added_merged} |")
    return "\n".join(lines) + "\n"


def write(data: dict, results_dir: Path) -> Path:
    from ptuning.atomic import atomic_save

    path = Path(results_dir) / LATENCY_FILE
    atomic_save(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"), writable="pass --results with a writable folder")
    return path
