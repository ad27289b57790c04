"""How much GPU memory one QLoRA training step needs, from the model's config alone, and the
micro-batch / accumulation / checkpointing plan that fits a given GPU (DESIGN §6.13).

Why a model and not a trial run: the scheduler and the API have to decide *before* a job is
placed (and without loading 16 GB of weights) whether it fits a worker's GPU, and what
micro-batch to use there. So everything here is arithmetic over the architecture, read with
`AutoConfig` and counted on a meta-device construction (no weights, no memory).

What is counted, per GPU, for one optimizer step of today's pipeline (`core.training.model`:
bitsandbytes 4-bit base + PEFT LoRA, trained under autocast):

- the 4-bit weights of every decoder `nn.Linear` (two per byte) and their quantisation
  constants (blockwise absmax per 64 weights; with double quant those are 8-bit, plus one
  fp32 absmax per 256 blocks);
- embeddings, the output head and the norms in their *real* dtype: fp32, because
  `peft.prepare_model_for_kbit_training` upcasts every non-4-bit bf16/fp16 parameter;
- LoRA weights, their gradients and Adam's two moments, all fp32 (16 bytes/parameter), plus
  the compute-dtype copies autocast keeps for the backward;
- activations per token per layer, tensor by tensor as autograd keeps them (see
  `layer_activation_bytes`), with and without gradient checkpointing;
- the LM head at labelled positions only (our `completion_loss`), the largest transient
  (a dequantised weight), the attention mask;
- outside `torch.cuda.max_memory_allocated`: the CUDA context and an allocator margin
  (fragmentation), which is what decides whether the step fits the card.

Only Llama-family decoders (Llama, Mistral, Qwen2: RMSNorm, rotary, GQA, SwiGLU with the usual
`q/k/v/o/gate/up/down_proj` names) are modelled; `shape_from_model` refuses anything else.
The activation figure is checked against a measured CPU step in tests/training; the GPU
figures (bf16 autocast, CUDA kernels, context) are checked by bench/gpu.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

GiB = 1024**3
NF4_BLOCK = 64  # bitsandbytes' 4-bit blocksize: one absmax per 64 weights
DOUBLE_QUANT_BLOCK = 256  # double quant: the 8-bit absmaxes are themselves quantised in blocks of 256
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
DEFAULT_CONTEXT_BYTES = 1 * GiB  # CUDA context + cuBLAS/bitsandbytes workspaces (to be measured per GPU)
DEFAULT_ALLOCATOR_MARGIN = 0.10  # reserved beyond allocated: fragmentation of the caching allocator


#: model_type / architecture names whose decoder is the one modelled here.
LLAMA_FAMILY = frozenset({"llama", "mistral", "qwen2", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"})


class UnsupportedModel(ValueError):
    """The architecture is not one the memory model describes (the plan cannot be trusted)."""


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Llama-family decoder the memory model needs."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    # (name, in_features, out_features) of every nn.Linear in ONE decoder layer.
    layer_linears: tuple[tuple[str, int, int], ...]
    embedding_params: int
    head_params: int  # 0 when tied to the embeddings
    other_params: int  # norms and biases: never quantised

    @property
    def linear_params(self) -> int:
        """Weights bitsandbytes quantises: every decoder nn.Linear (the head is skipped)."""
        return self.num_layers * sum(i * o for _, i, o in self.layer_linears)

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embedding_params + self.head_params + self.other_params

    def as_dict(self) -> dict:
        """JSON-ready: a worker computes the shape (it needs torch); the API and the scheduler,
        which must not import torch, plan from the stored dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelShape:
        return cls(**{**d, "layer_linears": tuple(tuple(x) for x in d["layer_linears"])})

    def linear(self, name: str) -> tuple[int, int]:
        for n, i, o in self.layer_linears:
            if n == name:
                return i, o
        raise KeyError(name)


