"""Method registry: (method name, implementation) → class, imported lazily.

Library backends import their library only when a job asks for them, so a user without OpenDelta
can still run every other row. To add a method: write a `Method` subclass in its own module and add
one line here.
"""

from __future__ import annotations

import importlib

from ptuning.errors import PtuningError
from ptuning.methods.base import Knob, Method, count_parameters

__all__ = ["Knob", "Method", "count_parameters", "REGISTRY", "method_class", "build_method"]

#: (method, implementation) → "module:Class"
REGISTRY: dict[tuple[str, str], str] = {
    ("zero_shot", "hand"): "ptuning.methods.zero_shot:ZeroShot",
    ("full", "hand"): "ptuning.methods.full:FullFineTuning",
    ("soft_prompt", "hand"): "ptuning.methods.soft_prompt:HandSoftPrompt",
    ("adapter", "hand"): "ptuning.methods.adapter:HandAdapter",
    ("lora", "hand"): "ptuning.methods.lora:HandLoRA",
    ("soft_prompt", "opendelta"): "ptuning.methods.opendelta_backend:OpenDeltaSoftPrompt",
    ("adapter", "adapterhub"): "ptuning.methods.adapterhub_backend:AdapterHubBottleneck",
    ("lora", "peft"): "ptuning.methods.peft_backend:PeftLoRA",
}

#: the package a library backend needs, and how to install it (used in error messages)
INSTALL_HINTS: dict[str, str] = {
    # two steps: --no-deps for OpenDelta only (its metadata wants the deprecated `sklearn`), its real
    # imports installed normally (with --no-deps they would miss their own dependencies, e.g. rich's pygments)
    "opendelta": "pip install rich web.py pyyaml numpy && pip install --no-deps opendelta==0.3.2   (or: make install)",
    "adapterhub": "pip install adapters==1.3.0   (or: make install)",
    "peft": "pip install peft==0.21.2   (or: make install)",
}


def method_class(name: str, implementation: str) -> type[Method]:
    key = (name, implementation)
    if key not in REGISTRY:
        known = ", ".join(f"{m}/{i}" for m, i in sorted(REGISTRY))
        raise PtuningError(f"no method {name!r} with implementation {implementation!r}; known: {known}")
    module_name, cls_name = REGISTRY[key].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls_name)


def build_method(name: str, implementation: str, knobs: dict) -> Method:
    """Instantiate a method with already-validated knob values (defaults filled in)."""
    cls = method_class(name, implementation)
    values = {k: knobs.get(k, spec.default) for k, spec in cls.knobs.items()}
    return cls(**values)
