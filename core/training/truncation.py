"""Rows longer than max_seq_length (DESIGN §6.11): trim the prompt side, keep the completion.

Summarising long documents is the point of most jobs here, so a long document must not cost
its row. `truncation: prompt` (default) cuts the longest prompt-side value (a `{column}` of
the template, or a non-assistant turn of a chat row) from its end, at a token boundary of
that value, until the whole conversation fits (the next longest only once the longest is
gone): the completion, its turn terminator and the
chat template's control tokens are never cut. A row whose completion alone does not fit is
dropped with that reason. `truncation: drop` keeps the old rule: a row whose completion is
cut by max_seq_length is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.prompts import prompt_side_values, render_row
from core.spec import JobSpec
from core.training.encoding import Encoded, encode, keeps_every_trained_turn


@dataclass
class Fitted:
    turns: list[dict]
    enc: Encoded
    too_long: bool = False  # longer than max_seq_length as given
    prompt_tokens_cut: int = 0
    drop_reason: str | None = None  # set when the row cannot be trained on


def fit_row(row: dict, index: int, spec: JobSpec, tokenizer, terminator: tuple[str, int]) -> Fitted:
    """The row rendered and encoded within max_seq_length, trimmed or marked for dropping."""
    hp = spec.hyperparameters
    max_len = hp.max_seq_length

    def encode_row(r: dict) -> tuple[list[dict], Encoded]:
        turns = render_row(r, spec.template, index)
        return turns, encode(tokenizer, turns, terminator[0], max_len, hp.completion_only_loss)

    turns, enc = encode_row(row)
    if not enc.truncated or keeps_every_trained_turn(enc, terminator[1]):
        return Fitted(turns, enc, enc.truncated)  # fits (at most text after the last terminator was cut)
    if hp.truncation == "drop":
        what = "entirely" if enc.n_labels == 0 else "before its turn terminator"
        return Fitted(turns, enc, True, drop_reason=f"completion truncated ({what}, at max_seq_length={max_len})")
    values = prompt_side_values(row, spec.template)
    cut = 0
    # Longest value first; only when it is cut away entirely does the next one shrink.
    for i in sorted(range(len(values)), key=lambda i: -len(values[i][0])):
        value, replace = prompt_side_values(row, spec.template)[i]
        offsets = tokenizer(value, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        keep = len(offsets)
        # A value's tokens on their own and in context can differ at the seams, so cut the
        # measured excess and measure again; each round cuts at least one more token.
        while enc.truncated and not keeps_every_trained_turn(enc, terminator[1]) and keep > 0:
            keep = max(0, keep - max(1, enc.full_length - max_len))
            row = replace(value[: offsets[keep][0]] if keep < len(offsets) else value)
            turns, enc = encode_row(row)
        cut += len(offsets) - keep
        if not enc.truncated or keeps_every_trained_turn(enc, terminator[1]):
            return Fitted(turns, enc, True, prompt_tokens_cut=cut)
    return Fitted(
        turns,
        enc,
        True,
        drop_reason=f"completion does not fit (with the whole prompt side cut, at max_seq_length={max_len})",
    )
