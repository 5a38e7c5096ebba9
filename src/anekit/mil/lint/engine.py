"""The lint engine: `Rule` (one ANE constraint and the fact it rests on), `Finding` (one violation),
the registry the rule modules fill through `_rule`, and `lint()`, which runs the registered checks over a
program and returns the findings in program order. The rules themselves live in the theme modules of
this package (see its docstring).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .program import _Fn, _Hit

__all__ = ["CHIP_FAMILIES", "FACTS_DOC", "RULES", "SEVERITIES", "Finding", "Rule", "lint", "normalize_chip"]

#: Chip families the rules know about. Variants (Pro, Max, Ultra) share their family's rules.
CHIP_FAMILIES: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5")
#: Severities, most serious first.
SEVERITIES: tuple[str, ...] = ("error", "warning", "info")


@dataclass(frozen=True)
class Rule:
    """One ANE constraint: a stable id, how serious a violation is, and where the fact comes from."""

    id: str  #: stable slug, e.g. "inner-dim-not-multiple-of-32"
    severity: str  #: "error", "warning" or "info"
    title: str  #: one line saying what the rule checks
    source: str  #: the fact's section in the repository docs, e.g. "docs/ane-facts.md#rsqrt-inverse"
    chips: tuple[str, ...] | None  #: chip families it applies to; None = all
    url: str | None = None  #: the fact's main public source (None only where none could be found)


@dataclass(frozen=True)
class Finding:
    """One violation of a rule: what is wrong, where, what to do, and the source of the fact."""

    rule: str
    severity: str
    message: str
    op: str | None
    var: str | None
    source: str
    function: str | None = None  #: the function it was found in; None for program-wide findings
    url: str | None = None  #: the rule's main public source

    @property
    def citation(self) -> str:
        """Where the fact is written down: the docs section, and the public source where there is one."""
        return f"{self.source}; {self.url}" if self.url else self.source

    def __str__(self) -> str:
        where = []
        if self.op is not None:
            where.append(f"op '{self.op}'")
        if self.var is not None and self.var != self.op:
            where.append(f"var '{self.var}'")
        location = f" at {', '.join(where)}" if where else ""
        if self.function is not None and (self.function != "main" or not where):
            location += f" in function '{self.function}'"
        return f"{self.severity} {self.rule}{location}: {self.message} [{self.citation}]"

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "function": self.function,
            "op": self.op,
            "var": self.var,
            "source": self.source,
            "url": self.url,
        }


#: The document holding every fact a rule rests on, one section (anchor) per fact.
FACTS_DOC = "docs/ane-facts.md"


RULES: dict[str, Rule] = {}

_CHIP_RE = re.compile(r"^(?:apple[\s_-]*)?m(\d+)(?:[\s_-]*(?:pro|max|ultra))?$")


def normalize_chip(chip: str) -> str:
    """The family ("m1".."m5") of a chip name such as "m1", "m1-pro", "M3 Max" or "Apple M4"."""
    match = _CHIP_RE.match(chip.strip().lower())
    family = f"m{match.group(1)}" if match else None
    if family not in CHIP_FAMILIES:
        raise ValueError(
            f"unknown chip {chip!r}; known families: {', '.join(CHIP_FAMILIES)} "
            "(variants such as 'm3-pro' or 'M4 Max' map to their family)"
        )
    return family


_Check = Callable[[_Fn], Iterable[_Hit]]
_ProgramCheck = Callable[[list[_Fn]], Iterable[_Hit]]
#: rule id -> (check, scope): a function check takes one `_Fn`, a program check the list of them.
_CHECKS: dict[str, tuple[_Check | _ProgramCheck, str]] = {}


def _rule(
    id: str,
    severity: str,
    title: str,
    *,
    fact: str,
    url: str | None,
    chips: tuple[str, ...] | None = None,
    scope: str = "function",
) -> Callable[[Callable], Callable]:
    """Register a check function under a Rule. `fact` is the anchor of the fact's section in
    FACTS_DOC, `url` its main public source; `scope` is "function" or "program"."""
    assert severity in SEVERITIES and id not in RULES

    def register(check: Callable) -> Callable:
        RULES[id] = Rule(id, severity, title, f"{FACTS_DOC}#{fact}", chips, url)
        _CHECKS[id] = (check, scope)
        return check

    return register


def lint(program, chip: str | None = None, function: str | None = None) -> list[Finding]:
    """Check a coremltools MIL Program against the known ANE constraints.

    `chip` ("m1", "m1-pro", "M3 Max", ...) selects the rules of one chip family, with their own
    severities. With `chip=None` every rule runs, and a chip-specific rule reports at most a warning
    whose message names the chips it affects. `function` restricts the check to one function.
    Findings come in program order (function, then op), rules in registration order within an op.
    The program is only read, never modified.
    """
    family = normalize_chip(chip) if chip is not None else None
    fns = _functions(program, function)
    keyed: list[tuple[tuple[int, int], Finding]] = []
    for rule_id, (check, scope) in _CHECKS.items():
        rule = RULES[rule_id]
        if not _applies(rule, family):
            continue
        severity, note = _severity_and_note(rule, family)
        for fn_name, fn_index, hits in _runs(check, scope, fns):
            for hit in hits:
                finding = Finding(
                    rule.id, severity, hit.message + note, hit.op, hit.var, rule.source, fn_name, rule.url
                )
                keyed.append(((fn_index, hit.pos), finding))
    keyed.sort(key=lambda item: item[0])  # stable: rules keep their order within one op
    return [finding for _, finding in keyed]


def _functions(program, function: str | None) -> list[_Fn]:
    """The functions to check (all, or the one named), each flattened once and keeping its index in
    the program, which orders the findings."""
    names = list(program.functions)
    if function is not None and function not in program.functions:
        raise ValueError(f"no function {function!r} in the program; it has: {', '.join(names)}")
    selected = [function] if function is not None else names
    return [_Fn(name, program.functions[name], names.index(name)) for name in selected]


def _applies(rule: Rule, family: str | None) -> bool:
    """Whether a rule runs for the chip family asked for (every rule runs when none is)."""
    return family is None or rule.chips is None or family in rule.chips


def _severity_and_note(rule: Rule, family: str | None) -> tuple[str, str]:
    """The severity a finding of `rule` reports, and the note appended to its message. With no chip
    given, a chip-specific rule reports at most a warning and names the chips it affects."""
    if family is not None or rule.chips is None:
        return rule.severity, ""
    severity = "warning" if rule.severity == "error" else rule.severity
    chips = ", ".join(c.upper() for c in rule.chips)
    return severity, f" (reported for {chips} only; pass chip= to check one)"


def _runs(check, scope: str, fns: list[_Fn]) -> list[tuple[str | None, int, Iterable[_Hit]]]:
    """(function name, function index, hits) for each run of a check: once over the whole program
    (no function; placed first), or once per function."""
    if scope == "program":
        return [(None, -1, check(fns))]
    return [(fn.name, fn.index, check(fn)) for fn in fns]
