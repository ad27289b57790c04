"""Preference data for DPO: OpenAI's pair rows -> (prompt ids, preferred ids, non-preferred ids).

A row is `{"input": {"messages": [...]}, "preferred_output": [{assistant}],
"non_preferred_output": [{assistant}]}` (checked by `datafiles.check_preference`). Each side
is encoded as the whole conversation by `encoding.encode`, the same function supervised
training uses, so a pair's prompt is tokenized exactly as at inference and row text never
becomes a control token; the completion ends at (and includes) the turn terminator, so DPO
also rewards stopping. Both sides share the prompt tokens by construction.

A pair whose longer side does not fit `max_seq_length` is dropped and counted in the
dataset report (cutting a completion would change what is preferred).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.datafiles import DataFileError, check_preference
from core.spec import JobSpec
from core.training.data import _drop, _split_stats, fingerprint, split_rows
from core.training.encoding import IGNORE_INDEX, encode, resolve_chat_template, turn_terminator
from core.training.errors import TrainingInputError


@dataclass
class Pair:
    row: int  # index of the row in its file
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    def as_features(self) -> dict:
        """The columns TRL's DPOTrainer takes already tokenized (its collator's input)."""
        return {"prompt_ids": self.prompt_ids, "chosen_ids": self.chosen_ids, "rejected_ids": self.rejected_ids}


@dataclass
class PreparedPairs:
    train: list[Pair]
    eval: list[Pair]
    report: dict = field(default_factory=dict)
    fingerprint: str = ""

    def require_training_rows(self) -> None:
        if not self.train:
            stats = self.report["splits"]["train"]
            reasons = ", ".join(f"{n} {r}" for r, n in stats["dropped_by_reason"].items()) or "no rows"
            raise TrainingInputError(
                f"training_file: no usable preference pairs ({reasons}; max_seq_length={self.report['max_seq_length']})"
            )


def _completion(enc, prompt_len: int) -> list[int]:
    """The labelled tokens after the prompt, through the terminator (the template's text after
    it, such as a newline, is neither trained nor generated)."""
    last = max(i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX)
    return enc.input_ids[prompt_len : last + 1]


def encode_pair(tokenizer, prompt: list[dict], chosen: str, rejected: str, terminator: str, max_length: int):
    """(prompt_ids, chosen_ids, rejected_ids), or None when either side is longer than max_length."""
    sides = []
    for text in (chosen, rejected):
        enc = encode(tokenizer, [*prompt, {"role": "assistant", "content": text}], terminator, max_length)
        if enc.truncated or enc.n_labels == 0:
            return None
        sides.append(enc)
    prompt_len = next(i for i, t in enumerate(sides[0].labels) if t != IGNORE_INDEX)
    return sides[0].input_ids[:prompt_len], _completion(sides[0], prompt_len), _completion(sides[1], prompt_len)


def _encode_split(rows, tokenizer, terminator: str, max_length: int, split: str, report: dict) -> list[Pair]:
    stats = report["splits"][split]
    file_field = "training_file" if split == "train" else "validation_file"
    out: list[Pair] = []
    for index, row in rows:
        stats["rows"] += 1
        try:
            prompt, chosen, rejected = check_preference(row, index)
        except DataFileError as e:
            raise TrainingInputError(f"{file_field}: {e}") from None
        ids = encode_pair(tokenizer, prompt, chosen, rejected, terminator, max_length)
        if ids is None:
            _drop(report, split, index, f"too long (longer than max_seq_length={max_length})")
            continue
        out.append(Pair(index, *ids))
    stats["kept"] = len(out)
    return out


def prepare_pairs(spec: JobSpec, tokenizer) -> PreparedPairs:
    """The encoded pairs of both splits and their dataset report (the same shape of report as
    supervised data: rows, kept, dropped by reason, per split)."""
    resolve_chat_template(tokenizer, spec.template.chat_template)
    terminator = turn_terminator(tokenizer)
    train_rows, val_rows = split_rows(spec)
    max_length = spec.hyperparameters.max_seq_length
    report = {
        "method": "dpo",
        "rows_read": len(train_rows) + len(val_rows),
        "max_seq_length": max_length,
        "dropped": 0,
        "dropped_by_reason": {},
        "dropped_rows": [],
        "splits": {"train": _split_stats(), "validation": _split_stats()},
    }
    train = _encode_split(train_rows, tokenizer, terminator[0], max_length, "train", report)
    evals = _encode_split(val_rows, tokenizer, terminator[0], max_length, "validation", report)
    report.update(
        rows_used=len(train) + len(evals),
        train_rows=len(train),
        validation_rows=len(evals),
        turn_terminator=terminator[0],
        train_tokens=_tokens(train),
        validation_tokens=_tokens(evals),
    )
    files = [spec.training_file] + ([spec.validation_file] if spec.validation_file else [])
    return PreparedPairs(train, evals, report, fingerprint(files))


def _tokens(pairs: list[Pair]) -> dict:
    return {
        "total_tokens": sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs),
        "completion_tokens": sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs),
    }
