#!/usr/bin/env python3
"""Renders the Jinja interpreter's test cases with jinja2 itself, in the environment transformers
builds for chat templates (transformers' own _compile_jinja_template: ImmutableSandboxedEnvironment,
trim_blocks, lstrip_blocks, loopcontrols, the generation tag, its tojson, raise_exception,
strftime_now, dict and namespace), and writes tests/fixtures/jinja/cases.json.

Each case is a template and a context; the output is what jinja2 rendered, or the class of the
error it raised (and whether it was raised while compiling). strftime_now is replaced by one that
formats the context's __xd_now (Unix time, UTC), as expertd does when that key is given.

Usage: /work/golden-venv/bin/python tools/golden/make_jinja_cases.py
"""
import datetime
import json
import os
import sys

import jinja2
import transformers
from transformers.utils.chat_template_utils import _compile_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "jinja", "cases.json")

MSGS = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "unit": {"type": "string", "enum": ["c", "f"]}},
                    "required": ["city"]}}},
    {"type": "function", "function": {"name": "noop", "description": "Does nothing — ünïcode",
     "parameters": {"type": "object", "properties": {}}}},
]
CTX = {"messages": MSGS, "tools": TOOLS, "bos_token": "<s>", "eos_token": "</s>",
       "add_generation_prompt": True, "n": 3, "f": 2.5, "s": "  Hello World  ", "e": "",
       "l": [3, 1, 2], "d": {"b": 2, "a": 1, "c": None}, "t": True, "no": False, "z": None,
       "u": "héllo wörld ✓", "words": ["apple", "Banana", "cherry", "apple"],
       "people": [{"name": "Ann", "age": 31, "admin": True}, {"name": "bob", "age": 25},
                  {"name": "Cid", "age": 40, "admin": False}],
       "nested": {"a": {"b": {"c": 42}}}, "big": 12345678901234, "neg": -7,
       "floats": [0.1, 1.0, 1e16, 1.5e-7, 123456.789, -0.0, 2.0 / 3]}

C = []


def case(name, template, ctx=None, **extra):
    c = dict(CTX)
    if ctx:
        c.update(ctx)
    C.append((name, template, c if not extra.get("bare") else (ctx or {})))


# -- output, literals, whitespace ---------------------------------------------------------------
case("text_only", "plain text\nline two")
case("trailing_newline_dropped", "a\n")
case("two_trailing_newlines", "a\n\n")
case("crlf_normalised", "a\r\nb\rc")
case("print_var", "{{ bos_token }}x{{ eos_token }}")
case("print_int_float", "{{ n }} {{ f }} {{ big }} {{ neg }}")
case("print_floats", "{% for x in floats %}{{ x }}|{% endfor %}")
case("print_bool_none", "{{ t }} {{ no }} {{ z }} {{ true }} {{ None }}")
case("print_list_dict", "{{ l }} {{ d }} {{ [1, 'a', none, true, 2.5] }}")
case("print_tuple", "{{ (1, 'x') }} {{ (1,) }} {{ () }}")
case("print_str_repr_quotes", "{{ [\"it's\", 'say \"hi\"', 'both \\' \"', 'nl\\n', 'tab\\t'] }}")
case("print_unicode_repr", "{{ [u, '\\x00\\x7f', '\\xa0'] }}")
case("undefined_prints_empty", "[{{ nothing }}]")
case("string_escapes", "{{ 'a\\tb\\nc\\\\d\\'e\\u00e9\\x41\\101\\q' }}")
case("adjacent_strings", "{{ 'a' 'b' \"c\" }}")
case("int_literals", "{{ 0x1F }} {{ 0o17 }} {{ 0b101 }} {{ 1_000 }}")
case("float_literals", "{{ 1.5 }} {{ 1e3 }} {{ 2.5e-3 }} {{ 1_0.5 }}")
case("comment", "a{# a comment #}b")
case("comment_multiline", "a\n{# x\ny #}\nb")
case("strip_left_var", "a   \n  {{- 'x' }}")
case("strip_right_var", "{{ 'x' -}}  \n  b")
case("strip_both_block", "a  \n {%- if true -%} \n x \n {%- endif -%}  \nb")
case("trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter")
case("lstrip_blocks", "x\n    {% if true %}\n    y\n    {% endif %}\nz")
case("lstrip_not_after_text", "x  {% if true %}y{% endif %}")
case("lstrip_var_untouched", "x\n    {{ 'v' }}\n")
case("plus_disables_lstrip", "x\n    {%+ if true %}y{% endif %}")
case("plus_disables_trim", "{% if true +%}\nyes{% endif %}")
case("lstrip_comment", "a\n   {# c #}\nb")
case("lstrip_start_of_template", "   {% if true %}x{% endif %}")
case("trim_only_one_newline", "{% if true %}\n\nx{% endif %}")
case("var_strip_then_lstrip", "{{ 'a' -}}\n   {% if true %}b{% endif %}")
case("minus_strips_newlines", "a\n\n\n{%- if true %}b{% endif %}")
case("tabs_lstrip", "x\n\t\t{% if true %}y{% endif %}")
case("raw_block", "{% raw %}{{ not parsed }}{% if %}{% endraw %}")
case("raw_block_ws", "a\n  {% raw %}\n{{ x }}\n  {% endraw %}\nb")
case("raw_block_minus", "a {%- raw -%}  {{ x }}  {%- endraw -%} b")
case("unicode_text", "héllo {{ u }} ✓ 😀")
case("nonbreaking_space_strip", "a\u00a0\u00a0{{- 'b' }}")

# -- expressions ----------------------------------------------------------------------------------
case("arith_int", "{{ 7 + 3 }} {{ 7 - 10 }} {{ 7 * 3 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} "
     "{{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }}")
