"""How the tables and plots name a row: its number, approach and knob, the way the report writes them."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=None)
def _knob_label(method: str, implementation: str, knobs: tuple) -> str:
    from ptuning.methods import build_method

    return build_method(method, implementation, dict(knobs)).knob_summary()


def knob_label(job) -> str:
    """The row's knob as the report writes it: 'rank 8', 'bottleneck 8', '10 tokens'; '–' without one. A knob at a
    value other than its default is added ('rank 1, alpha 8'), so that rows that differ never read the same; a point
    of a grid (`sweep:`) is named by its values instead ('lr=3e-4, rank=8'), the learning rate included."""
    variant = getattr(job, "variant", None)
    if variant:
        return variant.replace(",", ", ")
    return _knob_label(job.method, job.implementation, tuple(sorted(job.knobs.items())))


def row_label(job, protocol: str | None = "faithful") -> str:
    """'3. Soft prompt, OpenDelta (10 tokens)'; a protocol other than faithful is added: '... [heldout]'."""
    knob = knob_label(job)
    text = f"{job.row}. {job.title}" + (f" ({knob})" if knob != "–" else "")
    return text + (f" [{protocol}]" if protocol not in (None, "faithful") else "")
