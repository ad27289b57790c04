"""Turn one data row into a conversation (system / user / assistant turns).

Pure python so the API can validate an upload against a template without torch. Rendering
is plain `{column}` substitution only: the spec refuses attribute/index access and format
specs (`core.spec.template_fields`), and substitution here never calls `str.format` on
client text, so a row value containing braces is inserted literally.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

from core.datafiles import DataFileError, check_chat_row, detect_format
from core.spec import TemplateSpec, template_fields

Message = dict[str, str]


class TemplateError(DataFileError):
    """A row that does not fit the template (missing column, non-text value)."""


def fill(fmt: str, row: dict[str, Any], index: int) -> str:
    """`fmt` with each `{column}` replaced by the row's value; `{{`/`}}` are literal braces."""
    template_fields(
        fmt
    )  # refuses anything but plain names, even if the spec was built without validation
    parts: list[str] = []
    for literal, field, _spec, _conv in string.Formatter().parse(fmt):
        parts.append(literal)
        if field is None:
            continue
        if field not in row:
            raise TemplateError(
                f"row {index}: missing column '{field}' used by the template"
            )
        value = row[field]
        if value is None:
            raise TemplateError(f"row {index}: column '{field}' is empty (null)")
        if isinstance(value, (dict, list)):
            raise TemplateError(
                f"row {index}: column '{field}' is a {type(value).__name__}, expected text"
            )
        parts.append(str(value))
    return "".join(parts)


def render_row(
    row: dict[str, Any], template: TemplateSpec | None, index: int
) -> list[Message]:
    """The row as chat turns, ending with the assistant turn that is trained on.

    Rows already in chat form (`messages`) or with `prompt`/`completion` columns are used as
    they are (a template system prompt is prepended when the row has none); other rows need
    `template.prompt` and `template.completion`.
    """
    template = template or TemplateSpec()
    kind = detect_format([row])
    if kind == "messages":
        turns = check_chat_row(row, index)
    elif kind == "prompt_completion" and template.prompt is None:
        turns = [
            {"role": "user", "content": _text(row, "prompt", index)},
            {"role": "assistant", "content": _text(row, "completion", index)},
        ]
    else:
        if template.prompt is None or template.completion is None:
            raise TemplateError(
                f"row {index}: rows have neither 'messages' nor 'prompt'/'completion' columns; "
                "set template.prompt and template.completion (e.g. '{document}' and '{summary}')"
            )
        turns = [
            {"role": "user", "content": fill(template.prompt, row, index)},
            {"role": "assistant", "content": fill(template.completion, row, index)},
        ]
    if template.system and turns[0]["role"] != "system":
        turns.insert(
            0, {"role": "system", "content": fill(template.system, row, index)}
        )
    return turns


def prompt_side_values(
    row: dict[str, Any], template: TemplateSpec | None
) -> list[tuple[str, Callable[[str], dict[str, Any]]]]:
    """The row's text values that feed only the prompt side, each with a function giving
    the row with that value replaced: what `truncation: prompt` may shorten.

    Template columns used by the completion are never listed (cutting them would cut the
    completion); for chat rows, the content of every turn but the assistant's.
    """
    template = template or TemplateSpec()
    kind = detect_format([row])
    if kind == "messages":
        msgs = row["messages"]
        return [
            (m["content"], lambda v, k=k: {**row, "messages": [*msgs[:k], {**msgs[k], "content": v}, *msgs[k + 1 :]]})
            for k, m in enumerate(msgs)
            if isinstance(m, dict) and m.get("role") != "assistant" and isinstance(m.get("content"), str)
        ]
    if kind == "prompt_completion" and template.prompt is None:
        value = row.get("prompt")
        return [(value, lambda v: {**row, "prompt": v})] if isinstance(value, str) else []
    completion = set(template_fields(template.completion or ""))
    columns = [c for part in (template.system, template.prompt) if part for c in template_fields(part)]
    return [
        (row[c], lambda v, c=c: {**row, c: v})
        for c in dict.fromkeys(columns)
        if c not in completion and isinstance(row.get(c), str)
    ]


def _text(row: dict[str, Any], column: str, index: int) -> str:
    value = row.get(column)
    if not isinstance(value, str):
        raise TemplateError(
            f"row {index}: column '{column}' must be text, got {type(value).__name__}"
        )
    return value
