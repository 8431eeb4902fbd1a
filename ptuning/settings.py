"""Job files: one YAML per table row in `jobs/`, shared defaults in `jobs/_defaults.yaml`.

A job file is validated on load; every problem is a `PtuningError` naming the file and the key,
with a suggestion for misspelled keys. Command-line options override job values through
`Job.override`, which validates the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ptuning.errors import PtuningError
from ptuning.report.results import PROTOCOLS

DEFAULTS_FILE = "_defaults.yaml"


@dataclass(frozen=True)
class Setting:
    """One training/evaluation key a job may set: its type and smallest allowed value."""

    type: type | tuple[type, ...]
    minimum: float | None = None
    choices: tuple[str, ...] | None = None
    optional: bool = False  # None allowed
    exclusive_minimum: bool = False
    maximum: float | None = None


#: every training/evaluation key, its type and bounds; defaults come from jobs/_defaults.yaml
SETTINGS: dict[str, Setting] = {
    "model": Setting(str),
    "dataset": Setting(str),
    "dataset_config": Setting(str, optional=True),
    "lr": Setting(float, minimum=0.0, exclusive_minimum=True),
    "weight_decay": Setting(float, minimum=0.0),
    "batch_size": Setting(int, minimum=1),
    "eval_batch_size": Setting(int, minimum=1),
    "epochs": Setting(int, minimum=1),
    "max_length": Setting(int, minimum=2),
    "generate_max_length": Setting(int, minimum=2),
    "seed": Setting(int, minimum=0, maximum=2**32 - 1),  # numpy's seed range
    "train_limit": Setting(int, minimum=1, optional=True),
    "eval_limit": Setting(int, minimum=1, optional=True),
    "precision": Setting(str, choices=("auto", "fp32", "bf16")),
    "speed": Setting(str, choices=("auto", "fast", "faithful")),  # see ptuning/engine/fast.py
    "fast_eval_batch_size": Setting(int, minimum=1),
    "compile": Setting(bool),
    "cuda_graphs": Setting(bool),
    "labels": Setting(list),
    "seeds": Setting(list, optional=True),  # several seeds: one run each; overrides `seed`
    "protocol": Setting(str, choices=PROTOCOLS),
    "heldout_size": Setting(int, minimum=1),
    "heldout_seed": Setting(int, minimum=0),
}
#: settings each job file must give itself (no shared default)
PER_JOB = {"lr"}
#: descriptive keys of a job file (not training settings)
DESCRIPTIVE = {"title": str, "row": int, "notes": str}
REFERENCE_KEYS = {"accuracy": float, "total_params": int}
TOP_LEVEL = set(SETTINGS) | set(DESCRIPTIVE) | {"method", "reference"}


@dataclass(frozen=True)
class Job:
    name: str
    path: Path | None
    title: str
    row: int
    method: str
    implementation: str
    knobs: dict[str, Any]
    settings: dict[str, Any]
    reference_accuracy: float | None = None
    reference_total_params: int | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, item: str) -> Any:  # job.lr, job.epochs, ... read from settings
        settings = self.__dict__.get("settings", {})
        if item in settings:
            return settings[item]
        raise AttributeError(item)

    @property
    def seed_list(self) -> list[int]:
        """The seeds this job runs with: `seeds` when set, else the single `seed`."""
        return list(self.settings.get("seeds") or [self.settings["seed"]])

    def for_seed(self, seed: int) -> "Job":
        """A copy for one run: `seed` set, `seeds` cleared (the result records the seed it ran with)."""
        return dataclasses.replace(self, settings={**self.settings, "seed": _check_setting(self.name, "seed", seed), "seeds": None})

    @property
    def knob_summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.knobs.items()) or "–"

    def override(self, **values: Any) -> "Job":
        """A copy with some settings replaced (None values are ignored); validated like the file."""
        where = f"{self.name} (command-line option)"
        settings = dict(self.settings)
        for key, value in values.items():
            if value is None:
                continue
            if key not in SETTINGS:
                raise PtuningError(f"{where}: unknown setting {key!r}")
            settings[key] = _check_setting(where, key, value)
        return dataclasses.replace(self, settings=settings)

    def config(self) -> dict[str, Any]:
        """Everything that defines the run, for the result file."""
        return {
            "name": self.name,
            "title": self.title,
            "row": self.row,
            "method": {"name": self.method, "implementation": self.implementation, **self.knobs},
            **self.settings,
        }


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, sorted(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show(value: Any, limit: int = 60) -> str:
    """repr(value), shortened: error messages stay one readable line whatever a file holds."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(t) -> str:
    return {int: "an integer", float: "a number", str: "a string", list: "a list", bool: "true/false"}.get(t, str(t))


