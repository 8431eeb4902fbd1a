"""Job files: the ten rows plus zero-shot, shared defaults, validation of every bad case, CLI overrides."""

from __future__ import annotations

import pytest
import yaml

from ptuning.errors import PtuningError
from ptuning.settings import load_all_jobs, load_defaults, load_job, load_job_file

from .conftest import JOBS

TEN = [
    "full_ft", "soft_prompt_10", "soft_prompt_10_opendelta", "soft_prompt_1_opendelta", "adapter_8",
    "adapter_8_adapterhub", "adapter_1_adapterhub", "lora_8", "lora_8_peft", "lora_1_peft",
]
EXERCISE_LR = {"full": 1e-5, "soft_prompt": 0.1, ("adapter", "hand"): 1e-3, ("adapter", "adapterhub"): 1e-4, "lora": 1e-4}


def test_the_ten_rows_in_table_order_with_the_exercise_settings():
    jobs = load_all_jobs(JOBS)
    assert [j.name for j in jobs] == ["zero_shot", *TEN]  # the untrained baseline comes first (row 0)
    assert [j.row for j in jobs] == list(range(0, 11))
    zero = jobs.pop(0)
    assert (zero.method, zero.title, zero.settings.lr, zero.reference_accuracy) == ("zero_shot", "Zero-shot (no training)", None, None)
    for job in jobs:
        lr = EXERCISE_LR.get((job.method, job.implementation), EXERCISE_LR.get(job.method))
        assert job.settings.lr == lr, job.name
        assert (job.settings.batch_size, job.settings.epochs, job.settings.max_length, job.settings.generate_max_length) == (32, 10, 256, 5)
        assert job.settings.weight_decay == 0.01 and job.settings.precision == "auto" and job.settings.speed == "auto"  # fp32 + faithful on CPU, see ptuning/engine/fast.py
        assert job.settings.model == "t5-small" and job.settings.dataset == "stanfordnlp/imdb"
        assert job.reference_accuracy is not None and job.reference_total_params is not None
    assert load_job("full_ft", JOBS).reference_total_params == 60_506_624
    assert load_job("lora_1_peft", JOBS).knobs["rank"] == 1


def test_defaults_live_in_one_place():
    defaults = load_defaults(JOBS)
    assert defaults["batch_size"] == 32
    for name in TEN:
        data = yaml.safe_load((JOBS / f"{name}.yaml").read_text())
        assert "batch_size" not in data and "epochs" not in data, "shared settings belong in _defaults.yaml"


def write(tmp_path, text: str, name: str = "job"):
    (tmp_path / "_defaults.yaml").write_text((JOBS / "_defaults.yaml").read_text())
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


