"""Train stage: TRL's SFTTrainer over our pre-tokenized examples, with reporting, cooperative
stop/pause and spec-hash-tagged checkpoints.

The spec -> SFTConfig mapping is one small pure function. The trainer subclass changes one
thing, the loss (see `batching.completion_loss`): same maths as SFT's completion-only
loss, computed only where there are labels.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import SFTConfig, SFTTrainer

from core.spec import JobSpec
from core.training.batching import completion_loss
from core.training.distributed import agreed_stop
from core.training.plan import RunPlan, spec_plan
from core.training.reporter import Reporter

CHECKPOINT_MARKER = "tuneforge.json"
LOGGED_KEYS = (
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "token_accuracy",
    "epoch",
)


def sft_config(
    spec: JobSpec, checkpoints_dir: Path, dtype: torch.dtype, has_eval: bool, plan: RunPlan | None = None
) -> SFTConfig:
    return SFTConfig(
        **training_args(spec, checkpoints_dir, dtype, has_eval, plan),
        dataset_kwargs={
            "skip_prepare_dataset": True
        },  # we tokenized and masked already
        max_length=None,
    )


def training_args(
    spec: JobSpec, checkpoints_dir: Path, dtype: torch.dtype, has_eval: bool, plan: RunPlan | None = None
) -> dict:
    """The `TrainingArguments` every method shares (SFT and DPO configs add their own).

    How the batch runs comes from the attempt's `plan` (core.training.plan; default: the
    spec's own, as on the CPU): micro-batch x accumulation is the spec's effective batch
    whatever the plan, so the trajectory does not depend on the GPU."""
    hp, ev = spec.hyperparameters, spec.evaluation
    plan = plan or spec_plan(spec)
    on_cpu = not torch.cuda.is_available()
    return dict(
        output_dir=str(checkpoints_dir),
        per_device_train_batch_size=plan.micro_batch_size,
        # Evaluation keeps no activations for a backward: the training micro-batch always fits.
        per_device_eval_batch_size=plan.micro_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        num_train_epochs=hp.n_epochs,
        max_steps=hp.max_steps or -1,
        lr_scheduler_type=hp.lr_scheduler,
        warmup_steps=hp.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        # SFTConfig turns gradient checkpointing on by default; it costs ~30% more compute and
        # is only worth it when activations do not fit, so the plan decides ("auto": only when
        # the micro-batch does not fit without it). Non-reentrant: the reentrant variant needs
        # an input that requires grad and warns on every step under PEFT.
        # (transformers 5's names for gradient checkpointing; the old ones are deprecated)
        activation_checkpointing=plan.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if plan.gradient_checkpointing else None,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=on_cpu,
        seed=spec.seed,
        data_seed=spec.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=hp.checkpoint_every_steps
        or 0.2,  # a float < 1: every 20% of the run
        save_total_limit=3,
        eval_strategy="steps" if (has_eval and ev.eval_every_steps) else "no",
        eval_steps=ev.eval_every_steps,
        prediction_loss_only=True,
        # Not "group_by_length": its LengthGroupedSampler draws from the global RNG when an
        # epoch starts, so a run resumed mid-epoch sees a different order than an uninterrupted
        # one (measured). The seeded random sampler resumes onto the same trajectory.
        train_sampling_strategy="random",
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=not on_cpu,
        # Under DDP: every LoRA weight takes part in each forward, so skip the extra graph walk.
        ddp_find_unused_parameters=False,
    )


class CompletionOnlySFTTrainer(SFTTrainer):
    """SFTTrainer whose loss projects to the vocabulary only at labelled positions."""

    def __init__(self, *args, eval_examples=(), packed_batches=None, **kwargs):
        from core.training.model import upcast_adapter

        self.packed_batches = packed_batches  # a packing.PackedBatchSampler, or None: rows
        super().__init__(*args, **kwargs)
        upcast_adapter(self.model)  # undo TRL's bf16 cast: fp32 master weights (DESIGN §6.9)
        self.eval_examples = list(eval_examples)
        self.remove_callback(
            PrinterCallback
        )  # progress goes through the Reporter, not stdout
        self._tf_tokens = 0
        self._tf_correct = 0
        self._tf_labelled = 0
        self._tf_clock = time.perf_counter()

    def get_train_dataloader(self):
        """Packed runs: one micro-batch per bin of the token-budget packer (packing.py).

        The loader goes through `accelerator.prepare` like Trainer's own, so under DDP each rank
        gets its share of the bins, the Trainer's epoch loop reaches the sampler's `set_epoch`
        (that epoch's seeded order), and a resumed run skips its consumed micro-batches with
        accelerate's `skip_first_batches`. `len` is the number of bins, the same every epoch,
        so the steps per epoch the Trainer computes once hold for the whole run.
        """
        if self.packed_batches is None:
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        loader = DataLoader(
            self.train_dataset,
            batch_sampler=self.packed_batches,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def compute_loss(
        self, model, inputs, return_outputs=False, num_items_in_batch=None
    ):
        if self.accelerator.num_processes > 1 or return_outputs:
            # Under DDP the forward must go through the wrapped module; use TRL's own path.
            return super().compute_loss(
                model, inputs, return_outputs, num_items_in_batch
            )
        # The selective-head path calls the decoder directly, around the forward that
        # accelerate wrapped in autocast; without this the fp32 LoRA and norm weights run
        # un-autocast fp32 matmuls on the GPU (measured: 1.6x slower than stock TRL on an H100).
        with self.accelerator.autocast():
            loss_sum, n_labelled, n_correct = completion_loss(model, inputs)
        denominator = (
            num_items_in_batch if num_items_in_batch is not None else n_labelled
        )
        loss = loss_sum / torch.as_tensor(denominator, device=loss_sum.device).clamp(
            min=1
        )
        if model.training:
            mask = inputs.get("attention_mask")
            self._tf_tokens += (
                int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            )
            self._tf_correct += int(n_correct)
            self._tf_labelled += int(n_labelled)
        return loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Evaluation during training: the token-weighted mean loss over every labelled token,
        the same figure as the final evaluation (Trainer's own is a mean of per-batch means)."""
        from core.training.evaluate import token_metrics

        with self.accelerator.autocast():
            m = token_metrics(
                self.model, self.eval_examples, self.processing_class.pad_token_id, self.args.per_device_eval_batch_size
            )
        metrics = {
            f"{metric_key_prefix}_loss": m["eval_loss"],
            f"{metric_key_prefix}_perplexity": m["perplexity"],
            f"{metric_key_prefix}_token_accuracy": m["token_accuracy"],
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._tf_tokens:
            now = time.perf_counter()
            logs["tokens_per_second"] = round(
                self._tf_tokens / max(now - self._tf_clock, 1e-9), 2
            )
            logs["token_accuracy"] = self._tf_correct / max(self._tf_labelled, 1)
            self._tf_tokens = self._tf_correct = self._tf_labelled = 0
            self._tf_clock = now
        super().log(logs, start_time)


def build_trainer(
    spec: JobSpec,
    model,
    tokenizer,
    train,
    evals,
    checkpoints_dir: Path,
    dtype: torch.dtype,
    callbacks: list[TrainerCallback] = (),
    plan: RunPlan | None = None,
) -> CompletionOnlySFTTrainer:
    """The trainer for already-encoded examples (`data.Example`), dynamically padded.
    `plan`: this attempt's micro-batch, accumulation and checkpointing (default: the spec's)."""
    import datasets

    from core.training.batching import (
        DynamicPaddingCollator,
        PaddingFreeCollator,
        varlen_attention,
    )

    from core.training.packing import PackedBatchSampler, packing_budget

    packing = spec.hyperparameters.packing
    packed = None
    if packing is True or (packing == "auto" and varlen_attention(model)):
        # Micro-batches packed to the plan's token budget (best-fit decreasing, seeded order).
        budget = packing_budget(spec, plan)
        packed = PackedBatchSampler([len(e.input_ids) for e in train], budget, spec.seed)
        collator = PaddingFreeCollator(tokenizer.pad_token_id)
    else:
        collator = DynamicPaddingCollator(
            tokenizer.pad_token_id, 8 if torch.cuda.is_available() else None
        )
    to_ds = lambda exs: datasets.Dataset.from_list([e.as_features() for e in exs])
    return CompletionOnlySFTTrainer(
        model=model,
        args=sft_config(spec, checkpoints_dir, dtype, has_eval=bool(evals), plan=plan),
        train_dataset=to_ds(train),
        eval_dataset=to_ds(evals) if evals else None,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=list(callbacks),
        eval_examples=evals or (),
        packed_batches=packed,
    )


class ReportingCallback(TrainerCallback):
    """Forwards logs to the reporter and metrics.jsonl, tags checkpoints, polls should_stop."""

    def __init__(
        self,
        reporter: Reporter,
        should_stop: Callable[[], str | None],
        spec_hash: str,
        metrics_path: Path,
        keys: tuple[str, ...] = LOGGED_KEYS,
        *,
        save_each_epoch: bool = False,
    ):
        self.keys = keys  # the training-log keys that become metrics (DPO adds its rewards)
        self.save_each_epoch = save_each_epoch  # OpenAI's default: a checkpoint at each epoch end
        self.epoch_saving: int | None = None
        self.reporter = reporter
        self.should_stop = should_stop
        self.spec_hash = spec_hash
        self.metrics_path = metrics_path
        self.stop_reason: str | None = None
        self.last_metrics: dict = {}
        self.accelerator = None  # set once the trainer exists: several ranks agree on stopping

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        logs = logs or {}
        if "loss" in logs:
            values = {k: logs[k] for k in self.keys if k in logs}
            values.update(step=state.global_step, total_steps=state.max_steps)
        elif "eval_loss" in logs:
            values = {k: v for k, v in logs.items() if k.startswith("eval_")}
            values.update(step=state.global_step, total_steps=state.max_steps)
        else:
            return
        values = {
            k: (float(v) if isinstance(v, torch.Tensor) else v)
            for k, v in values.items()
        }
        self.last_metrics = values
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(values) + "\n")
        self.reporter.metrics(state.global_step, values)

    def on_step_end(self, args, state, control, **kwargs):
        if self.save_each_epoch and state.epoch is not None and float(state.epoch).is_integer():
            # The step that ends an epoch (the trainer's epoch counter is then exactly whole):
            # OpenAI's default checkpoint at every epoch end, the last included, saved with any
            # step checkpoint due now (one save), tagged so retention keeps the newest epochs'
            # (core.services.retention.EPOCH_CHECKPOINTS_KEPT). Only when the spec names no
            # `checkpoint_every_steps`: a cadence the user chose is kept as is.
            control.should_save = True
            self.epoch_saving = int(state.epoch)
        decision = agreed_stop(self.should_stop(), self.accelerator)
        if decision in ("pause", "cancel") and state.global_step < state.max_steps:
            self.stop_reason = decision
            control.should_training_stop = True
            control.should_save = (
                decision == "pause"
            )  # a paused run resumes from this checkpoint

    def on_save(self, args, state, control, **kwargs):
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            # Each rank writes its own part (rng_state_N.pth) and nothing waits for the
            # others: the checkpoint is announced, and uploaded, only once all are done.
            self.accelerator.wait_for_everyone()
        if not state.is_world_process_zero:
            return
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        (path / CHECKPOINT_MARKER).write_text(
            json.dumps({"spec_hash": self.spec_hash, "step": state.global_step})
        )
        metrics = dict(self.last_metrics)
        if self.epoch_saving is not None:
            metrics["completed_epoch"] = self.epoch_saving
            self.epoch_saving = None
        self.reporter.checkpoint(state.global_step, path, metrics)


def newest_checkpoint(checkpoints_dir: Path, spec_hash: str) -> Path | None:
    """The highest-step checkpoint written for this exact spec (others are ignored)."""
    found: list[tuple[int, Path]] = []
    for d in checkpoints_dir.glob("checkpoint-*") if checkpoints_dir.is_dir() else []:
        marker = d / CHECKPOINT_MARKER
        try:
            if json.loads(marker.read_text())["spec_hash"] == spec_hash:
                found.append((int(d.name.split("-")[-1]), d))
        except (OSError, ValueError, KeyError):
            continue
    return max(found)[1] if found else None


def checkpoint_step(path: Path, spec_hash: str) -> int:
    """The global step a checkpoint holds; refuses a missing one or one written for another spec."""
    from core.training.errors import TrainingInputError

    try:
        step = int(json.loads((path / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        raise TrainingInputError(
            f"resume_from: {path} is not a trainer checkpoint"
        ) from None
    marker = path / CHECKPOINT_MARKER
    if marker.exists() and json.loads(marker.read_text()).get("spec_hash") != spec_hash:
        raise TrainingInputError(
            f"resume_from: {path} was written for a different spec"
        )
    return step


def trim_metrics(metrics_path: Path, up_to_step: int) -> None:
    """Drop logged steps after the checkpoint we resume from, so the series stays contiguous."""
    if not metrics_path.exists():
        return
    lines = [
        ln for ln in metrics_path.read_text(encoding="utf-8").splitlines() if ln.strip()
    ]
    kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= up_to_step]
    metrics_path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
