"""Chat templates for LangBridge processors, in the dialect of the LLM's tokenizer.

LLM chat templates render `content` as a string; a VLM needs `[{"type": "image"}, {"type": "text", ...}]`
items, with each image written as `<image>`. Every template here marks assistant replies with
`{% generation %}` so TRL can train on them alone (`assistant_only_loss`), and ends a reply with the
token that `end_of_turn_token` names, which `langbridge compose` makes the tokenizer's EOS.
"""

import json
from dataclasses import dataclass, replace

_RENDER_CONTENT = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

# `{#DEFAULT_SYSTEM#}` marks where `with_default_system` puts a system turn for conversations without one.
CHATML = _RENDER_CONTENT + (
    "{#DEFAULT_SYSTEM#}"
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
    "{#DEFAULT_SYSTEM#}"
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
    "{#DEFAULT_SYSTEM#}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ render(message['content']) + '\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'USER: ' + render(message['content']) + '\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT:' }}{% generation %}{{ ' ' + render(message['content']) + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


SYSTEM_TURNS = {
    "chatml": "<|im_start|>system\n{}<|im_end|>\n",
    "llama3": "<|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|>",
    "plain": "{}\n",
}


@dataclass(frozen=True)
class ChatFormat:
    name: str
    template: str
    end_of_turn_token: str | None  # None: the tokenizer's own EOS

    def with_default_system(self, system: str) -> "ChatFormat":
        """The same format, opening with `system` when a conversation brings no system message of its own."""
        turn = json.dumps(SYSTEM_TURNS[self.name].format(system))
        block = "{%- if not messages or messages[0]['role'] != 'system' -%}{{ " + turn + " }}{%- endif -%}"
        return replace(self, template=self.template.replace("{#DEFAULT_SYSTEM#}", block))


def chat_format_for(tokenizer) -> ChatFormat:
    """The chat dialect this tokenizer's special tokens speak: ChatML (Qwen), Llama-3, or plain."""
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        return ChatFormat("chatml", CHATML, "<|im_end|>")
    if "<|start_header_id|>" in vocab and "<|eot_id|>" in vocab:
        return ChatFormat("llama3", LLAMA3, "<|eot_id|>")
    return ChatFormat("plain", PLAIN, None)
