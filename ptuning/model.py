"""Loading the T5 model and its tokenizer from the Hugging Face hub or a local directory."""

from __future__ import annotations

import json
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


#: the T5 sizes a configuration must give, and the most each may be (far above any T5; a typo or a foreign file is
#: refused before it allocates memory)
SIZES = {"vocab_size": 2**20, "d_model": 2**16, "d_kv": 2**16, "d_ff": 2**18, "num_layers": 1024, "num_decoder_layers": 1024,
         "num_heads": 1024, "relative_attention_num_buckets": 2**16, "relative_attention_max_distance": 2**20}
#: the token ids training and decoding rely on (a decoder without a start token cannot shift its labels)
TOKEN_IDS = ("decoder_start_token_id", "pad_token_id", "eos_token_id")
#: what a model may not ask for: its own Python code, which transformers would otherwise offer to run
REMOTE_CODE = "auto_map"


def _refuse_remote_code(ref: str, source: str, local: bool) -> None:
    """A local model whose config.json or tokenizer_config.json names code of its own (`auto_map`) is refused before
    transformers reads it: it would ask on the terminal whether to run that code."""
    if not (local and Path(source).is_dir()):
        return
    for name in ("config.json", "tokenizer_config.json"):
        path = Path(source) / name
        try:
            if path.is_file() and path.stat().st_size < 2**20 and REMOTE_CODE in json.loads(path.read_text(encoding="utf-8")):
                raise PtuningError(f"{ref}: {name} names code of its own ({REMOTE_CODE}); ptuning runs only transformers' "
                                   "own T5 and never a model's code: pass --model with a plain T5 model")
        except (OSError, ValueError, TypeError, RecursionError):  # unreadable: transformers' error says so below
            pass


def check_config(ref: str, config) -> None:
    """The fields of a T5 configuration that training and decoding rely on, checked before anything is built: a
    config.json of another model relabelled `t5` would otherwise fail deep inside training."""
    problems = []
    for key, most in SIZES.items():
        value = getattr(config, key, None)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
            problems.append(f"{key} is {value!r}, not a whole number from 1 to {most}")
    vocab = getattr(config, "vocab_size", 0)
    for key in TOKEN_IDS:
        value = getattr(config, key, None)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (vocab if isinstance(vocab, int) else 0):
            problems.append(f"{key} is {value!r}, not a token id" + (" (it is not set)" if value is None else ""))
    if getattr(config, REMOTE_CODE, None):
        problems.append(f"it names code of its own ({REMOTE_CODE}), which ptuning never runs")
    if problems:
        more = f" and {len(problems) - 2} more" if len(problems) > 2 else ""
        raise PtuningError(f"{ref}: not a usable T5 configuration: {'; '.join(problems[:2])}{more}; pass --model with a T5 "
                           "model (e.g. t5-small)")


def load_config(ref: str):
    """The config of a T5 checkpoint (hub id or local directory); any other architecture is refused, and so is one
    that lacks what training needs (`check_config`) or asks to run code of its own."""
    from transformers import AutoConfig

    source, local, cache_only = _source(ref)
    if local and Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        # transformers would guess the architecture from the directory's name: a default T5 for ".../t5-small"
        raise PtuningError(f"{ref} is not a model directory (no config.json); pass --model with one")
    _refuse_remote_code(ref, source, local)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, **cache_only)
    except Exception as exc:  # a damaged local config.json is not always an OSError or ValueError (a JSON list: TypeError)
        if "trust_remote_code" in str(exc):
            raise PtuningError(f"{ref} asks to run code of its own; ptuning runs only transformers' own T5 and never a "
                               "model's code: pass --model with a plain T5 model") from None
        if local:
            raise PtuningError(f"{ref} is not a model directory (no usable config.json); pass --model with one") from None
        if isinstance(exc, (OSError, ValueError)):
            raise hub_error(ref, "model", "--model", exc) from None
        raise
    if config.model_type != "t5":
        raise PtuningError(f"{ref} is a {config.model_type!r} model; ptuning needs a T5 model (e.g. t5-small)")
    check_config(ref, config)
    return config


def check_weights(ref: str, info: dict) -> None:
    """Every weight of the model read from the checkpoint, and nothing in the checkpoint left over: otherwise the
    missing ones would train from random values with no word (transformers only logs it)."""
    found = {"missing": info.get("missing_keys") or [], "unexpected": info.get("unexpected_keys") or [],
             "of another shape": [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or []]}
    parts = [f"{len(keys)} {kind} ({', '.join(sorted(keys)[:3])}{', ...' if len(keys) > 3 else ''})"
             for kind, keys in found.items() if keys]
    if parts:
        raise PtuningError(f"{ref}: the weights do not fit its T5 configuration: {'; '.join(parts)}; pass --model with a "
                           "complete T5 model (config.json and the weights saved together with save_pretrained)")


def load_model(ref: str):
    """(model, tokenizer) for a T5 checkpoint; any other architecture is refused, and so are weights that do not fit
    the configuration (missing or left over)."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from ptuning import quiet

    quiet.install()  # the libraries' known, harmless notices (ptuning/quiet.py)
    config = load_config(ref)
    source, local, cache_only = _source(ref)
    if local and Path(source).is_dir() and not any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
        raise PtuningError(f"{ref}: no tokenizer in the model directory ({' or '.join(TOKENIZER_FILES)}); save it there too "
                           "(tokenizer.save_pretrained)")
    tokenizer = _load(ref, local, "tokenizer", lambda: AutoTokenizer.from_pretrained(source, use_fast=True, legacy=True,
                                                                                      trust_remote_code=False, **cache_only))
    model, info = _load(ref, local, "model", lambda: T5ForConditionalGeneration.from_pretrained(
        source, output_loading_info=True, **cache_only))
    check_weights(ref, info)
    if len(tokenizer) > config.vocab_size:
        raise PtuningError(f"{ref}: tokenizer has {len(tokenizer)} tokens but the model only {config.vocab_size}")
    return model, tokenizer
