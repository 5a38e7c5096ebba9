"""Fitting the cost model's parameters to the published rows: least squares in log space.

Objective: the sum over fitted rows of `(log predicted - log published)^2` (so a 10 % miss costs the
same on a 0.1 ms latency as on a 12 TFLOPS peak), plus one weak prior term per parameter,
`((log value - log prior) / sigma)^2`, which keeps parameters that few rows constrain (M1 Pro has a
single training row) at a published or plausible value instead of wandering off. Every parameter is
positive and fitted as its logarithm. Solver: Levenberg-Marquardt with a forward-difference Jacobian
(NumPy only; the problem has ~30 parameters and ~80 rows).

Fixed, not fitted: the SRAM size (32 MB: published for M4 and M4 Max, ane-private-api.md §4.3, and
assumed for the other chips), the vector rate (no published figure isolates elementwise throughput),
and every ANE bandwidth that anemll-bench published (landscape.md §4).
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass

import numpy as np

from .. import engine_limits
from .chips import CHIPS
from .model import ChipParams, GlobalParams, Params, predict
from .published import Row, published_rows

LN2 = math.log(2.0)
SRAM_MB = engine_limits.SRAM_MB  # assumed for chips without a published value
VECTOR_EFF = 1.0 / 16.0

#: Chips without rows of their own take a sibling's engine parameters: same ANE core count and the same
#: marketed TOPS in the hollance table (landscape.md §6), i.e. the same engine.
SIBLINGS = {"m1": "m1-pro", "m1-ultra": "m1-max", "m3": "m3-pro", "m3-max": "m3-pro"}


@dataclass
class Spec:
    """One fitted parameter: where it goes, its start value and its prior (center, sigma in ln units)."""

    key: tuple[str, ...]
    init: float
    prior: float
    sigma: float
    why: str


def _dispatch_prior(cid: str) -> tuple[float, float, str]:
    chip = CHIPS[cid]
    if chip.dispatch_floor_ms is not None:
        return (
            chip.dispatch_floor_ms,
            math.log(1.5),
            f"prior {chip.dispatch_floor_ms} ms, {chip.source('dispatch_floor_ms')}",
        )
    if cid.startswith("m1"):
        m1 = CHIPS["m1"]
        return (
            m1.dispatch_floor_ms,
            math.log(1.5),
            f"prior {m1.dispatch_floor_ms} ms (M1 family), {m1.source('dispatch_floor_ms')}",
        )
    return 0.1, LN2, "weak prior 0.1 ms (landscape.md §11: published floors 0.07-0.23 ms)"


def _peak_prior(cid: str) -> tuple[float, str]:
    if cid.startswith("m1"):
        return 3.25, "weak prior 3.25 TFLOPS (ane-guide's M1 fit, landscape.md §7e)"
    return 19.0, "weak prior 19 TFLOPS (blog's M4 FP16 peak, ane-private-api.md §4.1)"


def specs(rows: list[Row]) -> list[Spec]:
    """The parameters the rows can inform, with their priors."""
    out = [
        Spec(("g", "onchip_tbs"), 1.6, 1.6, math.log(4.0), "weak prior 1.6 TB/s"),
        Spec(
            ("g", "matmul_eff"), 0.35, 1 / 3, LN2, "prior 1/3 (blog: 1x1 conv ~3x faster than matmul, §4.2)"
        ),
        Spec(("g", "int8_speedup"), 1.88, 1.88, LN2, "prior 1.88 (§4.4)"),
        Spec(("g", "move_gbs"), 100.0, 100.0, math.log(10.0), "very weak prior 100 GB/s"),
        Spec(("g", "sram_alpha"), 0.05, 0.05, math.log(10.0), "very weak prior"),
        Spec(("g", "sram_gamma"), 2.5, 2.0, LN2, "weak prior 2"),
    ]
    for cid in sorted({r.chip for r in rows}):
        chip = CHIPS[cid]
        p, why = _peak_prior(cid)
        out.append(Spec(("chip", cid, "peak_tflops"), p, p, math.log(3.0), why))
        d, s, why = _dispatch_prior(cid)
        out.append(Spec(("chip", cid, "dispatch_ms"), d, d, s, why))
        if chip.ane_bandwidth_gbs is None:
            out.append(
                Spec(
                    ("chip", cid, "bandwidth_gbs"),
                    100.0,
                    100.0,
                    LN2,
                    "weak prior 100 GB/s (published ANE bandwidths span 61-126, landscape.md §4)",
                )
            )
    for setup in sorted({r.setup for r in rows if r.setup}):
        out.append(Spec(("setup", setup), 0.2, 0.1, math.log(4.0), "weak prior 0.1 ms"))
    return out


def build(values: np.ndarray, sp: list[Spec], rows: list[Row], fit_info: dict | None = None) -> Params:
    """Params from a vector of log-values in `sp` order (everything not in `sp` fixed)."""
    v = {s.key: float(math.exp(x)) for s, x in zip(sp, values)}
    g = GlobalParams(
        onchip_tbs=v[("g", "onchip_tbs")],
        matmul_eff=v[("g", "matmul_eff")],
        vector_eff=VECTOR_EFF,
        move_gbs=v[("g", "move_gbs")],
        int8_speedup=v[("g", "int8_speedup")],
        sram_alpha=v[("g", "sram_alpha")],
        sram_gamma=v[("g", "sram_gamma")],
    )
    chips = {}
    for cid in sorted({r.chip for r in rows}):
        chip = CHIPS[cid]
        bw = chip.ane_bandwidth_gbs or v[("chip", cid, "bandwidth_gbs")]
        chips[cid] = ChipParams(
            peak_tflops=v[("chip", cid, "peak_tflops")],
            bandwidth_gbs=bw,
            dispatch_ms=v[("chip", cid, "dispatch_ms")],
            sram_mb=chip.sram_mb or SRAM_MB,
        )
    setups = {k[1]: val for k, val in v.items() if k[0] == "setup"}
    return Params(g, chips, setups, fit_info or {})


def predicted_value(row: Row, params: Params) -> float:
    """The row's quantity as the model predicts it (same unit as `row.value`)."""
    t = sum(predict(cost, row.chip, params, setup=row.setup).time_ms * n for cost, n in row.kernels)
    return t if row.is_time else row.flops / (t * 1e9)


