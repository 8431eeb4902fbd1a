"""The Makefile front end: what `make -n` would run for the documented targets (nothing is executed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(*args: str) -> str:
    out = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout


def docker_run_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("docker run"))


def test_docker_run_all_rows_with_gpus_cache_and_results_mounted():
    line = docker_run_line(dry_run("docker-run", "HF_CACHE=/hf", "RESULTS=/tmp/r", "USER_ID=1234", "GROUP_ID=99"))
    assert "--gpus all" in line and "--user 1234:99" in line
    assert '-v "/hf":/hf-cache' in line and '-v "/tmp/r":/app/results' in line
    assert line.rstrip().endswith("ptuning:latest run-all")


def test_docker_run_one_job_and_variables():
    line = docker_run_line(dry_run("docker-run", "JOB=lora_8_peft", "IMAGE=me/pt:1", "GPUS=device=1"))
    assert line.rstrip().endswith("me/pt:1 run lora_8_peft") and "--gpus device=1" in line
    assert "--gpus" not in docker_run_line(dry_run("docker-run", "GPUS="))
    # the image a result ran in is recorded in it (environment.image)
    assert "-e PTUNING_IMAGE=me/pt:1 -e PTUNING_IMAGE_ID=$(docker image inspect -f '{{.Id}}' me/pt:1 2>/dev/null)" in line


def test_local_run_targets():
    assert ".venv/bin/ptuning run-all --output-dir results" in dry_run("run", "-W", ".venv/bin/ptuning")
    assert ".venv/bin/ptuning run lora_8 --output-dir results" in dry_run("run", "JOB=lora_8", "-W", ".venv/bin/ptuning")


def test_bench_target_writes_markdown_and_json_under_results():
    line = dry_run("bench", "ARGS=--concurrency 4", "-W", ".venv/bin/ptuning")
    assert ".venv/bin/ptuning bench --output results/bench.md --json results/bench.json --concurrency 4" in line


# -- the one torch pin -------------------------------------------------------------------------------------

TORCH_REQ = REPO / "requirements" / "torch.txt"
CHECK_TORCH = REPO / "tools" / "check-torch.py"


def torch_pin() -> str:
    (line,) = [x for x in TORCH_REQ.read_text().splitlines() if x.startswith("torch==")]
    return line.removeprefix("torch==")


def test_torch_is_pinned_in_one_place_that_make_docker_and_ci_read():
    pin = torch_pin()
    assert pin.count(".") == 2
    # no build file, script or workflow names the version itself: they all read requirements/torch.txt
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    build_files = [p for p in tracked if p.startswith(("docker/", ".github/", "scripts/", "requirements/", "tools/", ".ci/"))
                   or p in ("Makefile", "lint.mk", "pyproject.toml", ".dockerignore")]
    assert "docker/Dockerfile" in build_files and ".github/workflows/ci.yml" in build_files
    naming = [p for p in build_files if pin in (REPO / p).read_text(errors="replace")]
    assert naming == ["requirements/torch.txt"]
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "pytorch/pytorch" not in dockerfile and "ARG BASE_IMAGE=python:3.11-slim-bookworm" in dockerfile
    assert "COPY requirements/torch.txt /tmp/req/torch.txt" in dockerfile and "pip install ${TORCH_PIP_ARGS} -r /tmp/req/torch.txt" in dockerfile
    assert "!requirements/torch.txt" in (REPO / ".dockerignore").read_text()
    assert "pip install -r requirements/torch.txt --index-url https://download.pytorch.org/whl/cpu" in (REPO / ".github/workflows/ci.yml").read_text()
    assert '"$HERE/../requirements/torch.txt"' in (REPO / "docker" / "standin-base.sh").read_text()


def test_make_install_keeps_only_the_pinned_torch_and_constrains_the_rest_to_it():
    text = dry_run("install", "-W", "pyproject.toml")
    assert ".venv/bin/python tools/check-torch.py requirements/torch.txt || .venv/bin/pip install -r requirements/torch.txt" in text
    assert '.venv/bin/pip install -c requirements/constraints.txt -c requirements/torch.txt -e ".[libs,slurm,test,tensorboard]"' in text


def test_docker_build_passes_the_torch_source_only_when_given():
    plain = dry_run("docker-build")
    assert "TORCH_PIP_ARGS" not in plain and "TORCH_REQUIRE_CUDA" not in plain
    cpu = dry_run("docker-build", "TORCH_PIP_ARGS=--index-url https://download.pytorch.org/whl/cpu", "TORCH_REQUIRE_CUDA=0")
    assert '--build-arg "TORCH_PIP_ARGS=--index-url https://download.pytorch.org/whl/cpu"' in cpu
    assert "--build-arg TORCH_REQUIRE_CUDA=0" in cpu


def fake_torch(tmp_path, body: str) -> dict:
    """An environment whose `import torch` finds a stand-in module with `body` (shadowing the real one)."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(body)
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}


