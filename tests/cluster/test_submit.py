"""`ptuning submit` without a cluster: the plan, the sbatch script and task command lines submitit is given
(through stand-in SLURM commands), every refusal, the task wrapper's signal handling, and `--executor local`
end to end on the tiny assets. The same against a real SLURM: test_slurm.py (`make test-slurm`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ptuning.cli import main
from ptuning.cluster.slurm import parse_time
from ptuning.cluster.task import FAILED_PREFIX, RunTask, describe_status
from ptuning.errors import PtuningError
from ptuning.run.interrupt import SUBMIT_TASK_ENV
from tests.cluster.conftest import metrics, ptuning, run_args
from tests.conftest import REPO

FAKE = {
    "sinfo": 'printf "%s\\n" ${FAKE_PARTITIONS:-"debug*" gpu}',
    "scontrol": """case "$1 $2" in
  "show config") echo "AccountingStorageType   = ${FAKE_ACCOUNTING:-accounting_storage/slurmdbd}" ;;
  "show partition") echo "PartitionName=$4 DefaultTime=${FAKE_DEFAULT_TIME:-NONE} MaxTime=${FAKE_MAX_TIME:-UNLIMITED}" ;;
esac""",
    "sbatch": """if [ -n "$FAKE_SBATCH_ERROR" ]; then echo "sbatch: error: $FAKE_SBATCH_ERROR" >&2; exit 1; fi
n=$(ls "$FAKE_RECORD" | wc -l); cp "$1" "$FAKE_RECORD/sbatch-$n.sh"; echo "Submitted batch job 4242"
""",
    "srun": "exit 0",
    "sacct": "exit 0",
}


@pytest.fixture
def fake_slurm(tmp_path) -> dict:
    """Stand-ins for SLURM's commands: sbatch records the script it is given and answers job 4242."""
    bin_dir, record = tmp_path / "fake-bin", tmp_path / "sbatch-record"
    bin_dir.mkdir()
    record.mkdir()
    for name, body in FAKE.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_RECORD": str(record), "bin": bin_dir, "record": record}


