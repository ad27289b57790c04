"""Read training data files (JSONL, CSV, Parquet) as a stream of plain dict rows, and say
what shape they have.

Pure python (stdlib + pyarrow for Parquet): the API validates uploads with this module and
must not import torch or transformers. Errors name the line or row so a client can fix the
file, and are `DataFileError` (a `ValueError`).

Files are read row by row (Parquet: a few rows of one row group at a time), never whole,
and the `Limits` are enforced while reading, the same in every format: a file's memory
cost is bounded by one row, not by the file. A string anywhere in a row (a CSV field, a
JSON string at any depth, a Parquet string value) is a *cell*; a row's size is the sum of
its cells. Measuring decoded text rather than raw bytes is what makes the formats agree:
a 128 KiB field is the same 128 KiB whether it came quoted in CSV or escaped in JSON.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Format = Literal["messages", "prompt_completion", "preference", "template-needed"]

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_ROLES = ("system", "user", "assistant")
KiB, MiB = 1024, 1024 * 1024
# JSON may spell one character as a 6-byte escape (\u00e9; a 4-byte character as two of
# them, 12 bytes): a line's raw length is bounded at this multiple of the row limit.
_JSON_ESCAPE_FACTOR = 6
# A Parquet batch is sized so that its decoded rows stay near this many bytes.
_PARQUET_BATCH_BYTES = 8 * MiB

# csv's own per-field limit (128 KiB by default, counted in characters) would refuse a CSV
# field that JSONL accepts; our cell limit replaces it, and `_bounded_lines` bounds a
# record's raw size before csv ever sees it.
csv.field_size_limit(2**31 - 1)


@dataclass(frozen=True)
class Limits:
    """What one data file may hold. The server's values are the TUNEFORGE_MAX_UPLOAD_ROWS,
    _MAX_ROW_BYTES, _MAX_CELL_BYTES and _MAX_UPLOAD_BYTES settings (`configured_limits`)."""

    max_rows: int
    max_row_bytes: int
    max_cell_bytes: int
    # What a Parquet file may decode to: no more data than the same rows uploaded as JSONL.
    max_decoded_bytes: int


def configured_limits() -> Limits:
    """This deployment's limits, read where the file is read: the API at upload and the
    training process (which has no other settings) apply the same ones."""
    from core.config import DataLimitSettings

    return DataLimitSettings().data_limits


class DataFileError(ValueError):
    """A data file that cannot be used as it is; the message names the file and line/row."""


class DataLimitError(DataFileError):
    """The file as a whole is over a limit (rows, decoded size): the API answers 413."""


@dataclass
class Summary:
    """What job creation needs to know about a file without reading it again."""

    row_count: int
    columns: list[str]
    format: Format


def iter_rows(path: str | Path, limits: Limits | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a JSONL / CSV / Parquet file (chosen by suffix, JSONL when unknown), each
    checked against `limits` and for having at least one usable value."""
    limits = limits or configured_limits()
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"{p}: file not found")
    suffix = p.suffix.lower()
    reader = _parquet if suffix == ".parquet" else _csv if suffix == ".csv" else _jsonl
    count = decoded = 0
    for index, row in enumerate(reader(p, limits)):
        if index >= limits.max_rows:
            raise DataLimitError(f"{p}: the file has more than this server's limit of {limits.max_rows} rows")
        decoded += _check_sizes(row, index, limits)
        if decoded > limits.max_decoded_bytes:  # a Parquet file whose footer understated it
            raise DataLimitError(f"{p}: the file decodes to more than this server's limit of {limits.max_decoded_bytes} bytes")
        if not any(_usable(v) for v in row.values()):
            raise DataFileError(f"{p}: row {index} has no usable columns (every value is empty or null)")
        count += 1
        yield row
    if count == 0:
        raise DataFileError(f"{p}: the file has no rows")


def read_rows(path: str | Path, limits: Limits | None = None) -> list[dict[str, Any]]:
    """All rows of a file, for the trainer (which needs them in memory anyway)."""
    return list(iter_rows(path, limits))


