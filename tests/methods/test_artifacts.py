"""Trained artifacts: every row writes safetensors and a sidecar, each loads in the library others use, and an
older version's pickled `.pt` (or AdapterHub `.bin`) still loads. Tiny model from a local directory, CPU."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open

from ptuning.errors import PtuningError
from ptuning.methods import build_method
from ptuning.methods.artifacts import SIDECAR, read_state_dict

# (method, implementation, knobs, artifact name, its files)
ROWS = [
    ("full", "hand", {}, "model", ["config.json", "generation_config.json", "model.safetensors", SIDECAR]),
    ("soft_prompt", "hand", {"tokens": 3}, "prompts", ["prompts.safetensors", SIDECAR]),
    ("adapter", "hand", {"bottleneck": 4}, "adapter", ["adapter.safetensors", SIDECAR]),
    ("lora", "hand", {"rank": 4, "alpha": 4.0}, "lora", ["lora.safetensors", SIDECAR]),
    ("soft_prompt", "opendelta", {"tokens": 3}, "prompts", ["prompts.safetensors", SIDECAR]),
    ("adapter", "adapterhub", {"bottleneck": 4}, "adapter",
     ["adapter.safetensors", "adapter_config.json", "head_config.json", "model_head.safetensors", SIDECAR]),
    ("lora", "peft", {"rank": 2, "alpha": 4.0, "dropout": 0.1}, "lora", ["README.md", "adapter_config.json", "adapter_model.safetensors", SIDECAR]),
]
FORMATS = {"hand": "safetensors", "opendelta": "safetensors", "adapterhub": "adapterhub", "peft": "peft"}
IDS = [f"{m}-{i}" for m, i, *_ in ROWS]


def batch(method, vocab: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = method.placeholder_tokens()
    ids = torch.cat([torch.zeros(2, n, dtype=torch.long), torch.randint(3, vocab, (2, 7), generator=g)], 1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(3, vocab, (2, 2), generator=g)}


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v.clone() for k, v in inputs.items()}).logits


def trained(tiny_model_dir, name, implementation, knobs, seed=0):
    """(method, model): applied to the tiny model loaded from its directory, two AdamW steps taken."""
    from ptuning.model import load_model

    torch.manual_seed(seed)
    method = build_method(name, implementation, knobs)
    model = method.apply(load_model(str(tiny_model_dir))[0])
    inputs = batch(method, model.config.vocab_size)
    optimizer = torch.optim.AdamW([p for _, p in method.trainable_parameters(model)], lr=3e-2)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        model(**{k: v.clone() for k, v in inputs.items()}).loss.backward()
        optimizer.step()
    return method, model.eval()


def fresh(tiny_model_dir, name, implementation, knobs):
    from ptuning.model import load_model

    torch.manual_seed(123)  # the added parameters start different from the trained ones
    method = build_method(name, implementation, knobs)
    return method, method.apply(load_model(str(tiny_model_dir))[0]).eval()


@pytest.mark.parametrize("name, implementation, knobs, artifact, files", ROWS, ids=IDS)
def test_every_row_writes_safetensors_and_a_sidecar_and_loads_them_back(tmp_path, tiny_model_dir, name, implementation,
                                                                          knobs, artifact, files):
    method, model = trained(tiny_model_dir, name, implementation, knobs)
    assert method.artifact == artifact
    path = method.save(model, tmp_path / artifact)
    assert path == tmp_path / artifact and sorted(p.name for p in path.iterdir()) == sorted(files)
    sidecar = json.loads((path / SIDECAR).read_text())
    trainable = sum(p.numel() for _, p in method.trainable_parameters(model))
    assert sidecar == {
        "ptuning_artifact": 1, "method": name, "implementation": implementation, "knobs": method.values,
        "base_model": str(tiny_model_dir), "format": "transformers" if name == "full" else FORMATS[implementation],
        "weights": sidecar["weights"], "trained_parameters": trainable, "ptuning_version": "0.1.0",
    }
    assert sidecar["weights"] in files and sidecar["weights"].endswith(".safetensors")
    umask = os.umask(0)
    os.umask(umask)
    for file in path.iterdir():  # safetensors alone would leave its files readable by their owner only
        assert file.stat().st_mode & 0o777 == 0o666 & ~umask, file.name
        if file.suffix == ".safetensors":  # a real safetensors file, never a pickle
            with safe_open(str(file), "pt") as f:
                assert len(list(f.keys())) > 0

    inputs = batch(method, model.config.vocab_size)
    expected = logits(model, inputs)
    again, other = fresh(tiny_model_dir, name, implementation, knobs)
    if name != "full":
        assert not torch.allclose(logits(other, inputs), expected)
    else:
        assert not torch.allclose(logits(fresh(tiny_model_dir, "zero_shot", "hand", {})[1], inputs), expected)
    again.load(other, path)
    torch.testing.assert_close(logits(other, inputs), expected, rtol=0, atol=0)


def test_full_fine_tuning_loads_in_plain_transformers(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSeq2SeqLM

    from ptuning.model import load_model

    method, model = trained(tiny_model_dir, "full", "hand", {})
    path = method.save(model, tmp_path / method.artifact)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    assert type(loaded).__name__ == "T5ForConditionalGeneration"
    # T5's tied embeddings are stored once and tied again on loading
    assert loaded.lm_head.weight.data_ptr() == loaded.shared.weight.data_ptr() == loaded.encoder.embed_tokens.weight.data_ptr()
    inputs = batch(method, model.config.vocab_size)
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), rtol=0, atol=0)
    base = load_model(str(tiny_model_dir))[0].eval()
    assert (logits(base, inputs) - logits(loaded, inputs)).abs().max() > 1e-2  # the trained weights, not the base's


@pytest.mark.parametrize("name, implementation, knobs, legacy", [
    ("full", "hand", {}, "model.pt"),
    ("soft_prompt", "hand", {"tokens": 3}, "prompts.pt"),
    ("adapter", "hand", {"bottleneck": 4}, "adapter.pt"),
    ("lora", "hand", {"rank": 4}, "lora.pt"),
    ("soft_prompt", "opendelta", {"tokens": 3}, "prompts.pt"),
], ids=lambda x: x if isinstance(x, str) and x.endswith(".pt") else "")
def test_an_older_versions_pickled_file_still_loads(tmp_path, tiny_model_dir, name, implementation, knobs, legacy):
    method, model = trained(tiny_model_dir, name, implementation, knobs)
    assert method.legacy_artifact == legacy
    torch.save(method.state_dict(model), tmp_path / legacy)  # what older versions wrote
    again, other = fresh(tiny_model_dir, name, implementation, knobs)
    again.load(other, tmp_path / legacy)
    inputs = batch(method, model.config.vocab_size)
    torch.testing.assert_close(logits(other, inputs), logits(model, inputs), rtol=0, atol=0)


def test_an_older_adapterhub_directory_with_bin_files_still_loads(tmp_path, tiny_model_dir):
    from ptuning.methods.adapterhub_backend import ADAPTER_NAME

    method, model = trained(tiny_model_dir, "adapter", "adapterhub", {"bottleneck": 4})
    model.save_adapter(str(tmp_path / "adapter"), ADAPTER_NAME)  # what older versions wrote: pickles, no sidecar
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json", "head_config.json", "pytorch_adapter.bin", "pytorch_model_head.bin"]
    again, other = fresh(tiny_model_dir, "adapter", "adapterhub", {"bottleneck": 4})
    again.load(other, tmp_path / "adapter")
    inputs = batch(method, model.config.vocab_size)
    torch.testing.assert_close(logits(other, inputs), logits(model, inputs), rtol=0, atol=0)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / SIDECAR).unlink(), f"not a ptuning artifact directory (no {SIDECAR})"),
    (lambda d: (d / SIDECAR).write_text("{"), f"{SIDECAR}: unreadable (JSONDecodeError: "),
    (lambda d: (d / SIDECAR).write_text("[]"), f"{SIDECAR}: unreadable (not an object with a 'weights' file name)"),
    (lambda d: _truncate(d / "lora.safetensors"), "lora.safetensors: unreadable trained parameters (SafetensorError: "),
    (lambda d: (d / "lora.safetensors").unlink(), "lora.safetensors: unreadable trained parameters ("),
], ids=["no sidecar", "sidecar not JSON", "sidecar a list", "truncated weights", "no weights"])
def test_a_damaged_artifact_is_one_line(tmp_path, tiny_model_dir, damage, message):
    method, model = trained(tiny_model_dir, "lora", "hand", {"rank": 4})
    path = method.save(model, tmp_path / "lora")
    damage(path)
    again, other = fresh(tiny_model_dir, "lora", "hand", {"rank": 4})
    with pytest.raises(PtuningError) as info:
        again.load(other, path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_damaged_or_foreign_old_file_and_a_misfit_are_one_line(tmp_path, tiny_model_dir):
    (tmp_path / "lora.pt").write_bytes(b"not a torch file")
    with pytest.raises(PtuningError, match=r"lora.pt: unreadable trained parameters \(UnpicklingError: "):
        read_state_dict(tmp_path / "lora.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(PtuningError, match=r"list.pt: unreadable trained parameters \(a list, not a state dict\)"):
        read_state_dict(tmp_path / "list.pt")
    with pytest.raises(PtuningError, match="nothing.pt: no trained parameters there"):
        read_state_dict(tmp_path / "nothing.pt")
    method, model = trained(tiny_model_dir, "lora", "hand", {"rank": 4})
    path = method.save(model, tmp_path / "lora")
    wider, other = fresh(tiny_model_dir, "lora", "hand", {"rank": 8})
    with pytest.raises(PtuningError, match=r"lora: parameter decoder.block.0.layer.0.SelfAttention.q.lora_A has shape \(32, 4\) there, \(32, 8\)"):
        wider.load(other, path)
    adapter, other = fresh(tiny_model_dir, "adapter", "hand", {"bottleneck": 4})
    with pytest.raises(PtuningError, match=r"lora: saved parameters \['decoder.block.0.layer.0.SelfAttention.q.lora_A'"):
        adapter.load(other, path)
