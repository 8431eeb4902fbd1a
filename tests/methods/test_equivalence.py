"""Hand-written methods vs their library counterparts on the tiny T5, with the same weights copied
across and the model in eval mode (dropout off): the same function, up to float rounding. Where the
designs really differ (initialisation, OpenDelta keeping the placeholders), the tests pin the
difference down exactly.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ptuning.methods.adapter import HandAdapter, feed_forward_layers
from ptuning.methods.adapterhub_backend import ADAPTER_NAME, AdapterHubBottleneck
from ptuning.methods.lora import HandLoRA, LoRALinear, attention_modules
from ptuning.methods.opendelta_backend import OpenDeltaSoftPrompt
from ptuning.methods.peft_backend import PeftLoRA
from ptuning.methods.soft_prompt import HandSoftPrompt
from ptuning.testing.tiny import tiny_t5_config

VOCAB = 128
# LoRA and adapter: the same arithmetic in a different order (x·A·B·s vs B(A(x))·s) → float32 rounding
# only (measured: at most 1.5e-6 absolute on the tiny model). Soft prompt: the same ops → bit-identical.
TIGHT = dict(rtol=1e-5, atol=1e-5)
EXACT = dict(rtol=0, atol=0)


@pytest.fixture(scope="module")
def tiny():
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(0)
    return T5ForConditionalGeneration(tiny_t5_config(VOCAB)).eval()


def _text_batch(seed=0, batch=3, length=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    ids[1, length - 4 :] = 0  # right padding
    mask[1, length - 4 :] = 0
    labels = torch.randint(3, VOCAB, (batch, 2), generator=g)
    labels[:, -1] = 1
    return ids, mask, labels


def _with_placeholders(ids, mask, n):
    """What the data pipeline feeds a soft-prompt row: n <pad> ids (attention 1) in front."""
    b = ids.shape[0]
    return (
        torch.cat([torch.zeros(b, n, dtype=ids.dtype), ids], 1),
        torch.cat([torch.ones(b, n, dtype=mask.dtype), mask], 1),
    )


def _generate_scores(model, ids, mask):
    """Greedy generate(max_length=5) through the KV cache: (sequences, stacked step scores)."""
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask.clone(), max_length=5, do_sample=False,
                             output_scores=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores)


def _forward(model, ids, mask, labels):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask.clone(), labels=labels)
    return out.encoder_last_hidden_state, out.logits


# -- LoRA -------------------------------------------------------------------------------------------


def _peft_lora_layers(model):
    """PEFT's LoRA layers (q, v of every attention module) in the same order as the hand LoRA's."""
    return [getattr(attn, key) for attn in attention_modules(model) for key in ("q", "v")]


def test_hand_lora_equals_peft_lora_with_the_same_weights(tiny):
    rank = 4
    hand = HandLoRA(rank=rank, alpha=4.0).apply(copy.deepcopy(tiny)).eval()
    peft_model = PeftLoRA(rank=rank, alpha=4.0, dropout=0.1).apply(copy.deepcopy(tiny)).eval()
    hand_layers = [getattr(attn, key) for attn in attention_modules(hand) for key in ("q", "v")]
    peft_layers = _peft_lora_layers(peft_model)
    assert len(hand_layers) == len(peft_layers) == 12  # 2 enc self + 2 dec self + 2 dec cross, × q,v

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for h, p in zip(hand_layers, peft_layers):
            assert isinstance(h, LoRALinear)
            h.lora_A.copy_(torch.randn(h.lora_A.shape, generator=g) * 0.3)
            h.lora_B.copy_(torch.randn(h.lora_B.shape, generator=g) * 0.3)  # non-zero, or LoRA is a no-op
            # hand: x·A·B with A d_in×r, B r×d_out; PEFT: B(A(x)) with Linear weights A r×d_in, B d_out×r
            p.lora_A["default"].weight.copy_(h.lora_A.T)
            p.lora_B["default"].weight.copy_(h.lora_B.T)
            assert p.scaling["default"] == h.scaling == 4.0 / rank
            assert p.lora_dropout["default"].p == 0.1  # PEFT's dropout, off in eval mode

    ids, mask, labels = _text_batch()
    hand_enc, hand_logits = _forward(hand, ids, mask, labels)
    peft_enc, peft_logits = _forward(peft_model, ids, mask, labels)
    torch.testing.assert_close(peft_enc, hand_enc, **TIGHT)
    torch.testing.assert_close(peft_logits, hand_logits, **TIGHT)
    hand_seq, hand_scores = _generate_scores(hand, ids, mask)
    peft_seq, peft_scores = _generate_scores(peft_model, ids, mask)
    assert torch.equal(peft_seq, hand_seq)
    torch.testing.assert_close(peft_scores, hand_scores, **TIGHT)
    base_logits = _forward(tiny, ids, mask, labels)[1]
    assert not torch.allclose(base_logits, hand_logits, atol=1e-3)  # the LoRA weights did matter


def test_lora_design_differences_init_scale_and_scaling(tiny):
    """Hand A: d_in×r, Kaiming-uniform(a=√5) sees fan_in = r → bound 1/√r.
    PEFT A: r×d_in, fan_in = d_in → bound 1/√d_in. Both B start at zero; both scale by alpha/r."""
    d_in, rank = tiny.config.d_model, 2
    torch.manual_seed(0)
    hand = HandLoRA(rank=rank).apply(copy.deepcopy(tiny))
    peft_model = PeftLoRA(rank=rank).apply(copy.deepcopy(tiny))
    hand_a = torch.cat([layer.lora_A.detach().flatten() for layer in hand.modules() if isinstance(layer, LoRALinear)])
    peft_a = torch.cat([layer.lora_A["default"].weight.detach().flatten() for layer in _peft_lora_layers(peft_model)])
    assert hand_a.abs().max() <= 1 / math.sqrt(rank)
    assert peft_a.abs().max() <= 1 / math.sqrt(d_in)
    assert hand_a.abs().max() > 1 / math.sqrt(d_in)  # far outside PEFT's range
    ratio = (hand_a.std() / peft_a.std()).item()
    assert 0.8 * math.sqrt(d_in / rank) < ratio < 1.2 * math.sqrt(d_in / rank)  # √(d_in/r): 8× on t5-small r=8
    for layer in hand.modules():
        if isinstance(layer, LoRALinear):
            assert not layer.lora_B.any()
    assert all(not p.lora_B["default"].weight.any() for p in _peft_lora_layers(peft_model))
    # scaling alpha/r with the default alpha 4: 4.0 at r=1 in both
    one = PeftLoRA(rank=1).apply(copy.deepcopy(tiny))
    assert {p.scaling["default"] for p in _peft_lora_layers(one)} == {4.0}
    assert {m.scaling for m in HandLoRA(rank=1).apply(copy.deepcopy(tiny)).modules() if isinstance(m, LoRALinear)} == {
        4.0
    }


# -- bottleneck adapter -------------------------------------------------------------------------------


def _adapterhub_adapters(model):
    return [ff.adapters[ADAPTER_NAME] for ff in feed_forward_layers(model)]


def test_hand_adapter_equals_adapterhub_seqbn_with_the_same_weights(tiny):
    b = 4
    hand = HandAdapter(bottleneck=b).apply(copy.deepcopy(tiny)).eval()
    hub = AdapterHubBottleneck(bottleneck=b).apply(copy.deepcopy(tiny)).eval()
    hand_adapters = [ff.adapter for ff in feed_forward_layers(hand)]
    hub_adapters = _adapterhub_adapters(hub)
    assert len(hand_adapters) == len(hub_adapters) == 4  # one per block: 2 encoder + 2 decoder

    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for h, a in zip(hand_adapters, hub_adapters):
            down, up = a.adapter_down[0], a.adapter_up
            assert down.weight.shape == h.down.weight.shape == (b, tiny.config.d_model)
            for src, dst in ((h.down, down), (h.up, up)):
                src.weight.copy_(torch.randn(src.weight.shape, generator=g) * 0.3)
                src.bias.copy_(torch.randn(src.bias.shape, generator=g) * 0.3)
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)

    ids, mask, labels = _text_batch()
    hand_enc, hand_logits = _forward(hand, ids, mask, labels)
    hub_enc, hub_logits = _forward(hub, ids, mask, labels)
    torch.testing.assert_close(hub_enc, hand_enc, **TIGHT)
    torch.testing.assert_close(hub_logits, hand_logits, **TIGHT)
    hand_seq, hand_scores = _generate_scores(hand, ids, mask)  # incremental decoding through the cache too
    hub_seq, hub_scores = _generate_scores(hub, ids, mask)
    assert torch.equal(hub_seq, hand_seq)
    torch.testing.assert_close(hub_scores, hand_scores, **TIGHT)
    assert not torch.allclose(_forward(tiny, ids, mask, labels)[1], hand_logits, atol=1e-3)


def test_adapter_design_difference_initialisation(tiny):
    """AdapterHub ("bert" init): weights N(0, 0.02), biases zero, so it starts close to the identity.
    Hand adapter: PyTorch's default Linear init (uniform ±1/√fan_in, biases too), a visible perturbation."""
    torch.manual_seed(0)
    hub = AdapterHubBottleneck(bottleneck=8).apply(copy.deepcopy(tiny)).eval()
    hand = HandAdapter(bottleneck=8).apply(copy.deepcopy(tiny)).eval()
    hub_w = torch.cat([torch.cat([a.adapter_down[0].weight.flatten(), a.adapter_up.weight.flatten()])
                       for a in _adapterhub_adapters(hub)])
    assert abs(hub_w.std().item() - 0.02) < 0.004
    assert all(not a.adapter_down[0].bias.any() and not a.adapter_up.bias.any() for a in _adapterhub_adapters(hub))
    d = tiny.config.d_model
    for ff in feed_forward_layers(hand):
        assert ff.adapter.down.bias.any() and ff.adapter.up.bias.any()
        assert ff.adapter.down.weight.abs().max() <= 1 / math.sqrt(d)
        assert ff.adapter.up.weight.abs().max() <= 1 / math.sqrt(8)
    ids, mask, labels = _text_batch()
    base = _forward(tiny, ids, mask, labels)[1]
    hub_shift = (_forward(hub, ids, mask, labels)[1] - base).abs().max()
    hand_shift = (_forward(hand, ids, mask, labels)[1] - base).abs().max()
    assert hub_shift < hand_shift