case("arith_float", "{{ 1.5 + 1 }} {{ 0.1 + 0.2 }} {{ 10 / 4 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }}")
case("arith_bool", "{{ true + 1 }} {{ true * 3 }}")
case("precedence", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ 10 - 2 - 3 }}")
case("unary", "{{ -n }} {{ +n }} {{ - -n }} {{ -f }}")
case("string_plus", "{{ 'a' + 'b' }} {{ 'ab' * 3 }} {{ 3 * 'x' }} {{ [1] + [2, 3] }} {{ [0] * 3 }}")
case("tilde_concat", "{{ 'a' ~ 1 ~ none ~ true ~ nothing ~ 2.5 ~ [1] }}")
case("compare_ops", "{{ 1 < 2 }} {{ 2 <= 2 }} {{ 3 > 4 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} "
     "{{ 1 != 2 }} {{ [1, 2] < [1, 3] }} {{ 'B' < 'a' }}")
case("compare_chain", "{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 1 == 1 == 1 }}")
case("eq_mixed", "{{ 1 == '1' }} {{ none == none }} {{ [1] == [1] }} {{ {'a': 1} == {'a': 1} }} "
     "{{ nothing == nothing }} {{ nothing == none }} {{ true == 1 }}")
case("in_dict_unhashable_fails", "{{ [1] in {} }}")
case("dict_get_unhashable_fails", "{{ {}.get([1]) }}")
case("tuple_key_in_dict", "{{ (1, 2) in {(1, 2): 'x'} }} {{ {(1, 2): 'x'}[(1, 2)] }}")
case("lower_upper_tests_any_value", "{{ [1, 'a'] is lower }} {{ none is upper }} {{ 5 is lower }} {{ {'A': 1} is upper }} {{ nothing is lower }}")
case("in_operator", "{{ 'ell' in 'hello' }} {{ 2 in l }} {{ 'a' in d }} {{ 'z' in d }} "
     "{{ 5 not in l }} {{ '' in 'x' }} {{ 'x' in nothing }}")
case("logic_ops", "{{ true and false }} {{ true or false }} {{ not true }} {{ not nothing }} "
     "{{ 0 or 'x' }} {{ '' and 'y' }} {{ 'a' and 'b' }} {{ none or [] }}")
case("logic_precedence", "{{ not 1 == 2 }} {{ true or false and false }} {{ not false and false }}")
case("cond_expr", "{{ 'y' if t else 'n' }} {{ 'y' if no else 'n' }} [{{ 'y' if no }}]")
case("cond_expr_nested", "{{ 'a' if no else 'b' if t else 'c' }}")
case("list_dict_literals", "{{ [1, [2, 3], {'k': 'v'}] }} {{ {'a': 1, 'b': [1, 2],} }} {{ [] }} {{ {} }}")
case("dict_int_keys", "{{ {1: 'a', 2: 'b'}[2] }}")
case("attr_and_item", "{{ messages[0].role }} {{ messages[1]['content'] }} {{ nested.a.b.c }} "
     "{{ nested['a']['b'].c }}")
case("negative_index", "{{ messages[-1].content }} {{ l[-1] }} {{ 'abc'[-1] }}")
case("index_out_of_range_undefined", "[{{ l[10] }}] [{{ 'abc'[5] }}] [{{ d.missing }}]")
case("dot_integer", "{{ l.0 }} {{ messages.1.role }}")
case("slices", "{{ l[1:] }} {{ l[:2] }} {{ l[::-1] }} {{ l[::2] }} {{ 'hello'[1:4] }} "
     "{{ 'hello'[::-1] }} {{ l[-2:] }} {{ l[5:] }} {{ 'héllo'[1:3] }} {{ l[:-1] }}")
case("slice_inside_subscript", "{{ [s[::2]][0] }} {{ l[l[1:][0]] }} {{ messages[1:][0].role }}")
case("slice_of_int_fails", "{{ n[1:] }}")
case("slice_messages", "{% for m in messages[1:] %}{{ m.role }} {% endfor %}")
case("unicode_len_index", "{{ u|length }} {{ u[1] }} {{ u[-1] }} {{ u[::-1] }}")
case("method_on_none_attr", "[{{ z.foo }}]")
case("dunder_is_undefined", "[{{ ''.__class__ }}] [{{ d.__class__ }}] {{ ''.__class__ is defined }}")
case("dict_method_wins_over_key", "{{ {'items': 1}.items() | list }}")
case("dict_key_named_like_attr", "{{ {'role': 'r'}.role }}")
case("namespace_attr", "{% set ns = namespace(a=1, b='x') %}{{ ns.a }}{{ ns.b }}[{{ ns.c }}]")

# -- undefined semantics ---------------------------------------------------------------------
case("undefined_tests", "{{ foo is defined }} {{ foo is undefined }} {{ d.zz is defined }} "
     "{{ messages is defined }}")
case("undefined_attr_of_defined", "[{{ d.missing }}]{{ d.missing is defined }}")
case("undefined_iter_empty", "{% for x in nothing %}x{% else %}empty{% endfor %}")
case("undefined_length", "{{ nothing|length }} {{ nothing|list }} [{{ nothing|join(',') }}]")
case("undefined_default", "{{ nothing|default('dflt') }} {{ e|default('dflt') }} "
     "{{ e|default('dflt', true) }} {{ z|default('x') }} {{ nothing|d('y') }}")
case("undefined_bool", "{% if nothing %}yes{% else %}no{% endif %}")
case("undefined_concat", "[{{ nothing ~ 'x' }}]")
case("undefined_upper", "[{{ nothing|upper }}][{{ nothing|trim }}][{{ nothing|string }}]")
case("undefined_attr_of_undefined_fails", "{{ foo.bar }}")
case("undefined_item_of_undefined_fails", "{{ foo['bar'] }}")
case("undefined_defined_test_of_attr_fails", "{{ foo.bar is defined }}")
case("undefined_plus_fails", "{{ nothing + 1 }}")
case("undefined_call_fails", "{{ nothing() }}")
case("undefined_tojson_fails", "{{ nothing|tojson }}")
case("undefined_compare_fails", "{{ nothing < 1 }}")
case("undefined_is_sequence", "{{ nothing is sequence }} {{ nothing is iterable }} {{ d.zz is sequence }} {{ nothing is mapping }}")
case("empty_subscript", "[{{ d[] }}] {{ 'x' if false else 'y' ~ not [] if false }}")
case("undefined_in_list", "{{ nothing in [1] }}")

