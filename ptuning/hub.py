"""The Hugging Face hub: telling hub ids from local paths, a fast reachability probe, one-line errors.

Shared by model loading (`ptuning.model`), dataset loading (`ptuning.data`) and `ptuning params`.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ptuning.errors import PtuningError


def looks_like_path(ref: str) -> bool:
    """A reference that is meant as a local path rather than a hub id."""
    return ref.startswith(("/", "./", "../", "~")) or os.path.exists(ref) or ref.startswith(".")


def resolve(ref: str, what: str, option: str) -> str:
    """Expand a local path and check it exists; hub ids pass through unchanged."""
    if looks_like_path(ref):
        path = Path(ref).expanduser()
        if not path.exists():
            raise PtuningError(f"{what} path {ref} does not exist: pass {option} with an existing directory or a hub id")
        return str(path)
    return ref


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint accepts a TCP connection (False at once when HF_HUB_OFFLINE=1).

    Without this, an unreachable hub costs ~40 s of retries and a screen of warnings before the
    libraries give up; with it, loading goes straight to the local cache (`local_files_only`).
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def quiet_hub_logs() -> None:
    """Keep the libraries' retry warnings off the user's screen; our own error says what happened."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as tf_logging

    hub_logging.set_verbosity_error()
    tf_logging.set_verbosity_error()


def hub_error(ref: str, what: str, option: str, exc: BaseException) -> PtuningError:
    """Turn a failed hub download into one line naming the option that takes a local path."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        reason = "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
    elif not hub_reachable():
        reason = "the Hugging Face hub is unreachable (no network?) and it is not in the local cache"
    else:
        reason = "the hub has no such repository or refused it"
    if option == "--model":
        hint = "pass --model with a local directory (a model saved with save_pretrained)"
    else:
        hint = (
            "pass --dataset with a local path (a dataset saved with save_to_disk, or a directory of "
            "train/test .jsonl/.json/.csv/.parquet files with text and label)"
        )
    if not offline:
        hint += ", or set HF_HUB_OFFLINE=1 to use a copy already in the Hugging Face cache"
    return PtuningError(f"cannot load {what} {ref!r}: {reason} ({type(exc).__name__}); {hint}")
