"""Tiny, offline stand-ins for t5-small and IMDb, used by `ptuning smoke` and by the tests.

They are written to disk and then loaded through the very code paths that load the hub's model
and dataset (`from_pretrained` on a directory, `datasets` on json files), so the smoke test
exercises the real pipeline without a network.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = "great wonderful superb moving brilliant charming delightful touching best loved".split()
NEGATIVE = "awful boring dull terrible worst wasted poor stupid bland annoying".split()
NEUTRAL = (
    "the movie film plot actor actress story scene director music script ending character "
    "was is and a of to it this that with for but as on an very really quite so too at"
).split()


def t5_config(**shape):
    """A T5Config with t5-small's architecture rules (relu FFN, dropout 0.1, tied embeddings) and this shape."""
    from transformers import T5Config

    return T5Config(
        dropout_rate=0.1,
        feed_forward_proj="relu",
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        **shape,
    )


def tiny_t5_config(vocab_size: int):
    """A 2+2-block T5 with the t5-small architecture's shape rules (relu FFN, tied embeddings)."""
    return t5_config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32,
    )


def t5_small_config():
    """The exact t5-small configuration (builds a random-weight model with 60,506,624 parameters)."""
    return t5_config(
        vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8,
        relative_attention_num_buckets=32,
    )


def small_config():
    """A small T5 (2+2 blocks, d_model 64) with t5-small's vocabulary size: a CPU bench in seconds."""
    return t5_config(
        vocab_size=32128, d_model=64, d_kv=16, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=32,
    )


def sized_config(size: str):
    """The configuration of `ptuning bench --size` and the GPU check: "t5-small" (exact shapes) or "small"."""
    return t5_small_config() if size == "t5-small" else small_config()


def review(rng: random.Random, label: int, length: int) -> str:
    """A fake review: neutral filler with sentiment words of one polarity, and `<br />` breaks."""
    pool = POSITIVE if label == 1 else NEGATIVE
    words = [rng.choice(pool) if rng.random() < 0.25 else rng.choice(NEUTRAL) for _ in range(length)]
    if length > 8:
        words.insert(length // 2, "<br /><br />")
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def write_dataset(directory: Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """IMDb-shaped json-lines files: train.jsonl, test.jsonl, unsupervised.jsonl with `text`, `label`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("test", n_test), ("unsupervised", 8)):
        with open(directory / f"{split}.jsonl", "w") as f:
            for i in range(n):
                label = -1 if split == "unsupervised" else i % 2
                text = review(rng, max(label, 0), rng.randint(5, 60))
                f.write(json.dumps({"text": text, "label": label}) + "\n")
    return directory


def train_tokenizer(directory: Path, corpus_dir: Path, vocab_size: int = 128, whole_words: tuple[str, ...] = ()):
    """Train a SentencePiece unigram model on the corpus and save it as a T5 fast tokenizer.

    `whole_words` are kept as single pieces (as t5-small's vocabulary has the verbalizer's words)."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    from ptuning import quiet

    quiet.install()  # the conversion below prints transformers' "legacy behaviour" notice
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    texts = []
    for path in sorted(Path(corpus_dir).glob("*.jsonl")):
        with open(path) as f:
            texts += [json.loads(line)["text"].lower().replace("<br />", " ") for line in f]
    texts += ["positive negative"] * 20  # the verbalizer's words
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "spiece"),
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
        num_threads=1,
        **({"user_defined_symbols": list(whole_words)} if whole_words else {}),
    )
    corpus.unlink()
    tokenizer = T5TokenizerFast(vocab_file=str(directory / "spiece.model"), extra_ids=0)
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_assets(directory: Path, seed: int = 0, n_train: int = 64, n_test: int = 32) -> tuple[Path, Path]:
    """Write a tiny IMDb-shaped dataset and a tiny T5 (+ tokenizer) under `directory`.

    Returns (model_dir, dataset_dir). Idempotent: existing assets are reused.
    """
    import torch
    from transformers import T5ForConditionalGeneration

    directory = Path(directory)
    data_dir, model_dir = directory / "imdb-tiny", directory / "t5-tiny"
    if not (data_dir / "test.jsonl").exists():
        write_dataset(data_dir, n_train=n_train, n_test=n_test, seed=seed)
    if not (model_dir / "config.json").exists():
        tokenizer = train_tokenizer(model_dir, data_dir)
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(tiny_t5_config(len(tokenizer)))
        model.save_pretrained(model_dir)
    return model_dir, data_dir


