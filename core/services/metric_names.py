"""OpenAI's names for the metrics a job reports, and where each is found among the names
the trainer logs (`loss`, `token_accuracy`, and `eval_*` on evaluation steps).

Checkpoints and metrics events are shown under OpenAI's names (FineTuningJobCheckpoint's
`metrics`: the SDK reads `checkpoint.metrics.train_loss`); the stored rows and the metric
series keep the trainer's names. tuneforge evaluates on the whole validation set, so its
evaluation fills both OpenAI's `valid_*` (a batch, on OpenAI) and `full_valid_*`.
"""

from __future__ import annotations

from typing import Any

SOURCES: dict[str, tuple[str, ...]] = {
    "train_loss": ("train_loss", "loss"),
    "train_mean_token_accuracy": ("train_mean_token_accuracy", "train_accuracy", "token_accuracy", "mean_token_accuracy"),
    "valid_loss": ("valid_loss", "eval_loss"),
    "valid_mean_token_accuracy": ("valid_mean_token_accuracy", "eval_token_accuracy", "eval_mean_token_accuracy"),
    "full_valid_loss": ("full_valid_loss", "eval_loss"),
    "full_valid_mean_token_accuracy": ("full_valid_mean_token_accuracy", "eval_token_accuracy", "eval_mean_token_accuracy"),
}
_RENAMED = {name for names in SOURCES.values() for name in names} - set(SOURCES)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def openai_metrics(values: dict[str, Any] | None) -> dict[str, Any]:
    """`values` under OpenAI's names (numbers only, as its schema types them); every other
    value the trainer logged (learning_rate, grad_norm, epoch, ...) stays, as an extension."""
    values = values or {}
    out = {k: v for k, v in values.items() if k not in _RENAMED and k not in SOURCES}
    for name, sources in SOURCES.items():
        found = next((values[s] for s in sources if _number(values.get(s))), None)
        if found is not None:
            out[name] = found
    return out