# -- tests ------------------------------------------------------------------------------------
case("type_tests", "{{ n is number }} {{ f is number }} {{ t is number }} {{ s is number }} "
     "{{ n is integer }} {{ t is integer }} {{ f is float }} {{ n is float }} {{ s is string }} "
     "{{ n is string }} {{ d is mapping }} {{ l is mapping }} {{ l is sequence }} "
     "{{ s is sequence }} {{ d is sequence }} {{ n is sequence }} {{ l is iterable }} "
     "{{ s is iterable }} {{ n is iterable }} {{ nothing is iterable }} {{ t is boolean }} "
     "{{ n is boolean }} {{ z is none }} {{ e is none }}")
case("odd_even_floats", "{{ 0.5 is odd }} {{ 3.0 is odd }} {{ 4.0 is even }} {{ 7.5 is divisibleby 2.5 }}")
case("value_tests", "{{ t is true }} {{ 1 is true }} {{ no is false }} {{ 0 is false }} "
     "{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }}")
case("compare_tests", "{{ 1 is eq 1 }} {{ 1 is equalto 2 }} {{ 1 is ne 2 }} {{ 1 is lt 2 }} "
     "{{ 2 is le 2 }} {{ 3 is gt 2 }} {{ 2 is ge 3 }} {{ 2 is in l }} {{ 'x' is in 'xyz' }} "
     "{{ 1 is greaterthan 0 }} {{ 1 is lessthan 0 }}")
case("is_not", "{{ z is not none }} {{ n is not string }} {{ foo is not defined }}")
case("case_tests", "{{ 'abc' is lower }} {{ 'aBc' is lower }} {{ 'ABC' is upper }} {{ '12' is upper }}")
case("callable_test", "{{ range is callable }} {{ n is callable }} {{ 'x'.upper is callable }} {{ nothing is callable }} "
     "{{ d.zz is callable }} {{ namespace is callable }} {{ loop is callable }}")
case("sameas_test", "{{ none is sameas none }} {{ true is sameas true }} {{ 1 is sameas true }}")
case("test_binds_tighter_than_not", "{{ not z is none }} {{ not n is string }}")
case("test_in_condition", "{% if messages[0].role == 'system' and messages[0].content is string %}ok{% endif %}")

# -- filters ----------------------------------------------------------------------------------
case("filter_trim", "[{{ s|trim }}] [{{ 'xxhixx'|trim('x') }}] [{{ '\\n a \\t'|trim }}]")
case("filter_length_count", "{{ l|length }} {{ d|length }} {{ s|length }} {{ u|count }} {{ ''|length }}")
case("filter_upper_lower", "{{ s|upper }} {{ s|lower }} {{ u|upper }}")
case("filter_title_capitalize", "{{ 'hello wORLD-foo (bar) x_y'|title }} {{ 'hELLO world'|capitalize }}")
case("filter_first_last", "{{ l|first }} {{ l|last }} {{ 'abc'|first }} {{ 'abc'|last }} "
     "[{{ []|first }}] {{ messages|first|attr('role') if false else (messages|first).role }}")
case("filter_join", "{{ l|join }} {{ l|join(', ') }} {{ people|join(',', attribute='name') }} "
     "{{ [1, none, 'x']|join('-') }}")
case("filter_string_int_float", "{{ 5|string ~ 'x' }} {{ '42'|int + 1 }} {{ '3.7'|int }} {{ 'x'|int }} "
     "{{ 'x'|int(7) }} {{ 3.9|int }} {{ '2.5'|float }} {{ 'a'|float }} {{ 3|float }} "
     "{{ ' 12 '|int }} {{ '0x1A'|int(0, 16) }} {{ true|int }} {{ none|int }} {{ '1_000'|int }}")
case("filter_list", "{{ 'abc'|list }} {{ d|list }} {{ l|list }}")
case("filter_unique", "{{ words|unique|list }} {{ words|unique(case_sensitive=true)|list }} "
     "{{ [1, 2, 1, 3, 2]|unique|list }}")
case("filter_reverse", "{{ l|reverse|list }} {{ 'abc'|reverse }} {{ messages|reverse|map(attribute='role')|join(',') }}")
case("filter_sort", "{{ l|sort }} {{ l|sort(reverse=true) }} {{ words|sort }} "
     "{{ words|sort(case_sensitive=true) }} {{ people|sort(attribute='age')|map(attribute='name')|join(',') }} "
     "{{ people|sort(attribute='name')|map(attribute='name')|join(',') }}")
case("filter_sort_stable", "{{ [[1, 'b'], [0, 'x'], [1, 'a'], [0, 'y']]|sort(attribute='0') }}")
case("filter_dictsort", "{{ d|dictsort }} {{ d|dictsort(reverse=true) }} {{ {'b': 1, 'a': 2}|dictsort(by='value') }}")
case("filter_replace", "{{ s|replace('l', 'L') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 'ab'|replace('', '-') }}")
case("filter_indent", "{{ 'a\\nb\\n\\nc'|indent }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent(2, blank=true) }}|"
     "{{ 'x\\ny'|indent('>>') }}|{{ 'one'|indent(first=true) }}|{{ 'a\\n'|indent }}|")