# -- soft prompt ---------------------------------------------------------------------------------------


def _set_prompts(hand, od, vectors):
    with torch.no_grad():
        hand.get_encoder().embed_tokens.prompt.copy_(vectors)
        od.get_encoder().soft_prompt_layer.soft_embeds.copy_(vectors)


def test_soft_prompts_start_from_the_same_vocabulary_rows(tiny):
    n = 5
    hand = HandSoftPrompt(tokens=n).apply(copy.deepcopy(tiny))
    od = OpenDeltaSoftPrompt(tokens=n).apply(copy.deepcopy(tiny))
    assert torch.equal(hand.get_encoder().embed_tokens.prompt, od.get_encoder().soft_prompt_layer.soft_embeds)
    assert torch.equal(hand.get_encoder().embed_tokens.prompt.detach(), tiny.shared.weight[:n])


def test_hand_soft_prompt_equals_opendelta_on_prompt_plus_text(tiny):
    """Hand: [n placeholders | text] with the placeholders replaced → encoder sees [prompt | text].
    OpenDelta given the text WITHOUT placeholders prepends its prompt → also [prompt | text]:
    same vectors give the same encoder output at all n + L positions and the same logits."""
    n = 3
    hand = HandSoftPrompt(tokens=n).apply(copy.deepcopy(tiny)).eval()
    od = OpenDeltaSoftPrompt(tokens=n).apply(copy.deepcopy(tiny)).eval()
    vectors = torch.randn(n, tiny.config.d_model, generator=torch.Generator().manual_seed(3))
    _set_prompts(hand, od, vectors)

    text, text_mask, labels = _text_batch()
    hand_enc, hand_logits = _forward(hand, *_with_placeholders(text, text_mask, n), labels)
    od_enc, od_logits = _forward(od, text, text_mask, labels)
    assert hand_enc.shape == od_enc.shape == (3, n + text.shape[1], tiny.config.d_model)
    torch.testing.assert_close(od_enc, hand_enc, **EXACT)
    torch.testing.assert_close(od_logits, hand_logits, **EXACT)
    hand_seq, hand_scores = _generate_scores(hand, *_with_placeholders(text, text_mask, n))
    od_seq, od_scores = _generate_scores(od, text, text_mask)
    assert torch.equal(od_seq, hand_seq)
    torch.testing.assert_close(od_scores, hand_scores, **EXACT)


