"""`run()`: one job spec -> trained LoRA adapter, evaluation report and artifacts.

A linear sequence of the stage functions; no DB or Celery here. Progress goes through the
`Reporter`; `should_stop` is polled every optimizer step ("pause" writes a checkpoint first).

Under `accelerate launch` every rank runs this same function: all of them prepare the same
data (seeded), load the model and train together (the Trainer shards batches by rank and
saves checkpoints from rank 0); only rank 0 reports, writes output files and evaluates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from core.spec import JobSpec
from core.training.reporter import NullReporter, Reporter


@dataclass
class RunResult:
    status: Literal["succeeded", "paused", "cancelled"]
    output_dir: Path
    global_step: int
    metrics: dict = field(default_factory=dict)
    checkpoint: Path | None = None  # the checkpoint to resume from, when paused
    resumed_from: Path | None = None


def run(
    spec: JobSpec,
    workdir: Path,
    reporter: Reporter | None = None,
    should_stop: Callable[[], str | None] = lambda: None,
    resume_from: Path | None = None,
) -> RunResult:
    from transformers import set_seed

    from core.training import artifacts, integrations
    from core.training.data import prepare
    from core.training.distributed import is_main_process
    from core.training.dpo import DPO_LOGGED_KEYS, build_dpo_trainer, drop_reference, evaluate_pairs
    from core.training.evaluate import evaluate
    from core.training.preference import prepare_pairs
    from core.training.model import compute_dtype, device, load_model, load_tokenizer, real_dtypes
    from core.training.trainer import (
        ReportingCallback,
        build_trainer,
        checkpoint_step,
        newest_checkpoint,
        trim_metrics,
    )

    main = is_main_process()
    reporter = (reporter or NullReporter()) if main else NullReporter()
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    metrics_path = out / "metrics.jsonl"
    set_seed(spec.seed)

    dpo = spec.method.type == "dpo"
    reporter.phase("preparing_data")
    tokenizer = load_tokenizer(spec)
    data = prepare_pairs(spec, tokenizer) if dpo else prepare(spec, tokenizer)
    if main:  # written first: when no row is usable, this report is what says why
        artifacts.write_json(out / "dataset_report.json", data.report)
    reporter.event("info", "dataset prepared", data.report)
    data.require_training_rows()

    reporter.phase("loading_model")
    dtype = compute_dtype(spec.quantization.compute_dtype)
    model = load_model(spec, dtype)

    resume = (
        Path(resume_from)
        if resume_from
        else newest_checkpoint(checkpoints, spec.hash())
    )
    if resume is not None and main:
        trim_metrics(metrics_path, checkpoint_step(resume, spec.hash()))
        reporter.event(
            "info", f"resuming from {resume.name}", {"checkpoint": str(resume)}
        )
    elif main and metrics_path.exists():
        metrics_path.unlink()  # a fresh run starts a fresh series

    # OpenAI's default cadence: a checkpoint at each epoch end unless the spec names its own.
    each_epoch = spec.hyperparameters.checkpoint_every_steps is None
    extra = integrations.callbacks(spec, out)  # TensorBoard always, W&B when asked
    if dpo:  # preference pairs (core/training/dpo.py); the rest of the run is the same
        callback = ReportingCallback(reporter, should_stop, spec.hash(), metrics_path, DPO_LOGGED_KEYS, save_each_epoch=each_epoch)
        trainer = build_dpo_trainer(spec, model, tokenizer, data.train, data.eval, checkpoints, dtype, [callback, *extra])
    else:
        callback = ReportingCallback(reporter, should_stop, spec.hash(), metrics_path, save_each_epoch=each_epoch)
        trainer = build_trainer(spec, model, tokenizer, data.train, data.eval, checkpoints, dtype, [callback, *extra])
    callback.accelerator = trainer.accelerator
    if main:  # after the trainer is built: the dtypes it really trains in, not the requested one
        artifacts.write_spec(
            out,
            spec,
            data.fingerprint,
            {"dtypes": real_dtypes(model, dtype), "compute_dtype": str(dtype).removeprefix("torch."), "device": device()},
        )

    reporter.phase("training")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    step = trainer.state.global_step
    if callback.stop_reason == "pause":
        ckpt = checkpoints / f"checkpoint-{step}"
        return RunResult("paused", out, step, checkpoint=ckpt, resumed_from=resume)
    if callback.stop_reason == "cancel":
        return RunResult("cancelled", out, step, resumed_from=resume)
    if not main:  # the rest runs on the unwrapped model, no collectives: rank 0 alone
        return RunResult("succeeded", out, step, resumed_from=resume)

    reporter.phase("evaluating")
    if dpo:
        report = evaluate_pairs(spec, model, tokenizer.pad_token_id, data.eval)
        drop_reference(model)  # only the trained adapter is an artifact
    else:
        report = evaluate(
            spec, model, tokenizer, data.eval, data.terminator[1], should_stop, data.empty_cause("validation")
        )
    if should_stop() == "cancel":
        return RunResult("cancelled", out, step, report["metrics"], resumed_from=resume)
    report["global_step"] = step
    if report["metrics"]:
        reporter.metrics(
            step,
            {
                f"eval_{k}" if not k.startswith("eval_") else k: v
                for k, v in report["metrics"].items()
            },
        )

    reporter.phase("uploading")
    artifacts.write_json(out / "eval_report.json", report)
    adapter_dir = artifacts.save_adapter(out, model, tokenizer)
    if spec.merge:
        del trainer, model
        artifacts.save_merged(out, spec, adapter_dir, tokenizer)
    return RunResult("succeeded", out, step, report["metrics"], resumed_from=resume)
