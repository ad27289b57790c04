"""Training throughput: our pipeline vs the common QLoRA recipe (and stock TRL SFTTrainer).

Same tiny 4-bit model (4-layer Llama, nf4 + double quant, LoRA r16 on all linear layers),
same real Korean news rows (examples/data), same batch size, same number of optimizer
steps, one process. Prints figures; asserts nothing.

  (a) ours:   chat-template rendering, completion-only labels, dynamic padding with
              length-grouped batches, LM head only at labelled positions (core.training).
  (b) common: special tokens pasted into the text then tokenized with special tokens again
              (double BOS), every row padded to max_length 2048, labels = input_ids with
              pad positions masked by pad-token value, loss on every non-pad token, plain
              transformers `Trainer`.
  (c) trl:    TRL SFTTrainer with default SFTConfig (prompt/completion conversational data,
              dynamic padding, its own tokenization), for reference.

  Also: ours_packed (padding-free batches, position_ids restart per example) and trl_no_gc
  (stock TRL with gradient checkpointing off, to isolate that default's cost).
  Timing starts after the first optimizer step (warm-up excluded).

  Then evaluation's generation: --generation-samples prompts (default 64, the default
  evaluation.max_samples) generated in left-padded batches with the KV cache, as the
  evaluation does, against one prompt at a time; same model, same greedy decoding.

Run: python bench/pipeline.py [--steps 10] [--batch-size 4] [--variants ours,common,trl,...]
                              [--generation-samples 64] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO / "examples" / "data" / "sci-news-sum-kr-20.jsonl"
PROMPT, COMPLETION = "다음 글을 요약해주세요: {document}", "{summary}"
MAX_LEN = 2048


class TokenCounter:
    """Wraps a collator and counts processed (batch numel) and non-pad (attention) tokens."""

    def __init__(self, collate):
        self.collate, self.processed, self.real, self.examples = collate, 0, 0, 0

    def __call__(self, features):
        batch = self.collate(features)
        self.processed += batch["input_ids"].numel()
        mask = batch.get(
            "attention_mask"
        )  # absent for padding-free batches: every token is real
        self.real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        self.examples += len(features)
        return batch


def hardware_dtype(spec):
    """The dtype run() trains in here (bf16 on a recent GPU, fp32 on the CPU); every variant
    uses it, so the comparison is between recipes, not between precisions."""
    from core.training.model import compute_dtype

    return compute_dtype(spec.quantization.compute_dtype)


def precision_args(dtype) -> dict:
    import torch

    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


def spec_for(model_dir: Path, steps: int, batch_size: int):
    from core.spec import JobSpec

    return JobSpec(
        model=str(model_dir),
        training_file=str(DATA),
        template={"prompt": PROMPT, "completion": COMPLETION},
        hyperparameters={
            "max_steps": steps,
            "batch_size": batch_size,
            "max_seq_length": MAX_LEN,
            "checkpoint_every_steps": 10_000,
        },
        lora={"r": 16, "alpha": 32},
    )


class _ClockAfterFirstStep:
    """Starts the clock (and zeroes the counts) after step 1, so one-time warm-up is excluded;
    also keeps the logged losses and gradient norms (a run whose loss never moves is void)."""

    def __init__(self, counter):
        from transformers import TrainerCallback

        outer = self

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == 1:
                    outer.t0 = time.perf_counter()
                    counter.processed = counter.real = counter.examples = 0

            def on_log(self, args, state, control, logs=None, **kw):
                logs = logs or {}
                if "loss" in logs:
                    outer.losses.append(float(logs["loss"]))
                if logs.get("grad_norm") is not None:
                    outer.grad_norms.append(float(logs["grad_norm"]))

        self.callback, self.t0, self.losses, self.grad_norms = _CB(), None, [], []


def timed_train(trainer, counter) -> dict:
    import torch
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    clock = _ClockAfterFirstStep(counter)
    trainer.add_callback(clock.callback)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    dt = time.perf_counter() - clock.t0
    return {
        "seconds": dt,
        "examples/s": counter.examples / dt,
        "processed tok/s": counter.processed / dt,
        "non-pad tok/s": counter.real / dt,
        "padding": 1 - counter.real / max(counter.processed, 1),
        "first loss": clock.losses[0] if clock.losses else None,
        "last loss": clock.losses[-1] if clock.losses else None,
        "max grad norm": max(clock.grad_norms, default=None),
        # Over the whole training (model already loaded): what the GPU had to hold.
        "peak bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    }


def run_ours_packed(spec, out: Path) -> dict:
    return run_ours(
        spec.model_copy(
            update={
                "hyperparameters": spec.hyperparameters.model_copy(
                    update={"packing": True}
                )
            }
        ),
        out,
    )


def run_ours(spec, out: Path) -> dict:

    from core.training.data import prepare
    from core.training.model import load_model, load_tokenizer
    from core.training.trainer import build_trainer

    tok = load_tokenizer(spec)
    data = prepare(spec, tok)
    dtype = hardware_dtype(spec)
    model = load_model(spec, dtype)
    trainer = build_trainer(spec, model, tok, data.train, [], out, dtype)
    trainer.data_collator = counter = TokenCounter(trainer.data_collator)
    trainer.args.save_strategy = "no"
    return timed_train(trainer, counter)


def bench_generation(spec, n: int, max_new_tokens: int) -> None:
    """Batched (evaluation's way) vs one-at-a-time generation of the same n prompts."""
    from core.training.data import prepare
    from core.training.encoding import generation_prompt_ids
    from core.training.evaluate import GENERATION_BATCH, decoding, generate
    from core.training.model import load_model, load_tokenizer

    tok = load_tokenizer(spec)
    data = prepare(spec, tok)
    model = load_model(spec, hardware_dtype(spec))
    prompts = [generation_prompt_ids(tok, data.train[i % len(data.train)].turns) for i in range(n)]
    stops = [data.terminator[1], tok.eos_token_id]
    ev = spec.evaluation.model_copy(update={"max_new_tokens": max_new_tokens})
    settings = decoding(spec.model_copy(update={"evaluation": ev}))
    generate(model, tok, prompts[:2], stops, settings)  # warm-up
    timings = {}
    for name, batch in (("batched", GENERATION_BATCH), ("one-at-a-time", 1)):
        t0 = time.perf_counter()
        outputs = generate(model, tok, prompts, stops, settings, batch_size=batch)
        timings[name] = time.perf_counter() - t0
        new_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t, _ in outputs)
        print(
            f"generation {name:14s} {n} prompts (mean {sum(map(len, prompts)) / n:.0f} tokens), "
            f"<= {max_new_tokens} new tokens each: {timings[name]:6.1f}s  {n / timings[name]:6.2f} samples/s  "
            f"(~{new_tokens} tokens out)",
            flush=True,
        )
    print(f"generation batched/one-at-a-time: x{timings['one-at-a-time'] / timings['batched']:.2f}")


