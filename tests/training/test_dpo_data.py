"""Preference rows (OpenAI's DPO format) are recognised and checked row by row at upload."""

from __future__ import annotations

import json

import pytest

from core.datafiles import DataFileError, scan

GOOD = {
    "input": {"messages": [{"role": "system", "content": "짧게"}, {"role": "user", "content": "사과의 뜻은?"}]},
    "preferred_output": [{"role": "assistant", "content": "빨간 과일"}],
    "non_preferred_output": [{"role": "assistant", "content": "푸른 물"}],
}


def write(tmp_path, rows):
    p = tmp_path / "prefs.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


def test_preference_file_is_recognised(tmp_path):
    summary = scan(write(tmp_path, [GOOD, GOOD]))
    assert summary.format == "preference" and summary.row_count == 2
    assert summary.columns == ["input", "preferred_output", "non_preferred_output"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"input": {"messages": []}}, r"row 1: 'input.messages' must be a non-empty list"),
        ({"input": "사과"}, r"row 1: 'input' must be an object with 'messages'"),
        ({"input": {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}},
         r"row 1: the last message of input.messages must be the user's"),
        ({"input": {"messages": [{"role": "robot", "content": "a"}]}}, r"row 1: input.messages\[0\] has role 'robot'"),
        ({"preferred_output": None}, r"row 1: 'preferred_output' must be a non-empty list"),
        ({"non_preferred_output": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]},
         r"row 1: 'non_preferred_output' must be a list of exactly one assistant message"),
        ({"preferred_output": [{"role": "assistant", "content": "  "}]}, r"row 1: preferred_output\[0\].content is empty"),
        ({"non_preferred_output": [{"role": "assistant", "content": "빨간 과일"}]}, r"row 1: .* are the same text"),
        ({"preferred_output": [{"role": "assistant", "content": 3}]}, r"row 1: preferred_output\[0\].content must be a string"),
    ],
)
def test_bad_preference_row_is_named(tmp_path, change, message):
    with pytest.raises(DataFileError, match=message):
        scan(write(tmp_path, [GOOD, {**GOOD, **change}]))


def test_missing_side_is_named(tmp_path):
    row = {k: v for k, v in GOOD.items() if k != "non_preferred_output"}
    with pytest.raises(DataFileError, match=r"row 1: 'non_preferred_output' is missing"):
        scan(write(tmp_path, [GOOD, row]))


def test_hub_rows_are_held_to_the_same_preference_rules():
    from core.hubdata import check_rows

    check_rows([GOOD, GOOD], 10)
    with pytest.raises(DataFileError, match=r"row 1: 'preferred_output' is missing"):
        check_rows([GOOD, {k: v for k, v in GOOD.items() if k != "preferred_output"}], 10)
