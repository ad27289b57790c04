"""Training numerics (DESIGN §6.8-9): fp32 master weights for the adapter, an exact resume,
evaluation that leaves the training weights alone, and a token-weighted eval loss."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from core.training.pipeline import run
from tests.training.test_pipeline import learn_spec, pause_at


def _trainer(tiny_model_dir, learn_file, tmp_path, **hp):
    from transformers import AutoTokenizer

    from core.training.data import prepare
    from core.training.model import load_model
    from core.training.trainer import build_trainer

    spec = learn_spec(tiny_model_dir, learn_file, **hp)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = prepare(spec, tok)
    model = load_model(spec, torch.float32)
    return build_trainer(spec, model, tok, data.train, data.eval, tmp_path / "ckpt", torch.float32)


def _batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def _grads(trainer, batch) -> dict[str, torch.Tensor]:
    model = trainer.model
    model.train()
    model.zero_grad()
    trainer.compute_loss(model, batch).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return grads


def test_adapter_weights_stay_fp32_and_every_entry_moves(tiny_model_dir, learn_file, tmp_path):
    """TRL casts the LoRA weights of a 4-bit model to bf16 when the trainer is built; in bf16
    ~60% of lora_A entries do not move in one Adam step at lr 2e-4."""
    from transformers import TrainerCallback

    trainer = _trainer(tiny_model_dir, learn_file, tmp_path, learning_rate=2e-4, max_steps=2)
    trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and {p.dtype for p in trainable.values()} == {torch.float32}
    snapshot = {}

    class AfterFirstStep(TrainerCallback):  # lora_B starts at 0, so lora_A moves from step 2 on
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                snapshot.update({n: p.detach().clone() for n, p in trainable.items() if "lora_A" in n})

    trainer.add_callback(AfterFirstStep())
    trainer.train()
    moved = sum(int((trainable[n].detach() != w).sum()) for n, w in snapshot.items())
    assert moved / sum(w.numel() for w in snapshot.values()) > 0.99


def test_evaluation_leaves_training_weights_as_they_were(tiny_model_dir, learn_file, tmp_path):
    """bitsandbytes repacks 4-bit weights for a CPU inference kernel in eval mode; the next
    training steps must not see it."""
    trainer = _trainer(tiny_model_dir, learn_file, tmp_path, max_steps=1)
    batch = _batch(trainer)
    before = _grads(trainer, batch)
    trainer.evaluate()
    after = _grads(trainer, batch)
    for name, g in before.items():
        assert torch.equal(g, after[name]), name


def test_eval_loss_is_token_weighted(tiny_model_dir, learn_file, tmp_path):
    """Eval during training: sum of token losses / labelled tokens, as in the final report,
    not a mean of per-batch means (rows have different completion lengths)."""
    from core.training.batching import DynamicPaddingCollator, completion_loss

    trainer = _trainer(tiny_model_dir, learn_file, tmp_path, max_steps=1, batch_size=3)
    total = count = 0.0
    batch_means = []
    collate = DynamicPaddingCollator(trainer.processing_class.pad_token_id)
    trainer.model.eval()
    with torch.no_grad():
        for ex in trainer.eval_examples:
            s, n, _ = completion_loss(trainer.model, collate([ex.as_features()]))
            total, count = total + float(s), count + float(n)
            batch_means.append(float(s) / float(n))
    assert trainer.evaluate()["eval_loss"] == pytest.approx(total / count, rel=1e-6)
    assert total / count != pytest.approx(sum(batch_means) / len(batch_means), rel=1e-4)


def _adapter(out):
    return load_file(out / "adapter" / "adapter_model.safetensors")


def _losses(out):
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [(m["step"], m["loss"]) for m in lines if "loss" in m]


@pytest.fixture(scope="module")
def resume_spec(tiny_model_dir, learn_file):
    # 8 rows, batch 4: two steps an epoch, six in all; no validation, so no generation.
    spec = learn_spec(tiny_model_dir, learn_file, n_epochs=3, learning_rate=2e-3, checkpoint_every_steps=100)
    return spec.model_copy(update={"validation_file": None})


@pytest.fixture(scope="module")
def straight_run(resume_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    assert run(resume_spec, out).global_step == 6
    return out


@pytest.mark.parametrize("k", [1, 3], ids=["in-first-epoch", "across-epoch-boundary"])
def test_resumed_run_ends_on_the_uninterrupted_adapter(resume_spec, straight_run, tmp_path, k):
    assert run(resume_spec, tmp_path, should_stop=pause_at(k)).global_step == k
    resumed = run(resume_spec, tmp_path)
    assert resumed.status == "succeeded" and resumed.resumed_from.name == f"checkpoint-{k}"
    got_losses, want_losses = _losses(tmp_path), _losses(straight_run)
    assert [s for s, _ in got_losses] == [s for s, _ in want_losses] == list(range(1, 7))
    assert [v for _, v in got_losses] == pytest.approx([v for _, v in want_losses], rel=1e-6, abs=1e-7)
    want, got = _adapter(straight_run), _adapter(tmp_path)
    assert want.keys() == got.keys()
    worst = max(float((want[n] - got[n]).abs().max()) for n in want)
    assert worst <= (1e-6 if torch.cuda.is_available() else 0.0), worst  # bitwise on the CPU
