"""/v1/files through the openai SDK and raw HTTP: upload, parse, refuse bad files."""

from __future__ import annotations

import io

import openai
import pytest

from tests.api.conftest import NEWS_ROWS, jsonl


def test_sdk_create_list_retrieve_content_delete(api):
    created = api.sdk.files.create(file=("news.jsonl", io.BytesIO(jsonl(NEWS_ROWS))), purpose="fine-tune")
    assert created.object == "file" and created.status == "processed" and created.bytes == len(jsonl(NEWS_ROWS))
    assert created.filename == "news.jsonl" and created.purpose == "fine-tune"
    assert created.row_count == 3 and created.columns == ["document", "summary"] and created.format == "jsonl"

    assert [f.id for f in api.sdk.files.list()] == [created.id]
    assert api.sdk.files.retrieve(created.id).id == created.id
    assert api.sdk.files.content(created.id).content == jsonl(NEWS_ROWS)

    deleted = api.sdk.files.delete(created.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        api.sdk.files.retrieve(created.id)


def test_csv_and_parquet_are_parsed(api, tmp_path):
    r = api.upload(b"document,summary\nhello,hi\nbye,b\n", "data.csv")
    assert r.status_code == 200 and r.json()["row_count"] == 2 and r.json()["format"] == "csv"

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(NEWS_ROWS), path)
    r = api.upload(path.read_bytes(), "d.parquet")
    assert r.status_code == 200 and r.json()["row_count"] == 3 and r.json()["columns"] == ["document", "summary"]


@pytest.mark.parametrize(
    "content,filename,needle",
    [
        (b'{"document": "a", "summary": "b"}\n{"document": "broken\n', "train.jsonl", "line 2"),
        (b"", "train.jsonl", "empty"),
        (b"\n\n", "train.jsonl", "no rows"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}\n', "chat.jsonl", "row 0"),
        (b"a,b\n1,2\n3,4,5\n", "bad.csv", "row 1"),
        (b"{}", "train.txt", ".jsonl"),
    ],
)
def test_bad_files_refused_naming_the_problem(api, content, filename, needle):
    r = api.upload(content, filename)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["param"] == "file" and err["type"] == "invalid_request_error"
    assert filename in err["message"]


def test_purpose_must_be_fine_tune(api):
    r = api.http.post("/v1/files", files={"file": ("t.jsonl", jsonl(NEWS_ROWS))}, data={"purpose": "assistants"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"


def test_other_teams_files_are_not_found(api, other):
    fid = api.file_id()
    for method, path in [("GET", f"/v1/files/{fid}"), ("DELETE", f"/v1/files/{fid}"), ("GET", f"/v1/files/{fid}/content")]:
        r = other.http.request(method, path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path)
    assert other.http.get("/v1/files").json()["data"] == []
    assert api.http.get(f"/v1/files/{fid}").status_code == 200


def test_file_used_by_an_unfinished_job_cannot_be_deleted(api, model_dir):
    fid = api.file_id()
    job = api.job(str(model_dir), training_file=fid).json()
    r = api.http.delete(f"/v1/files/{fid}")
    assert r.status_code == 409 and job["id"] in r.json()["error"]["message"]
    api.http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert api.http.delete(f"/v1/files/{fid}").status_code == 200


def test_files_list_paginates(api):
    ids = [api.file_id() for _ in range(3)]
    page = api.http.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = api.http.get("/v1/files", params={"limit": 2, "after": page["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and rest["has_more"] is False
