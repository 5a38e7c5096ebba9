"""docs/benchmarks.md's generated tables (configs, fitted parameters, calibration) match the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from anekit.bench import docs

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


@pytest.mark.skipif(not DOC.exists(), reason="docs/ not present (installed package)")
def test_generated_blocks_are_up_to_date():
    text = DOC.read_text(encoding="utf-8")
    assert docs.render(text, docs.blocks()) == text, (
        "docs/benchmarks.md is stale: run python -m anekit.bench.docs docs/benchmarks.md"
    )


def test_render_replaces_only_the_named_block():
    text = "a\n<!-- BEGIN generated: x -->\nold\n<!-- END generated: x -->\nb\n"
    assert (
        docs.render(text, {"x": "new"})
        == "a\n<!-- BEGIN generated: x -->\nnew\n<!-- END generated: x -->\nb\n"
    )
    with pytest.raises(ValueError, match="no generated block"):
        docs.render(text, {"y": "z"})


def test_configs_table_lists_every_experiment_and_quick_values():
    md = docs.configs_markdown()
    for name in ("peak", "chain", "conv-vs-matmul", "sram", "int8", "dispatch", "coreml", "power"):
        assert f"**`{name}`**" in md
    assert "| `depths` | 1, 2, 4, 8, 16, 32, 64, 128 | 1, 32 |" in md
