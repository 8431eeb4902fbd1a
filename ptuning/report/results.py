"""Result files: one JSON per run at `<output-dir>/<job>/seed<seed>/result.json`, written atomically.

Runs under the heldout protocol live in `<output-dir>/<job>/heldout-seed<seed>/`, so the two
protocols never overwrite each other.

Trained parameters (a directory: prompts/, adapter/, lora/ with safetensors, or model/ for full fine-tuning;
nothing for zero-shot; see ptuning/methods/artifacts.py) are written next to the result. Readers never see a
half-written file: everything goes to a temporary name in the same directory and is renamed into place.
"""

from __future__ import annotations

import json
import os
import platform
import stat
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from ptuning.atomic import atomic_save
from ptuning.errors import PtuningError

RESULT_FILE = "result.json"
PACKAGES = ("ptuning", "torch", "transformers", "tokenizers", "datasets", "adapters", "peft", "opendelta", "huggingface_hub")


def run_dir(output_dir: Path, job_name: str, seed: int, protocol: str = "faithful") -> Path:
    prefix = "" if protocol == "faithful" else f"{protocol}-"
    return Path(output_dir) / job_name / f"{prefix}seed{seed}"


def disk_bytes(path: Path | None) -> int | None:
    """Size on disk of a saved artifact: a file's size or a directory's total; None if there is none."""
    if path is None or not Path(path).exists():
        return None
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_result(path: Path, result: dict[str, Any]) -> Path:
    data = (json.dumps(result, indent=2, sort_keys=False) + "\n").encode()
    return atomic_save(path, lambda tmp: tmp.write_bytes(data))


#: a result file is a few kilobytes; one far larger is not ptuning's, and is not read into memory
MAX_RESULT_BYTES = 16 * 2**20