def scan(path: str | Path, limits: Limits | None = None) -> Summary:
    """Validate every row of a file in bounded memory: its shape is decided on the first
    row and checked on each (chat rows must be well-formed conversations)."""
    seen: dict[str, None] = {}
    fmt: Format | None = None
    count = 0
    for index, row in enumerate(iter_rows(path, limits)):
        if fmt is None:
            fmt = detect_format([row])
        check_row(fmt, row, index)
        for k in row:
            seen.setdefault(k, None)
        count += 1
    assert fmt is not None  # iter_rows refuses a file without rows
    return Summary(count, list(seen), fmt)


# --- sizes ------------------------------------------------------------------------------


def _usable(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, str):
        return bool(v.strip())
    if isinstance(v, (list, dict, bytes)):
        return bool(v)
    return True


def _cells(v: Any, column: str) -> Iterator[tuple[str, int]]:
    """(column, size) of every string inside a value; other scalars count 8 bytes."""
    if isinstance(v, str):
        yield column, len(v.encode("utf-8", "surrogatepass"))
    elif isinstance(v, bytes):
        yield column, len(v)
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from _cells(x, f"{column}.{k}")
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            yield from _cells(x, f"{column}[{i}]")
    else:
        yield column, 8


def _check_sizes(row: dict[str, Any], index: int, limits: Limits) -> int:
    """The row's size, after checking it and each of its cells against the limits."""
    total = 0
    for key, value in row.items():
        for column, size in _cells(value, str(key)):
            if size > limits.max_cell_bytes:
                raise DataFileError(
                    f"row {index}: the value of '{column}' is {size} bytes; this server's limit for one value is "
                    f"{limits.max_cell_bytes} bytes"
                )
            total += size
    if total > limits.max_row_bytes:
        raise DataFileError(f"row {index} holds {total} bytes of values; this server's limit for one row is {limits.max_row_bytes} bytes")
    return total


# --- JSONL ------------------------------------------------------------------------------


def _jsonl(p: Path, limits: Limits) -> Iterator[dict[str, Any]]:
    """One JSON object per non-blank line; line numbers in errors are 1-based."""
    raw_limit = _JSON_ESCAPE_FACTOR * limits.max_row_bytes + 64 * KiB
    with p.open("rb") as f:
        lineno = 0
        while line := f.readline(raw_limit + 1):
            lineno += 1
            if len(line) > raw_limit:
                raise DataFileError(f"{p}: line {lineno} is longer than {raw_limit} bytes (a row may hold {limits.max_row_bytes} bytes)")
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFileError(f"{p}: line {lineno} is not UTF-8 text (byte {e.start})") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataFileError(f"{p}: line {lineno} is not valid JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise DataFileError(f"{p}: line {lineno} nests JSON too deeply") from None
            if not isinstance(obj, dict):
                raise DataFileError(f"{p}: line {lineno} is a JSON {type(obj).__name__}, expected an object")
            yield obj


# --- CSV --------------------------------------------------------------------------------


class _BoundedLines:
    """The lines of a text file for csv, refusing a record (which may span lines inside
    quotes) longer than `limit` characters before it is held in memory."""

    def __init__(self, f: io.TextIOBase, limit: int, name: Path):
        self.f, self.limit, self.name = f, limit, name
        self.record_chars = 0
        self.lines = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.f.readline(self.limit + 1)
        if not line:
            raise StopIteration
        self.lines += 1
        self.record_chars += len(line)
        if self.record_chars > self.limit:
            raise DataFileError(f"{self.name}: the record ending at line {self.lines} is longer than {self.limit} characters")
        return line


def _csv(p: Path, limits: Limits) -> Iterator[dict[str, Any]]:
    """CSV with a header row; a row with more cells than the header is an error naming the row."""
    with p.open("r", encoding="utf-8-sig", newline="") as f:
        # Quoting doubles a `"` at most: a record within the row limit is within twice it.
        lines = _BoundedLines(f, 2 * limits.max_row_bytes + 64 * KiB, p)
        reader = csv.reader(lines)
        try:
            header = next(reader, None)
            if not header:
                raise DataFileError(f"{p}: the file is empty (no header row)")
            index = 0
            for cells in reader:
                lines.record_chars = 0
                if not cells:
                    continue  # a blank line
                if len(cells) > len(header):
                    raise DataFileError(
                        f"{p}: row {index} (line {reader.line_num}) has more cells than the header's {len(header)} columns"
                    )
                yield {k: (cells[i] if i < len(cells) else "") for i, k in enumerate(header)}
                index += 1
        except csv.Error as e:
            raise DataFileError(f"{p}: line {reader.line_num}: {e}") from None
        except UnicodeDecodeError as e:
            raise DataFileError(f"{p}: not UTF-8 text (near line {lines.lines + 1}, byte {e.start} of a block)") from None


# --- Parquet ----------------------------------------------------------------------------

_WIDTH = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8}


