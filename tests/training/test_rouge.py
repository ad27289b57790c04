"""ROUGE must work for Korean (DESIGN §6.6, §6.12): words, morphemes and characters, scored
by rouge-score's RougeScorer with our tokenizers."""

from __future__ import annotations

import pytest

from core.training.rouge import mean_rouge, morphemes, rouge

KO = "연구진은 수컷 쥐가 지카바이러스에 감염되면 고환 크기가 작아진다고 밝혔다."
# The same sentence with only particles and endings changed (은->이, 가->도, 가->는, 다고->다며, 혔다->혔습니다).
KO_PARTICLES = "연구진이 수컷 쥐도 지카바이러스에 감염되면 고환 크기는 작아진다며 밝혔습니다."


def test_korean_identical_scores_one():
    assert set(rouge(KO, KO).values()) == {1.0}
    assert {"rouge1", "rouge2", "rougeL", "rouge1_morphemes", "rougeL_chars"} <= set(rouge(KO, KO))


def test_korean_partial_overlap():
    s = rouge("연구진은 쥐가 작아진다고 밝혔다", KO)
    assert 0 < s["rouge2"] < s["rouge1"] < 1 and 0 < s["rougeL"] < 1
    assert rouge("전혀 다른 문장", KO)["rouge1"] == 0.0


def test_particles_and_endings_cost_little_on_morphemes_and_characters():
    """Whole words differ as soon as one particle does; morphemes and characters see the
    shared stems."""
    s = rouge(KO_PARTICLES, KO)
    assert s["rouge1"] < 0.5
    assert s["rouge1_morphemes"] > 0.7 and s["rouge1_chars"] > 0.8
    assert morphemes("쥐가 작아진다")[:2] == ["쥐", "가"]  # stem and particle are separate tokens


def test_known_english_values():
    s = rouge("the cat sat on the mat", "the cat is on the mat")
    assert s["rouge1"] == pytest.approx(5 / 6)
    assert s["rouge2"] == pytest.approx(3 / 5)
    assert s["rougeL"] == pytest.approx(5 / 6)
    assert mean_rouge([("a b", "a b"), ("c", "d")])["rouge1"] == pytest.approx(0.5)


def test_default_rouge_score_tokenizer_drops_korean():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"])
    assert scorer.score(KO, KO)["rouge1"].fmeasure == 0.0


def test_tokenizer_normalisation_is_not_an_error():
    """Generation comes back through the tokenizer's normalisation ("…" -> "...")."""
    assert set(rouge("14일 슈퍼문...달과", "14일 슈퍼문…달과").values()) == {1.0}
