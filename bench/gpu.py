"""The 8B benchmark: one command on one H100 prints the whole table (issue: real-size training).

  model     Llama-3-8B's shape (hidden 4096, 32 layers, 32 heads / 8 KV heads, MLP 14336, vocab
            128256), random weights created on the GPU and handed to the same
            `from_pretrained(quantization_config=...)` call a checkpoint takes (nf4 + double
            quant): nothing is downloaded, the 4-bit path is transformers' own.
  adapter   LoRA r16 / alpha 32 on every linear layer but the head.
  data      the Korean news rows of examples/data (epochs repeat them as needed), max 2048 tokens.
  variants  ours (core.training, micro-batch / accumulation / checkpointing from the fit plan,
            micro-batches packed to the plan's token budget, "tuneforge_varlen" attention --
            torch's varlen kernel -- and Liger's kernels when liger-kernel is installed),
            common (bench/pipeline.py's common recipe: pad to 2048, loss on every token, plain
            Trainer, with the checkpointing that recipe turns on, no fused kernels; run first),
            trl (stock TRL SFTTrainer at its best settings here: padding-free when
            flash-attention is installed, Liger when liger-kernel is installed). The variants
            themselves are bench/pipeline.py's.
  per row   non-pad tokens/s, examples/s, MFU, peak memory (torch.cuda.max_memory_allocated),
            first and last loss and the largest gradient norm (a run that does not train is void).
  MFU       FLOPs per token = 4 x base params (forward + input gradients; frozen weights get no
            weight gradient) + 6 x LoRA params + attention 12 x layers x q-width x mean causal
            context; recompute (checkpointing) not counted; peak 989 TFLOP/s (H100 SXM, bf16 dense).
  plan      the fit planner's predicted peak vs the measured one for three configurations.

Run on a GPU host: python bench/gpu.py            (~4-6 minutes on an H100)
Check it anywhere:  python bench/gpu.py --cpu-smoke   (a tiny Llama on the CPU, same code, seconds)
Prints figures; asserts nothing (the targets are printed as ratios).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import pipeline  # noqa: E402  (the variants, token counting, timing)

H100_BF16_PEAK = 989e12
LLAMA3_8B = dict(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=14336,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=4096, tie_word_embeddings=False)
PLAN_CONFIGS = [(1024, False), (2048, True), (4096, True)]  # (seq length, checkpointing)
LABELLED = 0.25  # share of labelled tokens in the plan-check batches (a summary after its article)


def write_model_dir(directory: Path, shape: dict) -> Path:
    """config.json + the Korean tokenizer (Llama-3 specials); no weights (see random_weights)."""
    from transformers import LlamaConfig

    from core.training.tiny_model import make_tokenizer

    tok = make_tokenizer()
    vocab = max(shape.get("vocab_size", 0), len(tok))
    LlamaConfig(**{**shape, "vocab_size": vocab}, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@contextmanager
def random_weights(seed: int = 0):
    """Every variant gets its base model from `core.training.model.load_base_model`; inside this
    block that one function builds seeded random weights of the directory's config on the
    device and passes them (`state_dict=`) to the same from_pretrained + BitsAndBytesConfig call
    a downloaded checkpoint goes through. Everything after it (kbit preparation, LoRA, trainers)
    is the unchanged code path."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import core.training.model as model_stage
    from core.training.attention import attn_implementation_for

    original = model_stage.load_base_model

    def load_random(spec, dtype, *, quantized: bool = True):
        config = AutoConfig.from_pretrained(spec.model)
        dev = model_stage.device()
        torch.manual_seed(seed)
        with torch.device(dev):
            built = AutoModelForCausalLM.from_config(config, dtype=dtype)
        cls, state = type(built), built.state_dict()
        del built
        qconf = model_stage.quantization_config(spec, dtype) if quantized else None
        model = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype, device_map={"": dev},
                                    attn_implementation=attn_implementation_for(dev),
                                    **({"quantization_config": qconf} if qconf is not None else {}))
        del state
        if dev == "cuda":
            torch.cuda.empty_cache()
        return model

    model_stage.load_base_model = load_random
    try:
        yield
    finally:
        model_stage.load_base_model = original


