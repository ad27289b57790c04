"""tuneforge jobs create / list / watch / pause / resume / cancel / download against a real
server: the spec's local training file is uploaded, the watch follows the run to its end,
downloads are checksum-verified (a corrupted stored file is refused), refusals name why."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from core.client import Client, StreamCursor
from tests.jobdata import EVALUATION, TEMPLATE, hyperparameters, jsonl, news_rows


def spec_file(tmp_path: Path, model: Path, max_steps: int, every: int = 2, **extra) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "train.jsonl").write_bytes(jsonl(news_rows(8)))
    spec = {"model": str(model), "training_file": "data/train.jsonl", "suffix": "cli", "template": TEMPLATE,
            "evaluation": EVALUATION, "validation_split": 0.25, "resources": {"gpus": 0},
            "hyperparameters": hyperparameters(max_steps, every), **extra}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return path


def test_create_watch_list_download(tuneforge, e2e_api, cli_key, e2e_model, e2e_env, cli_client, tmp_path):
    spec = spec_file(tmp_path, e2e_model, max_steps=4)
    done = tuneforge("jobs", "create", str(spec), "--watch")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "uploaded" in done.stderr and "columns: document, summary" in done.stderr
    job_id = done.stdout.splitlines()[0].strip()
    assert job_id.startswith("ftjob-")
    out = done.stdout
    for line in ("Files validated; job queued", "Checkpoint saved at step 2", "Job succeeded", "4/4", "fine-tuned model: ft:"):
        assert line in out, out
    assert out.index("Files validated") < out.index("Checkpoint saved at step 2") < out.index("Job succeeded")

    listed = tuneforge("jobs", "list")
    assert listed.returncode == 0 and job_id in listed.stdout and "succeeded" in listed.stdout

    # A stream rejoined with the cursor of the last one sends nothing it already sent.
    with Client(e2e_api, cli_key) as api:
        cursor = StreamCursor()
        first = [kind for kind, _ in api.stream(job_id, cursor)]
        assert "event" in first and "metrics" in first and cursor.last_event_id
        again = [kind for kind, _ in api.stream(job_id, cursor)]
        assert "event" not in again and "metrics" not in again, again

    arts = {a["name"]: a for a in cli_client.http.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts").json()["data"]}
    got = tuneforge("jobs", "download", job_id, "-o", str(tmp_path / "dl"))
    assert got.returncode == 0, got.stderr
    adapter = tmp_path / "dl" / "adapter.tar.gz"
    assert hashlib.sha256(adapter.read_bytes()).hexdigest() == arts["adapter.tar.gz"]["sha256"]
    folder = tuneforge("jobs", "download", job_id, "--artifact", "adapter", "-o", str(tmp_path / "dl2"))
    assert folder.returncode == 0 and (tmp_path / "dl2" / "adapter.tar.gz").exists()
    report = tuneforge("jobs", "download", job_id, "--artifact", "eval_report.json", "-o", str(tmp_path / "dl3"))
    assert report.returncode == 0 and "metrics" in json.loads((tmp_path / "dl3" / "eval_report.json").read_text())

    missing = tuneforge("jobs", "download", job_id, "--artifact", "nope", "-o", str(tmp_path / "dl4"))
    assert missing.returncode == 1 and "no artifact 'nope'" in missing.stderr and "adapter.tar.gz" in missing.stderr

    # The stored file changes under the API's listing: the download is refused, nothing kept.
    stored = Path(e2e_env["TUNEFORGE_ARTIFACTS_URL"].removeprefix("file://")) / "jobs" / job_id / "artifacts" / "eval_report.json"
    stored.write_bytes(stored.read_bytes().replace(b"metrics", b"METRICS"))
    bad = tuneforge("jobs", "download", job_id, "--artifact", "eval_report.json", "-o", str(tmp_path / "dl5"))
    assert bad.returncode == 1 and "does not match" in bad.stderr
    assert not list((tmp_path / "dl5").rglob("*.json*"))


def test_pause_resume_cancel_and_refusals(tuneforge, e2e_model, cli_client, tmp_path):
    spec = spec_file(tmp_path, e2e_model, max_steps=10_000, every=10_000)
    data = tmp_path / "other.jsonl"
    data.write_bytes(jsonl(news_rows(6)))
    made = tuneforge("jobs", "create", str(spec), "--file", str(data))
    assert made.returncode == 0, made.stderr
    assert "6 rows" in made.stderr  # --file wins over the spec's training_file
    job_id = made.stdout.strip()

    paused = tuneforge("jobs", "pause", job_id)
    assert paused.returncode == 0 and paused.stdout.split()[1] in ("paused", "pausing"), paused.stdout
    cli_client.wait(job_id, lambda j: j.status == "paused", timeout=120, what="paused")
    resumed = tuneforge("jobs", "resume", job_id)
    assert resumed.returncode == 0 and resumed.stdout.split() == [job_id, "queued"]
    cancelled = tuneforge("jobs", "cancel", job_id)
    assert cancelled.returncode == 0 and cancelled.stdout.split()[1] in ("cancelled", "cancelling")
    assert cli_client.wait_terminal(job_id, timeout=120).status == "cancelled"

    again = tuneforge("jobs", "resume", job_id)
    assert again.returncode == 1 and "cannot be resumed" in again.stderr
    watched = tuneforge("jobs", "watch", job_id, timeout=60)
    assert watched.returncode == 1 and "Job cancelled" in watched.stdout
    unknown = tuneforge("jobs", "cancel", "ftjob-nope")
    assert unknown.returncode == 1 and "No fine-tuning job" in unknown.stderr


def test_bad_spec_is_refused_with_the_field(tuneforge, e2e_model, tmp_path):
    spec = spec_file(tmp_path, e2e_model, max_steps=2, lora={"r": 0})
    out = tuneforge("jobs", "create", str(spec))
    assert out.returncode == 1 and "lora.r" in out.stderr, out.stderr


def test_key_from_the_embedded_home(tuneforge, cli_key, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "api_key").write_text(cli_key + "\n")
    ok = tuneforge("jobs", "list", env={"TUNEFORGE_API_KEY": None, "TUNEFORGE_HOME": str(home)})
    assert ok.returncode == 0, ok.stderr
    none = tuneforge("jobs", "list", env={"TUNEFORGE_API_KEY": None, "TUNEFORGE_HOME": str(tmp_path / "empty")})
    assert none.returncode == 1 and "no API key" in none.stderr
    wrong = tuneforge("jobs", "list", env={"TUNEFORGE_API_KEY": "tf-wrong"})
    assert wrong.returncode == 1 and "error:" in wrong.stderr
