"""Data stage: read the files, split validation, render and encode every row, and report.

Shared by `run()` and `dry_run()` so a validation answers exactly what training would do.
Rows that cannot be trained on are dropped with a reason and counted; a row that does not
fit the template at all is an error naming the row (the user must fix the data).
"""

from __future__ import annotations

import hashlib
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from core.datafiles import DataFileError, read_rows, validation_rows
from core.prompts import render_row
from core.spec import JobSpec
from core.training.encoding import encode, ends_with_terminator, resolve_chat_template, turn_terminator
from core.training.errors import TrainingInputError

MAX_LISTED_DROPS = 50


@dataclass
class Example:
    row: int  # index of the row in its file
    turns: list[dict]
    input_ids: list[int]
    labels: list[int]

    def as_features(self) -> dict:
        return {"input_ids": self.input_ids, "labels": self.labels}


@dataclass
class PreparedData:
    train: list[Example]
    eval: list[Example]
    terminator: tuple[str, int]
    report: dict = field(default_factory=dict)
    fingerprint: str = ""


def fingerprint(paths: list[str]) -> str:
    """sha256 over the data files' bytes (and their order): identifies the exact data trained on."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _read(path: str, field_name: str) -> list[dict]:
    try:
        return read_rows(path)
    except DataFileError as e:
        raise TrainingInputError(f"{field_name}: {e}") from None


def split_rows(spec: JobSpec) -> tuple[list[tuple[int, dict]], list[tuple[int, dict]]]:
    """(index, row) pairs for training and validation; a validation_split is seeded by spec.seed."""
    train = list(enumerate(_read(spec.training_file, "training_file")))
    if spec.validation_file:
        return train, list(enumerate(_read(spec.validation_file, "validation_file")))
    if spec.validation_split > 0:
        order = list(range(len(train)))
        random.Random(spec.seed).shuffle(order)
        n_val = validation_rows(len(train), spec.validation_split)
        if n_val >= len(train):
            raise TrainingInputError(
                f"validation_split: {spec.validation_split} leaves no training rows"
            )
        val_idx = set(order[:n_val])
        return [r for r in train if r[0] not in val_idx], [
            r for r in train if r[0] in val_idx
        ]
    return train, []


def _encode_rows(
    rows, spec: JobSpec, tokenizer, terminator: tuple[str, int], split: str, report: dict
) -> list[Example]:
    max_len = spec.hyperparameters.max_seq_length
    out: list[Example] = []
    for index, row in rows:
        try:
            turns = render_row(row, spec.template, index)
        except DataFileError as e:
            file_field = "training_file" if split == "train" else "validation_file"
            raise TrainingInputError(f"{file_field}: {e}") from None
        if not turns[-1]["content"].strip():
            _drop(report, split, index, "empty completion")
            continue
        enc = encode(
            tokenizer,
            turns,
            terminator[0],
            max_len,
            spec.hyperparameters.completion_only_loss,
        )
        report["truncated"] += enc.truncated
        if enc.truncated and not ends_with_terminator(enc, terminator[1]):
            what = "entirely" if enc.n_labels == 0 else "before its turn terminator"
            _drop(report, split, index, f"completion truncated ({what}, at max_seq_length={max_len})")
            continue
        out.append(Example(index, turns, enc.input_ids, enc.labels))
    return out


def _drop(report: dict, split: str, index: int, reason: str) -> None:
    report["dropped"] += 1
    report["dropped_by_reason"][reason.split(" (")[0]] = (
        report["dropped_by_reason"].get(reason.split(" (")[0], 0) + 1
    )
    if len(report["dropped_rows"]) < MAX_LISTED_DROPS:
        report["dropped_rows"].append({"split": split, "row": index, "reason": reason})


def _length_stats(examples: list[Example]) -> dict:
    lengths = [len(e.input_ids) for e in examples]
    labelled = [sum(1 for x in e.labels if x != -100) for e in examples]
    if not lengths:
        return {"total_tokens": 0, "completion_tokens": 0}
    return {
        "total_tokens": sum(lengths),
        "completion_tokens": sum(labelled),
        "min": min(lengths),
        "median": statistics.median(lengths),
        "max": max(lengths),
        "mean": round(sum(lengths) / len(lengths), 1),
    }


def prepare(spec: JobSpec, tokenizer) -> PreparedData:
    """Everything the trainer and the evaluator need from the data, plus the dataset report."""
    resolve_chat_template(tokenizer, spec.template.chat_template)
    terminator = turn_terminator(tokenizer)
    train_rows, val_rows = split_rows(spec)
    report = {
        "rows_read": len(train_rows) + len(val_rows),
        "dropped": 0,
        "dropped_by_reason": {},
        "dropped_rows": [],
        "truncated": 0,
    }
    train = _encode_rows(train_rows, spec, tokenizer, terminator, "train", report)
    evals = _encode_rows(val_rows, spec, tokenizer, terminator, "validation", report)
    if not train:
        raise TrainingInputError(
            "training_file: no usable rows remain after dropping "
            f"{report['dropped']} rows"
        )
    report.update(
        rows_used=len(train) + len(evals),
        train_rows=len(train),
        validation_rows=len(evals),
        max_seq_length=spec.hyperparameters.max_seq_length,
        turn_terminator=terminator[0],
        train_tokens=_length_stats(train),
        validation_tokens=_length_stats(evals),
    )
    files = [spec.training_file] + (
        [spec.validation_file] if spec.validation_file else []
    )
    return PreparedData(train, evals, terminator, report, fingerprint(files))