def cli(jobs_dir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`ptuning --jobs-dir JOBS ARGS...` in this process (quicker than a new Python for what runs no training)."""
    result = CliRunner().invoke(main, ["--jobs-dir", str(jobs_dir), *args], env={"HF_HUB_OFFLINE": "1", **(env or {})},
                                catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def env_of(fake: dict, **more: str) -> dict:
    return {"PATH": fake["PATH"], "FAKE_RECORD": fake["FAKE_RECORD"], **more}


def scripts(fake: dict) -> list[str]:
    return [p.read_text() for p in sorted(fake["record"].iterdir())]


def sbatch_lines(script: str) -> set[str]:
    return {line for line in script.splitlines() if line.startswith("#SBATCH")}


def submitted_tasks(folder: Path) -> list[RunTask]:
    from submitit.core.utils import DelayedSubmission

    paths = sorted(folder.glob("4242_*_submitted.pkl"), key=lambda p: int(p.name.split("_")[1]))
    return [DelayedSubmission.load(p).function for p in paths]


def test_the_array_its_sbatch_options_and_one_run_command_per_task(two_jobs, tiny_model_dir, tiny_data_dir, tmp_path, fake_slurm):
    out = tmp_path / "out"
    done = cli(two_jobs, "submit", "lora_8", "full_ft", "--seeds", "0,1", *run_args(tiny_model_dir, tiny_data_dir),
                   "--output-dir", str(out), "--partition", "gpu", "--time", "1:30:00", "--mem", "16G", "--cpus-per-job", "4",
                   "--gpus-per-job", "2", "--account", "lab", "--qos", "normal", "--constraint", "a100", "--max-parallel", "3",
                   "--signal-before", "300", env=env_of(fake_slurm))
    assert done.returncode == 0, done.stderr
    folder = out / "logs" / "slurm"
    assert done.stdout.splitlines() == [
        "ptuning: submitted 4 runs as SLURM job array 4242 (4 tasks on partition gpu, at most 3 at once)",
        f"ptuning: logs: {folder}/4242_TASK_0_log.out; which task runs what: {folder}/4242_runs.tsv",
        f"ptuning: follow it with: squeue -j 4242  ·  sacct -j 4242 -X  ·  tail -f {folder}/4242_0_0_log.out  ·  "
        f"ptuning tables --results {out}",
    ]
    [script] = scripts(fake_slurm)
    assert {"#SBATCH --array=0-3%3", "#SBATCH --requeue", "#SBATCH --signal=USR2@300", "#SBATCH --partition=gpu",
            "#SBATCH --time=90", "#SBATCH --mem=16G", "#SBATCH --cpus-per-task=4", "#SBATCH --gpus-per-node=2",
            "#SBATCH --account=lab", "#SBATCH --qos=normal", "#SBATCH --constraint=a100", "#SBATCH --job-name=ptuning",
            f"#SBATCH --output={folder}/%A_%a_0_log.out"} <= sbatch_lines(script)
    assert not any("--wckey" in line or "--error" in line for line in sbatch_lines(script))
    tasks = submitted_tasks(folder)
    expected = [("lora_8", 0), ("lora_8", 1), ("full_ft", 0), ("full_ft", 1)]
    assert [t.label for t in tasks] == [f"{job} seed {seed}" for job, seed in expected]
    for task, (job, seed) in zip(tasks, expected):
        assert task.command == [sys.executable, "-m", "ptuning.cli", "--jobs-dir", str(two_jobs), "run",
                                "--set", f"model={tiny_model_dir}", "--set", f"dataset={tiny_data_dir}", "--set", "epochs=1",
                                "--set", "train_limit=32", "--set", "eval_limit=16", "--set", f"seeds=[{seed}]",
                                "--set", "batch_size=8", "--set", "max_length=32", "--device", "cpu", "--output-dir", str(out),
                                "--", job]
    assert (folder / "4242_runs.tsv").read_text().splitlines() == ["task\trun\trun_dir\tlog"] + [
        f"4242_{i}\t{job} seed {seed}\t{out}/{job}/seed{seed}\t{folder}/4242_{i}_0_log.out" for i, (job, seed) in enumerate(expected)]


def test_defaults_one_run_the_partitions_time_limit_and_yaml_paths(two_jobs, tmp_path, fake_slurm):
    out = tmp_path / "out"
    job_file = two_jobs / "lora_8.yaml"
    done = cli(two_jobs, "submit", str(job_file), "--seed", "3", "--force", "--output-dir", str(out),
                   env=env_of(fake_slurm, FAKE_DEFAULT_TIME="2-00:00:00"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "ptuning: submitted 1 run as SLURM job 4242 (1 task on partition debug)"
    lines = sbatch_lines(scripts(fake_slurm)[0])
    assert {"#SBATCH --time=2880", "#SBATCH --gpus-per-node=1", "#SBATCH --signal=USR2@120", "#SBATCH --partition=debug"} <= lines
    assert not any(line.startswith(("#SBATCH --array", "#SBATCH --mem", "#SBATCH --cpus")) for line in lines)
    assert submitted_tasks(out / "logs" / "slurm") == []  # one run is a plain job, not an array: its files say 4242 alone
    from submitit.core.utils import DelayedSubmission

    task = DelayedSubmission.load(out / "logs" / "slurm" / "4242_submitted.pkl").function
    assert task.command[-5:-3] == ["--force", "--force-id"] and task.command[-2:] == ["--", str(job_file)]
    assert "seeds=[3]" in task.command
    assert "--device" in task.command and task.command[task.command.index("--device") + 1] == "auto"


def test_no_time_limit_anywhere_sends_no_time(two_jobs, tmp_path, fake_slurm):
    done = cli(two_jobs, "submit", "lora_8", "--output-dir", str(tmp_path / "out"), env=env_of(fake_slurm))
    assert done.returncode == 0, done.stderr
    assert not any(line.startswith("#SBATCH --time") for line in sbatch_lines(scripts(fake_slurm)[0]))


def test_a_grid_is_one_task_per_point_and_seed_and_many_runs_need_yes(two_jobs, tmp_path, fake_slurm):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "_defaults.yaml").write_text((two_jobs / "_defaults.yaml").read_text())
    (jobs / "grid.yaml").write_text((two_jobs / "lora_8.yaml").read_text() + "sweep: {lr: [1.0e-3, 3.0e-2], method.rank: [1, 2]}\n")
    out = tmp_path / "out"
    done = cli(jobs, "submit", "grid", "--seeds", "0,1", "--output-dir", str(out), env=env_of(fake_slurm))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ptuning: submitted 8 runs as SLURM job array 4242 (8 tasks")
    tasks = submitted_tasks(out / "logs" / "slurm")
    points = ["lr=1e-3,rank=1", "lr=1e-3,rank=2", "lr=0.03,rank=1", "lr=0.03,rank=2"]
    assert [t.label for t in tasks] == [f"grid/{p} seed {s}" for p in points for s in (0, 1)]
    assert [t.command[-1] for t in tasks] == [f"grid/{p}" for p in points for s in (0, 1)]  # `ptuning run` finds the point
    assert (out / "logs" / "slurm" / "4242_runs.tsv").read_text().splitlines()[1].split("\t")[2] == f"{out}/grid/{points[0]}/seed0"

    many = cli(jobs, "submit", "grid", "--seeds", ",".join(map(str, range(7))), "--output-dir", str(tmp_path / "o2"),
               env=env_of(fake_slurm))
    assert refused(many).startswith("this would start 28 runs (grid: 4 points × 7 seeds); pass --yes")
    by_path = cli(jobs, "submit", str(jobs / "grid.yaml"), "--output-dir", str(tmp_path / "o3"), env=env_of(fake_slurm))
    assert refused(by_path) == (f"{jobs / 'grid.yaml'}: the grid of a job file given by its path cannot be submitted; "
                                "put the file in the jobs folder (--jobs-dir) and name the job")
    assert len(scripts(fake_slurm)) == 1


@pytest.fixture(scope="module")
def one_done(two_jobs, tiny_model_dir, tiny_data_dir, tmp_path_factory) -> Path:
    """An output folder where lora_8 seed 0 has completed."""
    out = tmp_path_factory.mktemp("one-done")
    done = ptuning(two_jobs, "run", "lora_8", *run_args(tiny_model_dir, tiny_data_dir), "--output-dir", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_completed_runs_are_not_submitted_again(two_jobs, tiny_model_dir, tiny_data_dir, one_done, fake_slurm):
    args = ("submit", "lora_8", *run_args(tiny_model_dir, tiny_data_dir), "--output-dir", str(one_done))
    done = cli(two_jobs, *args, "--seeds", "0,1", env=env_of(fake_slurm))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == ("ptuning: submitted 1 run as SLURM job 4242 (1 task on partition debug); "
                                           "1 already completed, not submitted again")
    from submitit.core.utils import DelayedSubmission

    task = DelayedSubmission.load(one_done / "logs" / "slurm" / "4242_submitted.pkl").function
    assert task.label == "lora_8 seed 1"

    again = cli(two_jobs, *args, env=env_of(fake_slurm))  # seed 0 only: nothing to do, the tables instead
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"ptuning: all 1 runs are already completed in {one_done}; nothing to submit (--force runs them again)\n")
    assert re.search(r"^ +8  LoRA, hand-written ", again.stdout, re.M) and len(scripts(fake_slurm)) == 1  # sbatch not called again

    other = cli(two_jobs, *args, "--epochs", "2", env=env_of(fake_slurm))  # another configuration: runs again
    assert other.returncode == 0 and "submitted 1 run" in other.stdout and len(scripts(fake_slurm)) == 2
    forced = cli(two_jobs, *args, "--force", env=env_of(fake_slurm))
    assert forced.returncode == 0 and "submitted 1 run" in forced.stdout and len(scripts(fake_slurm)) == 3


def refused(result: subprocess.CompletedProcess) -> str:
    """The one error line of a refused command (exit 1, no traceback)."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptuning: error: "), result.stderr
    return lines[0].removeprefix("ptuning: error: ")


