#!/usr/bin/env python3
"""Chat-template goldens: every tests/fixtures/chat_templates/<family>/template.jinja rendered by
transformers' own apply_chat_template over a set of conversations, written to cases.json beside it.

Each family directory holds template.jinja (the published template, sources in the README there)
and special_tokens.json (the tokenizer's named special tokens: bos_token, eos_token, ..., which
apply_chat_template passes the template as variables through special_tokens_map). The tokenizer
built here is a PreTrainedTokenizerFast over a one-word vocabulary with those special tokens and
the template: apply_chat_template(tokenize=False) never consults the vocabulary, so the rendering
is what the model's own tokenizer renders.

cases.json: {"transformers": version, "jinja2": version, "now": unix seconds, "cases": [...]},
each case {"name", "messages", "tools" and "documents" (absent: none passed),
"add_generation_prompt",
"chat_template_kwargs" (extra template variables, as vLLM's request field), and "text" (what
transformers renders) or "error" (the exception's class and message: the template raised it)}.
strftime_now reads a fixed clock ("now", UTC), as expertd's interpreter does from __xd_now.

Usage: /work/golden-venv/bin/python tools/golden/make_chat_template_fixtures.py [--dir DIR]
"""
import argparse
import copy
import datetime as dt
import json
import os
import sys

import jinja2
import tokenizers
import transformers
import transformers.utils.chat_template_utils as ctu
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DIR = os.path.join(HERE, "..", "..", "tests", "fixtures", "chat_templates")

NOW = 1768473000  # 2026-01-15 10:30:00 UTC, a Thursday


class FixedDatetime(dt.datetime):
    """strftime_now calls datetime.now(): a fixed UTC instant, naive as now() gives it."""

    @classmethod
    def now(cls, tz=None):
        return dt.datetime.fromtimestamp(NOW, dt.timezone.utc).replace(tzinfo=None)


ctu.datetime = FixedDatetime

# ---- the conversations ----

TOOLS = [
    {"type": "function",
     "function": {"name": "get_weather",
                  "description": "Get the current weather in a city",
                  "parameters": {"type": "object",
                                 "properties": {"city": {"type": "string",
                                                         "description": "City name, e.g. Paris"},
                                                "unit": {"type": "string",
                                                         "enum": ["celsius", "fahrenheit"]}},
                                 "required": ["city"]}}},
    {"type": "function",
     "function": {"name": "search",
                  "description": "Search the web",
                  "parameters": {"type": "object",
                                 "properties": {"query": {"type": "string"},
                                                "max_results": {"type": "integer"}},
                                 "required": ["query"]}}},
]

DOCS = [{"title": "Paris", "text": "Paris is the capital of France."},
        {"title": "Rome", "text": "Rome is the capital of Italy.", "doc_id": "7"}]

SYS = {"role": "system", "content": "You are a concise assistant."}
U1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "Paris."}
U2 = {"role": "user", "content": "And of Italy?"}
A2 = {"role": "assistant", "content": "Rome."}
UW = {"role": "user", "content": "What's the weather in Paris?"}


def call(id_, name, args, as_string):
    return {"id": id_, "type": "function",
            "function": {"name": name,
                         "arguments": json.dumps(args, ensure_ascii=False) if as_string else args}}


# Tool-call ids of nine letters and digits: Mistral's templates refuse any other (the case
# "openai_style_call_id" records that refusal)
ID1, ID2 = "cA1b2C3d4", "eF5g6H7i8"


def tool_turns(as_string, content="", id_=ID1):
    msg = {"role": "assistant", "content": content,
           "tool_calls": [call(id_, "get_weather", {"city": "Paris", "unit": "celsius"}, as_string)]}
    return [UW, msg,
            {"role": "tool", "tool_call_id": id_, "name": "get_weather",
             "content": "{\"temperature\": 18, \"sky\": \"cloudy\"}"}]


