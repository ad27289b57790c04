"""Tool-use chat rows through the official SDK, the API and a real worker: uploaded as
OpenAI accepts them, counted by the worker's dry run, refused there by row when the chat
template cannot render tools, and trained by a job."""

from __future__ import annotations

from tests.jobdata import EVALUATION, hyperparameters, jsonl
from tests.training.test_tool_use import PLAIN, tool_row


def test_tool_rows_upload_validate_and_train(client):
    rows = [PLAIN, tool_row("서울", "맑음"), tool_row("부산", "비"), PLAIN]
    f = client.sdk.files.create(file=("tools.jsonl", jsonl(rows)), purpose="fine-tune")
    body = {"model": str(client.model), "training_file": f.id, "hyperparameters": hyperparameters(2)}
    report = client.http.post("/v1/fine_tuning/jobs/validate", json=body).json()
    assert report["warnings"] == [] and report["token_counts"]["train_rows"] == 4, report

    refused = client.http.post("/v1/fine_tuning/jobs/validate", json={**body, "template": {"chat_template": "llama3"}}).json()
    assert any(f"training_file: row 1 uses tools but the chat template of {client.model} does not render tools" in w
               for w in refused["warnings"]), refused

    job = client.sdk.fine_tuning.jobs.create(
        model=str(client.model), training_file=f.id, suffix="tools",
        hyperparameters=hyperparameters(2), extra_body={"evaluation": EVALUATION},
    )
    done = client.wait_terminal(job.id)
    assert done.status == "succeeded", done.error
    assert done.trained_tokens and done.trained_tokens > 0