@pytest.mark.parametrize("case, expected", [
    ("no-sbatch", "--executor slurm: there is no sbatch on this machine (SLURM's commands are not on PATH); run ptuning submit "
                  "on the cluster's login node, or pass --executor local to run here"),
    ("no-srun", "--executor slurm: sbatch is here but not srun, sinfo, scontrol, sacct; load the cluster's SLURM module "
                "(or fix PATH) so that all of SLURM's commands are found"),
    ("partition", "--partition a100: no such partition on this cluster; the partitions are: debug, gpu"),
    ("no-default", "this cluster has no default partition: pass --partition (one of debug, gpu)"),
    ("accounting", "--wait needs SLURM's job accounting to see a task that died, and this cluster keeps none "
                   "(AccountingStorageType=accounting_storage/none): submitit would wait for a killed task for ever. Submit "
                   "without --wait, follow the array with squeue and read the results with `ptuning tables --results OUT`; "
                   "or ask the cluster's administrators for slurmdbd"),
    ("sbatch", "sbatch refused the array: Batch job submission failed: Invalid account or account/partition combination "
               "specified; nothing was submitted"),
    ("sinfo", "listing the partitions: `sinfo -h -o %P` failed: slurm_load_partitions: Unable to contact slurm controller"),
])
def test_cluster_problems_are_one_line_and_submit_nothing(two_jobs, tmp_path, fake_slurm, case, expected):
    out = tmp_path / "out"
    env = env_of(fake_slurm)
    args = ["submit", "lora_8", "--output-dir", str(out)]
    if case == "no-sbatch":
        env["PATH"] = str(tmp_path)
    elif case == "no-srun":
        only = tmp_path / "only-sbatch"
        only.mkdir()
        (only / "sbatch").symlink_to(fake_slurm["bin"] / "sbatch")
        env["PATH"] = str(only)
    elif case == "partition":
        args += ["--partition", "a100"]
    elif case == "no-default":
        env["FAKE_PARTITIONS"] = "debug gpu"
    elif case == "accounting":
        env["FAKE_ACCOUNTING"] = "accounting_storage/none"
        args.append("--wait")
    elif case == "sbatch":
        env["FAKE_SBATCH_ERROR"] = "Batch job submission failed: Invalid account or account/partition combination specified"
    elif case == "sinfo":
        (fake_slurm["bin"] / "sinfo").write_text("#!/bin/sh\necho 'slurm_load_partitions: Unable to contact slurm controller' >&2\nexit 1\n")
    assert refused(cli(two_jobs, *args, env=env)) == expected.replace("--results OUT`", f"--results {out}`")
    assert not out.exists()  # nothing written, nothing half-submitted
    assert scripts(fake_slurm) == []


