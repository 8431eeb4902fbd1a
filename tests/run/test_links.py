"""A link planted in an output folder (shared, in /tmp, or an unpacked results archive) never makes ptuning write
outside it: the lock, the logs of `run-all --concurrency`, the run directories, the plots and every atomic write."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ptuning.atomic import atomic_save
from ptuning.cli import main
from ptuning.errors import PtuningError
from ptuning.report import results
from ptuning.run.lock import LOCK_FILE, RunLock
from tests.conftest import JOBS
from tests.report.test_plots import fake_results
from tests.run.test_reliability import JOB_A, cli, files, run_a, write_jobs


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory, tiny_model_dir, tiny_data_dir) -> Path:
    return write_jobs(tmp_path_factory.mktemp("jobs"), tiny_model_dir, tiny_data_dir,
                      {"a": JOB_A, "b": JOB_A.replace("row: 1", "row: 2")})


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "victim"
    path.write_text("KEEP\n")
    return path


def one_error(result) -> str:
    err = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(err) == 1 and err[0].startswith("ptuning: error: "), result.output
    return err[0]


def test_a_symlinked_log_is_refused_before_any_job_starts(jobs_dir, tmp_path, victim):
    out = tmp_path / "o"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "b.log").symlink_to(victim)
    result = cli(jobs_dir, "run-all", "--concurrency", "2", "--device", "cpu", "--output-dir", str(out))
    assert f"{out / 'logs' / 'b.log'} is not a plain file of its own" in one_error(result)
    assert victim.read_text() == "KEEP\n"
    assert files(out) == ["logs/b.log"] and (out / "logs" / "b.log").is_symlink()  # nothing ran: no result, no other log


def test_a_symlinked_logs_folder_is_refused(jobs_dir, tmp_path):
    out, elsewhere = tmp_path / "o", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "logs").symlink_to(elsewhere)
    result = cli(jobs_dir, "run-all", "--concurrency", "2", "--device", "cpu", "--output-dir", str(out))
    assert f"{out / 'logs'} is a symbolic link; ptuning does not write through one" in one_error(result)
    assert list(elsewhere.iterdir()) == []


def test_a_log_is_a_new_file_so_a_link_made_after_the_check_is_replaced_not_followed(tmp_path, victim):
    from ptuning.run.parallel import Logs

    logs = Logs(tmp_path / "logs")
    try:
        logs.check(["a"])
        (tmp_path / "logs" / "a.log").symlink_to(victim)  # planted between the check and the start of the job
        with logs.open("a") as log:
            log.write("line\n")
    finally:
        logs.close()
    assert victim.read_text() == "KEEP\n"
    assert not (tmp_path / "logs" / "a.log").is_symlink() and (tmp_path / "logs" / "a.log").read_text() == "line\n"
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["a.log"]


def test_a_symlinked_job_or_seed_folder_is_refused(jobs_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for link in ("a", "a/seed0"):
        out = tmp_path / f"o-{link.replace('/', '-')}"
        (out / link).parent.mkdir(parents=True, exist_ok=True)
        (out / link).symlink_to(elsewhere)
        result = run_a(jobs_dir, out)
        assert f"{out / link} is a symbolic link; ptuning does not write through one" in one_error(result)
        assert list(elsewhere.iterdir()) == []


def test_a_hard_linked_lock_file_is_refused_and_its_twin_untouched(tmp_path, victim):
    run = tmp_path / "o" / "job" / "seed0"
    run.mkdir(parents=True)
    os.link(victim, run / LOCK_FILE)
    with pytest.raises(PtuningError, match=rf"{run / LOCK_FILE} is not a plain file of its own \(a hard link"):
        RunLock(run).acquire()
    assert victim.read_text() == "KEEP\n"


def test_atomic_writes_go_through_a_fresh_private_folder(tmp_path, victim, monkeypatch):
    """The temporary name was once predictable enough to plant a link at it (pid and 32 random bits): with the pid and
    the random part known, such a link now changes nothing."""
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID("deadbeef" * 4))
    for name in (".x.pt.tmp-4242-deadbeef", ".x.pt.tmp-4242-deadbeefdeadbeefdeadbeefdeadbeef"):
        (tmp_path / name).symlink_to(victim)
    seen = []

    def writer(tmp: Path) -> None:
        folder = tmp.parent.stat()
        seen.append((tmp.name, stat.S_IMODE(folder.st_mode), folder.st_uid, tmp.parent.parent))
        torch.save({"a": 1}, tmp)

    atomic_save(tmp_path / "x.pt", writer)
    assert victim.read_text() == "KEEP\n"
    assert seen == [("x.pt", 0o700, os.getuid(), tmp_path)]
    assert torch.load(tmp_path / "x.pt") == {"a": 1}
    (tmp_path / "y.pt").symlink_to(victim)  # a link at the target's own name is replaced, never written through
    atomic_save(tmp_path / "y.pt", lambda tmp: tmp.write_text("new"))
    assert victim.read_text() == "KEEP\n" and not (tmp_path / "y.pt").is_symlink() and (tmp_path / "y.pt").read_text() == "new"


def test_a_symlinked_plots_folder_is_refused(tmp_path):
    out, elsewhere = tmp_path / "results", tmp_path / "elsewhere"
    for job, runs in fake_results().items():
        for r in runs:
            path = results.run_dir(out, job, r["config"]["seed"], r.get("protocol", "faithful")) / results.RESULT_FILE
            results.write_result(path, r)
    elsewhere.mkdir()
    (out / "plots").symlink_to(elsewhere)
    result = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "plots", "--results", str(out)])
    assert f"{out / 'plots'} is a symbolic link; ptuning does not write through one" in one_error(result)
    assert list(elsewhere.iterdir()) == []


def test_a_hard_linked_metrics_log_is_refused_and_its_twin_untouched(tmp_path, victim):
    from ptuning.run.metrics import MetricsLog

    (tmp_path / "run").mkdir()
    os.link(victim, tmp_path / "run" / "metrics.jsonl")
    with pytest.raises(PtuningError, match="metrics.jsonl: it is not a plain file of its own"):
        MetricsLog(tmp_path / "run")
    assert victim.read_text() == "KEEP\n"