def shape_from_config_dict(config: dict) -> ModelShape:
    """The shape of a Llama-family decoder from its `config.json` alone, in closed form: what
    the API and the scheduler use (they never import torch). The worker counts the built
    model instead (core.training.model_shape) and tests check both agree."""
    types = {config.get("model_type"), *(config.get("architectures") or [])}
    if not types & LLAMA_FAMILY:
        raise UnsupportedModel(
            f"model_type {config.get('model_type')!r}: the memory model covers Llama-family decoders "
            f"({', '.join(sorted(t for t in LLAMA_FAMILY if t.islower()))})"
        )
    try:
        h, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        kv = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or h // heads)
        inter, vocab, layers = int(config["intermediate_size"]), int(config["vocab_size"]), int(config["num_hidden_layers"])
    except (KeyError, TypeError, ValueError) as e:
        raise UnsupportedModel(f"config.json lacks a usable {e}") from None
    linears = (
        ("q_proj", h, heads * head_dim), ("k_proj", h, kv * head_dim), ("v_proj", h, kv * head_dim),
        ("o_proj", heads * head_dim, h), ("gate_proj", h, inter), ("up_proj", h, inter), ("down_proj", inter, h),
    )
    # Biases: Qwen2 has them on q/k/v; Llama on all four attention projections with
    # `attention_bias` and on the MLP's with `mlp_bias`.
    with_bias = set(ATTENTION[:3]) if config.get("model_type") == "qwen2" else set()
    with_bias |= set(ATTENTION) if config.get("attention_bias") else set()
    with_bias |= set(MLP) if config.get("mlp_bias") else set()
    tied = bool(config.get("tie_word_embeddings", False))
    # Two RMSNorms per layer + the final one, and the biases.
    norms = (2 * layers + 1) * h + layers * sum(o for n, _, o in linears if n in with_bias)
    return ModelShape(
        hidden_size=h, num_layers=layers, num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
        intermediate_size=inter, vocab_size=vocab, tied_embeddings=tied, layer_linears=linears,
        embedding_params=vocab * h, head_params=0 if tied else vocab * h, other_params=norms,
    )


# --- the pieces of memory ------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSetup:
    """The spec-side inputs of the memory model (what `JobSpec` says, in bytes and counts)."""

    lora_r: int = 16
    lora_targets: tuple[str, ...] | Literal["all-linear"] = "all-linear"
    lora_dropout: bool = True  # p > 0: each adapter keeps a dropout mask per input element
    # CUDA's fused dropout keeps a bool mask (1); the CPU's keeps a noise tensor in the input's
    # dtype (None).
    dropout_mask_bytes: int | None = 1
    bits: Literal[4, 8] | None = 4
    double_quant: bool = True
    compute_bytes: int = 2  # bf16/fp16 under autocast on a GPU; 4 on the CPU
    # Embeddings, head and norms: fp32 after prepare_model_for_kbit_training (PEFT upcasts them).
    frozen_bytes: int = 4
    # Padding (or packing without varlen attention) gives SDPA an explicit mask, which also
    # makes transformers materialise K/V for every query head (no GQA fast path).
    attention_mask: bool = True
    gpus: int = 1

    def targets(self, shape: ModelShape) -> set[str]:
        if self.lora_targets == "all-linear":
            return {n for n, _, _ in shape.layer_linears}
        return set(self.lora_targets) & {n for n, _, _ in shape.layer_linears}


def setup_for_spec(spec, *, compute_bytes: int = 2, gpus: int = 1, dropout_mask_bytes: int | None = 1) -> TrainingSetup:
    """The memory model's inputs from a `core.spec.JobSpec`, as the worker trains it: the one
    mapping the API (create/validate, core.services.fit) and the worker (core.training.plan)
    both plan with. The attention mask is always counted (the conservative case): a packed
    batch needs none, but whether packing is boundary-safe is known only on the worker."""
    q, lo = spec.quantization, spec.lora
    return TrainingSetup(
        lora_r=lo.r,
        lora_targets="all-linear" if lo.target_modules == "all-linear" else tuple(lo.target_modules),
        lora_dropout=lo.dropout > 0,
        dropout_mask_bytes=dropout_mask_bytes,
        bits=q.bits,
        double_quant=q.double_quant,
        compute_bytes=compute_bytes,
        frozen_bytes=4,  # prepare_model_for_kbit_training upcasts embeddings, head and norms
        attention_mask=True,
        gpus=gpus,
    )