case("filter_items", "{% for k, v in d|items %}{{ k }}={{ v }};{% endfor %}")
case("filter_selectattr", "{{ people|selectattr('admin')|map(attribute='name')|list }} "
     "{{ people|rejectattr('admin')|map(attribute='name')|list }} "
     "{{ people|selectattr('age', 'gt', 30)|map(attribute='name')|join }} "
     "{{ people|selectattr('admin', 'defined')|list|length }} "
     "{{ people|selectattr('name', 'equalto', 'bob')|first }} "
     "{{ messages|selectattr('role', 'eq', 'user')|list|length }}")
case("filter_select_reject", "{{ [0, 1, 2, none, '', 'x']|select|list }} {{ [1, 2, 3, 4]|select('odd')|list }} "
     "{{ [1, 2, 3, 4]|reject('odd')|list }} {{ [1, 5, 10]|select('gt', 3)|list }}")
case("filter_map", "{{ people|map(attribute='name')|list }} {{ people|map(attribute='admin', default='?')|list }} "
     "{{ ['a', 'B']|map('upper')|list }} {{ [' a ', 'b ']|map('trim')|join }} {{ [1, 2]|map('string')|list }}")
case("filter_map_nested_attr", "{{ [nested]|map(attribute='a.b.c')|list }} {{ people|map(attribute='missing')|list }}")
case("filter_min_max_sum", "{{ l|min }} {{ l|max }} {{ l|sum }} {{ people|sum(attribute='age') }} "
     "{{ words|max }} {{ words|min(case_sensitive=true) }} {{ people|max(attribute='age') }} {{ [1.5, 2]|sum }}")
case("filter_abs_round", "{{ -3|abs }} {{ neg|abs }} {{ -2.5|abs }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} "
     "{{ 2.1|round(method='ceil') }} {{ 2.9|round(0, 'floor') }} {{ 7|round }}")
case("filter_escape_safe", "{{ '<a href=\"x\">&\\'</a>'|escape }} {{ '<b>'|e }} {{ '<b>'|safe }} {{ 5|safe }}")
case("filter_wordcount", "{{ 'hello big world'|wordcount }} {{ ''|wordcount }} {{ 'a-b c_d'|wordcount }}")
case("filter_format", "{{ '%s is %d'|format('x', 3) }} {{ '%s'|format([1]) }} {{ '%%'|format() }}")
case("printf_specs", "[{{ '%5s|%-5s|%.2s|%5.1s' % ('ab', 'ab', 'héllo', 'xyz') }}] [{{ '%d|%5d|%-5d|%05d|%+d|% d|%.3d' % (7, 7, 7, -7, 7, 7, 7) }}] "
     "[{{ '%x|%X|%o|%#x|%#o|%08.3f|%.2e|%g|%G|%-8.2f|%+.1f' % (255, 255, 8, 255, 8, 3.14159, 12345.678, 0.0001, 1e20, 2.5, 2.25) }}] "
     "[{{ '%c%c|%r|%s' % ('x', 65, 'q', none) }}] [{{ '%d' % 2.9 }}] [{{ '%i%%' % true }}] [{{ '%5s' % 'é✓' }}] [{{ '%-6r|' % 'a' }}]")
case("printf_bad_fails", "{{ '%d' % 'x' }}")
case("printf_too_few_fails", "{{ '%s %s' % ('a',) }}")
case("filter_center", "[{{ 'ab'|center(6) }}] [{{ 'abc'|center(6) }}]")
case("filter_batch", "{{ [1, 2, 3, 4, 5]|batch(2)|list }} {{ [1, 2, 3]|batch(2, 0)|list }}")
case("filter_chain", "{{ messages|map(attribute='content')|map('upper')|select('string')|join(' / ')|trim }}")
case("filter_on_literal", "{{ 'abc'|upper|reverse }}")
case("filter_precedence_unary", "{{ -1|abs }} {{ (-1)|abs }}")
case("filter_generators_are_true", "{{ ([]|select) is true }} {% if []|map('upper') %}gen{% endif %} "
     "{% if e|selectattr('x') %}yes{% else %}no{% endif %} {{ not l|reject }} {{ l|unique is sequence }} "
     "{{ l|map('string') is iterable }} {{ (l|reverse) is sequence }}")
case("filter_generator_consumed_once", "{% set g = l|map('string') %}[{{ g|join }}][{{ g|join }}]{% set r = l|reverse %}[{{ r|list }}][{{ r|list }}]")
case("filter_generator_length_fails", "{{ l|map('string')|length }}")
case("filter_generator_index_undefined", "[{{ (l|select)[0] }}]")
case("filter_generator_lazy_error", "{% set g = 5|select %}{% set h = 5|items %}ok")
case("filter_generator_lazy_error_consumed", "{{ 5|map('upper')|list }}")
case("filter_items_non_mapping_consumed_fails", "{{ l|items|list }}")
case("filter_indent_non_string_fails", "{{ 5|indent }}")
case("filter_int_of_undefined_fails", "{{ nothing|int }}")
case("filter_float_of_undefined_fails", "{{ nothing|float }}")
case("filter_last_first_of_undefined", "[{{ nothing|last }}][{{ nothing|first }}][{{ nothing|reverse|list }}]")
case("filter_pprint", "{{ {'a': [1, 'x']}|pprint }}")

# -- tojson (transformers' json.dumps) ---------------------------------------------------------
case("tojson_basic", "{{ d|tojson }} {{ l|tojson }} {{ 'x\"y'|tojson }} {{ none|tojson }} {{ true|tojson }} "
     "{{ 2.5|tojson }} {{ 1e16|tojson }} {{ (1, 2)|tojson }}")
