"""Shared fixtures: tiny offline assets (T5, SentencePiece tokenizer, IMDb-shaped data), no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # nor a GPU: on a GPU machine `--device auto` would otherwise pick CUDA (README: CPU only)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ptuning-cache")
    os.environ["PTUNING_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory, cache_dir) -> tuple[Path, Path]:
    """(model_dir, dataset_dir) written once per session through the public builders."""
    from ptuning.testing.tiny import build_assets

    return build_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_assets) -> Path:
    return tiny_assets[0]


@pytest.fixture(scope="session")
def tiny_data_dir(tiny_assets) -> Path:
    return tiny_assets[1]


@pytest.fixture
def tiny_model(tiny_model_dir):
    """A fresh (model, tokenizer) loaded through ptuning.model.load_model."""
    from ptuning.model import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(autouse=True)
def _quiet_libraries():
    """The libraries' known notices (ptuning/quiet.py) stay out of the test report too: pytest gives every test fresh
    warning filters, so they are installed for each (tests/test_quiet.py checks the filters themselves)."""
    from ptuning import quiet

    quiet.install()


@pytest.fixture(autouse=True)
def _own_count_cache(tmp_path, monkeypatch):
    """`ptuning params` keeps its counts in a cache (ptuning/report/params.py). Each test gets an empty one of its own:
    a count cached by one test (under a monkeypatched formula, say) never answers another, and none lands in the
    user's cache."""
    monkeypatch.setattr("ptuning.report.params.count_cache_dir", lambda: tmp_path / "count-cache")


@pytest.fixture(autouse=True)
def _close_figures():
    """Every matplotlib figure a test made is closed after it (the plot tests inspect figures they never save)."""
    yield
    import sys

    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
