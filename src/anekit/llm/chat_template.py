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
import re
import threading
import time
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
    chosen = _choose_named(_named_templates(template), name, tools)
    if not isinstance(chosen, str):
        raise ChatTemplateError(f"chat template {name or 'default'!r} is not a string")
    return chosen


def _named_templates(template) -> dict:
    """Several named templates (a dict, or a list of {"name", "template"}) as one dict by name."""
    if isinstance(template, Mapping):
        return {str(k): v for k, v in template.items()}
    if not isinstance(template, Sequence):
        raise ChatTemplateError(
            f"chat_template must be a string or a list of named templates, not {template!r}"
        )
    named = {}
    for item in template:
        if not isinstance(item, Mapping) or "name" not in item or "template" not in item:
            raise ChatTemplateError(
                "chat_template is a list but an entry is not {'name': ..., 'template': ...}"
            )
        named[str(item["name"])] = item["template"]
    return named


def _choose_named(named: dict, name: str | None, tools):
    """The template called `name`, else "tool_use" when tools are given, else "default"."""
    if name is not None:
        if name not in named:
            raise ChatTemplateError(
                f"no chat template named {name!r}; the model has {', '.join(sorted(named))}"
            )
        return named[name]
    if tools is not None and "tool_use" in named:
        return named["tool_use"]
    if "default" in named:
        return named["default"]
    raise ChatTemplateError(
        f"the model has several chat templates ({', '.join(sorted(named))}) and none is 'default'; name one"
    )


#: Limits on one render. A template is code from a downloaded model, and Jinja's sandbox bounds a
#: single range() to 100000 items (`jinja2.sandbox.MAX_RANGE`) but not loops nested over them, a
#: repetition (``'a' * 10**10``), a width (``center(10**10)``, ``'{:>9999999999}'.format``) or the
#: time spent: without these a template loops for hours or exhausts memory while the server's event
#: loop waits on it. Real templates use a few milliseconds, a few thousand items and a few kB of
#: output per message.
MAX_RENDER_SECONDS = 2.0
MAX_LOOP_ITEMS = 2_000_000  #: range() items iterated over in one render, summed over every loop
MAX_REPEAT_ITEMS = 1_000_000  #: the length of a string or list made by ``*``
MAX_OUTPUT_CHARS = 8 << 20  #: the rendered text

_budget = threading.local()


def _charge(items: int = 0) -> None:
    """Count `items` against this render's budget and check its deadline (`MAX_RENDER_SECONDS`)."""
    from jinja2.exceptions import SecurityError

    state = getattr(_budget, "state", None)
    if state is None:  # rendering outside render_chat (tests of the environment): no budget
        return
    state[1] += items
    if state[1] > MAX_LOOP_ITEMS:
        raise SecurityError(f"the template iterates over more than {MAX_LOOP_ITEMS} range items")
    if time.monotonic() > state[0]:
        raise SecurityError(f"the template ran for more than {MAX_RENDER_SECONDS} s")


class _CountedRange(Sequence):
    """range() for templates: iterating charges each item to the render's budget (`_charge`), so
    nested loops over ranges, or over one range kept in a variable, end instead of hanging."""

    def __init__(self, *args):
        from jinja2.exceptions import SecurityError
        from jinja2.sandbox import MAX_RANGE

        self._range = range(*args)
        if len(self._range) > MAX_RANGE:
            raise SecurityError(
                f"range() of {len(self._range)} items; a template may use at most {MAX_RANGE}"
            )

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, i):
        return self._range[i]

    def __iter__(self):
        for i, value in enumerate(self._range):
            if i % 1024 == 0:
                _charge(min(1024, len(self._range) - i))
            yield value

    def __repr__(self) -> str:
        return repr(self._range)


#: a width or count of 7+ digits in a format spec ("{:>99999999}", "%099999999d"): text that large
_HUGE_WIDTH = re.compile(r"(?:%[-+ #0]*|\{[^{}]*:[^{}]*?)(?:\d{7,})")
#: str methods and filters whose numeric arguments size what they allocate
_SIZING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_SIZING_FILTERS = ("center", "indent", "batch", "slice", "wordcount")


def _check_size(what: str, args, kwargs) -> None:
    from jinja2.exceptions import SecurityError

    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_REPEAT_ITEMS:
            raise SecurityError(f"{what}({value}) would make more than {MAX_REPEAT_ITEMS} items")