def _check_type(where: str, key: str, value: Any, expected: type) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise PtuningError(f"{where}: {key!r} must be a finite number, got an integer with {len(str(value))} digits") from None
    if expected is float and isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
        raise PtuningError(f"{where}: {key!r} must be {_type_name(expected)}, got {_show(value)}")
    if expected is float and not math.isfinite(value):
        raise PtuningError(f"{where}: {key!r} must be a finite number, got {value!r}")
    return value


def _check_setting(where: str, key: str, value: Any) -> Any:
    spec = SETTINGS[key]
    if value is None:
        if spec.optional:
            return None
        raise PtuningError(f"{where}: {key!r} must be set")
    value = _check_type(where, key, value, spec.type)
    if spec.minimum is not None:
        too_small = value <= spec.minimum if spec.exclusive_minimum else value < spec.minimum
        if too_small:
            bound = f"greater than {spec.minimum:g}" if spec.exclusive_minimum else f"at least {spec.minimum:g}"
            raise PtuningError(f"{where}: {key!r} must be {bound}, got {_show(value)}")
    if spec.maximum is not None and value > spec.maximum:
        raise PtuningError(f"{where}: {key!r} must be at most {spec.maximum:.0f}, got {_show(value)}")
    if spec.choices and value not in spec.choices:
        raise PtuningError(f"{where}: {key!r} must be one of {', '.join(spec.choices)}, got {_show(value)}")
    if key == "labels" and (
        len(value) != 2 or not all(isinstance(v, str) and v.strip() for v in value) or value[0].strip() == value[1].strip()
    ):
        raise PtuningError(f"{where}: 'labels' must be two words (label 0, label 1) that differ, got {_show(value)}")
    if key == "seeds":
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise PtuningError(f"{where}: 'seeds' must be a non-empty list of integers >= 0, got {value!r}")
        if len(set(value)) != len(value):
            raise PtuningError(f"{where}: 'seeds' has a repeated seed: {value!r}")
        value = list(value)
    return value


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key written twice in one mapping (plain YAML keeps the last silently,
    so `lr: 1e-4` followed later by `lr: 1e-3` would train at 1e-3 with no word). Keys merged in with `<<` may be
    overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    repeated = key in seen
                except TypeError:  # an unhashable key: the base constructor says so
                    continue
                if repeated:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PtuningError(f"{path}: cannot read job file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise PtuningError(f"{path}: a job file must be UTF-8 text (byte {exc.start} is not)") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: no Python objects
    except RecursionError:
        raise PtuningError(f"{path}: malformed YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PtuningError(f"{path}: malformed YAML{at}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PtuningError(f"{path}: a job file must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _check_keys(where: str, mapping: dict, prefix: str) -> None:
    for key in mapping:
        if not isinstance(key, str):
            raise PtuningError(f"{where}: keys must be strings, got {prefix}{_show(key)}")


def jobs_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where job files live: the explicit option, $PTUNING_JOBS_DIR, ./jobs, or the checkout's jobs/."""
    for candidate in (explicit, os.environ.get("PTUNING_JOBS_DIR")):
        if candidate:
            path = Path(candidate)
            if not path.is_dir():
                raise PtuningError(f"jobs directory {path} does not exist")
            return path
    for path in (Path.cwd() / "jobs", Path(__file__).resolve().parents[1] / "jobs"):
        if (path / DEFAULTS_FILE).is_file():
            return path
    raise PtuningError("no jobs/ directory found: run from the ptuning checkout or set PTUNING_JOBS_DIR")


def load_defaults(directory: Path) -> dict[str, Any]:
    path = directory / DEFAULTS_FILE
    data = _read_yaml(path) if path.exists() else {}
    _check_keys(str(path), data, "")
    for key in data:
        if key not in SETTINGS:
            raise PtuningError(f"{path}: unknown key {key!r}{_suggest(key, SETTINGS)}")
    missing = [k for k, s in SETTINGS.items() if k not in data and not s.optional and k not in PER_JOB]
    if missing:
        raise PtuningError(f"{path}: missing defaults for {', '.join(missing)}")
    return {k: _check_setting(str(path), k, data.get(k)) for k in SETTINGS if k in data or k not in PER_JOB}


def parse_job(name: str, data: dict[str, Any], defaults: dict[str, Any], where: str, path: Path | None = None) -> Job:
    """Validate a job mapping (already read from YAML) on top of the defaults."""
    from ptuning.methods import REGISTRY, method_class

    _check_keys(where, data, "")
    for key in data:
        if key not in TOP_LEVEL:
            raise PtuningError(f"{where}: unknown key {_show(key)}{_suggest(key, TOP_LEVEL)}")
    for key in ("title", "method"):
        if key not in data:
            raise PtuningError(f"{where}: missing required key {key!r}")
    descriptive = {}
    for key, typ in DESCRIPTIVE.items():
        if key in data:
            descriptive[key] = _check_type(where, key, data[key], typ)
    settings = dict(defaults)
    for key in SETTINGS:
        if key in data:
            settings[key] = _check_setting(where, key, data[key])

    block = data["method"]
    if not isinstance(block, dict):
        raise PtuningError(f"{where}: 'method' must be a mapping with 'name' and 'implementation'")
    _check_keys(where, block, "method.")
    for key in ("name", "implementation"):
        if key not in block:
            raise PtuningError(f"{where}: missing required key 'method.{key}'")
        if not isinstance(block[key], str):
            raise PtuningError(f"{where}: 'method.{key}' must be a string, got {_show(block[key])}")
    mname, impl = block["name"], block["implementation"]
    if (mname, impl) not in REGISTRY:
        names = {m for m, _ in REGISTRY}
        if mname not in names:
            raise PtuningError(f"{where}: unknown method.name {_show(mname)}{_suggest(mname, names)}; known: {', '.join(sorted(names))}")
        impls = sorted(i for m, i in REGISTRY if m == mname)
        raise PtuningError(
            f"{where}: method {mname!r} has no implementation {_show(impl)}{_suggest(impl, impls)}; known: {', '.join(impls)}"
        )
    cls = method_class(mname, impl)
    if "lr" not in data:
        if getattr(cls, "trains", True):
            raise PtuningError(f"{where}: missing required key 'lr'")
        settings["lr"] = None  # nothing trains (zero-shot): no learning rate
    knobs = {}
    for key, value in block.items():
        if key in ("name", "implementation"):
            continue
        if key not in cls.knobs:
            hint = _suggest(key, cls.knobs) or (f"; allowed: {', '.join(cls.knobs)}" if cls.knobs else "; it takes none")
            raise PtuningError(f"{where}: unknown key {_show('method.' + key)} for {mname}/{impl}{hint}")
        spec = cls.knobs[key]
        value = _check_type(where, f"method.{key}", value, spec.type)
        if spec.minimum is not None and value < spec.minimum:
            raise PtuningError(f"{where}: 'method.{key}' must be at least {spec.minimum:g}, got {_show(value)}")
        knobs[key] = value
    for key, spec in cls.knobs.items():
        if key not in knobs:
            if spec.default is None:
                raise PtuningError(f"{where}: missing required key 'method.{key}' for {mname}/{impl}")
            knobs[key] = spec.default
    try:  # rules a Knob cannot express (e.g. LoRA's alpha > 0)
        knobs = cls.validate(knobs)
    except PtuningError as exc:
        raise PtuningError(f"{where}: {exc}") from None

    reference = data.get("reference") or {}
    if not isinstance(reference, dict):
        raise PtuningError(f"{where}: 'reference' must be a mapping with 'accuracy' and 'total_params'")
    _check_keys(where, reference, "reference.")
    reference = dict(reference)
    for key, value in reference.items():
        if key not in REFERENCE_KEYS:
            raise PtuningError(f"{where}: unknown key {_show('reference.' + key)}{_suggest(key, REFERENCE_KEYS)}")
        if value is not None:
            reference[key] = _check_type(where, f"reference.{key}", value, REFERENCE_KEYS[key])

    return Job(
        name=name,
        path=path,
        title=descriptive.get("title", name),
        row=descriptive.get("row", 0),
        method=mname,
        implementation=impl,
        knobs=knobs,
        settings=settings,
        reference_accuracy=reference.get("accuracy"),
        reference_total_params=reference.get("total_params"),
        notes=descriptive.get("notes", ""),
    )


def load_job_file(path: Path, defaults: dict[str, Any] | None = None) -> Job:
    path = Path(path)
    if defaults is None:
        defaults = load_defaults(path.parent) if (path.parent / DEFAULTS_FILE).exists() else load_defaults(jobs_dir())
    return parse_job(path.stem, _read_yaml(path), defaults, str(path), path)


def job_names(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml") if not p.name.startswith("_"))


def load_job(ref: str, directory: Path | None = None) -> Job:
    """A job by name (file stem in the jobs directory) or by path to a YAML file."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or os.sep in ref:
        if not path.is_file():
            raise PtuningError(f"job file {ref} does not exist")
        return load_job_file(path)
    directory = directory or jobs_dir()
    candidate = directory / f"{ref}.yaml"
    if not candidate.is_file():
        names = job_names(directory)
        close = difflib.get_close_matches(ref, names, n=3, cutoff=0.5)
        hint = f"; nearest: {', '.join(close)}" if close else ""
        raise PtuningError(f"no job named {ref!r} in {directory}{hint} (see `ptuning list`)")
    return load_job_file(candidate, load_defaults(directory))


def load_all_jobs(directory: Path | None = None) -> list[Job]:
    """Every job in the directory, in table order (row, then name)."""
    directory = directory or jobs_dir()
    defaults = load_defaults(directory)
    jobs = [load_job_file(directory / f"{n}.yaml", defaults) for n in job_names(directory)]
    return sorted(jobs, key=lambda j: (j.row, j.name))
