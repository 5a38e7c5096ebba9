"""`anekit.llm.chat_template` renders exactly what transformers' `apply_chat_template` renders.

The templates here are written for these tests in the styles models use (ChatML with a thinking
switch, Llama-3-style headers with BOS, Mistral-style [INST] with raise_exception, one leaning on
namespace/loop controls/tojson); none is copied from a model repository.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from anekit.llm.chat_template import ChatTemplateError, render_chat, select_template
from anekit.llm.errors import LLMError

transformers = pytest.importorskip("transformers")

CHATML = (
    "{%- if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a careful assistant.<|im_end|>\n"
    "{%- endif %}\n"
    "{% for message in messages %}\n"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] | trim }}<|im_end|>\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}\n"
    "<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}\n"
    "<think>\n\n</think>\n\n"
    "{% endif %}\n"
    "{% endif %}"
)

HEADERS = (
    "{{- bos_token }}\n"
    "{%- set sys = 'Knowledge cutoff: none' %}\n"
    "{%- if messages[0].role == 'system' %}\n"
    "    {%- set sys = messages[0].content %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- endif %}\n"
    "<|start_header_id|>system<|end_header_id|>\n\n{{ sys }}<|eot_id|>\n"
    "{%- for m in messages %}\n"
    "    {{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

INST = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}"
    "{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}"
    "{% endfor %}"
)

LOOPS = (
    "{%- set ns = namespace(last_user=-1, count=0) %}\n"
    "{%- for m in messages %}\n"
    "  {%- if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}\n"
    "{%- endfor %}\n"
    "{%- if tools %}\n"
    "<tools>{% for t in tools %}{{ t | tojson }}{% if not loop.last %},{% endif %}{% endfor %}</tools>\n"
    "{%- endif %}\n"
    "{%- for m in messages %}\n"
    "  {%- if m.role == 'tool' %}{% continue %}{% endif %}\n"
    "  {%- set ns.count = ns.count + 1 %}\n"
    "  [{{ ns.count }}] {{ m.role }}{% if loop.index0 == ns.last_user %} (last){% endif %}: {{ m.content }}\n"
    "  {%- if m.content == 'STOP' %}{% break %}{% endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n>{% endif %}"
)

SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

CHATS = {
    "one": [{"role": "user", "content": "Hello there"}],
    "system": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  What is 2+2?  "},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": 'And 3+3? ünïcödé "quotes" <tags>'},
    ],
    "turns": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ],
}


def _hf(template):
    from tokenizers import Tokenizer, models

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.chat_template = template
    return tok


def _theirs(template, messages, **kw):
    return _hf(template).apply_chat_template(messages, tokenize=False, **kw)


@pytest.mark.parametrize("template", [CHATML, HEADERS, LOOPS], ids=["chatml", "headers", "loops"])
@pytest.mark.parametrize("chat", sorted(CHATS))
@pytest.mark.parametrize("gen", [True, False])
def test_rendering_matches_transformers(template, chat, gen):
    ours = render_chat(template, CHATS[chat], special_tokens=SPECIALS, add_generation_prompt=gen)
    assert ours == _theirs(template, CHATS[chat], add_generation_prompt=gen)


@pytest.mark.parametrize("chat", ["one", "turns"])
def test_inst_style_matches_transformers(chat):
    ours = render_chat(INST, CHATS[chat], special_tokens=SPECIALS)
    assert ours == _theirs(INST, CHATS[chat], add_generation_prompt=True)
    assert ours.startswith("<s>[INST] ")


@pytest.mark.parametrize("flag", [True, False])
def test_extra_variables_reach_the_template_as_in_transformers(flag):
    ours = render_chat(CHATML, CHATS["one"], special_tokens=SPECIALS, enable_thinking=flag)
    assert ours == _theirs(CHATML, CHATS["one"], add_generation_prompt=True, enable_thinking=flag)
    assert ("<think>" in ours) is (not flag)


def test_extra_variables_win_over_special_tokens_as_in_transformers():
    ours = render_chat(INST, CHATS["one"], special_tokens=SPECIALS, bos_token="[BOS]")
    assert ours == _theirs(INST, CHATS["one"], add_generation_prompt=True, bos_token="[BOS]")
    assert ours.startswith("[BOS]")


def test_tools_and_tojson_match_transformers():
    tools = [
        {"type": "function", "function": {"name": "weather", "description": 'Météo <now> & "later"'}},
        {"type": "function", "function": {"name": "time", "parameters": {"tz": {"type": "string"}}}},
    ]
    chat = [
        {"role": "user", "content": "x"},
        {"role": "tool", "content": "ignored"},
        {"role": "user", "content": "STOP"},
        {"role": "assistant", "content": "never shown"},
    ]
    ours = render_chat(LOOPS, chat, special_tokens=SPECIALS, tools=tools)
    assert ours == _theirs(LOOPS, chat, add_generation_prompt=True, tools=tools)
    assert "never shown" not in ours and "Météo <now> &" in ours  # no HTML escaping, no \\u escapes


def test_none_values_are_dropped_as_in_transformers():
    t = "{% for m in messages %}{{ m.role }}={{ m.content if m.content is defined else 'absent' }};{% endfor %}"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]
    assert render_chat(t, chat) == _theirs(t, chat) == "user=hi;assistant=absent;"


@pytest.mark.parametrize("field", ["reasoning_content", "thinking", "reasoning"])
def test_reasoning_under_any_name_reaches_the_template_as_in_transformers(field):
    t = (
        "{% for m in messages %}{{ m.role }}:{{ m.content }}|rc={{ m.reasoning_content }}"
        "|th={{ m.thinking }};{% endfor %}"
    )
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", field: "because"}]
    assert render_chat(t, chat) == _theirs(t, chat)
    assert "rc=because|th=because" in render_chat(t, chat)


def test_values_the_template_sees_are_plain_data_as_in_transformers():
    import numpy as np

    t = "{% for m in messages %}{{ m.content }}/{{ m.n }}/{{ m.t }}/{{ m.o }};{% endfor %}"
    chat = [{"role": "user", "content": "x", "n": np.int64(3), "t": ("a", 1), "o": object()}]
    assert render_chat(t, chat) == _theirs(t, chat) == "x/3/('a', 1)/<object>;"


def test_named_templates_pick_default_or_tool_use_as_transformers_does():
    listed = [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": LOOPS}]
    tools = [{"type": "function", "function": {"name": "f"}}]
    tok = _hf({"default": CHATML, "tool_use": LOOPS})
    chat = CHATS["system"]
    assert render_chat(listed, chat, special_tokens=SPECIALS) == tok.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )
    assert render_chat(listed, chat, special_tokens=SPECIALS, tools=tools) == tok.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True, tools=tools
    )
    assert select_template(listed, "tool_use") == LOOPS
    with pytest.raises(ChatTemplateError, match="no chat template named 'nope'"):
        select_template(listed, "nope")
    with pytest.raises(ChatTemplateError, match="none is 'default'"):
        select_template([{"name": "a", "template": "x"}])


def test_generation_blocks_render_their_body_as_in_transformers():
    t = (
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}<a>{{ m.content }}</a>"
        "{% endgeneration %}{% else %}<u>{{ m.content }}</u>{% endif %}{% endfor %}"
    )
    chat = CHATS["turns"]
    assert render_chat(t, chat) == _theirs(t, chat) == "<u>a</u><a>b</a><u>c</u>"


def test_strftime_now_is_available():
    out = render_chat("{{ strftime_now('%Y') }}", CHATS["one"])
    assert out in {datetime.now().strftime("%Y"), str(int(datetime.now().strftime("%Y")) - 1)}


def test_raise_exception_is_an_llm_error_with_the_template_s_message():
    bad = [{"role": "assistant", "content": "first"}]
    with pytest.raises(LLMError, match="roles must alternate"):
        render_chat(INST, bad, special_tokens=SPECIALS)
    with pytest.raises(Exception, match="roles must alternate"):  # transformers refuses it too
        _theirs(INST, bad)
    with pytest.raises(ChatTemplateError, match="Only user and assistant"):
        render_chat(INST, [CHATS["turns"][0], {"role": "system", "content": "x"}], special_tokens=SPECIALS)


@pytest.mark.parametrize(
    "template, messages, match",
    [
        ("{% for m in messages %}", CHATS["one"], "does not parse: line 1"),
        ("{{ ''.__class__.__mro__[1] }}", CHATS["one"], "attribute '__class__' of 'str' object is unsafe"),
        ("{{ messages.pop() }}", CHATS["one"], "is unsafe"),  # immutable: no mutating the caller's list
        ("{% set ns = namespace(_x=1) %}", CHATS["one"], "refused|failed"),
        ("{{ 1 / 0 }}", CHATS["one"], "failed: ZeroDivisionError"),
        ("x", [], "conversation is empty"),
        ("x", ["hello"], "message 0 is str"),
        ("x", "hello", "must be a list"),
        (42, CHATS["one"], "must be a string or a list"),
    ],
)
def test_bad_templates_and_conversations_are_llm_errors(template, messages, match):
    with pytest.raises(ChatTemplateError, match=match):
        render_chat(template, messages)


# -- templates that would not end: found by the `model` fuzz target (anekit.fuzz.model_dir) -------------


@pytest.mark.parametrize(
    "template, message",
    [
        # Jinja's sandbox caps one range() at 100000 items, not loops nested over them
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}"
            "{% endfor %}{% endfor %}{% endfor %}",
            "more than .* range items",
        ),
        (
            "{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% for k in r %}"
            "{% endfor %}{% endfor %}{% endfor %}",
            "more than .* range items",
        ),
        ("{% for i in range(99999999999) %}{{ i }}{% endfor %}", "a template may use at most 100000"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recurses without end"),
        ("{{ 'ab' * 10**9 }}", "repeats a str past"),
        ("{% for x in [1] * 10**9 %}{% endfor %}", "repeats a list past"),
        ("{{ 7 ** 1000000000 }}", "raises an integer to a huge power"),
        # widths and counts that size an allocation
        ("{{ 'x' | center(10**10) }}", "the center filter.* more than"),
        ("{{ 'x'.rjust(10**10) }}", "str.rjust.* more than"),
        ("{{ '{:>9999999999}'.format(1) }}", "str.format with a width of more than"),
        ("{{ '%09999999999d' | format(1) }}", "the format filter with a width"),
        ("{{ '%09999999999d' % 1 }}", "a % format with a width"),
        ("{{ [1] | batch(10**10, 0) | list }}", "the batch filter"),
        ("{{ lipsum(10**9) }}", "lipsum"),
    ],
)
def test_a_template_that_would_not_end_is_refused(template, message):
    with pytest.raises(ChatTemplateError, match=message):
        render_chat(template, [{"role": "user", "content": "hi"}])


def test_a_template_within_the_limits_still_loops():
    text = render_chat("{% for i in range(3) %}{% for j in range(2) %}{{ i }}{{ j }} {% endfor %}{% endfor %}",
                       [{"role": "user", "content": "hi"}])  # fmt: skip
    assert text == "00 01 10 11 20 21 "
    small = "{{ 'ab'.center(6) }}|{{ '%3d' % 7 }}|{{ '{:>3}'.format(1) }}|{{ [1, 2, 3] | batch(2) | list }}"
    assert render_chat(small, [{"role": "user", "content": "hi"}]) == "  ab  |  7|  1|[[1, 2], [3]]"
