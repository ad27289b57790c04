"""A bounded schemathesis run over the service's own OpenAPI document, against a real
uvicorn with a team that owns a file and a queued job: no response may be a 5xx, have a
status the document does not declare, or a body outside its declared schema.

Fixed seed (derandomized hypothesis) and a small example budget per operation, so it is
the same run every time: ~1,000 requests, about 90 s on two busy cores. Set
TUNEFORGE_FUZZ_EXAMPLES to search longer (e.g. 500 before a release).
"""

from __future__ import annotations

import os
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import NEWS_ROWS, jsonl
from tests.conftest import free_port, run_api

EXAMPLES = int(os.environ.get("TUNEFORGE_FUZZ_EXAMPLES", "40"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_target(settings_env, make_team, stack_dir):
    """Its own API process: dry runs give up at once (no worker listens), so /validate
    answers quickly; everything else is the session's stack."""
    port = free_port()
    env = {**settings_env, "TUNEFORGE_PUBLIC_URL": f"http://127.0.0.1:{port}", "TUNEFORGE_DRY_RUN_TIMEOUT_SECONDS": "0.05"}
    (stack_dir / "models" / "tiny-llama").mkdir(exist_ok=True)
    with run_api(env, port) as base:
        _team, key = make_team()
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"})
        fid = client.post("/v1/files", files={"file": ("t.jsonl", jsonl(NEWS_ROWS))}, data={"purpose": "fine-tune"}).json()["id"]
        job = client.post("/v1/fine_tuning/jobs", json={
            "model": str(stack_dir / "models" / "tiny-llama"), "training_file": fid,
            "template": {"prompt": "{document}", "completion": "{summary}"},
        }).json()["id"]
        yield base, key, fid, job
        client.post(f"/v1/fine_tuning/jobs/{job}/cancel")


def test_no_server_errors_and_only_documented_responses(fuzz_target):
    """Every operation, valid and invalid inputs (schemathesis' positive and negative
    modes), half of them without the key, a third of them on the team's real file and job
    ids (so success bodies are checked against their schema too); all failures are
    collected, then reported."""
    base, key, fid, job = fuzz_target
    real = {"file_id": fid, "job_id": job}
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.endswith("/stream"):
            continue  # a stream of a job that never ends would never end either
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.generate])
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                nonlocal calls
                calls += 1
                headers = {"Authorization": f"Bearer {key}"} if calls % 2 else {}
                if calls % 3 == 0 and case.path_parameters:  # reach the success paths too
                    case.path_parameters = {k: real.get(k, v) for k, v in case.path_parameters.items()}
                response = case.call(base_url=base, headers=headers, timeout=30)
                statuses[response.status_code] += 1
                try:
                    case.validate_response(response, checks=CHECKS)
                except Exception as e:  # noqa: BLE001 - schemathesis' FailureGroup: collected, reported below
                    failures.append(f"{operation.method.upper()} {operation.path} -> {response.status_code}: {str(e)[:600]}")

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.path  # nothing to get wrong
    print(f"{calls} calls: {dict(sorted(statuses.items()))}")
    assert statuses[200] > 50 and statuses[401] > 50 and statuses[422] > 50  # it reached past the guard and validation
    assert failures == [], "\n\n".join(failures[:10])
