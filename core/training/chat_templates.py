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
