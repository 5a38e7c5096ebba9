"""Running pretrained language models: `load` a Hugging Face model directory or an anekit checkpoint,
then `generate`, `stream`, `chat` or score with `logits`.

    import anekit.llm
    model = anekit.llm.load("path/to/Qwen3-0.6B")
    print(model.chat([{"role": "user", "content": "Hi"}], max_tokens=64).text)

The names below are imported on first use, so `import anekit.llm` stays cheap.
"""

from __future__ import annotations

import importlib

__all__ = [
    "load", "from_params", "LanguageModel", "SamplingOptions", "Completion", "StreamEvent",
    "LLMError", "ContextFull",
]  # fmt: skip

_WHERE = {
    "load": "model",
    "from_params": "model",
    "LanguageModel": "model",
    "Completion": "model",
    "StreamEvent": "model",
    "SamplingOptions": "sampling",
    "LLMError": "errors",
    "ContextFull": "errors",
}


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'anekit.llm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
