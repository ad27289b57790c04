"""DESIGN §6.1-3 and §6.5: chat rendering, completion-only labels, terminator, truncation, padding."""

from __future__ import annotations

import json
import re

import pytest

from core.spec import JobSpec
from core.training.batching import DynamicPaddingCollator
from core.training.data import prepare
from core.training.encoding import (
    IGNORE_INDEX,
    encode,
    generation_prompt_ids,
    resolve_chat_template,
    turn_terminator,
)
from core.training.errors import TrainingInputError

TURNS = [
    {"role": "system", "content": "요약기"},
    {"role": "user", "content": "다음 글을 요약해주세요: 과학 뉴스 본문"},
    {"role": "assistant", "content": "과학 요약"},
]


def test_single_bos_from_chat_template(tiny_tokenizer):
    enc = encode(tiny_tokenizer, TURNS, "<|eot_id|>", 512)
    assert enc.input_ids.count(tiny_tokenizer.bos_token_id) == 1
    assert enc.input_ids[0] == tiny_tokenizer.bos_token_id
    # The common recipe (render, then tokenize with special tokens again) doubles it: the
    # check above would catch that regression.
    text = tiny_tokenizer.apply_chat_template(TURNS, tokenize=False)
    assert tiny_tokenizer(text)["input_ids"][:2] == [tiny_tokenizer.bos_token_id] * 2


def test_completion_only_labels_end_with_terminator(tiny_tokenizer):
    eot = tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert turn_terminator(tiny_tokenizer) == ("<|eot_id|>", eot)
    enc = encode(tiny_tokenizer, TURNS, "<|eot_id|>", 512)
    labelled = [t for t in enc.labels if t != IGNORE_INDEX]
    assert labelled[-1] == eot and enc.labels[-1] == eot
    assert tiny_tokenizer.decode(labelled, skip_special_tokens=True) == "과학 요약"
    first = next(i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX)
    assert all(t == IGNORE_INDEX for t in enc.labels[:first])
    assert enc.input_ids[first:] == enc.labels[first:]


def test_full_sequence_loss_when_asked(tiny_tokenizer):
    full = encode(tiny_tokenizer, TURNS, "<|eot_id|>", 512, completion_only=False)
    assert full.labels == full.input_ids
    assert full.input_ids == encode(tiny_tokenizer, TURNS, "<|eot_id|>", 512).input_ids


def test_multi_turn_labels_every_assistant_turn(tiny_tokenizer):
    turns = [
        {"role": "user", "content": "하나"},
        {"role": "assistant", "content": "일"},
        {"role": "user", "content": "둘"},
        {"role": "assistant", "content": "이"},
    ]
    enc = encode(tiny_tokenizer, turns, "<|eot_id|>", 512)
    eot = tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert [t for t in enc.labels if t != IGNORE_INDEX].count(eot) == 2


