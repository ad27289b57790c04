"""Read training data files (JSONL, CSV, Parquet) into plain dict rows, and say what shape they have.

Pure python (stdlib + pyarrow for Parquet): the API validates uploads with this module and
must not import torch or transformers. Errors name the line or row so a client can fix the
file, and are `DataFileError` (a `ValueError`).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Literal

Format = Literal["messages", "prompt_completion", "template-needed"]

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_ROLES = ("system", "user", "assistant")


class DataFileError(ValueError):
    """A data file that cannot be used as it is; the message names the file and line/row."""


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a JSONL / CSV / Parquet file, chosen by suffix (JSONL when unknown)."""
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"{p}: file not found")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        rows = _read_parquet(p)
    elif suffix == ".csv":
        rows = read_csv_text(_read_text(p), name=str(p))
    else:
        rows = read_jsonl_text(_read_text(p), name=str(p))
    return rows


def _read_text(p: Path) -> str:
    try:
        return p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFileError(f"{p}: not UTF-8 text (byte {e.start})") from None


def read_jsonl_text(text: str, name: str = "<data>") -> list[dict[str, Any]]:
    """One JSON object per non-blank line; line numbers in errors are 1-based."""
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFileError(
                f"{name}: line {lineno} is not valid JSON ({e.msg} at column {e.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise DataFileError(
                f"{name}: line {lineno} is a JSON {type(obj).__name__}, expected an object"
            )
        rows.append(obj)
    if not rows:
        raise DataFileError(f"{name}: the file has no rows")
    return rows


def read_csv_text(text: str, name: str = "<data>") -> list[dict[str, Any]]:
    """CSV with a header row; a row with more cells than the header is an error naming the row."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise DataFileError(f"{name}: the file is empty (no header row)")
    rows: list[dict[str, Any]] = []
    try:
        for index, row in enumerate(reader):
            if None in row:
                raise DataFileError(
                    f"{name}: row {index} (line {reader.line_num}) has more cells than the header's "
                    f"{len(reader.fieldnames)} columns"
                )
            rows.append({k: ("" if v is None else v) for k, v in row.items()})
    except csv.Error as e:
        raise DataFileError(f"{name}: line {reader.line_num}: {e}") from None
    if not rows:
        raise DataFileError(f"{name}: the file has no rows")
    return rows


def _read_parquet(p: Path) -> list[dict[str, Any]]:
    import pyarrow as pa  # local: only Parquet needs it
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(p).to_pylist()
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataFileError(f"{p}: not a readable Parquet file ({e})") from None
    if not rows:
        raise DataFileError(f"{p}: the file has no rows")
    return rows


def detect_format(rows: list[dict[str, Any]]) -> Format:
    """What the rows already are: chat `messages`, `prompt`/`completion`, or neither.

    Decided on the first row; `check_rows` then verifies every row has that shape.
    """
    if not rows:
        raise DataFileError("no rows")
    first = rows[0]
    if "messages" in first:
        return "messages"
    if "prompt" in first and "completion" in first:
        return "prompt_completion"
    return "template-needed"


def check_messages(messages: Any, index: int) -> list[dict[str, str]]:
    """A `messages` value as a list of {role, content}; ends with an assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise DataFileError(
            f"row {index}: 'messages' must be a non-empty list of {{role, content}} objects"
        )
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataFileError(
                f"row {index}: messages[{i}] must be an object with 'role' and 'content'"
            )
        if m["role"] not in _ROLES:
            raise DataFileError(
                f"row {index}: messages[{i}] has role {m['role']!r}; expected one of {_ROLES}"
            )
        if not isinstance(m["content"], str):
            raise DataFileError(f"row {index}: messages[{i}].content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise DataFileError(
            f"row {index}: the last message must be the assistant's (the completion to learn)"
        )
    return out


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Column names in first-seen order over all rows."""
    seen: dict[str, None] = {}
    for r in rows:
        for k in r:
            seen.setdefault(k, None)
    return list(seen)
