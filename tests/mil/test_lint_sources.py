"""Every lint rule cites a fact a user can read: a section of the repository's docs that exists, and
(where one is known) a public URL that the section itself gives as its source."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from anekit._coreml import ct, mb, types
from anekit.mil.lint import FACTS_DOC, RULES, Finding

lint_mod = importlib.import_module("anekit.mil.lint")
ROOT = Path(__file__).parents[2]
ANCHOR = re.compile(r'<a id="([a-z0-9-]+)"></a>')
URL = re.compile(r"https?://[^\s)>\]]+")


def _sections(path: Path) -> dict[str, str]:
    """anchor -> the text of its section (up to the next anchor or level-2 heading)."""
    text = path.read_text(encoding="utf-8")
    marks = list(ANCHOR.finditer(text))
    out = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[m.end() : end]
        out[m.group(1)] = body.split("\n## ", 1)[0]
    return out


SECTIONS = _sections(ROOT / FACTS_DOC)


def _resolves(source: str) -> bool:
    if re.fullmatch(r"https?://\S+", source):
        return True
    path, sep, anchor = source.partition("#")
    if not sep or not (ROOT / path).is_file():
        return False
    return anchor in _sections(ROOT / path)


@pytest.mark.parametrize("rule_id", sorted(RULES))
def test_rule_source_resolves_to_a_doc_section_or_a_url(rule_id):
    rule = RULES[rule_id]
    assert _resolves(rule.source), (
        f"{rule_id} cites {rule.source!r}, which is neither a docs section nor a URL"
    )
    assert "shared/reference" not in rule.source and "../" not in rule.source


@pytest.mark.parametrize("rule_id", sorted(RULES))
def test_rule_url_is_public_and_given_by_its_section(rule_id):
    rule = RULES[rule_id]
    section = SECTIONS[rule.source.partition("#")[2]]
    if rule.url is None:  # allowed only where the section says plainly that no public source exists
        assert "none public" in section, f"{rule_id} has no URL and its section does not say why"
        return
    assert re.fullmatch(r"https://\S+", rule.url), rule.url
    assert rule.url in URL.findall(section), f"{rule_id}: {rule.url} is not among its section's sources"


def test_each_section_names_exactly_the_rules_that_cite_it():
    citing: dict[str, set[str]] = {}
    for rule in RULES.values():
        citing.setdefault(rule.source.partition("#")[2], set()).add(rule.id)
    for anchor, body in SECTIONS.items():
        listed = re.search(r"^Rules: (.+)$", body, re.M)
        assert listed, f"section {anchor} lists no rules"
        named = set(re.findall(r"`([a-z0-9-]+)`", listed.group(1)))
        assert named == citing.get(anchor, set()), anchor
        assert URL.search(body) or "none public" in body, f"section {anchor} gives no public source"


def test_the_bug_report_of_the_issue_is_gone():
    """The old sources cited `../shared/reference/*.md §...`, files users of the package never had."""
    for rule in RULES.values():
        assert not re.search(r"(ane-private-api|mil-text|landscape)\.md", rule.source), rule.id


def test_findings_carry_and_print_the_public_source():
    f = Finding("x", "error", "msg", "op", None, "docs/ane-facts.md#rsqrt-inverse", "main", "https://e.org/a")
    assert f.citation == "docs/ane-facts.md#rsqrt-inverse; https://e.org/a"
    assert str(f).endswith("[docs/ane-facts.md#rsqrt-inverse; https://e.org/a]")
    assert f.to_json()["url"] == "https://e.org/a" and f.to_json()["source"].endswith("#rsqrt-inverse")

    # every registered rule hands its URL on to its findings
    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 64, 1, 64), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def program(x):
        return mb.relu(x=mb.rsqrt(x=x))

    (finding,) = [f for f in lint_mod.lint(program) if f.rule == "rsqrt-not-compiled"]
    assert finding.url == RULES["rsqrt-not-compiled"].url and finding.url in str(finding)
