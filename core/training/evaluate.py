"""Evaluate stage: eval loss, perplexity (exp of the mean token loss), token accuracy, and
ROUGE on generations for a sample of validation rows (DESIGN §6.6)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch

from core.spec import JobSpec
from core.training.batching import DynamicPaddingCollator, completion_loss
from core.training.data import Example
from core.training.encoding import generation_prompt_ids
from core.training.rouge import mean_rouge, rouge


@torch.no_grad()
def token_metrics(
    model, examples: list[Example], pad_token_id: int, batch_size: int
) -> dict[str, float]:
    """Loss averaged over every labelled token of the set (not over batches)."""
    model.eval()
    collate = DynamicPaddingCollator(pad_token_id)
    dev = next(model.parameters()).device
    total = count = correct = 0.0
    ordered = sorted(examples, key=lambda e: len(e.input_ids))  # less padding
    for i in range(0, len(ordered), batch_size):
        batch = {
            k: v.to(dev)
            for k, v in collate(
                [e.as_features() for e in ordered[i : i + batch_size]]
            ).items()
        }
        loss_sum, n, c = completion_loss(model, batch)
        total, count, correct = (
            total + float(loss_sum),
            count + float(n),
            correct + float(c),
        )
    mean = total / max(count, 1)
    return {
        "eval_loss": mean,
        "perplexity": math.exp(min(mean, 50.0)),
        "token_accuracy": correct / max(count, 1),
    }


@torch.no_grad()
def generate(
    model, tokenizer, turns: list[dict], stop_ids: list[int], max_new_tokens: int
) -> tuple[str, bool]:
    """Greedy completion of the conversation's last assistant turn; (text, stopped at a terminator)."""
    model.eval()
    dev = next(model.parameters()).device
    ids = torch.tensor([generation_prompt_ids(tokenizer, turns)], device=dev)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    new = out[0, ids.shape[1] :].tolist()
    stopped = bool(new) and new[-1] in stop_ids
    return tokenizer.decode(new, skip_special_tokens=True).strip(), stopped


def evaluate(
    spec: JobSpec,
    model,
    tokenizer,
    examples: list[Example],
    terminator_id: int,
    should_stop: Callable[[], str | None] = lambda: None,
) -> dict:
    """The eval report: metrics + sample generations. Empty metrics when there is no validation data."""
    ev = spec.evaluation
    if not examples:
        return {
            "metrics": {},
            "samples": [],
            "note": "no validation data (set validation_file or validation_split)",
        }
    metrics: dict[str, float] = {}
    if {"loss", "perplexity", "token_accuracy"} & set(ev.metrics):
        tm = token_metrics(
            model, examples, tokenizer.pad_token_id, spec.hyperparameters.batch_size
        )
        wanted = {
            "loss": "eval_loss",
            "perplexity": "perplexity",
            "token_accuracy": "token_accuracy",
        }
        metrics.update({wanted[m]: tm[wanted[m]] for m in wanted if m in ev.metrics})
    samples = []
    chosen = random.Random(spec.seed).sample(
        examples, min(ev.generation_samples, len(examples))
    )
    stop_ids = sorted({terminator_id, tokenizer.eos_token_id} - {None})
    for ex in sorted(chosen, key=lambda e: e.row):
        if should_stop() == "cancel":
            break
        prediction, stopped = generate(
            model, tokenizer, ex.turns, stop_ids, ev.max_new_tokens
        )
        reference = ex.turns[-1]["content"]
        samples.append(
            {
                "row": ex.row,
                "prompt": ex.turns[-2]["content"] if len(ex.turns) > 1 else "",
                "reference": reference,
                "prediction": prediction,
                "stopped": stopped,
                **rouge(prediction, reference),
            }
        )
    if samples:
        if "rouge" in ev.metrics:
            metrics.update(
                mean_rouge([(s["prediction"], s["reference"]) for s in samples])
            )
        metrics["exact_match"] = sum(
            s["prediction"] == s["reference"].strip() for s in samples
        ) / len(samples)
        metrics["stopped_at_terminator"] = sum(s["stopped"] for s in samples) / len(
            samples
        )
    return {
        "metrics": metrics,
        "samples": samples,
        "num_eval_rows": len(examples),
        "num_generated": len(samples),
    }