def _residuals(x: np.ndarray, sp: list[Spec], rows: list[Row]) -> np.ndarray:
    params = build(x, sp, rows)
    r = [math.log(predicted_value(row, params)) - math.log(row.value) for row in rows if row.fit]
    r += [(xi - math.log(s.prior)) / s.sigma for xi, s in zip(x, sp)]
    return np.asarray(r)


def levenberg_marquardt(fun, x0: np.ndarray, iters: int = 200, tol: float = 1e-10) -> np.ndarray:
    """Minimise ||fun(x)||^2 (small dense problems; forward-difference Jacobian)."""
    x = x0.astype(float).copy()
    r = fun(x)
    lam = 1e-2
    for _ in range(iters):
        jac = np.empty((r.size, x.size))
        for j in range(x.size):
            h = 1e-6 * max(1.0, abs(x[j]))
            xp = x.copy()
            xp[j] += h
            jac[:, j] = (fun(xp) - r) / h
        jtj, jtr = jac.T @ jac, jac.T @ r
        improved = False
        while lam < 1e12:
            step = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12), -jtr)
            xn = x + step
            rn = fun(xn)
            if rn @ rn < r @ r:
                gain = (r @ r - rn @ rn) / max(r @ r, 1e-300)
                x, r, lam, improved = xn, rn, max(lam / 3, 1e-9), True
                break
            lam *= 4
        if not improved or gain < tol:
            break
    return x


