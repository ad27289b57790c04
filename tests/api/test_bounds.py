"""Every number has a finite, sane bound; odd strings and ids answer 4xx, never 500; values
a worker would refuse are refused at create."""

from __future__ import annotations

import json

import pytest

from core.spec import CHAT_TEMPLATES
from core.training.chat_templates import BUILTIN

TEMPLATE = {"prompt": "요약: {document}", "completion": "{summary}"}


def post_raw(api, body: str):
    """JSON text as sent (NaN / Infinity are not JSON, but Python's parser takes them)."""
    return api.http.post("/v1/fine_tuning/jobs", content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("field,value", [
    ("hyperparameters.weight_decay", "NaN"),
    ("hyperparameters.max_grad_norm", "Infinity"),
    ("hyperparameters.learning_rate", "-Infinity"),
    ("hyperparameters.learning_rate_multiplier", "NaN"),
    ("validation_split", "NaN"),
    ("lora.dropout", "NaN"),
    ("resources.min_gpu_memory_gb", "Infinity"),
])
def test_non_finite_floats_are_refused_naming_the_field(api, model_dir, field, value):
    section, _, name = field.rpartition(".")
    inner = f'"{name}": {value}'
    fields = f'"{section}": {{{inner}}}' if section else inner
    body = f'{{"model": {json.dumps(str(model_dir))}, "training_file": "{api.file_id()}", "template": {json.dumps(TEMPLATE)}, {fields}}}'
    r = post_raw(api, body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == field


@pytest.mark.parametrize("change,param", [
    ({"hyperparameters": {"max_steps": 10**12}}, "hyperparameters.max_steps"),
    ({"hyperparameters": {"weight_decay": 1e9}}, "hyperparameters.weight_decay"),
    ({"hyperparameters": {"max_grad_norm": 1e300}}, "hyperparameters.max_grad_norm"),
    ({"hyperparameters": {"checkpoint_every_steps": 2**63}}, "hyperparameters.checkpoint_every_steps"),
    ({"lora": {"alpha": 2**40}}, "lora.alpha"),
    ({"evaluation": {"eval_every_steps": 10**15}}, "evaluation.eval_every_steps"),
    ({"resources": {"min_gpu_memory_gb": 1e12}}, "resources.min_gpu_memory_gb"),
    ({"seed": 2**64}, "seed"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"revision": "r" * 300}, "revision"),
    ({"template": {**TEMPLATE, "chat_template": "no-such-template"}}, "template.chat_template"),
])
def test_numbers_and_names_have_bounds(api, model_dir, change, param):
    body = {"model": str(model_dir), "training_file": api.file_id(), "template": TEMPLATE, **change}
    r = api.http.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param


def test_chat_template_names_are_the_workers(api, model_dir):
    assert set(CHAT_TEMPLATES) == set(BUILTIN)
    for name in CHAT_TEMPLATES:
        assert api.job(str(model_dir), template={**TEMPLATE, "chat_template": name}).status_code == 200


@pytest.mark.parametrize("model", ["~nobody-here/x", "~/x", "/tmp/\u0000x", "file://~root/y"])
def test_odd_model_strings_are_4xx(api, model, model_dir):
    r = api.job(model)
    assert 400 <= r.status_code < 500 and r.json()["error"], r.text


def test_nul_anywhere_in_a_body_is_refused_naming_where(api, model_dir):
    r = api.job(str(model_dir), metadata={"team": "a\u0000b"})
    assert r.status_code == 422 and "metadata.team" in r.json()["error"]["message"]


def test_validation_split_that_leaves_no_training_rows_is_refused_at_create(api, model_dir):
    fid = api.file_id()  # 3 rows
    r = api.job(str(model_dir), training_file=fid, validation_split=0.9)
    assert r.status_code == 400 and r.json()["error"]["param"] == "validation_split"
    assert api.job(str(model_dir), training_file=fid, validation_split=0.3).status_code == 200


def test_ids_cursors_and_steps_answer_4xx(api, model_dir):
    job = api.job(str(model_dir)).json()["id"]
    twenty = "9" * 20
    for path, params in [
        (f"/v1/fine_tuning/jobs/{job}/events", {"after": f"ftevent-{twenty}"}),
        (f"/v1/fine_tuning/jobs/{job}/events", {"after": twenty}),
        (f"/v1/fine_tuning/jobs/{job}/metrics", {"from_step": twenty}),
        (f"/v1/fine_tuning/jobs/{job}/metrics", {"to_step": 2**40}),
        (f"/v1/fine_tuning/jobs/{job}/checkpoints", {"after": "x" * 200}),
        ("/v1/fine_tuning/jobs", {"after": "x" * 65}),
        (f"/v1/fine_tuning/jobs/{twenty}", {}),
        (f"/v1/files/{twenty}", {}),
        (f"/v1/files/{'f' * 5000}", {}),
    ]:
        r = api.http.get(path, params=params)
        assert 400 <= r.status_code < 500, (path, params, r.status_code, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