def check_torch(tmp_path, body: str | None, *args: str, pin: str | None = None) -> tuple[int, str]:
    import os
    import sys

    req = TORCH_REQ
    if pin is not None:
        req = tmp_path / "pin.txt"
        req.write_text(pin)
    env = {**os.environ, **fake_torch(tmp_path, body)} if body is not None else dict(os.environ)
    proc = subprocess.run([sys.executable, str(CHECK_TORCH), str(req), *args], capture_output=True, text=True, env=env)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


@pytest.mark.parametrize("version, cuda, args, rc, line", [
    ("{pin}+cu128", '"12.8"', ["--require-cuda"], 0, "check-torch: torch {pin}+cu128 (CUDA 12.8), the version {req} pins"),
    ("{pin}+cpu", "None", [], 0, "check-torch: torch {pin}+cpu (CPU only), the version {req} pins"),
    ("{pin}", "None", ["--require-cuda"], 1,
     "check-torch: torch {pin} is a CPU-only build; this image needs the CUDA build of {pin} (PyPI's)"),
    ("2.5.1+cu124", '"12.4"', ["--require-cuda"], 1, "check-torch: torch 2.5.1+cu124 (CUDA 12.4) is installed, but {req} pins {pin}"),
], ids=["cuda build", "cpu build", "cpu build where cuda is required", "another version"])
def test_check_torch(tmp_path, version, cuda, args, rc, line):
    pin = torch_pin()
    body = f"__version__ = {version.format(pin=pin)!r}\nclass version:\n    cuda = {cuda}\n"
    assert check_torch(tmp_path, body, *args) == (rc, line.format(pin=pin, req=TORCH_REQ))


def test_check_torch_without_torch_or_with_a_bad_pin_file(tmp_path):
    code, out = check_torch(tmp_path, "raise ImportError('libcudart.so.12: cannot open shared object file')")
    assert (code, out) == (1, f"check-torch: torch cannot be imported (ImportError: libcudart.so.12: cannot open shared object file); "
                              f"{TORCH_REQ} pins {torch_pin()}")
    (tmp_path / "x").mkdir()
    code, out = check_torch(tmp_path / "x", None, pin="torch==1.0.0\ntorch==2.0.0\n")
    assert (code, out) == (1, f"check-torch: {tmp_path / 'x' / 'pin.txt'} must have exactly one 'torch==VERSION' line, has 2")


def test_demo_target_runs_the_demo():
    assert ".venv/bin/ptuning demo" in dry_run("demo", "-W", ".venv/bin/ptuning")
    assert ".venv/bin/ptuning demo --quick" in dry_run("demo", "ARGS=--quick", "-W", ".venv/bin/ptuning")


def test_results_targets_and_list():
    assert ".venv/bin/ptuning plots --results results" in dry_run("plots", "-W", ".venv/bin/ptuning")
    assert ".venv/bin/ptuning check --results /r --tolerance 0.5" in dry_run("check", "RESULTS=/r", "ARGS=--tolerance 0.5", "-W", ".venv/bin/ptuning")
    assert ".venv/bin/ptuning tables --results results --wide" in dry_run("tables", "ARGS=--wide", "-W", ".venv/bin/ptuning")
    assert ".venv/bin/ptuning list" in dry_run("list", "-W", ".venv/bin/ptuning")


def test_help_lists_every_target_in_plain_words():
    out = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "$(" not in out  # no unexpanded make variable
    targets = [line.split()[0] for line in out.splitlines()]
    for target in ("install", "smoke", "demo", "run", "tables", "plots", "check", "list", "params", "bench", "docker-build"):
        assert target in targets


@pytest.mark.parametrize("cuda, expected", [(True, "-m venv --system-site-packages"), (False, "-m venv")])
def test_install_keeps_a_cuda_torch_by_letting_the_venv_see_it(tmp_path, cuda, expected):
    """The venv is made by $(PYTHON): with the CUDA build of the pinned torch there, the venv sees its packages; else it is
    isolated."""
    log = tmp_path / "calls"
    stub = tmp_path / "python"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in *"check-torch.py requirements/torch.txt --require-cuda"*) exit {0 if cuda else 1};; esac\nexit 0\n')
    stub.chmod(0o755)
    venv = tmp_path / "v"
    subprocess.run(["make", f"PYTHON={stub}", f"VENV={venv}", f"{venv}/bin/python"], cwd=REPO, capture_output=True, text=True, check=True)
    calls = log.read_text().splitlines()
    assert calls[-1] == f"{expected} {venv}"


def test_test_targets_leave_the_slow_and_slurm_tests_to_their_own():
    import tomllib

    addopts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert "-m 'not slurm and not slow'" in addopts  # make test runs neither
    assert "HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -m slow" in dry_run("test-slow", "-W", ".venv/bin/python")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert ci.index("make test") < ci.index("make test-slow") < ci.index("make lint")