def common_rows(tok) -> list[dict]:
    from core.datafiles import read_rows

    out = []
    for row in read_rows(DATA):
        text = (
            f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{PROMPT.format(**row)}<|eot_id|>"
            f"<|start_header_id|>assistant<|end_header_id|>\n\n{COMPLETION.format(**row)}<|eot_id|>"
        )
        enc = tok(
            text, padding="max_length", max_length=MAX_LEN, truncation=True
        )  # BOS added again
        labels = [
            t if t != tok.pad_token_id else -100 for t in enc["input_ids"]
        ]  # masks by pad value
        out.append(
            {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": labels,
            }
        )
    return out


def run_common(spec, out: Path) -> dict:
    import datasets
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    from core.training.model import load_model, load_tokenizer

    tok = load_tokenizer(spec)
    rows = common_rows(tok)
    dtype = hardware_dtype(spec)
    model = load_model(spec, dtype)
    counter = TokenCounter(default_data_collator)
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=spec.hyperparameters.batch_rows,
        max_steps=spec.hyperparameters.max_steps,
        learning_rate=2e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        seed=spec.seed,
        **precision_args(dtype),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        data_collator=counter,
    )
    return timed_train(trainer, counter)


def run_trl_no_gc(spec, out: Path) -> dict:
    return run_trl(spec, out, gradient_checkpointing=False)


def run_trl(spec, out: Path, **overrides) -> dict:
    import datasets
    import torch
    from trl import SFTConfig, SFTTrainer

    from core.datafiles import read_rows
    from core.training.model import load_model, load_tokenizer

    tok = load_tokenizer(spec)
    rows = [
        {
            "prompt": [{"role": "user", "content": PROMPT.format(**r)}],
            "completion": [{"role": "assistant", "content": COMPLETION.format(**r)}],
        }
        for r in read_rows(DATA)
    ]
    dtype = hardware_dtype(spec)
    model = load_model(spec, dtype)
    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=spec.hyperparameters.batch_rows,
        max_steps=spec.hyperparameters.max_steps,
        learning_rate=2e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        max_length=MAX_LEN,
        **precision_args(dtype),
        **overrides,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
    )
    trainer.data_collator = counter = TokenCounter(trainer.data_collator)
    return timed_train(trainer, counter)


