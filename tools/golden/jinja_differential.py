#!/usr/bin/env python3
"""Differential check of expertd's Jinja interpreter against jinja2: random templates (built from
the features chat templates use: whitespace control, loops, set/namespace, macros, filters,
tests, methods, operators) rendered by transformers' chat-template environment and by
build/tests/jinja-render; prints every case where the two disagree (one fails and the other does
not, or the texts differ). Renderings jinja2 prints as Python objects we do not model (generators,
dict views, ranges, big integers) are skipped.

Usage: /work/golden-venv/bin/python tools/golden/jinja_differential.py [N [SEED]]  (JINJA_RENDER=path
       picks another build of jinja-render, e.g. one with sanitizers)
       /work/golden-venv/bin/python tools/golden/jinja_differential.py --templates DIR [N [SEED]]
The second form renders each DIR/*/template.jinja (real chat templates) over N random
conversations (system/user/assistant/tool turns, content strings and part lists, reasoning,
tool calls with object or string arguments, tools, chat_template_kwargs) instead.
"""
import copy
import datetime
import json
import os
import random
import subprocess
import sys

from transformers.utils.chat_template_utils import _compile_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))
RENDER = os.environ.get("JINJA_RENDER") or os.path.join(HERE, "..", "..", "build", "tests", "jinja-render")

