"""Conversation -> token ids + labels, the one place where masking is decided (DESIGN §6.1-3).

- The text is rendered by the tokenizer's chat template and tokenized with
  `add_special_tokens=False`: the template already writes BOS, so it appears exactly once.
- Prompt pieces and assistant pieces are tokenized separately and concatenated, exactly
  as at inference time (prompt tokens, then generated tokens), and only assistant pieces
  get labels (completion-only loss).
- An assistant turn with OpenAI's `weight: 0` stays in the text as context but gets no
  labels (core.datafiles.check_messages checks the values).
- Each assistant piece is labelled up to and including the turn terminator (e.g.
  `<|eot_id|>`), so the model learns to stop. Labels come from which piece a token belongs
  to, never from comparing ids with the pad token (pad may equal eos).
- Text from rows is text (DESIGN §6.10): a document that contains `<|eot_id|>` must not end
  the turn early. Row text is rendered between two Unicode noncharacters, so after rendering
  we know which characters the template wrote and which came from the row; only the
  template's special-token strings become special tokens, the rest is tokenized with
  `split_special_tokens=True` (the string is spelled out as ordinary tokens).
- Tool use (OpenAI's row-level `tools`, assistant `tool_calls`, `tool` results) goes to the
  chat template as transformers expects it (`apply_chat_template(..., tools=...)`, call
  arguments as a mapping). An assistant turn with tool calls is a completion like any other;
  tool results are context. Their free text is row text too: function names, descriptions,
  call ids and argument values are marked; the parts a template may inspect (`type`
  fields, the JSON Schema of `parameters`, argument names) are not, so a special-token
  string there refuses the row (`RowTextError`) rather than becoming a control token.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from core.training.chat_templates import BUILTIN, MARKERS
from core.training.errors import TrainingInputError

IGNORE_INDEX = -100
_SENTINEL = "\ufffaTUNEFORGE\ufffa"
# Noncharacters (never in real text) around each turn's content while rendering: they mark
# where row text sits in the rendered string. Removed from row text first.
_OPEN, _CLOSE = "\ufdd0", "\ufdd1"
_ROW_TEXT = re.compile(f"{_OPEN}(.*?){_CLOSE}", re.S)


class RowTextError(TrainingInputError):
    """Row text that cannot be kept out of the template's control tokens; the data stage
    names the row."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    full_length: int = 0  # tokens before truncation to max_length
    full_labels: int = 0  # labelled tokens before truncation

    @property
    def n_labels(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def resolve_chat_template(tokenizer, name: str | None) -> None:
    """Install the named built-in template, or check the tokenizer has one of its own."""
    if name is not None:
        if name not in BUILTIN:
            raise TrainingInputError(
                f"template.chat_template: unknown template {name!r}; built-ins: {sorted(BUILTIN)}"
            )
        vocab = tokenizer.get_vocab()
        missing = [m for m in MARKERS[name] if m not in vocab]
        if missing:
            raise TrainingInputError(
                f"template.chat_template: {name!r} needs the special tokens {missing}, which this tokenizer lacks"
            )
        tokenizer.chat_template = BUILTIN[name]
    elif not getattr(tokenizer, "chat_template", None):
        raise TrainingInputError(
            f"template.chat_template: the model's tokenizer has no chat template; name one of {sorted(BUILTIN)}"
        )
    if tokenizer.pad_token_id is None:
        # Padding positions are masked by attention_mask and labels=-100, so any id works;
        # eos is the conventional choice and safe here because labels never look at pad ids.
        tokenizer.pad_token = tokenizer.eos_token


def render(tokenizer, turns: list[dict], *, add_generation_prompt: bool = False, tools: list | None = None) -> str:
    return tokenizer.apply_chat_template(
        turns, tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt
    )


_PROBE_TOOL, _PROBE_CALL = "tuneforge_probe_tool", "tuneforge_probe_call"


def renders_tools(tokenizer) -> bool:
    """Whether the chat template writes the tools it is given and an assistant's tool calls
    (a template that ignores them would train on rows stripped of what they are about)."""
    tools = [{"type": "function", "function": {"name": _PROBE_TOOL, "description": "probe", "parameters": {"type": "object", "properties": {}}}}]
    call = {"id": "call_probe", "type": "function", "function": {"name": _PROBE_CALL, "arguments": {}}}
    turns = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    try:
        text = render(tokenizer, turns, tools=tools)
    except Exception:  # noqa: BLE001 - a template that cannot cope with tools (jinja errors of any kind)
        return False
    return _PROBE_TOOL in text and _PROBE_CALL in text


def turn_terminator(tokenizer) -> tuple[str, int]:
    """The special token that ends an assistant turn in this chat template (`<|eot_id|>`,
    `<|im_end|>`, or eos when the template writes eos)."""
    text = render(
        tokenizer,
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}],
    )
    suffix = text[text.index(_SENTINEL) + len(_SENTINEL) :]
    special = set(tokenizer.all_special_ids)
    for tid in tokenizer(suffix, add_special_tokens=False)["input_ids"]:
        if tid in special:
            return tokenizer.convert_ids_to_tokens(tid), tid
    raise TrainingInputError(
        "template.chat_template: the chat template ends assistant turns without a special token, "
        "so a trained model could not learn to stop; use a template such as 'llama3' or 'chatml'"
    )