@pytest.mark.parametrize("args, expected", [
    (["--executor", "local", "--partition", "gpu", "--time", "10"], "--partition, --time: SLURM options, for --executor slurm only"),
    (["--mem", "lots"], "--mem 'lots': expected a size as SLURM writes it, e.g. 16G or 8000M"),
    (["--time", "1:2:3:4"], "--time '1:2:3:4': expected a SLURM time such as 90 (minutes), 4:00:00 or 1-12:00:00"),
    (["--time", "0"], "--time '0': the time limit must be more than zero"),
    (["--device", "tpu"], "unknown device 'tpu': use auto, cpu, cuda or cuda:N"),
    (["--container", "missing.sif"], "--container missing.sif: no such image file; build one from the Docker image "
                                     "(docs/cluster.md) and pass its path"),
    (["--set", "lr=fast"], "--set lr: …"),  # the settings' own messages (tests/test_settings_cli.py)
    (["--seeds", "0,0"], "--seeds: …"),
])
def test_bad_options_are_one_line_before_anything_is_asked_or_written(two_jobs, tmp_path, fake_slurm, args, expected):
    out = tmp_path / "out"
    said = refused(cli(two_jobs, "submit", "lora_8", "--output-dir", str(out), *args, env=env_of(fake_slurm)))
    assert said.startswith(expected[:-1]) if expected.endswith("…") else said == expected
    assert not out.exists() and scripts(fake_slurm) == []


def test_unknown_job_and_empty_jobs_folder(two_jobs, tmp_path, fake_slurm):
    assert "lora_88" in refused(cli(two_jobs, "submit", "lora_88", "--output-dir", str(tmp_path / "o"), env=env_of(fake_slurm)))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "_defaults.yaml").write_text((two_jobs / "_defaults.yaml").read_text())
    assert refused(cli(empty, "submit", env=env_of(fake_slurm))) == (
        f"no job files (*.yaml) in {empty}; pass --jobs-dir with the folder of job files")


def test_without_submitit_one_line_says_how_to_install_it(two_jobs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit → ImportError
    result = CliRunner().invoke(main, ["--jobs-dir", str(two_jobs), "submit", "lora_8", "--executor", "local",
                                       "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr == ("ptuning: error: ptuning submit needs submitit, which is not installed: "
                             "pip install 'ptuning[slurm]' (or pip install submitit)\n")


@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30", 2), ("0:59", 1), ("4:00:00", 240), ("1-12", 2160),
                                           ("1-12:30", 2190), ("2-00:00:01", 2881), ("00:00:30", 1)])
def test_parse_time_reads_slurms_formats(text, minutes):
    assert parse_time(text) == minutes


def test_parse_time_refuses_other_text():
    with pytest.raises(PtuningError, match="expected a SLURM time"):
        parse_time("1h")


# ---------------------------------------------------------------------------------------------
# the task wrapper (ptuning/cluster/task.py), run here with stand-in commands

