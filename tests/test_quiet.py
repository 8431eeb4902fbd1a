"""The library notices ptuning hides: each one exactly, nothing else, and none reaches a smoke run's output."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest

from ptuning import quiet

from .conftest import JOBS, REPO

WARNING_NOTICES = [n for n in quiet.NOTICES if n.channel == quiet.WARNING]
LOG_NOTICES = [n for n in quiet.NOTICES if n.channel == quiet.LOG]


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def capture_logs():
    """A handler on each notice's logger (after its filters, before any parent's), at WARNING whatever the verbosity."""
    handlers = {}
    for name in {n.source for n in LOG_NOTICES} | {"transformers"}:
        logger = logging.getLogger(name)
        handlers[name] = (logger, Capture(), logger.level)
        logger.addHandler(handlers[name][1])
        logger.setLevel(logging.WARNING)
    yield {name: capture for name, (_, capture, _) in handlers.items()}
    for logger, capture, level in handlers.values():
        logger.removeHandler(capture)
        logger.setLevel(level)
    quiet.install()


def test_there_are_the_four_known_notices_each_with_its_reason():
    assert [(n.channel, n.source) for n in quiet.NOTICES] == [
        ("log", "transformers.models.t5.tokenization_t5"), ("warning", "FutureWarning"), ("log", "adapters.models.t5.modeling_t5"),
        ("warning", "SyntaxWarning")]
    assert all(n.why and n.message == n.message.strip() for n in quiet.NOTICES)


@pytest.mark.parametrize("notice", WARNING_NOTICES, ids=lambda n: n.message[:30])
def test_a_warning_filter_hides_that_message_and_nothing_else(notice):
    import builtins

    category = getattr(builtins, notice.source)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet.install()
        quiet.install()  # twice: still one filter
        assert sum(f[0] == "ignore" and getattr(f[1], "pattern", None) == quiet.pattern(notice) for f in warnings.filters) == 1
        warnings.warn(notice.message, category)
        assert seen == []
        for other in (notice.message + " (and more)", notice.message[:-1], "an unrelated warning"):
            warnings.warn(other, category)
        warnings.warn(notice.message, DeprecationWarning)  # the same words in another category
        assert [(str(w.message), w.category) for w in seen] == [
            (notice.message + " (and more)", category), (notice.message[:-1], category),
            ("an unrelated warning", category), (notice.message, DeprecationWarning)]
        quiet.uninstall()
        warnings.warn(notice.message, category)
        assert str(seen[-1].message) == notice.message


@pytest.mark.parametrize("notice", LOG_NOTICES, ids=lambda n: n.source)
def test_a_log_filter_hides_that_message_of_that_logger_and_nothing_else(notice, capture_logs):
    quiet.install()
    logger = logging.getLogger(notice.source)
    logger.warning(notice.message)
    logger.warning(notice.message + "!")
    logger.warning("something else went wrong")
    logging.getLogger("transformers").warning(notice.message)  # another logger says the same words
    assert capture_logs[notice.source].messages == [notice.message + "!", "something else went wrong"]
    assert notice.message in capture_logs["transformers"].messages
    quiet.uninstall()
    logger.warning(notice.message)
    assert capture_logs[notice.source].messages[-1] == notice.message


def _once_again():
    """transformers says a `warning_once` message once per process: let it speak again."""
    from transformers.utils import logging as tf_logging

    tf_logging.warning_once.cache_clear()


def test_the_libraries_say_exactly_these_words_and_the_filters_hide_them(tiny_model_dir, capture_logs):
    """Each notice from its real source: shown without the filters, word for word, hidden with them."""
    from transformers import T5Tokenizer

    from ptuning.methods import build_method
    from ptuning.model import load_model

    legacy, past_key_value, tuple_cache = quiet.NOTICES[:3]

    def sources():
        """Run the three sources; (log records by logger, warnings) they produced."""
        for capture in capture_logs.values():
            capture.messages.clear()
        _once_again()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            model, tokenizer = load_model(str(tiny_model_dir))  # these install the filters themselves ...
            model = build_method("adapter", "adapterhub", {"bottleneck": 2}).apply(model)
            ids = tokenizer(["a review"], return_tensors="pt")
            quiet.install() if quiet_on else quiet.uninstall()  # ... so take them away again for the "without" case
            T5Tokenizer(vocab_file=str(tiny_model_dir / "spiece.model"), extra_ids=0)  # legacy left unset
            # AdapterHub's T5 stack: T5Block called with the old argument name; a decoder without a cache object
            model(**ids, labels=ids["input_ids"][:, :2])
        return {name: list(c.messages) for name, c in capture_logs.items()}, [str(w.message) for w in seen]

    quiet_on = False
    quiet.uninstall()
    logs, warned = sources()
    assert legacy.message in logs[legacy.source]
    assert tuple_cache.message in logs[tuple_cache.source]
    assert past_key_value.message in warned
    quiet_on = True
    logs, warned = sources()
    assert legacy.message not in logs[legacy.source] and tuple_cache.message not in logs[tuple_cache.source]
    assert past_key_value.message not in warned


def test_opendelta_says_exactly_these_words_when_its_file_is_compiled_and_the_filter_hides_them():
    """OpenDelta's docstring, compiled as Python does without cached bytecode. Before Python 3.12 the same words come
    as a DeprecationWarning, which Python hides by default, so the filter is for SyntaxWarning alone."""
    import importlib.util
    import sys
    from pathlib import Path

    notice = quiet.NOTICES[3]
    source = Path(importlib.util.find_spec("opendelta").submodule_search_locations[0]) / "delta_models/layers/hypercomplex_linear.py"
    category = SyntaxWarning if sys.version_info >= (3, 12) else DeprecationWarning

    def compiled() -> list[tuple[str, type]]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            quiet.install() if quiet_on else quiet.uninstall()
            compile(source.read_text(encoding="utf-8"), str(source), "exec")
        return [(str(w.message), w.category) for w in seen]

    quiet_on = False
    assert compiled() == [(notice.message, category)]
    quiet_on = True
    assert compiled() == ([] if category is SyntaxWarning else [(notice.message, DeprecationWarning)])
    quiet.install()


def test_a_smoke_run_prints_none_of_the_notices(tmp_path):
    """The whole output of `ptuning smoke` (fresh tiny assets: the tokenizer is converted; an AdapterHub row:
    its T5 stack), as a user sees it: none of the three notices, no warning at all."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PTUNING_CACHE": str(tmp_path / "cache"), "COLUMNS": "100"}
    out = subprocess.run([sys.executable, "-m", "ptuning.cli", "--jobs-dir", str(JOBS), "smoke", "--workdir", str(tmp_path / "w"),
                          "--output-dir", str(tmp_path / "smoke"), "adapter_8_adapterhub"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "smoke: 1 of 1 jobs passed" in out.stdout
    for notice in quiet.NOTICES:
        assert notice.message[:40] not in text
    assert "Warning" not in text and "deprecated" not in text and out.stderr == ""


def test_an_unrelated_warning_still_shows_on_the_command_line(tmp_path):
    code = ("import warnings, ptuning.cli as c; from click.testing import CliRunner; "
            "c.main.add_command(c.click.Command('warn', callback=lambda: warnings.warn('something new', FutureWarning))); "
            "import sys; sys.exit(c.main(['warn'], standalone_mode=False))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert "FutureWarning: something new" in out.stderr