GOOD = "title: T\nrow: 1\nmethod: {name: full, implementation: hand}\nlr: 1.0e-5\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("title: [unclosed\n", "malformed YAML at line"),
        (GOOD + "lr: 1.0e-3\n", "malformed YAML at line 5, column 1: key 'lr' appears twice"),
        (GOOD.replace("hand}", "hand, name: lora}"), "malformed YAML at line 3, column 44: key 'name' appears twice"),
        ("- a\n- b\n", "must be a mapping"),
        (GOOD + "lrr: 1\n", "unknown key 'lrr'"),
        (GOOD + "bach_size: 4\n", "did you mean 'batch_size'"),
        (GOOD.replace("lr: 1.0e-5\n", ""), "missing required key 'lr'"),
        (GOOD.replace("title: T\n", ""), "missing required key 'title'"),
        (GOOD + "epochs: ten\n", "'epochs' must be an integer"),
        (GOOD + "epochs: 2.5\n", "'epochs' must be an integer"),
        (GOOD + "epochs: true\n", "'epochs' must be an integer"),
        (GOOD + "epochs: 0\n", "'epochs' must be at least 1"),
        (GOOD + "batch_size: 0\n", "'batch_size' must be at least 1"),
        (GOOD.replace("lr: 1.0e-5", "lr: -0.1"), "'lr' must be greater than 0"),
        (GOOD.replace("lr: 1.0e-5", "lr: .nan"), "'lr' must be a finite number"),
        (GOOD + "precision: fp8\n", "'precision' must be one of auto, fp32, bf16"),
        (GOOD + "cuda_graphs: sometimes\n", "'cuda_graphs' must be true/false"),
        (GOOD + "labels: [good]\n", "'labels' must be two words"),
        (GOOD.replace("{name: full, implementation: hand}", "full"), "'method' must be a mapping"),
        (GOOD.replace("name: full, ", ""), "missing required key 'method.name'"),
        (GOOD.replace("name: full", "name: ful"), "did you mean 'full'"),
        (GOOD.replace("implementation: hand", "implementation: hnd"), "has no implementation 'hnd'"),
        (GOOD.replace("hand}", "hand, rank: 8}"), "unknown key 'method.rank' for full/hand"),
        (GOOD + "reference: {acc: 1}\n", "unknown key 'reference.acc'"),
        (GOOD + "reference: {accuracy: high}\n", "'reference.accuracy' must be a number"),
        (GOOD + "seeds: []\n", "'seeds' must be a non-empty list of integers"),
        (GOOD + "seeds: [0, -1]\n", "'seeds' must be a non-empty list of integers"),
        (GOOD + "seeds: [1, 1]\n", "'seeds' has a repeated seed"),
        (GOOD + "seeds: 3\n", "'seeds' must be a list"),
        (GOOD + "protocol: honest\n", "'protocol' must be one of faithful, heldout"),
        (GOOD + "heldout_size: 0\n", "'heldout_size' must be at least 1"),
    ],
)
def test_bad_job_files_are_one_clear_error_naming_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(PtuningError, match=None) as info:
        load_job_file(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_keys_merged_in_with_yaml_anchors_may_be_overridden(tmp_path):
    text = "base: &b {name: lora, implementation: hand, rank: 8, alpha: 4}\n"
    path = write(tmp_path, text)  # (not a job key: only the merge matters here)
    from ptuning.settings import _read_yaml

    path.write_text(text + "method: {<<: *b, rank: 4}\n")
    assert _read_yaml(path)["method"] == {"name": "lora", "implementation": "hand", "rank": 4, "alpha": 4}


def test_run_all_with_no_job_files_is_an_error_not_a_quiet_success(tmp_path):
    from click.testing import CliRunner

    from ptuning.cli import main

    (tmp_path / "_defaults.yaml").write_text((JOBS / "_defaults.yaml").read_text())
    result = CliRunner().invoke(main, ["--jobs-dir", str(tmp_path), "run-all", "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 1 and f"no job files (*.yaml) in {tmp_path}" in result.output
    assert not (tmp_path / "out").exists()


def test_method_rules_beyond_a_minimum_are_checked_on_load(tmp_path):
    text = "title: T\nmethod: {name: lora, implementation: hand, rank: 8, alpha: 0}\nlr: 1.0e-4\n"
    with pytest.raises(PtuningError, match="alpha"):
        load_job_file(write(tmp_path, text))
    with pytest.raises(PtuningError, match="'method.rank' must be at least 1"):
        load_job_file(write(tmp_path, text.replace("rank: 8, alpha: 0", "rank: 0")))


def test_a_good_file_loads_with_defaults_filled_in(tmp_path):
    job = load_job_file(write(tmp_path, GOOD))
    assert job.name == "job" and job.method == "full" and job.settings.lr == 1e-5 and job.settings.batch_size == 32


def test_yaml_1e_minus_5_without_dot_is_read_as_a_number(tmp_path):
    job = load_job_file(write(tmp_path, GOOD.replace("1.0e-5", "1e-5")))
    assert job.settings.lr == 1e-5


def test_unknown_job_name_lists_the_nearest():
    with pytest.raises(PtuningError, match=r"no job named 'lora8'.*nearest: lora_8"):
        load_job("lora8", JOBS)


def test_job_by_path(tmp_path):
    path = write(tmp_path, GOOD, name="mine")
    assert load_job(str(path)).name == "mine"
    with pytest.raises(PtuningError, match="does not exist"):
        load_job(str(tmp_path / "nope.yaml"))


def test_overrides_are_validated():
    job = load_job("full_ft", JOBS)
    quick = job.override(epochs=2, train_limit=100)
    assert quick.settings.epochs == 2 and quick.settings.train_limit == 100 and quick.settings.model == "t5-small"
    assert job.settings.epochs == 10  # the original is unchanged
    with pytest.raises(PtuningError, match="'epochs' must be at least 1"):
        job.override(epochs=0)
    with pytest.raises(PtuningError, match="'train_limit' must be at least 1"):
        job.override(train_limit=-5)


def test_seeds_expand_to_one_job_per_seed(tmp_path):
    job = load_job_file(write(tmp_path, GOOD + "seeds: [2, 0, 5]\n"))
    assert job.seed_list == [2, 0, 5]
    runs = [job.for_seed(s) for s in job.seed_list]
    assert [(r.settings.seed, r.settings.seeds, r.seed_list) for r in runs] == [(2, None, [2]), (0, None, [0]), (5, None, [5])]
    assert load_job("full_ft", JOBS).seed_list == [0]
    assert load_job("full_ft", JOBS).override(seeds=[3, 4]).seed_list == [3, 4]
    defaults = load_defaults(JOBS)
    assert (defaults["protocol"], defaults["heldout_size"], defaults["heldout_seed"], defaults["seeds"]) == ("faithful", 2500, 0, None)


def test_a_method_that_does_not_train_needs_no_learning_rate(tmp_path):
    job = load_job_file(write(tmp_path, "title: Z\nrow: 0\nmethod: {name: zero_shot, implementation: hand}\n"))
    assert job.settings.lr is None and job.config()["lr"] is None
