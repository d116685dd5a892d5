"""Chat templates for LangBridge processors, in the dialect of the LLM's tokenizer.

LLM chat templates render `content` as a string; a VLM needs `[{"type": "image"}, {"type": "text", ...}]`
items, with each image written as `<image>`. Every template here marks assistant replies with
`{% generation %}` so TRL can train on them alone (`assistant_only_loss`), and ends a reply with the
token that `end_of_turn_token` names, which `langbridge compose` makes the tokenizer's EOS.
"""

from dataclasses import dataclass

_RENDER_CONTENT = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item['type'] == 'image' -%}<image>\n"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

CHATML = _RENDER_CONTENT + (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ render(message['content']) + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- else -%}{{ render(message['content']) + '<|im_end|>\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

LLAMA3 = _RENDER_CONTENT + (
    "{{ bos_token or '' }}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ render(message['content']) + '<|eot_id|>' }}{% endgeneration %}"
    "{%- else -%}{{ render(message['content']) + '<|eot_id|>' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
)

# LLaVA-1.5 / Vicuna style, for LLMs without chat tokens: "USER: ... ASSISTANT: ...</s>".
PLAIN = _RENDER_CONTENT + (
    "{{ bos_token or '' }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ render(message['content']) + '\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'USER: ' + render(message['content']) + '\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT: ' }}{% generation %}{{ render(message['content']) + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


@dataclass(frozen=True)
class ChatFormat:
    name: str
    template: str
    end_of_turn_token: str | None  # None: the tokenizer's own EOS


def chat_format_for(tokenizer) -> ChatFormat:
    """The chat dialect this tokenizer's special tokens speak: ChatML (Qwen), Llama-3, or plain."""
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        return ChatFormat("chatml", CHATML, "<|im_end|>")
    if "<|start_header_id|>" in vocab and "<|eot_id|>" in vocab:
        return ChatFormat("llama3", LLAMA3, "<|eot_id|>")
    return ChatFormat("plain", PLAIN, None)
