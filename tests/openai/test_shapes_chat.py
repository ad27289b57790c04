"""Chat rows as OpenAI accepts them, at upload: per-message `weight`, and tool use (refused
by name until it is trained: dropping the tools silently would train on wrong data)."""

from __future__ import annotations

import pytest

from tests.api.conftest import jsonl

U, A = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}


def test_weighted_chat_rows_upload(api):
    rows = [{"messages": [U, {**A, "weight": 0}, U, {**A, "weight": 1}]}, {"messages": [U, A]}]
    r = api.upload(jsonl(rows))
    assert r.status_code == 200, r.text
    assert r.json()["row_count"] == 2


@pytest.mark.parametrize(
    "rows,needle",
    [
        ([{"messages": [U, A]}, {"messages": [U, {**A, "weight": 0.5}]}], "row 1: messages[1].weight must be 0 or 1, got 0.5"),
        ([{"messages": [U, {**A, "weight": 0}]}], "row 0: every assistant message has weight 0"),
        ([{"messages": [{**U, "weight": 1}, A]}], "row 0: messages[0].weight is only allowed on assistant messages"),
        ([{"messages": [U, A]}, {"messages": [U, A], "tools": [{"type": "function", "function": {"name": "f"}}]}], "row 1: has 'tools'"),
        ([{"messages": [U, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "1"}, A]}], "row 0: messages[1] is a tool call or result"),
        ([{"messages": [U, {"role": "tool", "tool_call_id": "c1", "content": "1"}, A]}], "row 0: messages[1] is a tool call or result"),
    ],
)
def test_bad_chat_rows_are_refused_at_upload_with_the_row_named(api, rows, needle):
    r = api.upload(jsonl(rows))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "file" and needle in err["message"], err
