"""`ptuning params`: measured parameter counts of each job's model next to the analytic formula.

Counts come from real model objects (`count_parameters` on a T5 built from a config, no weights
downloaded), never from the formulas; the formula column is the independent check. The base model is
built once on PyTorch's meta device (shapes without memory, no random initialisation), and each job
gets a copy given uninitialised CPU memory (`to_empty`, then the tied embedding re-tied) before its
method is applied: the same modules and parameters as a random-weight model, in a fraction of the time.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Callable, Iterable

from ptuning.errors import PtuningError
from ptuning.methods import build_method, count_parameters

COLUMNS = ["job", "title", "total", "trainable", "added", "formula", "formula_value", "match"]


def load_config(model: str | None = None):
    """t5-small's config (built in, nothing downloaded), or the config of `model` (hub id or local dir)."""
    if model is None:
        from ptuning.testing.tiny import t5_small_config

        return t5_small_config()
    from ptuning.model import load_config as load_model_config

    return load_model_config(model)


def _formula_text(formula) -> str:
    if formula.symbolic == formula.text:
        return formula.text
    return f"{formula.symbolic} = {formula.text}"


def parameter_rows(jobs: Iterable[Any], config=None, errors: list | None = None,
                   progress: Callable[[int, int, str], None] | None = None) -> list[dict]:
    """One row per job: measured total/trainable/added parameters and the analytic formula.

    A job needs `.name`, `.title`, `.method`, `.implementation` and `.knobs`. One base model is built
    from `config` (default: t5-small's) on the meta device and copied for every job (see the module's
    docstring). If `errors` is a list, a job whose method cannot be built (e.g. its library is missing)
    is skipped and `(job name, message)` appended to it; otherwise the PtuningError propagates.
    `progress(i, n, name)` is called before each job, and with i == n when all are done.
    """
    import torch
    from transformers import T5ForConditionalGeneration

    config = config if config is not None else load_config()
    with torch.device("meta"):
        base = T5ForConditionalGeneration(config)  # the modules and shapes alone
    base_total, _ = count_parameters(base)
    jobs = list(jobs)
    rows = []
    for i, job in enumerate(jobs):
        if progress is not None:
            progress(i, len(jobs), job.name)
        try:
            method = build_method(job.method, job.implementation, job.knobs)
            model = copy.deepcopy(base).to_empty(device="cpu")  # memory for every parameter, left uninitialised
            model.tie_weights()  # to_empty gives the tied output layer its own tensor; tie it again
            model = method.apply(model)
        except PtuningError as exc:
            if errors is None:
                raise
            errors.append((job.name, str(exc)))
            continue
        total, trainable = count_parameters(model)
        formula = method.formula(config)
        added = total - base_total
        rows.append(
            {
                "job": job.name,
                "title": job.title,
                "total": total,
                "trainable": trainable,
                "added": added,
                "formula": _formula_text(formula),
                "formula_value": formula.value,
                "match": added == formula.value,
            }
        )
        del model
    if progress is not None:
        progress(len(jobs), len(jobs), "")
    return rows


def render_markdown(rows: list[dict]) -> str:
    from tabulate import tabulate

    table = [
        [
            r["job"],
            r["title"],
            f"{r['total']:,}",
            f"{r['trainable']:,}",
            f"{r['added']:,}",
            r["formula"],
            f"{r['formula_value']:,}",
            "yes" if r["match"] else "NO",
        ]
        for r in rows
    ]
    headers = ["job", "title", "total", "trainable", "added", "formula", "formula value", "match"]
    align = ("left", "left", "right", "right", "right", "left", "right", "left")
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True, colalign=align)


def render_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2, ensure_ascii=False)
