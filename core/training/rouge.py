"""ROUGE-1/2/L (F1) on three tokenisations that fit Korean (DESIGN §6.6, §6.12).

Scored by `rouge-score`'s `RougeScorer` (the reference implementation of ROUGE-1.5.5's
n-gram and LCS maths) with our tokenizers; its default tokenizer keeps only [a-z0-9], so
Hangul vanishes and a perfect Korean prediction scores 0.

- words: maximal runs of Unicode word characters (`\\w+`, Hangul included), lowercased.
- morphemes: the forms of Kiwi's (kiwipiepy) Korean morphological analysis, punctuation left
  out. Korean glues particles and endings onto words (연구진은/연구진이), so a prediction
  that only changes particles and endings scores ROUGE-1 ~0.4 on words but stays ~0.9 here.
- chars: every non-space character; needs no analyser and works for any script.

Both texts are NFKC-normalised first, as for exact match: generation goes through the
tokenizer's normalisation ("…" comes back as "..."), which must not count as an error.

Figures are named `rouge1`, `rouge2`, `rougeL` (words) and `<name>_morphemes`,
`<name>_chars`; `TOKENIZATIONS` describes each for the report.
"""

from __future__ import annotations

import functools
import re
import unicodedata

_WORD = re.compile(r"\w+", re.UNICODE)
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
TOKENIZATIONS = {
    "words": "NFKC text, runs of Unicode word characters (\\w+), lowercased",
    "morphemes": "NFKC text, Kiwi (kiwipiepy) Korean morphemes, lowercased, punctuation left out",
    "chars": "NFKC text, every non-space character, lowercased",
}
# Kiwi's symbol tags (punctuation, brackets, ...) except foreign words (SL), hanja (SH) and numbers (SN).
_KEPT_SYMBOL_TAGS = {"SL", "SH", "SN"}


class _Tokenizer:
    """The `tokenize(text) -> list[str]` object RougeScorer takes."""

    def __init__(self, fn):
        self.tokenize = fn


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@functools.cache
def _kiwi():
    from kiwipiepy import Kiwi

    # Loaded once per process. No typo correction (the forms as written are what is scored)
    # and no multi-word dictionary: half the load time (seconds on a busy CPU).
    return Kiwi(load_typo_dict=False, load_multi_dict=False)


def morphemes(text: str) -> list[str]:
    return [
        t.form.lower()
        for t in _kiwi().tokenize(text)
        if not t.tag.startswith("S") or t.tag in _KEPT_SYMBOL_TAGS
    ]


def chars(text: str) -> list[str]:
    return [c for c in text.lower() if not c.isspace()]


_SUFFIX = {"words": "", "morphemes": "_morphemes", "chars": "_chars"}
_FUNCS = {"words": words, "morphemes": morphemes, "chars": chars}


@functools.cache
def _scorers():
    from rouge_score.rouge_scorer import RougeScorer

    return {name: RougeScorer(list(ROUGE_TYPES), tokenizer=_Tokenizer(fn)) for name, fn in _FUNCS.items()}


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """F1 of ROUGE-1/2/L on words, morphemes and characters for one pair."""
    out: dict[str, float] = {}
    prediction, reference = (unicodedata.normalize("NFKC", t) for t in (prediction, reference))
    for name, scorer in _scorers().items():
        scores = scorer.score(reference, prediction)  # rouge-score's order: (target, prediction)
        out.update({f"{t}{_SUFFIX[name]}": scores[t].fmeasure for t in ROUGE_TYPES})
    return out


def mean_rouge(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Average of per-sample F1 over (prediction, reference) pairs."""
    if not pairs:
        return {}
    scores = [rouge(p, r) for p, r in pairs]
    return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}
