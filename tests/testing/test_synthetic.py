"""The synthetic backbone and task: the language's rules, a seeded build, its cache key, an atomic build."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter

import pytest

from ptuning.testing import synthetic
from ptuning.testing.synthetic import ASPECTS, FILLER, LABEL_WORDS, NEGATIVE, POSITIVE, PREFIXES, WORDS, Recipe

#: a backbone built in a few seconds: the code paths of the real recipes, not their accuracy
MICRO = Recipe("micro", d_model=16, d_kv=4, d_ff=32, layers=1, heads=2, steps=6, batch_size=8, warmup=2, pool=300,
               n_train=20, n_test=10)


def test_a_review_has_one_aspect_and_a_majority_of_its_label_polarity():
    rng = random.Random(0)
    for i in range(500):
        label = i % 2
        words, aspect = synthetic.review(rng, label)
        assert 6 <= len(words) <= 24 and aspect in ASPECTS and words.count(aspect) in (1, 2)
        assert not [w for w in words if w in ASPECTS and w != aspect]
        good, bad = sum(w in POSITIVE for w in words), sum(w in NEGATIVE for w in words)
        same, other = (good, bad) if label == 1 else (bad, good)
        assert 1 <= same + other <= 5 and same > other
        assert set(words) <= set(POSITIVE + NEGATIVE + ASPECTS + FILLER)


def test_pretraining_mixes_the_prefixed_tasks_and_unprefixed_reviews_in_the_recipe_shares():
    rng = random.Random(0)
    examples = [synthetic.pretraining_example(rng, MICRO) for _ in range(10_000)]
    tasks = Counter(task for _, _, task in examples)
    assert abs(tasks["mood"] / 10_000 - 0.4) < 0.02 and abs(tasks["topic"] / 10_000 - 0.2) < 0.02
    assert abs(tasks["size"] / 10_000 - 0.2) < 0.02 and abs(tasks["none"] / 10_000 - 0.2) < 0.02
    for text, target, task in examples:
        first = text.split()[0]
        if task == "none":
            assert first not in PREFIXES and target in LABEL_WORDS + tuple(ASPECTS)
        else:
            assert first == task
    for text, target, task in examples[:200]:  # the answers follow from the review
        words = text.split()
        if task == "topic":
            assert target in words
        elif task == "size":
            assert target == ("short" if len(words) - 2 <= synthetic.SHORT_MAX else "long")  # prefix and "." not counted
        elif task == "mood":
            good, bad = sum(w in POSITIVE for w in words), sum(w in NEGATIVE for w in words)
            assert target == ("positive" if good > bad else "negative")
    unprefixed = [target for _, target, task in examples if task == "none"]
    assert abs(sum(t in LABEL_WORDS for t in unprefixed) / len(unprefixed) - MICRO.unprefixed_sentiment) < 0.05


def test_the_cache_key_follows_the_recipe_and_the_code_version(monkeypatch):
    assert MICRO.key() == Recipe(**dataclasses.asdict(MICRO)).key()
    assert MICRO.folder() == f"synthetic-micro-{MICRO.key()}" and len(MICRO.key()) == 12
    others = {dataclasses.replace(MICRO, steps=7).key(), dataclasses.replace(MICRO, seed=1).key(),
              dataclasses.replace(MICRO, unprefixed_sentiment=0.3).key(), dataclasses.replace(MICRO, d_model=32).key()}
    assert len(others) == 4 and MICRO.key() not in others
    key = MICRO.key()
    monkeypatch.setattr(synthetic, "VERSION", synthetic.VERSION + 1)
    assert MICRO.key() != key


def test_build_once_then_reuse_and_the_same_recipe_gives_the_same_files(tmp_path):
    lines: list[str] = []
    first = synthetic.build(MICRO, tmp_path / "a", echo=lines.append)
    assert first.built and first.directory == tmp_path / "a" / MICRO.folder()
    assert lines[0] == f"building the synthetic backbone 'micro' (once; cached in {first.directory})"
    assert [line.split(":")[0] for line in lines[1:-1]] == [f"pre-training step {s}/6" for s in (1, 2, 3, 4, 5, 6)]
    assert lines[-1].startswith("built in ") and "parameters; held-out accuracy after pre-training: mood " in lines[-1]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [MICRO.folder()]  # no temporary left
    info = json.loads((first.directory / "recipe.json").read_text())
    assert info["recipe"] == dataclasses.asdict(MICRO) | {"task_mix": list(MICRO.task_mix)} and info["key"] == MICRO.key()
    assert set(info["pretraining_accuracy"]) == {"mood", "topic", "size", "none"}

    again = synthetic.build(MICRO, tmp_path / "a", echo=lines.append)
    assert not again.built and again.directory == first.directory and again.info == info and len(lines) == 8

    other = synthetic.build(MICRO, tmp_path / "b", echo=lambda line: None)
    files = ("model/model.safetensors", "model/tokenizer.json", "model/config.json", "data/train.jsonl", "data/test.jsonl")
    for name in files:
        assert (first.directory / name).read_bytes() == (other.directory / name).read_bytes(), name

    (other.directory / "recipe.json").write_text("{damaged")  # a damaged copy is built again, whole
    (other.directory / "model" / "model.safetensors").unlink()
    rebuilt = synthetic.build(MICRO, tmp_path / "b", echo=lambda line: None)
    assert rebuilt.built and rebuilt.directory == other.directory
    assert all((first.directory / name).read_bytes() == (rebuilt.directory / name).read_bytes() for name in files)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [MICRO.folder()]


def test_the_target_task_is_imdb_shaped_unprefixed_and_one_token_a_word(tmp_path):
    from ptuning.data import load_splits, preprocess
    from ptuning.model import load_model

    assets = synthetic.build(MICRO, tmp_path, echo=lambda line: None)
    splits = load_splits(str(assets.data_dir))
    assert len(splits["train"]) == 20 and len(splits["test"]) == 10
    assert list(splits["train"]["label"]) == [0, 1] * 10
    model, tokenizer = load_model(str(assets.model_dir))
    assert model.config.d_model == 16 and len(tokenizer) <= model.config.vocab_size
    for text in list(splits["train"]["text"]) + list(splits["test"]["text"]):
        words = preprocess(text).split()
        assert words[0] not in PREFIXES and set(words) <= set(WORDS) | {"."} | {w + "." for w in WORDS}
        ids = tokenizer(preprocess(text))["input_ids"]
        assert len(ids) == len(preprocess(text).replace(".", " .").split()) + 1  # a token a word, "." and </s>
    assert [tokenizer(w)["input_ids"] for w in LABEL_WORDS] == [[tokenizer.convert_tokens_to_ids(w), 1] for w in LABEL_WORDS]


def test_an_interrupted_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def interrupted(directory, recipe):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthetic.build(MICRO, tmp_path, echo=lambda line: None)
    assert list(tmp_path.iterdir()) == []
