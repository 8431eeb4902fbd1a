"""A synthetic text-to-text world for `ptuning demo`: a small T5 that ptuning pre-trains itself, on CPU, and a
target task that this backbone half-knows, so that every fine-tuning method has something to learn.

The exercise fine-tunes a *pre-trained* t5-small on IMDb reviews given without a task prefix; t5-small saw
sentiment data in pre-training, but with a prefix. This module rebuilds that situation offline, with a
made-up language:

* **Reviews** are strings of words from a small lexicon: positive and negative opinion words (the label is
  the polarity most of them have), one *aspect* noun (acting, music, ...) once or twice, and filler words.
* **Pre-training** (`pretrain`) is a mixture of text-to-text tasks on such reviews, each named by a one-word
  prefix: `mood <review>` → `positive`/`negative`, `topic <review>` → the aspect noun, `size <review>` →
  `short`/`long`. Reviews with *no* prefix also occur: most of them are followed by their aspect noun, the
  rest (`Recipe.unprefixed_sentiment`) by their sentiment word.
* **The target task** (`write_task`) is the IMDb shape: `train.jsonl` and `test.jsonl` with `text` and
  `label`, the reviews given without a prefix, the answer `positive` or `negative`. Zero-shot, the backbone
  answers with the aspect noun for most reviews (its first guess for text without a prefix), so its accuracy
  is low; the sentiment knowledge is in it, reachable by a prompt that stands in for `mood`, a small change of
  its attention (LoRA), an adapter, or full fine-tuning.

`build(recipe)` makes the backbone (weights and a SentencePiece tokenizer, saved with `save_pretrained`) and the
target data once, in a cache folder whose name holds a hash of the recipe and of `VERSION`; later calls reuse
it. The build is written to a temporary folder and renamed into place when complete, so an interrupted build
never leaves a half backbone behind. Everything is seeded: the same recipe gives the same files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

#: bump when the code below changes what a recipe builds (part of the cache key)
VERSION = 1

POSITIVE = "great wonderful superb moving brilliant charming delightful touching lovely gripping clever funny".split()
NEGATIVE = "awful boring dull terrible worst wasted poor stupid bland annoying clumsy tedious".split()
ASPECTS = "acting music plot ending script camera".split()
FILLER = "the a this film movie was is and it very really quite so but with of its too just rather".split()
#: the one-word task prefixes of pre-training; `mood` is the sentiment task
PREFIXES = {"mood": "sentiment", "topic": "aspect", "size": "length"}
LABEL_WORDS = ("negative", "positive")  # label 0, label 1: the jobs' verbalizer
SIZE_WORDS = ("short", "long")
#: a review of at most this many words (the final "." not counted) is `short`
SHORT_MAX = 14
WORDS = tuple(POSITIVE + NEGATIVE + ASPECTS + FILLER + list(PREFIXES) + list(LABEL_WORDS) + list(SIZE_WORDS) + ["."])


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what `build` makes (its hash names the cache folder)."""

    name: str  # "demo" or "quick": only names the folder and the messages
    d_model: int = 64
    d_kv: int = 16
    d_ff: int = 256
    layers: int = 2  # encoder blocks, and as many decoder blocks
    heads: int = 4
    steps: int = 1000  # pre-training steps
    batch_size: int = 64
    lr: float = 3e-3  # AdamW peak learning rate: linear warm-up, then cosine decay to a tenth
    warmup: int = 100
    pool: int = 30000  # pre-training examples generated (batches are drawn from them)
    #: the share of unprefixed pre-training reviews followed by their sentiment word (the rest: the aspect noun)
    unprefixed_sentiment: float = 0.4
    #: shares of the prefixed tasks in pre-training, in PREFIXES' order; the rest is unprefixed reviews
    task_mix: tuple[float, float, float] = (0.4, 0.2, 0.2)
    n_train: int = 2000  # target task reviews
    n_test: int = 500
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({"recipe": dataclasses.asdict(self), "version": VERSION, "words": WORDS}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def folder(self) -> str:
        return f"synthetic-{self.name}-{self.key()}"


@dataclass(frozen=True)
class Assets:
    """A built backbone (`model_dir`, for --model) and its target task (`data_dir`, for --dataset)."""

    directory: Path
    model_dir: Path
    data_dir: Path
    info: dict  # recipe.json: the recipe, the build time, the backbone's accuracy per pre-training task
    built: bool  # True when this call built it, False when it was reused


# ---------------------------------------------------------------------------------------------
# the language


def review(rng: random.Random, label: int) -> tuple[list[str], str]:
    """(words, aspect) of one review whose opinion words are mostly of polarity `label` (1 positive)."""
    length = rng.randint(6, 24)
    opinions = rng.randint(1, 5)
    minority = rng.randint(0, (opinions - 1) // 2)  # strictly fewer than half: the majority is the label
    same, other = (POSITIVE, NEGATIVE) if label == 1 else (NEGATIVE, POSITIVE)
    aspect = rng.choice(ASPECTS)
    words = [rng.choice(same) for _ in range(opinions - minority)] + [rng.choice(other) for _ in range(minority)]
    words += [aspect] * rng.randint(1, 2)
    words += [rng.choice(FILLER) for _ in range(max(0, length - len(words)))]
    rng.shuffle(words)
    return words, aspect


def pretraining_example(rng: random.Random, recipe: Recipe) -> tuple[str, str, str]:
    """(input, target, task) of one pre-training example; task is a prefix or "none"."""
    label = rng.randint(0, 1)
    words, aspect = review(rng, label)
    text = " ".join(words) + " ."
    answers = {"mood": LABEL_WORDS[label], "topic": aspect, "size": SIZE_WORDS[len(words) > SHORT_MAX]}
    draw, edge = rng.random(), 0.0
    for prefix, share in zip(PREFIXES, recipe.task_mix):
        edge += share
        if draw < edge:
            return f"{prefix} {text}", answers[prefix], prefix
    target = LABEL_WORDS[label] if rng.random() < recipe.unprefixed_sentiment else aspect
    return text, target, "none"


def target_review(rng: random.Random, label: int) -> str:
    """A review of the target task as a user would write it: capitalised, with IMDb's `<br />` breaks sometimes."""
    words, _ = review(rng, label)
    if len(words) > 12 and rng.random() < 0.3:
        words.insert(len(words) // 2, "<br /><br />")  # the data pipeline turns it into spaces, as for IMDb
    text = " ".join(words) + "."
    return text[0].upper() + text[1:]


def write_task(directory: Path, recipe: Recipe) -> Path:
    """The target task, IMDb-shaped: train.jsonl and test.jsonl (`text`, `label`), balanced, no prefix."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(recipe.seed + 1)  # not the pre-training stream: other reviews
    for split, n in (("train", recipe.n_train), ("test", recipe.n_test)):
        with open(directory / f"{split}.jsonl", "w") as f:
            for i in range(n):
                label = i % 2
                f.write(json.dumps({"text": target_review(rng, label), "label": label}) + "\n")
    return directory


# ---------------------------------------------------------------------------------------------
# the backbone


def config(recipe: Recipe, vocab_size: int):
    """The backbone's T5Config: t5-small's architecture rules (relu FFN, tied embeddings, dropout 0.1), small."""
    from ptuning.testing.tiny import t5_config

    return t5_config(vocab_size=vocab_size, d_model=recipe.d_model, d_kv=recipe.d_kv, d_ff=recipe.d_ff,
                      num_layers=recipe.layers, num_decoder_layers=recipe.layers, num_heads=recipe.heads,
                      relative_attention_num_buckets=8, relative_attention_max_distance=32)


def make_tokenizer(directory: Path, recipe: Recipe):
    """A SentencePiece tokenizer (saved as a T5 fast tokenizer) with every word of the lexicon as one piece."""
    from transformers import AutoTokenizer

    from ptuning.testing.tiny import train_tokenizer

    corpus = directory / "tokenizer-corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    rng = random.Random(recipe.seed)
    with open(corpus / "train.jsonl", "w") as f:
        for _ in range(200):
            f.write(json.dumps({"text": pretraining_example(rng, recipe)[0]}) + "\n")
    train_tokenizer(directory, corpus, vocab_size=len(WORDS) + 16, whole_words=WORDS)
    shutil.rmtree(corpus)
    tokenizer = AutoTokenizer.from_pretrained(directory, use_fast=True, legacy=True)  # as ptuning.model.load_model
    split = [w for w in WORDS if len(tokenizer(w, add_special_tokens=False)["input_ids"]) != 1]
    if split:  # pragma: no cover - a SentencePiece change would show here
        raise RuntimeError(f"the synthetic tokenizer splits {split[:5]} into several pieces")
    return tokenizer


@contextlib.contextmanager
def one_thread():
    """torch on one CPU thread, restored afterwards. The backbone is so small that a second thread mostly adds
    synchronisation (on a busy machine it made every step several times slower), and a fixed thread count keeps
    the float sums, hence the backbone and the accuracies, the same on machines with other core counts."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batch(rows: list[list[int]], fill: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def pretrain(model, tokenizer, recipe: Recipe, echo: Callable[[str], None]) -> dict[str, float]:
    """Pre-train `model` in place on the task mixture (AdamW, warm-up + cosine, seeded); returns the accuracy
    of greedy answers per task on held-out examples (the unprefixed task: how often it answers the sentiment)."""
    import torch

    from ptuning.data import preprocess

    rng = random.Random(recipe.seed)
    examples = [pretraining_example(rng, recipe) for _ in range(recipe.pool)]
    held_out = min(1000, recipe.pool // 10)
    inputs = tokenizer([preprocess(x) for x, _, _ in examples])["input_ids"]
    targets = tokenizer([y for _, y, _ in examples])["input_ids"]
    train_n = recipe.pool - held_out
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, recipe.warmup))
        return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / recipe.steps)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    started, running = time.perf_counter(), None
    every = max(1, recipe.steps // 5)
    for step in range(recipe.steps):
        index = torch.randint(0, train_n, (recipe.batch_size,), generator=generator).tolist()
        ids, mask = _batch([inputs[i] for i in index], tokenizer.pad_token_id)
        labels, _ = _batch([targets[i] for i in index], -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if (step + 1) % every == 0 or step + 1 == recipe.steps:
            echo(f"pre-training step {step + 1}/{recipe.steps}: loss {running:.3f} ({time.perf_counter() - started:.0f} s)")

    model.eval()
    right: dict[str, list[int]] = {}
    with torch.no_grad():
        for start in range(train_n, recipe.pool, 250):
            index = list(range(start, min(start + 250, recipe.pool)))
            ids, mask = _batch([inputs[i] for i in index], tokenizer.pad_token_id)
            out = model.generate(input_ids=ids, attention_mask=mask, max_length=5, do_sample=False, num_beams=1)
            for i, answer in zip(index, tokenizer.batch_decode(out, skip_special_tokens=True)):
                _, target, task = examples[i]
                # unprefixed: how often it answers a sentiment word at all (its first guess is the aspect)
                hit = answer in LABEL_WORDS if task == "none" else answer == target
                right.setdefault(task, []).append(int(hit))
    return {task: round(100.0 * sum(v) / len(v), 1) for task, v in sorted(right.items())}


def _info(directory: Path) -> dict | None:
    """The folder's recipe.json, or None when it is missing or unreadable (then the folder is built again)."""
    try:
        info = json.loads((directory / "recipe.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "pretraining_accuracy" in info else None


def _assets(directory: Path, info: dict, built: bool) -> Assets:
    return Assets(directory, directory / "model", directory / "data", info, built)


def build(recipe: Recipe, root: Path | None = None, echo: Callable[[str], None] = print) -> Assets:
    """The backbone and the target task of `recipe` under `root` (default: ptuning's cache), built once.

    Reused when `<root>/<recipe.folder()>/recipe.json` is there (it is written last). Otherwise built in a
    temporary folder beside it, on one thread, and renamed into place; an error or an interruption removes the
    temporary. Of two builds at once, the first to finish is kept.
    """
    import torch
    from transformers import T5ForConditionalGeneration

    from ptuning.data import cache_root
    from ptuning.hub import quiet_hub_logs

    quiet_hub_logs()  # transformers' notice about the tokenizer's legacy mode is not for the user
    root = Path(root) if root is not None else cache_root()
    final = root / recipe.folder()
    info = _info(final)
    if info is not None:
        return _assets(final, info, built=False)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{recipe.folder()}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        started = time.perf_counter()
        echo(f"building the synthetic backbone '{recipe.name}' (once; cached in {final})")
        tokenizer = make_tokenizer(tmp / "model", recipe)
        with torch.random.fork_rng(devices=[]), one_thread():  # the caller's random state is left as it was
            torch.manual_seed(recipe.seed)
            model = T5ForConditionalGeneration(config(recipe, len(tokenizer)))
            accuracy = pretrain(model, tokenizer, recipe, echo)
        model.save_pretrained(tmp / "model")
        write_task(tmp / "data", recipe)
        seconds = time.perf_counter() - started
        info = {"recipe": dataclasses.asdict(recipe), "version": VERSION, "key": recipe.key(),
                "parameters": sum(p.numel() for p in model.parameters()), "pretraining_accuracy": accuracy,
                "build_seconds": round(seconds, 1), "torch": torch.__version__}
        (tmp / "recipe.json").write_text(json.dumps(info, indent=2) + "\n")
        if final.exists() and _info(final) is None:  # a damaged copy (recipe.json gone): replaced
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            done = _info(final)
            if done is None:  # not a build that finished first in another process
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return _assets(final, done, built=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    echo(f"built in {seconds:.0f} s: {describe(info)}")
    return _assets(final, info, built=True)


def describe(info: dict) -> str:
    """One line on what the backbone learned in pre-training."""
    acc = info["pretraining_accuracy"]
    tasks = ", ".join(f"{prefix} {acc[prefix]:.0f}%" for prefix in PREFIXES if prefix in acc)
    none = f"; without a prefix it answers a sentiment word {acc['none']:.0f}% of the time" if "none" in acc else ""
    return f"{info['parameters']:,} parameters; held-out accuracy after pre-training: {tasks}{none}"
