"""core.datafiles / core.prompts: pure-python reading and rendering, errors naming the row."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core.datafiles import DataFileError, detect_format, read_rows
from core.prompts import TemplateError, render_row
from core.spec import TemplateSpec


def test_jsonl_broken_line_names_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2\n', encoding="utf-8")
    with pytest.raises(DataFileError, match="line 3 is not valid JSON"):
        read_rows(p)


def test_jsonl_non_object_and_empty(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataFileError, match="line 2 is a JSON list"):
        read_rows(p)
    p.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataFileError, match="no rows"):
        read_rows(p)


def test_csv_and_parquet_read_korean(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    c = tmp_path / "d.csv"
    c.write_text('document,summary\n"긴 글, 쉼표",요약\n', encoding="utf-8")
    assert read_rows(c) == [{"document": "긴 글, 쉼표", "summary": "요약"}]
    c.write_text("a,b\n1,2,3\n", encoding="utf-8")
    with pytest.raises(DataFileError, match="row 0"):
        read_rows(c)
    q = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "질문", "completion": "답"}]), q)
    assert read_rows(q) == [{"prompt": "질문", "completion": "답"}]


def test_detect_format():
    assert detect_format([{"messages": []}]) == "messages"
    assert detect_format([{"prompt": "p", "completion": "c"}]) == "prompt_completion"
    assert detect_format([{"document": "d", "summary": "s"}]) == "template-needed"


def test_render_template_with_system_and_literal_braces():
    t = TemplateSpec(
        prompt="다음 글을 요약해주세요: {document}",
        completion="{summary}",
        system="요약기 {{v1}}",
    )
    turns = render_row({"document": "본문 {x.__class__}", "summary": "요약"}, t, 0)
    assert turns == [
        {"role": "system", "content": "요약기 {v1}"},
        {
            "role": "user",
            "content": "다음 글을 요약해주세요: 본문 {x.__class__}",
        },  # row text is never formatted
        {"role": "assistant", "content": "요약"},
    ]


def test_missing_column_names_column_and_row():
    t = TemplateSpec(prompt="{document}", completion="{summary}")
    with pytest.raises(TemplateError, match=r"row 7: missing column 'summary'"):
        render_row({"document": "d"}, t, 7)


def test_unsafe_placeholder_refused():
    with pytest.raises(ValueError, match="not allowed"):
        TemplateSpec(prompt="{document.__class__}", completion="{summary}")
    with pytest.raises(ValueError, match="not allowed"):
        TemplateSpec(prompt="{document[0]}", completion="{summary}")


def test_messages_and_prompt_completion_used_as_is():
    msgs = [
        {"role": "user", "content": "안녕"},
        {"role": "assistant", "content": "반가워"},
    ]
    assert render_row({"messages": msgs}, None, 0) == msgs
    assert render_row({"prompt": "p", "completion": "c"}, None, 0)[-1] == {
        "role": "assistant",
        "content": "c",
    }
    with pytest.raises(
        DataFileError, match="row 3: the last message must be the assistant"
    ):
        render_row({"messages": msgs[:1]}, None, 3)


def test_data_modules_do_not_import_torch():
    code = (
        "import sys, core.datafiles, core.prompts, core.training, core.training.reporter; "
        "print(json.dumps([m for m in ('torch', 'transformers') if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == []
