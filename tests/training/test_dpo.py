"""DPO end to end on the tiny 4-bit model: preference pairs are learned (held-in preference
accuracy goes to 1.0 while the base stays where it was), per-step DPO metrics are reported,
the reference is the adapter disabled, and a paused run resumes onto the same trajectory."""

from __future__ import annotations

import json

import pytest

from core.spec import JobSpec
from core.training.pipeline import run
from tests.training.conftest import PAIRS
from tests.training.test_pipeline import RecordingReporter, pause_at


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory):
    """Eight one-turn preference rows in OpenAI's format: the right meaning is preferred over
    the next word's meaning."""
    p = tmp_path_factory.mktemp("dpo") / "pairs.jsonl"
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"{a}의 뜻은?"}]},
            "preferred_output": [{"role": "assistant", "content": b}],
            "non_preferred_output": [{"role": "assistant", "content": PAIRS[(i + 1) % len(PAIRS)][1]}],
        }
        for i, (a, b) in enumerate(PAIRS)
    ]
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


def dpo_spec(model_dir, data, **hp) -> JobSpec:
    return JobSpec(
        model=str(model_dir),
        training_file=str(data),
        validation_file=str(data),
        method={"type": "dpo", "dpo": {"beta": 0.1}},
        hyperparameters={
            "n_epochs": 6,
            "learning_rate": 1e-2,
            "batch_size": 4,
            "max_seq_length": 64,
            "warmup_ratio": 0.0,
            "lr_scheduler": "constant",
            **hp,
        },
        lora={"dropout": 0.0},
        evaluation={"generation_samples": 2},
    )


@pytest.fixture(scope="module")
def trained(tiny_model_dir, pairs_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo-run")
    rep = RecordingReporter()
    spec = dpo_spec(tiny_model_dir, pairs_file)
    spec = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"eval_every_steps": 6})})
    result = run(spec, out, rep)
    return result, rep, out


def test_dpo_learns_held_in_preferences(trained):
    result, _, out = trained
    assert result.status == "succeeded" and result.global_step == 12
    report = json.loads((out / "eval_report.json").read_text())
    assert report["method"] == "dpo" and report["num_eval_rows"] == 8
    assert report["metrics"]["preference_accuracy"] == 1.0
    assert report["metrics"]["reward_accuracy"] == 1.0 and report["metrics"]["reward_margin"] > 0
    assert report["base_metrics"]["preference_accuracy"] < 1.0
    assert report["comparison"]["preference_accuracy"] == {
        "base": report["base_metrics"]["preference_accuracy"],
        "tuned": 1.0,
    }


def test_dpo_metrics_per_step(trained):
    _, rep, out = trained
    steps = [v for _, v in rep.steps if "loss" in v]
    assert [v["step"] for v in steps] == list(range(1, 13))
    for v in steps:
        assert {"loss", "rewards_chosen", "rewards_rejected", "rewards_margin", "reward_accuracy"} <= set(v)
        assert v["rewards_margin"] == pytest.approx(v["rewards_chosen"] - v["rewards_rejected"], abs=1e-5)
    # The reference is the base (adapter disabled, B = 0 at the start): step 1's loss is log 2.
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert steps[-1]["reward_accuracy"] == 1.0 and steps[-1]["loss"] < steps[0]["loss"]
    during = [v for _, v in rep.steps if "eval_loss" in v]  # evaluation.eval_every_steps: 6
    assert [v["step"] for v in during] == [6, 12]
    assert {"eval_rewards_margin", "eval_reward_accuracy", "eval_rewards_chosen"} <= set(during[0])
    final = [v for _, v in rep.steps if "eval_preference_accuracy" in v]
    assert final and final[-1]["eval_preference_accuracy"] == 1.0
    assert (out / "adapter" / "adapter_config.json").exists()
    assert json.loads((out / "spec.json").read_text())["spec"]["method"] == {"type": "dpo", "dpo": {"beta": 0.1}}