# --- FLOPs -----------------------------------------------------------------------------------


def flops_per_token(shape, lora_params: int, mean_len: float) -> float:
    """4 x base + 6 x LoRA params + attention (12 x layers x q-width x mean causal context)."""
    base = shape.total_params - shape.embedding_params  # the embedding lookup does no matmul
    attention = 12 * shape.num_layers * shape.num_heads * shape.head_dim * (mean_len + 1) / 2
    return 4 * base + 6 * lora_params + attention


# --- the variants ----------------------------------------------------------------------------


def trl_best_overrides(needs_checkpointing: bool) -> dict:
    """Stock TRL's fastest settings that work on this host."""
    import importlib.util

    from core.training.kernels import liger_installed

    flash = importlib.util.find_spec("flash_attn") is not None
    liger = liger_installed()
    return {"padding_free": flash, "use_liger_kernel": liger, "gradient_checkpointing": needs_checkpointing}


def run_variants(model_dir: Path, work: Path, args, plan) -> dict:
    import torch

    hp = {"gradient_checkpointing": plan.gradient_checkpointing}
    base = pipeline.spec_for(model_dir, args.steps, args.batch_size)
    with_hp = lambda spec, **kw: spec.model_copy(
        update={"hyperparameters": spec.hyperparameters.model_copy(update=kw)}
    )
    ours = with_hp(base, batch_size=plan.micro_batch_size, gradient_accumulation_steps=plan.gradient_accumulation_steps,
                   packing=True, **hp)
    # The common recipe online prepares the 4-bit model with checkpointing on (PEFT's default).
    common = with_hp(base, gradient_checkpointing=True)
    def plain(out):
        with without_fused_kernels():
            return pipeline.run_common(common, out)

    runs = {
        "ours": lambda out: pipeline.run_ours(ours, out),
        "common": plain,
        "trl": lambda out: pipeline.run_trl(common, out, **trl_best_overrides(True)),
    }
    names = args.variants.split(",")
    # The common recipe first: Liger patches the model type's transformers module in passing
    # (RoPE function, norm and MLP classes), so after ours or TRL with Liger had run, a plain
    # model of the same type in this process would no longer be plain.
    results = {}
    for name in sorted(names, key=lambda n: n != "common"):
        torch.manual_seed(0)
        t0 = time.perf_counter()
        results[name] = runs[name](work / name)
        results[name]["wall"] = time.perf_counter() - t0
        print(f"  {name}: done in {results[name]['wall']:.0f}s", flush=True)
        release_memory()
    return {name: results[name] for name in names}


@contextmanager
def without_fused_kernels():
    """The common recipe loads its model through the same `load_model` as ours; inside this
    block that function applies no Liger kernels (the recipe is plain transformers). Its
    attention stays as loaded: its rows are padded, so "tuneforge_varlen" runs exactly sdpa."""
    import core.training.kernels as kernels

    original = kernels.apply_kernels
    kernels.apply_kernels = lambda model: []
    try:
        yield
    finally:
        kernels.apply_kernels = original


# --- plan vs measured --------------------------------------------------------------------------


