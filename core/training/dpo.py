"""DPO train and evaluate stages: TRL's DPOTrainer over our pre-encoded pairs.

The policy is the LoRA adapter on the (4-bit) base model; the reference is the same model
with the adapter disabled, so DPO needs no second copy of the weights in memory. TRL, given
a peft model and no `ref_model`, adds a frozen copy of the adapter as the reference ("ref");
a fresh adapter is zero in its B matrices, so that copy is the base exactly and we delete it,
and TRL then computes the reference with adapters disabled.

A job started from another job's adapter (`from_checkpoint`, e.g. a supervised fine-tune)
keeps that frozen copy: the reference of DPO is the model it starts from (the SFT model, as
in the DPO paper), and a LoRA-sized copy is all it costs. It is dropped before the adapter
is saved.

Per-step metrics keep the names of the metric series (`rewards_chosen`, `rewards_rejected`,
`rewards_margin`, `reward_accuracy`, `logps_chosen`, `logps_rejected`), reported through
the same `ReportingCallback` as supervised training, so checkpoints, pause/resume and the
dashboard work unchanged.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from core.spec import JobSpec
from core.training.plan import RunPlan
from core.training.preference import Pair
from core.training.trainer import LOGGED_KEYS, training_args

# TRL's log names -> the series names (a "/" does not belong in a metric name of the API).
RENAMED = {
    "rewards/chosen": "rewards_chosen",
    "rewards/rejected": "rewards_rejected",
    "rewards/margins": "rewards_margin",
    "rewards/accuracies": "reward_accuracy",  # per pair: reward(preferred) > reward(non-preferred)
    "logps/chosen": "logps_chosen",
    "logps/rejected": "logps_rejected",
}
DPO_LOGGED_KEYS = (*LOGGED_KEYS, *RENAMED.values())


def dpo_config(
    spec: JobSpec, checkpoints_dir: Path, dtype: torch.dtype, has_eval: bool, plan: RunPlan | None = None
) -> DPOConfig:
    """`plan.micro_batch_size` counts pairs here (each a chosen and a rejected row; the
    plan is made with two rows per pair, core.training.plan.make_plan)."""
    return DPOConfig(
        **training_args(spec, checkpoints_dir, dtype, has_eval, plan),
        beta=spec.method.dpo.beta,
        max_length=None,  # pairs were encoded to fit max_seq_length (preference.py)
        precompute_ref_log_probs=False,  # the reference is one adapter toggle away
        disable_dropout=True,  # the policy and reference forwards must see the same network
    )


class PreferenceTrainer(DPOTrainer):
    """DPOTrainer on already-tokenized pairs, with the reference being the adapter disabled."""

    def __init__(self, *args, **kwargs):
        from core.training.model import upcast_adapter

        started_from_adapter = kwargs.pop("started_from_adapter", False)
        super().__init__(*args, **kwargs)
        if "ref" in self.model.peft_config and not started_from_adapter:
            self.model.delete_adapter("ref")  # reference = adapter disabled (see module doc)
        upcast_adapter(self.model)  # fp32 master weights (DESIGN §6.9), as in SFT
        self.remove_callback(PrinterCallback)  # progress goes through the Reporter

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Our pairs are encoded by `preference.encode_pair` (the same masking and special-token
        rules as supervised rows); TRL's own tokenization must not run on them again."""
        return dataset

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        for old, new in RENAMED.items():
            values = self._metrics[mode].pop(old, None)
            if values:
                self._metrics[mode][new] = values
        super().log(logs, start_time)  # (prefixes eval metrics with "eval_" itself)


