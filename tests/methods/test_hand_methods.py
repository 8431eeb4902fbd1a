"""Behaviour of the hand-written soft prompt, adapter and LoRA on a tiny in-memory T5 (CPU, no network)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from safetensors.torch import load_file

from ptuning.errors import PtuningError
from ptuning.methods import build_method, count_parameters
from ptuning.methods.adapter import HandAdapter, feed_forward_layers
from ptuning.methods.lora import HandLoRA, LoRALinear, attention_modules
from ptuning.methods.soft_prompt import HandSoftPrompt, PromptedEmbedding

VOCAB = 128
METHODS = {
    "soft_prompt": {"tokens": 3},
    "adapter": {"bottleneck": 4},
    "lora": {"rank": 4},
}
#: a substring every trainable parameter name of the method contains
MARKERS = {"soft_prompt": ".prompt", "adapter": ".adapter.", "lora": ".lora_"}


@pytest.fixture(scope="module")
def base():
    """A seeded tiny T5 (2+2 blocks, d=32) in eval mode; tests deep-copy it and never modify it."""
    from transformers import T5ForConditionalGeneration

    from ptuning.testing.tiny import tiny_t5_config

    torch.manual_seed(0)
    return T5ForConditionalGeneration(tiny_t5_config(VOCAB)).eval()


def batch(placeholders: int = 0, rows: int = 3, length: int = 9, seed: int = 1) -> dict:
    """Random ids with `placeholders` leading <pad> ids (attention 1), one right-padded row, labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    ids[1, -3:], mask[1, -3:] = 0, 0
    if placeholders:
        ids = torch.cat([torch.zeros(rows, placeholders, dtype=torch.long), ids], dim=1)
        mask = torch.cat([torch.ones(rows, placeholders, dtype=torch.long), mask], dim=1)
    labels = torch.cat([torch.randint(3, VOCAB, (rows, 2), generator=g), torch.ones(rows, 1, dtype=torch.long)], 1)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def applied(base, name, **knobs):
    method = build_method(name, "hand", knobs or METHODS[name])
    return method, method.apply(copy.deepcopy(base))


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


# -- registry, knobs, counts ---------------------------------------------------------------------


def test_registry_builds_each_hand_method():
    assert isinstance(build_method("soft_prompt", "hand", {"tokens": 10}), HandSoftPrompt)
    assert isinstance(build_method("adapter", "hand", {"bottleneck": 8}), HandAdapter)
    lora = build_method("lora", "hand", {"rank": 8})
    assert isinstance(lora, HandLoRA) and lora.alpha == 4.0 and lora.rank == 8
    assert build_method("soft_prompt", "hand", {"tokens": 10}).placeholder_tokens() == 10
    assert build_method("lora", "hand", {"rank": 8}).placeholder_tokens() == 0
    artifacts = [build_method(n, "hand", k).artifact for n, k in METHODS.items()]
    assert artifacts == ["prompts", "adapter", "lora"]


@pytest.mark.parametrize(
    "name, knobs",
    [
        ("lora", {}),  # rank is required
        ("lora", {"rank": 0}),
        ("lora", {"rank": 4, "alpha": 0}),
        ("lora", {"rank": 2.5}),
        ("lora", {"rank": "4"}),
        ("lora", {"rank": True}),
        ("adapter", {"bottleneck": 0}),
        ("adapter", {}),
        ("soft_prompt", {"tokens": -1}),
        ("soft_prompt", {}),
    ],
)
def test_bad_knobs_are_rejected(name, knobs):
    with pytest.raises(PtuningError):
        build_method(name, "hand", knobs)


def test_unknown_knob_is_rejected_when_built_directly():
    with pytest.raises(PtuningError, match="unknown knob"):
        HandLoRA(rank=4, dropout=0.1)


def test_integral_float_and_int_alpha_are_coerced():
    lora = HandLoRA(rank=4.0, alpha=8)
    assert lora.rank == 4 and isinstance(lora.rank, int) and lora.alpha == 8.0 and isinstance(lora.alpha, float)


@pytest.mark.parametrize("name", METHODS)
def test_tiny_counts_match_formula_and_only_method_parameters_train(base, name):
    method, model = applied(base, name)
    base_total, _ = count_parameters(base)
    total, trainable = count_parameters(model)
    assert total - base_total == trainable == method.formula(model.config).value
    names = [n for n, _ in method.trainable_parameters(model)]
    assert names and all(MARKERS[name] in n for n in names)
    assert all(not p.requires_grad for n, p in model.named_parameters() if MARKERS[name] not in n)


