"""Loading a model refuses, in one line, what would otherwise train quietly on random weights or fail deep inside
training: weights missing or left over, another model's config.json relabelled `t5`, a model that asks to run its own
code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from ptuning.cli import main
from ptuning.errors import PtuningError
from ptuning.model import load_config, load_model
from tests.run.test_reliability import JOB_A, write_jobs


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "t5"))


def tiny_bert(directory: Path) -> Path:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(directory)
    return directory


def run_with_model(tmp_path: Path, model: Path, tiny_data_dir: Path):
    jobs = write_jobs(tmp_path / "jobs", model, tiny_data_dir, {"a": JOB_A})
    return CliRunner().invoke(main, ["--jobs-dir", str(jobs), "run", "a", "--device", "cpu", "--output-dir", str(tmp_path / "out")],
                              catch_exceptions=False)


def test_a_weight_missing_from_the_checkpoint_is_an_error_naming_it(model_copy):
    weights = load_file(model_copy / "model.safetensors")
    del weights["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    save_file(weights, model_copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PtuningError) as info:
        load_model(str(model_copy))
    assert str(info.value) == (f"{model_copy}: the weights do not fit its T5 configuration: 1 missing "
                               "(encoder.block.1.layer.1.DenseReluDense.wo.weight); pass --model with a complete T5 model "
                               "(config.json and the weights saved together with save_pretrained)")


def test_another_models_weights_in_a_t5_folder_are_refused_in_one_line(model_copy, tiny_data_dir, tmp_path):
    shutil.copy(tiny_bert(tmp_path / "bert") / "model.safetensors", model_copy / "model.safetensors")
    result = run_with_model(tmp_path, model_copy, tiny_data_dir)
    assert result.exit_code == 1, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ptuning: error: [a] {model_copy}: the weights do not fit its T5 configuration: ")
    assert " missing (decoder.block.0." in err[0] and " unexpected (embeddings." in err[0]
    assert not (tmp_path / "out" / "a" / "seed0").exists()


def test_another_models_config_relabelled_t5_is_refused_before_training(tmp_path, tiny_data_dir):
    bert = tiny_bert(tmp_path / "bert")
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}))
    with pytest.raises(PtuningError) as info:
        load_config(str(bert))
    assert str(info.value) == (f"{bert}: not a usable T5 configuration: decoder_start_token_id is None, not a token id "
                               "(it is not set); pass --model with a T5 model (e.g. t5-small)")


@pytest.mark.parametrize("file, model_type", [("config.json", "t5"), ("config.json", "my-own-t5"), ("tokenizer_config.json", "t5")])
def test_a_model_that_names_code_of_its_own_is_refused_without_a_prompt(model_copy, file, model_type):
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    data = json.loads((model_copy / file).read_text())
    (model_copy / file).write_text(json.dumps({**data, "auto_map": {"AutoConfig": "my_code.MyConfig"}}))
    with pytest.raises(PtuningError) as info:
        load_model(str(model_copy))
    assert str(info.value) == (f"{model_copy}: {file} names code of its own (auto_map); ptuning runs only transformers' own "
                               "T5 and never a model's code: pass --model with a plain T5 model")


@pytest.mark.parametrize("key, value, problem", [
    ("d_model", 10**9, "d_model is 1000000000, not a whole number from 1 to 65536"),
    ("num_heads", 0, "num_heads is 0, not a whole number from 1 to 1024"),
    ("pad_token_id", 10**6, "pad_token_id is 1000000, not a token id"),
])
def test_sizes_and_token_ids_of_a_t5_config_are_bounded(model_copy, key, value, problem):
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(PtuningError, match=problem):
        load_config(str(model_copy))
