"""IMDb: loading, preprocessing, tokenization (cached), soft-prompt placeholders, and batching.

Exactly the exercise's (docs/protocol.md): lowercase, `<br />` → space, inputs truncated to `max_length` tokens including
`</s>` and any placeholders, targets are the verbalizer word + `</s>`, dynamic right padding,
label padding -100.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ptuning.atomic import atomic_save, torch_writer
from ptuning.errors import PtuningError
from ptuning.hub import hub_error, looks_like_path, resolve

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
IGNORE_INDEX = -100


def preprocess(text: str) -> str:
    """The exercise's cleaning: lowercase, HTML line breaks to spaces."""
    return text.lower().replace("<br />", " ")


# ---------------------------------------------------------------------------------------------
# loading


def _local_files(directory: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix in LOCAL_FORMATS and path.stem in ("train", "test"):
            files[path.stem] = str(path)
    return files


def load_splits(ref: str, config: str | None = None):
    """A `datasets.DatasetDict` with `train` and `test` splits (columns `text`, `label` in {0, 1})."""
    import datasets

    datasets.disable_progress_bars()
    source = resolve(ref, "dataset", "--dataset")
    try:
        if looks_like_path(ref):
            path = Path(source)
            if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
                data = datasets.load_from_disk(str(path))
            else:
                files = _local_files(path) if path.is_dir() else {}
                if not files:
                    raise PtuningError(
                        f"{ref}: no dataset found; expected a directory saved with save_to_disk or "
                        "train/test files (.jsonl, .json, .csv, .parquet) with columns text and label"
                    )
                formats = {LOCAL_FORMATS[Path(f).suffix] for f in files.values()}
                if len(formats) > 1:
                    raise PtuningError(f"{ref}: train and test files must have the same format")
                empty = [Path(f).name for f in files.values() if os.path.getsize(f) == 0]
                if empty:
                    raise PtuningError(f"{ref}: {' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty")
                previous = datasets.logging.get_verbosity()
                datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its "Failed to load JSON ..." line: ours says it
                try:
                    data = datasets.load_dataset(formats.pop(), data_files=files)
                finally:
                    datasets.logging.set_verbosity(previous)
        else:
            from ptuning.hub import hub_reachable, quiet_hub_logs

            quiet_hub_logs()
            if hub_reachable():
                data = datasets.load_dataset(source, config)
            else:  # straight to the local cache instead of a minute of retries
                datasets.config.HF_HUB_OFFLINE = True
                data = datasets.load_dataset(source, config)
    except PtuningError:
        raise
    except Exception as exc:  # a malformed local file: DatasetGenerationError, TypeError, ... besides OSError/ValueError
        if looks_like_path(ref):
            raise PtuningError(f"{ref}: cannot read the dataset: {_reason(exc)}") from None
        if isinstance(exc, (OSError, ValueError, ConnectionError)):
            raise hub_error(ref, "dataset", "--dataset", exc) from None
        raise
    return validate_splits(ref, data)


def _reason(exc: BaseException) -> str:
    """The first line of what went wrong; DatasetGenerationError's own text is generic, its cause says what."""
    import datasets

    if isinstance(exc, datasets.exceptions.DatasetGenerationError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def validate_splits(ref: str, data):
    import datasets

    if not isinstance(data, datasets.DatasetDict):
        raise PtuningError(f"{ref}: expected a dataset with train and test splits")
    missing = [s for s in ("train", "test") if s not in data]
    if missing:
        raise PtuningError(f"{ref}: missing split(s) {', '.join(missing)} (need train and test)")
    data = datasets.DatasetDict({s: data[s] for s in ("train", "test")})  # drops 'unsupervised'
    for split, ds in data.items():
        for column in ("text", "label"):
            if column not in ds.column_names:
                raise PtuningError(
                    f"{ref}: split {split!r} has no {column!r} column (columns: {', '.join(ds.column_names)})"
                )
        text = ds.features["text"]
        if getattr(text, "dtype", None) not in ("string", "large_string"):
            raise PtuningError(f"{ref}: split {split!r}: the 'text' column must hold strings, not {getattr(text, 'dtype', None) or text}")
        missing = ds.data.column("text").null_count
        if missing:
            raise PtuningError(f"{ref}: split {split!r} has {missing} review(s) with no text (null); remove or fill them")
        labels = set(ds.unique("label"))
        if not labels <= {0, 1}:
            bad = sorted(labels - {0, 1}, key=str)[:5]
            raise PtuningError(f"{ref}: split {split!r} has labels {bad}; only 0 (negative) and 1 (positive) are allowed")
    return data


# ---------------------------------------------------------------------------------------------
# tokenization (cached) and placeholders


def cache_root() -> Path:
    """ptuning's own cache: $PTUNING_CACHE, else $XDG_CACHE_HOME/ptuning, else ~/.cache/ptuning."""
    base = os.environ.get("PTUNING_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ptuning"
    )
    return Path(base)


def cache_dir() -> Path:
    return cache_root() / "tokenized"


def tokenizer_fingerprint(tokenizer) -> str:
    """What the tokenizer does to a text, not the truncation/padding left set by its last call.

    A fast tokenizer's backend keeps the truncation of the call before (`max_length` included) in its
    serialized state; with it in the fingerprint, the split tokenized after another one got a different
    cache key than in a fresh process, and was tokenized again on the next run. `max_length` is part of
    the cache key on its own.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        blob = json.dumps(state, sort_keys=True)
    else:
        blob = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Encoded:
    """Tokenized inputs (each ending in </s>, at most max_length long) and integer labels."""

    input_ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


_MEMO: dict[str, Encoded] = {}


def subset(ds, limit: int | None):
    """`limit` reviews drawn with a fixed seed (0), kept in dataset order; all of them if None.

    IMDb's splits are sorted by label, so the literal first N reviews would all be negative: a
    quick run with `--train-limit` would learn nothing. The sample does not depend on the job's
    seed, so every row of a quick table sees the same reviews.
    """
    if limit is None or limit >= len(ds):
        return ds
    generator = torch.Generator().manual_seed(0)
    indices = torch.randperm(len(ds), generator=generator)[:limit].sort().values.tolist()
    return ds.select(indices)


def encode_split(ds, tokenizer, max_length: int, limit: int | None = None, batch: int = 1000) -> Encoded:
    """Tokenize `subset(ds, limit)`, memoised in-process and cached on disk."""
    ds = subset(ds, limit)
    n = len(ds)
    fingerprint = getattr(ds, "_fingerprint", None)
    key = None
    if fingerprint:
        key = hashlib.sha256(f"{fingerprint}|{tokenizer_fingerprint(tokenizer)}|{max_length}|{n}".encode()).hexdigest()[:24]
        if key in _MEMO:
            return _MEMO[key]
        path = cache_dir() / f"{key}.pt"
        if path.exists():
            try:
                cached = torch.load(path, weights_only=True)
                encoded = Encoded(_unflatten(cached["ids"], cached["offsets"]), cached["labels"].tolist())
                _MEMO[key] = encoded
                return encoded
            except Exception:  # a corrupt cache entry is simply rebuilt
                pass
    ids: list[list[int]] = []
    labels: list[int] = []
    for start in range(0, n, batch):
        rows = ds[start : min(start + batch, n)]
        texts = [preprocess(t) for t in rows["text"]]
        ids += tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        labels += [int(x) for x in rows["label"]]
    encoded = Encoded(ids, labels)
    if key:
        _MEMO[key] = encoded
        _save_cache(cache_dir() / f"{key}.pt", encoded)
    return encoded


def _unflatten(flat: torch.Tensor, offsets: torch.Tensor) -> list[list[int]]:
    values, bounds = flat.tolist(), offsets.tolist()
    return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _save_cache(path: Path, encoded: Encoded) -> None:
    lengths = torch.tensor([0] + [len(x) for x in encoded.input_ids])
    payload = {
        "ids": torch.tensor([t for row in encoded.input_ids for t in row], dtype=torch.int32),
        "offsets": torch.cumsum(lengths, 0),
        "labels": torch.tensor(encoded.labels, dtype=torch.int8),
    }
    try:
        atomic_save(path, torch_writer(payload), writable="set PTUNING_CACHE to a writable directory")
    except PtuningError:
        pass  # the cache is an optimisation; a read-only or full home must not stop a run


def with_placeholders(ids: list[int], n: int, max_length: int, pad_id: int, eos_id: int) -> list[int]:
    """Prefix n `<pad>` placeholders, keeping the total within max_length and the final </s>.

    Identical to tokenizing with max_length - n: truncation keeps the first max_length - n - 1 text
    tokens and appends </s>.
    """
    budget = max_length - n
    if budget < 2:
        raise PtuningError(f"max_length {max_length} leaves no room for text after {n} soft-prompt placeholders")
    if len(ids) > budget:
        ids = ids[: budget - 1] + [eos_id]
    return [pad_id] * n + ids


def label_token_ids(tokenizer, words: list[str]) -> list[list[int]]:
    """The target ids of each verbalizer word: the tokenized word plus </s>."""
    return [tokenizer(w)["input_ids"] for w in words]


class ExamplesDataset(torch.utils.data.Dataset):
    """(input_ids, target_ids) pairs ready for the collator."""

    def __init__(self, encoded: Encoded, targets: list[list[int]], placeholders: int, max_length: int, pad_id: int, eos_id: int):
        self.inputs = [with_placeholders(x, placeholders, max_length, pad_id, eos_id) for x in encoded.input_ids] if placeholders else encoded.input_ids
        self.targets = [targets[y] for y in encoded.labels]
        self.labels = encoded.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.inputs[i], self.targets[i]


class Collator:
    """Dynamic right padding to the longest in the batch; attention 1 on every real (and placeholder) token."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        return self.pad(batch, max(len(x) for x, _ in batch), max(len(y) for _, y in batch))

    def pad(self, batch: list[tuple[list[int], list[int]]], in_len: int, out_len: int) -> dict[str, torch.Tensor]:
        """The batch right-padded to `in_len` input and `out_len` label columns (each at least its longest).

        Filled in numpy and handed to torch without a copy: about 10x faster than a tensor per row, which
        matters when a training step takes milliseconds and the next batch is made while it runs."""
        import numpy as np

        n = len(batch)
        input_ids = np.full((n, in_len), self.pad_id, dtype=np.int64)
        attention = np.zeros((n, in_len), dtype=np.int64)
        labels = np.full((n, out_len), IGNORE_INDEX, dtype=np.int64)
        for i, (x, y) in enumerate(batch):
            input_ids[i, : len(x)] = x
            attention[i, : len(x)] = 1
            labels[i, : len(y)] = y
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention),
                "labels": torch.from_numpy(labels)}


def build_datasets(job, tokenizer, placeholders: int, splits=None) -> tuple[ExamplesDataset, ExamplesDataset, list[list[int]]]:
    """Train and test datasets for a job: loaded, limited, tokenized (cached) and with placeholders."""
    splits = splits if splits is not None else load_splits(job.settings.dataset, job.settings.dataset_config)
    targets = label_token_ids(tokenizer, list(job.settings.labels))
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    train = encode_split(splits["train"], tokenizer, job.settings.max_length, job.settings.train_limit)
    test = encode_split(splits["test"], tokenizer, job.settings.max_length, job.settings.eval_limit)
    if len(train) == 0 or len(test) == 0:
        raise PtuningError(f"{job.settings.dataset}: the train and test splits must not be empty")
    return (
        ExamplesDataset(train, targets, placeholders, job.settings.max_length, pad, eos),
        ExamplesDataset(test, targets, placeholders, job.settings.max_length, pad, eos),
        targets,
    )
