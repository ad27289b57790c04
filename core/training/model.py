"""Model stage: pick the compute dtype for this hardware, load the base model (4-bit nf4 by
default) through `from_pretrained` -- the same call for a hub id and a local directory --
and wrap it with LoRA on every linear layer except lm_head (DESIGN §6.4).

A hub model comes through the host's one model cache (`core.training.model_cache`): fetched
once per host under a per-model lock, its revision resolved to a commit, loaded from the
local snapshot. `fetch_model` does that once per process; both loaders use its result.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from core.spec import JobSpec
from core.training.distributed import local_rank
from core.training.errors import TrainingInputError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(requested: str = "auto", on: str | None = None) -> torch.dtype:
    """bf16 only where the GPU supports it, fp16 on older GPUs, fp32 on CPU.

    An explicit request the hardware cannot honour falls back the same way rather than
    producing NaNs or a crash mid-run.
    """
    on = on or device()
    if on == "cpu":
        return torch.float32
    if requested == "fp32":
        return torch.float32
    bf16_ok = torch.cuda.is_bf16_supported()
    if requested in ("auto", "bf16"):
        return torch.bfloat16 if bf16_ok else torch.float16
    return torch.float16


def quantization_config(spec: JobSpec, dtype: torch.dtype):
    """BitsAndBytesConfig for the spec (None = no quantization); compute dtype = training dtype."""
    from transformers import BitsAndBytesConfig

    q = spec.quantization
    if q.bits is None:
        return None
    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=torch.uint8,
    )


MODEL_CACHE_ENV = "TUNEFORGE_MODEL_CACHE"  # Settings.model_cache; worker/childenv.py passes it on
_FETCHED: dict[tuple[str, str | None, str], object] = {}


def model_cache_dir() -> Path:
    """The host's model cache: `TUNEFORGE_MODEL_CACHE` (the worker's `Settings.model_cache`,
    read from the environment here because the training process is given no other setting),
    else huggingface_hub's own default (`HF_HUB_CACHE`)."""
    configured = os.environ.get(MODEL_CACHE_ENV)
    if configured:
        return Path(configured)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def fetch_model(spec: JobSpec, progress=None):
    """The model on local disk (`model_cache.CachedModel`: path and resolved commit), fetched
    into the host's cache at most once; memoised per process, so the tokenizer, the model and
    a merge load the same commit. `progress(done, total)` hears the bytes of a download."""
    from core.training.model_cache import ensure_model

    cache = model_cache_dir()
    key = (spec.model, spec.revision, str(cache))
    if key not in _FETCHED:
        # The hub as the worker's environment names it (HF_ENDPOINT: a mirror or proxy), read
        # here rather than at huggingface_hub's import.
        _FETCHED[key] = ensure_model(
            spec.model, spec.revision, cache, progress=progress, endpoint=os.environ.get("HF_ENDPOINT") or None
        )
    return _FETCHED[key]


def _source(spec: JobSpec) -> tuple[str, dict]:
    """Where from_pretrained loads: the fetched snapshot when `fetch_model` ran in this process
    (no revision: the snapshot is one commit), else the spec's id with the host cache as
    `cache_dir` (a dry run needs the tokenizer's files only, not the weights)."""
    fetched = _FETCHED.get((spec.model, spec.revision, str(model_cache_dir())))
    if fetched is not None:
        return str(fetched.path), {}
    if Path(spec.model).is_dir():
        return spec.model, {"revision": spec.revision}
    return spec.model, {"revision": spec.revision, "cache_dir": str(model_cache_dir())}


def load_tokenizer(spec: JobSpec):
    from transformers import AutoTokenizer

    where, kwargs = _source(spec)
    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=spec.trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        raise TrainingInputError(
            f"model: cannot load the tokenizer of {spec.model!r}: {_first_line(e)}"
        ) from None


