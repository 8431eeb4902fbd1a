"""The three library backends (OpenDelta, AdapterHub, PEFT): counts on t5-small, freezing, one optimizer
step, save/load, generate, OpenDelta's in-place attention-mask growth, lazy imports and the one-line
error for a missing or broken library. CPU only, no network.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ptuning.errors import PtuningError
from ptuning.methods import INSTALL_HINTS, REGISTRY, build_method, count_parameters, method_class
from ptuning.methods.adapterhub_backend import AdapterHubBottleneck
from ptuning.methods.opendelta_backend import OpenDeltaSoftPrompt
from ptuning.methods.peft_backend import PeftLoRA
from ptuning.testing.tiny import t5_small_config, tiny_t5_config

T5_SMALL_TOTAL = 60_506_624

# (class, knobs, expected total of the applied t5-small, expected delta)
T5_SMALL_CASES = [
    (OpenDeltaSoftPrompt, {"tokens": 10}, 60_511_744, 5_120),
    (OpenDeltaSoftPrompt, {"tokens": 1}, 60_507_136, 512),
    (AdapterHubBottleneck, {"bottleneck": 8}, 60_611_168, 104_544),
    (AdapterHubBottleneck, {"bottleneck": 1}, 60_525_068, 18_444),
    (PeftLoRA, {"rank": 8}, 60_801_536, 294_912),
    (PeftLoRA, {"rank": 1}, 60_543_488, 36_864),
]
BACKENDS = [(OpenDeltaSoftPrompt, {"tokens": 3}), (AdapterHubBottleneck, {"bottleneck": 4}), (PeftLoRA, {"rank": 2})]
VOCAB = 128


def _case_id(case) -> str:
    return f"{case[0].implementation}-{next(iter(case[1].values()))}"


def _batch(method, vocab=VOCAB, seed=0, batch=3, length=7):
    """Random ids with right padding, the method's <pad> placeholders in front, labels like the verbalizer's."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    ids[1, length - 3 :] = 0
    mask[1, length - 3 :] = 0
    n = method.placeholder_tokens()
    ids = torch.cat([torch.zeros(batch, n, dtype=ids.dtype), ids], 1)
    mask = torch.cat([torch.ones(batch, n, dtype=mask.dtype), mask], 1)
    labels = torch.randint(3, vocab, (batch, 2), generator=g)
    labels[:, -1] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _perturb(method, model, seed=1):
    """Give the trainable parameters random non-trivial values (LoRA B starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in method.trainable_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# -- exact counts on the t5-small configuration ------------------------------------------------------


@pytest.fixture(scope="module")
def t5_small():
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(t5_small_config())
    assert count_parameters(model) == (T5_SMALL_TOTAL, T5_SMALL_TOTAL)
    return model


@pytest.mark.parametrize("case", T5_SMALL_CASES, ids=_case_id)
def test_t5_small_counts_freezing_and_one_adamw_step(t5_small, case):
    cls, knobs, total, delta = case
    config = t5_small.config
    method = cls(**knobs)
    assert method.formula(config).value == delta  # the analytic formula matches the measured delta

    base = copy.deepcopy(t5_small)
    base_ids = {id(p) for p in base.parameters()}
    model = method.apply(base)
    assert count_parameters(model) == (total, delta)

    # exactly the added parameters train
    trainable = method.trainable_parameters(model)
    added = [p for p in {id(p): p for p in model.parameters()}.values() if id(p) not in base_ids]
    assert {id(p) for _, p in trainable} == {id(p) for p in added}
    assert sum(p.numel() for _, p in trainable) == delta
    assert all(not p.requires_grad for p in model.parameters() if id(p) in base_ids)

    # one AdamW step changes the added parameters and leaves every other one bit-identical
    # (once per backend, at the larger knob: the 60M forward/backward is the slow part of this file)
    if case not in (T5_SMALL_CASES[0], T5_SMALL_CASES[2], T5_SMALL_CASES[4]):
        return
    before = {id(p): p.detach().clone() for p in model.parameters()}
    model.train()
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=1e-2)
    batch = _batch(method, vocab=config.vocab_size, length=5)
    model(**batch).loss.backward()
    optimizer.step()
    for p in model.parameters():
        if id(p) in base_ids:
            assert torch.equal(p, before[id(p)])
        else:
            assert not torch.equal(p, before[id(p)])


# -- tiny model: save/load, generate, OpenDelta's attention mask ---------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(0)
    return T5ForConditionalGeneration(tiny_t5_config(VOCAB)).eval()


@pytest.mark.parametrize("cls,knobs", BACKENDS, ids=lambda x: getattr(x, "implementation", ""))
def test_save_then_load_into_fresh_model_gives_same_logits(tiny, tmp_path, cls, knobs):
    method = cls(**knobs)
    model = method.apply(copy.deepcopy(tiny)).eval()
    _perturb(method, model)
    batch = _batch(method)
    with torch.no_grad():
        expected = model(**{k: v.clone() for k, v in batch.items()}).logits
    path = method.save(model, tmp_path / method.artifact)
    assert path.exists()

    torch.manual_seed(123)  # the fresh model's added parameters start different
    fresh_method = cls(**knobs)
    fresh = fresh_method.apply(copy.deepcopy(tiny)).eval()
    with torch.no_grad():
        before_load = fresh(**{k: v.clone() for k, v in batch.items()}).logits
    assert not torch.allclose(before_load, expected)
    fresh_method.load(fresh, path)
    with torch.no_grad():
        got = fresh(**{k: v.clone() for k, v in batch.items()}).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # loading keeps the freezing: still exactly the added parameters train
    assert count_parameters(fresh)[1] == method.formula(tiny.config).value


def test_opendelta_saves_only_its_delta_state_dict(tiny, tmp_path):
    method = OpenDeltaSoftPrompt(tokens=3)
    model = method.apply(copy.deepcopy(tiny))
    path = method.save(model, tmp_path / method.artifact)
    assert sorted(p.name for p in path.iterdir()) == ["prompts.safetensors", "ptuning_artifact.json"]
    state = load_file(path / "prompts.safetensors")
    assert list(state) == ["encoder.soft_prompt_layer.soft_embeds"]
    assert state["encoder.soft_prompt_layer.soft_embeds"].shape == (3, tiny.config.d_model)
    # OpenDelta's own freeze_module makes the model's state_dict the delta state dict: same thing
    assert list(model.state_dict()) == list(state)


@pytest.mark.parametrize("cls,knobs", BACKENDS, ids=lambda x: getattr(x, "implementation", ""))
def test_generate_max_length_5(tiny, cls, knobs):
    method = cls(**knobs)
    model = method.apply(copy.deepcopy(tiny)).eval()
    _perturb(method, model)
    batch = _batch(method)
    out = method.generation_model(model).generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].clone(), max_length=5, do_sample=False
    )
    assert out.shape[0] == 3 and 2 <= out.shape[1] <= 5


def test_peft_generation_model_runs_the_lora(tiny):
    method = PeftLoRA(rank=2)
    model = method.apply(copy.deepcopy(tiny)).eval()
    _perturb(method, model)
    batch = _batch(method)
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_length=5)
    kwargs.update(output_scores=True, return_dict_in_generate=True)
    with_lora = method.generation_model(model).generate(**kwargs).scores[0]
    with model.disable_adapter():
        without = method.generation_model(model).generate(**kwargs).scores[0]
    assert not torch.allclose(with_lora, without)


def test_opendelta_mask_growth_breaks_neither_training_nor_generation(tiny):
    n = 3
    method = OpenDeltaSoftPrompt(tokens=n)
    model = method.apply(copy.deepcopy(tiny)).eval()
    _perturb(method, model)
    batch = _batch(method)
    length = batch["input_ids"].shape[1]  # includes the n placeholders
    mask = batch["attention_mask"]
    original = mask.clone()

    # forward: the caller's mask grows by n leading ones, in place, once
    loss1 = model(**batch).loss
    assert mask.shape == (3, length + n) and batch["attention_mask"] is mask
    assert torch.equal(mask, torch.cat([torch.ones(3, n, dtype=mask.dtype), original], 1))
    # the same batch again (mask already grown): not grown again, same loss
    loss2 = model(**batch).loss
    assert mask.shape == (3, length + n)
    loss_fresh = model(**{**batch, "attention_mask": original.clone()}).loss
    assert torch.equal(loss1, loss2) and torch.equal(loss1, loss_fresh)

    # generate: grows once per call (not once per decoding step); a second call on the grown mask agrees
    kwargs = dict(max_length=5, output_scores=True, return_dict_in_generate=True, do_sample=False)
    gen_mask = original.clone()
    first = model.generate(input_ids=batch["input_ids"], attention_mask=gen_mask, **kwargs)
    assert gen_mask.shape == (3, length + n)
    second = model.generate(input_ids=batch["input_ids"], attention_mask=gen_mask, **kwargs)
    assert gen_mask.shape == (3, length + n)
    assert torch.equal(first.sequences, second.sequences)
    for a, b in zip(first.scores, second.scores):
        assert torch.equal(a, b)

    # training: a train-mode step after all that still gets gradients only on the soft prompt
    model.train()
    torch.manual_seed(0)
    loss = model(**_batch(method, seed=5)).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = {name for name, p in model.named_parameters() if p.grad is not None}
    assert grads == {"encoder.soft_prompt_layer.soft_embeds"}


def test_opendelta_prompt_starts_from_vocabulary_rows(tiny):
    model = OpenDeltaSoftPrompt(tokens=4).apply(copy.deepcopy(tiny))
    soft = model.get_encoder().soft_prompt_layer.soft_embeds
    assert torch.equal(soft.detach(), tiny.shared.weight[:4])


# -- knobs, registry, summaries -------------------------------------------------------------------------


def test_registry_and_knobs():
    assert method_class("soft_prompt", "opendelta") is OpenDeltaSoftPrompt
    assert method_class("adapter", "adapterhub") is AdapterHubBottleneck
    assert method_class("lora", "peft") is PeftLoRA
    for key, cls in [(("soft_prompt", "opendelta"), OpenDeltaSoftPrompt), (("lora", "peft"), PeftLoRA)]:
        assert REGISTRY[key].endswith(":" + cls.__name__)
    lora = build_method("lora", "peft", {"rank": 8})
    assert (lora.rank, lora.alpha, lora.dropout) == (8, 4.0, 0.1)
    assert lora.knob_summary() == "rank 8"
    assert build_method("lora", "peft", {"rank": 1, "alpha": 8}).knob_summary() == "rank 1, alpha 8"
    assert build_method("soft_prompt", "opendelta", {"tokens": 10}).knob_summary() == "10 tokens"
    assert build_method("soft_prompt", "opendelta", {"tokens": 1}).knob_summary() == "1 token"
    assert build_method("soft_prompt", "opendelta", {"tokens": 10}).placeholder_tokens() == 10
    assert build_method("adapter", "adapterhub", {"bottleneck": 8}).knob_summary() == "bottleneck 8"
    with pytest.raises(PtuningError, match="alpha"):
        PeftLoRA(rank=8, alpha=0)
    with pytest.raises(PtuningError, match="dropout"):
        PeftLoRA(rank=8, dropout=1.0)


def test_formula_text_adds_up():
    from ptuning.methods.formulas import evaluate

    config = t5_small_config()
    for cls, knobs, _, delta in T5_SMALL_CASES:
        formula = cls(**knobs).formula(config)
        assert formula.value == delta == evaluate(formula.text)


def test_peft_scaling_and_config():
    config = PeftLoRA(rank=1).lora_config()
    assert (config.r, config.lora_alpha, config.lora_dropout) == (1, 4.0, 0.1)
    assert config.lora_alpha / config.r == 4.0  # PEFT's scaling at r=1
    assert config.task_type == "SEQ_2_SEQ_LM"


# -- a missing or broken library: one clear line ---------------------------------------------------------

LIBRARIES = [
    (OpenDeltaSoftPrompt, {"tokens": 1}, "opendelta", "opendelta"),
    (AdapterHubBottleneck, {"bottleneck": 1}, "adapters", "adapterhub"),
    (PeftLoRA, {"rank": 1}, "peft", "peft"),
]


def _assert_one_clear_line(exc: PtuningError, package: str, hint_key: str, cls) -> None:
    message = str(exc)
    assert "\n" not in message
    assert f"'{package}'" in message
    assert INSTALL_HINTS[hint_key] in message
    assert message.startswith(f"{cls.name}/{cls.implementation} needs the package")


@pytest.mark.parametrize("cls,knobs,package,hint_key", LIBRARIES, ids=lambda x: x if isinstance(x, str) else "")
def test_missing_library_gives_one_clear_line(monkeypatch, tiny, cls, knobs, package, hint_key):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    monkeypatch.delitem(sys.modules, "ptuning.methods.opendelta_compat", raising=False)
    method = build_method(cls.name, cls.implementation, knobs)  # class, knobs, formula need no library
    assert method.formula(tiny.config).value > 0
    with pytest.raises(PtuningError) as info:
        method.apply(copy.deepcopy(tiny))
    _assert_one_clear_line(info.value, package, hint_key, cls)
    assert "ModuleNotFoundError" in str(info.value) or "ImportError" in str(info.value)
    with pytest.raises(PtuningError):
        cls.check_library()


@pytest.mark.parametrize("cls,knobs,package,hint_key", LIBRARIES, ids=lambda x: x if isinstance(x, str) else "")
def test_broken_library_gives_one_clear_line(monkeypatch, tmp_path, tiny, cls, knobs, package, hint_key):
    # a package that is found but fails while importing (e.g. incompatible with the installed transformers)
    broken = tmp_path / package
    broken.mkdir()
    (broken / "__init__.py").write_text("raise AttributeError('module transformers has no attribute X\\nmore')\n")
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "ptuning.methods.opendelta_compat", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PtuningError) as info:
        cls(**knobs).apply(copy.deepcopy(tiny))
    _assert_one_clear_line(info.value, package, hint_key, cls)
    assert "AttributeError: module transformers has no attribute X" in str(info.value)


def test_backend_modules_do_not_import_their_library_at_module_level():
    """Only inside functions: the classes and knobs import without the library (checked on the source)."""
    import ast

    libraries = {"opendelta", "adapters", "peft", "ptuning.methods.opendelta_compat"}
    root = Path(__file__).resolve().parents[2] / "ptuning" / "methods"
    for module in ("opendelta_backend", "adapterhub_backend", "peft_backend", "library", "__init__"):
        tree = ast.parse((root / f"{module}.py").read_text())
        top = []
        for node in tree.body:  # module-level statements only (not inside def/class bodies)
            if isinstance(node, ast.Import):
                top += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                top.append(node.module or "")
        assert not [name for name in top if name.split(".")[0] in libraries or name in libraries], module


def test_compat_module_makes_opendelta_import_where_turtle_is_missing(monkeypatch):
    """Re-import OpenDelta from scratch with `import turtle` failing (no tkinter), as on slim images."""
    stale = [m for m in sys.modules if m == "opendelta" or m.startswith("opendelta.")]
    stale += ["ptuning.methods.opendelta_compat", "DeltaCenter", "transformers.deepspeed"]
    for name in stale:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "turtle", None)  # `import turtle` raises ImportError
    OpenDeltaSoftPrompt.check_library()
    import opendelta
    import transformers.integrations.deepspeed

    assert hasattr(opendelta, "SoftPromptModel")
    assert getattr(sys.modules["turtle"], "__file__", None) is None  # the stub, not the real turtle.py
    assert sys.modules["DeltaCenter"].OssClient is None
    assert sys.modules["transformers.deepspeed"] is transformers.integrations.deepspeed


def test_compat_module_keeps_a_working_turtle(monkeypatch):
    pytest.importorskip("turtle")  # only where tkinter is present
    monkeypatch.delitem(sys.modules, "ptuning.methods.opendelta_compat", raising=False)
    import importlib

    importlib.import_module("ptuning.methods.opendelta_compat")
    assert getattr(sys.modules["turtle"], "__file__", None)  # the real module, untouched


def test_opendelta_prompt_stays_a_parameter_when_the_model_is_on_another_device(monkeypatch, tiny):
    """OpenDelta does `nn.Parameter(...).to(model_device)`, which for a model on a GPU returns a plain tensor
    (the prompt would never train). Simulated here without a GPU: OpenDelta believes the model is on 'meta'."""
    OpenDeltaSoftPrompt.check_library()
    import opendelta.delta_models.soft_prompt as soft_prompt

    monkeypatch.setattr(soft_prompt, "get_device", lambda module: torch.device("meta"))
    method = OpenDeltaSoftPrompt(tokens=2)
    model = method.apply(copy.deepcopy(tiny))
    soft = model.get_encoder().soft_prompt_layer.soft_embeds
    assert isinstance(soft, torch.nn.Parameter) and soft.requires_grad and soft.device.type == "meta"
    assert [n for n, _ in method.trainable_parameters(model)] == ["encoder.soft_prompt_layer.soft_embeds"]
    assert count_parameters(model)[1] == 2 * tiny.config.d_model


@pytest.mark.parametrize("cls,knobs", BACKENDS, ids=lambda x: getattr(x, "implementation", ""))
def test_bf16_autocast_train_step_and_generate(tiny, cls, knobs):
    """The runner's `precision: bf16` path, checked with CPU autocast (no GPU in the tests)."""
    method = cls(**knobs)
    model = method.apply(copy.deepcopy(tiny)).train()
    batch = _batch(method)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = model(**{k: v.clone() for k, v in batch.items()}).loss
    loss.backward()
    grads = [p.grad for _, p in method.trainable_parameters(model)]
    assert grads and all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = method.generation_model(model).generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].clone(), max_length=5
        )
    assert out.shape[0] == 3
