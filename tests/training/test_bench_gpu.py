"""bench/gpu.py's model source, checked here because its only real run is a scarce GPU one: the
random weights go through transformers' own 4-bit loading (every decoder linear quantised, with
its quantisation state) and are the same for every variant (seeded)."""

from __future__ import annotations

import pytest

from bench.gpu import TINY, flops_per_token, random_weights, write_model_dir


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("random-llama"), TINY)


def test_random_weights_are_quantised_like_a_checkpoint_and_seeded(random_dir):
    import bitsandbytes as bnb
    import torch
    from bitsandbytes.functional import dequantize_4bit

    from core.spec import JobSpec
    from core.training.model import load_model

    spec = JobSpec(model=str(random_dir), training_file="unused.jsonl")
    weights = []
    for _ in range(2):
        with random_weights(seed=0):
            model = load_model(spec, torch.float32)
        linears = [m for m in model.get_base_model().modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert len(linears) == 7 * TINY["num_hidden_layers"]
        q = linears[0].weight
        assert q.dtype == torch.uint8 and q.quant_state.nested  # nf4 + double quant
        weights.append(dequantize_4bit(q.data, q.quant_state))
    assert weights[0].std() > 0 and torch.equal(weights[0], weights[1])


def test_flops_per_token_of_the_8b_shape():
    from transformers import LlamaConfig

    from bench.gpu import LLAMA3_8B
    from core.memory_plan import TrainingSetup, lora_params
    from core.training.model_shape import shape_from_config

    shape = shape_from_config(LlamaConfig(**LLAMA3_8B))
    lora = lora_params(shape, TrainingSetup())
    base = 8_030_261_248 - 128256 * 4096
    attention = 12 * 32 * 4096 * (1023 + 1) / 2
    assert flops_per_token(shape, lora, 1023) == 4 * base + 6 * lora + attention