def text_ids(tokenizer, text: str) -> list[int]:
    """Ids of row text: special-token strings in it are spelled out, never control tokens."""
    if not text:
        return []
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


_TRIMS: dict[str, bool] = {}


def _template_trims(tokenizer) -> bool:
    """Whether the chat template strips whitespace around a turn's content (Llama-3's does);
    with markers around the content the template cannot see it, so we strip it ourselves."""
    key = tokenizer.chat_template
    if key not in _TRIMS:
        probe = "\ufdd2"
        _TRIMS[key] = f" {probe} " not in render(tokenizer, [{"role": "user", "content": f" {probe} "}])
    return _TRIMS[key]


def _mark(text: str) -> str:
    """Row text between the markers (empty text stays empty: nothing to keep apart)."""
    text = text.replace(_OPEN, "").replace(_CLOSE, "")
    return _OPEN + text + _CLOSE if text else text


def _mark_values(value: Any) -> Any:
    """Every string value inside a JSON value marked; keys are left as they are."""
    if isinstance(value, str):
        return _mark(value)
    if isinstance(value, dict):
        return {k: _mark_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_values(v) for v in value]
    return value


def _refuse_special(tokenizer, where: str, value: Any) -> None:
    """Unmarked row text (what a template may inspect) must hold no special-token string."""
    found = _special_pattern(tokenizer).search(json.dumps(value, ensure_ascii=False))
    if found:
        raise RowTextError(f"{where} contains {found.group(0)!r}, a control token of this model's chat template")


def _marked_tools(tokenizer, tools: list[dict]) -> list[dict]:
    out = []
    for k, t in enumerate(tools):
        f = t["function"]
        _refuse_special(tokenizer, f"tools[{k}].function.parameters", f.get("parameters", {}))
        marked = {**f, "name": _mark(f["name"])}
        if "description" in f:
            marked["description"] = _mark(f["description"])
        out.append({**t, "function": marked})
    return out


def _marked_call(tokenizer, call: dict) -> dict:
    args = json.loads(call["function"]["arguments"])  # checked at upload to hold a JSON object
    _refuse_special(tokenizer, "tool call argument names", _keys(args))
    function = {"name": _mark(call["function"]["name"]), "arguments": _mark_values(args)}
    return {"id": _mark(call["id"]), "type": call["type"], "function": function}


def _keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in (k, *_keys(v))]
    if isinstance(value, list):
        return [k for v in value for k in _keys(v)]
    return []


def conversation_tools(turns: list[dict]) -> list[dict] | None:
    """The row's `tools` (core.datafiles.check_chat_row puts them on a turn)."""
    return next((t["tools"] for t in turns if t.get("tools")), None)


def _marked(tokenizer, turns: list[dict]) -> tuple[list[dict], list[dict] | None]:
    """The turns and the row's tools as the template gets them, row text marked."""
    trims = _template_trims(tokenizer)
    out = []
    for t in turns:
        turn = {k: v for k, v in t.items() if k not in ("weight", "tools")}  # ours, not the template's
        text = t["content"].replace(_OPEN, "").replace(_CLOSE, "")
        turn["content"] = _mark(text.strip() if trims else text)
        if "tool_calls" in t:
            turn["tool_calls"] = [_marked_call(tokenizer, c) for c in t["tool_calls"]]
        if "tool_call_id" in t:
            turn["tool_call_id"] = _mark(t["tool_call_id"])
        out.append(turn)
    tools = conversation_tools(turns)
    return out, (_marked_tools(tokenizer, tools) if tools else None)


def _special_pattern(tokenizer) -> re.Pattern:
    names = {t.content for t in tokenizer.added_tokens_decoder.values()} | set(tokenizer.all_special_tokens)
    names = sorted((n for n in names if n), key=len, reverse=True)
    return re.compile("(" + "|".join(map(re.escape, names)) + ")")