def parquet_decoded_estimate(metadata) -> tuple[int, bool]:
    """A lower bound of what a Parquet file decodes to, from its footer alone.

    Dictionary and run-length encoding let a 1 KiB file stand for gigabytes (one value
    repeated a billion times), so the stored sizes say little. Each column chunk decodes to
    at least its value count times the value width (for strings: the longer of the min/max
    statistics, which writers record by default), and at least its uncompressed pages.
    Also says whether every string column had statistics (else the bound is weak).
    """
    total, known = 0, True
    for g in range(metadata.num_row_groups):
        rg = metadata.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            width = _WIDTH.get(col.physical_type, 0)
            if col.physical_type == "FIXED_LEN_BYTE_ARRAY":
                width = metadata.schema.column(c).length or 0
            elif col.physical_type == "BYTE_ARRAY":
                stats = col.statistics
                width = 4
                if stats is not None and stats.has_min_max:
                    width += max(len(_as_bytes(stats.min)), len(_as_bytes(stats.max)))
                else:
                    known = False
            total += max(col.total_uncompressed_size, col.num_values * width)
    return total, known


def _as_bytes(v: Any) -> bytes:
    return v.encode("utf-8", "surrogatepass") if isinstance(v, str) else bytes(v) if isinstance(v, (bytes, bytearray)) else b""