def plan_check(model_dir: Path, shape, setup, configs, steps: int = 2) -> list[dict]:
    """One model, steps of our loss + AdamW on rows of exactly `seq` tokens (the last quarter
    labelled, no padding), checkpointing switched per configuration; the peak of the last step
    (Adam state already allocated) against the plan's estimate."""
    import torch

    from core.training.batching import completion_loss
    from core.training.encoding import IGNORE_INDEX
    from core.memory_plan import estimate
    from core.training.model import compute_dtype, load_model

    spec = pipeline.spec_for(model_dir, 1, 1)
    setup = dataclasses.replace(setup, attention_mask=False)  # whole rows, no padding: no mask
    dtype = compute_dtype()
    model = load_model(spec, dtype)
    model.train()
    base = model.get_base_model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    rows = []
    for seq, ckpt in configs:
        if ckpt:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_disable()
        ids = torch.randint(10, 1000, (1, seq), device=dev, generator=torch.Generator(dev).manual_seed(seq))
        labels = ids.clone()
        labels[:, : int(seq * (1 - LABELLED))] = IGNORE_INDEX
        for step in range(steps):
            if cuda and step == steps - 1:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            with torch.autocast(dev, dtype=dtype, enabled=dtype != torch.float32):
                loss_sum, n, _ = completion_loss(model, {"input_ids": ids, "labels": labels})
            (loss_sum / n).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        measured = torch.cuda.max_memory_allocated() if cuda else None
        est = estimate(shape, setup, micro_batch_size=1, max_seq_length=seq, gradient_checkpointing=ckpt,
                       labelled_fraction=LABELLED)
        rows.append({"seq": seq, "checkpointing": ckpt, "predicted": est.peak_allocated, "measured": measured})
    del model, base, opt
    release_memory()
    return rows


