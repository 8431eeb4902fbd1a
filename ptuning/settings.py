"""Settings and job files: one typed schema for every training and evaluation key.

`Settings` is the schema: a frozen dataclass whose fields are the keys a job may set, each with its type and,
in its metadata, a help text and its bounds or choices. It drives everything that reads a setting:

* `jobs/_defaults.yaml` holds the shared values (every field but `lr`, which each job file gives itself);
  `load_defaults` checks it against the schema;
* a job file (one YAML per table row in `jobs/`) names its row, title, method block and learning rate, and may
  override any default; `parse_job` validates it, naming the file and the key (with a did-you-mean hint for a
  misspelled key);
* the command line: `--set KEY=VALUE` (any setting, or `method.KNOB`) and the shortcut options of `ptuning run`
  (`--epochs`, `--seeds`, ...) go through `parse_value` and `Job.override`, the same checks with the same messages.

A job is `Job` (what the file describes) holding a `Settings` (how it runs): `job.settings.lr` is a float.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ptuning.errors import PtuningError
from ptuning.protocol import PROTOCOLS

DEFAULTS_FILE = "_defaults.yaml"
#: a job's name is its file's stem: plain enough to be a folder name and a command-line word
JOB_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def setting(help: str, *, minimum: float | None = None, maximum: float | None = None, exclusive_minimum: bool = False,
            choices: tuple[str, ...] | None = None, per_job: bool = False, rule: Callable[[str, Any], Any] | None = None):
    """A Settings field: its help text and what a value must satisfy (type comes from the annotation).

    `per_job`: no shared default, each job file gives it. `rule(where, value)`: a check beyond type and bounds,
    returning the value (possibly normalised) or raising PtuningError."""
    return field(metadata={"help": help, "minimum": minimum, "maximum": maximum, "exclusive_minimum": exclusive_minimum,
                           "choices": choices, "per_job": per_job, "rule": rule})


def _labels_rule(where: str, value: list) -> list:
    if len(value) != 2 or not all(isinstance(v, str) and v.strip() for v in value) or value[0].strip() == value[1].strip():
        raise PtuningError(f"{where}: 'labels' must be two words (label 0, label 1) that differ, got {_show(value)}")
    return list(value)


SEED_MAX = 2**32 - 1  # numpy's (and torch's generator's) seed range


def _seeds_rule(where: str, value: list) -> list:
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= SEED_MAX for v in value):
        raise PtuningError(f"{where}: 'seeds' must be a non-empty list of integers from 0 to {SEED_MAX}, got {_show(value)}")
    if len(set(value)) != len(value):
        raise PtuningError(f"{where}: 'seeds' has a repeated seed: {_show(value)}")
    return list(value)


#: a bound for counts that have no natural one: large enough for any real run, small enough to refuse a typo
BIG = 10**9


@dataclass(frozen=True)
class Settings:
    """How a job trains and evaluates. Values: `jobs/_defaults.yaml`, then the job file, then the command line."""

    model: str = setting("hub id or local directory of a T5 model")
    dataset: str = setting("hub id, a dataset saved with save_to_disk, or a folder of train/test json|csv|parquet files")
    dataset_config: str | None = setting("hub configuration name (ignored for local paths)")
    lr: float | None = setting("learning rate of AdamW (none: the method does not train)", minimum=0.0,
                               exclusive_minimum=True, per_job=True)
    weight_decay: float = setting("AdamW weight decay", minimum=0.0, maximum=BIG)
    batch_size: int = setting("training batch size", minimum=1, maximum=2**20)
    eval_batch_size: int = setting("evaluation batch size of the faithful path (generate)", minimum=1, maximum=2**20)
    epochs: int = setting("number of epochs; evaluation after each", minimum=1, maximum=100_000)
    max_length: int = setting("input tokens kept, </s> and soft-prompt placeholders included", minimum=2, maximum=2**20)
    generate_max_length: int = setting("generate(max_length=N), greedy", minimum=2, maximum=2**16)
    seed: int = setting("random seed of a run", minimum=0, maximum=SEED_MAX)
    seeds: list[int] | None = setting("several seeds: one run each; the tables show mean ± std", rule=_seeds_rule)
    train_limit: int | None = setting("use N training reviews, a fixed random sample (none: all)", minimum=1, maximum=BIG)
    eval_limit: int | None = setting("use N test reviews, a fixed random sample (none: all)", minimum=1, maximum=BIG)
    precision: str = setting("auto (bf16 on the fast path on CUDA, else fp32), fp32 or bf16", choices=("auto", "fp32", "bf16"))
    speed: str = setting("auto (fast on CUDA, faithful on CPU), fast, or faithful (the exercise's loop)",
                         choices=("auto", "fast", "faithful"))
    fast_eval_batch_size: int = setting("fast path: length-sorted evaluation batch size", minimum=1, maximum=2**20)
    compile: bool = setting("fast path on CUDA: torch.compile over length buckets instead of CUDA graphs")
    cuda_graphs: bool = setting("fast path on CUDA: replay each training step as a CUDA graph")
    labels: list[str] = setting("verbalizer: the words for label 0 and label 1", rule=_labels_rule)
    protocol: str = setting("faithful (max test accuracy over epochs) or heldout (epoch chosen on a validation split)",
                            choices=PROTOCOLS)
    heldout_size: int = setting("heldout protocol: validation reviews held out from train", minimum=1, maximum=BIG)
    heldout_seed: int = setting("heldout protocol: which reviews are held out (the same for every job seed)", minimum=0,
                                maximum=SEED_MAX)


@dataclass(frozen=True)
class Spec:
    """One setting's rules, read from the schema: type (`list` with `item`), optional (None allowed), bounds, help."""

    name: str
    type: type
    item: type | None
    optional: bool
    help: str
    minimum: float | None
    maximum: float | None
    exclusive_minimum: bool
    choices: tuple[str, ...] | None
    per_job: bool
    rule: Callable[[str, Any], Any] | None


