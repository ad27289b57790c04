"""A two-rank run under `accelerate launch` on the CPU (gloo): the same worker.child the
runner starts, with the launcher in front. Rank 0 alone reports and writes outputs; a
pause reaches both ranks through the launcher and they stop at the same step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.spec import JobSpec

REPO = Path(__file__).resolve().parents[2]
PAIRS = [("사과", "빨간 과일"), ("바다", "푸른 물"), ("하늘", "높은 곳"), ("고양이", "야옹 소리"),
         ("강아지", "멍멍 소리"), ("겨울", "추운 계절")]


def two_ranks(tmp_path: Path, spec: JobSpec) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "spec.json").write_text(spec.model_dump_json(), encoding="utf-8")
    events = tmp_path / "events.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "child.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.training.launch", "2", "-m", "worker.child", "--spec", "spec.json",
         "--workdir", "out", "--events", str(events)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, events


def read_events(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()] if path.exists() else []


def finish(proc: subprocess.Popen, tmp_path: Path, timeout: float = 150) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the two ranks hung:\n" + (tmp_path / "child.log").read_text(errors="replace")[-3000:])


def pairs_spec(model_dir: Path, data: Path, **hp) -> JobSpec:
    return JobSpec(
        model=str(model_dir), training_file=str(data), validation_file=str(data),
        hyperparameters={"batch_size": 2, "max_seq_length": 64, "warmup_ratio": 0.0, **hp},
        evaluation={"generation_samples": 2, "max_new_tokens": 4}, resources={"gpus": 2},
    )


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"{a}의 뜻은?", "completion": b}, ensure_ascii=False) + "\n"
                         for a, b in PAIRS), encoding="utf-8")
    return p


def test_two_ranks_train_and_rank_zero_alone_reports(tiny_model_dir, pairs_file, tmp_path):
    # 6 rows, 2 per device on 2 ranks: a global batch of 4, so 2 steps an epoch (3 alone).
    proc, events = two_ranks(tmp_path, pairs_spec(tiny_model_dir, pairs_file, n_epochs=2, checkpoint_every_steps=2))
    assert finish(proc, tmp_path) == 0, (tmp_path / "child.log").read_text(errors="replace")[-3000:]
    got = read_events(events)
    steps = [e for e in got if e["type"] == "metrics" and "loss" in e["values"]]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]  # once per step, not once per rank
    assert [e["values"]["epoch"] for e in steps] == [0.5, 1.0, 1.5, 2.0]
    assert [e["step"] for e in got if e["type"] == "checkpoint"] == [2, 4]
    assert [e["name"] for e in got if e["type"] == "phase"] == [
        "preparing_data", "loading_model", "training", "evaluating", "uploading"]
    results = [e for e in got if e["type"] == "result"]
    assert len(results) == 1 and results[0]["status"] == "succeeded" and results[0]["global_step"] == 4
    out = tmp_path / "out"
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (out / "eval_report.json").exists()
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    ckpt = out / "checkpoints" / "checkpoint-4"
    assert (ckpt / "tuneforge.json").exists()
    assert (ckpt / "rng_state_0.pth").exists() and (ckpt / "rng_state_1.pth").exists()  # both ranks saved


def test_pause_reaches_both_ranks_and_they_stop_at_one_step(tiny_model_dir, pairs_file, tmp_path):
    spec = pairs_spec(tiny_model_dir, pairs_file, max_steps=200, checkpoint_every_steps=1000,
                      gradient_accumulation_steps=4)
    proc, events = two_ranks(tmp_path, spec)
    deadline = time.monotonic() + 120
    while not any(e["type"] == "metrics" for e in read_events(events)):
        assert proc.poll() is None and time.monotonic() < deadline, "no training step came"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGUSR1)  # as the runner does: the launcher passes it on
    assert finish(proc, tmp_path) == 0, (tmp_path / "child.log").read_text(errors="replace")[-3000:]
    got = read_events(events)
    result = [e for e in got if e["type"] == "result"]
    assert len(result) == 1 and result[0]["status"] == "paused"
    step = result[0]["global_step"]
    assert 1 <= step < 200
    assert [e["step"] for e in got if e["type"] == "checkpoint"] == [step]
    ckpt = tmp_path / "out" / "checkpoints" / f"checkpoint-{step}"
    assert (ckpt / "tuneforge.json").exists() and (ckpt / "adapter_model.safetensors").exists()
    assert (ckpt / "rng_state_0.pth").exists() and (ckpt / "rng_state_1.pth").exists()
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == step