def build_dpo_trainer(
    spec: JobSpec,
    model,
    tokenizer,
    train: list[Pair],
    evals: list[Pair],
    checkpoints_dir: Path,
    dtype: torch.dtype,
    callbacks: list[TrainerCallback] = (),
    plan: RunPlan | None = None,
) -> PreferenceTrainer:
    import datasets

    to_ds = lambda pairs: datasets.Dataset.from_list([p.as_features() for p in pairs])
    eval_on = bool(evals) and spec.evaluation.eval_every_steps is not None
    return PreferenceTrainer(
        model=model,
        ref_model=None,
        args=dpo_config(spec, checkpoints_dir, dtype, has_eval=bool(evals), plan=plan),
        train_dataset=to_ds(train),
        eval_dataset=to_ds(evals) if eval_on else None,
        processing_class=tokenizer,
        data_collator=DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id),
        callbacks=list(callbacks),
        started_from_adapter=spec.from_checkpoint is not None,
    )


def reference(model):
    """A context in which `model` is DPO's reference: the frozen starting adapter when the
    job started from one, else the base (adapter disabled)."""
    from trl.trainer.utils import use_adapter

    if "ref" in getattr(model, "peft_config", {}):
        return use_adapter(model, "ref")
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


def drop_reference(model) -> None:
    """Remove the frozen reference adapter, so only the trained one is saved."""
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


@torch.no_grad()
def pair_logps(model, pairs: list[Pair], pad_token_id: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of each pair's preferred and non-preferred completion (the
    quantities DPO compares), in the order of `pairs`."""
    was_training = model.training
    model.eval()
    collate = DataCollatorForPreference(pad_token_id=pad_token_id)
    dev = next(model.parameters()).device
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        batch = collate([p.as_features() for p in pairs[i : i + batch_size]])
        ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        target = ids[:, 1:]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        sums = (logp * batch["completion_mask"][:, 1:].to(dev)).sum(dim=1)
        c, r = sums.chunk(2)
        chosen.append(c.cpu())
        rejected.append(r.cpu())
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def evaluate_pairs(
    spec: JobSpec, model, pad_token_id: int, pairs: list[Pair], empty_note: str | None = None, batch_size: int | None = None
) -> dict:
    """The DPO eval report: preference accuracy (share of validation pairs whose preferred
    output the model finds more likely) of the base (adapter disabled) and the tuned model,
    plus the tuned model's implicit-reward accuracy and margin against DPO's reference (the
    base, or the adapter the job started from).
    Same top-level shape as the supervised report (`metrics`, `base_metrics`, `comparison`)."""
    if not pairs:
        return {
            "method": "dpo",
            "metrics": {},
            "base_metrics": {},
            "samples": [],
            "note": empty_note or "no validation pairs (set validation_file or validation_split)",
        }
    bs = batch_size or spec.hyperparameters.batch_rows  # pairs per forward: the run plan's micro-batch
    tuned_c, tuned_r = pair_logps(model, pairs, pad_token_id, bs)
    with model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext():
        base_c, base_r = pair_logps(model, pairs, pad_token_id, bs)
    ref_c, ref_r = base_c, base_r
    if "ref" in getattr(model, "peft_config", {}):
        with reference(model):
            ref_c, ref_r = pair_logps(model, pairs, pad_token_id, bs)
    beta = spec.method.dpo.beta
    margin = beta * ((tuned_c - ref_c) - (tuned_r - ref_r))

    def side(c: torch.Tensor, r: torch.Tensor) -> dict:
        return {"preference_accuracy": float((c > r).float().mean()), "logp_margin": float((c - r).mean())}

    tuned, base = side(tuned_c, tuned_r), side(base_c, base_r)
    tuned.update(reward_accuracy=float((margin > 0).float().mean()), reward_margin=float(margin.mean()))
    return {
        "method": "dpo",
        "metrics": tuned,
        "base_metrics": base,
        "comparison": {k: {"base": base.get(k), "tuned": v} for k, v in tuned.items()},
        "num_eval_rows": len(pairs),
        "beta": beta,
        "samples": [
            {
                "row": p.row,
                "base_logp_preferred": float(bc),
                "base_logp_non_preferred": float(br),
                "tuned_logp_preferred": float(tc),
                "tuned_logp_non_preferred": float(tr),
            }
            for p, bc, br, tc, tr in list(zip(pairs, base_c, base_r, tuned_c, tuned_r))[: spec.evaluation.generation_samples]
        ],
    }
