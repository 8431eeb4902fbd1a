"""Result files: one JSON per run at `<output-dir>/<job>/seed<seed>/result.json`, written atomically.

Runs under the heldout protocol live in `<output-dir>/<job>/heldout-seed<seed>/`, so the two
protocols never overwrite each other.

Trained parameters (prompts.pt, adapter.pt, lora.pt, or a library's directory) are written next
to the result. Readers never see a half-written file: everything goes to a temporary name in the
same directory and is renamed into place.
"""

from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from ptuning.atomic import atomic_save
from ptuning.errors import PtuningError

RESULT_FILE = "result.json"
PACKAGES = ("ptuning", "torch", "transformers", "tokenizers", "datasets", "adapters", "peft", "opendelta", "huggingface_hub")


#: evaluation protocols, in table order (ptuning/protocol.py implements them; results record the name)
PROTOCOLS = ("faithful", "heldout")


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


def read_result(path: Path) -> dict[str, Any]:
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 text (a damaged or foreign file)
        raise PtuningError(f"{path}: unreadable result file ({exc})") from None
    if not isinstance(result, dict):
        raise PtuningError(f"{path}: unreadable result file (a JSON {type(result).__name__}, not an object)")
    return result


def load_results(results_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """job name → its result dicts (one per seed and protocol), skipping unreadable files."""
    results: dict[str, list[dict[str, Any]]] = {}
    paths = [*Path(results_dir).glob(f"*/seed*/{RESULT_FILE}"), *Path(results_dir).glob(f"*/*-seed*/{RESULT_FILE}")]
    for path in sorted(paths):
        try:
            result = read_result(path)
        except PtuningError:
            continue
        results.setdefault(result.get("job", path.parent.parent.name), []).append(result)
    return results


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def environment(device) -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(device) if getattr(device, "type", str(device)) == "cuda" else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "packages": package_versions(),
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