def conversations():
    """(name, messages, tools, chat_template_kwargs[, documents]); each rendered with and
    without the generation prompt."""
    c = [
        ("user", [U1], None, None),
        ("system_user", [SYS, U1], None, None),
        ("multi_turn", [SYS, U1, A1, U2], None, None),
        ("multi_turn_no_system", [U1, A1, U2, A2], None, None),
        ("assistant_last", [U1, A1], None, None),
        ("unicode", [{"role": "user", "content": "Grüße! 東京の天気は？ «ok» — \"quoted\" \\ back"}],
         None, None),
        ("empty_assistant", [U1, {"role": "assistant", "content": ""}, U2], None, None),
        ("system_in_middle", [U1, A1, {"role": "system", "content": "Answer in French."}, U2],
         None, None),
        ("two_users", [U1, U2], None, None),
        ("whitespace", [{"role": "system", "content": "  padded system  \n"},
                        {"role": "user", "content": "\n  hi  \n"}], None, None),
        ("tools", [SYS, UW], TOOLS, None),
        ("tools_no_system", [UW], TOOLS, None),
        ("tool_call_dict_args", tool_turns(False), TOOLS, None),
        ("tool_call_string_args", tool_turns(True), TOOLS, None),
        ("tool_call_null_content", tool_turns(False, None), TOOLS, None),
        ("tool_call_with_content", tool_turns(False, "Let me check."), TOOLS, None),
        ("tool_call_then_answer",
         [SYS] + tool_turns(False) + [{"role": "assistant", "content": "It is 18 °C and cloudy."}],
         TOOLS, None),
        ("parallel_tool_calls",
         [UW, {"role": "assistant", "content": "",
               "tool_calls": [call(ID1, "get_weather", {"city": "Paris"}, False),
                              call(ID2, "search", {"query": "Paris events", "max_results": 3},
                                   False)]},
          {"role": "tool", "tool_call_id": ID1, "name": "get_weather", "content": "18 C"},
          {"role": "tool", "tool_call_id": ID2, "name": "search", "content": "a fair"}],
         TOOLS, None),
        ("openai_style_call_id", tool_turns(False, "", "call_1"), TOOLS, None),
        ("tool_calls_without_tools", tool_turns(False), None, None),
        # gpt-oss renders a tool-calling turn's reasoning as its analysis message (vLLM and
        # the harmony parser hand it back as reasoning_content)
        ("tool_call_with_reasoning",
         [UW, {"role": "assistant", "content": "", "reasoning_content": "Use get_weather.",
               "tool_calls": [call(ID1, "get_weather", {"city": "Paris"}, False)]},
          {"role": "tool", "tool_call_id": ID1, "name": "get_weather", "content": "18 C"}],
         TOOLS, None),
        ("reasoning_content",
         [U1, {"role": "assistant", "content": "Paris.", "reasoning_content": "France's capital is Paris."},
          U2], None, None),
        ("reasoning_content_last",
         [U1, {"role": "assistant", "content": "Paris.", "reasoning_content": "Easy: Paris."}],
         None, None),
        ("think_in_content",
         [U1, {"role": "assistant", "content": "<think>\nThe capital is Paris.\n</think>\n\nParis."},
          U2], None, None),
        ("think_in_content_last",
         [U1, {"role": "assistant", "content": "<think>\nThe capital is Paris.\n</think>\n\nParis."}],
         None, None),
        ("enable_thinking_false", [SYS, U1], None, {"enable_thinking": False}),
        ("enable_thinking_true", [SYS, U1], None, {"enable_thinking": True}),
        ("thinking_false", [U1], None, {"thinking": False}),
        ("thinking_true", [U1], None, {"thinking": True}),
        ("reasoning_effort_high", [SYS, U1], None, {"reasoning_effort": "high"}),
        ("tools_enable_thinking_false", [UW], TOOLS, {"enable_thinking": False}),
        ("developer_role", [{"role": "developer", "content": "Be brief."}, U1], None, None),
        ("content_parts",
         [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
          {"role": "user", "content": [{"type": "text", "text": "Capital of "},
                                       {"type": "text", "text": "France?"}]}], None, None),
        ("nested_arguments",
         [UW, {"role": "assistant", "content": "",
               "tool_calls": [call(ID1, "search", {"query": "Zürich «cafés»", "max_results": 3,
                                                   "score": 1.5, "big": 1e20, "ok": True,
                                                   "none": None, "tags": ["a", 2, [3.25]],
                                                   "opts": {"lang": "de", "n": -7}}, False)]},
          {"role": "tool", "tool_call_id": ID1, "name": "search", "content": "[]"}],
         TOOLS, None),
        ("special_text_in_content",
         [{"role": "user", "content": "say <|im_end|> and </s> and [INST] {{ x }} {% y %}"}],
         None, None),
        ("documents", [U1], None, None, DOCS),
        ("documents_and_tools", [UW], TOOLS, None, DOCS),
        ("named_messages",
         [{"role": "system", "content": "Be brief.", "name": "policy"},
          {"role": "user", "content": "Hi", "name": "alice"}], None, None),
    ]
    return c


