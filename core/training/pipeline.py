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

    from core.training import artifacts, faults, integrations
    from core.training.data import prepare
    from core.training.distributed import is_main_process, world_size
    from core.training.dpo import DPO_LOGGED_KEYS, build_dpo_trainer, drop_reference, evaluate_pairs
    from core.training.evaluate import evaluate
    from core.training.model import compute_dtype, device, fetch_model, load_model, load_tokenizer, real_dtypes
    from core.training.model_cache import progress_events
    from core.training.plan import local_gpu, make_plan
    from core.training.preference import prepare_pairs
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
    # A hub model comes through the host's cache (fetched once per host, progress as events).
    fetched = fetch_model(spec, progress=progress_events(reporter.event, spec.model))
    tokenizer = load_tokenizer(spec)
    data = prepare_pairs(spec, tokenizer) if dpo else prepare(spec, tokenizer)
    if main:  # written first: when no row is usable, this report is what says why
        artifacts.write_json(out / "dataset_report.json", data.report)
    reporter.event("info", "dataset prepared", data.report)
    data.require_training_rows()

    reporter.phase("loading_model")
    dtype = compute_dtype(spec.quantization.compute_dtype)
    # The plan for this GPU, from the model's shape alone: a job that cannot fit fails here,
    # before 16 GB of weights are loaded.
    plan = make_plan(
        spec, fetched.path, local_gpu(), compute_bytes=dtype.itemsize, gpus=world_size(),
        labelled_fraction=1.0 if dpo else labelled_share(data.train), rows_per_example=2 if dpo else 1,
    )
    reporter.event("info", f"plan: {plan.describe()}", {"plan": plan.as_dict()})
    model = load_model(spec, dtype, plan)

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
    extra = [*integrations.callbacks(spec, out), *faults.callbacks()]  # TensorBoard always, W&B when asked

    def build(plan):
        if dpo:  # preference pairs (core/training/dpo.py); the rest of the run is the same
            callback = ReportingCallback(reporter, should_stop, spec.hash(), metrics_path, DPO_LOGGED_KEYS, save_each_epoch=each_epoch)
            trainer = build_dpo_trainer(spec, model, tokenizer, data.train, data.eval, checkpoints, dtype, [callback, *extra], plan)
        else:
            callback = ReportingCallback(reporter, should_stop, spec.hash(), metrics_path, save_each_epoch=each_epoch)
            trainer = build_trainer(spec, model, tokenizer, data.train, data.eval, checkpoints, dtype, [callback, *extra], plan)
        callback.accelerator = trainer.accelerator
        if main:  # after the trainer is built: the dtypes it really trains in, not the requested one
            artifacts.write_spec(
                out,
                spec,
                data.fingerprint,
                {
                    "dtypes": real_dtypes(model, dtype),
                    "compute_dtype": str(dtype).removeprefix("torch."),
                    "device": device(),
                    "model_commit": fetched.commit,
                    "plan": plan.as_dict(),
                    "out_of_memory": [p.as_dict() for p in failed],
                },
            )
        return trainer, callback

    failed = []  # plans that ran out of memory in this attempt
    resumed_from = resume  # the checkpoint this attempt started from (the runner's, or resume_from)
    trainer, callback = build(plan)
    # Where a retry restarts when no checkpoint was written yet (the adapter as trained from).
    initial = _trainable_state(model)
    reporter.phase("training")
    while True:
        out_of_memory = False
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except torch_out_of_memory():
            out_of_memory = True  # handled below, once the traceback's frames (and tensors) are gone
        if not out_of_memory:
            break
        failed.append(plan)
        del trainer, callback
        _free_memory(model)
        plan, resume = _after_out_of_memory(
            spec, plan, failed, world_size(), checkpoints, metrics_path, resumed_from, model, initial, reporter, main
        )
        trainer, callback = build(plan)

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
        report = evaluate_pairs(spec, model, tokenizer.pad_token_id, data.eval, batch_size=plan.micro_batch_size)
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


def labelled_share(examples) -> float:
    """The largest share of labelled tokens in any one training row: a bound on the share in
    any micro-batch (padded or packed), which sizes the head in the memory plan."""
    from core.training.encoding import IGNORE_INDEX

    return max((sum(1 for x in e.labels if x != IGNORE_INDEX) / max(len(e.input_ids), 1) for e in examples), default=1.0)


def torch_out_of_memory() -> type[BaseException]:
    import torch

    return torch.OutOfMemoryError


def _free_memory(model) -> None:
    """After an out-of-memory: the gradients the failed step left, then whatever the dropped
    trainer (optimizer state) and the exception's frames (activations) held."""
    import gc

    import torch

    for p in model.parameters():
        p.grad = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _trainable_state(model) -> dict:
    """A CPU copy of the trainable (LoRA) weights: tens of MB for an 8B model at r16."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def _after_out_of_memory(spec, plan, failed, ranks, checkpoints, metrics_path, started_from, model, initial, reporter, main):
    """DESIGN: "A CUDA out-of-memory during training is not a failure". The attempt goes on
    from its newest checkpoint (or from the start) with half the micro-batch, accumulation
    doubled (the same effective batch, so the same trajectory) and checkpointing on, once;
    after that, or when there is nothing left to lower, the job fails saying what to lower."""
    from core.training.errors import TrainingOutOfMemory
    from core.training.plan import retry_plan
    from core.training.trainer import checkpoint_step, newest_checkpoint, trim_metrics

    hp = spec.hyperparameters
    nxt = retry_plan(plan, hp.rows_per_gpu_step) if len(failed) == 1 and ranks == 1 else None
    if nxt is None:
        where = f" on {plan.gpu_name} ({plan.gpu_memory_bytes / 1024**3:.1f} GiB)" if plan.gpu_name else ""
        tried = " after a retry" if len(failed) > 1 else ""
        tried += " (a multi-GPU job is not retried)" if ranks > 1 else ""
        lower = f"hyperparameters.max_seq_length (now {hp.max_seq_length})"
        if plan.micro_batch_size > 1:
            lower += f" or hyperparameters.batch_size (now {hp.batch_rows})"
        raise TrainingOutOfMemory(
            f"out of memory: training ran out of GPU memory{where} at micro-batch {plan.micro_batch_size} x "
            f"accumulation {plan.gradient_accumulation_steps} with gradient checkpointing "
            f"{'on' if plan.gradient_checkpointing else 'off'}{tried}; lower {lower}"
        )
    # The newest checkpoint of this spec: written by this attempt, or the one it started from.
    found = [c for c in (newest_checkpoint(checkpoints, spec.hash()), started_from) if c is not None]
    resume = max(found, key=lambda c: checkpoint_step(c, spec.hash())) if found else None
    if resume is not None:
        if main:
            trim_metrics(metrics_path, checkpoint_step(resume, spec.hash()))
    else:  # no checkpoint yet: start over from the adapter this attempt began with
        params = dict(model.named_parameters())
        for name, value in initial.items():
            params[name].data.copy_(value)
        if main and metrics_path.exists():
            metrics_path.unlink()
    reporter.event(
        "warn",  # the job's event levels: info | warn | error
        f"out of memory at micro-batch {plan.micro_batch_size}: retrying from "
        f"{resume.name if resume else 'the start'} with {nxt.describe()}",
        {"failed_plan": plan.as_dict(), "plan": nxt.as_dict(), "checkpoint": str(resume) if resume else None},
    )
    return nxt, resume