case("tojson_unicode", "{{ u|tojson }} {{ '<tag>&'|tojson }} {{ 'ctrl\\x01\\x1f\\x7f\\t\\n\\r\\b\\f/'|tojson }}")
case("tojson_ensure_ascii", "{{ u|tojson(ensure_ascii=true) }} {{ '😀'|tojson(true) }}")
case("tojson_indent", "{{ tools[0]|tojson(indent=2) }}")
case("tojson_indent_str_zero", "{{ {'a': [1, {}], 'b': []}|tojson(indent='\\t') }}|{{ [1, 2]|tojson(indent=0) }}")
case("tojson_separators", "{{ d|tojson(separators=(',', ':')) }} {{ l|tojson(separators=[';', '=']) }}")
case("tojson_sort_keys", "{{ d|tojson(sort_keys=true) }} {{ {'b': {'z': 1, 'y': 2}, 'a': 0}|tojson(sort_keys=true, indent=1) }}")
case("tojson_tools", "{% for tool in tools %}{{ tool|tojson }}\n{% endfor %}")
case("tojson_floats", "{{ floats|tojson }}")
case("tojson_nonstring_keys", "{{ {1: 'a', true: 'b', none: 'c', 2.5: 'd'}|tojson }}")
case("tojson_namespace_fails", "{% set ns = namespace(a=1) %}{{ ns|tojson }}")

# -- string methods --------------------------------------------------------------------------
case("str_strip_methods", "[{{ s.strip() }}] [{{ s.lstrip() }}] [{{ s.rstrip() }}] [{{ 'xxaxx'.strip('x') }}] "
     "[{{ '\\n\\nx\\n'.rstrip('\\n') }}] [{{ 'abc'.lstrip('ba') }}]")
case("str_split", "{{ 'a,b,,c'.split(',') }} {{ ' a  b c '.split() }} {{ 'a b c'.split(' ', 1) }} "
     "{{ 'a,b,c'.rsplit(',', 1) }} {{ ''.split(',') }} {{ ''.split() }} {{ 'x<think>y</think>z'.split('</think>')[-1] }} "
     "{{ ' a b  c '.rsplit(None, 1) }}")
case("str_startswith_endswith", "{{ s.strip().startswith('Hell') }} {{ 'abc'.endswith('bc') }} "
     "{{ 'abc'.startswith(('x', 'a')) }} {{ 'abc'.endswith('x') }}")
case("str_replace_method", "{{ 'a-b-c'.replace('-', '+') }} {{ 'a-b-c'.replace('-', '', 1) }}")
case("str_case_methods", "{{ 'hello world'.title() }} {{ 'ab cd'.upper() }} "
     "{{ 'ABC'.lower() }} {{ 'hELLO'.capitalize() }} {{ 'aBc'.swapcase() }} {{ 'x1y'.title() }}")
case("str_format_method", "{{ '{} and {}'.format('a', 'b') }} {{ '{0}{1}{0}'.format('x', 'y') }} "
     "{{ '{name}!'.format(name='n') }} {{ '{{}}{}'.format(1) }}")
case("str_format_specs", "[{{ '{:>6}|{:<6}|{:^7}|{:*^7}|{:.2}'.format('ab', 'ab', 'ab', 'ab', 'héllo') }}] "
     "[{{ '{:5d}|{:<5d}|{:05d}|{:+d}|{: d}|{:x}|{:#X}|{:#o}|{:b}|{:=+6d}'.format(42, 42, -42, 42, 42, 255, 255, 8, 5, 42) }}] "
     "[{{ '{:.2f}|{:8.3f}|{:<8.1f}|{:e}|{:.1%}|{:g}|{:+.0f}|{}|{:10}|{:>6}'.format(3.14159, 2.5, 2.5, 12345.678, 0.256, 0.0001, 2.5, 2.5, 1.5, true) }}] "
     "[{{ '{0:>4}{1:03}{0!r:>5}'.format('x', 7) }}] [{{ '{:c}'.format(65) }}] [{{ '{:d}'.format(true) }}] [{{ '{:06.2f}'.format(-3.14159) }}]")
case("str_format_bad_spec_fails", "{{ '{:d}'.format('x') }}")
case("str_find_count", "{{ 'hello'.find('l') }} {{ 'hello'.rfind('l') }} {{ 'hello'.find('z') }} "
     "{{ 'hello'.count('l') }} {{ 'héllo'.find('l') }} {{ 'hello'.index('e') }}")
case("str_predicates", "{{ '123'.isdigit() }} {{ '12a'.isdigit() }} {{ 'abc'.isalpha() }} {{ 'a1'.isalnum() }} "
     "{{ '  '.isspace() }} {{ 'ABC'.isupper() }} {{ 'abc'.islower() }} {{ ''.isdigit() }}")
case("str_join_method", "{{ ', '.join(['a', 'b']) }} {{ ''.join(words) }}")
case("str_splitlines", "{{ 'a\\nb\\r\\nc\\n'.splitlines() }} {{ 'a\\nb'.splitlines(true) }}")
case("str_misc_methods", "{{ 'abc'.removeprefix('a') }} {{ 'abc'.removesuffix('c') }} {{ '5'.zfill(3) }} "
     "{{ 'a=b=c'.partition('=') }} {{ 'a=b=c'.rpartition('=') }} [{{ 'ab'.ljust(4) }}] [{{ 'ab'.rjust(4, '*') }}]")
case("str_method_unknown_attr", "[{{ 'abc'.nosuchmethod }}]")

# -- dict and list methods -------------------------------------------------------------------------
case("dict_methods", "{{ d.keys()|list }} {{ d.values()|list }} {% for k, v in d.items() %}{{ k }}:{{ v }} {% endfor %}"
     "{{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 'dflt') }}")
case("dict_views", "{{ d.items() }} {{ d.keys() }} {{ d.values() }} {{ d.items()|list }} {{ d.keys()|length }} "
     "{{ 'a' in d.keys() }} {{ ('a', 1) in d.items() }} {{ d.keys() is sequence }} {{ d.keys() is iterable }} "
     "[{{ d.keys()[0] }}] {{ d.keys() == {'a': 0, 'b': 1, 'c': 2}.keys() }} {{ d.values()|sum(start=0) if false else d.keys()|first }} "
     "{{ d.items()|last }} {{ d.keys()|reverse|list }} {{ d.items()|sort }} {% if {}.items() %}t{% else %}f{% endif %}")