CTX = {"messages": [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi <b> & 'you'"},
                    {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello!",
                     "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]},
                    {"role": "user", "content": [{"type": "text", "text": "part"}]}],
       "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
       "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>",
       "n": 3, "f": 2.5, "s": " a B c ", "u": "héllo ✓", "l": [3, 1, 2], "e": [],
       "d": {"b": 2, "a": 1}, "z": None, "t": True, "no": False}

NAMES = ["n", "f", "s", "u", "l", "e", "d", "z", "t", "no", "messages", "tools", "bos_token",
         "missing", "add_generation_prompt"]
STRS = ["''", "'a'", "'ab c'", "'\\n'", "' x '", "'é✓'", "\"q'\"", "'<t>'", "'a,b'", "'A'",
        "'{}'", "'%s'", "'</think>'"]
FILTERS = ["trim", "length", "upper", "lower", "title", "capitalize", "first", "last", "list",
           "string", "int", "float", "abs", "tojson", "items", "reverse", "sort", "unique",
           "join", "join(', ')", "default('D')", "default('D', true)", "replace('a', 'X')",
           "indent", "indent(2, true)", "select", "reject", "map('string')", "map('upper')",
           "selectattr('role')", "map(attribute='role')", "min", "max", "sum", "count",
           "wordcount", "escape", "safe", "round", "round(1)", "tojson(indent=2)",
           "tojson(sort_keys=true)", "dictsort", "batch(2)", "center(7)", "trim('a')", "e",
           "format(1)", "int(7)", "float(1.5)", "first|string", "list|length"]
TESTS = ["defined", "undefined", "none", "string", "number", "integer", "float", "mapping",
         "iterable", "sequence", "boolean", "true", "false", "odd", "even", "divisibleby(2)",
         "eq(1)", "in([1, 'a'])", "callable", "lower", "upper", "gt 1", "ne 'a'"]
METHODS = ["strip()", "lstrip()", "rstrip()", "split()", "split(',')", "upper()", "lower()",
           "title()", "startswith('a')", "endswith('c')", "replace('a', 'b')", "find('a')",
           "count('a')", "isdigit()", "splitlines()", "items()", "keys()", "values()",
           "get('a')", "get('x', 0)", "format(1, 2)", "join(['x', 'y'])", "capitalize()",
           "rsplit(',', 1)", "index(1)", "copy()"]
BINOPS = ["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", ">", "<=", ">=", "and", "or",
          "in", "not in", "**"]


class Gen:
    def __init__(self, rng):
        self.r = rng
        self.scope = list(NAMES)

    def atom(self):
        r = self.r
        k = r.randrange(10)
        if k < 3:
            return r.choice(self.scope)
        if k == 3:
            return str(r.choice([0, 1, 2, -1, 7, 10]))
        if k == 4:
            return r.choice(["0.5", "1.0", "2.5", "1e3", "0.1"])
        if k == 5:
            return r.choice(STRS)
        if k == 6:
            return r.choice(["true", "false", "none"])
        if k == 7:
            return "[" + ", ".join(self.expr(1) for _ in range(r.randrange(3))) + "]"
        if k == 8:
            return "{" + ", ".join("%s: %s" % (r.choice(STRS), self.expr(1))
                                   for _ in range(r.randrange(3))) + "}"
        return "(" + self.expr(1) + ")"

    def postfix(self, e, depth):
        r = self.r
        for _ in range(r.randrange(3)):
            k = r.randrange(6)
            if k == 0:
                e += "." + r.choice(["role", "content", "a", "function", "name", "x", "0"])
            elif k == 1:
                e += "[%s]" % r.choice(["0", "-1", "1", "'a'", "'role'", "n", "5"])
            elif k == 2:
                e += r.choice(["[1:]", "[:-1]", "[::-1]", "[::2]", "[1:2]"])
            elif k == 3:
                e += "." + r.choice(METHODS)
            elif k == 4:
                e += "|" + r.choice(FILTERS)
            else:
                e = "(%s is %s%s)" % (e, r.choice(["", "not "]), r.choice(TESTS))
        return e

    def expr(self, depth=0):
        r = self.r
        if depth > 2:
            return self.atom()
        k = r.randrange(8)
        if k < 3:
            return self.postfix(self.atom(), depth)
        if k < 5:
            return "%s %s %s" % (self.expr(depth + 1), r.choice(BINOPS), self.expr(depth + 1))
        if k == 5:
            return "%s if %s else %s" % (self.expr(depth + 1), self.expr(depth + 1),
                                         self.expr(depth + 1))
        if k == 6:
            return "not " + self.expr(depth + 1)
        return "-" + self.atom()

    def ws(self):
        return self.r.choice(["", "", " ", "\n", "  \n", "\n  ", "\t", "x\n  "])

    def tag(self, body):
        r = self.r
        left = r.choice(["", "", "-", "+"])
        right = r.choice(["", "", "-", "+"])
        return "{%" + left + " " + body + " " + right + "%}"

    def out(self):
        r = self.r
        return "{{" + r.choice(["", "-"]) + " " + self.expr() + " " + r.choice(["", "-"]) + "}}"

    def block(self, depth=0):
        r = self.r
        parts = []
        for _ in range(r.randrange(1, 4)):
            k = r.randrange(15 if depth < 2 else 3)
            parts.append(self.ws())
            if k == 0:
                parts.append(self.out())
            elif k == 1:
                parts.append(r.choice(["text", "a b", "é", "{# c #}", "{#- c -#}"]))
            elif k == 2:
                name = r.choice(["v", "w"])
                parts.append(self.tag("set %s = %s" % (name, self.expr())))
                self.scope.append(name)
            elif k in (3, 4):
                parts.append(self.tag("if " + self.expr()))
                parts.append(self.block(depth + 1))
                if r.random() < 0.5:
                    parts.append(self.tag("else"))
                    parts.append(self.block(depth + 1))
                parts.append(self.tag("endif"))
            elif k in (5, 6):
                var = r.choice(["x", "m"])
                it = r.choice(["l", "messages", "d", "s", "range(3)", "e", self.expr(1)])
                cond = " if " + self.expr(1) if r.random() < 0.2 else ""
                parts.append(self.tag("for %s in %s%s" % (var, it, cond)))
                self.scope.append(var)
                self.scope.append("loop.index")
                self.scope.append(r.choice(["loop.first", "loop.last", "loop.previtem",
                                            "loop.length", "loop.revindex"]))
                parts.append(self.block(depth + 1))
                self.scope = self.scope[:-3]
                if r.random() < 0.3:
                    parts.append(self.tag("else"))
                    parts.append(self.block(depth + 1))
                parts.append(self.tag("endfor"))
            elif k == 7:
                parts.append(self.tag("set ns = namespace(c=0)"))
                parts.append(self.tag("for x in l"))
                parts.append(self.tag("set ns.c = ns.c + x"))
                parts.append(self.tag("endfor"))
                parts.append("{{ ns.c }}")
            elif k == 9:
                parts.append(self.tag("set blk%s" % r.choice(["", " | upper", " | trim"])))
                parts.append(self.block(depth + 1))
                parts.append(self.tag("endset"))
                parts.append("[{{ blk }}]")
            elif k == 10:
                parts.append(self.tag("filter " + r.choice(["upper", "trim", "replace('a', 'o')", "indent(2)", "title"])))
                parts.append(self.block(depth + 1))
                parts.append(self.tag("endfilter"))
            elif k == 11:
                parts.append(self.tag("macro wrap(x='W')"))
                parts.append("<{{ x }}:{{ caller(%s) }}>" % r.choice(["", "1", "x"]))
                parts.append(self.tag("endmacro"))
                parts.append(self.tag("call%s wrap(%s)" % (r.choice(["", "(y)", "(y='d')"]), r.choice(["", "'q'", "x=n"]))))
                self.scope.append("y")
                parts.append(self.block(depth + 1))
                self.scope.pop()
                parts.append(self.tag("endcall"))
            elif k == 12:
                parts.append(self.tag("for x in %s" % r.choice(["l", "messages", "range(4)", "'abc'"])))
                parts.append("{{ loop.cycle('a', 'b') }}{{ loop.changed(x) }}")
                parts.append(self.tag("if " + r.choice(["loop.index == 2", "x == 1", "loop.last", "x is string"])))
                parts.append(self.tag(r.choice(["break", "continue"])))
                parts.append(self.tag("endif"))
                parts.append("{{ x }}")
                if r.random() < 0.5:
                    parts.append(self.tag("else"))
                    parts.append("E")
                parts.append(self.tag("endfor"))
            elif k == 13:
                parts.append(self.tag("with q = %s" % self.expr(1)))
                self.scope.append("q")
                parts.append(self.block(depth + 1))
                self.scope.pop()
                parts.append(self.tag("endwith"))
            elif k == 14:
                parts.append(r.choice([
                    "{{ messages[0]['content'] if messages[0]['role'] == 'system' else '' }}",
                    "{% for m in messages %}{% if m.content is string %}{{ m.content|trim }}{% else %}{% for p in m.content %}{{ p.text }}{% endfor %}{% endif %}{% endfor %}",
                    "{{ tools|tojson(indent=%s) }}" % r.choice(["2", "none", "'  '", "0"]),
                    "{{ messages|selectattr('role', 'equalto', 'user')|list|length }}",
                    "{% for m in messages if m.tool_calls is defined %}{{ m.tool_calls[0].function.arguments|tojson(separators=(',', ':')) }}{% endfor %}",
                    "{{ (messages|last).content.split('</think>')[-1].lstrip('\n') if (messages|last).content is string else '' }}",
                    "{% raw %}{{ raw }}{% endraw %}",
                    "{{ '\u00e9\x41\t'|tojson }}",
                    "{{ d|dictsort|tojson }}",
                    "{{ '%s-%s'|format(n, s) }}",
                    "{{ messages[-1].role|upper ~ (' ' * 2) ~ n ** 2 }}",
                ]))
            else:
                parts.append(self.tag("macro mm(a, b='B')"))
                self.scope += ["a", "b"]
                parts.append(self.block(depth + 1))
                self.scope = self.scope[:-2]
                parts.append(self.tag("endmacro"))
                parts.append("{{ mm(%s) }}" % self.expr(1))
        parts.append(self.ws())
        return "".join(parts)


def jinja2_render(src):
    try:
        t = _compile_jinja_template(src)
    except Exception as e:
        return {"error": type(e).__name__, "parse": True}
    try:
        return {"output": t.render(**copy.deepcopy(CTX))}  # filters may mutate it
    except Exception as e:
        return {"error": "%s: %s" % (type(e).__name__, e), "parse": False}


SKIP = ("<generator object", "<dict_reversekeyiterator", "dict_items(", "dict_keys(", "dict_values(", "range(", " object at 0x",
        "<list_reverseiterator", "Markup(", "<Namespace", "<LoopContext", "<Macro", "<bound method",
        "<built-in")


TEXTS = ["Hello", "", "  spaced  ", "line1\nline2", "<think>\nreason\n</think>\n\nanswer",
         "ünïcödé ✓ 東京", "quote \" and ' and \\", "<tool_call>x</tool_call>", "{\"a\": 1}",
         "<|im_end|>", "[INST] x [/INST]", "/nothink", "\n\n", "tab\tsep"]


NOW = 1768473000  # strftime_now reads this instant on both sides (templates print seconds)


def fixed_strftime(fmt):
    return datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc).strftime(fmt)


