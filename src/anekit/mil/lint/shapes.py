"""Rules on the shape of every tensor: the per-axis cap, the spatial limit, rank, dynamic dims and the
widths that fail with status 0x1d."""

from __future__ import annotations

from collections.abc import Iterator

from ..._coreml import types
from ...engine_limits import MAX_AXIS, MAX_RANK, MAX_SPATIAL, WIDTH_0X1D_BAND
from .engine import _rule
from .program import _fmt_shape, _Fn, _Hit, _is_static, _shape

# Thresholds. Each number is the one the cited reference gives; tests may patch them in this module.
_MAX_AXIS = MAX_AXIS  # per-axis cap (ane-private-api.md §1.7; mil-text.md §5 #12)
_MAX_SPATIAL = MAX_SPATIAL  # W, H measured on M1 (mil-text.md §5 #12)
_MAX_RANK = MAX_RANK  # mil-text.md §5 #12
_BAND_0X1D = WIDTH_0X1D_BAND  # mil-text.md §5 #13


def _spatial_axes(shape: tuple) -> tuple[int, ...]:
    """Axes that are H and W: the last two of a 4-D/5-D [N, C, (D,) H, W] tensor, else the last."""
    if len(shape) >= 4:
        return (len(shape) - 2, len(shape) - 1)
    return (len(shape) - 1,) if shape else ()


def _big_axes(var, limit: int, axes=None) -> list[tuple[int, int]]:
    shape = _shape(var)
    axes = range(len(shape)) if axes is None else axes
    return [(a, int(shape[a])) for a in axes if not types.symbolic.is_symbolic(shape[a]) and shape[a] > limit]


@_rule(
    "axis-over-65536",
    "error",
    "A tensor axis is larger than 65536",
    fact="axis-cap",
    url="https://github.com/maderix/ANE/pull/26",
)
def _check_axis_cap(fn: _Fn) -> Iterator[_Hit]:
    for var in fn.first_violations(lambda v: bool(_big_axes(v, _MAX_AXIS))):
        axes = ", ".join(f"axis {a} = {n}" for a, n in _big_axes(var, _MAX_AXIS))
        yield fn.var_hit(
            var,
            f"'{var.name}' {_fmt_shape(var)} has {axes} > {_MAX_AXIS}, the per-axis cap; split it into "
            f"chunks of at most {_MAX_AXIS} (an LM head of 151936 was chunked as 16 x 9496)",
        )


@_rule(
    "spatial-dim-over-16384",
    "warning",
    "H or W larger than 16384 (the limit measured on M1; Core ML refuses it)",
    fact="spatial-cap",
    url="https://github.com/microsoft/onnxruntime/issues/19543",
)
def _check_spatial_cap(fn: _Fn) -> Iterator[_Hit]:
    def bad(v) -> bool:
        return bool(_big_axes(v, _MAX_SPATIAL, _spatial_axes(_shape(v))))

    for var in fn.first_violations(bad):
        axes = ", ".join(
            f"axis {a} = {n}" for a, n in _big_axes(var, _MAX_SPATIAL, _spatial_axes(_shape(var)))
        )
        yield fn.var_hit(
            var,
            f"'{var.name}' {_fmt_shape(var)} has spatial {axes} > {_MAX_SPATIAL}, the H/W limit measured "
            "on M1 (Core ML execution providers refuse such dims); tile the spatial axis",
        )


@_rule(
    "rank-over-5",
    "error",
    "A tensor has rank > 5",
    fact="rank-cap",
    url="https://aneforge.readthedocs.io/en/latest/api/graph/",
)
def _check_rank(fn: _Fn) -> Iterator[_Hit]:
    for var in fn.first_violations(lambda v: len(_shape(v)) > _MAX_RANK):
        yield fn.var_hit(
            var,
            f"'{var.name}' {_fmt_shape(var)} has rank {len(_shape(var))} > {_MAX_RANK}; the engine's "
            "tensors are at most 5-D. Merge axes with reshape",
        )


@_rule(
    "dynamic-shape",
    "error",
    "A tensor has a dynamic ('?') dimension",
    fact="static-graphs",
    url="https://github.com/hollance/neural-engine/blob/master/docs/unsupported-layers.md",
)
def _check_dynamic(fn: _Fn) -> Iterator[_Hit]:
    for var in fn.first_violations(lambda v: not _is_static(_shape(v))):
        yield fn.var_hit(
            var,
            f"'{var.name}' {_fmt_shape(var)} has a dynamic dim; the ANE compiles static shapes only. "
            "Give every dim a fixed size (compile one kernel per shape)",
        )


@_rule(
    "spatial-width-0x1d-band",
    "warning",
    "A spatial size in 14593..14622 (status 0x1d seen on M4)",
    fact="width-0x1d-band",
    url="https://github.com/maderix/ane-prefill-bench",
)
def _check_0x1d_band(fn: _Fn) -> Iterator[_Hit]:
    lo, hi = _BAND_0X1D

    def in_band(v) -> list[int]:
        shape = _shape(v)
        axes = [a for a in _spatial_axes(shape) if not types.symbolic.is_symbolic(shape[a])]
        return [int(shape[a]) for a in axes if lo <= shape[a] <= hi]

    for var in fn.first_violations(lambda v: bool(in_band(v))):
        size = in_band(var)[0]
        yield fn.var_hit(
            var,
            f"'{var.name}' {_fmt_shape(var)} has spatial size {size}; widths {lo}..{hi} failed with "
            f"status 0x1d in complex graphs on M4 while 14592 and 14624 worked. Use a multiple of 32",
        )