case("dict_view_tojson_fails", "{{ d.items()|tojson }}")
case("dict_view_slice_fails", "{{ d.keys()[1:] }}")
case("dict_view_plus_fails", "{{ d.keys() + [1] }}")
case("dict_iteration_order", "{% for k in {'z': 1, 'a': 2, 'm': 3} %}{{ k }}{% endfor %}")
case("list_methods", "{{ l.index(1) }} {{ words.count('apple') }} {{ l.copy() }}")
case("list_append_unsafe", "{% set x = [] %}{{ x.append(1) }}")
case("dict_update_unsafe", "{% set x = {} %}{{ x.update({'a': 1}) }}")
case("dict_global", "{{ dict(a=1, b=2) }} {{ dict([('x', 1)]) }} {{ dict({'k': 'v'}, z=0) }}")
case("dict_fromkeys", "{{ dict.fromkeys(['a', 'b'], 0) }}")

# -- statements: if / for / set / namespace --------------------------------------------------------
case("if_elif_else", "{% for x in [1, 2, 3] %}{% if x == 1 %}one{% elif x == 2 %}two{% else %}other{% endif %} {% endfor %}")
case("if_nested", "{% if t %}{% if no %}a{% else %}b{% endif %}{% endif %}")
case("for_loop_vars", "{% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}"
     "{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}")
case("for_prev_next", "{% for x in l %}[{{ loop.previtem }}|{{ x }}|{{ loop.nextitem }}]{% endfor %}")
case("for_prev_next_defined", "{% for x in l %}{{ loop.previtem is defined }}{{ loop.nextitem is defined }} {% endfor %}")
case("for_cycle", "{% for x in range(5) %}{{ loop.cycle('odd', 'even') }} {% endfor %}")
case("for_changed", "{% for x in [1, 1, 2, 2, 1] %}{{ loop.changed(x) }} {% endfor %}")
case("for_loop_in_macro_with_break", "{% macro m(l) %}{% for x in l %}{% if x > 1 %}{% break %}{% endif %}{{ x }}{% endfor %}{% endmacro %}{{ m([1, 2, 3]) }}")
case("for_continue_else", "{% for x in [1, 2] %}{% continue %}{% else %}else{% endfor %}done "
     "{% for x in [1] %}{% break %}{% else %}else{% endfor %} {% for x in [1, 2] %}{% if x == 1 %}{% continue %}{% endif %}{% else %}else{% endfor %}")
case("for_loop_index_in_filter_fails", "{% for x in l if loop.index > 1 %}{{ x }}{% endfor %}")
case("for_recursive", "{% for n in tree recursive %}[{{ loop.depth }}{{ loop.depth0 }}:{{ n.name }}{% if n.kids %}({{ loop(n.kids) }}){% endif %}{{ loop.index }}/{{ loop.length }}]{% endfor %}",
     {"tree": [{"name": "a", "kids": [{"name": "b", "kids": [{"name": "c"}]}, {"name": "d"}]}, {"name": "e"}]})
case("for_recursive_schema", "{%- for k, v in props|dictsort recursive %}{{ k }}:{{ v.type }}{% if v.properties %}{ {{- loop(v.properties|dictsort) -}} }{% endif %}{% if not loop.last %}, {% endif %}{% endfor %}",
     {"props": {"b": {"type": "object", "properties": {"y": {"type": "int"}, "x": {"type": "str"}}}, "a": {"type": "str"}}})
case("for_nonrecursive_loop_call_fails", "{% for x in l %}{{ loop([1]) }}{% endfor %}")
case("for_depth", "{% for x in [1] %}{{ loop.depth }}{{ loop.depth0 }}{% endfor %}")
case("for_else", "{% for x in [] %}x{% else %}none{% endfor %}|{% for x in [1] %}x{% else %}none{% endfor %}")
case("for_filter", "{% for m in messages if m.role != 'system' %}{{ loop.index }}/{{ loop.length }}:{{ m.role }} {% endfor %}")
case("for_unpack", "{% for a, b in [[1, 2], (3, 4)] %}{{ a }}{{ b }} {% endfor %}{% for (k, v) in d.items() %}{{ k }}{% endfor %}")
case("for_unpack_mismatch_fails", "{% for a, b in [[1, 2, 3]] %}{{ a }}{% endfor %}")
case("for_string", "{% for c in 'hé!' %}[{{ c }}]{% endfor %}")
case("for_dict", "{% for k in d %}{{ k }}={{ d[k] }} {% endfor %}")
case("for_nested_loop", "{% for a in [1, 2] %}{% for b in 'xy' %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{{ loop.index }}|{% endfor %}")
case("for_outer_loop_saved", "{% for a in [1, 2] %}{% set outer = loop %}{% for b in [1] %}{{ outer.index }}{% endfor %}{% endfor %}")
case("for_none_fails", "{% for x in z %}{% endfor %}")
case("for_int_fails", "{% for x in 5 %}{% endfor %}")
case("for_range", "{% for i in range(3) %}{{ i }}{% endfor %} {% for i in range(1, 10, 3) %}{{ i }}{% endfor %} "
     "{% for i in range(5, 0, -2) %}{{ i }}{% endfor %} {{ range(0)|list }}")
case("range_extremes", "{{ range(9223372036854775806, 9223372036854775807, 5)|list }} {{ range(0, 10, -9223372036854775807 - 1)|list }} "
     "{{ range(-9223372036854775807 - 1, -9223372036854775807 + 1)|list }} {{ range(3, 1)|list }} {{ range(10, 0, -3)|list }}")
