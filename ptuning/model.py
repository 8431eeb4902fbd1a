"""Loading the T5 model and its tokenizer from the Hugging Face hub or a local directory."""

from __future__ import annotations

from pathlib import Path

from ptuning.errors import PtuningError, one_line
from ptuning.hub import hub_error, hub_reachable, looks_like_path, quiet_hub_logs, resolve

#: a T5 tokenizer directory has at least one of these (the fast tokenizer's file, or the SentencePiece model)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


def _source(ref: str) -> tuple[str, bool, dict]:
    """(where to load from, whether it is local, extra from_pretrained arguments)."""
    source = resolve(ref, "model", "--model")
    local = source != ref or looks_like_path(ref)
    quiet_hub_logs()
    return source, local, ({} if local or hub_reachable() else {"local_files_only": True})


def _load(ref: str, local: bool, what: str, load):
    """load(), with a failure as one line: a truncated or foreign local file raises the libraries' own types
    (safetensors' SafetensorError, the tokenizers library's bare Exception), not only OSError or ValueError."""
    try:
        return load()
    except Exception as exc:
        if local:
            raise PtuningError(f"{ref}: cannot load the {what} ({one_line(exc)}); pass --model with a complete "
                               "directory saved with save_pretrained") from None
        if isinstance(exc, (OSError, ValueError)):
            raise hub_error(ref, "model", "--model", exc) from None
        raise


def load_config(ref: str):
    """The config of a T5 checkpoint (hub id or local directory); any other architecture is refused."""
    from transformers import AutoConfig

    source, local, cache_only = _source(ref)
    if local and Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        # transformers would guess the architecture from the directory's name: a default T5 for ".../t5-small"
        raise PtuningError(f"{ref} is not a model directory (no config.json); pass --model with one")
    try:
        config = AutoConfig.from_pretrained(source, **cache_only)
    except Exception as exc:  # a damaged local config.json is not always an OSError or ValueError (a JSON list: TypeError)
        if local:
            raise PtuningError(f"{ref} is not a model directory (no usable config.json); pass --model with one") from None
        if isinstance(exc, (OSError, ValueError)):
            raise hub_error(ref, "model", "--model", exc) from None
        raise
    if config.model_type != "t5":
        raise PtuningError(f"{ref} is a {config.model_type!r} model; ptuning needs a T5 model (e.g. t5-small)")
    return config


def load_model(ref: str):
    """(model, tokenizer) for a T5 checkpoint; any other architecture is refused."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from ptuning import quiet

    quiet.install()  # the libraries' known, harmless notices (ptuning/quiet.py)
    config = load_config(ref)
    source, local, cache_only = _source(ref)
    if local and Path(source).is_dir() and not any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
        raise PtuningError(f"{ref}: no tokenizer in the model directory ({' or '.join(TOKENIZER_FILES)}); save it there too "
                           "(tokenizer.save_pretrained)")
    tokenizer = _load(ref, local, "tokenizer", lambda: AutoTokenizer.from_pretrained(source, use_fast=True, legacy=True, **cache_only))
    model = _load(ref, local, "model", lambda: T5ForConditionalGeneration.from_pretrained(source, **cache_only))
    if len(tokenizer) > config.vocab_size:
        raise PtuningError(f"{ref}: tokenizer has {len(tokenizer)} tokens but the model only {config.vocab_size}")
    return model, tokenizer
