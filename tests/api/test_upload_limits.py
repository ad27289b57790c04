"""Uploads parsed as streams with the same limits in every format (core.datafiles), the
Parquet bomb refused from its footer, and what reaches the API: 400 naming the row, 413
naming the limit, and nothing left in the store when a file's row fails to insert."""

from __future__ import annotations

import csv
import dataclasses
import io
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from core.datafiles import DataFileError, DataLimitError, Limits, configured_limits, iter_rows, read_rows, scan
from core.models import File
from core.services import files
from core.storage import LocalStore
from tests.api.conftest import jsonl

KiB, MiB = 1024, 1024 * 1024


def write(tmp_path, fmt: str, rows: list[dict]):
    """The same rows as JSONL, CSV or Parquet."""
    p = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        p.write_bytes(jsonl(rows))
    elif fmt == "csv":
        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), p)
    return p


FORMATS = ["jsonl", "csv", "parquet"]


def limits(**changes) -> Limits:
    return dataclasses.replace(configured_limits(), **changes)


def test_the_training_side_applies_the_deployments_limits(tmp_path, monkeypatch):
    """The worker's training process reads files with no Settings of its own: it must
    still apply the limits the API applied at upload (here, one set lower)."""
    p = write(tmp_path, "jsonl", [{"document": "x" * 2000, "summary": "s"}])
    assert len(read_rows(p)) == 1
    monkeypatch.setenv("TUNEFORGE_MAX_CELL_BYTES", "1000")
    with pytest.raises(DataFileError, match="limit for one value is 1000 bytes"):
        read_rows(p)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_200_kib_field_is_accepted_in_every_format(tmp_path, fmt):
    """csv's own default field limit (128 Ki characters) used to refuse what JSONL took."""
    rows = [{"document": "가" * (70 * KiB), "summary": "s"}, {"document": "d", "summary": "s"}]
    summary = scan(write(tmp_path, fmt, rows))
    assert summary.row_count == 2 and summary.columns == ["document", "summary"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_cell_and_row_limits_are_the_same_in_every_format(tmp_path, fmt):
    rows = [{"document": "d", "summary": "s"}, {"document": "é" * (40 * KiB), "summary": "s"}]
    p = write(tmp_path, fmt, rows)
    with pytest.raises(DataFileError, match=r"row 1: the value of 'document' is 81920 bytes.* 65536 bytes"):
        scan(p, limits(max_cell_bytes=64 * KiB))
    with pytest.raises(DataFileError, match=r"row 1 holds 81921 bytes .* 65536 bytes"):
        scan(p, limits(max_row_bytes=64 * KiB))
    assert scan(p, limits(max_cell_bytes=80 * KiB, max_row_bytes=80 * KiB + 1)).row_count == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_row_limit_is_enforced_while_reading(tmp_path, fmt):
    p = write(tmp_path, fmt, [{"prompt": f"p{i}", "completion": "c"} for i in range(10)])
    with pytest.raises(DataLimitError, match="10 rows|more than this server's limit of 3 rows"):
        scan(p, limits(max_rows=3))


def test_rows_stream_one_at_a_time(tmp_path):
    """The first row comes out before a bad line further on is read; a line far over the
    row limit is refused by its length, without being held in memory."""
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"a": "x"}\n' + b'{"a": "' + b"y" * (8 * MiB) + b'"}\n')
    rows = iter_rows(p, limits(max_row_bytes=64 * KiB))
    assert next(rows) == {"a": "x"}
    with pytest.raises(DataFileError, match="line 2 is longer than"):
        next(rows)


@pytest.mark.parametrize("fmt,content", [
    ("jsonl", b'{"a": "x", "b": "y"}\n{"a": "", "b": null}\n'),
    ("csv", b"a,b\nx,y\n , \n"),
    ("parquet", None),
])
def test_rows_with_no_usable_columns_are_refused_naming_the_row(tmp_path, fmt, content):
    p = tmp_path / f"d.{fmt}"
    if content is None:
        pq.write_table(pa.Table.from_pylist([{"a": "x", "b": "y"}, {"a": None, "b": None}]), p)
    else:
        p.write_bytes(content)
    with pytest.raises(DataFileError, match="row 1 has no usable columns"):
        scan(p)


def parquet_bomb(path, rows: int = 1_000_000, width: int = 1000, statistics: bool = True) -> None:
    """Little on disk, rows x width bytes decoded: one long string, dictionary-encoded."""
    import numpy as np

    indices = pa.array(np.zeros(rows, dtype=np.int32))
    column = pa.DictionaryArray.from_arrays(indices, pa.array(["x" * width]))
    pq.write_table(pa.table({"prompt": column, "completion": column}), path, write_statistics=statistics, compression="zstd")


def test_parquet_bomb_is_refused_from_its_footer(tmp_path):
    p = tmp_path / "bomb.parquet"
    parquet_bomb(p)
    assert p.stat().st_size < 256 * KiB  # (per-page statistics are most of it) for ~2 GB of values
    started = time.monotonic()
    with pytest.raises(DataLimitError, match="would decode to at least"):
        scan(p)  # default limit: 512 MiB decoded; this is ~2 GB
    assert time.monotonic() - started < 1.0  # nothing was decoded


def test_parquet_without_statistics_is_still_bounded_while_decoding(tmp_path):
    p = tmp_path / "bomb.parquet"
    parquet_bomb(p, rows=100_000, statistics=False)
    with pytest.raises(DataLimitError, match="decodes to more than"):
        scan(p, limits(max_decoded_bytes=8 * MiB))


# --- through the API ----------------------------------------------------------------------


def test_api_names_the_row_and_the_limit(api, tmp_path):
    big = {"document": "x" * (MiB + 1), "summary": "s"}
    r = api.upload(jsonl([{"document": "d", "summary": "s"}, big]))
    assert r.status_code == 400 and "row 1" in r.json()["error"]["message"] and "'document'" in r.json()["error"]["message"]
    r = api.upload(jsonl([{"document": "d", "summary": "s"}, {"document": " ", "summary": None}]))
    assert r.status_code == 400 and "row 1 has no usable columns" in r.json()["error"]["message"]
    bomb = tmp_path / "bomb.parquet"
    parquet_bomb(bomb)
    r = api.upload(bomb.read_bytes(), "bomb.parquet")
    assert r.status_code == 413 and r.json()["error"]["param"] == "file" and "decode" in r.json()["error"]["message"]
    assert api.http.get("/v1/files").json()["data"] == []


def test_a_600_character_file_name_is_400(api):
    r = api.upload(jsonl([{"prompt": "p", "completion": "c"}]), "x" * 600 + ".jsonl")
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"


def test_a_file_whose_row_fails_to_insert_leaves_nothing_in_the_store(db_session, settings, tmp_path):
    store = LocalStore(tmp_path / "store", public_url="http://127.0.0.1", secret=settings.secret_key)
    with pytest.raises(Exception):  # noqa: B017 - the database's own error (a foreign key here)
        files.upload_file(
            db_session, settings, store, "team-that-does-not-exist", filename="t.jsonl", purpose="fine-tune",
            stream=io.BytesIO(jsonl([{"prompt": "p", "completion": "c"}])),
        )
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []
    assert db_session.scalars(select(File)).all() == []
