"""`ptuning params`: measured parameter counts of each job's model next to the analytic formula.

Counts come from real model objects (`count_parameters` on a T5 built from a config, no weights
downloaded), never from the formulas; the formula column is the independent check. The base model is
built once on PyTorch's meta device (shapes without memory, no random initialisation), and each job
gets a copy given uninitialised CPU memory (`to_empty`, then the tied embedding re-tied) before its
method is applied: the same modules and parameters as a random-weight model, in a fraction of the time.

Most of a count's time is importing torch, transformers and the method libraries, so counts are kept in a cache
(`CountCache`, under ptuning's cache folder) keyed by everything a count depends on: ptuning's own source, the job's
method and knobs, the model configuration, and the versions of Python, torch, transformers, PEFT, AdapterHub and
OpenDelta. A count is read back only when every one of those is the same; `ptuning params --recount` counts anew.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from collections import defaultdict, deque
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
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


# ---------------------------------------------------------------------------------------------
# the count cache

#: the libraries whose code builds the counted modules: a count is reused only under the same versions
COUNTED_WITH = ("torch", "transformers", "peft", "adapters", "opendelta")
#: what a cached entry holds of a row (the job's name and title come from the job file of the day)
COUNT_FIELDS = ("total", "trainable", "added", "formula", "formula_value", "match")
BUILT_IN_CONFIG = "t5-small's configuration, built into ptuning"


def count_cache_dir() -> Path:
    from ptuning.data import cache_root

    return cache_root() / "params"


@lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 over every Python file of the installed ptuning package (names and contents): any change to its code,
    the methods, the formulas or the built-in configuration gives a new digest."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """The installed versions of Python and of the libraries a count uses (read from their metadata, not imported)."""
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for name in COUNTED_WITH:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def model_fingerprint(model: str | None) -> str | None:
    """What identifies the configuration `model` names without loading it: the built-in t5-small's, or the sha256 of a
    local directory's config.json. None for a hub id (its config is fetched to be counted; nothing is cached)."""
    from ptuning.hub import looks_like_path

    if model is None:
        return BUILT_IN_CONFIG
    if not looks_like_path(model):  # what `ptuning.model.load_config` takes for a hub id
        return None
    config = Path(model).expanduser() / "config.json"
    try:
        return f"config.json sha256 {hashlib.sha256(config.read_bytes()).hexdigest()}" if config.is_file() else None
    except OSError:
        return None


class CountCache:
    """Counts of earlier `ptuning params` runs, one JSON file per job, named by the sha256 of what the count depends
    on. Reading is checked field by field against that key's parts; a damaged or foreign entry is a miss. Writing is
    best effort: an unwritable cache folder costs the next run its speed, never this run's answer."""

    def __init__(self, model: str, directory: Path | None = None):
        self.directory = Path(directory) if directory is not None else count_cache_dir()
        self.common = {"ptuning_source": source_digest(), "versions": library_versions(), "model": model}

    def parts(self, job) -> dict[str, Any]:
        method = {"name": job.method, "implementation": job.implementation, "knobs": job.knobs}
        return {**self.common, "method": json.loads(json.dumps(method, sort_keys=True, default=repr))}

    def path(self, parts: dict[str, Any]) -> Path:
        """The entry of the job whose key is `parts` (`self.parts(job)`)."""
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        return self.directory / f"{key}.json"

    def get(self, job) -> dict[str, Any] | None:
        """The cached count of `job` as a row, or None."""
        parts = self.parts(job)
        try:
            entry = json.loads(self.path(parts).read_text(encoding="utf-8"))
            counts = {name: entry["counts"][name] for name in COUNT_FIELDS}
            same = entry["key"] == parts
        except (OSError, ValueError, KeyError, TypeError):
            return None
        numbers = all(type(counts[name]) is int for name in ("total", "trainable", "added", "formula_value"))
        if not (same and numbers and type(counts["formula"]) is str and type(counts["match"]) is bool):
            return None
        return {"job": job.name, "title": job.title, **counts}

    def put(self, job, row: dict[str, Any]) -> None:
        from ptuning.atomic import atomic_save

        parts = self.parts(job)
        entry = {"key": parts, "counted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "counts": {name: row[name] for name in COUNT_FIELDS}}
        text = json.dumps(entry, indent=1, ensure_ascii=False) + "\n"
        try:
            atomic_save(self.path(parts), lambda tmp: tmp.write_text(text, encoding="utf-8"))
        except PtuningError:  # the cache's folder is not writable (or the disk is full): count again next time
            pass


def cached_parameter_rows(jobs: Iterable[Any], model: str | None = None, *, config=None, recount: bool = False,
                          cache_dir: Path | None = None, errors: list | None = None,
                          progress: Callable[[int, int, str], None] | None = None) -> tuple[list[dict], int]:
    """`parameter_rows` for `jobs` on `model`'s configuration (None: t5-small's; `config`: that configuration, already
    loaded), with the count cache: a job counted before under the same key is read back, the others are counted (and
    stored). `recount`: count every job and store it anew. Returns the rows in the jobs' order (a job that could not be
    built has none: see `parameter_rows`' `errors`) and how many were read from the cache."""
    jobs = list(jobs)
    fingerprint = model_fingerprint(model)
    cache = CountCache(fingerprint, cache_dir) if fingerprint is not None else None
    if cache is None and config is None:  # a hub id, or no model there: loaded (or refused, in one line) whatever the jobs
        config = load_config(model)
    hits = [None if cache is None or recount else cache.get(job) for job in jobs]
    missing = [job for job, hit in zip(jobs, hits) if hit is None]
    counted: dict[str, deque] = defaultdict(deque)  # a job's rows by its name, in the order of `missing`
    if missing:
        for row in parameter_rows(missing, config if config is not None else load_config(model), errors=errors, progress=progress):
            counted[row["job"]].append(row)
    rows = []
    for job, hit in zip(jobs, hits):
        if hit is None and counted[job.name]:
            hit = counted[job.name].popleft()
            if cache is not None:
                cache.put(job, hit)
        if hit is not None:
            rows.append(hit)
    return rows, len(jobs) - len(missing)