def test_pad_equal_to_eos_does_not_mask_terminator(tiny_model_dir):
    """With pad == eos == terminator (a common setup), the terminator is still a label."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.eos_token = "<|eot_id|>"
    tok.pad_token = "<|eot_id|>"
    enc = encode(tok, TURNS, "<|eot_id|>", 512)
    batch = DynamicPaddingCollator(tok.pad_token_id)(
        [
            {"input_ids": enc.input_ids, "labels": enc.labels},
            {"input_ids": enc.input_ids + [5] * 7, "labels": enc.labels + [5] * 7},
        ]
    )
    n = len(enc.input_ids)
    assert (
        batch["labels"][0, n - 1].item() == tok.pad_token_id
    )  # the eot label survives
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all()  # real padding is ignored
    assert batch["attention_mask"][0].sum().item() == n


def test_dynamic_padding_to_longest_in_batch():
    batch = DynamicPaddingCollator(0)(
        [
            {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
            {"input_ids": [4], "labels": [4]},
        ]
    )
    assert batch["input_ids"].shape == (2, 3)  # longest in batch, not max_seq_length
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]


def _write(tmp_path, rows):
    p = tmp_path / "d.jsonl"
    p.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
        encoding="utf-8",
    )
    return p


def test_truncated_away_completion_dropped_and_reported(
    tmp_path, tiny_model_dir, tiny_tokenizer
):
    rows = [
        {"prompt": "짧은 질문", "completion": "답"},
        {"prompt": "아주 긴 질문 " * 40, "completion": "사라질 답"},
        {"prompt": "질문", "completion": "   "},
    ]
    spec = JobSpec(
        model=str(tiny_model_dir),
        training_file=str(_write(tmp_path, rows)),
        hyperparameters={"max_seq_length": 32, "truncation": "drop"},
    )
    data = prepare(spec, tiny_tokenizer)
    r = data.report
    assert [e.row for e in data.train] == [0]
    assert r["rows_read"] == 3 and r["rows_used"] == 1 and r["dropped"] == 2
    assert r["dropped_by_reason"] == {
        "completion truncated": 1,
        "empty completion": 1,
    }
    assert {d["row"] for d in r["dropped_rows"]} == {1, 2}
    assert all(any(t != IGNORE_INDEX for t in e.labels) for e in data.train)


@pytest.mark.parametrize("truncation", ["drop", "prompt"])
def test_row_cut_inside_its_completion_is_dropped_not_trained_without_terminator(
    tmp_path, tiny_model_dir, tiny_tokenizer, truncation
):
    """§6.3: the terminator is the last label of EVERY example; a row whose completion is cut
    by max_seq_length would teach the model not to stop, so it is dropped and reported --
    whatever the truncation mode (trimming the prompt cannot make this completion fit)."""
    rows = [{"prompt": "질문", "completion": "아주 긴 답변 " * 40}, {"prompt": "질문", "completion": "짧은 답"}]
    spec = JobSpec(
        model=str(tiny_model_dir),
        training_file=str(_write(tmp_path, rows)),
        hyperparameters={"max_seq_length": 32, "truncation": truncation},
    )
    data = prepare(spec, tiny_tokenizer)
    r = data.report
    reason = {"drop": "completion truncated", "prompt": "completion does not fit"}[truncation]
    assert r["truncated"] == 1 and r["dropped_by_reason"] == {reason: 1}
    assert r["splits"]["train"] == {
        "rows": 2, "kept": 1, "trimmed": 0, "dropped": 1, "dropped_by_reason": {reason: 1},
        "trimmed_prompt_tokens": {"median": 0, "max": 0},
    }
    assert r["dropped_rows"][0]["row"] == 0 and "max_seq_length=32" in r["dropped_rows"][0]["reason"]
    eot = tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert [e.row for e in data.train] == [1]
    assert [t for t in data.train[0].labels if t != IGNORE_INDEX][-1] == eot


def test_named_chat_template_and_missing_one(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    with pytest.raises(TrainingInputError, match="template.chat_template"):
        resolve_chat_template(tok, None)
    with pytest.raises(TrainingInputError, match="<\\|im_start\\|>"):
        resolve_chat_template(
            tok, "chatml"
        )  # its markers are not tokens of this vocabulary
    resolve_chat_template(tok, "llama3")
    assert turn_terminator(tok)[0] == "<|eot_id|>"


def _specials(tok) -> list[str]:
    return sorted({t.content for t in tok.added_tokens_decoder.values()} | set(tok.all_special_tokens))


def test_row_text_never_becomes_a_control_token(tiny_tokenizer):
    """§6.10: every special token of the tokenizer, written inside a row (prompt, system and
    completion), stays text; only the chat template adds control tokens."""
    tok = tiny_tokenizer
    every = " ".join(_specials(tok))
    turns = [
        {"role": "system", "content": f"시스템 {every}"},
        {"role": "user", "content": f"{every} 본문 {every}"},
        {"role": "assistant", "content": f"요약 {every} 끝"},
    ]
    plain = [{**t, "content": t["content"].replace(every, "글")} for t in turns]
    enc = encode(tok, turns, "<|eot_id|>", 4096)
    reference = encode(tok, plain, "<|eot_id|>", 4096)
    special_ids = set(tok.all_special_ids) | {tok.convert_tokens_to_ids(s) for s in _specials(tok)}
    count = lambda ids: sorted(i for i in ids if i in special_ids)
    assert count(enc.input_ids) == count(reference.input_ids)  # the template's, nothing more
    assert enc.input_ids.count(tok.bos_token_id) == 1
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    labelled = [t for t in enc.labels if t != IGNORE_INDEX]
    assert labelled.count(eot) == 1 and labelled[-1] == eot
    assert tok.decode(labelled[:-1]) == f"요약 {every} 끝"  # spelled out, byte for byte
    gen = generation_prompt_ids(tok, turns)
    assert count(gen) == count(generation_prompt_ids(tok, plain))


def test_generation_prompt_is_the_training_prompt(tiny_tokenizer):
    """§6.1 on the evaluation path: the prompt fed to generate() has exactly one BOS and is
    token for token the prompt the model was trained on."""
    tok = tiny_tokenizer
    ids = generation_prompt_ids(tok, TURNS)
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    enc = encode(tok, TURNS, "<|eot_id|>", 512)
    first_label = next(i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX)
    assert ids == enc.input_ids[:first_label]


def test_prepared_rows_with_control_token_text(tmp_path, tiny_model_dir, tiny_tokenizer):
    every = " ".join(_specials(tiny_tokenizer))
    rows = [{"prompt": f"{every} 질문", "completion": f"답 {every}"}]
    spec = JobSpec(model=str(tiny_model_dir), training_file=str(_write(tmp_path, rows)))
    ex = prepare(spec, tiny_tokenizer).train[0]
    assert ex.input_ids.count(tiny_tokenizer.bos_token_id) == 1
    eot = tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert ex.input_ids.count(eot) == 2  # the user turn's and the assistant turn's, from the template


def test_assistant_weight_zero_is_context_not_trained(tiny_tokenizer):
    """OpenAI's per-message `weight`: a weight-0 assistant turn stays in the text, unlabelled."""
    turns = [
        {"role": "user", "content": "하나"},
        {"role": "assistant", "content": "틀린 답", "weight": 0},
        {"role": "user", "content": "둘"},
        {"role": "assistant", "content": "맞는 답", "weight": 1},
    ]
    enc = encode(tiny_tokenizer, turns, "<|eot_id|>", 512)
    unweighted = encode(tiny_tokenizer, [{k: v for k, v in t.items() if k != "weight"} for t in turns], "<|eot_id|>", 512)
    assert enc.input_ids == unweighted.input_ids  # the weight never reaches the template
    eot = tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    labelled = [t for t in enc.labels if t != IGNORE_INDEX]
    assert labelled.count(eot) == 1 and tiny_tokenizer.decode(labelled, skip_special_tokens=True) == "맞는 답"
    assert "틀린 답" in tiny_tokenizer.decode(enc.input_ids)
    first_only = encode(tiny_tokenizer, [*turns[:3], {**turns[3], "weight": 0}, ], "<|eot_id|>", 512)
    assert first_only.n_labels == 0  # (check_messages refuses such a row at upload)


