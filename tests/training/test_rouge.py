"""ROUGE must work for Korean; the default rouge_score tokenizer does not (DESIGN §6.6)."""

from __future__ import annotations

import pytest

from core.training.rouge import mean_rouge, rouge

KO = "연구진은 수컷 쥐가 지카바이러스에 감염되면 고환 크기가 작아진다고 밝혔다."


def test_korean_identical_scores_one():
    assert rouge(KO, KO) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


def test_korean_partial_overlap():
    s = rouge("연구진은 쥐가 작아진다고 밝혔다", KO)
    assert 0 < s["rouge2"] < s["rouge1"] < 1 and 0 < s["rougeL"] < 1
    assert rouge("전혀 다른 문장", KO)["rouge1"] == 0.0


def test_lcs_and_known_english_values():
    s = rouge("the cat sat on the mat", "the cat is on the mat")
    assert s["rouge1"] == pytest.approx(5 / 6)
    assert s["rouge2"] == pytest.approx(3 / 5)
    assert s["rougeL"] == pytest.approx(5 / 6)
    assert mean_rouge([("a b", "a b"), ("c", "d")])["rouge1"] == pytest.approx(0.5)


def test_default_rouge_score_tokenizer_drops_korean():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"])
    assert scorer.score(KO, KO)["rouge1"].fmeasure == 0.0
