"""Training-test fixtures: one tiny model for the whole session (built once, ~3 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NEWS = REPO / "examples" / "data" / "sci-news-sum-kr-20.jsonl"

PAIRS = [
    ("사과", "빨간 과일"),
    ("바다", "푸른 물"),
    ("하늘", "높은 곳"),
    ("고양이", "야옹 소리"),
    ("강아지", "멍멍 소리"),
    ("겨울", "추운 계절"),
    ("여름", "더운 계절"),
    ("커피", "쓴 음료"),
]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The tiny model's matrices are too small to gain from intra-op threads, and on a shared
    2-core box OpenMP spin-waiting under contention made the training tests ~4x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from core.training.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def news_file() -> Path:
    return NEWS


@pytest.fixture(scope="session")
def learn_file(tmp_path_factory) -> Path:
    """Eight short Korean prompt -> completion pairs the tiny model learns exactly."""
    import json

    p = tmp_path_factory.mktemp("learn") / "pairs.jsonl"
    p.write_text(
        "".join(json.dumps({"prompt": f"{a}의 뜻은?", "completion": b}, ensure_ascii=False) + "\n" for a, b in PAIRS),
        encoding="utf-8",
    )
    return p