def quantized_weight_bytes(n: int, bits: int | None, double_quant: bool, compute_bytes: int) -> tuple[int, int]:
    """(weight bytes, quantisation-constant bytes) of one n-element linear weight."""
    if bits is None:
        return n * compute_bytes, 0
    if bits == 8:  # LLM.int8: int8 weights + one fp32 scale per output row (approximated per 4096)
        return n, 4 * math.ceil(n / 4096)
    blocks = math.ceil(n / NF4_BLOCK)
    code = 16 * 4  # the 16-value nf4/fp4 code table (fp32)
    if not double_quant:
        return math.ceil(n / 2), blocks * 4 + code
    blocks2 = math.ceil(blocks / DOUBLE_QUANT_BLOCK)
    # 8-bit absmax per block + fp32 absmax per 256 blocks + the 256-entry 8-bit code + offset.
    return math.ceil(n / 2), blocks + blocks2 * 4 + 256 * 4 + 4 + code


def lora_params(shape: ModelShape, setup: TrainingSetup) -> int:
    targets = setup.targets(shape)
    per_layer = sum(setup.lora_r * (i + o) for n, i, o in shape.layer_linears if n in targets)
    return per_layer * shape.num_layers


def static_bytes(shape: ModelShape, setup: TrainingSetup) -> dict[str, int]:
    """Memory that does not depend on the batch: weights, constants, LoRA state."""
    weights = consts = 0
    for _, i, o in shape.layer_linears:
        w, c = quantized_weight_bytes(i * o, setup.bits, setup.double_quant, setup.compute_bytes)
        weights += w * shape.num_layers
        consts += c * shape.num_layers
    frozen = setup.frozen_bytes if setup.bits is not None else setup.compute_bytes
    lora = lora_params(shape, setup)
    # fp32 weights + fp32 grads + Adam m and v; autocast keeps compute-dtype copies for backward;
    # DDP adds one fp32 gradient bucket per parameter.
    lora_state = lora * (16 + (setup.compute_bytes if setup.compute_bytes < 4 else 0) + (4 if setup.gpus > 1 else 0))
    return {
        "base_weights": weights,
        "quantization_constants": consts,
        "embeddings_and_head": (shape.embedding_params + shape.head_params) * frozen,
        "norms_and_biases": shape.other_params * frozen,
        "lora_weights_grads_adam": lora_state,
    }


