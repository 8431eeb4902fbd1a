"""Property: loading a job file never crashes. It returns a valid Job or raises PtuningError with a message."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ptuning.errors import PtuningError
from ptuning.settings import SETTINGS, Job, load_defaults, load_job_file

from .conftest import JOBS

REAL_KEYS = sorted(SETTINGS) + ["title", "row", "notes", "method", "reference"]
METHOD_KEYS = ["name", "implementation", "rank", "alpha", "dropout", "tokens", "bottleneck"]
NAMES = ["full", "soft_prompt", "adapter", "lora", "ful", ""]
IMPLS = ["hand", "opendelta", "adapterhub", "peft", "x"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["1e-4", "fp32", "bf16", "negative", "positive", "nan", ".inf"]),
    st.binary(max_size=8),
    st.dates(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(REAL_KEYS + METHOD_KEYS), st.integers()), inner, max_size=4),
    ),
    max_leaves=12,
)
methods = st.one_of(
    values,
    st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(NAMES), values), "implementation": st.one_of(st.sampled_from(IMPLS), values)},
        optional={k: values for k in ("rank", "alpha", "dropout", "tokens", "bottleneck")},
    ),
)
job_dicts = st.dictionaries(
    st.one_of(st.sampled_from(REAL_KEYS), st.text(max_size=10), st.integers(), st.booleans(), st.none()),
    values,
    max_size=6,
).flatmap(
    lambda d: st.fixed_dictionaries(
        {"title": st.one_of(st.just("T"), values), "lr": st.one_of(st.just(1e-4), values), "method": methods}
    ).map(lambda required: {**required, **d})
)


@pytest.fixture(scope="module")
def job_path(tmp_path_factory):
    directory = tmp_path_factory.mktemp("prop")
    (directory / "_defaults.yaml").write_text((JOBS / "_defaults.yaml").read_text())
    return directory / "job.yaml", load_defaults(directory)  # defaults read once: each example parses only its file


def check(path, defaults) -> None:
    try:
        job = load_job_file(path, defaults)
    except PtuningError as exc:
        message = str(exc)
        assert message and str(path) in message and "\n" not in message and len(message) < 2000
        return
    assert isinstance(job, Job)
    assert isinstance(job.title, str) and isinstance(job.row, int) and isinstance(job.method, str)
    assert isinstance(job.settings.lr, float) and math.isfinite(job.settings.lr) and job.settings.lr > 0
    assert isinstance(job.settings.epochs, int) and job.settings.epochs >= 1
    assert len(job.settings.labels) == 2 and all(isinstance(w, str) for w in job.settings.labels)
    job.config()  # serialisable summary never fails


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=job_dicts)
@example(data={"title": "T", "lr": 10**400, "method": {"name": "full", "implementation": "hand"}})
@example(data={"title": "T", "lr": 1e-4, "seed": 2**40, "method": {"name": "full", "implementation": "hand"}})
@example(data={"title": "T", "lr": 1e-4, "method": {"name": "lora", "implementation": "hand", "rank": 8, "alpha": 0}})
@example(data={"title": "T", "lr": 1e-4, "method": {"name": "lora", "implementation": "peft", "rank": 1, "dropout": 1.5}})
@example(data={"title": "T", "lr": 1e-4, "labels": ["a", "a"], "method": {"name": "full", "implementation": "hand"}})
@example(data={"title": "T", "lr": 1e-4, "method": {"name": "full", "implementation": "hand", 3: 1}})
@example(data={"title": "T", "lr": 1e-4, "reference": {None: 1}, "method": {"name": "full", "implementation": "hand"}})
def test_any_yaml_mapping_loads_or_is_one_clear_error(job_path, data):
    path, defaults = job_path
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    check(path, defaults)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200), st.text(alphabet="{}[]:,-'\"!&*?|># \n\tabc01.", max_size=80)))
@example(text=b"\x80")
@example(text="[" * 5000)
@example(text="? [a, b]\n: 1\n")
@example(text="title: T\nlr: 1\nmethod: {name: full, implementation: hand}\n1: x\n")
def test_any_text_loads_or_is_one_clear_error(job_path, text):
    path, defaults = job_path
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check(path, defaults)
