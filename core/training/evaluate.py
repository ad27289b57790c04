"""Evaluate stage: does the fine-tune help? (DESIGN §6.6, §6.12)

The same evaluation runs twice on the same rows with the same decoding: once on the
fine-tuned model and once with its adapter disabled (the base model), and the report puts
them side by side. Per model: eval loss, perplexity (exp of the mean token loss) and token
accuracy over every validation row; ROUGE (words, morphemes, characters), exact match and
the share of generations that stopped at the turn terminator over up to
`evaluation.max_samples` rows, generated in left-padded batches with the model's KV cache.
`generation_samples` of them are shown in the report with both outputs.
"""

from __future__ import annotations

import math
import random
import unicodedata
from collections.abc import Callable
from contextlib import nullcontext

import torch

from core.spec import JobSpec
from core.training.batching import DynamicPaddingCollator, completion_loss
from core.training.data import Example
from core.training.encoding import generation_prompt_ids, reference_text
from core.training.rouge import TOKENIZATIONS, mean_rouge, rouge

GENERATION_BATCH = 16  # rows generated together; no grad and no stored activations, so cheap in memory
EXACT_MATCH_RULE = "prediction and reference equal after Unicode NFKC normalisation and whitespace collapsing"
TOKEN_METRICS = {"loss": "eval_loss", "perplexity": "perplexity", "token_accuracy": "token_accuracy"}


@torch.no_grad()
def token_metrics(model, examples: list[Example], pad_token_id: int, batch_size: int) -> dict[str, float]:
    """Loss averaged over every labelled token of the set (not over batches)."""
    was_training = model.training
    model.eval()
    collate = DynamicPaddingCollator(pad_token_id)
    dev = next(model.parameters()).device
    total = count = correct = 0.0
    ordered = sorted(examples, key=lambda e: len(e.input_ids))  # less padding
    for i in range(0, len(ordered), batch_size):
        batch = {k: v.to(dev) for k, v in collate([e.as_features() for e in ordered[i : i + batch_size]]).items()}
        loss_sum, n, c = completion_loss(model, batch)
        total, count, correct = total + float(loss_sum), count + float(n), correct + float(c)
    model.train(was_training)
    mean = total / max(count, 1)
    return {"eval_loss": mean, "perplexity": math.exp(min(mean, 50.0)), "token_accuracy": correct / max(count, 1)}


def decoding(spec: JobSpec) -> dict:
    """The decoding settings, as recorded in the report: greedy unless a temperature is set."""
    ev = spec.evaluation
    settings = {
        "strategy": "sampling" if ev.temperature > 0 else "greedy",
        "max_new_tokens": ev.max_new_tokens,
        "repetition_penalty": ev.repetition_penalty,
    }
    if ev.temperature > 0:
        settings.update(temperature=ev.temperature, top_p=ev.top_p, seed=spec.seed)
    return settings


def _generate_kwargs(settings: dict) -> dict:
    kwargs = {
        "max_new_tokens": settings["max_new_tokens"],
        "repetition_penalty": settings["repetition_penalty"],
        "do_sample": settings["strategy"] == "sampling",
    }
    if kwargs["do_sample"]:
        kwargs.update(temperature=settings["temperature"], top_p=settings["top_p"])
    return kwargs


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    stop_ids: list[int],
    settings: dict,
    batch_size: int = GENERATION_BATCH,
    should_stop: Callable[[], str | None] = lambda: None,
) -> list[tuple[str, bool]]:
    """Completions for token-id prompts, in their order: (text, stopped at a terminator).

    Prompts of similar length are batched together, left-padded (so every row's next token
    sits at the same position) and decoded with the model's KV cache."""
    model.eval()
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: dict[int, tuple[str, bool]] = {}
    for start in range(0, len(order), batch_size):
        if should_stop() == "cancel":
            break
        chunk = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            n = len(prompts[i])
            ids[row, width - n :] = torch.tensor(prompts[i])
            mask[row, width - n :] = 1
        out = model.generate(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            eos_token_id=stop_ids,
            pad_token_id=pad,
            use_cache=True,
            **_generate_kwargs(settings),
        )
        for row, i in enumerate(chunk):
            new = out[row, width:].tolist()
            end = next((k for k, t in enumerate(new) if t in stop_ids), None)
            stopped = end is not None
            new = new[: end + 1] if stopped else new  # what follows the stop is padding
            results[i] = (tokenizer.decode(new, skip_special_tokens=True).strip(), stopped)
    return [results[i] for i in range(len(prompts)) if i in results]


