"""The library notices ptuning keeps off the screen: each one known, harmless, and matched exactly.

The pinned libraries print a few notices on every run although nothing is wrong. Each is listed once in
`NOTICES`, with where it comes from and why it is harmless, and `install()` hides exactly that text:

* a Python warning: a `warnings` filter on its category whose pattern is the whole message, escaped;
* a log record: a `logging.Filter` on the library's own logger that drops a record whose text is the message.

Nothing else is hidden: no category, logger or library is silenced as a whole, so a new or reworded notice
(another library version) still shows. `install()` is idempotent and cheap; it is called where the libraries
are first used (loading a model, importing a library method, building the tiny assets) and by the command
line, so that a `warnings.catch_warnings` block around any of those (pytest runs every test in one) still
sees the filters. AdapterHub's "none are activated" notice while an adapter is being activated is dropped
only around that call, in `ptuning.methods.adapterhub_backend`.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass

WARNING, LOG = "warning", "log"


@dataclass(frozen=True)
class Notice:
    """One library notice: how it arrives (a Python warning of `category`, or a record of `logger`), its exact
    text, and why hiding it loses nothing."""

    channel: str  # WARNING or LOG
    source: str  # the warning category's name (a builtin), or the logger's name
    message: str
    why: str


NOTICES: tuple[Notice, ...] = (
    Notice(
        LOG,
        "transformers.models.t5.tokenization_t5",
        "You are using the default legacy behaviour of the <class 'transformers.models.t5.tokenization_t5.T5Tokenizer'>."
        " This is expected, and simply means that the `legacy` (previous) behavior will be used so nothing changes for you."
        " If you want to use the new behaviour, set `legacy=False`. This should only be set if you understand what it means,"
        " and thoroughly read the reason why this was added as explained in https://github.com/huggingface/transformers/pull/24565",
        "transformers 4.57 converting a SentencePiece model (the tiny tokenizer of the smoke test and the tests) keeps "
        "the legacy tokenization, which is what ptuning asks for everywhere (legacy=True, as t5-small was trained)",
    ),
    Notice(
        WARNING,
        "FutureWarning",
        "`past_key_value` is deprecated and will be removed in version 4.58 for `T5Block.forward`. Use `past_key_values` instead.",
        "AdapterHub 1.3.0's T5 stack calls T5Block with the old argument name; transformers 4.57 passes it on under the "
        "new one, so the adapter rows compute the same thing",
    ),
    Notice(
        LOG,
        "adapters.models.t5.modeling_t5",
        "Passing a tuple of `past_key_values` is deprecated and will be removed in Transformers v4.48.0. You should pass "
        "an instance of `EncoderDecoderCache` instead, e.g. `past_key_values=EncoderDecoderCache.from_legacy_cache(past_key_values)`.",
        "AdapterHub 1.3.0's T5 stack says this when it is called without a cache object, then makes the "
        "EncoderDecoderCache itself; greedy decoding is unchanged",
    ),
    Notice(
        WARNING,
        "SyntaxWarning",
        "invalid escape sequence '\\o'",
        "OpenDelta 0.3.2's delta_models/layers/hypercomplex_linear.py has a docstring with '\\o' that is not a raw "
        "string; Python 3.12 and later say so whenever they compile that file, which is on every import where its "
        "bytecode is not cached (packages installed with pip --no-compile, as on a GPU machine set up with "
        "scripts/gpu-prep.sh). A docstring computes nothing",
    ),
)


class _DropExactly(logging.Filter):
    """Drops the records of one logger whose text is exactly one of `messages`."""

    def __init__(self, messages: frozenset[str]) -> None:
        super().__init__()
        self.messages = messages

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.messages


def _log_filters() -> dict[str, _DropExactly]:
    by_logger: dict[str, set[str]] = {}
    for notice in NOTICES:
        if notice.channel == LOG:
            by_logger.setdefault(notice.source, set()).add(notice.message)
    return {name: _DropExactly(frozenset(messages)) for name, messages in by_logger.items()}


#: one filter object per logger, so that adding it again is a no-op (logging keeps a filter once)
_LOG_FILTERS = _log_filters()


def pattern(notice: Notice) -> str:
    """The `warnings` filter pattern of a warning notice: its whole text and nothing more."""
    return re.escape(notice.message) + r"\Z"


def install() -> None:
    """Hide the notices of `NOTICES` (and only them). Safe to call any number of times."""
    import builtins

    for notice in NOTICES:
        if notice.channel == WARNING:
            # re-adding an identical filter moves it to the front instead of adding a copy
            warnings.filterwarnings("ignore", message=pattern(notice), category=getattr(builtins, notice.source))
    for name, drop in _LOG_FILTERS.items():
        logging.getLogger(name).addFilter(drop)


def uninstall() -> None:
    """Show the notices again: remove what `install` added."""
    import builtins

    ours = {("ignore", pattern(n), getattr(builtins, n.source)) for n in NOTICES if n.channel == WARNING}
    warnings.filters[:] = [f for f in warnings.filters if (f[0], getattr(f[1], "pattern", None), f[2]) not in ours]
    for name, drop in _LOG_FILTERS.items():
        logging.getLogger(name).removeFilter(drop)