case("range_step_zero_fails", "{{ range(1, 2, 0) }}")
case("slice_extreme_steps", "{{ l[::9223372036854775807] }} {{ l[::-9223372036854775807 - 1] }} {{ u[::-9223372036854775807 - 1] }} {{ l[-100:100] }} {{ l[100:-100:-1] }}")
case("range_too_big_fails", "{% for i in range(100001) %}{% endfor %}")
case("break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}")
case("break_in_nested", "{% for a in [1, 2] %}{% for b in [1, 2, 3] %}{% if b == 2 %}{% break %}{% endif %}{{ a }}{{ b }} {% endfor %}{% endfor %}")
case("set_simple", "{% set x = 1 %}{% set y = x + 1 %}{{ x }}{{ y }}")
case("set_tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c = 1, 2 %}{{ c }}")
case("set_in_loop_does_not_leak", "{% set x = 0 %}{% for i in [1, 2] %}{% set x = i %}{{ x }}{% endfor %}|{{ x }}")
case("set_in_if_leaks", "{% if true %}{% set x = 5 %}{% endif %}{{ x }}")
case("set_read_before_assign_in_loop", "{% set x = 0 %}{% for i in [1, 2] %}{{ x }}{% set x = i %}{% endfor %}")
case("set_block", "{% set body %}Hello {{ bos_token }}!{% endset %}[{{ body }}]{{ body|length }}")
case("set_block_filter", "{% set body | upper %}abc{% endset %}{{ body }}")
case("set_block_scope", "{% set x = 'out' %}{% set b %}{% set x = 'in' %}{% set y = 1 %}{{ x }}{% endset %}{{ b }} {{ x }} [{{ y }}]"
     "{% filter upper %}{% set z = 2 %}{{ x }}{% endfilter %}[{{ z }}]")
case("set_block_trim", "{% set x %}\n  inner\n{% endset %}[{{ x }}]")
case("namespace_in_loop", "{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == 'user' %}"
     "{% set ns.found = true %}{% set ns.n = ns.n + 1 %}{% endif %}{% endfor %}{{ ns.found }} {{ ns.n }}")
case("namespace_last_index", "{% set ns = namespace(last=-1) %}{% for m in messages %}{% if m.role == 'user' %}"
     "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}{{ ns.last }}")
case("namespace_from_dict", "{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}")
case("namespace_underscore_fails", "{% set ns = namespace() %}{% set ns._x = 1 %}")
case("setattr_non_namespace_fails", "{% set x = {} %}{% set x.a = 1 %}")
case("namespace_print", "{% set ns = namespace(a=1) %}{{ ns }}")

# -- macros, call, filter blocks ------------------------------------------------------------------
case("macro_basic", "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', '?') }} {{ greet(punct='.', name='Cy') }}")
case("macro_missing_arg_undefined", "{% macro m(a, b) %}[{{ a }}][{{ b }}]{{ b is defined }}{% endmacro %}{{ m(1) }}")
case("macro_too_many_args_fails", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }}")
case("macro_unknown_kwarg_fails", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(b=2) }}")
case("macro_sees_outer", "{% set x = 'outer' %}{% macro m() %}{{ x }}{% endmacro %}{{ m() }}")
case("macro_late_binding", "{% set x = 1 %}{% macro m() %}{{ x }}{% endmacro %}{% set x = 2 %}{{ m() }}")
case("macro_recursive", "{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1)|int }}{% endif %}{% endmacro %}{{ fact(5) }}")
case("macro_render_tool", "{% macro render(t) %}{{ t.function.name }}({{ t.function.parameters.properties|list|join(', ') }}){% endmacro %}"
     "{% for t in tools %}{{ render(t) }};{% endfor %}")
case("macro_result_is_string", "{% macro m() %}ab{% endmacro %}{{ m()|length }} {{ m() ~ 'c' }} {{ m() is string }}")
case("macro_whitespace", "{% macro m(x) %}\n  <{{ x }}>\n{% endmacro %}[{{ m(1) }}]")
case("macro_set_is_local", "{% set y = 'g' %}{% macro m() %}{% set y = 'l' %}{{ y }}{% endmacro %}{{ m() }}{{ y }}")
case("macro_varargs_kwargs", "{% macro m(a) %}{{ a }}|{{ varargs }}|{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, x=4, y='z') }} {{ m(0) }}")
case("macro_kwargs_only", "{% macro m() %}{% for k, v in kwargs|dictsort %}{{ k }}={{ v }};{% endfor %}{% endmacro %}{{ m(b=2, a=1) }}")
case("macro_multiple_values_fails", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, a=2) }}")
case("macro_caller_kwarg", "{% macro m() %}[{{ caller() }}]{% endmacro %}{% call m() %}in{% endcall %}")
case("macro_nested_macros", "{% macro inner(x) %}<{{ x }}>{% endmacro %}{% macro outer(l) %}{% for i in l %}{{ inner(i) }}{% endfor %}{% endmacro %}{{ outer([1, 2]) }}")
case("macro_default_uses_param", "{% macro m(a, b=a ~ '!') %}{{ b }}{% endmacro %}{{ m('x') }}")
case("with_block", "{% set a = 'out' %}{% with a = 'in', b = a %}{{ a }} {{ b }}{% endwith %} {{ a }} [{{ b }}]")
case("with_empty", "{% with %}x{% set y = 1 %}{{ y }}{% endwith %}[{{ y }}]")
case("call_block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}inner {{ bos_token }}{% endcall %}")
case("call_block_args", "{% macro each(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}"
     "{% call(x) each([1, 2]) %}[{{ x }}]{% endcall %}")
case("filter_block", "{% filter upper %}hello {{ 'world' }}{% endfilter %}|{% filter replace('a', 'o')|trim %}  banana  {% endfilter %}")
case("generation_block", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.role }}{% endif %}|{% endfor %}")