def piece_ids(tokenizer, marked: str) -> list[int]:
    """Ids of a rendered piece whose row text is marked: special tokens only where the
    template wrote them. Template text and row text between two template special tokens are
    tokenized together, so the tokens at their seam are those of ordinary tokenization."""
    special = _special_pattern(tokenizer)
    ids: list[int] = []
    pending: list[str] = []
    for i, part in enumerate(_ROW_TEXT.split(marked)):
        if i % 2:  # row text
            pending.append(part)
            continue
        for j, chunk in enumerate(special.split(part)):
            if j % 2:  # a special token the template wrote
                ids += text_ids(tokenizer, "".join(pending))
                pending = []
                ids.append(tokenizer.convert_tokens_to_ids(chunk))
            else:
                pending.append(chunk)
    return ids + text_ids(tokenizer, "".join(pending))


def segments(tokenizer, turns: list[dict], terminator: str) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, trainable) pieces, in order; row text in
    the pieces is marked (see `piece_ids`). An assistant turn of weight 0 is not trainable."""
    weights = [t.get("weight", 1) for t in turns]
    turns, tools = _marked(tokenizer, turns)
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        before = render(tokenizer, turns[:i], add_generation_prompt=True, tools=tools)
        after = render(tokenizer, turns[: i + 1], tools=tools)
        if not before.startswith(done) or not after.startswith(before):
            raise TrainingInputError(
                "template.chat_template: rendering is not prefix-stable (a later turn changes earlier text), "
                "so prompt and completion cannot be separated"
            )
        answer = after[len(before) :]
        cut = answer.rfind(terminator)
        if cut < 0:
            raise TrainingInputError(
                f"template.chat_template: assistant turn {i} is not ended by {terminator}"
            )
        cut += len(terminator)
        pieces += [
            (before[len(done) :], False),
            (answer[:cut], weights[i] != 0),
            (answer[cut:], False),
        ]
        done = after
    rest = render(tokenizer, turns, tools=tools)[len(done) :]
    pieces.append((rest, False))
    return [(t, trainable) for t, trainable in pieces if t]


def encode(
    tokenizer,
    turns: list[dict],
    terminator: str,
    max_length: int,
    completion_only: bool = True,
) -> Encoded:
    """Token ids and labels for one conversation, right-truncated to max_length.

    completion_only=False (hyperparameters.completion_only_loss) trains on every token,
    prompt included; the pieces are still tokenized the same way."""
    input_ids: list[int] = []
    labels: list[int] = []
    for text, trainable in segments(tokenizer, turns, terminator):
        ids = piece_ids(tokenizer, text)
        input_ids += ids
        labels += (
            ids if (trainable or not completion_only) else [IGNORE_INDEX] * len(ids)
        )
    truncated = len(input_ids) > max_length
    full_labels = sum(1 for x in labels if x != IGNORE_INDEX)
    return Encoded(input_ids[:max_length], labels[:max_length], truncated, len(input_ids), full_labels)


def ends_with_terminator(enc: Encoded, terminator_id: int) -> bool:
    """Whether the last labelled token is the turn terminator (DESIGN §6.3). A row cut
    inside its completion fails this and must not train: it would teach not to stop."""
    last = next((t for t in reversed(enc.labels) if t != IGNORE_INDEX), None)
    return last == terminator_id


def keeps_every_trained_turn(enc: Encoded, terminator_id: int) -> bool:
    """Whether truncation left every labelled token (so each trained turn still ends with
    its terminator). Ending with a terminator alone is not enough in a multi-turn row: a
    cut can remove a whole later assistant turn (the answer after a long tool result)."""
    return ends_with_terminator(enc, terminator_id) and enc.n_labels == enc.full_labels


def generation_prompt_ids(tokenizer, turns: list[dict]) -> list[int]:
    """The prompt a model sees at inference: every turn before the last assistant turn,
    tokenized exactly as the same turns are in training (`encode`)."""
    marked, tools = _marked(tokenizer, turns)
    return piece_ids(tokenizer, render(tokenizer, marked[:-1], add_generation_prompt=True, tools=tools))


def reference_text(tokenizer, turns: list[dict]) -> str:
    """What the model should generate for the last (assistant) turn, as evaluation compares
    it: the turn's content, or, for a turn of tool calls, the calls as the chat template
    writes them (what was trained), without the terminator."""
    last = turns[-1]
    if not last.get("tool_calls"):
        return last["content"]
    marked, tools = _marked(tokenizer, turns)
    before = render(tokenizer, marked[:-1], add_generation_prompt=True, tools=tools)
    answer = render(tokenizer, marked, tools=tools)[len(before):]
    terminator, _id = turn_terminator(tokenizer)
    cut = answer.rfind(terminator)
    return (answer[:cut] if cut >= 0 else answer).replace(_OPEN, "").replace(_CLOSE, "")
