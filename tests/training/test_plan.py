"""The run plan of one attempt (core.training.plan): the spec's own on the CPU, `plan_fit` for
the GPU it got (planned here "for" a GPU of a given size, on the CPU), the OOM retry's halving,
and the TrainingArguments built from it."""

from __future__ import annotations

import pytest
import torch

from core.memory_plan import GiB, TrainingSetup, estimate, plan_fit, setup_for_spec
from core.spec import JobSpec
from core.training.errors import TrainingInputError
from core.training.model_shape import shape_from_config
from core.training.plan import GpuInfo, RunPlan, largest_divisor_at_most, make_plan, retry_plan, spec_plan
from tests.training.test_memory_plan import LLAMA3_8B

GPU_24 = GpuInfo("NVIDIA 24GB", 24 * GiB)


def spec(**hp) -> JobSpec:
    return JobSpec(model="unused", training_file="unused.jsonl", hyperparameters=hp)


@pytest.fixture(scope="module")
def llama3_8b_config():
    from transformers import LlamaConfig

    return LlamaConfig(**LLAMA3_8B)


def test_on_the_cpu_the_plan_is_the_specs_own():
    s = spec(batch_size=4, gradient_accumulation_steps=2, max_seq_length=64)
    plan = make_plan(s, "no model needed", None)
    assert plan == spec_plan(s)
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps, plan.gradient_checkpointing) == (4, 2, False)
    assert plan.device == "cpu" and plan.predicted_peak_bytes is None
    assert make_plan(spec(gradient_checkpointing=True), None, None).gradient_checkpointing
    assert not make_plan(spec(gradient_checkpointing="auto"), None, None).gradient_checkpointing


def test_8b_on_a_24_gb_gpu_splits_the_batch_and_turns_checkpointing_on(llama3_8b_config):
    """The reference case: the default batch (4 rows) at seq 2048 fits only as 2 x 2 with
    checkpointing; the effective batch is the spec's, and the plan is plan_fit's own."""
    s = spec(batch_size="auto", max_seq_length=2048)
    plan = make_plan(s, llama3_8b_config, GPU_24)
    want = plan_fit(shape_from_config(llama3_8b_config), batch_size=4, max_seq_length=2048,
                    gpu_memory_bytes=24 * GiB, setup=TrainingSetup())
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps, plan.gradient_checkpointing) == (2, 2, True)
    assert (plan.predicted_peak_bytes, plan.required_bytes) == (want.predicted_peak_bytes, want.required_bytes)
    assert plan.micro_batch_tokens == 2 * 2048 and plan.device == "cuda" and plan.gpu_name == "NVIDIA 24GB"
    assert plan.describe() == "micro-batch 2 x accumulation 2, checkpointing on, predicted peak 17.0 GiB of 24.0 GiB"
    # Accumulation in the spec is part of the effective batch the plan splits (4 x 2 = 8 rows).
    more = make_plan(spec(batch_size=4, gradient_accumulation_steps=2, max_seq_length=2048), llama3_8b_config, GPU_24)
    assert more.micro_batch_size * more.gradient_accumulation_steps == 8
    # An 80 GB card needs no checkpointing for the same job.
    big = make_plan(s, llama3_8b_config, GpuInfo("H100", 80 * GiB))
    assert not big.gradient_checkpointing and big.micro_batch_size * big.gradient_accumulation_steps == 4


def test_a_job_that_cannot_fit_is_an_input_error_with_the_numbers(llama3_8b_config):
    with pytest.raises(TrainingInputError, match=r"^hyperparameters.max_seq_length: needs ~.* GiB per GPU at "
                       r"max_seq_length 8192; NVIDIA 24GB has 24.0 GiB; lower max_seq_length to \d+ or less"):
        make_plan(spec(max_seq_length=8192), llama3_8b_config, GPU_24)
    with pytest.raises(TrainingInputError, match='set gradient_checkpointing to true or "auto"'):
        make_plan(spec(max_seq_length=2048, gradient_checkpointing=False), llama3_8b_config, GPU_24)


