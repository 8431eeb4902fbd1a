"""`ptuning params`: exact measured counts on the t5-small config (one model build for the module), and the count cache."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest

from ptuning.errors import PtuningError
from ptuning.methods import formulas
from ptuning.report import params as params_module
from ptuning.report.params import (COLUMNS, CountCache, cached_parameter_rows, load_config, model_fingerprint, parameter_rows,
                                   render_json, render_markdown)
from ptuning.testing.tiny import tiny_t5_config


@dataclass
class Job:
    """Stand-in with the fields of a ptuning job that `parameter_rows` reads."""

    name: str
    method: str
    knobs: dict = field(default_factory=dict)
    implementation: str = "hand"
    title: str = ""


JOBS = [
    Job("full", "full", title="Full fine-tuning"),
    Job("soft_prompt_10", "soft_prompt", {"tokens": 10}, title="Soft prompt, hand-written"),
    Job("adapter_8", "adapter", {"bottleneck": 8}, title="Adapter, hand-written"),
    Job("lora_8", "lora", {"rank": 8}, title="LoRA, hand-written"),
    Job("soft_prompt_1", "soft_prompt", {"tokens": 1}),
    Job("adapter_1", "adapter", {"bottleneck": 1}),
    Job("lora_1", "lora", {"rank": 1}),
    Job("lora_4", "lora", {"rank": 4, "alpha": 8}),
]

BASE = 60_506_624
EXPECTED_TOTAL = {
    "full": BASE,
    "soft_prompt_10": 60_511_744,
    "adapter_8": 60_611_168,
    "lora_8": 60_801_536,
    "soft_prompt_1": BASE + 512,
    "adapter_1": BASE + 18_444,
    "lora_1": BASE + 36_864,
    "lora_4": BASE + 147_456,
}


@pytest.fixture(scope="module")
def rows():
    """All jobs measured on the t5-small config: one 60M-parameter build, deep-copied per job."""
    return {r["job"]: r for r in parameter_rows(JOBS)}


def test_rows_have_the_documented_columns(rows):
    assert list(rows) == [j.name for j in JOBS]
    assert all(list(r) == COLUMNS for r in rows.values())


@pytest.mark.parametrize("job", list(EXPECTED_TOTAL))
def test_exact_totals_on_t5_small(rows, job):
    assert rows[job]["total"] == EXPECTED_TOTAL[job]


@pytest.mark.parametrize("job", list(EXPECTED_TOTAL))
def test_measured_delta_equals_formula(rows, job):
    row = rows[job]
    assert row["added"] == row["total"] - BASE == row["formula_value"]
    assert row["match"] is True
    text = row["formula"].split(" = ")[-1]
    assert formulas.evaluate(text) == row["formula_value"]


def test_trainable_counts(rows):
    assert rows["full"]["trainable"] == BASE and rows["full"]["added"] == 0 and rows["full"]["formula"] == "0"
    for name, row in rows.items():
        if name != "full":
            assert row["trainable"] == row["added"], name


def test_formula_texts(rows):
    assert rows["soft_prompt_10"]["formula"] == "n·d = 10·512"
    assert rows["adapter_8"]["formula"] == "L·(2·d·b + d + b) = 12·(2·512·8 + 512 + 8)"
    assert rows["lora_8"]["formula"] == "M·2·r·(d_in + d_out) = 18·2·8·(512 + 512)"


def test_markdown_and_json(rows):
    table = list(rows.values())
    md = render_markdown(table)
    lines = md.splitlines()
    assert lines[0].startswith("| job") and len(lines) == 2 + len(table)
    assert "60,801,536" in md and "| yes" in md and "NO" not in md
    assert json.loads(render_json(table)) == table


def test_tiny_config_and_mismatch_is_reported():
    rows = parameter_rows([Job("lora_2", "lora", {"rank": 2})], config=tiny_t5_config(128))
    assert rows[0]["match"] and rows[0]["added"] == 6 * 2 * 2 * (32 + 32)
    broken = dict(rows[0], match=False)
    assert "| NO" in render_markdown([broken])


def test_load_config_from_local_dir_and_clear_error(tmp_path):
    tiny_t5_config(128).save_pretrained(tmp_path / "tiny")
    assert load_config(str(tmp_path / "tiny")).d_model == 32
    assert load_config(None).d_model == 512
    with pytest.raises(PtuningError, match="--model"):
        load_config(str(tmp_path / "does-not-exist"))


def test_load_config_refuses_non_t5(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(PtuningError, match="T5"):
        load_config(str(tmp_path / "gpt2"))


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """A jobs dir holding the repo's defaults and hand-written job files, and a tiny config dir."""
    import shutil
    from pathlib import Path

    root = tmp_path_factory.mktemp("cli")
    repo_jobs = Path(__file__).resolve().parents[2] / "jobs"
    jobs = root / "jobs"
    jobs.mkdir()
    for name in ("_defaults", "full_ft", "soft_prompt_10", "adapter_8", "lora_8"):
        shutil.copy(repo_jobs / f"{name}.yaml", jobs)
    tiny_t5_config(128).save_pretrained(root / "tiny")
    return jobs, root / "tiny"