def _specs() -> dict[str, Spec]:
    hints = typing.get_type_hints(Settings)
    out = {}
    for f in dataclasses.fields(Settings):
        kind, optional = hints[f.name], False
        if isinstance(kind, types.UnionType) and type(None) in kind.__args__:
            optional = True
            kind = next(a for a in kind.__args__ if a is not type(None))
        item = None
        if typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            kind = list
        out[f.name] = Spec(name=f.name, type=kind, item=item, optional=optional, **f.metadata)
    return out


#: every setting's rules, by name, in schema order
SETTINGS: dict[str, Spec] = _specs()
#: descriptive keys of a job file (not training settings)
DESCRIPTIVE = {"title": str, "row": int, "notes": str}
REFERENCE_KEYS = {"accuracy": float, "total_params": int}
TOP_LEVEL = set(SETTINGS) | set(DESCRIPTIVE) | {"method", "reference", "sweep"}
#: settings a sweep may not vary: seeds are a run's repetitions (--seeds), not a point of a grid
NOT_SWEPT = {"seed", "seeds"}
#: more runs than this (grid points × seeds) from one command line need --yes
SWEEP_CONFIRM = 24


@dataclass(frozen=True)
class Job:
    """One table row: what its file describes (name, title, row, method and knobs, reference) and its settings."""

    name: str
    path: Path | None
    title: str
    row: int
    method: str
    implementation: str
    knobs: dict[str, Any]
    settings: Settings
    reference_accuracy: float | None = None
    reference_total_params: int | None = None
    notes: str = ""
    #: a grid (`sweep:` in the job file): key (a setting or `method.KNOB`) -> the values it takes
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    #: for one point of a grid: the point ("lr=3e-4,rank=8"); `name` is then "<job>/<point>"
    variant: str = ""

    @property
    def seed_list(self) -> list[int]:
        """The seeds this job runs with: `seeds` when set, else the single `seed`."""
        return list(self.settings.seeds or [self.settings.seed])

    def for_seed(self, seed: int) -> "Job":
        """A copy for one run: `seed` set, `seeds` cleared (the result records the seed it ran with)."""
        seed = check_setting(self.name, "seed", seed)
        return dataclasses.replace(self, settings=dataclasses.replace(self.settings, seed=seed, seeds=None))

    @property
    def knob_summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.knobs.items()) or "–"

    def override(self, values: dict[str, Any] | None = None, *, where: str = "command line", **more: Any) -> "Job":
        """A copy with settings (`lr`) and method knobs (`method.rank`) replaced, validated like the file's values:
        `job.override({"lr": 3e-4, "method.rank": 4})` or `job.override(epochs=2)`."""
        from ptuning.methods import method_class

        settings: dict[str, Any] = {}
        knobs = dict(self.knobs)
        for key, value in {**(values or {}), **more}.items():
            if key.startswith("method."):
                knobs[key[len("method."):]] = value
            elif key in SETTINGS:
                settings[key] = check_setting(where, key, value)
            else:
                raise PtuningError(f"{where}: unknown setting {_show(key)}{_suggest(key, SETTINGS)}")
        if knobs != self.knobs:
            knobs = check_knobs(f"{self.name} ({where})", method_class(self.method, self.implementation), knobs)
        if settings.get("lr", self.settings.lr) is None and _trains(self):
            raise PtuningError(f"{where}: 'lr' must be set for {self.name}, whose method trains")
        return dataclasses.replace(self, knobs=knobs, settings=dataclasses.replace(self.settings, **settings))

    def config(self) -> dict[str, Any]:
        """Everything that defines the run, for the result file."""
        return {
            "name": self.name,
            "title": self.title,
            "row": self.row,
            "method": {"name": self.method, "implementation": self.implementation, **self.knobs},
            **dataclasses.asdict(self.settings),
            **({"variant": self.variant} if self.variant else {}),
        }

    @property
    def base_name(self) -> str:
        """The job file's name (a point of a grid is named "<job>/<point>")."""
        return self.name.split("/", 1)[0]

    def points(self) -> list["Job"]:
        """The grid's points as jobs of their own, in grid order (the last key varying fastest); [] without a grid.

        A point is named by its values, `lora_8_peft/lr=3e-4,rank=8`, runs in `<output>/lora_8_peft/lr=3e-4,rank=8/`,
        and drops the job file's reference figures (they are the exercise's settings')."""
        import itertools

        if not self.sweep:
            return []
        keys = list(self.sweep)
        out = []
        for values in itertools.product(*(self.sweep[k] for k in keys)):
            point = ",".join(f"{_short_key(k)}={_short_value(v)}" for k, v in zip(keys, values))
            job = self.override(dict(zip(keys, values)), where=f"{self.name} (sweep)")
            out.append(dataclasses.replace(job, name=f"{self.name}/{point}", variant=point, sweep={},
                                           reference_accuracy=None, reference_total_params=None))
        return out

    def point(self, variant: str) -> "Job":
        """One point of the grid by its name ("lr=3e-4,rank=8")."""
        for job in self.points():
            if job.variant == variant:
                return job
        names = [j.variant for j in self.points()]
        if not names:
            raise PtuningError(f"{self.name} has no sweep: its points cannot be named (`{self.name}/{variant}`)")
        close = difflib.get_close_matches(variant, names, n=2, cutoff=0.5)
        raise PtuningError(f"{self.name} has no point {variant!r}" + (f"; nearest: {', '.join(close)}" if close else "")
                           + f" (its {len(names)} points: `ptuning list --points {self.name}`)")


