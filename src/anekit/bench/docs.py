"""Regenerate the generated parts of docs/benchmarks.md, so the tables there stay true.

    python -m anekit.bench.docs docs/benchmarks.md          # rewrite the generated blocks in place
    python -m anekit.bench.docs docs/benchmarks.md --check  # exit 1 if they are out of date

Blocks are delimited by `<!-- BEGIN generated: NAME -->` and `<!-- END generated: NAME -->`:
`configs` (every experiment's default and --quick config), `parameters` (the fitted cost-model
parameters) and `calibration` (published vs predicted for every published row).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path


def configs_markdown() -> str:
    """A table per experiment: each config field, its default and its --quick value."""
    from . import EXPERIMENTS

    lines = []
    for name, exp in EXPERIMENTS.items():
        full, quick = exp.config(), exp.config.quick()
        lines += [f"**`{name}`** ({exp.title})", "", "| field | default | --quick |", "|---|---|---|"]
        for f in dataclasses.fields(full):
            a, b = getattr(full, f.name), getattr(quick, f.name)
            lines.append(f"| `{f.name}` | {_v(a)} | {_v(b)} |")
        lines.append("")
    return "\n".join(lines)


def _v(x) -> str:
    if isinstance(x, tuple):
        return ", ".join(_v(v) for v in x)
    return f"{x:g}" if isinstance(x, float) else str(x)


def blocks() -> dict[str, str]:
    from ..perf.calibrate import markdown, params_markdown

    return {"configs": configs_markdown(), "parameters": params_markdown(), "calibration": markdown()}


def render(text: str, generated: dict[str, str]) -> str:
    """`text` with every generated block replaced by its current content."""
    for name, body in generated.items():
        pat = re.compile(
            rf"(<!-- BEGIN generated: {name} -->\n).*?(<!-- END generated: {name} -->)", flags=re.DOTALL
        )
        if not pat.search(text):
            raise ValueError(f"no generated block {name!r} in the document")
        text = pat.sub(lambda m, body=body: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path)
    ap.add_argument("--check", action="store_true", help="only report whether the blocks are up to date")
    args = ap.parse_args(argv)
    old = args.path.read_text(encoding="utf-8")
    new = render(old, blocks())
    if args.check:
        if new != old:
            print(f"{args.path}: out of date; run python -m anekit.bench.docs {args.path}")
            return 1
        print(f"{args.path}: up to date")
        return 0
    args.path.write_text(new, encoding="utf-8")
    print(f"{args.path}: generated blocks rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
