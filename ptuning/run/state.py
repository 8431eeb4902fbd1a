"""What a run holds while it goes: `Run` (what `prepare` built) and `RunState` (how far it got, and its clocks)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass
class Run:
    """One job's prepared run: the model with its method, the data, the engine and the optimizer."""

    job: Any  # ptuning.settings.Job (one seed)
    method: Any  # ptuning.methods.Method
    config: dict[str, Any]  # what defines the run (result and checkpoint)
    device: torch.device
    rdir: Path
    echo: Callable[[str], None]
    force_id: str | None = None  # the --force run this is part of (ptuning.run.checkpoint.plan)
    model: Any = None
    tokenizer: Any = None
    params: dict[str, Any] = field(default_factory=dict)  # counts and the formula
    train_set: Any = None
    eval_sets: dict[str, Any] = field(default_factory=dict)  # "test" (and "validation" under heldout)
    engine: Any = None  # ptuning.engine.Engine
    loader: Any = None
    optimizer: torch.optim.Optimizer | None = None  # None: the method does not train (zero-shot)
    generator: torch.Generator | None = None  # the training loader's shuffle
    generation_model: Any = None
    metrics: Any = None  # ptuning.run.metrics.MetricsLog

    @property
    def n_epochs(self) -> int:
        return self.config["epochs"]

    @property
    def result_path(self) -> Path:
        from ptuning.report.results import RESULT_FILE

        return self.rdir / RESULT_FILE

    @property
    def checkpoint_path(self) -> Path:
        from ptuning.run.checkpoint import CHECKPOINT_FILE

        return self.rdir / CHECKPOINT_FILE

    def say(self, message: str) -> None:
        self.echo(f"[{self.job.name}] {message}")


@dataclass
class RunState:
    """How far a run got: the finished epochs' records, the epoch in progress (steps, loss sum, seconds), and time."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0  # steps done in the epoch in progress (0 at an epoch boundary)
    loss_total: float = 0.0
    step_seconds: float = 0.0
    prior_wall: float = 0.0  # wall time of the runs this one continues
    resumed_from: dict[str, int] | None = None
    entered: float = field(default_factory=time.perf_counter)  # run_job entered (setup starts)
    started: float = 0.0  # the first training step (setup done)
    save_seconds: float = 0.0  # writing checkpoints and the trained parameters

    def start(self) -> None:
        self.started = time.perf_counter()

    @property
    def setup_seconds(self) -> float:
        """Loading, the method, tokenizing, moving to the device: before the first step, not in the wall time."""
        return self.started - self.entered

    @property
    def wall_seconds(self) -> float:
        return self.prior_wall + time.perf_counter() - self.started

    def progress(self) -> dict[str, int]:
        return {"epochs_done": len(self.epochs), "step": self.step}

    def epoch_done(self, record: dict[str, Any]) -> None:
        self.epochs.append(record)
        self.step, self.loss_total, self.step_seconds = 0, 0.0, 0.0
