"""Long rows (DESIGN §6.11): the prompt side is trimmed, the completion and its terminator
always survive; what was trimmed or dropped is counted per reason and split, and the
dataset report is written even when nothing is left to train on."""

from __future__ import annotations

import json

import pytest

from core.spec import JobSpec
from core.training.data import prepare
from core.training.encoding import IGNORE_INDEX
from core.training.errors import TrainingInputError
from core.training.pipeline import run

PROMPT = "다음 글을 요약해주세요: {document}"


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _news_spec(tiny_model_dir, news_file, **hp):
    return JobSpec(
        model=str(tiny_model_dir),
        training_file=str(news_file),
        validation_split=0.2,
        template={"prompt": PROMPT, "completion": "{summary}"},
        hyperparameters={"max_seq_length": 384, **hp},
    )


def _completion(tok, ex) -> str:
    return tok.decode([t for t in ex.labels if t != IGNORE_INDEX][:-1])


def test_korean_news_at_384_tokens_are_trimmed_not_dropped(tiny_model_dir, tiny_tokenizer, news_file):
    data = prepare(_news_spec(tiny_model_dir, news_file), tiny_tokenizer)
    r = data.report
    eot = tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    rows = [json.loads(ln) for ln in news_file.read_text(encoding="utf-8").splitlines()]
    assert r["dropped"] == 0 and r["rows_used"] == 20 and r["truncation"] == "prompt"
    assert r["trimmed"] == r["truncated"] > 10  # most articles are longer than 384 tokens
    for split, n in (("train", 16), ("validation", 4)):
        s = r["splits"][split]
        assert s["rows"] == s["kept"] == n and s["dropped"] == 0 and s["trimmed"] > 0
        assert 0 < s["trimmed_prompt_tokens"]["median"] <= s["trimmed_prompt_tokens"]["max"]
    for ex in data.train + data.eval:
        assert len(ex.input_ids) <= 384
        assert [t for t in ex.labels if t != IGNORE_INDEX][-1] == eot  # ends with its terminator
        assert _completion(tiny_tokenizer, ex) == rows[ex.row]["summary"].strip()  # the whole summary
        prompt = ex.turns[-2]["content"]
        assert prompt.startswith("다음 글을 요약해주세요: ")  # cut from the document's end
        assert rows[ex.row]["document"].startswith(prompt.removeprefix("다음 글을 요약해주세요: ").rstrip())
    longest = max(data.train, key=lambda e: len(rows[e.row]["document"]))
    assert len(longest.input_ids) >= 384 - 8  # trimmed close to the limit, not far below it


def test_instruction_after_the_document_survives(tmp_path, tiny_model_dir, tiny_tokenizer, news_file):
    """The cut is in the longest {column} value, not at the end of the prompt turn."""
    rows = [json.loads(ln) for ln in news_file.read_text(encoding="utf-8").splitlines()[:3]]
    spec = JobSpec(
        model=str(tiny_model_dir),
        training_file=str(_write(tmp_path / "d.jsonl", rows)),
        template={"prompt": "{title}\n{document}\n\n위 글을 세 문장으로 요약하세요.", "completion": "{summary}"},
        hyperparameters={"max_seq_length": 384},
    )
    data = prepare(spec, tiny_tokenizer)
    assert data.report["trimmed"] == data.report["truncated"] >= 2 and data.report["dropped"] == 0
    for ex in data.train:
        prompt = ex.turns[-2]["content"]
        assert prompt.startswith(rows[ex.row]["title"]) and prompt.endswith("위 글을 세 문장으로 요약하세요.")


def test_chat_rows_trim_the_longest_user_turn(tmp_path, tiny_model_dir, tiny_tokenizer):
    rows = [{"messages": [
        {"role": "system", "content": "요약기"},
        {"role": "user", "content": "긴 본문 " * 200},
        {"role": "assistant", "content": "짧은 요약"},
    ]}]
    spec = JobSpec(model=str(tiny_model_dir), training_file=str(_write(tmp_path / "m.jsonl", rows)),
                   hyperparameters={"max_seq_length": 64})
    data = prepare(spec, tiny_tokenizer)
    (ex,) = data.train
    assert len(ex.input_ids) <= 64 and ex.turns[0]["content"] == "요약기"
    assert _completion(tiny_tokenizer, ex) == "짧은 요약"


def test_drop_mode_keeps_the_old_rule(tiny_model_dir, tiny_tokenizer, news_file):
    r = prepare(_news_spec(tiny_model_dir, news_file, truncation="drop"), tiny_tokenizer).report
    assert r["trimmed"] == 0 and r["dropped"] == r["truncated"] > 10
    assert r["dropped_by_reason"] == {"completion truncated": r["dropped"]}
    assert r["splits"]["train"]["dropped"] + r["splits"]["validation"]["dropped"] == r["dropped"]


def test_every_row_dropped_still_writes_the_report(tmp_path, tiny_model_dir):
    rows = [{"prompt": "질문", "completion": "아주 긴 답변 " * 40} for _ in range(3)]
    spec = JobSpec(model=str(tiny_model_dir), training_file=str(_write(tmp_path / "d.jsonl", rows)),
                   hyperparameters={"max_seq_length": 32})
    with pytest.raises(TrainingInputError, match=r"training_file: no usable rows: all 3 train rows were dropped \(3 completion does not fit"):
        run(spec, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "dataset_report.json").read_text())
    assert report["rows_read"] == 3 and report["splits"]["train"]["dropped"] == 3
    assert report["notes"] == ["all 3 train rows were dropped (3 completion does not fit; max_seq_length=32, truncation=prompt)"]


def test_all_validation_rows_dropped_is_named_in_the_eval_report(tmp_path, tiny_model_dir, learn_file):
    long = [{"prompt": "질문", "completion": "아주 긴 답변 " * 40} for _ in range(6)]
    spec = JobSpec(model=str(tiny_model_dir), training_file=str(learn_file),
                   validation_file=str(_write(tmp_path / "v.jsonl", long)),
                   hyperparameters={"max_seq_length": 40, "max_steps": 1, "truncation": "drop"})
    assert run(spec, tmp_path / "out").status == "succeeded"
    report = json.loads((tmp_path / "out" / "eval_report.json").read_text())
    assert report["note"] == (
        "all 6 validation rows were dropped (6 completion truncated; max_seq_length=40, truncation=drop)"
    )
