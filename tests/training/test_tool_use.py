"""Tool use in chat rows (OpenAI's `tools`, assistant `tool_calls`, `tool` results) through
the chat template: the call turns train, the tools and the results are context, row text
in any of them stays text, and a template that cannot render tools is refused by row."""

from __future__ import annotations

import copy
import json
import re

import pytest

from core.prompts import render_row
from core.spec import JobSpec
from core.training.encoding import IGNORE_INDEX, encode, generation_prompt_ids, reference_text, renders_tools
from core.training.errors import TrainingInputError

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "오늘 날씨",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}


def _call(call_id: str, city: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": city}, ensure_ascii=False)}}


def tool_row(city: str, answer: str, *, call_weight: int | None = None) -> dict:
    calls = {"role": "assistant", "content": None, "tool_calls": [_call("call_1", city)]}
    if call_weight is not None:
        calls["weight"] = call_weight
    return {"tools": [copy.deepcopy(WEATHER)], "messages": [
        {"role": "user", "content": f"{city} 날씨?"}, calls,
        {"role": "tool", "tool_call_id": "call_1", "content": f"{city}: {answer}"},
        {"role": "assistant", "content": answer},
    ]}


def _labelled_turns(tok, enc) -> list[str]:
    """The labelled stretches of an encoding, decoded (special tokens kept)."""
    runs, cur = [], []
    for t in enc.labels + [IGNORE_INDEX]:
        if t != IGNORE_INDEX:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs


def test_only_assistant_turns_train_tool_calls_included(tiny_tokenizer):
    tok = tiny_tokenizer
    assert renders_tools(tok)
    enc = encode(tok, render_row(tool_row("서울", "맑음"), None, 0), "<|eot_id|>", 1024)
    text = tok.decode(enc.input_ids)
    assert '"name": "get_weather"' in text and "오늘 날씨" in text and "서울: 맑음" in text  # tools and result rendered
    assert _labelled_turns(tok, enc) == [
        '{"name": "get_weather", "parameters": {"city": "서울"}}<|eot_id|>',  # the call, up to its terminator
        "맑음<|eot_id|>",  # the tool result (ipython turn) and the tools are never labels
    ]
    context = encode(tok, render_row(tool_row("서울", "맑음", call_weight=0), None, 0), "<|eot_id|>", 1024)
    assert context.input_ids == enc.input_ids and _labelled_turns(tok, context) == ["맑음<|eot_id|>"]


def test_a_row_ending_with_the_call_trains_the_call(tiny_tokenizer):
    tok = tiny_tokenizer
    row = tool_row("부산", "비")
    row["messages"] = row["messages"][:2]
    turns = render_row(row, None, 0)
    enc = encode(tok, turns, "<|eot_id|>", 1024)
    assert _labelled_turns(tok, enc) == ['{"name": "get_weather", "parameters": {"city": "부산"}}<|eot_id|>']
    first_label = next(i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX)
    assert generation_prompt_ids(tok, turns) == enc.input_ids[:first_label]  # evaluation prompts as trained, tools included
    assert reference_text(tok, turns) == '{"name": "get_weather", "parameters": {"city": "부산"}}'  # what evaluation compares with
    assert reference_text(tok, render_row(tool_row("부산", "비"), None, 0)) == "비"


def _specials(tok) -> list[str]:
    return sorted({t.content for t in tok.added_tokens_decoder.values()} | set(tok.all_special_tokens))


def test_tool_row_text_never_becomes_a_control_token(tiny_tokenizer):
    """Special-token strings in a tool's description, a call's id and arguments, and a tool
    result are spelled out; only the template's own markers are control tokens."""
    tok = tiny_tokenizer
    every = " ".join(_specials(tok))

    def row(text: str) -> dict:
        r = tool_row(f"서울 {text}", f"맑음 {text}")
        r["tools"] = [{**WEATHER, "function": {**WEATHER["function"], "description": f"날씨 {text}"}}]
        r["messages"][1]["tool_calls"][0]["id"] = r["messages"][2]["tool_call_id"] = f"call {text}"
        return r

    special_ids = {tok.convert_tokens_to_ids(s) for s in _specials(tok)}
    count = lambda ids: sorted(i for i in ids if i in special_ids)
    enc = encode(tok, render_row(row(every), None, 0), "<|eot_id|>", 8192)
    plain = encode(tok, render_row(row("글"), None, 0), "<|eot_id|>", 8192)
    assert not enc.truncated and count(enc.input_ids) == count(plain.input_ids)
    assert every in tok.decode(enc.input_ids)


def _write(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


PLAIN = {"messages": [{"role": "user", "content": "하나"}, {"role": "assistant", "content": "일"}]}


def test_template_without_tools_is_refused_in_the_dry_run_naming_the_row(tmp_path, tiny_model_dir):
    from core.training.dry_run import dry_run

    rows = [PLAIN, PLAIN, PLAIN, tool_row("서울", "맑음"), PLAIN]
    spec = JobSpec(model=str(tiny_model_dir), training_file=str(_write(tmp_path, rows)))
    assert dry_run(spec)["rows_used"] == 5  # the tiny model's template renders tools
    plain_template = spec.model_copy(update={"template": spec.template.model_copy(update={"chat_template": "llama3"})})
    with pytest.raises(TrainingInputError) as e:
        dry_run(plain_template)
    assert str(e.value) == (
        f"training_file: row 3 uses tools but the chat template of {tiny_model_dir} does not render tools "
        "(template.chat_template='llama3')"
    )
    only_plain = plain_template.model_copy(update={"training_file": str(_write(tmp_path, [PLAIN] * 2, "plain.jsonl"))})
    assert dry_run(only_plain)["rows_used"] == 2  # rows without tools still train on such a template


@pytest.mark.parametrize("where", ["parameters", "argument name"])
def test_control_token_text_where_the_template_looks_refuses_the_row(tmp_path, tiny_model_dir, tiny_tokenizer, where):
    from core.training.data import prepare

    bad = tool_row("서울", "맑음")
    if where == "parameters":
        bad["tools"][0]["function"]["parameters"]["properties"] = {"<|eot_id|>": {"type": "string"}}
        needle = "tools[0].function.parameters contains '<|eot_id|>'"
    else:
        bad["messages"][1]["tool_calls"][0]["function"]["arguments"] = json.dumps({"<|eot_id|>": 1})
        needle = "tool call argument names contains '<|eot_id|>'"
    spec = JobSpec(model=str(tiny_model_dir), training_file=str(_write(tmp_path, [PLAIN, bad])))
    with pytest.raises(TrainingInputError, match=f"^training_file: row 1: {re.escape(needle)}"):
        prepare(spec, tiny_tokenizer)


def test_tool_rows_train_end_to_end(tiny_model_dir, tmp_path):
    """A tiny job on tool-use rows: rows kept, the loss falls, evaluation generates from the
    tool-call prompts."""
    from core.training.pipeline import run
    from tests.training.test_pipeline import RecordingReporter, learn_spec

    rows = [tool_row(city, answer) for city, answer in [("서울", "맑음"), ("부산", "비"), ("대구", "더움"), ("광주", "흐림")]]
    rows[3]["messages"] = rows[3]["messages"][:2]  # ends with the call
    data = _write(tmp_path, rows)
    rep = RecordingReporter()
    spec = learn_spec(tiny_model_dir, data, n_epochs=8, max_seq_length=384)  # a tool row is ~280 tokens
    spec = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"generation_samples": 4})})
    result = run(spec, tmp_path / "out", rep)
    assert result.status == "succeeded" and result.global_step == 8
    losses = [v["loss"] for _, v in rep.steps if "loss" in v]
    assert losses[-1] < losses[0]
    (report_file,) = (tmp_path / "out").rglob("dataset_report.json")
    report = json.loads(report_file.read_text())
    assert report["train_rows"] == 4 and report["dropped"] == 0  # (the same file is the validation file)
    (eval_file,) = (tmp_path / "out").rglob("eval_report.json")
    references = {s["row"]: s["reference"] for s in json.loads(eval_file.read_text())["samples"]}
    assert references == {0: "맑음", 1: "비", 2: "더움", 3: '{"name": "get_weather", "parameters": {"city": "광주"}}'}


def test_a_long_tool_result_is_trimmed_as_prompt_side_text(tmp_path, tiny_model_dir, tiny_tokenizer):
    """`truncation: prompt` cuts a long tool result (context) and keeps both trained turns
    (a cut that removed the whole answer after the result used to count as fitting: the
    call turn still ended with its terminator)."""
    from core.training.data import prepare

    row = tool_row("서울", "맑음")
    row["messages"][2]["content"] = "서울 날씨 자료 " * 200
    spec = JobSpec(model=str(tiny_model_dir), training_file=str(_write(tmp_path, [row])),
                   hyperparameters={"max_seq_length": 512})
    data = prepare(spec, tiny_tokenizer)
    assert data.report["trimmed"] == 1 and len(data.train) == 1
    ex = data.train[0]
    assert len(ex.input_ids) <= 512
    assert _labelled_turns(tiny_tokenizer, encode(tiny_tokenizer, ex.turns, "<|eot_id|>", 512)) == [
        '{"name": "get_weather", "parameters": {"city": "서울"}}<|eot_id|>', "맑음<|eot_id|>",
    ]
