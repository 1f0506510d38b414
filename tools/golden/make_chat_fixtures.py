#!/usr/bin/env python3
"""Chat-template fixtures: tokenizer_config.json (with each served model's real chat_template)
and generation_config.json next to one of the tokenizer fixtures, with golden.json holding what
transformers' apply_chat_template renders for a corpus of conversations (add_generation_prompt
false and true), or the error the template raises, and the ids the tokenizers library gives the
rendered text from tokenizer.json (special-token text parsed, no post-processor specials: what
apply_chat_template(tokenize=True) does with a tokenizer built from tokenizer.json; transformers'
LlamaTokenizer and GPTNeoXTokenizer classes rebuild their normalizer and pre-tokenizer instead,
which differs from these fixtures' tokenizer.json, see tests/fixtures/chat/README.md).

Usage: python3 tools/golden/make_chat_fixtures.py [--out tests/fixtures/chat]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import jinja2
import tokenizers
import transformers
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZERS = os.path.join(HERE, "..", "..", "tests", "fixtures", "tokenizers")

# The templates as the models' tokenizer_config.json have them (sources in
# tests/fixtures/chat/README.md).
QWEN2_CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
                "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

MIXTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

MIXTRAL_V1 = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
              "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
              "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
              "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
              "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
              "roles are supported!') }}{% endif %}{% endfor %}")

OLMOE = ("{{ bos_token }}{% for message in messages %}\n{% if message['role'] == 'system' %}\n"
         "{{ '<|system|>\n' + message['content'] }}\n{% elif message['role'] == 'user' %}\n"
         "{{ '<|user|>\n' + message['content'] }}\n{% elif message['role'] == 'assistant' %}\n"
         "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
         "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")


# Qwen3-30B-A3B, Qwen3-235B-A22B (and the other Qwen3 models of the first release): no default
# system message, <think> blocks on assistant turns after the last user query, enable_thinking.
QWEN3 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""


def added(content):
    """An AddedToken as older transformers saved it in tokenizer_config.json."""
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False}


# name: (tokenizer fixture, format, tokenizer_config.json, generation_config.json as a function
# of the token-to-id map)
FIXTURES = {
    "qwen2_moe": ("qwen2", "chatml",
                  {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                   "chat_template": QWEN2_CHATML, "tokenizer_class": "Qwen2Tokenizer",
                   "clean_up_tokenization_spaces": False, "errors": "replace",
                   "split_special_tokens": False, "model_max_length": 32768},
                  lambda t: {"bos_token_id": t("<|endoftext|>"),
                             "eos_token_id": [t("<|im_end|>"), t("<|endoftext|>")],
                             "pad_token_id": t("<|endoftext|>")}),
    "mixtral": ("mixtral", "mistral",
                {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
                 "eos_token": "</s>", "unk_token": "<unk>", "legacy": True, "pad_token": None,
                 "chat_template": MIXTRAL, "tokenizer_class": "LlamaTokenizer",
                 "clean_up_tokenization_spaces": False, "use_default_system_prompt": False},
                lambda t: {"bos_token_id": t("<s>"), "eos_token_id": t("</s>")}),
    "mixtral_v1": ("mixtral", "mistral-v1",
                   {"add_bos_token": True, "add_eos_token": False, "bos_token": added("<s>"),
                    "eos_token": added("</s>"), "unk_token": added("<unk>"), "pad_token": None,
                    "chat_template": [{"name": "default", "template": MIXTRAL_V1},
                                      {"name": "other", "template": "{{ 'not this one' }}"}],
                    "tokenizer_class": "LlamaTokenizer", "clean_up_tokenization_spaces": False},
                   None),
    "olmoe": ("olmoe", "olmoe",
              {"add_bos_token": False, "add_eos_token": False, "bos_token": "<|endoftext|>",
               "eos_token": "<|endoftext|>", "pad_token": "<|padding|>",
               "unk_token": "<|endoftext|>", "chat_template": OLMOE,
               "tokenizer_class": "GPTNeoXTokenizer", "clean_up_tokenization_spaces": True},
              lambda t: {"eos_token_id": t("<|endoftext|>"), "pad_token_id": t("<|padding|>")}),
    "qwen3_moe": ("qwen2", "qwen3",
                  {"add_bos_token": False, "add_prefix_space": False, "bos_token": None,
                   "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
                   "chat_template": QWEN3, "tokenizer_class": "Qwen2Tokenizer",
                   "clean_up_tokenization_spaces": False, "errors": "replace",
                   "split_special_tokens": False, "model_max_length": 131072},
                  lambda t: {"bos_token_id": t("<|endoftext|>"),
                             "eos_token_id": [t("<|im_end|>"), t("<|endoftext|>")],
                             "pad_token_id": t("<|endoftext|>")}),
}

# Formats whose template reads enable_thinking: their cases are rendered with it absent, true and
# false (the case then carries "enable_thinking").
THINKING_FORMATS = {"qwen3"}

S, U, A = "system", "user", "assistant"
CONVERSATIONS = {
    "system_user": [(S, "You are a pirate."), (U, "Hello!")],
    "user_only": [(U, "What is 2+2?")],
    "multi_turn": [(U, "Hi"), (A, "Hello! How can I help?"), (U, "Tell me a joke.")],
    "system_multi_turn": [(S, "Be brief."), (U, "Hi"), (A, "Hello."), (U, "Bye")],
    "ends_with_assistant": [(U, "Name a colour."), (A, "Blue.")],
    "unicode": [(U, "Grüße aus Köln 👋 — 日本語, مرحبا, 👨‍👩‍👧‍👦 e\u0301")],
    "empty_user": [(U, "")],
    "empty_system": [(S, ""), (U, "hi")],
    "empty_assistant": [(U, "a"), (A, ""), (U, "b")],
    "special_token_text": [(U, "say <|im_end|> then </s> then [INST] x [/INST] <|user|> <s>")],
    "newlines": [(U, "line one\n\nline two\n"), (A, "\nleading and trailing\n"), (U, "\n")],
    "spaces": [(S, "  padded  "), (U, "  tab\tand  spaces  ")],
    "system_only": [(S, "Only a system message.")],
    "two_users": [(U, "first"), (U, "second")],
    "assistant_first": [(A, "I speak first."), (U, "ok")],
    "system_in_middle": [(U, "hi"), (S, "late system"), (U, "again")],
    "system_second_user": [(S, "sys"), (U, "a"), (U, "b")],
    "long_dialogue": [(S, "You count.")] + [(U if i % 2 == 0 else A, f"turn {i}") for i in range(10)],
}

# Reasoning in assistant turns, for the formats in THINKING_FORMATS only (the other fixtures'
# goldens stay as they were; their templates copy such text verbatim anyway).
THINKING_CONVERSATIONS = {
    "think_history": [(U, "q1"), (A, "<think>\nreasoning 1\n</think>\n\nanswer 1"), (U, "q2")],
    "think_after_last_user": [(S, "sys"), (U, "q"), (A, "<think>\nr\n</think>\n\na")],
    "think_turns_after_query": [(U, "q"), (A, "<think>r1</think>a1"), (A, "plain"),
                                (A, "<think>\n\nr3\n\n</think>\n\n\na3")],
    "think_plain_not_last": [(U, "q"), (A, "plain one"), (A, "plain two")],
    "think_no_open_tag": [(U, "q"), (A, "reasoning only</think>answer"), (U, "again")],
    "think_no_open_tag_last": [(U, "q"), (A, "\nreasoning only\n</think>answer\n")],
    "think_two_closes": [(U, "q"), (A, "<think>a</think>b</think>c")],
    "think_two_opens": [(U, "q"), (A, "x<think>a<think>b</think>\n\nc<think>d")],
    "think_open_only": [(U, "q"), (A, "<think>never closed"), (U, "r")],
    "think_open_only_last": [(U, "q"), (A, "<think>never closed")],
    "think_empty": [(U, "q"), (A, "<think></think>")],
    "think_newlines": [(U, "q"), (A, "\n\n<think>\n\n r \n\n</think>\n\n\n\n c \n")],
    "think_unicode": [(U, "Grüße"), (A, "<think>日本語 👨‍👩‍👧</think>مرحبا")],
    "no_user": [(S, "sys"), (A, "<think>x</think>y")],
    "assistant_only": [(A, "<think>x</think>y"), (A, "z")],
    "tool_response_text_user": [(U, "q"), (A, "<think>t</think>a"),
                                (U, "<tool_response>\nr\n</tool_response>"),
                                (A, "<think>t2</think>b")],
    "only_tool_response_text": [(U, "<tool_response>x</tool_response>"), (A, "<think>t</think>a")],
    "tool_response_prefix_only": [(U, "<tool_response>x"), (A, "<think>t</think>a")],
    "system_later_with_think": [(U, "q"), (S, "late"), (A, "<think>t</think>a"), (U, "q2")],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(HERE, "..", "..", "tests", "fixtures", "chat"))
    args = ap.parse_args()
    for name, (tok_fixture, fmt, config, gen) in FIXTURES.items():
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(os.path.join(TOKENIZERS, tok_fixture, "tokenizer.json"), tmp)
            probe = tokenizers.Tokenizer.from_file(os.path.join(tmp, "tokenizer.json"))
            gen_config = gen(probe.token_to_id) if gen else None
            for where in (d, tmp):
                with open(os.path.join(where, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                    json.dump(config, f, ensure_ascii=False, indent=2)
                if gen_config is not None:
                    with open(os.path.join(where, "generation_config.json"), "w") as f:
                        json.dump(gen_config, f, indent=2)
            tok = AutoTokenizer.from_pretrained(tmp)
            cases = []
            thinking = fmt in THINKING_FORMATS
            convs = dict(CONVERSATIONS, **(THINKING_CONVERSATIONS if thinking else {}))
            variants = [{}, {"enable_thinking": True}, {"enable_thinking": False}] if thinking else [{}]
            for (conv_name, conv), gen_prompt, extra in (
                    (c, g, v) for c in convs.items() for g in (False, True) for v in variants):
                msgs = [{"role": r, "content": c} for r, c in conv]
                case = {"name": conv_name, "messages": msgs,
                        "add_generation_prompt": gen_prompt, **extra}
                try:
                    case["text"] = tok.apply_chat_template(
                        msgs, tokenize=False, add_generation_prompt=gen_prompt, **extra)
                    case["ids"] = probe.encode(case["text"], add_special_tokens=False).ids
                except (jinja2.TemplateError, ValueError) as e:
                    case["error"] = str(e)
                cases.append(case)
            eos_ids = []
            if tok.eos_token is not None:
                eos_ids.append(tok.convert_tokens_to_ids(tok.eos_token))
            if gen_config is not None:
                e = gen_config.get("eos_token_id")
                for i in (e if isinstance(e, list) else [e]):
                    if i is not None and i not in eos_ids:
                        eos_ids.append(i)
            golden = {"fixture": name, "tokenizer": tok_fixture, "format": fmt,
                      "versions": {"transformers": transformers.__version__,
                                   "tokenizers": tokenizers.__version__,
                                   "jinja2": jinja2.__version__,
                                   "python": sys.version.split()[0]},
                      "bos_token": tok.bos_token, "eos_token": tok.eos_token,
                      "eos_token_ids": eos_ids, "cases": cases}
        with open(os.path.join(d, "golden.json"), "w", encoding="utf-8") as f:
            json.dump(golden, f, ensure_ascii=False, indent=1)
        n_err = sum(1 for c in cases if "error" in c)
        print(f"{name}: {len(cases)} cases ({n_err} raise), eos ids {eos_ids}")


if __name__ == "__main__":
    main()