def layer_activation_bytes(shape: ModelShape, setup: TrainingSetup, seq_len: int) -> int:
    """Bytes autograd keeps per token per decoder layer for the backward (no checkpointing),
    for rows of `seq_len` tokens (only the attention mask's share depends on it).

    Walked tensor by tensor through today's stack, with B = compute dtype, S = the residual
    stream's dtype (the fp32 embeddings make it fp32), F = norm-weight dtype:
    - RMSNorm keeps its input (the stream, S) and 1/rms (fp32); its output is max(F, S) wide.
    - bitsandbytes' 4-bit matmul keeps nothing per token (only the packed weight) and casts its
      output back to its input's dtype; a plain autocast nn.Linear keeps its input in B.
    - each LoRA adapter keeps its dropout mask (1 byte on CUDA), lora_A's input in B and lora_A's
      output (r values) in B.
    - RoPE keeps only cos/sin; SDPA (under autocast) keeps q, k, v in B -- k and v repeated to
      every query head when a mask is present -- its output in B and the fp32 logsumexp; a
      boolean mask is converted to an additive one in B in every layer (seq_len per token).
    - SiLU keeps the gate output, the product keeps SiLU's output and the up output.
    """
    h, nh, d, I = shape.hidden_size, shape.num_heads, shape.head_dim, shape.intermediate_size
    nq, nkv = nh * d, shape.num_kv_heads * d
    B = setup.compute_bytes
    quantized = setup.bits is not None
    F = setup.frozen_bytes if quantized else B
    S = F  # the embedding output's dtype, kept by every residual add (S >= B)
    targets = setup.targets(shape)
    kept: dict[str, int] = {}

    def linear(name: str, src: str, src_bytes: int, n_in: int) -> int:
        """Record what one (LoRA-wrapped) linear keeps; returns its output's bytes per element."""
        # Autocast casts an activation afresh for every op that takes it (it caches only
        # weights), so q, k and v each keep their own B copy of a wider input.
        if not quantized:  # plain nn.Linear under autocast keeps its (B) input
            kept[src if src_bytes == B else f"{name}.input@B"] = B * n_in
        if name in targets:
            if setup.lora_dropout:
                mask = src_bytes if setup.dropout_mask_bytes is None else setup.dropout_mask_bytes
                kept[f"{name}.dropout_mask"] = mask * n_in
                kept[f"{name}.lora_A_input"] = B * n_in  # the dropped copy, or its B cast
            else:
                kept[src if src_bytes == B else f"{name}.lora_A_input"] = B * n_in
            kept[f"{name}.lora_A_output"] = B * setup.lora_r
        base_out = src_bytes if quantized else B
        return max(base_out, B) if name in targets else base_out

    kept["input"] = S * h
    kept["input_rms"] = 4
    y1 = max(F, S)
    q = linear("q_proj", "y1", y1, h)
    k = linear("k_proj", "y1", y1, h)
    linear("v_proj", "y1", y1, h)  # what it keeps; its output only reaches SDPA as sdpa_v (in B)
    q = max(q, S)  # RoPE multiplies by cos/sin in the stream's dtype
    k = max(k, S)
    kv_width = nq if setup.attention_mask else nkv  # repeat_kv without the GQA fast path
    # SDPA runs in B under autocast: a cast copy, or the tensor itself when already B.
    kept["sdpa_q"] = B * nq
    kept["sdpa_k"] = B * kv_width
    kept["sdpa_v"] = B * kv_width
    kept["sdpa_out"] = B * nq
    kept["sdpa_logsumexp"] = 4 * nh
    if setup.attention_mask:
        kept["sdpa_mask"] = B * seq_len
    linear("o_proj", "attn_out", B, nq)
    kept["mid"] = S * h  # input + attention: max(S, o) == S
    kept["mid_rms"] = 4
    y2 = max(F, S)
    g = linear("gate_proj", "y2", y2, h)
    u = linear("up_proj", "y2", y2, h)
    act = max(g, u)
    kept["gate_out"] = g * I  # SiLU's input
    kept["silu_out"] = g * I  # kept by the product for the up branch's gradient
    kept["up_out"] = u * I  # kept by the product for the gate branch's gradient
    linear("down_proj", "act", act, I)
    return sum(kept.values())


def head_bytes(shape: ModelShape, setup: TrainingSetup, labelled_tokens: int) -> int:
    """Peak of the LM head at labelled positions (our completion_loss), forward or backward.

    Forward: logits in B, their fp32 copy, log-softmax's fp32 output (kept); backward of the
    log-softmax holds its output, the incoming and the outgoing fp32 gradients. Under autocast
    the fp32 head weight is cast to B once per step and kept for the backward.
    """
    B, V, h = setup.compute_bytes, shape.vocab_size, shape.hidden_size
    fwd = (B if B != 4 else 0) + 4 + 4
    per_token = max(fwd, 12) * V + (B + 4) * h
    weight_copy = shape.vocab_size * h * B if setup.frozen_bytes != B and setup.bits is not None else 0
    return labelled_tokens * per_token + weight_copy


@dataclass(frozen=True)
class Estimate:
    """One configuration's predicted memory: `peak_allocated` is what
    torch.cuda.max_memory_allocated should read; `required` adds what the card needs beyond it."""

    micro_batch_size: int
    max_seq_length: int
    gradient_checkpointing: bool
    peak_allocated: int
    required: int
    breakdown: dict[str, int] = field(default_factory=dict)


