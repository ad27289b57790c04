"""The shape of a built model, counted from its modules (torch side of core.memory_plan).

The memory model itself is arithmetic in `core.memory_plan`, importable by the API and the
scheduler; only counting a constructed model (on the meta device: no weights, no memory)
needs torch and transformers, so it lives here.
"""

from __future__ import annotations

from core.memory_plan import ATTENTION, MLP, ModelShape, UnsupportedModel


def shape_from_config(config) -> ModelShape:
    """Build the model on the meta device (no memory, no weights) and read its shape off it."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return shape_from_model(model)


def shape_from_model(model) -> ModelShape:
    """The shape of a constructed (meta, CPU or GPU) causal LM, counted from its modules."""
    import torch

    cfg = model.config
    layers = _decoder_layers(model)
    layer0 = layers[0]
    linears = tuple(
        (name.rsplit(".", 1)[-1], m.in_features, m.out_features)
        for name, m in layer0.named_modules()
        if isinstance(m, torch.nn.Linear)
    )
    names = {n for n, _, _ in linears}
    if not set(ATTENTION + MLP) <= names or len(linears) != len(ATTENTION + MLP):
        raise UnsupportedModel(
            f"{type(model).__name__}: the memory model covers Llama-family decoders "
            f"(q/k/v/o/gate/up/down_proj); this one has {sorted(names)}"
        )
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = head is embed
    linear_weights = {id(m.weight) for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Linear)}
    other = sum(  # norms and biases; parameters() already skips a tied head
        p.numel() for p in model.parameters() if id(p) not in linear_weights and p is not embed and p is not head
    )
    heads = cfg.num_attention_heads
    return ModelShape(
        hidden_size=cfg.hidden_size,
        num_layers=len(layers),
        num_heads=heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        intermediate_size=cfg.intermediate_size,
        vocab_size=embed.shape[0],
        tied_embeddings=tied,
        layer_linears=linears,
        embedding_params=embed.numel(),
        head_params=0 if tied else head.numel(),
        other_params=other,
    )


def _decoder_layers(model):
    import torch

    n = model.config.num_hidden_layers
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == n:
            return m
    raise UnsupportedModel(f"{type(model).__name__}: no list of {n} decoder layers found")
