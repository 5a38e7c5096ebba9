"""ANE-compatibility checks for MIL programs ("lint").

This package is the one place where anekit states what the Neural Engine accepts (DESIGN.md: "an ANE
constraint lives once, in the lint rules, with the source of the fact"). Each rule is a small check
function registered in `RULES` with the fact it rests on: a section of `docs/ane-facts.md` (the facts
in our own words, each with its public sources) and the main public source itself, so a user of the
installed package can check a finding without this repository. Most of those facts are community
reports, not Apple documentation: severities say how firm the evidence is.

- ``error``: known not to compile, or known to give wrong results.
- ``warning``: risky (reported failures), slow, or reported on some chips only.
- ``info``: a hint about performance or numerics.

`lint` only reads the program; it never modifies it.

Layout: `engine` holds `Rule`, `Finding`, the registry (`RULES`, the `_rule` decorator) and `lint()`;
`program` reads a program for the checks (`_Fn`, one function flattened once); each other module holds
the rules of one theme, with the thresholds they use. A new rule goes into the module of its theme
with `@_rule(...)`; a new theme is a module imported below.
"""

from __future__ import annotations

from .engine import CHIP_FAMILIES, FACTS_DOC, RULES, SEVERITIES, Finding, Rule, lint, normalize_chip

# The rule modules register their rules when imported, and findings on one op come in registration
# order: keep this order (it is the order of the findings and of RULES).
# isort: off
from . import surfaces  # noqa: E402, F401
from . import shapes  # noqa: E402, F401
from . import ops  # noqa: E402, F401
from . import conv_matmul  # noqa: E402, F401
from . import precision  # noqa: E402, F401
from . import weights  # noqa: E402, F401
from . import chips  # noqa: E402, F401
from . import whole_function  # noqa: E402, F401
# isort: on

__all__ = ["CHIP_FAMILIES", "FACTS_DOC", "RULES", "SEVERITIES", "Finding", "Rule", "lint", "normalize_chip"]