def estimate(
    shape: ModelShape,
    setup: TrainingSetup,
    *,
    micro_batch_size: int,
    max_seq_length: int,
    gradient_checkpointing: bool,
    labelled_fraction: float = 1.0,
    context_bytes: int = DEFAULT_CONTEXT_BYTES,
    allocator_margin: float = DEFAULT_ALLOCATOR_MARGIN,
) -> Estimate:
    """Predicted memory of one training step at a micro-batch of `micro_batch_size` rows of up
    to `max_seq_length` tokens (the token budget is their product: packing fills it, padding
    is bounded by it). `labelled_fraction`: share of tokens with a label (1.0 = worst case)."""
    tokens = micro_batch_size * max_seq_length
    labelled = math.ceil(tokens * labelled_fraction)
    S = setup.frozen_bytes if setup.bits is not None else setup.compute_bytes
    h = shape.hidden_size
    parts = static_bytes(shape, setup)
    per_layer = layer_activation_bytes(shape, setup, max_seq_length)
    # Per token once: the last layer's output kept by the final norm, cos/sin for RoPE.
    per_token_once = S * h + 4 + 2 * shape.head_dim * S
    mask = tokens * max_seq_length if setup.attention_mask else 0  # the boolean mask, built once
    head = head_bytes(shape, setup, labelled)
    # Transients of the backward of one layer: the gradients of the MLP's wide intermediates
    # (about two alive at a time while what they came from is freed; measured on the CPU, see
    # tests) and the dequantised weight of the widest linear.
    largest = max(i * o for _, i, o in shape.layer_linears)
    dequantized = largest * setup.compute_bytes if setup.bits is not None else 0
    layer_backward = tokens * 2 * max(S, setup.compute_bytes) * shape.intermediate_size + dequantized
    if gradient_checkpointing:
        # Each checkpointed layer keeps only its input; the backward recomputes one layer at a
        # time, after the head's gradient is gone.
        kept = tokens * (shape.num_layers * S * h + per_token_once)
        transient = max(head, tokens * per_layer + layer_backward)
    else:
        # The first layer's input is the frozen embedding's output: nothing needs its gradient,
        # so its norm keeps nothing of it.
        kept = tokens * (shape.num_layers * per_layer - S * h + per_token_once)
        transient = max(head, layer_backward)
    # The peak is the head's backward (its logits' gradients) or a layer's backward, whichever
    # is larger, on top of everything kept for the backward.
    parts["activations"] = kept
    parts["attention_mask"] = mask
    parts["backward_transient"] = transient
    peak = sum(parts.values())
    required = math.ceil(peak * (1 + allocator_margin)) + context_bytes
    parts["allocator_margin"] = required - peak - context_bytes
    parts["cuda_context"] = context_bytes
    return Estimate(micro_batch_size, max_seq_length, gradient_checkpointing, peak, required, parts)


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitPlan:
    """What to run: rows per micro-batch (and the token budget that is), accumulation so that
    micro x accumulation x gpus == the asked effective batch, and checkpointing."""

    micro_batch_size: int
    micro_batch_tokens: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    predicted_peak_bytes: int  # allocated (compare with torch.cuda.max_memory_allocated)
    required_bytes: int  # + allocator margin + CUDA context (compare with the card)
    gpu_memory_bytes: int
    breakdown: dict[str, int]

    fits = True

    def as_dict(self) -> dict:
        return {"fits": True, **asdict(self)}


@dataclass(frozen=True)
class DoesNotFit:
    """Even one row per micro-batch with checkpointing is too big; `message` says what to change."""

    required_bytes: int
    gpu_memory_bytes: int
    max_seq_length: int
    largest_fitting_seq_length: int | None
    message: str

    fits = False

    def as_dict(self) -> dict:
        return {"fits": False, **asdict(self)}