def _short_key(key: str) -> str:
    return key[len("method."):] if key.startswith("method.") else key


def _short_value(value: Any) -> str:
    """A grid value as it reads in a point's name: 3e-4, 0.1, 8, true, bf16."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
            mantissa, exponent = f"{value:.6e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:.6g}"
    return str(value)


def expand(jobs: list[Job]) -> list[Job]:
    """Each job, or each point of its grid in its place (a job with a sweep runs its points, not itself)."""
    return [point for job in jobs for point in (job.points() or [job])]


def count_runs(jobs: list[Job]) -> int:
    return sum(len(job.seed_list) for job in expand(jobs))


def confirm_runs(jobs: list[Job], yes: bool, limit: int = SWEEP_CONFIRM) -> None:
    """Refuse (one line) to start more runs than `limit` from grids unless `yes`."""
    if yes or not any(job.sweep for job in jobs):
        return
    total = count_runs(jobs)
    if total > limit:
        grids = ", ".join(f"{job.name}: {len(job.points())} points × {len(job.seed_list)} seeds" for job in jobs if job.sweep)
        raise PtuningError(f"this would start {total} runs ({grids}); pass --yes to run them, or make the grid smaller")


def _trains(job: Job) -> bool:
    from ptuning.methods import method_class

    return getattr(method_class(job.method, job.implementation), "trains", True)


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, sorted(options), n=1, cutoff=0.6) if isinstance(key, str) else []
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Short(reprlib.Repr):
    """A repr that looks at a few elements of a few levels (bounded work whatever the value) and names a huge
    integer's size instead of writing it (repr refuses an integer of more than 4300 digits)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 3, 4, 4, 4, 4
        self.maxstring = self.maxother = 80

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 256:
            return f"<an integer of about {int(x.bit_length() * math.log10(2)) + 1} digits>"
        return repr(x)


_REPR = _Short()