def _fit_info(rows: list[Row], used: list[Row], sp: list[Spec]) -> dict:
    """The provenance record of a fit: objective, row counts, date, priors and fixed values."""
    return {
        "objective": "sum of squared log errors over fitted rows + weak log-normal priors",
        "rows_fitted": len(used),
        "rows_shown_not_fitted": len(rows) - len(used),
        "date": _dt.date.today().isoformat(),
        "priors": {"/".join(s.key): s.why for s in sp},
        "fixed": {
            "sram_mb": f"{SRAM_MB} (published for m4, m4-max: ane-private-api.md §4.3; assumed elsewhere)",
            "vector_eff": f"{VECTOR_EFF} (assumed; nothing published isolates elementwise throughput)",
        },
    }


def _fitted_chips(params: Params, sp: list[Spec], per_chip: dict[str, list[str]]) -> dict[str, ChipParams]:
    """The fitted chips' parameters, each with where every value came from."""
    prior_of = {s.key: s.why for s in sp}
    chips = {}
    for cid, cp in params.chips.items():
        chip = CHIPS[cid]
        counts = {d: per_chip.get(cid, []).count(d) for d in sorted(set(per_chip.get(cid, [])))}
        fitted = "fitted on " + ", ".join(f"{d} ({n} rows)" for d, n in counts.items())

        def prov_of(name: str, fitted: str = fitted, cid: str = cid) -> str:
            return f"{fitted}; {prior_of[('chip', cid, name)]}"

        prov = {
            "peak_tflops": prov_of("peak_tflops"),
            "dispatch_ms": prov_of("dispatch_ms"),
            "bandwidth_gbs": (
                f"published: {chip.source('ane_bandwidth_gbs')}"
                if chip.ane_bandwidth_gbs
                else prov_of("bandwidth_gbs")
            ),
            "sram_mb": (
                f"published: {chip.source('sram_mb')}" if chip.sram_mb else "assumed 32 MB (M4's value)"
            ),
        }
        chips[cid] = ChipParams(cp.peak_tflops, cp.bandwidth_gbs, cp.dispatch_ms, cp.sram_mb, prov)
    return chips


def _sibling_params(cid: str, sib: str, base: ChipParams) -> ChipParams:
    """Parameters for chip `cid`, not fitted, assumed from its sibling `sib` (same engine) except
    where `cid` has its own published bandwidth or dispatch floor."""
    chip = CHIPS[cid]
    bw = chip.ane_bandwidth_gbs or base.bandwidth_gbs
    return ChipParams(
        base.peak_tflops,
        bw,
        chip.dispatch_floor_ms or base.dispatch_ms,
        base.sram_mb,
        {
            "all": f"assumed from {sib} (same engine: landscape.md §6)",
            **(
                {"bandwidth_gbs": f"published: {chip.source('ane_bandwidth_gbs')}"}
                if chip.ane_bandwidth_gbs
                else {}
            ),
            **(
                {"dispatch_ms": f"published: {chip.source('dispatch_floor_ms')}"}
                if chip.dispatch_floor_ms
                else {}
            ),
        },
        assumed_from=sib,
    )


def fit(rows: list[Row] | None = None) -> Params:
    """Fit every parameter to `rows` (default: all published rows) and return them with provenance."""
    rows = rows if rows is not None else published_rows()
    sp = specs(rows)
    x0 = np.log([s.init for s in sp])
    x = levenberg_marquardt(lambda v: _residuals(v, sp, rows), x0)
    used = [r for r in rows if r.fit]
    per_chip: dict[str, list[str]] = {}
    for r in used:
        per_chip.setdefault(r.chip, []).append(r.dataset)
    info = _fit_info(rows, used, sp)
    params = build(x, sp, rows, info)
    chips = _fitted_chips(params, sp, per_chip)
    for cid, sib in SIBLINGS.items():
        if cid in chips or sib not in chips:
            continue
        chips[cid] = _sibling_params(cid, sib, chips[sib])
    return Params(params.globals, dict(sorted(chips.items())), params.setups, info)
