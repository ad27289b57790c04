"""ROUGE-1/2/L (F1) with a tokenizer that keeps Korean (DESIGN §6.6).

`rouge_score`'s default tokenizer lowercases and replaces every non-[a-z0-9] character
with a space, so Hangul disappears and a perfect Korean prediction scores 0. Here a token
is a maximal run of Unicode word characters (`\\w`, which includes Hangul), lowercased.
No stemming: it is English-only. Pure python, no torch.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    if overlap == 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def rouge_n(pred: list[str], ref: list[str], n: int) -> float:
    grams = lambda toks: Counter(
        tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)
    )
    pg, rg = grams(pred), grams(ref)
    return _f1(sum((pg & rg).values()), sum(pg.values()), sum(rg.values()))


def lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: list[str], ref: list[str]) -> float:
    return _f1(lcs_length(pred, ref), len(pred), len(ref))


def rouge(prediction: str, reference: str) -> dict[str, float]:
    p, r = tokenize(prediction), tokenize(reference)
    return {
        "rouge1": rouge_n(p, r, 1),
        "rouge2": rouge_n(p, r, 2),
        "rougeL": rouge_l(p, r),
    }


def mean_rouge(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Average of per-sample F1 over (prediction, reference) pairs."""
    if not pairs:
        return {}
    scores = [rouge(p, r) for p, r in pairs]
    return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}
