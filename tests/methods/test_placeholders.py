"""The soft prompts' `placeholders` knob: how many <pad> placeholders the input starts with (default: the prompt's
length). Row 4, OpenDelta's 1-token prompt, gets the 10 the course's notebook fed it; every other row keeps its own."""

from __future__ import annotations

import pytest

from ptuning import protocol
from ptuning.errors import PtuningError
from ptuning.methods import build_method, method_class
from ptuning.methods.opendelta_backend import OpenDeltaSoftPrompt
from ptuning.methods.soft_prompt import HandSoftPrompt
from ptuning.settings import load_all_jobs, load_job, parse_job
from tests.conftest import JOBS


def test_the_default_is_the_prompts_length_and_a_job_file_may_say_otherwise():
    jobs = {job.name: job for job in load_all_jobs(JOBS)}
    placeholders = {name: build_method(j.method, j.implementation, j.knobs).placeholder_tokens() for name, j in jobs.items()}
    assert placeholders == {"zero_shot": 0, "full_ft": 0, "soft_prompt_10": 10, "soft_prompt_10_opendelta": 10,
                            "soft_prompt_1_opendelta": 10, "adapter_8": 0, "adapter_8_adapterhub": 0, "adapter_1_adapterhub": 0,
                            "lora_8": 0, "lora_8_peft": 0, "lora_1_peft": 0}
    # a knob like the others: part of each run's configuration, so a result says what its input was
    assert jobs["soft_prompt_1_opendelta"].config()["method"] == {"name": "soft_prompt", "implementation": "opendelta",
                                                                  "tokens": 1, "placeholders": 10}
    assert jobs["soft_prompt_10"].config()["method"]["placeholders"] == 10
    assert OpenDeltaSoftPrompt(tokens=3).placeholder_tokens() == 3 and HandSoftPrompt(tokens=3).placeholders == 3
    assert OpenDeltaSoftPrompt(tokens=3, placeholders=0).placeholder_tokens() == 0  # OpenDelta's vectors before the text alone
    # the parameter count is the prompt's alone
    assert OpenDeltaSoftPrompt(tokens=1, placeholders=10).formula(load_config()).value == 512


def load_config():
    from ptuning.testing.tiny import t5_small_config

    return t5_small_config()


def test_the_1_token_row_sees_10_placeholders_then_its_text(tiny_model, tiny_data_dir):
    _, tokenizer = tiny_model
    job = load_job("soft_prompt_1_opendelta", JOBS).override(dataset=str(tiny_data_dir), train_limit=8, eval_limit=4, max_length=24)
    method = build_method(job.method, job.implementation, job.knobs)
    from ptuning.run.runner import splits_for

    train, evals = protocol.build_datasets(job, tokenizer, method.placeholder_tokens(), splits_for(job, {}))
    for dataset in (train, evals["test"]):
        for ids, _ in (dataset[i] for i in range(len(dataset))):
            assert ids[:10] == [tokenizer.pad_token_id] * 10 and ids[10] != tokenizer.pad_token_id and len(ids) <= 24


@pytest.mark.parametrize(
    "block, message",
    [
        ("{name: soft_prompt, implementation: hand, tokens: 10, placeholders: 3}",
         "knob 'placeholders' (3) must be at least 'tokens' (10): the prompt's vectors replace placeholders, never text"),
        ("{name: soft_prompt, implementation: opendelta, tokens: 1, placeholders: -1}", "'method.placeholders' must be at least 0"),
        ("{name: soft_prompt, implementation: opendelta, tokens: 1, placeholders: ten}", "'method.placeholders' must be an integer"),
        ("{name: lora, implementation: hand, rank: 8, placeholders: 10}", "unknown key 'method.placeholders' for lora/hand"),
    ],
)
def test_bad_placeholders_are_one_line_naming_the_file(block, message):
    import yaml

    from ptuning.settings import load_defaults

    data = yaml.safe_load(f"title: t\nrow: 4\nmethod: {block}\nlr: 0.1\n")
    with pytest.raises(PtuningError) as info:
        parse_job("x", data, load_defaults(JOBS), "jobs/x.yaml")
    assert str(info.value).startswith("jobs/x.yaml: ") and message in str(info.value)


def test_the_command_line_sets_it_too():
    job = load_job("soft_prompt_10_opendelta", JOBS)
    assert job.override({"method.placeholders": 0}).knobs == {"tokens": 10, "placeholders": 0}
    with pytest.raises(PtuningError, match="at least 'tokens'"):
        load_job("soft_prompt_10", JOBS).override({"method.placeholders": 2})
    assert method_class("soft_prompt", "hand").knobs["placeholders"].default.knob == "tokens"