def random_conversation(rng):
    msgs = []
    if rng.random() < 0.6:
        msgs.append({"role": "system", "content": rng.choice(TEXTS)})
    for turn in range(rng.randrange(1, 5)):
        msgs.append({"role": "user", "content": rng.choice(TEXTS) if rng.random() < 0.85 else
                     [{"type": "text", "text": rng.choice(TEXTS)}]})
        if rng.random() < 0.8:
            m = {"role": "assistant", "content": rng.choice(TEXTS)}
            if rng.random() < 0.3:
                m["reasoning_content"] = rng.choice(TEXTS)
            if rng.random() < 0.3:
                args = {"city": rng.choice(TEXTS), "n": rng.choice([1, 2.5, True, None])}
                m["tool_calls"] = [{"id": "call_%d" % turn, "type": "function", "function": {
                    "name": "get_weather", "arguments": json.dumps(args) if rng.random() < 0.4 else args}}]
                msgs.append(m)
                msgs.append({"role": "tool", "tool_call_id": "call_%d" % turn, "name": "get_weather",
                             "content": rng.choice(TEXTS)})
                continue
            msgs.append(m)
    tools = None
    if rng.random() < 0.4:
        tools = [{"type": "function", "function": {"name": "get_weather", "description": rng.choice(TEXTS),
                  "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "c"},
                                 "n": {"type": "number"}}, "required": ["city"]}}}]
    ctx = {"messages": msgs, "tools": tools, "documents": None, "__xd_now": NOW,
           "add_generation_prompt": rng.random() < 0.5, "bos_token": "<s>", "eos_token": "</s>"}
    for k in ("enable_thinking", "thinking"):
        if rng.random() < 0.3:
            ctx[k] = rng.random() < 0.5
    if rng.random() < 0.2:
        ctx["reasoning_effort"] = rng.choice(["low", "medium", "high"])
    return ctx