def test_the_labelled_share_and_the_spec_settings_reach_the_memory_model(llama3_8b_config):
    s = spec(max_seq_length=2048)
    summaries = make_plan(s, llama3_8b_config, GPU_24, labelled_fraction=0.25)
    assert summaries.micro_batch_size == 4  # a smaller head: the whole batch at once
    other = JobSpec(model="unused", training_file="unused.jsonl", quantization={"double_quant": False},
                    lora={"r": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    setup = setup_for_spec(other, compute_bytes=4, gpus=2)
    assert setup == TrainingSetup(lora_r=8, lora_targets=("q_proj", "v_proj"), lora_dropout=False,
                                  double_quant=False, compute_bytes=4, gpus=2)


def test_dpo_plans_whole_pairs(llama3_8b_config):
    """A pair is two rows in one forward: 4 pairs at seq 2048 on 24 GB run one pair at a time."""
    plan = make_plan(spec(max_seq_length=2048), llama3_8b_config, GPU_24, rows_per_example=2)
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps, plan.gradient_checkpointing) == (1, 4, True)
    shape = shape_from_config(llama3_8b_config)
    two_rows = estimate(shape, TrainingSetup(), micro_batch_size=2, max_seq_length=2048, gradient_checkpointing=True)
    assert plan.predicted_peak_bytes == two_rows.peak_allocated


def test_a_model_the_memory_model_does_not_cover_runs_the_specs_plan(tmp_path):
    from transformers import GPT2Config

    plan = make_plan(spec(batch_size=2), GPT2Config(n_layer=1, n_embd=32, n_head=2), GPU_24)
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps) == (2, 1)
    assert plan.device == "cuda" and "memory model covers Llama-family" in plan.reason


def test_the_tiny_model_plans_from_its_directory(tiny_model_dir):
    plan = make_plan(spec(batch_size=4, max_seq_length=64), tiny_model_dir, GPU_24)
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps, plan.gradient_checkpointing) == (4, 1, False)
    assert 0 < plan.predicted_peak_bytes < plan.required_bytes < 24 * GiB


def test_the_retry_halves_the_micro_batch_keeps_the_effective_batch_and_checkpoints():
    plan = RunPlan(4, 4 * 512, 1, False, device="cuda", gpu_name="g", gpu_memory_bytes=GiB, predicted_peak_bytes=1,
                   required_bytes=2)
    half = retry_plan(plan, 4)
    assert (half.micro_batch_size, half.micro_batch_tokens, half.gradient_accumulation_steps) == (2, 1024, 2)
    assert half.gradient_checkpointing and half.predicted_peak_bytes is None and half.gpu_name == "g"
    assert "out-of-memory retry" in half.reason
    odd = retry_plan(RunPlan(3, 3 * 8, 2, True), 6)  # 3 rows of 6: the next divisor down is 1
    assert (odd.micro_batch_size, odd.gradient_accumulation_steps) == (1, 6)
    assert retry_plan(RunPlan(1, 8, 4, False), 4) == RunPlan(1, 8, 4, True, reason="out-of-memory retry of micro-batch 1")
    assert retry_plan(RunPlan(1, 8, 4, True), 4) is None  # nothing left to lower
    assert [largest_divisor_at_most(12, k) for k in (0, 1, 5, 6, 12, 20)] == [1, 1, 4, 6, 12, 12]


def test_the_trainer_runs_the_plan(tmp_path):
    from core.training.dpo import dpo_config
    from core.training.trainer import sft_config, training_args

    s = spec(batch_size=4)
    default = training_args(s, tmp_path, torch.float32, has_eval=False)
    assert (default["per_device_train_batch_size"], default["gradient_accumulation_steps"]) == (4, 1)
    assert default["activation_checkpointing"] is False
    plan = RunPlan(2, 2 * 64, 2, True)
    args = sft_config(s, tmp_path, torch.float32, False, plan)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size, args.gradient_accumulation_steps) == (2, 2, 2)
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    dpo_spec = JobSpec(model="unused", training_file="unused.jsonl", method={"type": "dpo"})
    dpo = dpo_config(dpo_spec, tmp_path, torch.float32, False, plan)
    assert (dpo.per_device_train_batch_size, dpo.gradient_accumulation_steps, dpo.activation_checkpointing) == (2, 2, True)


def test_the_model_is_loaded_with_the_plans_checkpointing(tiny_model_dir, learn_file):
    from core.training.model import load_model
    from tests.training.test_pipeline import learn_spec

    s = learn_spec(tiny_model_dir, learn_file)
    assert not load_model(s, torch.float32).base_model.model.is_activation_checkpointing
    on = load_model(s, torch.float32, RunPlan(2, 128, 2, True))
    assert on.base_model.model.is_activation_checkpointing