def test_cli_params_markdown_and_json(cli_setup):
    from click.testing import CliRunner

    from ptuning.cli import main

    jobs, tiny = cli_setup
    result = CliRunner().invoke(main, ["--jobs-dir", str(jobs), "params", "--model", str(tiny)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("| job")
    assert "n·d = 10·32" in result.output and "NO" not in result.output
    result = CliRunner().invoke(main, ["--jobs-dir", str(jobs), "params", "--model", str(tiny), "--format", "json", "lora_8"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)  # stderr says lora_8's count came from the cache the first call filled
    assert row["job"] == "lora_8" and row["added"] == row["formula_value"] == 6 * 2 * 8 * 64 and row["match"]


def test_cli_params_unknown_job_is_one_line_and_exit_1(cli_setup):
    from click.testing import CliRunner

    from ptuning.cli import main

    jobs, tiny = cli_setup
    result = CliRunner().invoke(main, ["--jobs-dir", str(jobs), "params", "--model", str(tiny), "lora_8", "lora_88"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("ptuning: error")]
    assert len(errors) == 1 and "lora_88" in errors[0]
    assert "| lora_8 " in result.output  # the good job is still reported


def test_cli_params_exits_1_on_a_mismatch_and_on_a_method_that_cannot_be_built(cli_setup, monkeypatch):
    """A count that differs from its formula fails the command; a row whose library is missing is one error line
    while the other rows are still measured."""
    import sys
    from pathlib import Path

    from click.testing import CliRunner

    from ptuning.cli import main

    jobs, tiny = cli_setup
    real = formulas.lora
    monkeypatch.setattr(formulas, "lora", lambda config, rank: dataclasses.replace(real(config, rank), value=real(config, rank).value + 1))
    result = CliRunner().invoke(main, ["--jobs-dir", str(jobs), "params", "--model", str(tiny), "lora_8", "adapter_8"])
    assert result.exit_code == 1, result.output
    assert "| NO" in next(line for line in result.output.splitlines() if "| lora_8 " in line)
    assert "| yes" in next(line for line in result.output.splitlines() if "| adapter_8 " in line)
    monkeypatch.undo()

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    repo_jobs = Path(__file__).resolve().parents[2] / "jobs"
    result = CliRunner().invoke(main, ["--jobs-dir", str(repo_jobs), "params", "--model", str(tiny), "lora_8", "lora_8_peft"])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("ptuning: error")]
    assert len(errors) == 1 and errors[0].startswith("ptuning: error: [lora_8_peft] lora/peft needs the package 'peft'")
    assert "| lora_8 " in result.output and "| yes" in result.output and "| lora_8_peft " not in result.output


# ---------------------------------------------------------------------------------------------
# the count cache


@pytest.fixture
def tiny_dir(tmp_path):
    tiny_t5_config(128).save_pretrained(tmp_path / "tiny")
    return str(tmp_path / "tiny")


@pytest.fixture
def counting(monkeypatch):
    """The jobs `parameter_rows` was asked to count, call by call."""
    calls = []
    real = params_module.parameter_rows

    def spy(jobs, *args, **kwargs):
        jobs = list(jobs)
        calls.append([job.name for job in jobs])
        return real(jobs, *args, **kwargs)

    monkeypatch.setattr(params_module, "parameter_rows", spy)
    return calls


LORA_2 = Job("lora_2", "lora", {"rank": 2}, title="LoRA")
ADAPTER_2 = Job("adapter_2", "adapter", {"bottleneck": 2}, title="Adapter")


def test_a_count_is_read_back_from_the_cache_and_not_counted_again(tmp_path, tiny_dir, counting):
    cache = tmp_path / "counts"
    first, cached = cached_parameter_rows([LORA_2, ADAPTER_2], tiny_dir, cache_dir=cache)
    assert cached == 0 and counting == [["lora_2", "adapter_2"]] and len(list(cache.glob("*.json"))) == 2
    again, cached = cached_parameter_rows([ADAPTER_2, LORA_2], tiny_dir, cache_dir=cache)
    assert cached == 2 and len(counting) == 1  # nothing counted
    assert again == [first[1], first[0]] and all(list(row) == COLUMNS for row in again)
    assert again[1] == {"job": "lora_2", "title": "LoRA", "total": first[0]["total"], "trainable": 6 * 2 * 2 * 64,
                        "added": 6 * 2 * 2 * 64, "formula": first[0]["formula"], "formula_value": 6 * 2 * 2 * 64, "match": True}
    # a job's name and title are not part of a count: a renamed job reads the same count, under its own name
    renamed = dataclasses.replace(LORA_2, name="my_lora", title="Mine")
    (row,), cached = cached_parameter_rows([renamed], tiny_dir, cache_dir=cache)
    assert cached == 1 and row["job"] == "my_lora" and row["title"] == "Mine" and row["total"] == first[0]["total"]
    # only the jobs missing from the cache are counted
    rows, cached = cached_parameter_rows([LORA_2, Job("lora_3", "lora", {"rank": 3})], tiny_dir, cache_dir=cache)
    assert cached == 1 and counting[-1] == ["lora_3"] and [r["job"] for r in rows] == ["lora_2", "lora_3"]


def test_recount_counts_every_job_again_and_stores_it(tmp_path, tiny_dir, counting):
    cache = tmp_path / "counts"
    cached_parameter_rows([LORA_2], tiny_dir, cache_dir=cache)
    (entry,) = cache.glob("*.json")
    entry.write_text(entry.read_text().replace('"counted": "', '"counted": "1999'))
    rows, cached = cached_parameter_rows([LORA_2], tiny_dir, cache_dir=cache, recount=True)
    assert cached == 0 and counting == [["lora_2"], ["lora_2"]]
    assert '"counted": "1999' not in entry.read_text()  # written anew


@pytest.mark.parametrize("change", ["knob", "implementation", "ptuning source", "library version", "python", "model config"])
def test_a_count_is_reused_only_when_everything_it_depends_on_is_the_same(tmp_path, tiny_dir, monkeypatch, change):
    cache_dir = tmp_path / "counts"
    (row,), _ = cached_parameter_rows([LORA_2], tiny_dir, cache_dir=cache_dir)
    assert CountCache(model_fingerprint(tiny_dir), cache_dir).get(LORA_2) == row
    job, model = LORA_2, tiny_dir
    if change == "knob":
        job = dataclasses.replace(LORA_2, knobs={"rank": 2, "alpha": 4.0})
    elif change == "implementation":
        job = dataclasses.replace(LORA_2, implementation="peft")
    elif change == "ptuning source":
        monkeypatch.setattr(params_module, "source_digest", lambda: "0" * 64)
    elif change in ("library version", "python"):
        real = params_module.library_versions
        name = "transformers" if change == "library version" else "python"
        monkeypatch.setattr(params_module, "library_versions", lambda: {**real(), name: "0.0.1"})
    else:  # the same directory with another config.json
        tiny_t5_config(256).save_pretrained(tiny_dir)
    assert CountCache(model_fingerprint(model), cache_dir).get(job) is None


def test_the_source_digest_covers_every_python_file_of_ptuning():
    digest = params_module.source_digest()
    assert len(digest) == 64 and digest == params_module.source_digest()
    from pathlib import Path

    root = Path(params_module.__file__).resolve().parents[1]
    files = sorted(root.rglob("*.py"))
    assert root / "methods" / "formulas.py" in files and root / "testing" / "tiny.py" in files  # formulas, built-in config


def test_model_fingerprints(tmp_path, tiny_dir, monkeypatch):
    assert model_fingerprint(None) == params_module.BUILT_IN_CONFIG
    assert model_fingerprint(tiny_dir).startswith("config.json sha256 ")
    assert model_fingerprint("t5-small") is None  # a hub id: never cached
    assert model_fingerprint(str(tmp_path / "missing")) is None
    (tmp_path / "empty").mkdir()
    assert model_fingerprint(str(tmp_path / "empty")) is None
    monkeypatch.chdir(tmp_path)  # a directory named like a hub id is what load_config loads, so it is what is hashed
    tiny_t5_config(128).save_pretrained(tmp_path / "t5-small")
    assert model_fingerprint("t5-small") == model_fingerprint(tiny_dir)


def test_a_hub_id_is_counted_every_time(tmp_path, counting):
    config = tiny_t5_config(128)
    for _ in range(2):
        (row,), cached = cached_parameter_rows([LORA_2], "some-org/t5", config=config, cache_dir=tmp_path / "counts")
        assert cached == 0 and row["added"] == 6 * 2 * 2 * 64
    assert len(counting) == 2 and not (tmp_path / "counts").exists()


@pytest.mark.parametrize("damage", ["not json", "empty", "a list", "no counts", "a count as text", "match as text",
                                    "another key", "truncated"])
def test_a_damaged_entry_is_a_miss_and_is_written_anew(tmp_path, tiny_dir, counting, damage):
    cache = tmp_path / "counts"
    (row,), _ = cached_parameter_rows([LORA_2], tiny_dir, cache_dir=cache)
    (entry,) = cache.glob("*.json")
    good = json.loads(entry.read_text())
    bad = {
        "not json": "{nope", "empty": "", "a list": "[1, 2]", "truncated": entry.read_text()[:40],
        "no counts": json.dumps({"key": good["key"]}),
        "a count as text": json.dumps({**good, "counts": {**good["counts"], "total": "60M"}}),
        "match as text": json.dumps({**good, "counts": {**good["counts"], "match": "yes"}}),
        "another key": json.dumps({**good, "key": {**good["key"], "model": "else"}}),
    }[damage]
    entry.write_text(bad)
    (again,), cached = cached_parameter_rows([LORA_2], tiny_dir, cache_dir=cache)
    assert cached == 0 and again == row and len(counting) == 2
    assert json.loads(entry.read_text())["counts"] == good["counts"]


def test_a_cache_that_cannot_be_written_costs_speed_not_the_answer(tmp_path, tiny_dir, counting):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    for _ in range(2):
        (row,), cached = cached_parameter_rows([LORA_2], tiny_dir, cache_dir=blocked / "counts")
        assert cached == 0 and row["match"]
    assert len(counting) == 2 and blocked.read_text() == "not a folder"
    assert {p.name for p in tmp_path.iterdir()} == {"a-file", "tiny"}  # nothing written elsewhere


def test_a_job_that_cannot_be_built_is_not_cached(tmp_path, tiny_dir, monkeypatch):
    import sys

    peft_job = Job("lora_2_peft", "lora", {"rank": 2, "alpha": 4.0, "dropout": 0.1}, implementation="peft")
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    errors = [("earlier", "a job file that did not load")]
    rows, cached = cached_parameter_rows([peft_job, LORA_2], tiny_dir, cache_dir=tmp_path / "counts", errors=errors)
    assert [r["job"] for r in rows] == ["lora_2"] and cached == 0
    assert [name for name, _ in errors] == ["earlier", "lora_2_peft"]
    assert len(list((tmp_path / "counts").glob("*.json"))) == 1
    monkeypatch.undo()
    rows, cached = cached_parameter_rows([peft_job, LORA_2], tiny_dir, cache_dir=tmp_path / "counts")
    assert [r["job"] for r in rows] == ["lora_2_peft", "lora_2"] and cached == 1 and rows[0]["match"]


def test_cli_params_says_when_counts_come_from_the_cache_and_recount_counts_again(cli_setup, counting):
    from click.testing import CliRunner

    from ptuning.cli import main

    jobs, tiny = cli_setup
    args = ["--jobs-dir", str(jobs), "params", "--model", str(tiny)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0 and first.stderr == "" and len(counting) == 1
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and again.stdout == first.stdout and len(counting) == 1
    (line,) = again.stderr.splitlines()
    assert line.startswith("ptuning: 4 of 4 counts read from the count cache (") and line.endswith("--recount counts them again")
    fresh = CliRunner().invoke(main, [*args, "--recount"])
    assert fresh.exit_code == 0 and fresh.stdout == first.stdout and fresh.stderr == "" and len(counting) == 2
    assert "--recount" in CliRunner().invoke(main, ["params", "--help"]).output


def test_cli_params_reads_a_cached_count_without_importing_torch_or_transformers(tmp_path):
    """What makes a repeated `ptuning params` fast: on a cache hit, only ptuning's job files are read (their knobs are
    checked against the method classes, which import torch), and transformers and the method libraries stay out."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PTUNING_CACHE": str(tmp_path / "cache")}
    script = ("import sys\nfrom ptuning.cli import main\n"
              "try:\n    main(['params', 'full_ft', 'lora_8_peft', 'soft_prompt_10_opendelta'])\n"
              "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
              "print(sorted(m for m in ('transformers', 'peft', 'adapters', 'opendelta') if m in sys.modules))\n")
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    assert runs[0].stdout.splitlines()[-1] == "['opendelta', 'peft', 'transformers']"
    assert runs[1].stdout.splitlines()[-1] == "[]"
    assert runs[0].stdout.splitlines()[:-1] == runs[1].stdout.splitlines()[:-1]
    assert "3 of 3 counts read from the count cache" in runs[1].stderr