def _check_format(what: str, spec) -> None:
    from jinja2.exceptions import SecurityError

    if isinstance(spec, str) and _HUGE_WIDTH.search(spec):
        raise SecurityError(f"{what} with a width of more than {MAX_REPEAT_ITEMS} characters")


def _sized_filter(name: str, f):
    def sized(*args, **kwargs):
        _check_size(f"the {name} filter", args[1:], kwargs)
        return f(*args, **kwargs)

    return sized


def _sized_format(f):
    def sized(value, *args, **kwargs):
        _check_format("the format filter", value)
        return f(value, *args, **kwargs)

    return sized


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

    class _Environment(ImmutableSandboxedEnvironment):
        """The sandbox with a time budget checked on every call, attribute and item access, and
        ``*`` refused when it would repeat a string or list past `MAX_REPEAT_ITEMS` (`_charge`)."""

        intercepted_binops = frozenset({"*", "**", "%"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if (
                        isinstance(seq, (str, list, tuple))
                        and isinstance(n, int)
                        and len(seq) * n > MAX_REPEAT_ITEMS
                    ):
                        raise jinja2.exceptions.SecurityError(
                            f"the template repeats a {type(seq).__name__} past {MAX_REPEAT_ITEMS} items"
                        )
            elif operator == "%":
                _check_format("a % format", left)
            elif isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 4096:
                raise jinja2.exceptions.SecurityError("the template raises an integer to a huge power")
            _charge()
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - the sandbox's signature
            _charge()
            bound = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
            owner, name = getattr(bound, "__self__", None), getattr(bound, "__name__", "")
            if isinstance(owner, str):  # a str method: "x".center(10**10), "{:>9999999999}".format(1)
                if name in _SIZING_METHODS:
                    _check_size(f"str.{name}", args, kwargs)
                elif name in ("format", "format_map"):
                    _check_format(f"str.{name}", owner)
            elif name == "generate_lorem_ipsum":  # lipsum(n): n paragraphs
                _check_size("lipsum", args, kwargs)
            return ImmutableSandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs)

        def getattr(self, obj, attribute):
            _charge()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            _charge()
            return super().getitem(obj, argument)

    env = _Environment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = _tojson
    for name in _SIZING_FILTERS:
        env.filters[name] = _sized_filter(name, env.filters[name])
    env.filters["format"] = _sized_format(env.filters["format"])
    env.globals["range"] = _CountedRange
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


#: Subclasses of the JSON scalar types, in the order `_plain` tries them, with how each is made exact.
_SCALAR_CASTS = ((str, str.__str__), (bool, bool), (int, int.__int__), (float, float.__float__))


def _plain(value):
    """Messages and variables as plain JSON-like data, as transformers hands them to the template
    (`_plain_template_data`): exact str/int/float/bool/None, dicts, lists and tuples rebuilt, NumPy
    scalars as Python numbers, anything else an inert "<TypeName>" placeholder."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind, cast in _SCALAR_CASTS:
        if isinstance(value, kind):
            return cast(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if _is_numpy_scalar(value):
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def _is_numpy_scalar(value) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0


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
    _budget.state = [time.monotonic() + MAX_RENDER_SECONDS, 0]
    try:
        parts, size = [], 0
        for part in compiled.generate(
            messages=chat,
            tools=_plain(tools),
            documents=_plain(documents),
            add_generation_prompt=add_generation_prompt,
            **variables,
        ):
            size += len(part)
            if size > MAX_OUTPUT_CHARS:
                raise ChatTemplateError(
                    f"the chat template renders more than {MAX_OUTPUT_CHARS} characters; it is broken or "
                    "hostile: fix tokenizer_config.json's chat_template"
                )
            _charge()
            parts.append(part)
        return "".join(parts)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(
            f"the chat template refused the conversation: {e}"
            + (
                " (rendering limits: MAX_RENDER_SECONDS, MAX_LOOP_ITEMS)"
                if isinstance(e, jinja2.exceptions.SecurityError)
                else ""
            )
        ) from None
    except RecursionError:
        raise ChatTemplateError(
            "the chat template recurses without end (a macro or a recursive loop calls itself too deeply)"
        ) from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ArithmeticError, MemoryError) as e:
        raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from None
    finally:
        _budget.state = None
