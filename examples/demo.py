"""CPU demo against a running `tuneforge up` (./scripts/up in another terminal):

    .venv/bin/python examples/demo.py

Uploads Korean news rows with the official openai SDK, fine-tunes the tiny model on a short,
regular rewrite of them (shorten each headline to its first two words: "14일 슈퍼문…달과
지구의 거리 35만6509km" -> "14일 슈퍼문…달과"), shows the job from queued to succeeded with a
progress bar, and ends with the evaluation's base-vs-fine-tuned table: loss falls, exact
match and ROUGE rise from 0 towards 1. About a minute on a laptop CPU.

The tiny model is random-init (a few hundred KB), so it cannot generalise to headlines it
never saw: the validation rows are the training rows, and the table shows that the pipeline
learns what it is shown. A real base model (examples/korean-news-summarization.yaml) is
evaluated on held-out rows the same way.

The key and the tiny model come from the `up` home (.tuneforge/ by default); pass
--base-url / --api-key to use another server (the model must then be in its model roots).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import httpx
import openai
from rich.console import Console
from rich.table import Table
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "sci-news-sum-kr-20.jsonl"
TERMINAL = {"succeeded", "failed", "cancelled"}


INSTRUCTION = "다음 제목을 앞의 두 어절로 줄이세요: {title}"


def training_rows(n: int) -> bytes:
    """The rewrite task: a headline and its first two words (a regular rule the model learns)."""
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()[:n]]
    keep = [{"title": r["title"], "short": " ".join(r["title"].split()[:2])} for r in rows]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep).encode()


def comparison_table(report: dict) -> Table:
    table = Table(title="base vs fine-tuned (same rows, same greedy decoding)")
    for col in ("metric", "base", "fine-tuned"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name in ("eval_loss", "token_accuracy", "exact_match", "rouge1", "rouge1_morphemes", "rouge1_chars",
                 "stopped_at_terminator"):
        pair = report.get("comparison", {}).get(name)
        if pair:
            table.add_row(name, f"{pair['base']:.3f}", f"{pair['tuned']:.3f}")
    return table


def tiny_model(home: Path) -> Path:
    path = home / "models" / "tiny-llama"
    if not (path / "config.json").exists():
        sys.path.insert(0, str(HERE.parent))
        from core.training.tiny_model import make_tiny_model

        make_tiny_model(path)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, default=Path(".tuneforge"), help="the `tuneforge up` home")
    p.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"))
    p.add_argument("--api-key", default=None, help="default: <home>/api_key")
    p.add_argument("--model", default=None, help="default: the tiny model, built into <home>/models")
    p.add_argument("--steps", type=int, default=125)
    args = p.parse_args()

    console = Console()
    home = args.home.resolve()
    key = args.api_key or (home / "api_key").read_text().strip()
    model = args.model or str(tiny_model(home))
    client = openai.OpenAI(base_url=args.base_url, api_key=key)
    http = httpx.Client(base_url=args.base_url.removesuffix("/v1"), headers={"Authorization": f"Bearer {key}"})

    upload = client.files.create(file=("news-headlines-kr.jsonl", training_rows(20)), purpose="fine-tune")
    console.print(f"uploaded [bold]{upload.id}[/bold] ({upload.bytes} bytes)")
    job = client.fine_tuning.jobs.create(
        model=model,
        training_file=upload.id,
        validation_file=upload.id,  # the same rows: a random-init model has nothing to generalise from
        suffix="demo",
        # A high, constant LoRA learning rate suits this toy model and task (real models: ~2e-4).
        hyperparameters={"n_epochs": 25, "batch_size": 4, "learning_rate": 1e-2, "lr_scheduler": "constant",
                         "warmup_ratio": 0.0, "max_steps": args.steps},
        extra_body={
            "template": {"prompt": INSTRUCTION, "completion": "{short}"},
            "lora": {"dropout": 0.0},
            "evaluation": {"generation_samples": 3, "max_new_tokens": 16},
        },
    )
    console.print(f"created [bold]{job.id}[/bold]")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(job.status, total=args.steps)
        while True:
            current = http.get(f"/v1/fine_tuning/jobs/{job.id}").json()
            phase = f" / {current['phase']}" if current.get("phase") else ""
            loss = (current.get("latest_metrics") or {}).get("loss")
            desc = f"{current['status']}{phase}" + (f"  loss {loss:.3f}" if isinstance(loss, float) else "")
            progress.update(task, description=desc, completed=current.get("step") or 0,
                            total=current.get("total_steps") or args.steps)
            if current["status"] in TERMINAL:
                break
            time.sleep(1)

    job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded":
        console.print(f"[red]job {job.status}[/red]: {job.error}")
        return 1
    console.print(f"[green]succeeded[/green]: {job.fine_tuned_model} ({job.trained_tokens} tokens trained)")
    link = http.get(f"/v1/fine_tuning/jobs/{job.id}/artifacts/eval_report.json").json()
    report = httpx.get(link["url"]).json()
    console.print(comparison_table(report))
    samples = Table(title="samples")
    for col in ("reference", "base", "fine-tuned"):
        samples.add_column(col, overflow="fold")
    for sample in report.get("samples", []):
        samples.add_row(sample["reference"], sample["base_output"][:30], sample["tuned_output"])
    console.print(samples)
    link = http.get(f"/v1/fine_tuning/jobs/{job.id}/artifacts/adapter.tar.gz").json()
    console.print(f"adapter download (no key needed, expires at {time.ctime(link['expires_at'])}):")
    console.print(link["url"], soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
