"""Data stage: read the files, split validation, render and encode every row, and report.

Shared by `run()` and `dry_run()` so a validation answers exactly what training would do.
Long rows are trimmed on the prompt side (see `truncation`); rows that cannot be trained on
are dropped with a reason and counted, per split; a row that does not fit the template at
all is an error naming the row (the user must fix the data). The report is always complete,
even when every row was dropped: it is what tells the user why.
"""

from __future__ import annotations

import hashlib
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from core.datafiles import DataFileError, read_rows, uses_tools, validation_rows
from core.prompts import render_row
from core.spec import JobSpec
from core.training.encoding import RowTextError, renders_tools, resolve_chat_template, turn_terminator
from core.training.errors import TrainingInputError
from core.training.truncation import fit_row

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

    def empty_cause(self, split: str) -> str | None:
        """Why a split has no examples, in words (None when it has some, or had no rows)."""
        stats = self.report["splits"][split]
        if stats["kept"] or not stats["rows"]:
            return None
        reasons = ", ".join(f"{n} {reason}" for reason, n in stats["dropped_by_reason"].items())
        return (
            f"all {stats['rows']} {split} rows were dropped ({reasons}; "
            f"max_seq_length={self.report['max_seq_length']}, truncation={self.report['truncation']})"
        )

    def require_training_rows(self) -> None:
        if not self.train:
            cause = self.empty_cause("train") or "the training file has no rows"
            raise TrainingInputError(f"training_file: no usable rows: {cause}")


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
    stats = report["splits"][split]
    cuts: list[int] = []
    out: list[Example] = []
    file_field = "training_file" if split == "train" else "validation_file"
    for index, row in rows:
        stats["rows"] += 1
        try:
            turns = render_row(row, spec.template, index)
        except DataFileError as e:
            raise TrainingInputError(f"{file_field}: {e}") from None
        if not turns[-1]["content"].strip() and not turns[-1].get("tool_calls"):
            _drop(report, split, index, "empty completion")
            continue
        try:
            fitted = fit_row(row, index, spec, tokenizer, terminator)
        except RowTextError as e:
            raise TrainingInputError(f"{file_field}: row {index}: {e}") from None
        report["truncated"] += fitted.too_long
        if fitted.drop_reason:
            _drop(report, split, index, fitted.drop_reason)
            continue
        if fitted.prompt_tokens_cut:
            cuts.append(fitted.prompt_tokens_cut)
        out.append(Example(index, fitted.turns, fitted.enc.input_ids, fitted.enc.labels))
    stats.update(
        kept=len(out),
        trimmed=len(cuts),
        trimmed_prompt_tokens={"median": statistics.median(cuts) if cuts else 0, "max": max(cuts, default=0)},
    )
    report["trimmed"] += len(cuts)
    return out


def _drop(report: dict, split: str, index: int, reason: str) -> None:
    """Count a dropped row under its reason (the part before the parenthesis), overall and per split."""
    key = reason.split(" (")[0]
    stats = report["splits"][split]
    for where in (report, stats):
        where["dropped"] += 1
        where["dropped_by_reason"][key] = where["dropped_by_reason"].get(key, 0) + 1
    if len(report["dropped_rows"]) < MAX_LISTED_DROPS:
        report["dropped_rows"].append({"split": split, "row": index, "reason": reason})


def _split_stats() -> dict:
    return {"rows": 0, "kept": 0, "trimmed": 0, "dropped": 0, "dropped_by_reason": {}, "trimmed_prompt_tokens": {}}


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


def require_tool_rendering(spec: JobSpec, tokenizer, splits: dict[str, list[tuple[int, dict]]]) -> None:
    """Rows with tool use need a chat template that renders tools: without it they would
    train with the tools and calls silently left out. Names the first such row."""
    for file_field, rows in splits.items():
        first = next((index for index, row in rows if uses_tools(row)), None)
        if first is not None and not renders_tools(tokenizer):
            raise TrainingInputError(
                f"{file_field}: row {first} uses tools but the chat template of {spec.model} does not render tools"
                + (f" (template.chat_template={spec.template.chat_template!r})" if spec.template.chat_template else "")
            )


def prepare(spec: JobSpec, tokenizer) -> PreparedData:
    """Everything the trainer and the evaluator need from the data, plus the dataset report."""
    resolve_chat_template(tokenizer, spec.template.chat_template)
    terminator = turn_terminator(tokenizer)
    train_rows, val_rows = split_rows(spec)
    require_tool_rendering(spec, tokenizer, {"training_file": train_rows, "validation_file": val_rows})
    hp = spec.hyperparameters
    report = {
        "rows_read": len(train_rows) + len(val_rows),
        "max_seq_length": hp.max_seq_length,
        "truncation": hp.truncation,
        "truncated": 0,  # rows longer than max_seq_length as given (then trimmed or dropped)
        "trimmed": 0,
        "dropped": 0,
        "dropped_by_reason": {},
        "dropped_rows": [],
        "splits": {"train": _split_stats(), "validation": _split_stats()},
    }
    train = _encode_rows(train_rows, spec, tokenizer, terminator, "train", report)
    evals = _encode_rows(val_rows, spec, tokenizer, terminator, "validation", report)
    report.update(
        rows_used=len(train) + len(evals),
        train_rows=len(train),
        validation_rows=len(evals),
        turn_terminator=terminator[0],
        train_tokens=_length_stats(train),
        validation_tokens=_length_stats(evals),
    )
    files = [spec.training_file] + (
        [spec.validation_file] if spec.validation_file else []
    )
    data = PreparedData(train, evals, terminator, report, fingerprint(files))
    report["notes"] = [c for c in (data.empty_cause("train"), data.empty_cause("validation")) if c]
    return data
