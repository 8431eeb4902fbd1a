"""What kind of results a folder holds, for the tables' caption and the plots' titles.

A folder of real runs has no marker. A command whose numbers mean nothing as accuracies (`ptuning smoke`, a
demo on synthetic data) writes `results-kind.json` at the root of its output folder:

    {"kind": "smoke", "label": "smoke test", "note": "a tiny random T5 trained on synthetic reviews: ..."}

`label` is the word every plot title carries and `note` the sentence above the tables. Any command that
writes such results calls `mark(folder, kind, label, note)`; `ptuning tables` and `ptuning plots` read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ptuning.atomic import atomic_save

KIND_FILE = "results-kind.json"


@dataclass(frozen=True)
class Kind:
    kind: str  # a word for programs: "smoke", "demo"
    label: str  # the words plot titles carry: "smoke test"
    note: str  # one sentence for the tables: what the numbers are (and are not)


SMOKE = Kind("smoke", "smoke test", "a tiny random T5 trained for one short epoch on synthetic reviews: these accuracies mean "
             "nothing; they show only that every row builds, trains, evaluates, saves and reports")
DEMO = Kind("demo", "synthetic demo task", "not IMDb, not t5-small: a small T5 that ptuning pre-trained on made-up reviews, "
            "fine-tuned to answer their sentiment without the task prefix it was pre-trained with; the accuracies show "
            "that every method learns and say nothing about IMDb or t5-small")


def mark(results_dir: Path, kind: Kind) -> Path:
    """Write the marker of `kind` at the root of `results_dir` (created if need be)."""
    data = json.dumps({"kind": kind.kind, "label": kind.label, "note": kind.note}, indent=2, ensure_ascii=False) + "\n"
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    return atomic_save(results_dir / KIND_FILE, lambda tmp: tmp.write_text(data, encoding="utf-8"))


def read(results_dir: Path, problems: list[str] | None = None) -> Kind | None:
    """The kind of results in `results_dir`, or None for real runs (no marker). A marker that cannot be read is
    treated as none, and what is wrong with it appended to `problems` when given."""
    path = Path(results_dir) / KIND_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if problems is not None:
            problems.append(f"{path}: unreadable marker of the kind of results ({exc}); the tables and plots show them as real runs")
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) and data.get(k).strip() for k in ("kind", "label")):
        if problems is not None:
            problems.append(f"{path}: a marker needs text fields 'kind' and 'label'; the tables and plots show these results as real runs")
        return None
    note = data.get("note") if isinstance(data.get("note"), str) else ""
    return Kind(data["kind"].strip(), data["label"].strip(), note.strip())