def profile_loss_paths(spec, repeats: int = 3) -> None:
    """Where a step's time goes: the same 4-row batch through three loss paths (fwd + bwd)."""
    import datasets
    import torch
    from trl import SFTConfig, SFTTrainer

    from core.datafiles import read_rows
    from core.training.batching import completion_loss
    from core.training.model import load_model, load_tokenizer

    tok = load_tokenizer(spec)
    model = load_model(spec, hardware_dtype(spec))
    model.train()
    rows = [
        {
            "prompt": [{"role": "user", "content": PROMPT.format(**r)}],
            "completion": [{"role": "assistant", "content": COMPLETION.format(**r)}],
        }
        for r in read_rows(DATA)
    ]
    args = SFTConfig(
        output_dir="/tmp/tuneforge-bench-profile",
        per_device_train_batch_size=4,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        max_length=MAX_LEN,
    )
    trl = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
    )
    batch = trl.data_collator([trl.train_dataset[i] for i in range(4)])
    labelled = int((batch["labels"][:, 1:] != -100).sum())

    def trl_fused_head():  # TRL 1.16 SFTTrainer.compute_loss: chunked log-probs + entropy + top-1 over the vocab
        trl.compute_loss(model, dict(batch)).backward()

    def full_logits():  # plain HF: model(labels=...) projects every position to the vocabulary
        model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss.backward()

    def ours():  # LM head only at the labelled positions
        loss_sum, n, _ = completion_loss(model, dict(batch))
        (loss_sum / n).backward()

    print(
        f"profile: one batch {tuple(batch['input_ids'].shape)}, {labelled} labelled positions; fwd+bwd per step"
    )
    for f in (trl_fused_head, full_logits, ours):
        f()
        t0 = time.perf_counter()
        for _ in range(repeats):
            f()
        print(
            f"  {f.__name__:15s} {(time.perf_counter() - t0) / repeats:6.3f} s/step",
            flush=True,
        )


VARIANTS = {
    "ours": run_ours,
    "ours_packed": run_ours_packed,
    "common": run_common,
    "trl": run_trl,
    "trl_no_gc": run_trl_no_gc,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=4)
    # 1 by default: the tiny model's matrices gain nothing from intra-op threads, and on a shared
    # 2-core box OpenMP spin-waiting under contention swung timings by 5x between runs.
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (0: torch's default)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also time the three loss paths on one batch",
    )
    ap.add_argument("--hidden-size", type=int, default=64, help="random-init Llama width (64 = the tiny test model)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--variants", default="ours,ours_packed,common,trl,trl_no_gc")
    ap.add_argument("--generation-samples", type=int, default=64, help="0: skip the generation comparison")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    a = ap.parse_args()

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if a.threads:
        torch.set_num_threads(a.threads)
    from core.training.tiny_model import make_tiny_model

    print(
        f"device={'cuda' if torch.cuda.is_available() else 'cpu'} threads={torch.get_num_threads()} "
        f"steps={a.steps} batch={a.batch_size} rows={DATA.name} model=llama hidden={a.hidden_size} layers={a.layers}"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model(Path(tmp) / "model", hidden_size=a.hidden_size, layers=a.layers)
        spec = spec_for(model_dir, a.steps, a.batch_size)
        if a.profile:
            profile_loss_paths(spec)
        for name in filter(None, a.variants.split(",")):
            torch.manual_seed(0)
            results[name] = VARIANTS[name](spec, Path(tmp) / name)
            r = results[name]
            print(
                f"{name:11s} {r['seconds']:7.1f}s  {r['examples/s']:7.2f} examples/s  "
                f"{r['processed tok/s']:9.0f} processed tok/s  {r['non-pad tok/s']:8.0f} non-pad tok/s  "
                f"padding {r['padding']:.0%}",
                flush=True,
            )
        if a.generation_samples:
            torch.manual_seed(0)
            bench_generation(spec, a.generation_samples, a.max_new_tokens)
    if "common" in results:
        base = results["common"]
        for name, r in results.items():
            if name != "common":
                print(
                    f"{name}/common: examples/s x{r['examples/s'] / base['examples/s']:.2f}, "
                    f"non-pad tok/s x{r['non-pad tok/s'] / base['non-pad tok/s']:.2f}"
                )


if __name__ == "__main__":
    main()
