"""Real-job ingredients shared by the worker and end-to-end tests: the tiny model inside a
model root, short Korean news rows, and a spec small enough for a CPU in seconds."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEWS = REPO / "examples" / "data" / "sci-news-sum-kr-20.jsonl"
TEMPLATE = {"prompt": "다음 글을 요약해주세요: {document}", "completion": "{summary}"}


def tiny_model(models_root: Path) -> Path:
    """Built once per session (a few seconds), reused by every suite that asks."""
    from core.training.tiny_model import make_tiny_model

    path = Path(models_root) / "tiny-llama"
    if not (path / "config.json").exists():
        make_tiny_model(path)
    return path


def news_rows(n: int = 8, chars: int = 300) -> list[dict]:
    """The first n real rows, documents and summaries shortened to keep steps fast."""
    rows = [json.loads(line) for line in NEWS.read_text(encoding="utf-8").splitlines()[:n]]
    return [{"document": r["document"][:chars], "summary": r["summary"][: chars // 3]} for r in rows]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def hyperparameters(max_steps: int, every: int = 2, accumulate: int = 1) -> dict:
    """`accumulate` > 1 makes each step slower (more micro-batches), which gives a pause or
    a worker stop a wide window to land in mid-training."""
    return {"n_epochs": 50, "max_steps": max_steps, "batch_size": 2, "max_seq_length": 384,
            "checkpoint_every_steps": every, "warmup_ratio": 0.0, "gradient_accumulation_steps": accumulate}


EVALUATION = {"generation_samples": 1, "max_new_tokens": 4}
