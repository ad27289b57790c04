"""Packed micro-batches (docs/packing.md): examples never attend across their boundary, the first
token of an example is never trained to follow the previous one, the token-budget packer fills
its bins and is deterministic per (seed, epoch), and a paused packed run resumes onto the
uninterrupted run's adapter."""

from __future__ import annotations

import pytest
import torch

from core.training.attention import NAME, attn_implementation_for, varlen_mask
from core.training.batching import PaddingFreeCollator, completion_loss, varlen_attention
from core.training.encoding import IGNORE_INDEX
from core.training.packing import PackedBatchSampler, epoch_order, pack

LENGTHS = [5, 31, 12, 1, 24, 9]  # several examples of different lengths, one of a single token


def _examples(lengths, vocab=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def _packed_inputs(batch):
    keys = ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
    return {k: batch[k] for k in keys}


@pytest.fixture(scope="module")
def varlen_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                 attn_implementation=attn_implementation_for("cpu"))
    assert model.config._attn_implementation == NAME
    return model.eval()


@torch.no_grad()
def test_packed_logits_equal_each_example_run_alone(varlen_model):
    """The proof, on the attention path `packing` uses on the CPU: one packed row of examples of
    different lengths gives, position for position, the logits of each example run alone."""
    examples = _examples(LENGTHS)
    batch = PaddingFreeCollator()([{"input_ids": e, "labels": e} for e in examples])
    packed = varlen_model(**_packed_inputs(batch)).logits[0]
    alone = torch.cat([varlen_model(input_ids=torch.tensor([e])).logits[0] for e in examples])
    assert packed.shape == alone.shape == (sum(LENGTHS), varlen_model.config.vocab_size)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    # The same row with positions that do not restart is one long sequence: the later examples
    # see the earlier ones and their logits change (the comparison above can fail).
    leaky = varlen_model(input_ids=batch["input_ids"]).logits[0]
    assert (leaky[LENGTHS[0]:] - alone[LENGTHS[0]:]).abs().max() > 1e-2


@torch.no_grad()
def test_boundaries_come_from_positions_when_the_batch_has_none(varlen_model):
    """A caller that passes only restarting position_ids (no cu_seq_lens) gets the same
    per-example attention, and no dense mask is ever built for a packed row."""
    examples = _examples(LENGTHS, seed=1)
    batch = PaddingFreeCollator()([{"input_ids": e, "labels": e} for e in examples])
    with_cu = varlen_model(**_packed_inputs(batch)).logits
    positions_only = varlen_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    torch.testing.assert_close(positions_only, with_cu, atol=1e-6, rtol=1e-6)
    n = sum(LENGTHS)
    assert varlen_mask(batch_size=1, q_length=n, kv_length=n, attention_mask=None) is None


