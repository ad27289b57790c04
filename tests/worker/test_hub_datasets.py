"""hf:// datasets (TUNEFORGE_ALLOW_HUB_DATASETS): fetched through `datasets` from the
Hugging Face cache, checked with the upload's row rules, trained on like an upload. No hub
access here: the test builds a dataset repository in the hub cache layout itself
(datasets--<owner>--<name>/refs/main + snapshots/<commit>/...), offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from core.errors import InvalidRequest
from core.jobrequest import JobCreateRequest
from core.models import Job
from core.services.jobs import create_job
from tests.jobdata import EVALUATION, TEMPLATE, hyperparameters, jsonl, news_rows
from worker import runner
from worker.transfers import InputInvalid, Transfers

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_dataset(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """A dataset repository as huggingface_hub caches it."""
    root = cache / ("datasets--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        path = root / "snapshots" / COMMIT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    hub_dataset(cache, "owner/news", {
        "data/train.jsonl": jsonl(news_rows(8)),
        "data/validation.jsonl": jsonl(news_rows(2)),
        "README.md": b"# news\n",
    })
    bad_chat = [{"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "?"}]}] * 2
    hub_dataset(cache, "owner/bad-chat", {"data/train.jsonl": jsonl(bad_chat)})
    return cache


def transfers(engine, store, hub_cache, max_rows=100) -> Transfers:
    return Transfers("ftjob-hub", store, engine, max_rows=max_rows, hub_cache=hub_cache)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_split_of_a_cached_hub_dataset_becomes_a_local_file(engine, store, hub_cache, tmp_path):
    t = transfers(engine, store, hub_cache)
    train = t.fetch_hub_dataset("hf://datasets/owner/news", "training_file", tmp_path / "train.jsonl")
    assert read_jsonl(train) == news_rows(8)
    val = t.fetch_hub_dataset("hf://datasets/owner/news:validation", "validation_file", tmp_path / "val.jsonl")
    assert read_jsonl(val) == news_rows(2)


def test_rows_are_held_to_the_upload_rules(engine, store, hub_cache, tmp_path):
    with pytest.raises(InputInvalid, match=r"row 0: messages\[1\] has role 'wizard'"):
        transfers(engine, store, hub_cache).fetch_hub_dataset("hf://datasets/owner/bad-chat", "training_file", tmp_path / "x.jsonl")
    with pytest.raises(InputInvalid, match="more than 3 rows"):
        transfers(engine, store, hub_cache, max_rows=3).fetch_hub_dataset("hf://datasets/owner/news", "training_file", tmp_path / "y.jsonl")
    with pytest.raises(InputInvalid, match="training_file: hf://datasets/owner/missing"):
        transfers(engine, store, hub_cache).fetch_hub_dataset("hf://datasets/owner/missing", "training_file", tmp_path / "z.jsonl")
    with pytest.raises(InputInvalid, match="nope"):
        transfers(engine, store, hub_cache).fetch_hub_dataset("hf://datasets/owner/news:nope", "training_file", tmp_path / "w.jsonl")


@pytest.mark.parametrize("ref", ["hf://datasets/owner", "hf://datasets/owner/news@refs/pr/1", "hf://datasets/a/b:c:d",
                                 "hf://models/owner/news", "hf://datasets/../x/y"])
def test_malformed_references_are_refused_at_create(engine, wsettings, team_id, model_dir, ref):
    allowed = wsettings.model_copy(update={"allow_hub_datasets": True})
    with Session(engine) as s, pytest.raises(InvalidRequest) as e:
        create_job(s, allowed, team_id, JobCreateRequest(model=str(model_dir), training_file=ref, template=TEMPLATE))
    assert e.value.param == "training_file"


def test_a_job_trains_on_a_hub_dataset(engine, wsettings, store, hub_cache, team_id, model_dir):
    allowed = wsettings.model_copy(update={"allow_hub_datasets": True, "hub_cache_dir": hub_cache})
    with Session(engine) as s:
        request = JobCreateRequest(model=str(model_dir), training_file="hf://datasets/owner/news",
                                   validation_file="hf://datasets/owner/news:validation", template=TEMPLATE,
                                   hyperparameters=hyperparameters(2, every=100), evaluation=EVALUATION)
        job, _ = create_job(s, allowed, team_id, request)
        s.commit()
        job_id = job.id
    assert runner.run_job(job_id, allowed, "hub-host:1", engine, store) == "succeeded"
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded" and job.training_file_id == "hf://datasets/owner/news"
