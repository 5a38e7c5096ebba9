"""AdamW with its moment arithmetic on the engine (`anekit train --optimizer engine`).

The same API as `anekit.train.optim.AdamW` (`step`, `state_dict`, `load_state_dict`, `t`, `lr`,
...), so the training loop and checkpoints take either. Every parameter's elements, in the order of
the `params` dict, are cut into blocks of R x W (`kernels.adamw`, one compiled program for all
blocks and all steps); per block and step the host

1. picks the block's scale S, a power of two putting max(|g|, |m|, √v) (true units; |m| and √v
   from the previous step's `stats` output) at 2^14, inside fp16's range with headroom;
2. writes g·S as fp16 and the coefficient row (ρ = S/S', β's, ε·S·√c2) into the block's input,
   the moments staying there in fp16 from the previous step;
3. runs the kernel, and after every block ran and none returned a NaN or an infinity, forms the
   new weight w' = (1 - lr·wd)·w - k·q in float32 (k = lr·√c2/c1, weight decay on matrices only).

State precision (argued in `kernels.adamw`): m and √v in fp16 at the block's scale (11 significant
bits each, relative error 2^-11 per step, never under- or overflowing while the block's values span
less than 2^28); β1 and 1-β1 etc. are rounded to fp16 in the coefficient row (β1 = 0.9 becomes
0.89990234: an EMA 1e-4 shorter); the step's direction q in fp16. The master weights stay float32 on
the host: the kernels are staged from float32 weights anyway (`ModelRunner.set_params`), a
checkpoint holds them exactly, and an fp16 hi/lo pair would need a canonical split to survive the
float32 round trip of a checkpoint. The moments round-trip exactly: m = m16/S and v = (r16/S)² are
exact in float32 (a power-of-two scale; the square of an 11-bit number), so a resumed run sees the
same kernel inputs bit for bit.

Refusal: as `AdamW.step`, an update whose results hold a NaN or an infinity (checked on the fp16
bit patterns of every output) is not applied, and nothing changes, not even `t`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..kernels.adamw import ADAMW_COEFFICIENTS, DEFAULT_ROWS, DEFAULT_WIDTH, adamw_update
from .optim import load_scalars, state_dict_of

__all__ = ["EngineAdamW", "TARGET_EXPONENT"]

#: A block's largest value is scaled to just below 2^TARGET_EXPONENT (fp16's largest is 65504 < 2^16:
#: two binades of headroom for m' <= max(|m|, |g|) and r' <= √2·max).
TARGET_EXPONENT = 14
#: ρ = S/S' outside [2^-14, 2^14] is applied on the host (rare: the values of a block moved by more
#: than 14 binades in one step) so that the kernel's ρ is an fp16 normal number.
_RHO_LIMIT = 14
_F16_EXP = np.uint16(0x7C00)  # an fp16 with these bits all set is an infinity or a NaN


@dataclass
class _Block:
    """One block's state: the moments in fp16 at scale `scale`, and their maxima in true units."""

    m16: np.ndarray
    r16: np.ndarray
    scale: float
    m_max: float
    r_max: float


