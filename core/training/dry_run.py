"""`dry_run(spec)`: what training would do with this data, without loading model weights.

Backs `POST /v1/fine_tuning/jobs/validate`: loads only the tokenizer, renders and encodes
every row exactly as `run()` does (same `data.prepare`), and estimates the step count.
"""

from __future__ import annotations

import math

from core.spec import JobSpec


def estimated_steps(spec: JobSpec, n_train: int) -> int:
    hp = spec.hyperparameters
    per_epoch = max(
        1,
        math.ceil(math.ceil(n_train / hp.batch_rows) / hp.gradient_accumulation_steps),
    )
    total = math.ceil(per_epoch * hp.n_epochs)
    return min(total, hp.max_steps) if hp.max_steps else total


def dry_run(spec: JobSpec) -> dict:
    from core.training.data import prepare
    from core.training.model import load_tokenizer
    from core.training.preference import prepare_pairs

    data = (prepare_pairs if spec.method.type == "dpo" else prepare)(spec, load_tokenizer(spec))
    data.require_training_rows()
    return {
        **data.report,
        "estimated_steps": estimated_steps(spec, len(data.train)),
        "dataset_fingerprint": data.fingerprint,
        "spec_hash": spec.hash(),
    }
