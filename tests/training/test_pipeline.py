"""run() end to end on the tiny 4-bit model: it learns, stops at the terminator, pauses and
resumes to the same step count, and leaves the documented artifacts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.spec import JobSpec
from core.training.errors import TrainingInputError
from core.training.pipeline import run



class RecordingReporter:
    def __init__(self):
        self.phases, self.steps, self.checkpoints, self.events = [], [], [], []
        self.checkpoint_metrics = []

    def phase(self, name):
        self.phases.append(name)

    def metrics(self, step, values):
        self.steps.append((step, values))

    def checkpoint(self, step, path, metrics):
        self.checkpoints.append((step, Path(path)))
        self.checkpoint_metrics.append((step, dict(metrics)))

    def event(self, level, message, data=None):
        self.events.append(message)


def learn_spec(model_dir, data, **hp) -> JobSpec:
    return JobSpec(
        model=str(model_dir),
        training_file=str(data),
        validation_file=str(data),
        hyperparameters={
            "n_epochs": 40,
            "learning_rate": 1e-2,
            "batch_size": 4,
            "max_seq_length": 64,
            "warmup_ratio": 0.0,
            "lr_scheduler": "constant",
            **hp,
        },
        lora={"dropout": 0.0},
        evaluation={"generation_samples": 8, "max_new_tokens": 16},
    )


@pytest.fixture(scope="module")
def learned(tiny_model_dir, learn_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("learned")
    rep = RecordingReporter()
    spec = learn_spec(tiny_model_dir, learn_file)
    spec = spec.model_copy(
        update={
            "evaluation": spec.evaluation.model_copy(update={"eval_every_steps": 40})
        }
    )
    result = run(spec, out, rep)
    return result, rep, out


def test_learns_prompt_to_completion_and_stops(learned):
    result, rep, _ = learned
    assert result.status == "succeeded" and result.global_step == 80
    assert result.metrics["exact_match"] == 1.0
    assert result.metrics["stopped_at_terminator"] == 1.0
    assert result.metrics["rouge1"] == 1.0 and result.metrics["token_accuracy"] == 1.0
    losses = [v["loss"] for _, v in rep.steps if "loss" in v]
    assert losses[-1] < losses[0]


def test_reporter_and_artifacts(learned):
    _, rep, out = learned
    assert rep.phases == [
        "preparing_data",
        "loading_model",
        "training",
        "evaluating",
        "uploading",
    ]
    step_logs = [v for _, v in rep.steps if "loss" in v]
    assert {
        "loss",
        "learning_rate",
        "grad_norm",
        "tokens_per_second",
        "epoch",
        "step",
        "total_steps",
    } <= set(step_logs[0])
    assert rep.checkpoints and all(
        (p / "tuneforge.json").exists() for _, p in rep.checkpoints[-1:]
    )
    adapter = out / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json"):
        assert (adapter / name).exists(), name
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert {m.rsplit(".", 1)[-1] for m in cfg["target_modules"]} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    from transformers import AutoTokenizer

    assert "<|start_header_id|>" in AutoTokenizer.from_pretrained(adapter).chat_template
    spec = json.loads((out / "spec.json").read_text())
    assert spec["spec_hash"] == JobSpec.model_validate(spec["spec"]).hash()
    assert (
        len(spec["dataset_fingerprint"]) == 64
        and spec["versions"]["trl"]
        and spec["seed"] == 42
    )
    # The dtypes the run really trained in, read from the model (not the requested one).
    assert spec["dtypes"] == {"base_storage": "nf4 in uint8", "adapter": "float32", "compute": "float32"}
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "loss" in m] == list(range(1, 81))
    in_training_evals = [m for m in lines if "eval_loss" in m]
    assert [m["step"] for m in in_training_evals] == [40, 80]
    assert in_training_evals[-1]["eval_loss"] < in_training_evals[0]["eval_loss"]
    report = json.loads((out / "eval_report.json").read_text())
    assert {"prompt", "reference", "prediction"} <= set(report["samples"][0])
    ds = json.loads((out / "dataset_report.json").read_text())
    assert ds["rows_read"] == 16 and ds["train_rows"] == 8 and ds["dropped"] == 0


def test_quantized_lora_model_setup(tiny_model_dir, learn_file):
    import torch
    from bitsandbytes.nn import Linear4bit

    from core.training.model import compute_dtype, load_model

    assert compute_dtype("auto", on="cpu") == torch.float32
    assert compute_dtype("bf16", on="cpu") == torch.float32
    model = load_model(learn_spec(tiny_model_dir, learn_file), torch.float32)
    quant = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert quant and all(m.weight.quant_type == "nf4" for m in quant)
    assert all(m.weight.quant_state.nested for m in quant)  # double quant
    assert all(m.compute_dtype == torch.float32 for m in quant)
    names = {n for n, _ in model.named_modules() if n.endswith("lora_A")}
    assert not any("lm_head" in n for n in names)
    assert any("down_proj" in n for n in names) and any("q_proj" in n for n in names)


def test_a_checkpoint_at_every_epoch_end_by_default(tiny_model_dir, learn_file, tmp_path):
    """OpenAI's default: one checkpoint per epoch end (tagged), besides the step cadence; with
    `checkpoint_every_steps` named, only that cadence."""
    rep = RecordingReporter()
    spec = learn_spec(tiny_model_dir, learn_file, n_epochs=3, max_seq_length=32)
    spec = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"generation_samples": 0})})
    result = run(spec, tmp_path, rep)
    per_epoch = result.global_step // 3
    tagged = [(step, m["completed_epoch"]) for step, m in rep.checkpoint_metrics if "completed_epoch" in m]
    assert tagged == [(per_epoch, 1), (2 * per_epoch, 2), (3 * per_epoch, 3)]
    steps = [step for step, _ in rep.checkpoints]
    assert len(steps) == len(set(steps))  # an epoch end that is also a step checkpoint is saved once

    rep = RecordingReporter()
    cadence = learn_spec(tiny_model_dir, learn_file, n_epochs=3, max_seq_length=32, checkpoint_every_steps=4)
    cadence = cadence.model_copy(update={"evaluation": spec.evaluation})
    run(cadence, tmp_path / "cadence", rep)
    assert 4 in [step for step, _ in rep.checkpoints] and not any("completed_epoch" in m for _, m in rep.checkpoint_metrics)


def pause_at(k: int):
    """A `should_stop` that asks for a pause at the k-th optimizer step it is polled at."""
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return "pause" if calls["n"] == k else None

    return should_stop


def test_pause_then_resume_same_step_count(tiny_model_dir, learn_file, tmp_path):
    spec = learn_spec(tiny_model_dir, learn_file, n_epochs=5, checkpoint_every_steps=4)
    first = run(spec, tmp_path, should_stop=pause_at(7))
    assert first.status == "paused" and first.global_step == 7
    assert (tmp_path / "checkpoints" / "checkpoint-7" / "tuneforge.json").exists()
    rep = RecordingReporter()
    second = run(spec, tmp_path, rep)
    assert second.status == "succeeded" and second.global_step == 10
    assert second.resumed_from.name == "checkpoint-7"
    assert any("resuming from checkpoint-7" in e for e in rep.events)
    resumed = [
        json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["step"] for m in resumed] == list(range(1, 11))
    # Same trajectory as an uninterrupted run: same data order, optimizer and scheduler state,
    # and fp32 adapter weights on both sides of the pause (test_precision checks the adapter).
    straight = tmp_path / "straight"
    assert run(spec, straight).global_step == 10
    reference = [
        json.loads(ln) for ln in (straight / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["loss"] for m in resumed] == pytest.approx(
        [m["loss"] for m in reference], rel=1e-6
    )
    assert [m["learning_rate"] for m in resumed] == pytest.approx(
        [m["learning_rate"] for m in reference]
    )


def test_checkpoint_of_another_spec_is_not_resumed(
    tiny_model_dir, learn_file, tmp_path
):
    from core.training.trainer import newest_checkpoint

    spec = learn_spec(tiny_model_dir, learn_file, n_epochs=1)
    assert run(spec, tmp_path, should_stop=lambda: "pause").status == "paused"
    assert (
        newest_checkpoint(tmp_path / "checkpoints", spec.hash()).name == "checkpoint-1"
    )
    other = learn_spec(tiny_model_dir, learn_file, n_epochs=1, learning_rate=1e-3)
    assert newest_checkpoint(tmp_path / "checkpoints", other.hash()) is None
    with pytest.raises(TrainingInputError, match="resume_from: .* different spec"):
        run(other, tmp_path, resume_from=tmp_path / "checkpoints" / "checkpoint-1")
    cancelled = run(other, tmp_path, should_stop=lambda: "cancel")
    assert (
        cancelled.status == "cancelled"
        and cancelled.global_step == 1
        and cancelled.resumed_from is None
    )


def test_merge_writes_unquantized_model(tiny_model_dir, learn_file, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    spec = learn_spec(tiny_model_dir, learn_file, max_steps=1).model_copy(
        update={"merge": True}
    )
    assert run(spec, tmp_path).status == "succeeded"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not hasattr(merged.config, "quantization_config")
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype in (
        torch.bfloat16,
        torch.float16,
    )


def test_dry_run_reports_korean_news(tiny_model_dir, news_file):
    from core.training.dry_run import dry_run

    spec = JobSpec(
        model=str(tiny_model_dir),
        training_file=str(news_file),
        validation_split=0.1,
        template={
            "prompt": "다음 글을 요약해주세요: {document}",
            "completion": "{summary}",
        },
        hyperparameters={"max_seq_length": 2048, "batch_size": 4, "n_epochs": 2},
    )
    r = dry_run(spec)
    assert (
        r["rows_read"] == 20
        and r["train_rows"] == 18
        and r["validation_rows"] == 2
        and r["dropped"] == 0
    )
    assert r["estimated_steps"] == 10
    t = r["train_tokens"]
    assert (
        0 < t["min"] <= t["median"] <= t["max"] <= 2048
        and t["completion_tokens"] < t["total_tokens"]
    )


def test_cli_user_error_is_one_line(tmp_path, tiny_model_dir):
    (tmp_path / "rows.jsonl").write_text('{"document": "글"}\n', encoding="utf-8")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"model: {tiny_model_dir}\ntraining_file: rows.jsonl\n"
        "template: {prompt: '{document}', completion: '{summary}'}\n",
        encoding="utf-8",
    )
    cmd = [
        sys.executable,
        "-m",
        "core.cli",
        "train",
        str(spec),
        "-o",
        str(tmp_path / "out"),
    ]
    p = subprocess.run(
        cmd,
        check=False,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert p.returncode == 2
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert err == [
        "error: training_file: row 0: missing column 'summary' used by the template"
    ]
    assert "Traceback" not in p.stderr


def test_unloadable_model_is_a_user_error(tmp_path, learn_file):
    from core.training.dry_run import dry_run

    spec = JobSpec(model=str(tmp_path / "no-such-model"), training_file=str(learn_file))
    with pytest.raises(TrainingInputError, match="^model: cannot load the tokenizer"):
        dry_run(spec)


def test_eval_report_puts_base_and_tuned_side_by_side(learned):
    """§6.12: the same rows, the same decoding, adapter on and off."""
    _, _, out = learned
    report = json.loads((out / "eval_report.json").read_text())
    base, tuned = report["base_metrics"], report["metrics"]
    assert set(base) == set(tuned) >= {
        "eval_loss", "perplexity", "token_accuracy", "rouge1", "rouge1_morphemes", "rouge1_chars",
        "exact_match", "stopped_at_terminator",
    }
    assert report["comparison"]["exact_match"] == {"base": base["exact_match"], "tuned": 1.0}
    assert base["exact_match"] == 0.0 and base["eval_loss"] > tuned["eval_loss"] + 1
    assert report["decoding"] == {"strategy": "greedy", "max_new_tokens": 16, "repetition_penalty": 1.0}
    assert report["num_generated"] == report["num_eval_rows"] == 8
    assert "NFKC" in report["exact_match_rule"] and "kiwipiepy" in report["rouge_tokenization"]["*_morphemes"]
    sample = report["samples"][0]
    assert sample["tuned_output"] == sample["prediction"] == sample["reference"]
    assert sample["base_output"] != sample["reference"] and sample["exact_match"] is True
    assert sample["rouge"]["rouge1"] == 1.0 and sample["base_rouge"]["rouge1"] < 1.0


@pytest.fixture(scope="module")
def learned_model(learned, tiny_model_dir, learn_file):
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from core.training.data import prepare
    from core.training.model import load_base_model

    _, _, out = learned
    spec = learn_spec(tiny_model_dir, learn_file)
    model = PeftModel.from_pretrained(load_base_model(spec, torch.float32), out / "adapter").eval()
    tok = AutoTokenizer.from_pretrained(out / "adapter")
    return spec, model, tok, prepare(spec, tok)


def test_batched_generation_equals_one_at_a_time(learned_model):
    """Left padding and the KV cache change nothing in what is generated."""
    from core.training.data import Example
    from core.training.encoding import generation_prompt_ids
    from core.training.evaluate import decoding, generate

    spec, model, tok, data = learned_model
    examples = data.eval + [
        Example(99, [{"role": "user", "content": "긴 " * n + "질문"}, {"role": "assistant", "content": "x"}], [], [])
        for n in (1, 7, 20)
    ]
    prompts = [generation_prompt_ids(tok, ex.turns) for ex in examples]
    assert len({len(p) for p in prompts}) > 3  # rows of different lengths share a batch
    stops = [tok.convert_tokens_to_ids("<|eot_id|>"), tok.eos_token_id]
    batched = generate(model, tok, prompts, stops, decoding(spec), batch_size=16)
    single = generate(model, tok, prompts, stops, decoding(spec), batch_size=1)
    assert batched == single
    assert [t for t, _ in batched[:8]] == [ex.turns[-1]["content"] for ex in data.eval]


def test_decoding_settings_are_used_and_recorded(learned_model):
    from core.training.evaluate import evaluate

    spec, model, tok, data = learned_model
    ev = spec.evaluation.model_copy(
        update={"temperature": 5.0, "top_p": 0.9, "repetition_penalty": 1.3, "max_samples": 4, "generation_samples": 2}
    )
    sampled = spec.model_copy(update={"evaluation": ev})
    report = evaluate(sampled, model, tok, data.eval, data.terminator[1])
    assert report["decoding"] == {
        "strategy": "sampling", "max_new_tokens": 16, "repetition_penalty": 1.3, "temperature": 5.0, "top_p": 0.9,
        "seed": 42,
    }
    assert report["num_generated"] == 4 and len(report["samples"]) == 2
    assert report["metrics"]["exact_match"] < 1.0  # a hot temperature really samples
    assert evaluate(sampled, model, tok, data.eval, data.terminator[1])["samples"] == report["samples"]  # seeded


def test_exact_match_compares_normalised_text():
    from core.training.evaluate import normalised

    assert normalised("요약…  끝\n") == normalised("요약... 끝")
    assert normalised("ＡＢＣ１") == "ABC1" and normalised("가 나") != normalised("가나")