@pytest.mark.parametrize(
    "messages,needle",
    [
        ([{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}], "messages[0].weight is only allowed on assistant"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}], "messages[1].weight must be 0 or 1, got 2"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": True}], "messages[1].weight must be 0 or 1, got True"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}], "every assistant message has weight 0"),
    ],
)
def test_bad_weights_are_refused_with_the_row_named(messages, needle):
    from core.datafiles import DataFileError, check_messages

    with pytest.raises(DataFileError, match=re.escape(f"row 4: {needle}")):
        check_messages(messages, 4)
    ok = check_messages([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0},
                         {"role": "user", "content": "q"}, {"role": "assistant", "content": "b", "weight": 1.0}], 4)
    assert [t.get("weight") for t in ok] == [None, 0, None, 1]


def test_weights_reach_training_through_prepare(tmp_path, tiny_model_dir, tiny_tokenizer):
    rows = [{"messages": [
        {"role": "user", "content": "하나"}, {"role": "assistant", "content": "틀린 답", "weight": 0},
        {"role": "user", "content": "둘"}, {"role": "assistant", "content": "맞는 답"},
    ]}]
    spec = JobSpec(model=str(tiny_model_dir), training_file=str(_write(tmp_path, rows)))
    ex = prepare(spec, tiny_tokenizer).train[0]
    labelled = [t for t in ex.labels if t != IGNORE_INDEX]
    assert tiny_tokenizer.decode(labelled, skip_special_tokens=True) == "맞는 답"