def test_padded_batches_get_exactly_the_sdpa_mask(varlen_model, tiny_model_dir):
    """Evaluation and the unpacked path (padded rows) behave exactly as under "sdpa"."""
    from transformers import AutoModelForCausalLM

    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        ours, ref = varlen_model(input_ids=ids, attention_mask=mask).logits, sdpa(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(ours, ref)


def test_first_token_of_an_example_is_never_trained_on_the_previous_one(varlen_model):
    """The label of every example's first token is ignored in the packed row (it would be the
    previous example's last token predicting it), and the packed loss is the sum of the
    examples' own losses."""
    examples = _examples(LENGTHS, seed=2)
    feats = [{"input_ids": e, "labels": e} for e in examples]
    batch = PaddingFreeCollator()(feats)
    starts = batch["cu_seq_lens_q"][:-1].tolist()
    assert starts == [0, *torch.tensor(LENGTHS).cumsum(0)[:-1].tolist()]
    assert all(batch["labels"][0, s] == IGNORE_INDEX for s in starts)
    assert (batch["labels"][0] != IGNORE_INDEX).sum() == sum(n - 1 for n in LENGTHS)
    with torch.no_grad():
        packed_sum, packed_n, _ = completion_loss(varlen_model, batch)
        alone = [completion_loss(varlen_model, PaddingFreeCollator()([f])) for f in feats]
    assert int(packed_n) == sum(int(n) for _, n, _ in alone)
    assert float(packed_sum) == pytest.approx(sum(float(s) for s, _, _ in alone), rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_varlen_kernel_equals_each_example_alone():
    """The CUDA path (torch's varlen_attn, GQA) against each example alone, in bf16 with grads."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from core.training.attention import varlen_kernel_available

    assert attn_implementation_for("cuda") == (NAME if varlen_kernel_available() else "sdpa")
    if not varlen_kernel_available():
        pytest.skip("this GPU has no varlen kernel (sm80+)")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=32)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=NAME).cuda().eval()
    examples = _examples([70, 3, 129, 40], vocab=256)
    batch = PaddingFreeCollator()([{"input_ids": e, "labels": e} for e in examples])
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in _packed_inputs(batch).items()}
    packed = model(**batch).logits[0].float()
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([e], device="cuda")).logits[0].float() for e in examples])
    torch.testing.assert_close(packed.detach(), alone, atol=3e-2, rtol=3e-2)
    packed.logsumexp(-1).mean().backward()  # the kernel's backward runs and reaches every layer
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert varlen_attention(model)


# --- the packer ------------------------------------------------------------------------------


def test_best_fit_decreasing_respects_the_budget_and_places_every_example_once():
    lengths = [7, 3, 9, 2, 2, 5, 10, 1, 8, 4, 6, 6]
    bins = pack(lengths, budget=10, seed=0)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 7  # sum 63 -> at least 7 bins of 10: BFD reaches the bound here
    assert pack([25, 3, 4], budget=10) == [[0], [2, 1]]  # too long for any bin: alone, never cut


@pytest.fixture(scope="module")
def news_lengths(tiny_tokenizer, tiny_model_dir, news_file):
    from core.spec import JobSpec
    from core.training.data import prepare

    spec = JobSpec(model=str(tiny_model_dir), training_file=str(news_file),
                   template={"prompt": "다음 글을 요약해주세요:\n{document}", "completion": "{summary}"},
                   hyperparameters={"max_seq_length": 1024, "batch_size": 4})
    return [len(e.input_ids) for e in prepare(spec, tiny_tokenizer).train]


def test_packing_fills_the_token_budget_on_the_korean_news(news_lengths):
    """Bins of batch_rows x max_seq_length tokens over the news rows: how much of the budget
    holds real tokens, against padding each row of a 4-row batch to its longest."""
    budget = 4 * 1024
    sampler = PackedBatchSampler(news_lengths, budget, seed=0)
    padded = [max(news_lengths[i:i + 4]) * len(news_lengths[i:i + 4]) for i in range(0, len(news_lengths), 4)]
    padded_fill = sum(news_lengths) / sum(padded)
    lower_bound = -(-sum(news_lengths) // budget)
    assert len(sampler) == lower_bound > 1  # as few micro-batches as the tokens allow
    fills = sorted(sum(news_lengths[i] for i in b) / budget for b in sampler.bins)
    assert fills[1] > 0.99  # every bin but the one holding the remainder is full (measured 99.9%)
    assert padded_fill < 0.8  # where padded 4-row batches waste over a fifth (measured 78%)


def test_batches_are_deterministic_per_seed_and_epoch_and_cover_every_example(news_lengths):
    a, b = PackedBatchSampler(news_lengths, 2048, seed=3), PackedBatchSampler(news_lengths, 2048, seed=3)
    epochs = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        got = list(a)
        assert got == list(b)  # same (seed, epoch): same batches, a resumed run included
        assert sorted(i for batch in got for i in batch) == list(range(len(news_lengths)))  # each once
        assert len(got) == len(a)  # the same count every epoch (the Trainer's steps per epoch)
        epochs.append(got)
    assert epochs[0] != epochs[1]  # a new order each epoch
    assert epoch_order(50, 3, 1) == epoch_order(50, 3, 1) != epoch_order(50, 4, 1)


# --- the trainer -----------------------------------------------------------------------------


def test_auto_stays_off_on_the_cpu_and_true_packs_to_the_budget(tiny_model_dir, learn_file, tmp_path):
    from transformers import AutoTokenizer

    from core.training.data import prepare
    from core.training.model import load_model
    from core.training.trainer import build_trainer
    from tests.training.test_pipeline import learn_spec

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = learn_spec(tiny_model_dir, learn_file, max_steps=1)
    data = prepare(spec, tok)
    model = load_model(spec, torch.float32)
    assert not varlen_attention(model)
    auto = build_trainer(spec, model, tok, data.train, [], tmp_path / "a", torch.float32)
    assert auto.packed_batches is None
    packed_spec = learn_spec(tiny_model_dir, learn_file, max_steps=1, packing=True, batch_size=2)
    packed = build_trainer(packed_spec, model, tok, data.train, [], tmp_path / "b", torch.float32)
    budget = 2 * packed_spec.hyperparameters.max_seq_length
    assert packed.packed_batches.budget == budget
    batches = list(packed.get_train_dataloader())
    assert len(batches) == len(packed.packed_batches)
    assert all(b["input_ids"].shape[0] == 1 and b["input_ids"].shape[1] <= budget for b in batches)
    assert sum(len(b["cu_seq_lens_q"]) - 1 for b in batches) == len(data.train)


@pytest.fixture(scope="module")
def packed_spec(tiny_model_dir, learn_file):
    from tests.training.test_pipeline import learn_spec

    # 8 short rows; a budget of 2 x 32 tokens packs them into a few micro-batches per epoch.
    spec = learn_spec(tiny_model_dir, learn_file, n_epochs=3, learning_rate=2e-3, checkpoint_every_steps=100,
                      packing=True, batch_size=2, max_seq_length=32)
    return spec.model_copy(update={"validation_file": None})


@pytest.fixture(scope="module")
def packed_straight(packed_spec, tmp_path_factory):
    from core.training.pipeline import run

    out = tmp_path_factory.mktemp("packed-straight")
    result = run(packed_spec, out)
    assert result.status == "succeeded"
    return out, result.global_step


def test_paused_packed_run_resumes_onto_the_uninterrupted_adapter(packed_spec, packed_straight, tmp_path):
    from core.training.pipeline import run
    from tests.training.test_pipeline import pause_at
    from tests.training.test_precision import _adapter, _losses

    straight, total = packed_straight
    assert total >= 6
    k = total // 2 + 1  # 4 bins an epoch, 12 steps: step 7 is mid-way through the second epoch
    assert run(packed_spec, tmp_path, should_stop=pause_at(k)).global_step == k
    resumed = run(packed_spec, tmp_path)
    assert resumed.status == "succeeded" and resumed.resumed_from.name == f"checkpoint-{k}"
    got, want = _losses(tmp_path), _losses(straight)
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, total + 1))
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-7)
    a, b = _adapter(straight), _adapter(tmp_path)
    assert a.keys() == b.keys()
    assert max(float((a[n] - b[n]).abs().max()) for n in a) == 0.0  # bitwise on the CPU


def test_two_ranks_train_packed_micro_batches(tiny_model_dir, learn_file, tmp_path):
    """`packing: true` under DDP (two CPU ranks, gloo): accelerate shards the packer's bins."""
    from tests.training.test_distributed import finish, pairs_spec, read_events, two_ranks

    spec = pairs_spec(tiny_model_dir, learn_file, n_epochs=2, checkpoint_every_steps=100, packing=True,
                      max_seq_length=32)
    proc, events = two_ranks(tmp_path, spec.model_copy(update={"validation_file": None}))
    assert finish(proc, tmp_path) == 0, (tmp_path / "child.log").read_text(errors="replace")[-3000:]
    got = read_events(events)
    steps = [e for e in got if e["type"] == "metrics" and "loss" in e["values"]]
    # 8 rows of ~23 tokens in bins of 2 x 32 tokens: 4 bins, 2 per rank -> 2 steps an epoch.
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert all(e["values"]["loss"] > 0 for e in steps)
    results = [e for e in got if e["type"] == "result"]
    assert len(results) == 1 and results[0]["status"] == "succeeded"