def imdb_length_review(rng: random.Random, label: int, tokens: int, word_tokens: dict[str, int]) -> str:
    """A fake review of exactly `tokens` tokens (without </s>) under a tokenizer whose per-word counts are
    `word_tokens` (SentencePiece splits at whitespace, so a text's count is the sum of its words' counts)."""
    pool = POSITIVE if label == 1 else NEGATIVE
    words: list[str] = []
    left = tokens
    while left > 0:
        choices = [w for w in (pool if rng.random() < 0.25 else NEUTRAL) if word_tokens[w] <= left]
        choices = choices or [w for w in NEUTRAL + pool if word_tokens[w] <= left]
        if not choices:
            break
        word = rng.choice(choices)
        words.append(word)
        left -= word_tokens[word]
        if len(words) % 60 == 0:
            words.append("<br /><br />")  # the exercise's preprocessing turns it into spaces: no tokens
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def build_t5_small_shaped(directory: Path, n_train: int = 4096, n_test: int = 4096, seed: int = 0, size: str = "t5-small",
                          max_length: int = 256, full_fraction: float = 0.48, min_length: int = 40) -> tuple[Path, Path]:
    """A random-weight model with t5-small's exact shapes (60,506,624 parameters, the same FLOPs) and a synthetic
    IMDb-length dataset, for timing whole runs without the hub (scripts/gpu-check.sh).

    The tokenizer is the tiny SentencePiece one (its vocabulary is smaller than the model's 32,128 rows, which
    `load_model` accepts; the unused rows cost the same compute). Reviews are built to token lengths like IMDb's
    under the exercise's truncation, the same as `ptuning bench`'s synthetic streams: `full_fraction` of them
    longer than `max_length` (truncated to it, </s> included), the rest uniform in [min_length, max_length - 1]
    tokens with </s> (mean about 200 at the defaults). `size="small"` builds `ptuning bench --size small`'s
    model instead (a CPU check in seconds). Writes `<directory>/random-<size>` and `<directory>/imdb-length`
    (train.jsonl, test.jsonl); returns (model_dir, data_dir). Idempotent for the same arguments.
    """
    import shutil

    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    directory = Path(directory)
    model_dir, data_dir = directory / f"random-{size}", directory / "imdb-length"
    stamp = json.dumps({"n_train": n_train, "n_test": n_test, "seed": seed, "size": size, "max_length": max_length,
                        "full_fraction": full_fraction, "min_length": min_length}, sort_keys=True)
    if (directory / "assets.json").exists() and (directory / "assets.json").read_text() == stamp:
        return model_dir, data_dir
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.rmtree(data_dir, ignore_errors=True)
    corpus = write_dataset(directory / "tokenizer-corpus", seed=seed)
    train_tokenizer(model_dir, corpus, whole_words=("negative", "positive"))  # targets: word + </s>, as with t5-small
    shutil.rmtree(corpus)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=True, legacy=True)  # as ptuning.model.load_model

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # a word's tokens after another word (the first word of a text may differ by one: no leading "▁")
    word_tokens = {w: count(f"the {w}") - count("the") for w in POSITIVE + NEGATIVE + NEUTRAL}
    rng = random.Random(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        with open(data_dir / f"{split}.jsonl", "w") as f:
            for i in range(n):
                if rng.random() < full_fraction:
                    tokens = rng.randint(max_length, 4 * max_length)  # truncated to max_length - 1 + </s>
                else:
                    tokens = rng.randint(min_length, max_length - 1) - 1  # + </s>
                f.write(json.dumps({"text": imdb_length_review(rng, i % 2, tokens, word_tokens), "label": i % 2}) + "\n")
    torch.manual_seed(seed)
    T5ForConditionalGeneration(sized_config(size)).save_pretrained(model_dir)
    (directory / "assets.json").write_text(stamp)
    return model_dir, data_dir
