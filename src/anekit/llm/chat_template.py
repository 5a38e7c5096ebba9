"""Rendering a model's chat template (Jinja) the way transformers renders it.

The environment follows transformers' `apply_chat_template` (documented in its chat templating guide,
https://huggingface.co/docs/transformers/main/en/chat_templating_writing, and
`utils/chat_template_utils.py`): an immutable sandboxed Jinja environment (templates come with
downloaded models: they are untrusted code) with ``trim_blocks`` and ``lstrip_blocks``, the
``loopcontrols`` extension (``break``/``continue``), the ``{% generation %}`` block (rendered as its
body), a ``tojson`` filter that does not escape HTML (``json.dumps`` with ``ensure_ascii=False``,
optional ``indent``/``separators``/``sort_keys``), the globals ``raise_exception(message)`` and
``strftime_now(format)``, and ``namespace`` refusing underscore-prefixed names. The variables:
``messages``, ``tools``, ``documents``, ``add_generation_prompt``, the tokenizer's special tokens
(``bos_token``, ``eos_token``, ...) and any extra keyword (``enable_thinking=False``), extras winning
over special tokens.

``tokenizer_config.json``'s ``chat_template`` is a string, or a list of ``{"name", "template"}``
(several named templates: ``default`` is used, ``tool_use`` when tools are given). A template that
fails to parse or raises while rendering is an `LLMError` naming the template and the reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache

from .errors import LLMError

__all__ = ["render_chat", "select_template", "ChatTemplateError"]


class ChatTemplateError(LLMError):
    """A chat template that cannot be parsed or that refused the conversation."""


def select_template(template, name: str | None = None, tools=None) -> str:
    """The template string to render: `template` itself, or from several named templates (a list of
    {"name", "template"} as in tokenizer_config.json, or a dict) the one called `name`, else
    "tool_use" when tools are given, else "default"."""
    if isinstance(template, str):
        return template
    named: dict[str, str] = {}
    if isinstance(template, Mapping):
        named = {str(k): v for k, v in template.items()}
    elif isinstance(template, Sequence):
        for item in template:
            if not isinstance(item, Mapping) or "name" not in item or "template" not in item:
                raise ChatTemplateError(
                    "chat_template is a list but an entry is not {'name': ..., 'template': ...}"
                )
            named[str(item["name"])] = item["template"]
    else:
        raise ChatTemplateError(
            f"chat_template must be a string or a list of named templates, not {template!r}"
        )
    if name is not None:
        if name not in named:
            raise ChatTemplateError(
                f"no chat template named {name!r}; the model has {', '.join(sorted(named))}"
            )
        chosen = named[name]
    elif tools is not None and "tool_use" in named:
        chosen = named["tool_use"]
    elif "default" in named:
        chosen = named["default"]
    else:
        raise ChatTemplateError(
            f"the model has several chat templates ({', '.join(sorted(named))}) and none is 'default'; "
            "name one"
        )
    if not isinstance(chosen, str):
        raise ChatTemplateError(f"chat template {name or 'default'!r} is not a string")
    return chosen


def _raise_exception(message):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment():
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace

    class _Namespace(Namespace):
        """`namespace()` without underscore-prefixed attributes (no reaching into Python internals)."""

        def __init__(*args, **kwargs):  # Namespace's own signature trick: `self` may be a keyword
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for key in attrs:
                _Namespace._check(key)
            Namespace.__init__(self, attrs)

        def __setitem__(self, key, value):
            _Namespace._check(key)
            Namespace.__setitem__(self, key, value)

        @staticmethod
        def _check(key):
            if isinstance(key, str) and key.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a chat template may not set {key!r} on a namespace")

    class _Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}``: transformers marks the assistant's tokens with it
        (for training masks); rendering it is rendering its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    return env


@lru_cache(maxsize=16)
def _compile(source: str):
    import jinja2

    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the chat template does not parse: line {e.lineno}: {e.message}") from None


def _plain(value):
    """Messages and variables as plain JSON-like data, as transformers hands them to the template
    (`_plain_template_data`): exact str/int/float/bool/None, dicts, lists and tuples rebuilt, NumPy
    scalars as Python numbers, anything else an inert "<TypeName>" placeholder."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _plain(value.item())
    return f"<{type(value).__name__}>"


#: Names a message's reasoning may come under; transformers 5 fills ``reasoning_content`` (what chat
#: templates read) and ``thinking`` from whichever is present (`_alias_reasoning_fields`)
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _with_reasoning_aliases(message: dict) -> dict:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def render_chat(
    template,
    messages: Sequence[Mapping],
    *,
    special_tokens: Mapping[str, str] | None = None,
    add_generation_prompt: bool = True,
    tools: Sequence[Mapping] | None = None,
    documents: Sequence[Mapping] | None = None,
    template_name: str | None = None,
    **kwargs,
) -> str:
    """The text `template` renders for `messages` (a list of {"role", "content", ...} dicts).

    Messages with None values lose those keys first (an API's ``content: null``), as transformers
    does. `kwargs` are extra template variables (``enable_thinking=False``)."""
    import jinja2

    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise ChatTemplateError("messages must be a list of {'role': ..., 'content': ...} objects")
    if not messages:
        raise ChatTemplateError("the conversation is empty: give at least one message")
    chat = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ChatTemplateError(f"message {i} is {type(m).__name__}, not an object with role and content")
        chat.append(_with_reasoning_aliases({k: v for k, v in _plain(m).items() if v is not None}))
    source = select_template(template, template_name, tools)
    compiled = _compile(source)
    variables = {**dict(special_tokens or {}), **_plain(kwargs)}
    try:
        return compiled.render(
            messages=chat,
            tools=_plain(tools),
            documents=_plain(documents),
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the chat template refused the conversation: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError) as e:
        raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from None