def load_base_model(spec: JobSpec, dtype: torch.dtype, *, quantized: bool = True):
    from transformers import AutoModelForCausalLM

    from core.training.attention import attn_implementation_for

    where = str(fetch_model(spec).path)  # the weights always come through the host's cache
    kwargs = {
        "trust_remote_code": spec.trust_remote_code,
        "dtype": dtype,
    }
    qconf = quantization_config(spec, dtype) if quantized else None
    if qconf is not None:
        kwargs["quantization_config"] = qconf
    dev = device()
    kwargs["attn_implementation"] = attn_implementation_for(dev)  # packed rows: core/training/attention.py
    # Under accelerate launch each rank holds a whole copy on its own GPU.
    kwargs["device_map"] = {"": local_rank()} if dev == "cuda" else {"": "cpu"}
    try:
        return AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as e:
        raise TrainingInputError(
            f"model: cannot load {spec.model!r}: {_first_line(e)}"
        ) from None


def lora_config(spec: JobSpec):
    """all-linear: PEFT targets every nn.Linear / bnb Linear4bit except the output layer (lm_head)."""
    from peft import LoraConfig

    lo = spec.lora
    return LoraConfig(
        r=lo.r,
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        target_modules=lo.target_modules,
        use_dora=lo.use_dora,
        use_rslora=lo.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_model(spec: JobSpec, dtype: torch.dtype, plan=None):
    """The base model, prepared for k-bit training when quantized, with a fresh LoRA adapter.
    Gradient checkpointing as the attempt's `plan` says (default: the spec's own plan)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from core.training.kernels import apply_kernels
    from core.training.plan import spec_plan

    model = load_base_model(spec, dtype)
    apply_kernels(model)  # Liger's RMSNorm/SwiGLU/RoPE on CUDA when installed (core/training/kernels.py)
    gc = (plan or spec_plan(spec)).gradient_checkpointing
    # Non-reentrant checkpointing, as the Trainer is told too (core.training.trainer).
    gc_kwargs = {"use_reentrant": False}
    if spec.quantization.bits is not None:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gc, gradient_checkpointing_kwargs=gc_kwargs
        )
    elif gc:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=gc_kwargs)
    model.config.use_cache = False
    keep_4bit_layout(model)
    if spec.from_checkpoint is not None:
        return _start_adapter(model, spec.from_checkpoint)
    try:
        return get_peft_model(model, lora_config(spec))
    except ValueError as e:
        raise TrainingInputError(f"lora.target_modules: {_first_line(e)}") from None


def _start_adapter(model, path: str):
    """The base with a trainable copy of an existing adapter (`from_checkpoint`)."""
    from peft import PeftModel

    if not (Path(path) / "adapter_config.json").is_file():
        raise TrainingInputError(f"from_checkpoint: {path} holds no PEFT adapter (adapter_config.json)")
    try:
        return PeftModel.from_pretrained(model, path, is_trainable=True)
    except (ValueError, KeyError, RuntimeError) as e:
        raise TrainingInputError(f"from_checkpoint: the adapter does not fit this model: {_first_line(e)}") from None


def keep_4bit_layout(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On a CPU with AVX512-BF16, a Linear4bit forward in eval mode without grad rewrites its
    weight in place into a layout for an inference-only kernel; the training steps after an
    `eval_every_steps` evaluation then ran on that layout and their gradient norms dropped
    ~4x (measured). Evaluation must leave the training weights exactly as they were, so the
    repack is switched off: the weights keep one layout for the whole run, on every device.
    """
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def upcast_adapter(model) -> None:
    """Trainable (LoRA) weights in fp32 -- the master weights (DESIGN §6.9); compute stays
    in the hardware dtype under autocast, as peft sets them up by default.

    TRL 1.x casts them to bf16 when it builds the trainer around a quantized model. In bf16
    only ~40% of lora_A entries move at all in one Adam step at lr 2e-4 (updates below
    bf16's resolution are lost), and a run resumed from a checkpoint trained in fp32 while
    its first steps had trained in bf16, so it ended on a different adapter.
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def real_dtypes(model, compute: torch.dtype) -> dict[str, str]:
    """The dtypes the run really uses (recorded in spec.json), read from the model itself."""
    name = lambda d: str(d).removeprefix("torch.")
    trainable = [p for p in model.parameters() if p.requires_grad]
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad)
    state = getattr(linear.weight, "quant_state", None)
    base = name(linear.weight.dtype)
    if state is not None:
        base = f"{state.quant_type} in {base}"
    return {
        "base_storage": base,
        "adapter": ", ".join(sorted({name(p.dtype) for p in trainable})) or "none",
        "compute": name(compute),
    }


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
