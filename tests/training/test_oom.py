"""The OOM retry of `run()` (DESIGN: "A CUDA out-of-memory during training is not a
failure"), driven on the CPU by the injected fault of core.training.faults: the attempt goes
on with half the micro-batch, accumulation doubled and checkpointing on, on the same
trajectory; a second out-of-memory fails with a message that says what to lower."""

from __future__ import annotations

import json

import pytest

from core.training.errors import TrainingOutOfMemory
from core.training.faults import INJECT_OOM_ENV, callbacks
from core.training.pipeline import run
from tests.training.test_pipeline import RecordingReporter, learn_spec
from tests.training.test_precision import _losses


class EventReporter(RecordingReporter):
    def __init__(self):
        super().__init__()
        self.full_events = []

    def event(self, level, message, data=None):
        super().event(level, message, data)
        self.full_events.append((level, message, data))


@pytest.fixture(scope="module")
def oom_spec(tiny_model_dir, learn_file):
    # 8 rows, batch 4: two optimizer steps an epoch, six in all; a checkpoint every 2 steps.
    spec = learn_spec(tiny_model_dir, learn_file, n_epochs=3, learning_rate=2e-3, checkpoint_every_steps=2)
    return spec.model_copy(update={"validation_file": None})


@pytest.fixture(scope="module")
def straight(oom_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    assert run(oom_spec, out).global_step == 6
    return out


@pytest.mark.parametrize(
    "inject, resumed_from",
    [("micro_batch>2", "the start"), ("micro_batch>2,after=2", "checkpoint-2")],
    ids=["at-the-first-step", "after-a-checkpoint"],
)
def test_an_out_of_memory_retries_with_half_the_micro_batch_on_the_same_trajectory(
    oom_spec, straight, tmp_path, monkeypatch, inject, resumed_from
):
    monkeypatch.setenv(INJECT_OOM_ENV, inject)
    rep = EventReporter()
    result = run(oom_spec, tmp_path, rep)
    assert result.status == "succeeded" and result.global_step == 6  # the same number of optimizer steps
    warnings = [(m, d) for level, m, d in rep.full_events if level == "warn"]
    assert [m for m, _ in warnings] == [
        f"out of memory at micro-batch 4: retrying from {resumed_from} with micro-batch 2 x accumulation 2, "
        "checkpointing on"
    ]
    assert warnings[0][1]["failed_plan"]["micro_batch_size"] == 4
    plans = [d["plan"] for level, m, d in rep.full_events if m.startswith("plan: ")]
    assert [(p["micro_batch_size"], p["gradient_accumulation_steps"]) for p in plans] == [(4, 1)]
    recorded = json.loads((tmp_path / "spec.json").read_text())
    assert (recorded["plan"]["micro_batch_size"], recorded["plan"]["gradient_accumulation_steps"]) == (2, 2)
    assert recorded["plan"]["gradient_checkpointing"] is True
    assert [p["micro_batch_size"] for p in recorded["out_of_memory"]] == [4]
    # The loss series is whole (steps 1..6, once each) and is the uninterrupted run's: the same
    # rows make each optimizer step, only split into two micro-batches.
    got, want = _losses(tmp_path), _losses(straight)
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, 7))
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-4)


def test_a_second_out_of_memory_fails_saying_what_to_lower(oom_spec, tmp_path, monkeypatch):
    monkeypatch.setenv(INJECT_OOM_ENV, "always")
    rep = EventReporter()
    with pytest.raises(TrainingOutOfMemory) as e:
        run(oom_spec, tmp_path, rep)
    assert str(e.value) == (
        "out of memory: training ran out of GPU memory at micro-batch 2 x accumulation 2 with gradient "
        "checkpointing on after a retry; lower hyperparameters.max_seq_length (now 64) or "
        "hyperparameters.batch_size (now 4)"
    )
    assert sum(level == "warn" for level, _, _ in rep.full_events) == 1  # one retry, then the failure


def test_nothing_left_to_lower_fails_at_once(oom_spec, tmp_path, monkeypatch):
    monkeypatch.setenv(INJECT_OOM_ENV, "always")
    hp = oom_spec.hyperparameters.model_copy(update={"batch_size": 1, "gradient_accumulation_steps": 4,
                                                     "gradient_checkpointing": True})
    rep = EventReporter()
    with pytest.raises(TrainingOutOfMemory, match=r"at micro-batch 1 x accumulation 4 with gradient checkpointing on; "
                                                  r"lower hyperparameters.max_seq_length \(now 64\)$"):
        run(oom_spec.model_copy(update={"hyperparameters": hp}), tmp_path, rep)
    assert not any(level == "warn" for level, _, _ in rep.full_events)


def test_the_fault_hook_is_off_unless_asked():
    assert callbacks({}) == [] and callbacks({INJECT_OOM_ENV: " "}) == []
    (hook,) = callbacks({INJECT_OOM_ENV: "micro_batch>1,after=3"})
    assert (hook.min_micro_batch, hook.after) == (1, 3)
    (always,) = callbacks({INJECT_OOM_ENV: "always"})
    assert (always.min_micro_batch, always.after) == (0, 0)
    with pytest.raises(ValueError, match="unknown item 'sometimes'"):
        callbacks({INJECT_OOM_ENV: "sometimes"})


def test_the_child_environment_passes_the_hook_and_the_model_cache_only_when_set():
    from worker.childenv import child_environment

    assert child_environment({"PATH": "/bin", "TUNEFORGE_SECRET_KEY": "s"}) == {"PATH": "/bin"}
    env = child_environment({"PATH": "/bin", INJECT_OOM_ENV: "always", "TUNEFORGE_MODEL_CACHE": "/models",
                             "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://hub", "HF_HUB_CACHE": "/hf",
                             "TUNEFORGE_DATABASE_URL": "postgresql://x"})
    assert env == {"PATH": "/bin", INJECT_OOM_ENV: "always", "TUNEFORGE_MODEL_CACHE": "/models",
                   "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://hub", "HF_HUB_CACHE": "/hf"}