def _cast(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[...] = src, rounded to nearest even (NumPy's cast; torch is never used on the product path,
    it is optional and the tests' oracle)."""
    np.copyto(dst, src, casting="unsafe")


class EngineAdamW:
    """AdamW whose moments live and update on the engine (see the module docstring).

    backend / options: what `anekit.compile` gets (e.g. backend="reference", numerics="ane"); or
    pass `compile`, a function program -> Kernel. rows, width: the block shape (`kernels.adamw`).
    """

    def __init__(
        self,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        backend: str = "auto",
        rows: int = DEFAULT_ROWS,
        width: int = DEFAULT_WIDTH,
        compile: Callable | None = None,
        **options,
    ):
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.t = 0
        self.spec = adamw_update(rows, width)
        self.rows, self.width = rows, width
        self.block_size = rows * width
        if compile is None:
            from ..api import compile as anekit_compile

            def compile(program):
                return anekit_compile(program, backend=backend, **options)

        self.kernel = compile(self.spec.program)
        self._input = self.spec.input_layout.empty(np.float16)
        self._g32 = np.zeros(self.block_size, np.float32)
        self._blocks: list[_Block] | None = None
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._loaded: dict[str, np.ndarray] | None = None  # m/v from load_state_dict, until the first step
        self.last_kernel_s = 0.0  #: seconds inside kernel runs during the last `step`

    # -- layout of the parameters over blocks ----------------------------------------------------
    def _pieces(self) -> list[list[tuple[str, int, int, int]]]:
        """Per block: (name, lo, hi, offset in the block) of every parameter range it holds."""
        assert self._shapes is not None
        blocks: list[list[tuple[str, int, int, int]]] = [[]]
        fill = 0
        for name, shape in self._shapes.items():
            size, lo = int(np.prod(shape)), 0
            while lo < size:
                if fill == self.block_size:
                    blocks.append([])
                    fill = 0
                n = min(size - lo, self.block_size - fill)
                blocks[-1].append((name, lo, lo + n, fill))
                fill += n
                lo += n
        return blocks

    def _setup(self, params: dict[str, np.ndarray]) -> None:
        shapes = {k: tuple(w.shape) for k, w in params.items()}
        if self._shapes is not None:
            if shapes != self._shapes:
                raise ValueError(
                    "EngineAdamW.step: the parameters' names or shapes changed since the first step"
                )
            return
        self._shapes = shapes
        self._layout = self._pieces()
        loaded, self._loaded = self._loaded, None
        self._blocks = []
        for pieces in self._layout:
            m32 = np.zeros(self.block_size, np.float32)
            r32 = np.zeros(self.block_size, np.float32)
            if loaded:
                for name, lo, hi, off in pieces:
                    m32[off : off + hi - lo] = loaded[f"m.{name}"].reshape(-1)[lo:hi]
                    r32[off : off + hi - lo] = np.sqrt(loaded[f"v.{name}"].reshape(-1)[lo:hi])
            m_max, r_max = _max_abs(m32), _max_abs(r32)
            scale = _scale_for(max(m_max, r_max), 1.0)
            m16 = np.empty((self.rows, self.width), np.float16)
            r16 = np.empty((self.rows, self.width), np.float16)
            _cast((m32 * np.float32(scale)).reshape(m16.shape), m16)
            _cast((r32 * np.float32(scale)).reshape(r16.shape), r16)
            self._blocks.append(_Block(m16, r16, scale, m_max, r_max))

    # -- the update ------------------------------------------------------------------------------
    def step(
        self,
        params: dict[str, np.ndarray],
        grads: dict[str, np.ndarray],
        lr: float | None = None,
        grad_scale: float = 1.0,
        grad_norm: float | None = None,
    ) -> list[str]:
        """As `AdamW.step`: apply the update with gradients `grad_scale * grads`, in place; [] when
        applied, else the names whose results would not be finite (then nothing changed).
        `grad_norm` is accepted for the same call signature; the block scales use each block's own
        largest gradient."""
        lr = self.lr if lr is None else lr
        t = self.t + 1
        b1, b2 = (float(b) for b in self.betas)
        c1, c2 = 1 - b1**t, 1 - b2**t
        s = float(grad_scale)
        self._setup(params)
        assert self._blocks is not None
        self.last_kernel_s = 0.0
        bad: set[str] = set()
        results = []
        with np.errstate(over="ignore", invalid="ignore"):
            for pieces, block in zip(self._layout, self._blocks):
                res = self._run_block(pieces, block, grads, s, b1, b2, c2)
                if res is None:
                    bad.update(name for name, *_ in pieces)
                results.append(res)
        if bad:
            return [name for name in params if name in bad]
        k = np.float32(lr * math.sqrt(c2) / c1)
        for pieces, block, res in zip(self._layout, self._blocks, results):
            q, m16, r16, scale, m_max, r_max = res
            block.m16, block.r16, block.scale, block.m_max, block.r_max = m16, r16, scale, m_max, r_max
            q32 = self._g32
            _cast(q.reshape(-1), q32)
            for name, lo, hi, off in pieces:
                w = params[name]
                flat = w.reshape(-1)  # a view: parameters are contiguous (`_check_param`)
                step = q32[off : off + hi - lo]
                step *= k
                part = flat[lo:hi]
                if self.weight_decay and w.ndim >= 2:
                    part *= np.float32(1 - lr * self.weight_decay)
                part -= step
        self.t = t
        return []

    def _run_block(self, pieces, block: _Block, grads, s, b1, b2, c2):
        """Run one block; (q, m16, r16, scale, m_max, r_max) or None when something is not finite."""
        layout = self.spec.input_layout
        g32 = self._g32
        g_max = 0.0
        for name, lo, hi, _ in pieces:
            g = np.asarray(grads[name]).reshape(-1)[lo:hi]
            if g.size:
                g_max = max(g_max, float(np.max(g)), -float(np.min(g)))
        g_max *= abs(s)
        if not math.isfinite(g_max):
            return None
        scale = _scale_for(max(g_max, block.m_max, block.r_max), block.scale)
        rho = scale / block.scale
        m16, r16 = block.m16, block.r16
        if not 2.0**-_RHO_LIMIT <= rho <= 2.0**_RHO_LIMIT:  # rescale on the host (rare)
            m16, r16 = _rescaled(m16, rho), _rescaled(r16, rho)
            rho = 1.0
        gs = np.float32(s * scale)
        filled = 0
        for name, lo, hi, off in pieces:
            np.multiply(np.asarray(grads[name]).reshape(-1)[lo:hi], gs, out=g32[off : off + hi - lo])
            filled = off + hi - lo
        g32[filled:] = 0.0
        buf = self._input
        _cast(g32.reshape(self.rows, self.width), layout.view(buf, "g"))
        layout.view(buf, "m")[...] = m16
        layout.view(buf, "r")[...] = r16
        coef = np.zeros(self.width, np.float32)
        eps_scaled = self.eps * scale * math.sqrt(c2)
        coef[: len(ADAMW_COEFFICIENTS)] = [rho, b1, 1 - b1, math.sqrt(b2), math.sqrt(1 - b2), eps_scaled]
        layout.view(buf, "coef")[0] = coef
        t0 = time.perf_counter()
        out = self.kernel(x=buf)["out"]
        self.last_kernel_s += time.perf_counter() - t0
        out16 = np.ascontiguousarray(out, dtype=np.float16)
        bits = out16.view(np.uint16)
        if np.max(np.bitwise_and(bits, _F16_EXP)) == _F16_EXP:
            return None
        res = self.spec.output_layout.unpack(out16)
        stats = res["stats"][0, :2].astype(np.float64)
        return (
            res["q"],
            res["m"],
            res["r"],
            scale,
            float(stats[0]) / scale,
            float(stats[1]) / scale,
        )

    # -- state -----------------------------------------------------------------------------------
    def _moments(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """m and v of every parameter in float32, true units."""
        if self._blocks is None:
            loaded = self._loaded or {}
            m = {k[2:]: a for k, a in loaded.items() if k.startswith("m.")}
            v = {k[2:]: a for k, a in loaded.items() if k.startswith("v.")}
            return m, v
        assert self._shapes is not None
        m = {name: np.zeros(shape, np.float32) for name, shape in self._shapes.items()}
        v = {name: np.zeros(shape, np.float32) for name, shape in self._shapes.items()}
        for pieces, block in zip(self._layout, self._blocks):
            inv = np.float32(1.0 / block.scale)
            m32 = block.m16.reshape(-1).astype(np.float32) * inv
            r32 = block.r16.reshape(-1).astype(np.float32) * inv
            for name, lo, hi, off in pieces:
                m[name].reshape(-1)[lo:hi] = m32[off : off + hi - lo]
                v[name].reshape(-1)[lo:hi] = np.square(r32[off : off + hi - lo])
        return m, v

    @property
    def m(self) -> dict[str, np.ndarray]:
        return self._moments()[0]

    @property
    def v(self) -> dict[str, np.ndarray]:
        return self._moments()[1]

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """As `AdamW.state_dict`: `m.<name>`, `v.<name>` in float32 (exact, see the module docstring)."""
        m, v = self._moments() if self.t else ({}, {})
        return state_dict_of(self, m, v)

    def load_state_dict(self, tensors: dict[str, np.ndarray], scalars: dict) -> None:
        load_scalars(self, scalars)
        self._loaded = {k: np.asarray(a, np.float32) for k, a in tensors.items()}
        self._blocks = self._shapes = None

    def close(self) -> None:
        self.kernel.close()


def _scale_for(largest: float, previous: float) -> float:
    """The power of two that puts `largest` (> 0) just below 2^TARGET_EXPONENT; `previous` when the
    block holds only zeros."""
    if not largest > 0:
        return previous
    _, e = math.frexp(largest)  # largest = f·2^e, 0.5 <= f < 1
    return math.ldexp(1.0, max(-120, min(120, TARGET_EXPONENT - e)))


def _rescaled(a16: np.ndarray, rho: float) -> np.ndarray:
    out = np.empty_like(a16)
    _cast(a16.astype(np.float32) * np.float32(rho), out)
    return out


def _max_abs(a: np.ndarray) -> float:
    return float(max(a.max(), -a.min())) if a.size else 0.0