# -- training touches only the method's parameters -----------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_one_adamw_step_changes_only_method_parameters(base, name):
    method, model = applied(base, name)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = dict(method.trainable_parameters(model))
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    inputs = batch(method.placeholder_tokens())
    model(**inputs).loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    optimizer.step()
    after = model.state_dict()
    state_names = {k for k in after if any(k == n for n in trainable)}
    assert state_names == set(trainable)
    for k in after:
        if k in trainable:
            assert not torch.equal(before[k], after[k]), f"{k} did not change"
        else:
            assert torch.equal(before[k], after[k]), f"frozen {k} changed"
    # also against the untouched base model, tensor by tensor (LoRA moves q/v under `.base`, the soft
    # prompt the encoder's reference to the shared embedding under `embed_tokens.embedding`)
    base_state = base.state_dict()
    for k, v in after.items():
        if k not in trainable:
            assert torch.equal(v, base_state[k.replace(".base.", ".").replace("tokens.embedding.", "tokens.")])


# -- identity at init ----------------------------------------------------------------------------


def test_lora_leaves_logits_unchanged_at_init(base):
    _, model = applied(base, "lora")
    model.eval()
    inputs = batch()
    assert torch.equal(logits(model, inputs), logits(base, inputs))


def test_adapter_with_zero_up_projection_leaves_logits_unchanged(base):
    _, model = applied(base, "adapter")
    model.eval()
    inputs = batch()
    assert not torch.equal(logits(model, inputs), logits(base, inputs))  # default init: adapters act
    with torch.no_grad():
        for ff in feed_forward_layers(model):
            ff.adapter.up.weight.zero_()
            ff.adapter.up.bias.zero_()
    assert torch.equal(logits(model, inputs), logits(base, inputs))


def test_soft_prompt_replaces_exactly_the_first_n_encoder_embeddings(base):
    n = METHODS["soft_prompt"]["tokens"]
    _, model = applied(base, "soft_prompt")
    model.eval()
    embed = model.encoder.embed_tokens
    assert isinstance(embed, PromptedEmbedding)
    assert torch.equal(embed.prompt, base.shared.weight[:n])  # init: embedding rows of ids 0..n-1
    with torch.no_grad():
        embed.prompt.normal_()
    ids = batch(n)["input_ids"]
    with torch.no_grad():
        out = embed(ids)
        tokens = model.shared(ids)
    for row in out:
        assert torch.equal(row[:n], embed.prompt)
    assert torch.equal(out[:, n:], tokens[:, n:])
    # the decoder and the tied head still use the shared embedding, untouched
    assert model.decoder.embed_tokens is model.shared
    assert model.get_output_embeddings().weight is model.shared.weight
    assert embed.embedding is model.shared


def test_soft_prompt_equal_to_placeholder_embeddings_gives_base_logits(base):
    n = METHODS["soft_prompt"]["tokens"]
    _, model = applied(base, "soft_prompt")
    model.eval()
    inputs = batch(n)
    with torch.no_grad():
        model.encoder.embed_tokens.prompt.copy_(model.shared.weight[0].expand(n, -1))  # id 0 = <pad>
    assert torch.equal(logits(model, inputs), logits(base, inputs))
    with torch.no_grad():
        model.encoder.embed_tokens.prompt.add_(1.0)
    assert not torch.allclose(logits(model, inputs), logits(base, inputs))


def test_soft_prompt_rejects_inputs_shorter_than_the_prompt(base):
    _, model = applied(base, "soft_prompt")
    with pytest.raises(ValueError, match="placeholders"):
        model(input_ids=torch.zeros(1, 2, dtype=torch.long), labels=torch.ones(1, 1, dtype=torch.long))


# -- placement -----------------------------------------------------------------------------------


