"""The real model every end-to-end server test uses: the tiny random Qwen2 model of
tests/llm/conftest.py (`build_tiny_hf`: saved by transformers, byte-level BPE tokenizer, ChatML chat
template), loaded by `anekit.llm.load` on the reference backend (the engine's kernels, emulated)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_fixtures import llm_fixtures as _llm_fixtures


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A Hugging Face model directory: tiny random Qwen2 (2 layers, width 64, vocabulary 384)."""
    directory = tmp_path_factory.mktemp("serve-qwen2")
    _llm_fixtures().build_tiny_hf("qwen2", directory)
    return directory


@pytest.fixture(scope="session")
def load_tiny(tiny_model_dir):
    """`load_tiny()` -> a fresh `LanguageModel` of the tiny model on the reference backend. The server
    and the test's expectations use separate instances: a model decodes one sequence at a time."""
    import anekit.llm

    opened = []

    def load():
        model = anekit.llm.load(tiny_model_dir, backend="reference")
        opened.append(model)
        return model

    yield load
    for model in opened:
        model.close()