def alias_reasoning(ctx):
    # what transformers does to each message before rendering (_alias_reasoning_fields)
    out = []
    for m in ctx["messages"]:
        r = next((m[k] for k in ("reasoning_content", "thinking", "reasoning") if m.get(k) is not None), None)
        out.append({"thinking": r, **m, "reasoning_content": r} if r is not None else m)
    return dict(ctx, messages=out)


def main_templates(tdir, n, seed):
    rng = random.Random(seed)
    bad = total = 0
    for name in sorted(os.listdir(tdir)):
        path = os.path.join(tdir, name, "template.jinja")
        if not os.path.exists(path):
            continue
        src = open(path, encoding="utf-8").read()
        ctxs = [alias_reasoning(random_conversation(rng)) for _ in range(n)]
        ours = json.loads(subprocess.run([RENDER], input=json.dumps(
            [{"template": src, "context": c} for c in ctxs]), capture_output=True, text=True,
            check=True).stdout)
        t = _compile_jinja_template(src)
        for c, mine in zip(ctxs, ours):
            total += 1
            try:
                ref = {"output": t.render(**copy.deepcopy(c), strftime_now=fixed_strftime)}
            except Exception as e:
                ref = {"error": "%s: %s" % (type(e).__name__, e)}
            if ("output" in ref) == ("output" in mine) and ref.get("output") == mine.get("output"):
                continue
            bad += 1
            print("=" * 70)
            print(name, "CONTEXT:", json.dumps(c)[:600])
            print("jinja2:  ", json.dumps(ref)[:600])
            print("expertd: ", json.dumps(mine)[:600])
    print(f"{total} renderings of real templates: {bad} disagreements")
    return 1 if bad else 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--templates":
        n = int(sys.argv[3]) if len(sys.argv) > 3 else 50
        seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
        return main_templates(sys.argv[2], n, seed)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rng = random.Random(seed)
    templates = []
    for _ in range(n):
        templates.append(Gen(rng).block())
    ours = json.loads(subprocess.run([RENDER], input=json.dumps(
        [{"template": t, "context": CTX} for t in templates]), capture_output=True, text=True,
        check=True).stdout)
    bad = skipped = both_ok = 0
    for t, mine in zip(templates, ours):
        ref = jinja2_render(t)
        if "output" in ref and any(s in ref["output"] for s in SKIP):
            skipped += 1
            continue
        if "error" in ref and ("OverflowError" in ref["error"] or "MemoryError" in ref["error"]):
            skipped += 1
            continue
        if "output" in ref and "output" in mine and ref["output"] == mine["output"]:
            both_ok += 1
            continue
        if "error" in ref and "error" in mine:
            continue
        if "output" in ref and ("not subscriptable" in mine.get("error", "") or
                                 "unhashable type: 'slice'" in mine.get("error", "")):
            # jinja2 folds constant subexpressions with its getitem (a miss is undefined), so
            # `true[1:]` is undefined there; slicing a non-sequence at run time raises, as here
            skipped += 1
            continue
        bad += 1
        print("=" * 70)
        print("TEMPLATE:", json.dumps(t))
        print("jinja2:  ", json.dumps(ref)[:400])
        print("expertd: ", json.dumps(mine)[:400])
    print(f"{n} templates: {both_ok} equal renderings, {bad} disagreements, {skipped} skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
