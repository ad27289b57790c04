"""Built-in chat templates, for models whose tokenizer has none (base models such as
`beomi/Llama-3-Open-Ko-8B`) or when the spec names one to override it.

Each template emits the tokenizer's own special tokens as text markers; they are only
usable when those markers are single special tokens in the vocabulary (checked in
`tokenize.resolve_chat_template`), never as plain text pasted into the prompt.
"""

from __future__ import annotations

LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Llama-3 with tool use, for the tiny test model (core.training.tiny_model): written here
# after the format of Meta's Llama 3.1 chat template (JSON tool calling: the tools as JSON in
# the system turn, a call as {"name": ..., "parameters": {...}}, results under the `ipython`
# role). Without tools and tool calls it renders exactly as LLAMA3.
LLAMA3_TOOLS = (
    "{{ bos_token }}"
    "{% if tools %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] | trim + '\n\n' }}{% endif %}"
    "{{ 'You have access to the following functions. To call one, answer with JSON of the form "
    "{\"name\": function name, \"parameters\": an object of argument names and values}.\n\n' }}"
    "{% for tool in tools %}{{ tool | tojson + '\n\n' }}{% endfor %}"
    "{{ '<|eot_id|>' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<|start_header_id|>ipython<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% elif message.tool_calls is defined and message.tool_calls %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% for call in message.tool_calls %}"
    "{{ '{\"name\": ' + call['function']['name'] | tojson + ', \"parameters\": ' + call['function']['arguments'] | tojson + '}' }}"
    "{% if not loop.last %}{{ '\n' }}{% endif %}"
    "{% endfor %}"
    "{{ '<|eot_id|>' }}"
    "{% else %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

BUILTIN: dict[str, str] = {"llama3": LLAMA3, "chatml": CHATML}

# The special tokens each template needs as single vocabulary entries.
MARKERS: dict[str, tuple[str, ...]] = {
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "chatml": ("<|im_start|>", "<|im_end|>"),
}