def normalised(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _score(spec, model, tokenizer, examples, chosen, stop_ids, settings, should_stop) -> tuple[dict, list]:
    """One model's metrics and outputs over the chosen rows."""
    ev = spec.evaluation
    metrics: dict[str, float] = {}
    if set(TOKEN_METRICS) & set(ev.metrics):
        tm = token_metrics(model, examples, tokenizer.pad_token_id, spec.hyperparameters.batch_rows)
        metrics.update({TOKEN_METRICS[m]: tm[TOKEN_METRICS[m]] for m in TOKEN_METRICS if m in ev.metrics})
    if spec.evaluation.temperature > 0:
        torch.manual_seed(spec.seed)  # both models sample from the same random stream
    outputs = generate(
        model,
        tokenizer,
        [generation_prompt_ids(tokenizer, ex.turns) for ex in chosen],
        stop_ids,
        settings,
        should_stop=should_stop,
    )
    if outputs:
        refs = [reference_text(tokenizer, ex.turns) for ex in chosen[: len(outputs)]]
        if "rouge" in ev.metrics:
            metrics.update(mean_rouge([(text, ref) for (text, _), ref in zip(outputs, refs)]))
        metrics["exact_match"] = sum(normalised(t) == normalised(r) for (t, _), r in zip(outputs, refs)) / len(outputs)
        metrics["stopped_at_terminator"] = sum(s for _, s in outputs) / len(outputs)
    return metrics, outputs


def evaluate(
    spec: JobSpec,
    model,
    tokenizer,
    examples: list[Example],
    terminator_id: int,
    should_stop: Callable[[], str | None] = lambda: None,
    empty_note: str | None = None,
) -> dict:
    """The eval report (fields in docs/training.md). `metrics` are the fine-tuned model's,
    `base_metrics` the same evaluation with the adapter disabled."""
    ev = spec.evaluation
    if not examples:
        return {
            "metrics": {},
            "base_metrics": {},
            "samples": [],
            "note": empty_note or "no validation data (set validation_file or validation_split)",
        }
    chosen = random.Random(spec.seed).sample(examples, min(ev.max_samples, len(examples)))
    shown = {ex.row for ex in chosen[: ev.generation_samples]}
    chosen.sort(key=lambda e: e.row)
    stop_ids = sorted({terminator_id, tokenizer.eos_token_id} - {None})
    settings = decoding(spec)
    args = (spec, model, tokenizer, examples, chosen, stop_ids, settings, should_stop)
    tuned, tuned_out = _score(*args)
    with model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext():
        base, base_out = _score(*args)
    samples = []
    with_rouge = "rouge" in ev.metrics
    for ex, (text, stopped), (base_text, base_stopped) in zip(chosen, tuned_out, base_out):
        if ex.row not in shown:
            continue
        reference = reference_text(tokenizer, ex.turns)
        samples.append(
            {
                "row": ex.row,
                "prompt": ex.turns[-2]["content"] if len(ex.turns) > 1 else "",
                "reference": reference,
                "base_output": base_text,
                "tuned_output": text,
                "prediction": text,
                "base_stopped": base_stopped,
                "stopped": stopped,
                "base_rouge": rouge(base_text, reference) if with_rouge else {},
                "rouge": rouge(text, reference) if with_rouge else {},
                "exact_match": normalised(text) == normalised(reference),
            }
        )
    return {
        "metrics": tuned,
        "base_metrics": base,
        "comparison": {k: {"base": base.get(k), "tuned": v} for k, v in tuned.items()},
        "num_eval_rows": len(examples),
        "num_generated": len(tuned_out),
        "decoding": settings,
        "rouge_tokenization": {
            "rouge1, rouge2, rougeL": TOKENIZATIONS["words"],
            "*_morphemes": TOKENIZATIONS["morphemes"],
            "*_chars": TOKENIZATIONS["chars"],
        },
        "exact_match_rule": EXACT_MATCH_RULE,
        "samples": samples,
    }