def test_opendelta_with_placeholders_kept_is_a_2n_prompt_whose_tail_is_frozen_pad(tiny):
    """The reproduced OpenDelta rows keep the n placeholders (placeholder_tokens() == n): the encoder sees
    [n soft | n <pad> embeddings | text], 2n + L positions. That is exactly a hand prompt of 2n vectors
    whose last n are the (frozen) <pad> embedding; it is NOT the hand n-token prompt: T5 attends over all
    positions, so the extra pads change every output, including those of the prompt and the text."""
    n = 3
    od_method = OpenDeltaSoftPrompt(tokens=n)
    assert od_method.placeholder_tokens() == n
    od = od_method.apply(copy.deepcopy(tiny)).eval()
    hand = HandSoftPrompt(tokens=n).apply(copy.deepcopy(tiny)).eval()
    hand_2n = HandSoftPrompt(tokens=2 * n).apply(copy.deepcopy(tiny)).eval()
    vectors = torch.randn(n, tiny.config.d_model, generator=torch.Generator().manual_seed(4))
    _set_prompts(hand, od, vectors)
    with torch.no_grad():
        pad = tiny.shared.weight[0].expand(n, -1)
        hand_2n.get_encoder().embed_tokens.prompt.copy_(torch.cat([vectors, pad]))

    text, text_mask, labels = _text_batch()
    L = text.shape[1]
    od_enc, od_logits = _forward(od, *_with_placeholders(text, text_mask, n), labels)
    assert od_enc.shape[1] == 2 * n + L
    h2_enc, h2_logits = _forward(hand_2n, *_with_placeholders(text, text_mask, 2 * n), labels)
    torch.testing.assert_close(od_enc, h2_enc, **EXACT)
    torch.testing.assert_close(od_logits, h2_logits, **EXACT)

    # vs the hand n-token prompt: the prompt and text positions are comparable one to one
    # (OpenDelta's positions 0..n-1 and 2n.., hand's 0..n-1 and n..), but their values differ
    hand_enc, hand_logits = _forward(hand, *_with_placeholders(text, text_mask, n), labels)
    od_prompt_text = torch.cat([od_enc[:, :n], od_enc[:, 2 * n :]], 1)
    assert od_prompt_text.shape == hand_enc.shape
    assert not torch.allclose(od_prompt_text, hand_enc, atol=1e-4)
    assert not torch.allclose(od_logits, hand_logits, atol=1e-4)