def test_dpo_pause_then_resume_same_trajectory(tiny_model_dir, pairs_file, tmp_path):
    """As supervised runs do (test_pipeline): a paused DPO run resumes from its checkpoint
    onto the same losses and rewards as an uninterrupted run."""
    spec = dpo_spec(tiny_model_dir, pairs_file, n_epochs=3, checkpoint_every_steps=2)
    spec = spec.model_copy(update={"validation_file": None})
    first = run(spec, tmp_path, should_stop=pause_at(3))
    assert first.status == "paused" and first.global_step == 3
    assert (tmp_path / "checkpoints" / "checkpoint-3" / "tuneforge.json").exists()
    rep = RecordingReporter()
    second = run(spec, tmp_path, rep)
    assert second.status == "succeeded" and second.global_step == 6
    assert second.resumed_from.name == "checkpoint-3"
    assert any("resuming from checkpoint-3" in e for e in rep.events)
    resumed = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in resumed] == list(range(1, 7))
    straight = tmp_path / "straight"
    assert run(spec, straight).global_step == 6
    reference = [json.loads(ln) for ln in (straight / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "rewards_chosen", "rewards_rejected", "learning_rate"):
        assert [m[key] for m in resumed] == pytest.approx([m[key] for m in reference], rel=1e-6, abs=1e-9), key


def test_dpo_reference_is_the_adapter_disabled(tiny_model_dir, pairs_file, tmp_path):
    """No second copy of the model and no reference adapter: TRL's "ref" copy is removed."""
    from core.training.dpo import build_dpo_trainer
    from core.training.model import compute_dtype, load_model, load_tokenizer
    from core.training.preference import prepare_pairs

    spec = dpo_spec(tiny_model_dir, pairs_file)
    tok = load_tokenizer(spec)
    data = prepare_pairs(spec, tok)
    dtype = compute_dtype("auto")
    model = load_model(spec, dtype)
    trainer = build_dpo_trainer(spec, model, tok, data.train, [], tmp_path, dtype)
    assert trainer.ref_model is None
    assert list(trainer.model.peft_config) == ["default"]
    assert not any(".ref." in n for n, _ in trainer.model.named_parameters())


def test_dry_run_reports_pairs(tiny_model_dir, pairs_file):
    from core.training.dry_run import dry_run

    report = dry_run(dpo_spec(tiny_model_dir, pairs_file))
    assert report["method"] == "dpo" and report["rows_read"] == 16
    assert report["train_rows"] == 8 and report["dropped"] == 0 and report["estimated_steps"] == 12


def test_pairs_share_the_prompt_and_end_at_the_terminator(tiny_model_dir, tiny_tokenizer, pairs_file):
    from core.training.encoding import turn_terminator
    from core.training.preference import prepare_pairs

    data = prepare_pairs(dpo_spec(tiny_model_dir, pairs_file), tiny_tokenizer)
    term = turn_terminator(tiny_tokenizer)[1]
    for p in data.train:
        assert p.chosen_ids[-1] == term and p.rejected_ids[-1] == term
        assert p.chosen_ids != p.rejected_ids
        assert tiny_tokenizer.decode(p.chosen_ids, skip_special_tokens=True).strip() == PAIRS[p.row][1]
        assert PAIRS[p.row][0] in tiny_tokenizer.decode(p.prompt_ids)
    short = prepare_pairs(dpo_spec(tiny_model_dir, pairs_file, max_seq_length=12), tiny_tokenizer)
    assert short.train == [] and short.report["dropped_by_reason"] == {"too long": 16}
    with pytest.raises(Exception, match="no usable preference pairs"):
        short.require_training_rows()


def test_dpo_from_an_adapter_uses_it_as_start_and_reference(trained, tiny_model_dir, pairs_file, tmp_path):
    """`from_checkpoint`: the policy starts from the given adapter and DPO's reference is that
    adapter (frozen), so the first step's loss is log 2 again although the start already
    prefers the preferred outputs; only the trained adapter is saved."""
    _, _, first = trained
    spec = dpo_spec(tiny_model_dir, pairs_file, n_epochs=1, learning_rate=1e-3)
    spec = spec.model_copy(update={"from_checkpoint": str(first / "adapter")})
    rep = RecordingReporter()
    result = run(spec, tmp_path, rep)
    assert result.status == "succeeded" and result.global_step == 2
    steps = [v for _, v in rep.steps if "loss" in v]
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    report = json.loads((tmp_path / "eval_report.json").read_text())
    assert report["metrics"]["preference_accuracy"] == 1.0  # it started from a model that had learned them
    assert report["base_metrics"]["preference_accuracy"] < 1.0  # (the base had not)
    assert report["metrics"]["reward_accuracy"] == 1.0  # and moved on from its start
    assert not (tmp_path / "adapter" / "ref").exists()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_from_checkpoint_that_is_not_an_adapter_is_a_user_error(tiny_model_dir, pairs_file, tmp_path):
    from core.training.errors import TrainingInputError

    spec = dpo_spec(tiny_model_dir, pairs_file).model_copy(update={"from_checkpoint": str(tmp_path)})
    with pytest.raises(TrainingInputError, match="from_checkpoint: .* holds no PEFT adapter"):
        run(spec, tmp_path / "out")


def test_supervised_spec_hash_is_unchanged_by_the_new_fields(tiny_model_dir, learn_file):
    """Specs written before `method` and `from_checkpoint` existed keep their hash, so their
    checkpoints still resume; a DPO spec hashes differently."""
    sft = JobSpec(model=str(tiny_model_dir), training_file=str(learn_file))
    assert "method" not in sft.canonical_json() and "from_checkpoint" not in sft.canonical_json()
    dpo = sft.model_copy(update={"method": JobSpec.model_fields["method"].annotation(type="dpo")})
    assert '"method":{"dpo":{"beta":0.1},"type":"dpo"}' in dpo.canonical_json()
    assert dpo.hash() != sft.hash()
