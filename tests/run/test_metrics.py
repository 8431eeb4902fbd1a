"""metrics.jsonl as a run goes (and after a kill), TensorBoard event files a reader can load, and provenance."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from ptuning.errors import PtuningError
from ptuning.report import results
from ptuning.run import metrics as metrics_mod
from tests.run.test_reliability import JOB_A, cli, spawn_paused, write_jobs

#: 64 training reviews in batches of 4: 16 steps an epoch, so the loss is logged at steps 10 and 16
LONG = {"a": JOB_A}


@pytest.fixture(scope="module")
def long_jobs(tmp_path_factory, tiny_model_dir, tiny_data_dir) -> Path:
    directory = write_jobs(tmp_path_factory.mktemp("jobs"), tiny_model_dir, tiny_data_dir, LONG)
    text = (directory / "_defaults.yaml").read_text()
    text = text.replace("batch_size: 8", "batch_size: 4").replace("train_limit: 16", "train_limit: 64")
    (directory / "_defaults.yaml").write_text(text)
    return directory


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_jsonl_holds_steps_epochs_and_the_end(long_jobs, tmp_path):
    out = tmp_path / "out"
    result = cli(long_jobs, "run", "a", "--device", "cpu", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    events = lines(out / "a/seed0/metrics.jsonl")
    assert [e["event"] for e in events] == ["start", "step", "step", "epoch", "step", "step", "epoch", "end"]
    assert events[0]["epochs_done"] == 0 and events[0]["path"] == "faithful" and events[0]["seed"] == 0
    steps = [(e["epoch"], e["step"], e["global_step"]) for e in events if e["event"] == "step"]
    assert steps == [(1, 10, 10), (1, 16, 16), (2, 10, 26), (2, 16, 32)]
    record = json.loads((out / "a/seed0/result.json").read_text())
    epochs = [{k: v for k, v in e.items() if k not in ("event", "time")} for e in events if e["event"] == "epoch"]
    assert epochs == record["epochs"]  # the same numbers as the result, as they came
    assert events[-1]["reported_accuracy"] == record["reported_accuracy"]
    assert all(isinstance(e["loss"], float) for e in events if e["event"] == "step")


def test_a_run_killed_mid_epoch_keeps_what_it_logged_and_the_resume_appends(long_jobs, tmp_path):
    out = tmp_path / "out"
    proc, _ = spawn_paused(long_jobs, out, "2:12")  # after step 12 of 16 in epoch 2: epoch 2's step 10 is logged
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    before = lines(out / "a/seed0/metrics.jsonl")
    assert [(e["event"], e.get("epoch"), e.get("step")) for e in before] == [
        ("start", None, 0), ("step", 1, 10), ("step", 1, 16), ("epoch", 1, None), ("step", 2, 10)]
    resumed = cli(long_jobs, "run", "a", "--device", "cpu", "--output-dir", str(out))  # from epoch 1's checkpoint
    assert resumed.exit_code == 0, resumed.output
    after = lines(out / "a/seed0/metrics.jsonl")
    assert after[:5] == before  # appended to, not replaced
    assert [(e["event"], e.get("epoch"), e.get("step")) for e in after[5:]] == [
        ("resume", None, 0), ("step", 2, 10), ("step", 2, 16), ("epoch", 2, None), ("end", None, None)]
    assert after[5]["epochs_done"] == 1
    forced = cli(long_jobs, "run", "a", "--device", "cpu", "--output-dir", str(out), "--force")
    assert forced.exit_code == 0 and lines(out / "a/seed0/metrics.jsonl")[0]["event"] == "start"
    assert len(lines(out / "a/seed0/metrics.jsonl")) == 8  # a forced run starts the file afresh


def test_a_resumed_run_says_so_in_its_log(tmp_path, tiny_model_dir, tiny_data_dir):
    jobs = write_jobs(tmp_path / "jobs", tiny_model_dir, tiny_data_dir, {"a": JOB_A})
    out = tmp_path / "out"
    proc, _ = spawn_paused(jobs, out, "2:1")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert lines(out / "a/seed0/metrics.jsonl")[-1] == {**lines(out / "a/seed0/metrics.jsonl")[-1], "event": "stopped", "epoch": 2,
                                                          "step": 1}
    assert cli(jobs, "run", "a", "--device", "cpu", "--output-dir", str(out)).exit_code == 0
    resume = next(e for e in lines(out / "a/seed0/metrics.jsonl") if e["event"] == "resume")
    assert (resume["epochs_done"], resume["step"]) == (1, 1)


def test_tensorboard_event_files_read_back(tmp_path, tiny_model_dir, tiny_data_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    jobs = write_jobs(tmp_path / "jobs", tiny_model_dir, tiny_data_dir, {"a": JOB_A})
    out = tmp_path / "out"
    result = cli(jobs, "run", "a", "--device", "cpu", "--output-dir", str(out), "--tracker", "tensorboard")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "a/seed0/result.json").read_text())
    reader = EventAccumulator(str(out / "a/seed0/tensorboard"))
    reader.Reload()
    scalars = reader.Tags()["scalars"]
    assert {"train/loss", "train/epoch_loss", "eval/accuracy", "time/train_seconds", "time/eval_seconds"} <= set(scalars)
    accuracy = [(e.step, e.value) for e in reader.Scalars("eval/accuracy")]
    assert accuracy == [(2, pytest.approx(record["epochs"][0]["accuracy"])), (4, pytest.approx(record["epochs"][1]["accuracy"]))]
    assert [e.step for e in reader.Scalars("train/loss")] == [2, 4]  # each epoch's last step (2 steps an epoch)


def test_trackers_are_checked_before_anything_runs(tmp_path, monkeypatch, tiny_model_dir, tiny_data_dir):
    jobs = write_jobs(tmp_path / "jobs", tiny_model_dir, tiny_data_dir, {"a": JOB_A})
    out = tmp_path / "out"
    unknown = cli(jobs, "run", "a", "--device", "cpu", "--output-dir", str(out), "--tracker", "wandb")
    assert unknown.exit_code == 1 and unknown.stderr.strip() == "ptuning: error: unknown tracker 'wandb'; known: tensorboard"
    real = metrics_mod.importlib.util.find_spec
    monkeypatch.setattr(metrics_mod.importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(PtuningError, match=r"--tracker tensorboard needs the tensorboard package: pip install 'ptuning\[tensorboard\]'"):
        metrics_mod.check_trackers(["tensorboard"])
    assert not out.exists()


def test_a_symlinked_metrics_file_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("KEEP\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / metrics_mod.METRICS_FILE).symlink_to(victim)
    with pytest.raises(PtuningError, match="metrics.jsonl: it is a symbolic link; ptuning does not follow it"):
        metrics_mod.MetricsLog(tmp_path / "run")
    assert victim.read_text() == "KEEP\n"


# -- provenance --------------------------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> bytes:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env).stdout


def test_git_state_tells_a_clean_tree_from_each_edit(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("results/\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    head = git(repo, "rev-parse", "HEAD").decode().strip()
    (repo / "results").mkdir()
    (repo / "results" / "r.json").write_text("{}")  # ignored: not a change of the code
    assert results.git_state(repo) == {"git_commit": head, "git_dirty": False, "git_diff_sha256": None}
    (repo / "a.py").write_text("x = 2\n")
    edited = results.git_state(repo)
    assert edited["git_dirty"] is True
    assert edited["git_diff_sha256"] == hashlib.sha256(git(repo, "diff", "HEAD", "--binary")).hexdigest()
    (repo / "b.py").write_text("y = 1\n")
    with_new_file = results.git_state(repo)
    assert with_new_file["git_dirty"] and with_new_file["git_diff_sha256"] != edited["git_diff_sha256"]
    (repo / "b.py").write_text("y = 2\n")
    assert results.git_state(repo)["git_diff_sha256"] != with_new_file["git_diff_sha256"]  # its content counts
    assert results.git_state(tmp_path / "elsewhere" if (tmp_path / "elsewhere").mkdir() is None else tmp_path) == {
        "git_commit": None, "git_dirty": None, "git_diff_sha256": None}


def test_a_result_records_its_command_line_and_image(tmp_path, monkeypatch, tiny_model_dir, tiny_data_dir):
    jobs = write_jobs(tmp_path / "jobs", tiny_model_dir, tiny_data_dir, {"a": JOB_A})
    out = tmp_path / "out"
    monkeypatch.setenv("PTUNING_IMAGE", "ptuning:latest")
    monkeypatch.setenv("PTUNING_IMAGE_ID", "sha256:abc")
    result = cli(jobs, "run", "a", "--device", "cpu", "--output-dir", str(out), "--set", "epochs=1")
    assert result.exit_code == 0, result.output
    env = json.loads((out / "a/seed0/result.json").read_text())["environment"]
    assert env["command"] == f"ptuning --jobs-dir {jobs} run a --device cpu --output-dir {out} --set epochs=1"
    assert env["image"] == {"tag": "ptuning:latest", "id": "sha256:abc"}
    assert set(env) >= {"git_commit", "git_dirty", "git_diff_sha256", "packages", "python", "device"}
