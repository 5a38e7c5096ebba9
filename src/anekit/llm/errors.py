"""Errors of `anekit.llm`: every refusal a user can cause while loading or running a language model."""

from __future__ import annotations

from ..errors import AnekitError


class LLMError(AnekitError, ValueError):
    """A model, prompt, option or template `anekit.llm` cannot use; the message says which and what to do."""


class OptionError(LLMError):
    """A sampling option out of range. `option` is its Python name (``top_p``), `rule` what it must be,
    so a command line can name its own flag (``--top-p``) and a server its request field."""

    def __init__(self, option: str, rule: str, value: object):
        self.option, self.rule, self.value = option, rule, value
        super().__init__(f"{option} {rule}, got {value!r}")

    def for_flag(self) -> str:
        """The message with the command-line spelling of the option (``--top-p must be ...``)."""
        return f"--{self.option.replace('_', '-')} {self.rule}, got {self.value!r}"


class ContextFull(LLMError):
    """More tokens than the model's context (the KV cache's `max_len`) holds."""

    def __init__(self, message: str, *, tokens: int | None = None, limit: int | None = None):
        self.tokens, self.limit = tokens, limit
        super().__init__(message)