def release_memory() -> None:
    """Trainers and models hold reference cycles (callbacks, hooks): collect them before the
    next variant, or its peak memory would include the previous model."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the table -------------------------------------------------------------------------------


def gib(n) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def num(x, fmt) -> str:
    return "-" if x is None else format(x, fmt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="a tiny Llama on the CPU: checks the code, not speed")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per variant (default 12; smoke 3)")
    ap.add_argument("--batch-size", type=int, default=4, help="rows per optimizer step (every variant)")
    ap.add_argument("--variants", default="ours,common,trl")
    ap.add_argument("--no-plan-check", action="store_true")
    a = ap.parse_args()
    a.steps = a.steps or (3 if a.cpu_smoke else 12)

    import torch
    import transformers
    from transformers import AutoConfig

    from core.memory_plan import GiB, TrainingSetup, lora_params, plan_fit
    from core.training.model_shape import shape_from_config

    transformers.logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()
    cuda = torch.cuda.is_available()
    if not cuda and not a.cpu_smoke:
        sys.exit("bench/gpu.py needs a CUDA GPU; use --cpu-smoke to check the code on the CPU")
    if a.cpu_smoke:
        torch.set_num_threads(1)
    gpu_bytes = torch.cuda.get_device_properties(0).total_memory if cuda else 4 * GiB
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu (smoke)"
    setup = TrainingSetup() if cuda else TrainingSetup(compute_bytes=4, dropout_mask_bytes=None)

    with tempfile.TemporaryDirectory() as tmp, random_weights(seed=0):
        model_dir = write_model_dir(Path(tmp) / "model", TINY if a.cpu_smoke else LLAMA3_8B)
        shape = shape_from_config(AutoConfig.from_pretrained(model_dir))
        plan = plan_fit(shape, batch_size=a.batch_size, max_seq_length=pipeline.MAX_LEN, gpu_memory_bytes=gpu_bytes,
                        setup=setup, labelled_fraction=LABELLED)
        plan_24 = plan_fit(shape, batch_size=a.batch_size, max_seq_length=2048, gpu_memory_bytes=24 * GiB,
                           setup=TrainingSetup(), labelled_fraction=LABELLED)
        print(f"device={device_name} params={shape.total_params / 1e9:.2f}B steps={a.steps} batch={a.batch_size} "
              f"rows={pipeline.DATA.name} max_len={pipeline.MAX_LEN}", flush=True)
        print(f"plan here: micro-batch {plan.micro_batch_size} x accumulation {plan.gradient_accumulation_steps}, "
              f"checkpointing {'on' if plan.gradient_checkpointing else 'off'}, predicted peak {gib(plan.predicted_peak_bytes)}; "
              f"on a 24 GiB GPU: {'fits' if plan_24.fits else 'does not fit'}"
              + (f" (micro-batch {plan_24.micro_batch_size}, checkpointing {plan_24.gradient_checkpointing})" if plan_24.fits else ""),
              flush=True)
        results = run_variants(model_dir, Path(tmp), a, plan)
        checks = [] if a.no_plan_check else plan_check(
            model_dir, shape, setup, [(s // 16, c) for s, c in PLAN_CONFIGS] if a.cpu_smoke else PLAN_CONFIGS
        )

    mean_len = mean_row_length()
    flops = flops_per_token(shape, lora_params(shape, setup), mean_len)
    print(f"\nFLOPs/token = 4 x {(shape.total_params - shape.embedding_params) / 1e9:.2f}B base + 6 x "
          f"{lora_params(shape, setup) / 1e6:.1f}M LoRA + attention at mean length {mean_len:.0f} "
          f"= {flops / 1e9:.1f} GFLOP; peak {H100_BF16_PEAK / 1e12:.0f} TFLOP/s")
    print(f"{'variant':8s} {'non-pad tok/s':>13s} {'examples/s':>10s} {'MFU':>6s} {'peak mem':>10s} "
          f"{'first loss':>10s} {'last loss':>9s} {'grad norm':>9s} {'padding':>7s}")
    for name, r in results.items():
        mfu = r["non-pad tok/s"] * flops / H100_BF16_PEAK if cuda else None
        void = "" if r["max grad norm"] and r["first loss"] != r["last loss"] else "  VOID: did not train"
        print(f"{name:8s} {r['non-pad tok/s']:13.0f} {r['examples/s']:10.2f} {num(mfu, '6.1%')} {gib(r['peak bytes']):>10s} "
              f"{num(r['first loss'], '10.4f')} {num(r['last loss'], '9.4f')} {num(r['max grad norm'], '9.3g')} "
              f"{r['padding']:7.0%}{void}")
    targets(results, cuda, flops)
    if checks:
        print(f"\nplan vs measured peak (1 row, last {LABELLED:.0%} labelled):")
        for c in checks:
            ratio = f"{c['predicted'] / c['measured']:.2f}x" if c["measured"] else "-"
            print(f"  seq {c['seq']:5d} checkpointing {'on ' if c['checkpointing'] else 'off'}  predicted "
                  f"{gib(c['predicted'])}  measured {gib(c['measured'])}  predicted/measured {ratio}")


def mean_row_length() -> float:
    """Mean tokens per example of the benchmark rows (for the attention FLOPs)."""
    from core.datafiles import read_rows
    from core.training.tiny_model import make_tokenizer

    tok = make_tokenizer()
    lens = [
        len(tok(pipeline.PROMPT.format(**r) + pipeline.COMPLETION.format(**r))["input_ids"]) + 12
        for r in read_rows(pipeline.DATA)
    ]
    return min(sum(lens) / len(lens), pipeline.MAX_LEN)


def targets(results: dict, cuda: bool, flops: float) -> None:
    if not {"ours", "common"} <= results.keys():
        return
    o, c = results["ours"], results["common"]
    line = f"\ntargets: ours/common non-pad tok/s {o['non-pad tok/s'] / c['non-pad tok/s']:.2f}x (>= 2.0)"
    if "trl" in results:
        t = results["trl"]
        line += f", ours/trl {o['non-pad tok/s'] / t['non-pad tok/s']:.2f}x (>= 1.2)"
        if cuda:
            line += f", peak ours/trl {o['peak bytes'] / t['peak bytes']:.2f} (<= 1.0)"
    if cuda:
        line += f", MFU ours {o['non-pad tok/s'] * flops / H100_BF16_PEAK:.1%} (>= 40%)"
    print(line)


if __name__ == "__main__":
    main()
