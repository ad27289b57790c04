"""Chat rows as OpenAI accepts them, at upload: per-message `weight`, and tool use (row-level
`tools`, assistant `tool_calls`, `tool` results), each shape checked with the row named."""

from __future__ import annotations

import pytest

from tests.api.conftest import jsonl

U, A = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
TOOL = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}}
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}
CALLS = {"role": "assistant", "content": None, "tool_calls": [CALL]}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": "1"}


def test_tool_use_rows_upload(api):
    rows = [
        {"messages": [U, CALLS, RESULT, A], "tools": [TOOL]},
        {"messages": [U, {**CALLS, "weight": 1}], "tools": [TOOL]},  # ends with the call: trained on it
        {"messages": [U, {**CALLS, "content": "checking", "weight": 0}, RESULT, A]},
        {"messages": [U, A]},
    ]
    r = api.upload(jsonl(rows))
    assert r.status_code == 200, r.text
    assert r.json()["row_count"] == 4


def _call(**function):
    return {"role": "assistant", "content": None, "tool_calls": [{**CALL, "function": {**CALL["function"], **function}}]}


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
        ([{"messages": [U, A]}, {"messages": [U, A], "tools": {"f": {}}}], "row 1: 'tools' must be a non-empty list"),
        ([{"messages": [U, A], "tools": [{"type": "code_interpreter"}]}], "row 0: tools[0] must be an object with type 'function'"),
        ([{"messages": [U, A], "tools": [{"type": "function", "function": {"description": "d"}}]}], "row 0: tools[0].function.name must be a non-empty string"),
        ([{"messages": [U, A], "tools": [{**TOOL, "function": {"name": "f", "parameters": "{}"}}]}], "row 0: tools[0].function.parameters must be a JSON Schema object"),
        ([{"messages": [U, A], "functions": [TOOL["function"]]}], "row 0: 'functions' is OpenAI's deprecated form"),
        ([{"messages": [U, {"role": "assistant", "content": None, "tool_calls": {}}]}], "row 0: messages[1].tool_calls must be a non-empty list"),
        ([{"messages": [U, {"role": "assistant", "content": None, "tool_calls": [{**CALL, "type": "x"}]}]}], "row 0: messages[1].tool_calls[0] must be an object with type 'function'"),
        ([{"messages": [U, {"role": "assistant", "content": None, "tool_calls": [{**CALL, "id": ""}]}]}], "row 0: messages[1].tool_calls[0].id must be a non-empty string"),
        ([{"messages": [U, _call(name=None)]}], "row 0: messages[1].tool_calls[0].function.name must be a non-empty string"),
        ([{"messages": [U, _call(arguments={"x": 1})]}], "row 0: messages[1].tool_calls[0].function.arguments must be a string holding a JSON object"),
        ([{"messages": [U, _call(arguments="{x")]}], "row 0: messages[1].tool_calls[0].function.arguments must be a string holding a JSON object"),
        ([{"messages": [{**U, "tool_calls": [CALL]}, A]}], "row 0: messages[0].tool_calls is only allowed on assistant messages of chat rows"),
        ([{"messages": [U, {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}]}], "row 0: messages[1].function_call is OpenAI's deprecated form"),
        ([{"messages": [U, RESULT, A]}], "row 0: messages[1].tool_call_id must name the id of an earlier assistant tool call"),
        ([{"messages": [U, CALLS, {**RESULT, "tool_call_id": "c2"}, A]}], "row 0: messages[2].tool_call_id must name"),
        ([{"messages": [U, CALLS, {**RESULT, "content": None}, A]}], "row 0: messages[2].content must be a string"),
        ([{"messages": [U, A, {"role": "function", "name": "f", "content": "1"}]}], "row 0: messages[2] has role 'function'"),
        ([{"input": {"messages": [U]}, "preferred_output": [{**A, "tool_calls": [CALL]}], "non_preferred_output": [{**A, "content": "b"}]}],
         "row 0: preferred_output[0].tool_calls is only allowed on assistant messages of chat rows"),
        ([{"input": {"messages": [U, CALLS]}, "preferred_output": [A], "non_preferred_output": [{**A, "content": "b"}]}], "row 0: input.messages[1].content must be a string"),
    ],
)
def test_bad_chat_rows_are_refused_at_upload_with_the_row_named(api, rows, needle):
    r = api.upload(jsonl(rows))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "file" and needle in err["message"], err
