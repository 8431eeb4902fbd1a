"""Data pipeline: preprocessing, loading from local paths, tokenization, placeholders, collation."""

from __future__ import annotations

import json

import pytest
import torch

from ptuning import data
from ptuning.errors import PtuningError


def test_preprocess_lowercases_and_replaces_html_breaks():
    assert data.preprocess("Great<br />Movie<br /><br />END") == "great movie  end"


def test_local_jsonl_dataset_drops_unsupervised(tiny_data_dir):
    splits = data.load_splits(str(tiny_data_dir))
    assert list(splits) == ["train", "test"]
    assert len(splits["train"]) == 64 and len(splits["test"]) == 32
    assert set(splits["train"].unique("label")) == {0, 1}


def test_saved_dataset_directory_loads(tmp_path, tiny_data_dir):
    splits = data.load_splits(str(tiny_data_dir))
    splits.save_to_disk(str(tmp_path / "saved"))
    again = data.load_splits(str(tmp_path / "saved"))
    assert again["test"]["text"] == splits["test"]["text"]


def test_csv_dataset_loads(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\nGood film,1\nBad film,0\n")
    (tmp_path / "test.csv").write_text("text,label\nOk,1\n")
    assert len(data.load_splits(str(tmp_path))["train"]) == 2


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"review": "x", "label": 0}], "has no 'text' column"),
        ([{"text": "x", "sentiment": 0}], "has no 'label' column"),
        ([{"text": "x", "label": 2}], "only 0 (negative) and 1 (positive)"),
        ([{"text": "x", "label": 0}, {"text": None, "label": 1}], "split 'train' has 1 review(s) with no text (null)"),
        ([{"text": 5, "label": 0}, {"text": 6, "label": 1}], "split 'train': the 'text' column must hold strings, not int64"),
    ],
)
def test_bad_datasets_are_one_clear_error(tmp_path, rows, message):
    _jsonl(tmp_path / "train.jsonl", rows)
    _jsonl(tmp_path / "test.jsonl", rows)
    with pytest.raises(PtuningError) as info:
        data.load_splits(str(tmp_path))
    assert message in str(info.value)


def test_missing_split_and_missing_path(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"text": "x", "label": 0}])
    with pytest.raises(PtuningError, match="missing split"):
        data.load_splits(str(tmp_path))
    with pytest.raises(PtuningError, match="does not exist"):
        data.load_splits(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PtuningError, match="no dataset found"):
        data.load_splits(str(tmp_path / "empty"))


GOOD_ROWS = [{"text": "good film", "label": 1}, {"text": "bad film", "label": 0}]