def test_adapter_sits_on_every_feed_forward_sublayer(base):
    from transformers.models.t5.modeling_t5 import T5LayerFF

    _, model = applied(base, "adapter")
    ffs = feed_forward_layers(model)
    assert len(ffs) == 4 and all(isinstance(ff, T5LayerFF) for ff in ffs)
    assert ffs[0] is model.encoder.block[0].layer[1] and ffs[-1] is model.decoder.block[1].layer[2]
    names = {n.rsplit(".adapter.", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"encoder.block.0.layer.1", "encoder.block.1.layer.1", "decoder.block.0.layer.2",
                     "decoder.block.1.layer.2"}


def test_adapter_hooks_follow_deep_copies(base):
    """A deep-copied adapted model runs its own adapters (params deep-copies models)."""
    _, model = applied(base, "adapter")
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for ff in feed_forward_layers(clone):
            ff.adapter.up.weight.zero_()
            ff.adapter.up.bias.zero_()
    inputs = batch()
    assert torch.equal(logits(clone, inputs), logits(base, inputs))
    assert not torch.equal(logits(model, inputs), logits(base, inputs))


def test_lora_wraps_q_and_v_of_all_attention_modules(base):
    _, model = applied(base, "lora")
    attns = attention_modules(model)
    assert len(attns) == 2 + 2 * 2  # encoder self, decoder self + cross
    for attn in attns:
        assert isinstance(attn.q, LoRALinear) and isinstance(attn.v, LoRALinear)
        assert not isinstance(attn.k, LoRALinear) and not isinstance(attn.o, LoRALinear)
        assert not attn.q.base.weight.requires_grad


@pytest.mark.parametrize("rank, alpha, scaling", [(8, 4.0, 0.5), (4, 4.0, 1.0), (1, 4.0, 4.0), (4, 2.0, 0.5)])
def test_lora_scaling_is_alpha_over_rank(rank, alpha, scaling):
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(16, 12, bias=False), rank, alpha)
    assert layer.scaling == scaling
    assert layer.lora_A.shape == (16, rank) and layer.lora_B.shape == (rank, 12)
    assert torch.count_nonzero(layer.lora_B) == 0
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 5, 16)
    expected = layer.base(x) + x @ layer.lora_A @ layer.lora_B * (alpha / rank)
    torch.testing.assert_close(layer(x), expected)


def test_lora_A_init_uses_fan_in_r():
    """Kaiming-uniform(a=√5) on A stored d_in×r: bound 1/√r (not PEFT's 1/√d_in), as the exercise had it."""
    torch.manual_seed(0)
    a = LoRALinear(torch.nn.Linear(512, 512, bias=False), 8, 4.0).lora_A
    bound = 1 / math.sqrt(8)
    assert a.abs().max() <= bound
    assert a.abs().max() > 0.95 * bound  # far above PEFT's 1/√512 ≈ 0.044


# -- generation and persistence ------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_greedy_generate_works(base, name):
    method, model = applied(base, name)
    model.eval()
    inputs = batch(method.placeholder_tokens())
    gen = method.generation_model(model)
    out = gen.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_length=5)
    assert out.shape[0] == 3 and 1 < out.shape[1] <= 5


def test_soft_prompt_is_used_by_generate(base):
    """generate goes through the prompted encoder embedding (changing the prompt changes the encoding)."""
    _, model = applied(base, "soft_prompt")
    model.eval()
    calls = []
    handle = model.encoder.embed_tokens.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    inputs = batch(3)
    model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_length=5)
    handle.remove()
    assert calls == [inputs["input_ids"].shape + (32,)]  # once, for the encoder only


@pytest.mark.parametrize("name", METHODS)
def test_save_then_load_into_fresh_model_gives_identical_logits(base, name, tmp_path):
    method, model = applied(base, name)
    model.train()
    inputs = batch(method.placeholder_tokens())
    optimizer = torch.optim.AdamW([p for _, p in method.trainable_parameters(model)], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(**inputs).loss.backward()
        optimizer.step()
    model.eval()
    path = method.save(model, tmp_path / method.artifact)
    assert sorted(p.name for p in path.iterdir()) == sorted([f"{method.artifact}.safetensors", "ptuning_artifact.json"])
    saved = load_file(path / f"{method.artifact}.safetensors")
    assert set(saved) == {n for n, _ in method.trainable_parameters(model)}

    fresh_method = build_method(name, "hand", METHODS[name])
    torch.manual_seed(123)  # a different random init of the added parameters
    fresh = fresh_method.apply(copy.deepcopy(base)).eval()
    assert not torch.equal(logits(fresh, inputs), logits(model, inputs))
    fresh_method.load(fresh, path)
    assert torch.equal(logits(fresh, inputs), logits(model, inputs))


@pytest.mark.parametrize("name", METHODS)
def test_applying_twice_is_refused(base, name):
    method, model = applied(base, name)
    with pytest.raises(ValueError, match="already applied"):
        method.apply(model)


@pytest.mark.parametrize("name", METHODS)
def test_bf16_autocast_train_step_and_generate(base, name):
    """The runner's `precision: bf16` path (checked here with CPU autocast; no GPU in the tests)."""
    method, model = applied(base, name)
    model.train()
    inputs = batch(method.placeholder_tokens())
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = model(**inputs).loss
    loss.backward()
    grads = [p.grad for _, p in method.trainable_parameters(model)]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_length=5)
    assert out.shape[0] == 3