def _parquet(p: Path, limits: Limits) -> Iterator[dict[str, Any]]:
    import pyarrow as pa  # local: only Parquet needs it
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p, pre_buffer=False, buffer_size=1 * MiB)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataFileError(f"{p}: not a readable Parquet file ({e})") from None
    with pf:
        meta = pf.metadata
        if meta.num_rows > limits.max_rows:
            raise DataLimitError(f"{p}: the file has {meta.num_rows} rows; this server's limit is {limits.max_rows}")
        estimate, known = parquet_decoded_estimate(meta)
        if estimate > limits.max_decoded_bytes:
            raise DataLimitError(
                f"{p}: the file would decode to at least {estimate} bytes ({p.stat().st_size} stored); "
                f"this server's limit is {limits.max_decoded_bytes} bytes of data per file"
            )
        # Rows are materialised a batch at a time; without string statistics a row may be as
        # wide as the row limit allows, so batches get small (slower, still bounded).
        per_row = max(1, estimate // max(1, meta.num_rows), 0 if known else limits.max_row_bytes)
        batch = max(1, min(4096, _PARQUET_BATCH_BYTES // per_row))
        try:
            for rb in pf.iter_batches(batch_size=batch, use_threads=False):
                yield from rb.to_pylist()
        except (OSError, pa.ArrowException) as e:
            raise DataFileError(f"{p}: not a readable Parquet file ({e})") from None


def validation_rows(row_count: int, split: float) -> int:
    """How many rows a `validation_split` takes from the training file (at least one); the
    trainer splits by it and job creation refuses a split that leaves no training rows."""
    return max(1, round(row_count * split))


# --- shapes -----------------------------------------------------------------------------


def detect_format(rows: list[dict[str, Any]]) -> Format:
    """What the rows already are: chat `messages`, `prompt`/`completion`, preference pairs
    (OpenAI's DPO format: `input`, `preferred_output`, `non_preferred_output`), or neither.

    Decided on the first row; `scan` then verifies every row has that shape.
    """
    if not rows:
        raise DataFileError("no rows")
    first = rows[0]
    if "preferred_output" in first or "non_preferred_output" in first:
        return "preference"
    if "messages" in first:
        return "messages"
    if "prompt" in first and "completion" in first:
        return "prompt_completion"
    return "template-needed"


def check_chat_row(row: dict[str, Any], index: int) -> list[dict[str, Any]]:
    """A chat row (`messages`, optionally OpenAI's row-level `tools`) as its turns. The row's
    tools ride on the first turn under `tools` (ours, like `weight`: core.training.encoding
    hands them to the chat template as its `tools` argument)."""
    if row.get("functions") is not None:
        raise DataFileError(f"row {index}: 'functions' is OpenAI's deprecated form; give the functions as 'tools' "
                            "([{\"type\": \"function\", \"function\": {...}}])")
    turns = check_messages(row.get("messages"), index)
    if row.get("tools") is not None:
        turns[0]["tools"] = _check_tools(row["tools"], index)
    return turns


def uses_tools(row: dict[str, Any]) -> bool:
    """Whether a chat row needs a chat template that renders tools: row-level `tools`, an
    assistant's `tool_calls` or a `tool` result."""
    msgs = row.get("messages")
    return row.get("tools") is not None or any(
        isinstance(m, dict) and (m.get("tool_calls") is not None or m.get("role") == "tool")
        for m in (msgs if isinstance(msgs, list) else [])
    )


def _check_tools(tools: Any, index: int) -> list[dict[str, Any]]:
    """OpenAI's `tools`: a non-empty list of {type: "function", function: {name, description?,
    parameters? (a JSON Schema object)}}."""
    if not isinstance(tools, list) or not tools:
        raise DataFileError(f"row {index}: 'tools' must be a non-empty list of {{type: 'function', function: {{name, ...}}}} objects")
    for k, t in enumerate(tools):
        where = f"tools[{k}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            raise DataFileError(f"row {index}: {where} must be an object with type 'function' and a 'function' object")
        f = t["function"]
        _check_name(f.get("name"), index, f"{where}.function.name")
        if "description" in f and not isinstance(f["description"], str):
            raise DataFileError(f"row {index}: {where}.function.description must be a string")
        if "parameters" in f and not isinstance(f["parameters"], dict):
            raise DataFileError(f"row {index}: {where}.function.parameters must be a JSON Schema object")
    return tools


def _check_name(name: Any, index: int, where: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise DataFileError(f"row {index}: {where} must be a non-empty string")


def _check_tool_calls(calls: Any, index: int, where: str) -> list[dict[str, Any]]:
    """An assistant's `tool_calls`: a non-empty list of {id, type: "function", function:
    {name, arguments}}, `arguments` a string holding a JSON object (as OpenAI sends them)."""
    if not isinstance(calls, list) or not calls:
        raise DataFileError(f"row {index}: {where} must be a non-empty list of {{id, type, function}} objects")
    out = []
    for k, c in enumerate(calls):
        at = f"{where}[{k}]"
        if not isinstance(c, dict) or c.get("type") != "function" or not isinstance(c.get("function"), dict):
            raise DataFileError(f"row {index}: {at} must be an object with type 'function' and a 'function' object")
        _check_name(c.get("id"), index, f"{at}.id")
        _check_name(c["function"].get("name"), index, f"{at}.function.name")
        args = c["function"].get("arguments")
        try:
            parsed = json.loads(args) if isinstance(args, str) else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise DataFileError(f"row {index}: {at}.function.arguments must be a string holding a JSON object")
        out.append({"id": c["id"], "type": "function", "function": {"name": c["function"]["name"], "arguments": args}})
    return out


def check_row(fmt: Format, row: dict[str, Any], index: int) -> None:
    """The per-row rules of a file whose shape is `fmt` (uploads and hub datasets alike)."""
    if fmt == "messages":
        check_chat_row(row, index)
    elif fmt == "preference":
        check_preference(row, index)


def check_messages(messages: Any, index: int) -> list[dict[str, Any]]:
    """A `messages` value as a list of {role, content}; ends with an assistant turn. OpenAI's
    per-message `weight` is kept (`_weights`), and so is tool use: an assistant's
    `tool_calls` (its `content` may then be null: "" here) and `tool` results answering an
    earlier call by `tool_call_id`."""
    out = _message_list(messages, index, "messages", tools=True)
    if out[-1]["role"] != "assistant":
        raise DataFileError(f"row {index}: the last message must be the assistant's (the completion to learn)")
    return _weights(messages, out, index)


def _message_list(messages: Any, index: int, where: str, tools: bool = False) -> list[dict[str, Any]]:
    """A list of {role, content} messages, each checked; `where` names it in errors. With
    `tools`, assistant `tool_calls` and `tool` results are allowed (not in preference rows:
    OpenAI's DPO format has none)."""
    if not isinstance(messages, list) or not messages:
        raise DataFileError(f"row {index}: '{where}' must be a non-empty list of {{role, content}} objects")
    roles = (*_ROLES, "tool") if tools else _ROLES
    call_ids: set[str] = set()
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        calls = tools and isinstance(m, dict) and m.get("role") == "assistant" and m.get("tool_calls") is not None
        if not isinstance(m, dict) or "role" not in m or ("content" not in m and not calls):
            raise DataFileError(f"row {index}: {where}[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in roles:
            raise DataFileError(f"row {index}: {where}[{i}] has role {m['role']!r}; expected one of {roles}")
        if m.get("function_call") is not None:
            raise DataFileError(f"row {index}: {where}[{i}].function_call is OpenAI's deprecated form; use 'tool_calls'")
        content = "" if calls and m.get("content") is None else m["content"]
        if not isinstance(content, str):
            raise DataFileError(f"row {index}: {where}[{i}].content must be a string")
        turn: dict[str, Any] = {"role": m["role"], "content": content}
        if calls:
            turn["tool_calls"] = _check_tool_calls(m["tool_calls"], index, f"{where}[{i}].tool_calls")
            call_ids.update(c["id"] for c in turn["tool_calls"])
        elif m.get("tool_calls") is not None:
            raise DataFileError(f"row {index}: {where}[{i}].tool_calls is only allowed on assistant messages of chat rows")
        if m["role"] == "tool":
            if m.get("tool_call_id") not in call_ids:
                raise DataFileError(f"row {index}: {where}[{i}].tool_call_id must name the id of an earlier assistant tool call")
            turn["tool_call_id"] = m["tool_call_id"]
        out.append(turn)
    return out


def check_preference(row: dict[str, Any], index: int) -> tuple[list[dict[str, str]], str, str]:
    """An OpenAI preference row as (prompt messages, preferred text, non-preferred text).

    `input.messages` is the conversation so far and ends with the user's turn; each output is
    a list of exactly one assistant message (OpenAI's DPO is single-turn), and the two differ:
    a pair with nothing to prefer teaches nothing."""
    inp = row.get("input")
    if not isinstance(inp, dict) or "messages" not in inp:
        raise DataFileError(f"row {index}: 'input' must be an object with 'messages' (the conversation before the answer)")
    prompt = _message_list(inp["messages"], index, "input.messages")
    if prompt[-1]["role"] != "user":
        raise DataFileError(f"row {index}: the last message of input.messages must be the user's (the outputs answer it)")
    answers = []
    for key in ("preferred_output", "non_preferred_output"):
        if key not in row:
            raise DataFileError(f"row {index}: '{key}' is missing (a preference row has input, preferred_output and non_preferred_output)")
        out = _message_list(row[key], index, key)
        if len(out) != 1 or out[0]["role"] != "assistant":
            raise DataFileError(f"row {index}: '{key}' must be a list of exactly one assistant message (one turn)")
        if not out[0]["content"].strip():
            raise DataFileError(f"row {index}: {key}[0].content is empty")
        answers.append(out[0]["content"])
    if answers[0] == answers[1]:
        raise DataFileError(f"row {index}: preferred_output and non_preferred_output are the same text")
    return prompt, answers[0], answers[1]


def _weights(messages: list[dict[str, Any]], turns: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    """OpenAI's per-message `weight` (0 or 1, assistant messages only) onto the checked turns:
    0 keeps the turn as context without training on it (core.training.encoding). At least
    one assistant turn must train."""
    for i, (m, turn) in enumerate(zip(messages, turns)):
        if "weight" not in m:
            continue
        if m["role"] != "assistant":
            raise DataFileError(f"row {index}: messages[{i}].weight is only allowed on assistant messages")
        if isinstance(m["weight"], bool) or m["weight"] not in (0, 1):
            raise DataFileError(f"row {index}: messages[{i}].weight must be 0 or 1, got {m['weight']!r}")
        turn["weight"] = int(m["weight"])
    if all(t.get("weight", 1) == 0 for t in turns if t["role"] == "assistant"):
        raise DataFileError(f"row {index}: every assistant message has weight 0, so the row has nothing to train on")
    return turns