@pytest.mark.parametrize(
    "files, message",
    [
        ({"train.jsonl": '{"text": "x", "label": 1}\n{oops\n'}, "cannot read the dataset: JSON parse error"),
        ({"train.jsonl": b"\xff\xfe\x00binary"}, "cannot read the dataset: JSON parse error"),
        ({"train.jsonl": '{"text": "x", "label": "pos"}\n{"text": "y", "label": 0}\n'}, "cannot read the dataset: "),
        ({"train.json": "5"}, "cannot read the dataset: "),
        ({"train.csv": 'text,label\n"unterminated\n', "test.csv": "text,label\nok,1\n"}, "cannot read the dataset: Error tokenizing data"),
        ({"train.jsonl": "", "test.jsonl": ""}, ": test.jsonl and train.jsonl are empty"),
        ({"train.jsonl": ""}, ": train.jsonl is empty"),
    ],
    ids=["malformed jsonl", "binary jsonl", "mixed label types", "json scalar", "broken csv", "empty files", "empty train"],
)
def test_malformed_dataset_files_are_one_clear_error(tmp_path, capfd, files, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    suffix = next(iter(files)).rsplit(".", 1)[1]
    if f"test.{suffix}" not in files:
        test = tmp_path / f"test.{suffix}"
        if suffix == "json":
            test.write_text(json.dumps(GOOD_ROWS))
        else:
            _jsonl(test, GOOD_ROWS)
    with pytest.raises(PtuningError) as info:
        data.load_splits(str(tmp_path))
    assert str(info.value).startswith(str(tmp_path)) and message in str(info.value) and "\n" not in str(info.value)
    assert capfd.readouterr().err == ""  # not the libraries' own "Failed to load JSON ..." line as well


def test_unreachable_hub_dataset_is_one_clear_line():
    with pytest.raises(PtuningError) as info:
        data.load_splits("stanfordnlp/imdb", "plain_text")
    message = str(info.value)
    assert "cannot load dataset 'stanfordnlp/imdb'" in message and "--dataset" in message and "\n" not in message


def test_tokenization_truncates_to_max_length_with_eos(tiny_model, tiny_data_dir):
    _, tok = tiny_model
    splits = data.load_splits(str(tiny_data_dir))
    enc = data.encode_split(splits["train"], tok, max_length=16)
    assert all(len(x) <= 16 and x[-1] == tok.eos_token_id for x in enc.input_ids)
    assert any(len(x) == 16 for x in enc.input_ids)
    text = data.preprocess(splits["train"][0]["text"])
    assert enc.input_ids[0] == tok(text, truncation=True, max_length=16)["input_ids"]
    assert enc.labels == splits["train"]["label"]


def test_placeholders_equal_tokenizing_with_a_shorter_limit(tiny_model, tiny_data_dir):
    _, tok = tiny_model
    splits = data.load_splits(str(tiny_data_dir))
    enc = data.encode_split(splits["test"], tok, max_length=20)
    for ids, text in zip(enc.input_ids, splits["test"]["text"]):
        with_ph = data.with_placeholders(ids, 3, 20, tok.pad_token_id, tok.eos_token_id)
        assert len(with_ph) <= 20 and with_ph[:3] == [0, 0, 0]
        assert with_ph[3:] == tok(data.preprocess(text), truncation=True, max_length=17)["input_ids"]


def test_placeholders_leave_room_for_a_text_token_and_eos_or_fail_clearly():
    ids = [7, 8, 9, 1]
    assert data.with_placeholders(ids, 3, 5, 0, 1) == [0, 0, 0, 7, 1]  # budget 2: one text token and </s>
    with pytest.raises(PtuningError, match="max_length 5 leaves no room for text after 4 soft-prompt placeholders"):
        data.with_placeholders(ids, 4, 5, 0, 1)


def test_tokenized_data_is_cached_on_disk_and_reused(tiny_model, tiny_data_dir, cache_dir, monkeypatch):
    _, tok = tiny_model
    splits = data.load_splits(str(tiny_data_dir))
    data._MEMO.clear()
    before = set((cache_dir / "tokenized").glob("*.pt"))
    first = data.encode_split(splits["test"], tok, max_length=23)  # a length no other test uses: a new entry
    (entry,) = set((cache_dir / "tokenized").glob("*.pt")) - before
    data._MEMO.clear()

    def no_tokenizing(text):
        raise AssertionError("tokenized again instead of read from the disk cache")

    monkeypatch.setattr(data, "preprocess", no_tokenizing)
    again = data.encode_split(splits["test"], tok, max_length=23)
    assert again.input_ids == first.input_ids and again.labels == first.labels
    monkeypatch.undo()
    entry.write_bytes(b"not a torch file")  # a corrupt entry is rebuilt, not an error
    data._MEMO.clear()
    rebuilt = data.encode_split(splits["test"], tok, max_length=23)
    assert rebuilt.input_ids == first.input_ids and rebuilt.labels == first.labels


def test_tokenizer_fingerprint_ignores_the_truncation_left_by_the_last_call(tiny_model):
    """The backend tokenizer keeps the last call's truncation in its state: the cache key must not depend on it."""
    _, tok = tiny_model
    tok(["a review"])  # no truncation: the state of a fresh tokenizer
    fresh = data.tokenizer_fingerprint(tok)
    tok(["a review"], truncation=True, max_length=17)
    assert tok.backend_tokenizer.truncation is not None  # the state the fingerprint must look past
    assert data.tokenizer_fingerprint(tok) == fresh
    tok(["a review"], padding="max_length", max_length=9)
    assert data.tokenizer_fingerprint(tok) == fresh


def test_limit_is_a_fixed_sample_with_both_labels(tiny_data_dir):
    import datasets

    splits = data.load_splits(str(tiny_data_dir))
    a = data.subset(splits["train"], 10)
    b = data.subset(splits["train"], 10)
    assert len(a) == 10 and a["text"] == b["text"]
    assert data.subset(splits["train"], 10_000) is splits["train"]
    # sorted by label like IMDb (the tiny data alternates labels, so it cannot tell a sample from the first N)
    ds = datasets.Dataset.from_dict({"text": [f"review {i}" for i in range(40)], "label": [0] * 20 + [1] * 20})
    picked = [int(t.split()[1]) for t in data.subset(ds, 10)["text"]]
    assert set(data.subset(ds, 10)["label"]) == {0, 1}
    assert picked == sorted(picked) and len(set(picked)) == 10  # kept in dataset order, no repeats
    assert picked == sorted(torch.randperm(40, generator=torch.Generator().manual_seed(0))[:10].tolist())  # seed 0, documented


def test_verbalizer_targets_are_word_plus_eos(tiny_model):
    _, tok = tiny_model
    neg, pos = data.label_token_ids(tok, ["negative", "positive"])
    assert neg[-1] == pos[-1] == tok.eos_token_id
    assert tok.decode(neg, skip_special_tokens=True) == "negative"
    assert tok.decode(pos, skip_special_tokens=True) == "positive"


def test_collator_pads_right_with_minus_100_labels():
    batch = [([5, 6, 1], [7, 1]), ([5, 1], [8, 9, 1])]
    out = data.Collator(pad_id=0)(batch)
    assert out["input_ids"].tolist() == [[5, 6, 1], [5, 1, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["labels"].tolist() == [[7, 1, -100], [8, 9, 1]]
    assert all(t.dtype == torch.long for t in out.values())  # what embedding lookups and the loss take
    out["input_ids"][0, 0] = 3  # the batch owns its memory: writable, not a view of the examples
    assert batch[0][0] == [5, 6, 1]


def test_placeholders_get_attention_one():
    out = data.Collator(pad_id=0)([([0, 0, 5, 1], [7, 1])])
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1]]