def plan_fit(
    shape: ModelShape,
    *,
    batch_size: int,
    max_seq_length: int,
    gpu_memory_bytes: int,
    setup: TrainingSetup = TrainingSetup(),
    gradient_checkpointing: bool | Literal["auto"] = "auto",
    labelled_fraction: float = 1.0,
    context_bytes: int = DEFAULT_CONTEXT_BYTES,
    allocator_margin: float = DEFAULT_ALLOCATOR_MARGIN,
    gpu_name: str = "the GPU",
    rows_per_example: int = 1,
) -> FitPlan | DoesNotFit:
    """The largest micro-batch that fits, preferring no checkpointing (it costs ~1/3 more
    compute) whenever even one row fits without it; checkpointing turns on only when needed.

    `batch_size` is the effective batch the job asked for (examples per optimizer step over
    all GPUs); the micro-batch is a divisor of its per-GPU share so accumulation makes it exact.
    `rows_per_example`: 2 for DPO, whose every pair is a chosen and a rejected row in one
    forward: the micro-batch counts whole examples (a pair is never split) and the memory is
    that of the rows they are.
    """
    if batch_size % setup.gpus:
        raise ValueError(
            f"hyperparameters.batch_size: {batch_size} rows cannot be split evenly over resources.gpus {setup.gpus}"
        )
    per_gpu = batch_size // setup.gpus
    modes = [False, True] if gradient_checkpointing == "auto" else [bool(gradient_checkpointing)]
    common = dict(
        labelled_fraction=labelled_fraction, context_bytes=context_bytes, allocator_margin=allocator_margin
    )
    smallest = None
    for ckpt in modes:
        for micro in sorted((m for m in range(1, per_gpu + 1) if per_gpu % m == 0), reverse=True):
            est = estimate(
                shape, setup, micro_batch_size=micro * rows_per_example, max_seq_length=max_seq_length,
                gradient_checkpointing=ckpt, **common
            )
            if est.required <= gpu_memory_bytes:
                return FitPlan(
                    micro_batch_size=micro,
                    micro_batch_tokens=micro * rows_per_example * max_seq_length,
                    gradient_accumulation_steps=per_gpu // micro,
                    gradient_checkpointing=ckpt,
                    predicted_peak_bytes=est.peak_allocated,
                    required_bytes=est.required,
                    gpu_memory_bytes=gpu_memory_bytes,
                    breakdown=est.breakdown,
                )
            smallest = est
    fitting = largest_fitting_seq_length(shape, setup, gpu_memory_bytes, max_seq_length, modes[-1],
                                         rows=rows_per_example, **common)
    advice = (
        f"lower max_seq_length to {fitting} or less"
        if fitting
        else "the model's weights alone do not fit; use a GPU with more memory"
    )
    if not modes[-1]:  # checkpointing was refused by the job: would it fit with it?
        with_ckpt = estimate(shape, setup, micro_batch_size=rows_per_example, max_seq_length=max_seq_length,
                             gradient_checkpointing=True, **common)
        if with_ckpt.required <= gpu_memory_bytes:
            advice = f'set gradient_checkpointing to true or "auto", or {advice}'

    return DoesNotFit(
        required_bytes=smallest.required,
        gpu_memory_bytes=gpu_memory_bytes,
        max_seq_length=max_seq_length,
        largest_fitting_seq_length=fitting,
        message=(
            f"needs ~{_gib(smallest.required)} per GPU at max_seq_length {max_seq_length}; "
            f"{gpu_name} has {_gib(gpu_memory_bytes)}; {advice}"
        ),
    )


def largest_fitting_seq_length(
    shape: ModelShape, setup: TrainingSetup, gpu_memory_bytes: int, below: int, checkpointing: bool, rows: int = 1, **common
) -> int | None:
    """The longest sequence (a multiple of 64, < `below`) one example (`rows` rows) of which
    fits; None if none."""
    lo, hi = 0, below // 64
    while lo < hi:  # the estimate grows with the length: bisect on multiples of 64
        mid = (lo + hi + 1) // 2
        est = estimate(shape, setup, micro_batch_size=rows, max_seq_length=mid * 64, gradient_checkpointing=checkpointing, **common)
        if est.required <= gpu_memory_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo * 64 or None


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"
