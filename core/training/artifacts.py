"""Save stage: everything a run leaves in its output dir (DESIGN §6.7-8).

adapter/ (safetensors + adapter_config + tokenizer with its chat template), spec.json
(resolved spec, hash, library versions, dataset fingerprint, seed), eval_report.json,
dataset_report.json; metrics.jsonl is appended during training. Optional merged/.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from core.spec import JobSpec

LIBRARIES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "tokenizers",
    "tuneforge",
)


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_json(path: Path, data) -> Path:
    path.write_text(
        json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n",
        encoding="utf-8",
    )
    return path


def write_spec(out: Path, spec: JobSpec, fingerprint: str, extra: dict) -> Path:
    return write_json(
        out / "spec.json",
        {
            "spec": spec.model_dump(mode="json"),
            "spec_hash": spec.hash(),
            "seed": spec.seed,
            "dataset_fingerprint": fingerprint,
            "versions": library_versions(),
            **extra,
        },
    )


def save_adapter(out: Path, model, tokenizer) -> Path:
    """LoRA weights only (safetensors) and the tokenizer, chat template included."""
    adapter = out / "adapter"
    model.save_pretrained(adapter, safe_serialization=True)
    tokenizer.save_pretrained(adapter)
    return adapter


def save_merged(out: Path, spec: JobSpec, adapter_dir: Path, tokenizer) -> Path:
    """Adapter merged into a freshly loaded, unquantized bf16/fp16 base; never into 4-bit weights."""
    import torch
    from peft import PeftModel

    from core.training.model import device, load_base_model

    dtype = (
        torch.bfloat16
        if device() == "cpu" or torch.cuda.is_bf16_supported()
        else torch.float16
    )
    base = load_base_model(spec, dtype, quantized=False)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    target = out / "merged"
    merged.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target