def _show(value: Any, limit: int = 60) -> str:
    """repr(value), shortened: error messages stay one readable line whatever a file holds. The work is bounded too:
    a few elements of a few levels are looked at, so a small YAML file whose aliases nest into billions of elements
    is shown at once, not expanded."""
    text = _REPR.repr(value) if isinstance(value, (list, tuple, dict, set, int)) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(t) -> str:
    return {int: "an integer", float: "a number", str: "a string", list: "a list", bool: "true/false"}.get(t, str(t))


def check_type(where: str, key: str, value: Any, expected: type) -> Any:
    """`value` as `expected` (an int or a numeric string is a float where a float is expected), or one error line."""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise PtuningError(f"{where}: {key!r} must be a finite number, got {_show(value)}") from None
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


def check_bounds(where: str, key: str, value: Any, minimum: float | None, maximum: float | None,
                 exclusive_minimum: bool = False) -> None:
    if minimum is not None:
        too_small = value <= minimum if exclusive_minimum else value < minimum
        if too_small:
            bound = f"greater than {minimum:g}" if exclusive_minimum else f"at least {minimum:g}"
            raise PtuningError(f"{where}: {key!r} must be {bound}, got {_show(value)}")
    if maximum is not None and value > maximum:
        raise PtuningError(f"{where}: {key!r} must be at most {maximum:.0f}, got {_show(value)}")


def check_setting(where: str, key: str, value: Any) -> Any:
    """A setting's value checked against the schema (type, bounds, choices, its rule); returns it normalised."""
    spec = SETTINGS[key]
    if value is None:
        if spec.optional:
            return None
        raise PtuningError(f"{where}: {key!r} must be set")
    value = check_type(where, key, value, spec.type)
    if spec.type in (int, float):
        check_bounds(where, key, value, spec.minimum, spec.maximum, spec.exclusive_minimum)
    if spec.choices and value not in spec.choices:
        raise PtuningError(f"{where}: {key!r} must be one of {', '.join(spec.choices)}, got {_show(value)}")
    if spec.rule is not None:
        value = spec.rule(where, value)
    return value


