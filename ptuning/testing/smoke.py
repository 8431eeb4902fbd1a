"""`ptuning smoke`: every job end to end on a tiny offline T5 and synthetic IMDb-shaped data, on CPU.

The numbers it prints mean nothing; it shows that every row builds, trains, evaluates, saves its
parameters and reports, through the same code paths as a real run.
"""

from __future__ import annotations

from pathlib import Path

BANNER = (
    "=" * 78
    + "\nSMOKE TEST: a tiny random T5 and synthetic reviews. These numbers mean NOTHING;\n"
    "the smoke test only shows that every row runs end to end.\n"
    + "=" * 78
)

#: settings every smoke job runs with (on top of the job's own)
SMOKE_SETTINGS = {"epochs": 1, "max_length": 64, "batch_size": 16, "eval_batch_size": 32, "train_limit": None, "eval_limit": None}


def next_steps(output_dir: Path) -> list[str]:
    """What to run after a smoke test: its plots, then a real run."""
    return [f"ptuning plots --results {output_dir}   (the three plots of these runs)",
            "make run   (on a GPU with the Hugging Face hub: every row for real, 10 epochs; docs/speed.md)"]


def assets_dir() -> Path:
    from ptuning.data import cache_root

    return cache_root() / "smoke-assets-v1"


def prepare(workdir: Path | None = None) -> tuple[Path, Path]:
    """(model_dir, dataset_dir) of the tiny assets, built once and reused."""
    from ptuning.errors import PtuningError
    from ptuning.testing.tiny import build_assets

    directory = Path(workdir) if workdir else assets_dir()
    try:
        return build_assets(directory)
    except OSError as exc:
        raise PtuningError(f"cannot build the tiny model and data in {directory}: {exc.strerror or exc}; "
                           "pass --workdir with a writable directory") from None
