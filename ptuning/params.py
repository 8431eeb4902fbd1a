"""`ptuning params`: measured parameter counts of each job's model next to the analytic formula.

Counts come from real model objects (`count_parameters` on a random-weight T5 built from a config,
no weights downloaded), never from the formulas; the formula column is the independent check.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Iterable

from ptuning.errors import PtuningError
from ptuning.methods import build_method, count_parameters

COLUMNS = ["job", "title", "total", "trainable", "added", "formula", "formula_value", "match"]


def load_config(model: str | None = None):
    """The t5-small config (built in, no network), or the config of `model` (hub id or local path)."""
    if model is None:
        from ptuning.tiny import t5_small_config

        return t5_small_config()
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise PtuningError(
            f"cannot load the config of {model!r} ({type(exc).__name__}); if the Hugging Face hub is "
            "unreachable, pass --model with a local model directory, or leave --model out to use t5-small's"
        ) from exc


def _formula_text(formula) -> str:
    if formula.symbolic == formula.text:
        return formula.text
    return f"{formula.symbolic} = {formula.text}"


def _random_model(config):
    """A random-weight model built from `config` alone (nothing downloaded)."""
    from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

    if isinstance(config, T5Config):
        return T5ForConditionalGeneration(config)  # about twice as fast as the Auto route
    return AutoModelForSeq2SeqLM.from_config(config)


def parameter_rows(jobs: Iterable[Any], config=None) -> list[dict]:
    """One row per job: measured total/trainable/added parameters and the analytic formula.

    A job needs `.name`, `.title`, `.method`, `.implementation` and `.knobs`. One random-weight base
    model is built from `config` (default: t5-small's) and deep-copied for every job.
    """
    config = config if config is not None else load_config()
    base = _random_model(config)
    base_total, _ = count_parameters(base)
    rows = []
    for job in jobs:
        method = build_method(job.method, job.implementation, job.knobs)
        model = method.apply(copy.deepcopy(base))
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