def check_knobs(where: str, cls, block: dict[str, Any]) -> dict[str, Any]:
    """A method block's knobs (without name/implementation) checked against the method class: unknown, type, bounds,
    missing, and the class's own rules; defaults filled in."""
    knobs = {}
    for key, value in block.items():
        if key not in cls.knobs:
            hint = _suggest(key, cls.knobs) or (f"; allowed: {', '.join(cls.knobs)}" if cls.knobs else "; it takes none")
            raise PtuningError(f"{where}: unknown key {_show('method.' + key)} for {cls.name}/{cls.implementation}{hint}")
        spec = cls.knobs[key]
        value = check_type(where, f"method.{key}", value, spec.type)
        check_bounds(where, f"method.{key}", value, spec.minimum, spec.maximum)
        knobs[key] = value
    for key, spec in cls.knobs.items():
        if key not in knobs:
            if spec.default is None:
                raise PtuningError(f"{where}: missing required key 'method.{key}' for {cls.name}/{cls.implementation}")
            knobs[key] = spec.default
    try:  # rules a Knob cannot express (e.g. LoRA's alpha > 0)
        return cls.validate(knobs)
    except PtuningError as exc:
        raise PtuningError(f"{where}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# command-line values: --set KEY=VALUE and the shortcut options


def knob_spec(key: str):
    """The Knob of `method.KNOB` in any method (for typing a command-line value), or None."""
    from ptuning.methods import REGISTRY, method_class

    name = key[len("method."):]
    for method, implementation in REGISTRY:
        try:
            cls = method_class(method, implementation)
        except PtuningError:  # pragma: no cover - every registered class imports without its library
            continue
        if name in cls.knobs:
            return cls.knobs[name]
    return None


def parse_value(key: str, text: str, where: str) -> Any:
    """A command-line value for `key` (a setting or `method.KNOB`), typed as the schema says and checked.

    Strings are taken as written (`--set model=/models/t5`); other values are read as YAML (`3e-4`, `true`,
    `[0, 1, 2]`, `null`). A string setting that may be unset takes `null` (or `~`) for unset."""
    if key.startswith("method."):
        spec = knob_spec(key)
        if spec is None:
            raise PtuningError(f"{where}: no method has a knob {key[len('method.'):]!r}")
        kind = spec.type
    elif key in SETTINGS:
        kind = SETTINGS[key].type
    else:
        raise PtuningError(f"{where}: unknown setting {_show(key)}{_suggest(key, SETTINGS)}; see `ptuning settings`")
    if kind is str:
        optional = key in SETTINGS and SETTINGS[key].optional
        value: Any = None if optional and text.strip() in ("null", "~") else text
    else:
        try:
            value = yaml.load(text, Loader=_Loader)
        except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an integer of thousands of digits
            raise PtuningError(f"{where}: cannot read {_show(text)} as a value for {key!r}") from None
    if key in SETTINGS:
        return check_setting(where, key, value)
    return check_type(where, key, value, kind)  # bounds and rules: when applied to a job's method (Job.override)


def parse_assignment(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` of `--set` → (key, typed value)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise PtuningError(f"--set {_show(text)}: expected KEY=VALUE, e.g. --set lr=3e-4 or --set method.rank=4")
    return key, parse_value(key, value, f"--set {key}")


def format_value(value: Any) -> str:
    """The text `parse_value` reads back as `value` (for child command lines: `--set seeds=[0, 1]`)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


# ---------------------------------------------------------------------------------------------
# reading YAML


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key written twice in one mapping (plain YAML quietly keeps the last one,
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


#: a job file is a few lines; a far larger one is refused unread
MAX_JOB_FILE_BYTES = 2**20


def _read_yaml(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_JOB_FILE_BYTES:
            raise PtuningError(f"{path}: a job file must be under {MAX_JOB_FILE_BYTES // 2**10} KiB (a job is a few lines)")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PtuningError(f"{path}: cannot read job file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise PtuningError(f"{path}: a job file must be UTF-8 text (byte {exc.start} is not)") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: no Python objects
    except RecursionError:
        raise PtuningError(f"{path}: malformed YAML: nested too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits (Python's limit on converting text to int)
        raise PtuningError(f"{path}: unreadable value ({str(exc).split(':')[0]})") from None
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


# ---------------------------------------------------------------------------------------------
# defaults and job files


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
    """The shared settings of `directory/_defaults.yaml`, checked against the schema: every setting but the
    per-job ones must be there."""
    path = directory / DEFAULTS_FILE
    data = _read_yaml(path) if path.exists() else {}
    _check_keys(str(path), data, "")
    for key in data:
        if key not in SETTINGS:
            raise PtuningError(f"{path}: unknown key {key!r}{_suggest(key, SETTINGS)}")
    missing = [k for k, s in SETTINGS.items() if k not in data and not s.per_job]
    if missing:
        raise PtuningError(f"{path}: missing defaults for {', '.join(missing)}")
    return {k: check_setting(str(path), k, data[k]) for k in SETTINGS if k in data}


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
    descriptive = {key: check_type(where, key, data[key], typ) for key, typ in DESCRIPTIVE.items() if key in data}
    values = dict(defaults)
    for key in SETTINGS:
        if key in data:
            values[key] = check_setting(where, key, data[key])

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
    trains = getattr(cls, "trains", True)
    if "lr" not in data:
        if trains:
            raise PtuningError(f"{where}: missing required key 'lr'")
        values["lr"] = None  # nothing trains (zero-shot): no learning rate
    elif values["lr"] is None and trains:
        raise PtuningError(f"{where}: 'lr' must be set")
    knobs = check_knobs(where, cls, {k: v for k, v in block.items() if k not in ("name", "implementation")})
    sweep = parse_sweep(where, data.get("sweep"), cls, knobs) if "sweep" in data else {}

    reference = data.get("reference") or {}
    if not isinstance(reference, dict):
        raise PtuningError(f"{where}: 'reference' must be a mapping with 'accuracy' and 'total_params'")
    _check_keys(where, reference, "reference.")
    reference = dict(reference)
    for key, value in reference.items():
        if key not in REFERENCE_KEYS:
            raise PtuningError(f"{where}: unknown key {_show('reference.' + key)}{_suggest(key, REFERENCE_KEYS)}")
        if value is not None:
            reference[key] = check_type(where, f"reference.{key}", value, REFERENCE_KEYS[key])

    return Job(
        name=name,
        path=path,
        title=descriptive.get("title", name),
        row=descriptive.get("row", 0),
        method=mname,
        implementation=impl,
        knobs=knobs,
        settings=Settings(**values),
        reference_accuracy=reference.get("accuracy"),
        reference_total_params=reference.get("total_params"),
        notes=descriptive.get("notes", ""),
        sweep=sweep,
    )


#: a grid's values must name a point in a folder name and on a command line
_POINT_VALUE = re.compile(r"^[A-Za-z0-9_.+-]+$")


def parse_sweep(where: str, block: Any, cls, knobs: dict[str, Any], label: str = "sweep") -> dict[str, list[Any]]:
    """`sweep:` of a job file: {key: [values]}, each key a setting or a knob of the job's method (`rank` or
    `method.rank`), each value checked like the file's own; returns canonical keys (`method.rank`)."""
    if not isinstance(block, dict) or not block:
        raise PtuningError(f"{where}: 'sweep' must be a mapping of settings or method knobs to lists of values, "
                           "e.g. sweep: {lr: [1.0e-4, 3.0e-4], rank: [1, 8]}")
    _check_keys(where, block, "sweep.")
    out: dict[str, list[Any]] = {}
    for key, values in block.items():
        knob = key[len("method."):] if key.startswith("method.") else key
        if key in NOT_SWEPT:
            raise PtuningError(f"{where}: 'sweep.{key}' cannot be swept; give the seeds with 'seeds' or --seeds")
        if key not in SETTINGS and knob not in cls.knobs:
            options = sorted(set(SETTINGS) - NOT_SWEPT) + sorted(cls.knobs)
            raise PtuningError(f"{where}: 'sweep.{key}' is neither a setting nor a knob of {cls.name}/{cls.implementation}"
                               f"{_suggest(key, options)}")
        if not isinstance(values, list) or not values:
            raise PtuningError(f"{where}: 'sweep.{key}' must be a non-empty list of values, got {_show(values)}")
        if key in SETTINGS:
            checked = [check_setting(f"{where} ({label})", key, v) for v in values]
            canonical = key
        else:
            checked = [check_knobs(f"{where} ({label})", cls, {**knobs, knob: v})[knob] for v in values]
            canonical = f"method.{knob}"
        if len({repr(v) for v in checked}) != len(checked):
            raise PtuningError(f"{where}: 'sweep.{key}' has a value twice: {_show(values)}")
        bad = [v for v in checked if not _POINT_VALUE.match(_short_value(v))]
        if bad:
            raise PtuningError(f"{where}: 'sweep.{key}' value {_show(bad[0])} cannot name a point (letters, digits and . _ + - only)")
        if canonical in out:
            raise PtuningError(f"{where}: 'sweep' names {knob!r} twice")
        out[canonical] = checked
    return out


def load_job_file(path: Path, defaults: dict[str, Any] | None = None) -> Job:
    path = Path(path)
    if not JOB_NAME.match(path.stem):  # the name becomes a folder of the results and a word on command lines
        raise PtuningError(f"{path}: a job file's name must be letters, digits, '_', '-' and '.' (not first), "
                           f"got {_show(path.stem)}; rename the file")
    if defaults is None:
        defaults = load_defaults(path.parent) if (path.parent / DEFAULTS_FILE).exists() else load_defaults(jobs_dir())
    return parse_job(path.stem, _read_yaml(path), defaults, str(path), path)


def job_names(directory: Path) -> list[str]:
    """The jobs in `directory`: its *.yaml files but `_defaults.yaml` and hidden files."""
    return sorted(p.stem for p in directory.glob("*.yaml") if not p.name.startswith(("_", ".")))


def load_job(ref: str, directory: Path | None = None) -> Job:
    """A job by name (file stem in the jobs directory), one point of a job's grid (`lora_8_peft/lr=3e-4,rank=8`), or
    a path to a YAML file."""
    base, sep, variant = ref.partition("/")
    if sep and "=" in variant and not ref.endswith((".yaml", ".yml")):
        return load_job(base, directory).point(variant)
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


def describe_settings(defaults: dict[str, Any] | None = None) -> list[list[str]]:
    """Rows of `ptuning settings`: key, type, allowed values, default, help."""
    rows = []
    for key, spec in SETTINGS.items():
        kind = f"list of {_type_name(spec.item).split()[-1]}s" if spec.type is list else _type_name(spec.type).split()[-1]
        if spec.optional:
            kind += " or null"
        allowed = ", ".join(spec.choices) if spec.choices else ""
        if spec.minimum is not None:
            allowed = f"> {spec.minimum:g}" if spec.exclusive_minimum else f"≥ {spec.minimum:g}"
            if spec.maximum is not None:
                allowed += f", ≤ {spec.maximum:.0f}"
        default = "per job" if spec.per_job else format_value((defaults or {}).get(key)) if defaults else ""
        rows.append([key, kind, allowed, default, spec.help])
    return rows
