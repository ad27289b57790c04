"""DESIGN §6.1-3 and §6.5: chat rendering, completion-only labels, terminator, truncation, padding."""

from __future__ import annotations

import json

import pytest

from core.spec import JobSpec
from core.training.batching import DynamicPaddingCollator
from core.training.data import prepare
from core.training.encoding import (
    IGNORE_INDEX,
    encode,
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
        hyperparameters={"max_seq_length": 32},
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


def test_row_cut_inside_its_completion_is_dropped_not_trained_without_terminator(
    tmp_path, tiny_model_dir, tiny_tokenizer
):
    """§6.3: the terminator is the last label of EVERY example; a row whose completion is cut
    by max_seq_length would teach the model not to stop, so it is dropped and reported."""
    rows = [{"prompt": "질문", "completion": "아주 긴 답변 " * 40}, {"prompt": "질문", "completion": "짧은 답"}]
    spec = JobSpec(
        model=str(tiny_model_dir),
        training_file=str(_write(tmp_path, rows)),
        hyperparameters={"max_seq_length": 32},
    )
    data = prepare(spec, tiny_tokenizer)
    r = data.report
    assert r["truncated"] == 1 and r["dropped_by_reason"] == {"completion truncated": 1}
    assert r["dropped_rows"][0]["row"] == 0 and "before its turn terminator" in r["dropped_rows"][0]["reason"]
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