# -- globals from transformers -----------------------------------------------------------------------
case("raise_exception", "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}")
case("raise_exception_concat", "{{ raise_exception('bad role: ' ~ messages[0].role) }}")
case("strftime_now", "{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d %H:%M:%S') }}|{{ strftime_now('%A %B') }}",
     {"__xd_now": 1732000000})
case("strftime_llama", "{% set date_string = strftime_now('%d %b %Y') %}Today Date: {{ date_string }}", {"__xd_now": 1700000000})

# -- errors -------------------------------------------------------------------------------------------
case("syntax_unclosed_if", "{% if true %}x")
case("syntax_unclosed_var", "{{ x ")
case("syntax_unclosed_comment", "{# x ")
case("syntax_unknown_tag", "{% frobnicate %}")
case("syntax_bad_expr", "{{ 1 + }}")
case("syntax_endfor_without_for", "{% endfor %}")
case("syntax_mismatched_end", "{% if true %}{% endfor %}")
case("syntax_unbalanced_paren", "{{ (1 }}")
case("syntax_bad_char", "{{ 1 $ 2 }}")
case("syntax_unterminated_string", "{{ 'abc }}")
case("syntax_break_outside_loop", "{% break %}")
case("syntax_chained_is", "{{ 1 is number is boolean }}")
case("runtime_type_error_add", "{{ 1 + 'a' }}")
case("runtime_div_zero", "{{ 1 / 0 }}")
case("runtime_int_mod_zero", "{{ 1 % 0 }}")
case("runtime_compare_types", "{{ 1 < 'a' }}")
case("runtime_unknown_filter", "{{ 1|nosuchfilter }}")
case("runtime_unknown_test", "{{ 1 is nosuchtest }}")
case("runtime_not_callable", "{{ n() }}")
case("runtime_length_of_int", "{{ 5|length }}")
case("runtime_in_int", "{{ 1 in 5 }}")
case("runtime_int_in_string", "{{ 1 in 'abc' }}")

# -- realistic snippets --------------------------------------------------------------------------------
case("chatml", "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
     "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
case("llama3_like", "{{- bos_token }}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n"
     "    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n"
     "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n"
     "{%- for message in messages %}\n    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
     "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n")
case("qwen_tools_like", "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0].role == 'system' %}\n"
     "        {{- messages[0].content + '\\n\\n' }}\n    {%- endif %}\n    {{- \"# Tools\\n\\n<tools>\" }}\n"
     "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
     "    {{- \"\\n</tools><|im_end|>\\n\" }}\n{%- endif %}\n{%- for message in messages %}\n"
     "    {%- if message.role == \"user\" or (message.role == \"system\" and not loop.first) %}\n"
     "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
     "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
     "    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")
case("tool_calls_render", "{% for m in msgs %}{% if m.tool_calls %}{% for tc in m.tool_calls %}{% if tc.function is defined %}{% set tc = tc.function %}{% endif %}"
     "<tool_call>{\"name\": \"{{ tc.name }}\", \"arguments\": {{ tc.arguments|tojson if tc.arguments is not string else tc.arguments }}}</tool_call>{% endfor %}{% endif %}{% endfor %}",
     {"msgs": [{"role": "assistant", "content": None, "tool_calls": [
         {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}},
         {"id": "c2", "type": "function", "function": {"name": "noop", "arguments": "{}"}}]}]})
case("reasoning_split", "{% set content = m %}{% if '</think>' in content %}{% set r = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
     "{% set content = content.split('</think>')[-1].lstrip('\\n') %}{% endif %}[{{ r }}][{{ content }}]",
     {"m": "<think>\nstep one\n</think>\n\nThe answer."})
case("mistral_alternation", "{%- for message in messages[1:] %}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
     "{{- raise_exception('roles must alternate') }}{%- endif %}{{ message.role[0] }}{%- endfor %}")
case("deep_nesting_ok", "{{ ((((((((((1))))))))))+((((((((((2)))))))))) }}")
case("long_concat_chain", "{{ " + " ~ ".join("'%d'" % i for i in range(100)) + " }}")
case("long_plus_chain", "{{ " + " + ".join(str(i) for i in range(300)) + " }}")
case("whitespace_heavy", "{%- for m in messages -%}\n  {%- if loop.first -%}\n    [first]\n  {%- endif -%}\n  {{ m.role }}\n{%- endfor -%}\n")
case("empty_template", "")
case("only_whitespace_tags", "  {%- if true -%}  {%- endif -%}  ")


def render(template, ctx):
    t = _compile_jinja_template(template)
    ctx = dict(ctx)
    if "__xd_now" in ctx:
        now = datetime.datetime.fromtimestamp(ctx["__xd_now"], datetime.timezone.utc)
        ctx["strftime_now"] = lambda fmt: now.strftime(fmt)
    return t.render(**ctx)


def main():
    cases = []
    names = set()
    for name, template, ctx in C:
        assert name not in names, name
        names.add(name)
        entry = {"name": name, "template": template, "context": ctx}
        try:
            _compile_jinja_template(template)
        except Exception as e:  # a syntax error: compile time
            entry["error"] = type(e).__name__
            entry["error_message"] = str(e)
            entry["parse_error"] = True
            cases.append(entry)
            continue
        try:
            entry["output"] = render(template, ctx)
        except Exception as e:
            entry["error"] = type(e).__name__
            entry["error_message"] = str(e)
            entry["parse_error"] = False
        cases.append(entry)
    doc = {"generator": "tools/golden/make_jinja_cases.py",
           "versions": {"jinja2": jinja2.__version__, "transformers": transformers.__version__,
                        "python": sys.version.split()[0]},
           "cases": cases}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n_err = sum(1 for c in cases if "error" in c)
    print(f"{len(cases)} cases ({n_err} errors) -> {os.path.relpath(OUT)}")


if __name__ == "__main__":
    main()
