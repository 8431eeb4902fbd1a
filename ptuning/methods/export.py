"""`ptuning export RUN_DIR --to peft DIR`: a hand-written LoRA run as a PEFT adapter directory.

The hand-written LoRA (ptuning/methods/lora.py) adds x·A·B·(alpha/r) to every `q` and `v` projection of
T5's attention, with A stored d_in×r and B r×d_out. PEFT's LoRA adds lora_B(lora_A(x))·(lora_alpha/r)
with `nn.Linear` weights, lora_A.weight r×d_in and lora_B.weight d_out×r: the same function when
lora_A.weight = Aᵀ and lora_B.weight = Bᵀ. The export writes PEFT's own files, nothing else:

    DIR/adapter_config.json        LoraConfig(task_type=SEQ_2_SEQ_LM, r, lora_alpha, target_modules=["q", "v"],
                                   lora_dropout=0, base_model_name_or_path=the run's base model), saved by PEFT
    DIR/adapter_model.safetensors  base_model.model.<module>.lora_A.weight / lora_B.weight for each of them

so `PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base), DIR)` computes the run's model.
No model is loaded (nothing is downloaded): the export reads only the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ptuning.errors import PtuningError

#: the rows `export --to peft` accepts
EXPORTABLE = ("lora", "hand")
#: what to say about the rows it refuses, by (method, implementation)
ALREADY = {
    ("lora", "peft"): "its artifact {artifact} already is a PEFT adapter directory: PeftModel.from_pretrained loads it as it is",
    ("adapter", "adapterhub"): "its artifact {artifact} is an AdapterHub adapter directory: model.load_adapter loads it",
    ("full", "hand"): "its artifact {artifact} is a transformers model directory: AutoModelForSeq2SeqLM.from_pretrained loads it",
}
OTHER = "PEFT has no format for it; docs/artifacts.md says how to load {artifact}"


def _method_of(result: dict[str, Any], artifact: Path | None) -> tuple[str, str, dict[str, Any]]:
    """(method, implementation, knobs) of a run: from the artifact's sidecar, else from the result's config."""
    from ptuning.methods import artifacts

    if artifact is not None and (artifact / artifacts.SIDECAR).is_file():
        sidecar = artifacts.read_sidecar(artifact)
        knobs = sidecar.get("knobs") if isinstance(sidecar.get("knobs"), dict) else {}
        return str(sidecar.get("method")), str(sidecar.get("implementation")), knobs
    method = (result.get("config") or {}).get("method")
    if not isinstance(method, dict) or "name" not in method:
        raise PtuningError("the result does not say which method it ran (no config.method)")
    knobs = {k: v for k, v in method.items() if k not in ("name", "implementation")}
    return str(method["name"]), str(method.get("implementation", "hand")), knobs


def _base_model(result: dict[str, Any], artifact: Path) -> str | None:
    from ptuning.methods import artifacts

    if (artifact / artifacts.SIDECAR).is_file():
        base = artifacts.read_sidecar(artifact).get("base_model")
        if base:
            return str(base)
    model = (result.get("config") or {}).get("model")
    return str(model) if model else None


def peft_tensors(state: dict, rank: int, where: Path) -> tuple[dict, list[str]]:
    """PEFT's tensors for a hand LoRA state dict, and the module names they target ("q", "v")."""
    modules = sorted({name.rsplit(".", 1)[0] for name in state})
    if not modules or set(state) != {f"{m}.{p}" for m in modules for p in ("lora_A", "lora_B")}:
        raise PtuningError(f"{where}: not a hand-written LoRA's parameters (expected pairs <module>.lora_A, <module>.lora_B)")
    out = {}
    for module in modules:
        a, b = state[f"{module}.lora_A"], state[f"{module}.lora_B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != rank or b.shape[0] != rank:
            raise PtuningError(f"{where}: {module} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, not rank {rank}")
        out[f"base_model.model.{module}.lora_A.weight"] = a.t().contiguous()
        out[f"base_model.model.{module}.lora_B.weight"] = b.t().contiguous()
    return out, sorted({m.rsplit(".", 1)[-1] for m in modules})


def export_peft(run_dir: Path, out: Path, base_model: str | None = None) -> str:
    """Write the PEFT adapter directory `out` for the hand LoRA run in `run_dir`; return the line to print."""
    from ptuning.atomic import atomic_save
    from ptuning.methods import artifacts
    from ptuning.methods.library import import_library
    from ptuning.report.results import RESULT_FILE, read_result

    run_dir, out = Path(run_dir), Path(out)
    result_path = run_dir / RESULT_FILE
    if not result_path.is_file():
        raise PtuningError(f"{run_dir} is not a run directory (no {RESULT_FILE}); pass one such as results/lora_8/seed0")
    result = read_result(result_path)
    if result.get("status") != "completed":
        raise PtuningError(f"{run_dir} holds a run that did not complete (status {result.get('status')!r}); "
                           "finish it first (rerun the same ptuning run command)")
    name = result.get("artifact")
    artifact = run_dir / name if isinstance(name, str) and name else None
    method, implementation, knobs = _method_of(result, artifact if artifact is not None and artifact.is_dir() else None)
    if (method, implementation) != EXPORTABLE:
        hint = (ALREADY.get((method, implementation), OTHER).format(artifact=artifact) if artifact is not None
                else "it trained nothing, so there is nothing to export")
        raise PtuningError(f"only hand-written LoRA runs (lora/hand, e.g. lora_8) export to PEFT; {run_dir} ran "
                           f"{method}/{implementation}, and {hint}")
    if artifact is None or not artifact.exists():
        raise PtuningError(f"{run_dir}: the trained parameters {artifact or '(artifact)'} are missing")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PtuningError(f"{out} already exists and is not an empty directory; pass a new or empty one")
    try:
        rank, alpha = int(knobs["rank"]), float(knobs["alpha"])
    except (KeyError, TypeError, ValueError):
        raise PtuningError(f"{run_dir}: the run does not record the LoRA's rank and alpha") from None
    tensors, targets = peft_tensors(artifacts.read_state_dict(artifact), rank, artifact)
    base = base_model or _base_model(result, artifact)

    peft = import_library("peft", who="ptuning export --to peft")
    from safetensors.torch import save_file

    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, r=rank, lora_alpha=alpha, lora_dropout=0.0,
                             target_modules=targets, bias="none", base_model_name_or_path=base, inference_mode=True)

    def write(tmp: Path) -> None:
        tmp.mkdir()
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        artifacts.usual_permissions(tmp)

    atomic_save(out, write, writable="pass another output directory")
    load = f"PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained({base!r}), {str(out)!r})"
    return (f"exported {result.get('job', run_dir.name)} ({run_dir}) to {out}: a PEFT LoRA adapter, r={rank}, "
            f"lora_alpha={alpha:g}, {len(tensors) // 2} {'/'.join(targets)} projections; load it with {load}")
