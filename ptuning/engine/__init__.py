"""How a run trains and evaluates: one engine per speed path, behind one small interface.

* `faithful` (`engine/faithful.py`): the exercise's loop — eager fp32, dynamic padding, `generate` evaluation.
* `fast` (`engine/fast.py`, with `engine/graphs.py`): the same training math and the same greedy predictions
  with less overhead — length buckets, CUDA graphs, bf16, fused AdamW, a KV-cached greedy decode.

`make_engine(settings, device)` picks one from the job's `speed` setting and the device (`engine/base.py` says
how, and defines the interface both implement). Accuracy is computed in `engine/base.py` (`accuracy`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ptuning.engine import base
from ptuning.engine.base import Engine, NonFiniteLoss, Plan, StopEpoch, accuracy, autocast

__all__ = ["Engine", "NonFiniteLoss", "Plan", "StopEpoch", "accuracy", "autocast", "make_engine"]


def make_engine(settings, device: torch.device, echo: Callable[[str], None] | None = None, **plan_changes) -> Engine:
    """The engine for `settings` (a `ptuning.settings.Settings`) on `device`. `plan_changes` replace fields of the
    resolved plan (the GPU check forces `graphs` on or off to compare them)."""
    from ptuning.engine.faithful import FaithfulEngine
    from ptuning.engine.fast import FastEngine

    plan = base.make_plan(settings, device, echo)
    if plan_changes:
        if "graphs" in plan_changes or "compile" in plan_changes:  # static shapes go with either
            plan_changes.setdefault("buckets", plan_changes.get("graphs", plan.graphs) or plan_changes.get("compile", plan.compile))
        plan = dataclasses.replace(plan, **plan_changes)
    return (FastEngine if plan.fast else FaithfulEngine)(plan, settings, device, echo)
