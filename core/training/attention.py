"""Boundary-safe attention for packed rows without the flash-attn package: "tuneforge_varlen".

A packed micro-batch is one row holding several examples back to back, `position_ids`
restarting at 0 for each (batching.PaddingFreeCollator). Each example must attend only to its
own earlier tokens. The options that install from PyPI alone (docs/packing.md compares them):

- sdpa + transformers' block-diagonal mask built from position_ids: correct, but materialises a
  dense (rows, 1, L, L) mask each forward (16 MiB of bool per row at L = 4096, 256 MiB at 16k),
  and SDPA with an explicit mask cannot use its flash backend: it runs the memory-efficient or
  math kernel, doing the O(L^2) work of the masked-out blocks too.
- flex_attention with a document mask: no dense mask, skips empty blocks, but compiles per
  shape (torch.compile, Triton) -- minutes of warm-up on varying packed lengths, and a
  recompile whenever the block structure changes shape.
- torch's own `torch.nn.attention.varlen.varlen_attn` (PyTorch >= 2.12, CUDA, sm80+): the
  FlashAttention-2 varlen kernel that ships inside the torch wheel, with GQA
  (`enable_gqa`) and autograd. No mask at all, no wasted work across boundaries, no compile.
  That is what this module registers on CUDA.

The function registered here, `varlen_attention_forward`, takes the segment boundaries
(`cu_seq_lens_q/k`, `max_length_q/k`, the names transformers' flash path uses) from the batch
the collator built -- computed once per batch on the host, so no layer forces a device sync --
or, when a caller passed none, derives them from `position_ids` the same way. Then:
- on CUDA in fp16/bf16: `varlen_attn` over the flattened tokens;
- otherwise (the CPU, fp32): SDPA once per segment (is_causal within the segment). Each
  example's attention is computed from its own queries, keys and values only, so it cannot
  see another example: boundary-safe by construction, which is what the CPU proof exercises.
Batches with padding (a 2D attention_mask with zeros) or a KV cache (generation) take plain
SDPA with the usual mask: the registered mask function builds exactly sdpa's mask then.
"""

from __future__ import annotations

import inspect
import itertools

import torch
import torch.nn.functional as F

NAME = "tuneforge_varlen"
PACKED_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def varlen_kernel_available(device: str | torch.device = "cuda") -> bool:
    """torch ships `varlen_attn` and this GPU runs its FlashAttention-2 kernel (sm80+)."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return False
    # Before torch 2.12 varlen_attn had no `enable_gqa` (and in 2.9 no `window_size`).
    params = inspect.signature(varlen_attn).parameters
    if not {"enable_gqa", "window_size"} <= params.keys():
        return False
    return torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)


def attn_implementation_for(device: str | torch.device) -> str:
    """The `attn_implementation=` to load a model with on this device.

    "tuneforge_varlen" wherever it runs: on CUDA it needs the varlen kernel (else "sdpa",
    whose packed path is transformers' block-diagonal mask), on the CPU its per-segment path
    is what `packing: true` uses there. Padded batches behave exactly as under "sdpa".
    """
    dev = torch.device(device).type
    if dev == "cuda":
        return NAME if varlen_kernel_available(device) else "sdpa"
    return NAME if dev == "cpu" else "sdpa"


def packed_kwargs(lengths: list[int]) -> dict:
    """The segment boundaries of one packed row of examples of these lengths (host-side ints:
    building them here costs nothing, deriving them per layer would sync the GPU each time)."""
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    longest = max(lengths)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def _segments_from_positions(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """cu_seqlens over the flattened (rows x length) tokens: a segment starts at every row start
    and wherever the position does not follow the previous one by exactly 1."""
    rows, length = position_ids.shape
    diff = torch.diff(position_ids, dim=-1, prepend=position_ids[:, :1] - 1)
    starts = diff != 1
    starts[:, 0] = True
    idx = starts.reshape(-1).nonzero().view(-1).to(torch.int32)
    cu = torch.cat([idx, torch.tensor([rows * length], dtype=torch.int32, device=idx.device)])
    return cu, int((cu[1:] - cu[:-1]).max())


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention within segments only. query (B, Hq, T, D), key/value (B, Hkv, T, D) ->
    (B, T, Hq, D), as every transformers attention function returns it."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    cu = kwargs.get("cu_seq_lens_q")
    positions = kwargs.get("position_ids")
    same_length = key.shape[2] == length
    if cu is None and attention_mask is None and same_length and positions is not None:
        cu, longest = _segments_from_positions(positions.expand(batch, -1))
    else:
        longest = kwargs.get("max_length_q")
    if cu is None or attention_mask is not None or not same_length or not causal:
        # Padded batches, a KV cache, or bidirectional attention: plain SDPA with its mask.
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    cu = cu.to(query.device, torch.int32)
    kv_heads = key.shape[1]
    flat = lambda t: t.transpose(1, 2).reshape(batch * length, t.shape[1], dim)  # (B*T, H, D)
    q, k, v = flat(query), flat(key), flat(value)
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0:
        from torch.nn.attention.varlen import varlen_attn

        longest = int(longest) if longest is not None else int((cu[1:] - cu[:-1]).max())
        out = varlen_attn(
            q, k.to(q.dtype), v.to(q.dtype), cu, cu, longest, longest,
            scale=scaling, window_size=(-1, 0), enable_gqa=kv_heads != heads,
        )
    else:
        out = _per_segment_sdpa(q, k, v, cu, scaling, dropout if module.training else 0.0)
    return out.reshape(batch, length, heads, dim), None


def _per_segment_sdpa(q, k, v, cu, scaling, dropout) -> torch.Tensor:
    """Causal SDPA on each segment's own q/k/v: nothing outside the segment is an input."""
    gqa = k.shape[1] != q.shape[1]
    bounds = cu.tolist()
    parts = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        seg = lambda t: t[s:e].transpose(0, 1).unsqueeze(0)  # (1, H, n, D)
        o = F.scaled_dot_product_attention(
            seg(q), seg(k), seg(v), dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa
        )
        parts.append(o.squeeze(0).transpose(0, 1))  # (n, H, D)
    return torch.cat(parts, dim=0)


def varlen_mask(*, batch_size, q_length, kv_length, attention_mask=None, **kwargs):
    """No mask where the attention function finds the segments itself (no padding, no cache);
    exactly sdpa's mask otherwise (padded batches, generation)."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and q_length == kv_length:
        return None
    return sdpa_mask(
        batch_size=batch_size, q_length=q_length, kv_length=kv_length, attention_mask=attention_mask, **kwargs
    )


def register() -> None:
    """Make NAME a valid `attn_implementation` (idempotent; runs when this module is imported)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, varlen_mask)


register()
