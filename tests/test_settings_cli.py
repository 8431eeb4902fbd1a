"""One settings schema: `_defaults.yaml`, job files, `--set KEY=VALUE` and the shortcut options all go through it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ptuning import cli
from ptuning.cli import main
from ptuning.errors import PtuningError
from ptuning.settings import SETTINGS, Settings, format_value, load_defaults, load_job, parse_assignment, parse_value
from tests.conftest import JOBS


def invoke(*args):
    return CliRunner().invoke(main, ["--jobs-dir", str(JOBS), *args], env={"HF_HUB_OFFLINE": "1"}, catch_exceptions=False)


def test_the_schema_is_the_dataclass_and_every_field_has_a_help_text():
    assert list(SETTINGS) == [f.name for f in dataclasses.fields(Settings)]
    assert all(spec.help for spec in SETTINGS.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_job("full_ft", JOBS).settings.lr = 1.0
    job = load_job("lora_8", JOBS)
    assert isinstance(job.settings, Settings) and job.settings.lr == 1e-4 and job.settings.labels == ["negative", "positive"]
    assert not hasattr(job, "lr")  # typed access only: job.settings.lr


def test_defaults_file_gives_every_shared_setting_each_with_a_comment():
    text = (JOBS / "_defaults.yaml").read_text()
    data = yaml.safe_load(text)
    assert set(data) == {k for k, s in SETTINGS.items() if not s.per_job}
    for key in data:
        line = next(line for line in text.splitlines() if line.startswith(f"{key}:"))
        assert "#" in line, f"_defaults.yaml: {key} has no comment"
    assert load_defaults(JOBS)["batch_size"] == 32


def test_defaults_file_is_checked_against_the_schema(tmp_path):
    text = (JOBS / "_defaults.yaml").read_text()
    (tmp_path / "_defaults.yaml").write_text(text.replace("epochs: 10 ", "epochs: 0 "))
    with pytest.raises(PtuningError, match=r"_defaults.yaml: 'epochs' must be at least 1, got 0"):
        load_defaults(tmp_path)
    (tmp_path / "_defaults.yaml").write_text(text.replace("batch_size:", "bach_size:"))
    with pytest.raises(PtuningError, match=r"unknown key 'bach_size' \(did you mean 'batch_size'\?\)"):
        load_defaults(tmp_path)
    (tmp_path / "_defaults.yaml").write_text("\n".join(line for line in text.splitlines() if not line.startswith("heldout_seed:")))
    with pytest.raises(PtuningError, match="missing defaults for heldout_seed"):
        load_defaults(tmp_path)


@pytest.mark.parametrize("text, key, value", [
    ("lr=3e-4", "lr", 3e-4),
    ("epochs=2", "epochs", 2),
    ("compile=true", "compile", True),
    ("seeds=[0, 1, 2]", "seeds", [0, 1, 2]),
    ("labels=[bad, good]", "labels", ["bad", "good"]),
    ("train_limit=null", "train_limit", None),
    ("dataset_config=null", "dataset_config", None),
    ("model=/models/t5 small", "model", "/models/t5 small"),
    ("model=123", "model", "123"),  # a string setting takes the text as written
    ("method.rank=4", "method.rank", 4),
    ("method.dropout=0.2", "method.dropout", 0.2),
])
def test_set_reads_values_as_the_schema_types_them(text, key, value):
    assert parse_assignment(text) == (key, value)


@pytest.mark.parametrize("text, message", [
    ("lr", "--set 'lr': expected KEY=VALUE, e.g. --set lr=3e-4 or --set method.rank=4"),
    ("=3", "--set '=3': expected KEY=VALUE"),
    ("lrr=1", "--set lrr: unknown setting 'lrr' (did you mean 'lr'?); see `ptuning settings`"),
    ("bach_size=4", "(did you mean 'batch_size'?)"),
    ("epochs=0", "--set epochs: 'epochs' must be at least 1, got 0"),
    ("epochs=ten", "--set epochs: 'epochs' must be an integer, got 'ten'"),
    ("epochs=2000000", "--set epochs: 'epochs' must be at most 100000"),
    ("lr=-1", "--set lr: 'lr' must be greater than 0, got -1.0"),
    ("precision=fp8", "--set precision: 'precision' must be one of auto, fp32, bf16, got 'fp8'"),
    ("seeds=[0, 4294967296]", "--set seeds: 'seeds' must be a non-empty list of integers from 0 to 4294967295"),
    ("labels=[a]", "'labels' must be two words"),
    ("epochs=[1", "--set epochs: cannot read '[1' as a value for 'epochs'"),
    ("method.rnak=4", "--set method.rnak: no method has a knob 'rnak'"),
    ("method.rank=four", "--set method.rank: 'method.rank' must be an integer, got 'four'"),
])
def test_bad_set_values_are_one_line(text, message):
    with pytest.raises(PtuningError) as info:
        parse_assignment(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_method_knobs_are_checked_against_the_jobs_method():
    job = load_job("lora_8", JOBS)
    assert job.override({"method.rank": 4}).knobs == {"rank": 4, "alpha": 4.0}
    assert job.knobs["rank"] == 8  # the original is unchanged
    with pytest.raises(PtuningError, match=r"lora_8 \(command line\): 'method.rank' must be at least 1, got 0"):
        job.override({"method.rank": 0})
    with pytest.raises(PtuningError, match=r"'method.rank' must be at most 65536"):
        job.override({"method.rank": 99999999999999999999})
    with pytest.raises(PtuningError, match=r"unknown key 'method.tokens' for lora/hand; allowed: rank, alpha"):
        job.override({"method.tokens": 3})
    with pytest.raises(PtuningError, match="'lr' must be set for lora_8, whose method trains"):
        job.override(lr=None)


def valid_values(spec):
    """Values the schema accepts for one setting."""
    if spec.choices:
        base = st.sampled_from(spec.choices)
    elif spec.type is bool:
        base = st.booleans()
    elif spec.type is int:
        base = st.integers(int(spec.minimum), int(spec.maximum))
    elif spec.type is float:
        low = spec.minimum if spec.minimum is not None else -1e9
        high = spec.maximum if spec.maximum is not None else 1e9
        base = st.floats(low, high, exclude_min=spec.exclusive_minimum, allow_nan=False)
    elif spec.name == "labels":
        word = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=8)
        base = st.lists(word, min_size=2, max_size=2, unique=True)
    elif spec.name == "seeds":
        base = st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4, unique=True)
    else:  # free text
        base = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=20)
    return st.one_of(st.none(), base) if spec.optional else base


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_setting_round_trips_through_a_child_command_line(data):
    """`run-all --concurrency` and `submit` give each child the parent's settings as `--set KEY=VALUE` words: what
    the child reads back equals what the parent had, for every setting of the schema."""
    values = {key: data.draw(valid_values(spec), label=key) for key, spec in SETTINGS.items()}
    values = {k: v for k, v in values.items() if not (isinstance(v, str) and v.strip() in ("null", "~"))}
    words = cli.override_args(values)
    assert words[::2] == ["--set"] * len(values)
    back = dict(parse_assignment(w) for w in words[1::2])
    assert back == values


def test_a_child_gets_the_parents_options_and_the_job_after_a_double_dash(tmp_path):
    kwargs = {"seeds": "0,1", "epochs": "2", "assignments": ("method.rank=4",), "device": "cpu", "output_dir": str(tmp_path),
              "force": True, "force_id": "5eed", "compile": False, "trackers": ("tensorboard",)}
    words = cli.child_options(kwargs)
    assert words == ["--set", "epochs=2", "--set", "compile=false", "--set", "seeds=[0, 1]", "--set", "method.rank=4",
                     "--device", "cpu", "--output-dir", str(tmp_path.resolve()), "--tracker", "tensorboard", "--force",
                     "--force-id", "5eed"]
    del kwargs["force_id"]  # the parent's --force run gets an id of its own, which every child shares
    words = cli.child_options(kwargs)
    assert words[-3:-1] == ["--force", "--force-id"] and len(words[-1]) == 8 and cli.child_options(kwargs) == words
    from ptuning.run.parallel import child_command

    assert child_command("-x", None, words)[-2:] == ["--", "-x"]


def test_a_key_given_twice_on_the_command_line_is_refused():
    with pytest.raises(PtuningError, match=r"--set epochs: 'epochs' is given twice \(--epochs and --set epochs\); give it once"):
        cli.overrides({"epochs": "2", "assignments": ("epochs=3",)})
    with pytest.raises(PtuningError, match="given twice"):
        cli.overrides({"assignments": ("lr=1", "lr=2")})


@pytest.mark.parametrize("seeds, message", [
    ("0,,1", "--seeds: expected comma-separated integers such as 0,1,2, got '0,,1'"),
    ("0,x", "expected comma-separated integers"),
    ("0,4294967296", "--seeds: 'seeds' must be a non-empty list of integers from 0 to 4294967295"),
    ("1,1", "--seeds: 'seeds' has a repeated seed: [1, 1]"),
])
def test_bad_seeds_are_refused_before_anything_runs(tmp_path, seeds, message):
    out = tmp_path / "out"
    result = invoke("run", "zero_shot", "--seeds", seeds, "--device", "cpu", "--output-dir", str(out))
    assert result.exit_code == 1 and result.stderr.strip() == f"ptuning: error: {message}" or message in result.stderr
    assert not out.exists()


def test_set_overrides_a_run_like_the_job_file_would(tmp_path, tiny_model_dir, tiny_data_dir):
    out = tmp_path / "out"
    result = invoke("run", "lora_8", "--set", f"model={tiny_model_dir}", "--dataset", str(tiny_data_dir), "--set", "epochs=1",
                    "--set", "train_limit=8", "--eval-limit", "4", "--set", "method.rank=2", "--set", "lr=0.01",
                    "--set", "labels=[negative, positive]", "--device", "cpu", "--output-dir", str(out))
    assert result.exit_code == 0, result.output + result.stderr
    config = json.loads((out / "lora_8" / "seed0" / "result.json").read_text())["config"]
    assert (config["model"], config["epochs"], config["train_limit"], config["eval_limit"]) == (str(tiny_model_dir), 1, 8, 4)
    assert config["method"] == {"name": "lora", "implementation": "hand", "rank": 2, "alpha": 4.0} and config["lr"] == 0.01


def test_a_bad_set_stops_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    result = invoke("run", "lora_8", "--set", "method.rank=0", "--device", "cpu", "--output-dir", str(out))
    assert result.exit_code == 1
    assert result.stderr.strip() == "ptuning: error: lora_8 (command line): 'method.rank' must be at least 1, got 0"
    assert not out.exists()
    result = invoke("run", "zero_shot", "--epochs", "0", "--output-dir", str(out))
    assert result.stderr.strip() == "ptuning: error: --epochs: 'epochs' must be at least 1, got 0" and not out.exists()


def test_shortcut_options_are_drawn_from_the_schema():
    help_text = invoke("run", "--help").output
    for key in cli.SHORTCUTS:
        flag = "--" + key.replace("_", "-")
        assert flag in help_text, flag
    assert "--set KEY=VALUE" in help_text and "--no-cuda-graphs" in help_text
    assert "replay each training step as a CUDA graph" in " ".join(help_text.split())  # the schema's help text


def test_settings_command_lists_every_key_with_its_default():
    result = invoke("settings")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for key in SETTINGS:
        assert any(line.startswith(f"| {key} ") for line in lines), key
    epochs = next(line for line in lines if line.startswith("| epochs "))
    assert "| integer " in epochs and "≥ 1, ≤ 100000" in epochs and "| 10 " in epochs
    assert "per job" in next(line for line in lines if line.startswith("| lr "))


def test_hidden_and_odd_job_files_are_not_jobs(tmp_path):
    (tmp_path / "_defaults.yaml").write_text((JOBS / "_defaults.yaml").read_text())
    good = "title: T\nmethod: {name: full, implementation: hand}\nlr: 1.0e-5\n"
    (tmp_path / "full.yaml").write_text(good)
    (tmp_path / ".hidden.yaml").write_text(good)
    (tmp_path / "...yaml").write_text(good)
    from ptuning.settings import job_names, load_job_file

    assert job_names(tmp_path) == ["full"]
    with pytest.raises(PtuningError, match=r"a job file's name must be letters, digits, '_', '-' and '.' \(not first\), got '..'"):
        load_job_file(tmp_path / "...yaml")


def test_parse_value_and_format_value_agree_on_awkward_strings():
    for text in ("null", "~", "", "a: b", "[x]", "- y"):
        assert format_value(text) == text
    assert parse_value("model", "a: b", "--model") == "a: b"
    assert parse_value("dataset_config", "~", "--set dataset_config") is None
