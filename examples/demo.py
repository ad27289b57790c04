"""CPU demo against a running `tuneforge up` (./scripts/up in another terminal):

    .venv/bin/python examples/demo.py

Uploads Korean news rows with the official openai SDK, fine-tunes the tiny model on them
(a few steps, a minute or so on a laptop CPU), shows the job from queued to succeeded with a
progress bar, and prints a download link for the trained adapter.

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


def training_rows(n: int) -> bytes:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()[:n]]
    keep = [{"document": r["document"][:400], "summary": r["summary"][:150]} for r in rows]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep).encode()


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
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()

    console = Console()
    home = args.home.resolve()
    key = args.api_key or (home / "api_key").read_text().strip()
    model = args.model or str(tiny_model(home))
    client = openai.OpenAI(base_url=args.base_url, api_key=key)
    http = httpx.Client(base_url=args.base_url.removesuffix("/v1"), headers={"Authorization": f"Bearer {key}"})

    upload = client.files.create(file=("sci-news-sum-kr.jsonl", training_rows(16)), purpose="fine-tune")
    console.print(f"uploaded [bold]{upload.id}[/bold] ({upload.bytes} bytes)")
    job = client.fine_tuning.jobs.create(
        model=model,
        training_file=upload.id,
        suffix="demo",
        hyperparameters={"n_epochs": 10, "batch_size": 2, "max_steps": args.steps},
        extra_body={
            "template": {"prompt": "다음 글을 요약해주세요: {document}", "completion": "{summary}"},
            "validation_split": 0.25,
            "evaluation": {"generation_samples": 2, "max_new_tokens": 32},
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
    report = http.get(f"/v1/fine_tuning/jobs/{job.id}").json().get("result") or {}
    shown = {k: round(v, 4) for k, v in report.items() if isinstance(v, float)}
    if shown:
        console.print(f"evaluation: {shown}")
    link = http.get(f"/v1/fine_tuning/jobs/{job.id}/artifacts/adapter.tar.gz").json()
    console.print(f"adapter download (no key needed, expires at {time.ctime(link['expires_at'])}):")
    console.print(link["url"], soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