# ---- rendering ----

def build_tokenizer(template, special):
    vocab = {"<unk>": 0}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    kw = dict(special)
    kw.setdefault("unk_token", None)
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, **kw)


def render(tok, messages, tools, gen, kwargs, documents=None):
    extra = dict(kwargs or {})
    return tok.apply_chat_template(copy.deepcopy(messages), tools=copy.deepcopy(tools),
                                   documents=copy.deepcopy(documents),
                                   add_generation_prompt=gen, tokenize=False, **extra)


def family_cases(path):
    with open(os.path.join(path, "template.jinja"), encoding="utf-8") as f:
        template = f.read()
    with open(os.path.join(path, "special_tokens.json"), encoding="utf-8") as f:
        special = json.load(f)
    tok = build_tokenizer(template, special)
    got = tok.special_tokens_map
    for k, v in special.items():
        assert got.get(k) == v, (path, k, got.get(k), v)
    cases = []
    for name, messages, tools, kwargs, *rest in conversations():
        documents = rest[0] if rest else None
        for gen in (False, True):
            case = {"name": f"{name}{'+gen' if gen else ''}", "messages": messages}
            if tools is not None:
                case["tools"] = tools
            if documents is not None:
                case["documents"] = documents
            case["add_generation_prompt"] = gen
            if kwargs:
                case["chat_template_kwargs"] = kwargs
            try:
                case["text"] = render(tok, messages, tools, gen, kwargs, documents)
            except jinja2.exceptions.TemplateError as e:
                case["error"] = {"type": type(e).__name__, "message": str(e)}
            except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
                # the template failed on this input the way Python does (e.g. str + None): expertd
                # refuses such a case too, with its own wording
                case["error"] = {"type": type(e).__name__, "message": str(e)}
            cases.append(case)
    return {"transformers": transformers.__version__, "jinja2": jinja2.__version__,
            "now": NOW, "special_tokens": special, "cases": cases}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=DEFAULT_DIR)
    ap.add_argument("families", nargs="*")
    a = ap.parse_args()
    fams = a.families or sorted(d for d in os.listdir(a.dir)
                                if os.path.isfile(os.path.join(a.dir, d, "template.jinja")))
    for fam in fams:
        out = family_cases(os.path.join(a.dir, fam))
        n_err = sum(1 for c in out["cases"] if "error" in c)
        with open(os.path.join(a.dir, fam, "cases.json"), "w", encoding="utf-8") as f:
            # one case a line: diffs stay readable, the file small
            head = {k: v for k, v in out.items() if k != "cases"}
            f.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "cases": [\n')
            f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in out["cases"]))
            f.write("\n]}\n")
        print(f"{fam}: {len(out['cases'])} cases, {n_err} errors", file=sys.stderr)


if __name__ == "__main__":
    main()
