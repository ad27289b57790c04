"""`dry_run(spec)`: what training would do with this data, without loading model weights.

Backs `POST /v1/fine_tuning/jobs/validate`: loads only the tokenizer, renders and encodes
every row exactly as `run()` does (same `data.prepare`), and estimates the step count.
"""

from __future__ import annotations

import math

from core.spec import JobSpec


def estimated_steps(spec: JobSpec, n_train: int, *, capped: bool = True) -> int:
    """Optimizer steps: each takes `batch_size` rows per GPU per micro-step, accumulated
    `gradient_accumulation_steps` times, on every GPU of the job (data parallel)."""
    hp = spec.hyperparameters
    per_step = hp.batch_rows * max(spec.resources.gpus, 1)
    per_epoch = max(
        1,
        math.ceil(math.ceil(n_train / per_step) / hp.gradient_accumulation_steps),
    )
    total = math.ceil(per_epoch * hp.n_epochs)
    return min(total, hp.max_steps) if hp.max_steps and capped else total


def trained_tokens(spec: JobSpec, report: dict, n_train: int) -> int:
    """Tokens the run will process: the training split's tokens times the epochs, cut short in
    proportion when `max_steps` ends it earlier (the time estimate of core.services.fit)."""
    total = (report.get("train_tokens") or {}).get("total_tokens") or 0
    full = estimated_steps(spec, n_train, capped=False)
    share = min(1.0, estimated_steps(spec, n_train) / full) if full else 1.0
    return round(total * spec.hyperparameters.n_epochs * share)


def labelled_fraction(report: dict) -> float | None:
    """Share of training tokens that carry a label (what the LM head computes the loss on)."""
    t = report.get("train_tokens") or {}
    return round(t["completion_tokens"] / t["total_tokens"], 4) if t.get("total_tokens") else None


def dry_run(spec: JobSpec) -> dict:
    from core.training.data import prepare
    from core.training.model import load_tokenizer
    from core.training.preference import prepare_pairs

    data = (prepare_pairs if spec.method.type == "dpo" else prepare)(spec, load_tokenizer(spec))
    data.require_training_rows()
    return {
        **data.report,
        "estimated_steps": estimated_steps(spec, len(data.train)),
        "trained_tokens": trained_tokens(spec, data.report, len(data.train)),
        "labelled_fraction": labelled_fraction(data.report),
        "dataset_fingerprint": data.fingerprint,
        "spec_hash": spec.hash(),
    }
