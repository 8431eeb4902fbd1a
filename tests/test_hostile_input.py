"""Small hostile files are one line within a second: a YAML job file whose aliases nest into billions of elements, a
number of thousands of digits, a result file nested 200,000 levels deep or far too large."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ptuning.cli import main
from ptuning.errors import PtuningError
from ptuning.report import results
from ptuning.settings import MAX_JOB_FILE_BYTES, load_job, parse_assignment
from tests.conftest import JOBS
from tests.report.test_results_report import fake_result
from tests.run.test_reliability import JOB_A

BASE = "title: T\nrow: 1\nmethod: {name: lora, implementation: hand, rank: 2}\nlr: 1.0e-3\n"


def bomb(levels: int = 9, width: int = 9) -> str:
    """A flow sequence of `levels` anchors, each `width` aliases of the one before: width**levels leaves in a few
    hundred bytes (9**9: 387 million)."""
    names = [chr(ord("a") + i) for i in range(levels)]
    parts = [f"&{names[0]} [{', '.join(['x'] * width)}]"]
    parts += [f"&{name} [{', '.join([f'*{before}'] * width)}]" for before, name in zip(names, names[1:])]
    return "[" + ", ".join(parts) + "]"


def job_file(tmp_path: Path, text: str) -> Path:
    (tmp_path / "_defaults.yaml").write_text((JOBS / "_defaults.yaml").read_text())
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("key, message", [
    ("seeds", "'seeds' must be a non-empty list of integers from 0 to 4294967295, got [['x', 'x', 'x', 'x', ...], [['x',"),
    ("labels", "'labels' must be two words (label 0, label 1) that differ, got [['x', 'x', 'x', 'x', ...], [['x', "),
    ("title", "'title' must be a string, got [['x', 'x', 'x', 'x', ...], [['x', 'x', 'x', 'x', ...], [..."),
])
def test_a_yaml_alias_bomb_is_one_line_within_a_second(tmp_path, key, message):
    text = (BASE.replace("title: T\n", "") if key == "title" else BASE) + f"{key}: {bomb()}\n"
    assert len(text.encode()) < 500
    path = job_file(tmp_path, text)
    start = time.perf_counter()
    with pytest.raises(PtuningError) as info:
        load_job(str(path))
    assert time.perf_counter() - start < 1.0
    text = str(info.value)
    assert text.startswith(f"{path}: {message}") and "\n" not in text and len(text) < len(str(path)) + 200


def test_an_alias_bomb_on_the_command_line_is_one_line_within_a_second():
    start = time.perf_counter()
    with pytest.raises(PtuningError, match=r"^--set seeds: 'seeds' must be a non-empty list of integers .*, got \[\['x', "):
        parse_assignment(f"seeds={bomb()}")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("value, message", [
    ("9" * 5000, "unreadable value (Exceeds the limit (4300 digits) for integer string conversion)"),
    ("0x" + "f" * 5000, "'seed' must be at most 4294967295, got <an integer of about 6021 digits>"),
])
def test_an_integer_of_thousands_of_digits_is_one_line(tmp_path, value, message):
    path = job_file(tmp_path, BASE + f"seed: {value}\n")
    with pytest.raises(PtuningError) as info:
        load_job(str(path))
    assert str(info.value) == f"{path}: {message}"
    with pytest.raises(PtuningError, match=r"^--set seed: "):
        parse_assignment(f"seed={value}")


def test_a_job_file_far_larger_than_a_job_is_refused_unread(tmp_path):
    path = job_file(tmp_path, BASE + "notes: " + "x" * MAX_JOB_FILE_BYTES + "\n")
    with pytest.raises(PtuningError) as info:
        load_job(str(path))
    assert str(info.value) == f"{path}: a job file must be under 1024 KiB (a job is a few lines)"


@pytest.fixture
def deep_result(tmp_path) -> Path:
    """A results folder with a good result and one of "[" x 200,000."""
    results.write_result(results.run_dir(tmp_path, "full_ft", 0) / results.RESULT_FILE, fake_result("full_ft"))
    path = results.run_dir(tmp_path, "lora_8", 0) / results.RESULT_FILE
    path.parent.mkdir(parents=True)
    path.write_text("[" * 200_000)
    return path


def test_a_deeply_nested_result_is_one_warning_in_tables_check_and_plots(deep_result):
    folder = deep_result.parents[2]
    warning = f"left out: {deep_result}: unreadable result file (nested too deeply)"
    runner = CliRunner()
    for command in ("tables", "plots"):
        out = runner.invoke(main, ["--jobs-dir", str(JOBS), command, "--results", str(folder)], catch_exceptions=False)
        assert out.exit_code == 0 and out.stderr == f"ptuning: warning: {warning}\n", out.output
    check = runner.invoke(main, ["--jobs-dir", str(JOBS), "check", "--results", str(folder)], catch_exceptions=False)
    assert check.exit_code == 1 and check.output.splitlines()[0] == f"WARN {warning}"


def test_a_result_file_far_too_large_or_not_a_file_is_left_out_unread(tmp_path):
    import os

    path = results.run_dir(tmp_path, "lora_8", 0) / results.RESULT_FILE
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        f.truncate(results.MAX_RESULT_BYTES + 1)  # sparse: nothing is really written
    with pytest.raises(PtuningError, match=r"unreadable result file \(over 16 MiB; a result file is a few kilobytes\)"):
        results.read_result(path)
    path.unlink()
    os.mkfifo(path)  # opening a FIFO to read would wait for a writer forever
    with pytest.raises(PtuningError, match=r"unreadable result file \(not a regular file\)"):
        results.read_result(path)


def test_run_names_a_deeply_nested_result_and_runs_again(tmp_path, tiny_model_dir, tiny_data_dir):
    from tests.run.test_reliability import cli, metrics, write_jobs

    jobs = write_jobs(tmp_path / "jobs", tiny_model_dir, tiny_data_dir, {"a": JOB_A})
    out = tmp_path / "out"
    path = out / "a" / "seed0" / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text("[" * 200_000)
    result = cli(jobs, "run", "a", "--device", "cpu", "--output-dir", str(out), "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert f"[a] warning: {path}: unreadable result file (nested too deeply); it is not used" in result.output
    assert len(metrics(out)) == 1