def read_json_object(path: Path, what: str = "result file", limit: int = MAX_RESULT_BYTES) -> dict[str, Any]:
    """A JSON object from a regular file of at most `limit` bytes; anything else is one PtuningError naming `what`."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:  # a FIFO would block an open without it
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise PtuningError(f"{path}: unreadable {what} (not a regular file)")
            data = f.read(limit + 1)
        if len(data) > limit:
            raise PtuningError(f"{path}: unreadable {what} (over {limit // 2**20} MiB; a {what} is a few kilobytes)")
        result = json.loads(data.decode("utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 text (a damaged or foreign file)
        raise PtuningError(f"{path}: unreadable {what} ({_first_line(exc)})") from None
    except RecursionError:  # "[[[[..." nested deeper than the parser's stack
        raise PtuningError(f"{path}: unreadable {what} (nested too deeply)") from None
    if not isinstance(result, dict):
        raise PtuningError(f"{path}: unreadable {what} (a JSON {type(result).__name__}, not an object)")
    return result


def read_result(path: Path) -> dict[str, Any]:
    result = read_json_object(path)
    problem = schema_problem(result)
    if problem:
        raise PtuningError(f"{path}: unreadable result file ({problem})")
    return result


#: what `ptuning latency` writes into a results folder, and `ptuning tables` reads
LATENCY_FILE = "latency.json"


def read_latency(results_dir: Path, problems: list[str] | None = None) -> dict[str, Any] | None:
    """The latency figures of `results_dir` (None when there are none); an unusable file is left out, what is wrong
    with it appended to `problems`."""
    path = Path(results_dir) / LATENCY_FILE
    if not path.exists():
        return None
    try:
        data = read_json_object(path, "latency file")
    except PtuningError as exc:
        if problems is not None:
            problems.append(f"{exc}; the tables leave the added latency out")
        return None
    if not isinstance(data.get("rows"), dict):
        if problems is not None:
            problems.append(f"{path}: unreadable latency file (no 'rows' object); the tables leave the added latency out")
        return None
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


#: result fields the tables, plots and check read, and what each must be when present
_TEXT = ("job", "title", "status", "reason", "protocol")
_NUMBERS = ("max_accuracy", "reported_accuracy", "final_accuracy", "selected_epoch", "max_epoch", "train_seconds",
            "artifact_bytes", "peak_gpu_memory_bytes", "peak_gpu_memory_reserved_bytes")
_EPOCH_NUMBERS = ("epoch", "accuracy", "val_accuracy", "train_loss")


def schema_problem(result: dict[str, Any]) -> str | None:
    """What makes a result unusable for the tables, plots and check (a hand-edited or foreign file), or None.

    ptuning writes its results atomically, so only an edit or another program gets here; without this the
    first table or plot to read such a field would end in a traceback."""
    for key in _TEXT:
        if result.get(key) is not None and not isinstance(result[key], str):
            return f"{key!r} is a {type(result[key]).__name__}, not text"
    for key in _NUMBERS:
        if not _number(result.get(key)):
            return f"{key!r} is {result[key]!r}, not a number"
    for key in ("config", "params"):
        if result.get(key) is not None and not isinstance(result[key], dict):
            return f"{key!r} is a {type(result[key]).__name__}, not a mapping"
    params = result.get("params") or {}
    if params and not isinstance(params.get("trainable"), int):
        return "'params.trainable' is missing or not a whole number"
    for key in ("total", "added"):
        if not _number(params.get(key)):
            return f"'params.{key}' is {params[key]!r}, not a number"
    config = result.get("config") or {}
    for key in ("seed", "epochs"):
        if not _number(config.get(key)):
            return f"'config.{key}' is {config[key]!r}, not a number"
    if config.get("protocol") is not None and not isinstance(config["protocol"], str):
        return "'config.protocol' is not text"
    epochs = result.get("epochs")
    if epochs is not None:
        if not isinstance(epochs, list) or not all(isinstance(e, dict) for e in epochs):
            return "'epochs' is not a list of mappings"
        for e in epochs:
            for key in _EPOCH_NUMBERS:
                if not _number(e.get(key)):
                    return f"an epoch's {key!r} is {e[key]!r}, not a number"
    return None


def load_results(results_dir: Path, skipped: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """job name → its result dicts (one per seed and protocol); a point of a grid is its own job
    ("lora_8_peft/lr=3e-4,rank=8"). An unreadable file is left out, and what was wrong with it appended to `skipped`
    (one line per file) when given."""
    results: dict[str, list[dict[str, Any]]] = {}
    root = Path(results_dir)
    paths = [path for pattern in ("*/seed*", "*/*-seed*", "*/*=*/seed*", "*/*=*/*-seed*")  # jobs, and points of grids
             for path in root.glob(f"{pattern}/{RESULT_FILE}")]
    for path in sorted(paths):
        try:
            result = read_result(path)
        except PtuningError as exc:
            if skipped is not None:
                skipped.append(str(exc))
            continue
        results.setdefault(result.get("job", path.parent.parent.relative_to(root).as_posix()), []).append(result)
    return results


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(cwd: Path, *args: str) -> bytes | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, timeout=10, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """The checkout ptuning runs from: its commit, whether the working tree differs from it (tracked changes or
    untracked files that git does not ignore), and a SHA-256 of those differences (the diff against the commit, then
    each untracked file's path and content), so that two runs from the same dirty tree can be told apart from runs
    of different edits. All None outside a git checkout (an installed package, the Docker image)."""
    import hashlib

    cwd = cwd or Path(__file__).resolve().parent
    commit = _git(cwd, "rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None, "git_diff_sha256": None}
    digest = hashlib.sha256(_git(cwd, "diff", "HEAD", "--binary") or b"")
    top = Path((_git(cwd, "rev-parse", "--show-toplevel") or b".").decode().strip())
    untracked = [name for name in (_git(cwd, "ls-files", "--others", "--exclude-standard", "-z", "--full-name", ":/") or b"").split(b"\0") if name]
    for name in sorted(untracked):
        digest.update(b"\0untracked\0" + name + b"\0")
        try:
            digest.update((top / name.decode(errors="surrogateescape")).read_bytes())
        except OSError:
            pass
    dirty = bool((_git(cwd, "diff", "HEAD", "--quiet", "--exit-code") is None) or untracked)
    return {"git_commit": commit.decode().strip() or None, "git_dirty": dirty, "git_diff_sha256": digest.hexdigest() if dirty else None}


def git_commit() -> str | None:
    return git_state()["git_commit"]


def command_line() -> str:
    """The command that started this process, as a shell would take it back (`ptuning run lora_8 --seeds 0,1`)."""
    import shlex
    import sys

    import click

    ctx = click.get_current_context(silent=True)
    argv = ctx.find_root().meta.get("ptuning.argv") if ctx is not None else None
    if argv is not None:
        return shlex.join(["ptuning", *argv])
    return shlex.join(sys.argv)


def container_image() -> dict[str, str | None] | None:
    """The Docker image this runs in, as `make docker-run` names it (PTUNING_IMAGE, PTUNING_IMAGE_ID); None outside."""
    import os

    tag, image_id = os.environ.get("PTUNING_IMAGE"), os.environ.get("PTUNING_IMAGE_ID")
    if tag is None and image_id is None and not Path("/.dockerenv").exists():
        return None
    return {"tag": tag, "id": image_id or None}


def threads() -> dict[str, Any]:
    """The threads torch computes with, and OMP_NUM_THREADS if set: a CPU result is exactly reproducible only with
    the same number (a sum split over other threads rounds differently)."""
    import torch

    return {"torch": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def environment(device) -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(device) if getattr(device, "type", str(device)) == "cuda" else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "threads": threads(),
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "packages": package_versions(),
        **git_state(),
        "command": command_line(),
        "image": container_image(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
