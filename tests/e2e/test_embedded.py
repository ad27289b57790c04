"""`tuneforge up`, the embedded default: SQLite, the filesystem broker, local artifacts, an
API and a worker started by one command, in a temporary home on a free port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.conftest import REPO, free_port
from tests.e2e.conftest import TERMINAL
from tests.jobdata import EVALUATION, TEMPLATE, hyperparameters, jsonl, news_rows
from tests.stacks import stop_process


def _read_until_key(proc: subprocess.Popen, timeout: float = 90) -> tuple[str, list[str]]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"`tuneforge up` exited ({proc.poll()}):\n" + "".join(lines))
        lines.append(line)
        if lines[-2:-1] and lines[-2].startswith("API key"):
            return line.strip(), lines
    raise AssertionError("`tuneforge up` printed no key:\n" + "".join(lines))


@pytest.fixture
def embedded(tmp_path, e2e_model):
    home, port = tmp_path / "home", free_port()
    (home / "models").mkdir(parents=True)
    shutil.copytree(e2e_model, home / "models" / "tiny-llama")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    env["TUNEFORGE_HEARTBEAT_SECONDS"] = "0.5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "up", "--home", str(home), "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        key, _ = _read_until_key(proc)
        yield f"http://127.0.0.1:{port}", key, home
    finally:
        stop_process(proc, timeout=60)
        log = home / "logs" / "worker.log"
        if log.exists():
            print(log.read_text()[-3000:])


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(x) for x in out.split()]


def test_up_runs_a_job_on_sqlite_and_stops_everything(embedded):
    base, key, home = embedded
    assert key.startswith("tf-") and (home / "tuneforge.db").exists()
    sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)
    f = sdk.files.create(file=("news.jsonl", jsonl(news_rows(6))), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model=str(home / "models" / "tiny-llama"), training_file=f.id, hyperparameters=hyperparameters(2),
        extra_body={"template": TEMPLATE, "evaluation": EVALUATION, "validation_split": 0.25},
    )
    deadline = time.monotonic() + 180
    while (job := sdk.fine_tuning.jobs.retrieve(job.id)).status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.status == "succeeded", job.error
    arts = httpx.get(f"{base}/v1/fine_tuning/jobs/{job.id}/artifacts", headers={"Authorization": f"Bearer {key}"}).json()
    assert "adapter.tar.gz" in {a["name"] for a in arts["data"]}
    assert any((home / "artifacts" / "jobs" / job.id).rglob("adapter_model.safetensors"))


def test_up_stops_its_children_and_keeps_its_key(tmp_path):
    home, port = tmp_path / "home", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    cmd = [sys.executable, "-m", "core.cli", "up", "--home", str(home), "--port", str(port)]
    keys = []
    for _ in range(2):
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            key, _ = _read_until_key(proc)
            keys.append(key)
            children = _children_of(proc.pid)
            assert len(children) == 2
            assert httpx.get(f"http://127.0.0.1:{port}/v1/files", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        finally:
            stop_process(proc, timeout=60)
        assert proc.returncode == 0
        assert all(not os.path.exists(f"/proc/{c}") for c in children)
    assert keys[0] == keys[1]  # the printed key survives a restart