CHILD = """
import os, signal, sys, time
def term(*_):
    open(sys.argv[1], "w").write("checkpoint written")
    sys.exit(143)
signal.signal(signal.SIGTERM, term)
print("ready", os.getpid(), flush=True)
time.sleep(60)
"""


def test_task_runs_the_command_with_the_slurm_cpus_and_drops_force_when_restarted(tmp_path, monkeypatch, capfd):
    argv = tmp_path / "argv"
    probe = [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'w').write(repr((sys.argv[2:], os.environ['OMP_NUM_THREADS'], "
             f"os.environ['{SUBMIT_TASK_ENV}'])))", str(argv), "run", "--force", "--", "job"]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert RunTask(probe, "job seed 0")() == 0
    assert eval(argv.read_text()) == (["run", "--force", "--", "job"], "6", "1")
    assert capfd.readouterr().out.startswith("ptuning: task 77 [job seed 0] on ")

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued: resume, never start over
    assert RunTask(probe, "job seed 0")() == 0
    assert eval(argv.read_text())[0] == ["run", "--", "job"]
    # with the submission's --force-id, --force stays: the run keeps what it wrote itself, and still replaces the rest
    assert RunTask([*probe[:-2], "--force-id", "5eed", "--", "job"], "job seed 0")() == 0
    assert eval(argv.read_text())[0] == ["run", "--force", "--force-id", "5eed", "--", "job"]


@pytest.mark.parametrize("code, said", [
    ("import sys; sys.exit(3)", "the run exited with status 3"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "the run was killed by SIGKILL (out of memory, or killed by hand)"),
    ("import sys; sys.exit(143)", "the run stopped on SIGTERM after writing its checkpoint"),
])
def test_a_failed_run_fails_the_task_with_one_line_in_its_log(code, said, capfd):
    with pytest.raises(RuntimeError) as raised:
        RunTask([sys.executable, "-c", code], "lora_8 seed 1")()
    assert str(raised.value) == f"[lora_8 seed 1] {said}"
    assert capfd.readouterr().err.splitlines()[-1] == f"{FAILED_PREFIX}[lora_8 seed 1] {said}"


def test_describe_status_of_other_signals():
    assert describe_status(-signal.SIGSEGV) == "the run was killed by SIGSEGV"
    assert describe_status(130) == "the run stopped on SIGINT after writing its checkpoint"


def test_time_limit_warning_the_run_ignores_usr2_and_checkpoint_stops_it_then_requeues(tmp_path):
    """submitit calls checkpoint() on SIGUSR2 (the time-limit warning, which SLURM sends the run too): the run
    survives the USR2, stops on the task's SIGTERM having written its checkpoint, and the same task comes back."""
    from submitit.helpers import DelayedSubmission

    marker = tmp_path / "checkpoint"
    task = RunTask([sys.executable, "-c", CHILD, str(marker)], "lora_8 seed 0")
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(pytest.raises(RuntimeError, task)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while (task._proc is None or not _started(task._proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(task._proc.pid, signal.SIGUSR2)  # ignored: still running
    time.sleep(0.3)
    assert task._proc.poll() is None and not marker.exists()

    again = task.checkpoint()
    assert isinstance(again, DelayedSubmission) and again.function is task
    assert marker.read_text() == "checkpoint written" and task._proc.returncode == 143
    thread.join(timeout=10)
    assert str(outcome[0].value) == "[lora_8 seed 0] the run stopped on SIGTERM after writing its checkpoint"
    assert again.function.__getstate__()["_proc"] is None  # what is pickled for the requeued task: no process


def _started(pid: int) -> bool:
    """The stand-in has installed its SIGTERM handler (it printed 'ready'): its signal mask says so."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("task_env, status", [(True, 0), (False, -signal.SIGUSR2)])
def test_a_submit_task_run_ignores_sigusr2_and_a_plain_run_does_not(task_env, status):
    code = ("import os, signal\nfrom ptuning.run.interrupt import StopRequest\n"
            "with StopRequest():\n    os.kill(os.getpid(), signal.SIGUSR2)\n    print('alive')")
    env = {k: v for k, v in os.environ.items() if k != SUBMIT_TASK_ENV}
    if task_env:
        env[SUBMIT_TASK_ENV] = "1"
    done = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert done.returncode == status
    assert done.stdout == ("alive\n" if task_env else "")


# ---------------------------------------------------------------------------------------------
# --executor local, end to end


def test_local_executor_runs_the_plan_two_at_a_time_and_equals_run_all(two_jobs, tiny_model_dir, tiny_data_dir, reference, tmp_path):
    out = tmp_path / "out"
    args = ["lora_8", "--seeds", "0,1", *run_args(tiny_model_dir, tiny_data_dir), "--output-dir", str(out)]
    done = ptuning(two_jobs, "submit", "--executor", "local", "--max-parallel", "2", *args)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"ptuning: running 2 runs here, 2 at a time; logs in {out}/logs/local"
    progress = [line for line in lines if line.startswith("ptuning: ") and "runs done" in line]
    assert progress[0] == "ptuning: 0 of 2 runs done, 2 running, 0 waiting, 0 failed"  # both at once
    assert progress[-1] == "ptuning: 2 of 2 runs done, 0 running, 0 waiting, 0 failed"
    assert {seed: metrics(out, "lora_8", seed) for seed in (0, 1)} == {seed: reference["lora_8", seed] for seed in (0, 1)}
    assert any(re.match(r"^ +8  LoRA, hand-written .* \(2\) ", line) for line in lines)  # the compact table, 2 seeds
    logs = sorted((out / "logs" / "local").glob("*_0_log.out"))
    assert len(logs) == 2 and all("CUDA_VISIBLE_DEVICES=(none)" in log.read_text() for log in logs)

    # it ends as run-all does: the runs' outcome and time, where the results are, what to run next
    assert re.fullmatch(r"ptuning: 2 runs completed, 0 skipped \(already completed\), 0 failed; \d+ s in all", lines[-3]), lines[-3]
    assert lines[-2:] == [f"results: {out}", f"next: ptuning check --results {out}   (each row against the report's figure)"]

    again = ptuning(two_jobs, "submit", "--executor", "local", *args)
    assert again.returncode == 0 and again.stdout.startswith("ptuning: all 2 runs are already completed")
    assert re.fullmatch(r"ptuning: 0 runs completed, 2 skipped \(already completed\), 0 failed; \d+ s in all",
                        again.stdout.splitlines()[-3])


def test_local_executor_reports_a_failed_run_with_its_reason_and_log(two_jobs, tiny_data_dir, tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "no-model"
    done = ptuning(two_jobs, "submit", "lora_8", "--executor", "local", "--model", str(missing), "--dataset", str(tiny_data_dir),
                   "--device", "cpu", "--output-dir", str(out))
    assert done.returncode == 1
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 2, done.stderr
    assert errors[0].startswith("ptuning: error: [lora_8 seed 0] the task failed: ") and str(missing) in errors[0]
    assert errors[0].endswith(f"; log: {next((out / 'logs' / 'local').glob('*_0_log.out'))}")
    assert errors[1] == "ptuning: 1 of 1 runs failed: lora_8 seed 0"
    assert "ptuning: 0 of 1 runs done, 0 running, 0 waiting, 1 failed" in done.stdout


def test_container_wraps_each_run_and_binds_what_it_reads_and_writes(two_jobs, tiny_model_dir, tiny_data_dir, tmp_path):
    """--container IMAGE: each task runs `apptainer exec --nv --bind ... IMAGE ptuning ...` (a stand-in apptainer here,
    which records its arguments and runs the rest on this machine)."""
    image, bin_dir, record = tmp_path / "ptuning.sif", tmp_path / "bin", tmp_path / "apptainer-args"
    image.write_bytes(b"")
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nshift 4\nshift\nexec "$@"\n')
    (bin_dir / "apptainer").chmod(0o755)
    out = tmp_path / "out"
    path = f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"  # `ptuning` in the "image": this venv's
    done = ptuning(two_jobs, "submit", "lora_8", "--executor", "local", "--container", str(image),
                   *run_args(tiny_model_dir, tiny_data_dir), "--output-dir", str(out), env={"PATH": path, "HF_HOME": "/data/hf"})
    assert done.returncode == 0, done.stderr
    args = record.read_text().splitlines()
    binds = [str(out), str(two_jobs), str(tiny_model_dir), str(tiny_data_dir), "/data/hf:/hf-cache"]
    assert args[:6] == ["exec", "--nv", "--bind", ",".join(binds), str(image), "ptuning"]
    assert args[6:9] == ["--jobs-dir", str(two_jobs), "run"] and args[-2:] == ["--", "lora_8"]
    assert (out / "lora_8" / "seed0" / "result.json").is_file()
