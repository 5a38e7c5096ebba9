"""The CPU side of an update: AdamW, cosine learning rate with warm-up, global-norm clipping and
dynamic loss scaling (ane-private-api.md §5.4: AdamW β 0.9/0.95, weight decay 0.1 on matrices,
clip 1.0, cosine to 0.1·lr after 100 warm-up steps; §6: fp16 gradients underflow without scaling).

`AdamW.step` is one fused, cache-blocked NumPy pass over the parameters: each parameter in chunks
of `CHUNK` elements through a few preallocated scratch buffers (every op writes with `out=`), split
over `threads` threads (NumPy releases the GIL inside its loops). Gradient scaling (1/accum, the
clipping factor) folds into the same pass (`grad_scale`). One implementation on purpose: PyTorch's
fused kernel (`torch._fused_adamw_`, private) was faster here, but torch is optional and is the
tests' oracle, and a run must compute the same bits (bit-exact resume) with or without it.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

#: Bytes of one float32 block of the fused update: g, m, v, w and two scratch blocks (6 x 256 kB =
#: 1.5 MB) stay in a core's L2 cache while the 13 elementwise ops run over them.
_BLOCK_BYTES = 1 << 18
#: Elements per block.
CHUNK = _BLOCK_BYTES // 4
#: Scratch memory per thread of the fused pass: five float32 blocks (`AdamW._scratch_for`).
SCRATCH_BYTES = 5 * _BLOCK_BYTES
#: Half an ulp of float32's largest finite value (2^104 / 2): a finite float32 x plus any y with
#: |y| < HALF_ULP_MAX rounds to a finite value (|x + y| < FLT_MAX + 2^103 = 2^128 - 2^103, the
#: round-to-nearest overflow threshold). The finiteness proof of `AdamW.step` rests on it.
HALF_ULP_MAX = 2.0**103
_MARGIN = 1.0 + 2.0**-20  # covers the few float32 roundings between a bound and a computed value
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The persistent worker thread the second half of every update runs on (the caller runs the first)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anekit-adamw")
        return _POOL


@dataclass
class AdamW:
    """Decoupled-weight-decay Adam over a dict of float parameters, updated in place.

    Weight decay applies to matrices only (ndim >= 2: projections and the embedding), never to
    norm gains. The moments `m`, `v` belong to the optimizer: change them only through
    `load_state_dict` (the finiteness proof of `step` keeps a bound on |m| per parameter, keyed
    by the array object). `threads`: how many threads share an update (1: the caller's alone).
    """

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    t: int = 0
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)
    threads: int = 2
    _m_bounds: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _scratch: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def step(
        self,
        params: dict[str, np.ndarray],
        grads: dict[str, np.ndarray],
        lr: float | None = None,
        grad_scale: float = 1.0,
        grad_norm: float | None = None,
    ) -> list[str]:
        """Apply one update with gradients `grad_scale * grads[name]`, in place, unless it would leave
        a parameter or moment non-finite.

        Returns [] when the update was applied; otherwise the names of the parameters whose new
        value (or moments) would hold a NaN or an infinity, and nothing has changed (not even `t`).
        `grad_norm`: the L2 norm of `grads` as given (before `grad_scale`), when the caller has it
        (the training loop computes it for clipping); otherwise it is computed here (one read pass).
        `params` must be finite (the loop's always are: initialisation, checked checkpoints, and
        only finite updates applied). `grads` are not written.

        Cost: one fused pass (`_fused`) when the update is proven finite beforehand
        (`_proven_finite`, from the norm and a bound on |m|); otherwise a first pass computes the
        update into scratch blocks and checks it, and a second applies it. Both passes are the
        same elementwise arithmetic, so which one ran never changes the result.
        """
        lr = self.lr if lr is None else lr
        t = self.t + 1
        scale = float(grad_scale)
        names = list(params)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # detected, then refused
            proven = self._proven_finite(params, grads, lr, t, scale, grad_norm)
            run = self._run
            if proven is None:
                bad = run(params, grads, lr, t, scale, dry=True)
                if bad:
                    return [n for n in names if n in bad]
            for name, w in params.items():
                if name not in self.m:
                    self.m[name] = np.zeros(w.shape, w.dtype)
                    self.v[name] = np.zeros(w.shape, w.dtype)
            run(params, grads, lr, t, scale, dry=False)
        self.t = t
        for name in names:  # |m_t| <= b1·|m_{t-1}| + (1 - b1)·max|g| (proven), else measured
            m = self.m[name]
            bound = proven[name] if proven is not None else _max_abs(m)
            self._m_bounds[name] = (m, bound)
        return []

    # -- the finiteness proof ------------------------------------------------------------------
    def _proven_finite(self, params, grads, lr, t, scale, grad_norm) -> dict[str, float] | None:
        """Bounds on each new |m| when the update is proven finite without computing it, else None.

        With finite state (m, v >= 0, w) and every |scale·g| <= G, in float32 arithmetic:
        - m' = b1·m + c·g (c = scale·(1-b1)): |b1·m| <= |m| is finite, and |c·g| <= (1-b1)·G; when
          that is below HALF_ULP_MAX the sum rounds to a finite value. |m'| <= b1·M + (1-b1)·G.
        - v' = b2·v + (d·g)² (d = scale·√(1-b2)): likewise finite when (1-b2)·G² < HALF_ULP_MAX;
          v' >= 0, so √v' is finite.
        - q = m' / (√v' + ε·√c2): the divisor is at least ε·√c2 > 0 (adding a non-negative
          value never rounds below the addend), so |q| <= |m'| / (ε·√c2), and the step k·q
          (k = lr·√c2/c1) is bounded likewise.
        - w' = a·w - k·q with |a| = |1 - lr·wd| <= 1: |a·w| <= |w| is finite, and |k·q| < HALF_ULP_MAX
          keeps the difference finite.
        G: a computed L2 norm is at least max|g|·(1 - 2^-23): its summands g² are non-negative
        and rounding is monotone, so no partial sum (in any order, with or without FMA) falls
        below the largest rounded square. `_MARGIN` covers the remaining roundings.
        """
        b1, b2 = (float(b) for b in self.betas)
        eps, wd = float(self.eps), float(self.weight_decay)
        ok = 0 <= b1 <= 1 and 0 <= b2 < 1 and eps > 0 and math.isfinite(lr) and math.isfinite(scale)
        if not ok or not abs(1 - lr * wd) <= 1:
            return None
        for name, w in params.items():
            g = grads.get(name)
            if g is None or g.shape != w.shape or w.dtype.kind != "f" or g.dtype.kind != "f":
                return None
        norm = _global_norm(grads, params) if grad_norm is None else float(grad_norm)
        big = norm * abs(scale) * _MARGIN
        if not math.isfinite(big) or (1 - b1) * big * _MARGIN >= HALF_ULP_MAX:
            return None
        if (1 - b2) * big * big * _MARGIN >= HALF_ULP_MAX:
            return None
        c1, c2 = 1 - b1**t, 1 - b2**t
        if c1 <= 0 or c2 <= 0:
            return None
        k = abs(lr) * math.sqrt(c2) / c1
        bounds = {}
        for name, w in params.items():
            eps2 = float(w.dtype.type(eps * math.sqrt(c2)))  # as the pass rounds it
            if eps2 <= 0:
                return None
            m_bound = (b1 * self._m_bound(name) + (1 - b1) * big) * _MARGIN
            if not m_bound / eps2 * max(1.0, k) * _MARGIN < HALF_ULP_MAX:
                return None
            bounds[name] = m_bound
        return bounds

    def _m_bound(self, name: str) -> float:
        """An upper bound on max|m[name]| (0 before the first step); inf when the state of `name` is
        not finite or v has a negative entry (then every update goes the checked way)."""
        m = self.m.get(name)
        if m is None:
            return 0.0
        known = self._m_bounds.get(name)
        if known is not None and known[0] is m:
            return known[1]
        v = self.v.get(name)
        ok = v is not None and v.shape == m.shape and _all_finite(m) and _all_finite(v) and v.min() >= 0
        bound = _max_abs(m) if ok else math.inf
        self._m_bounds[name] = (m, bound)
        return bound

    # -- the fused pass --------------------------------------------------------------------------
    def _run(self, params, grads, lr, t, scale, dry: bool) -> set[str]:
        """One pass over every parameter, split over the threads: apply the update (dry=False), or
        compute it into scratch and return the names whose result is not finite (dry=True)."""
        b1, b2 = (float(b) for b in self.betas)
        c1, c2 = 1 - b1**t, 1 - b2**t
        jobs = []  # (name, w flat, g flat, m flat or None, v flat or None, coefficients)
        copies = []
        for name, w in params.items():
            g = grads[name]
            flat = w.reshape(-1) if w.flags.c_contiguous else None
            if flat is None:  # work on a contiguous copy, written back after
                flat = np.ascontiguousarray(w).reshape(-1)
                copies.append((w, flat))
            m, v = self.m.get(name), self.v.get(name)
            dt = w.dtype.type
            decay = self.weight_decay and w.ndim >= 2
            coef = (
                dt(b1),
                dt(scale * (1 - b1)),
                dt(b2),
                dt(scale * math.sqrt(1 - b2)),
                dt(self.eps * math.sqrt(c2)),
                dt(lr * math.sqrt(c2) / c1),
                dt(1 - lr * self.weight_decay) if decay else None,
            )
            jobs.append(
                (
                    name,
                    flat,
                    np.asarray(g).reshape(-1),
                    None if m is None else m.reshape(-1),
                    None if v is None else v.reshape(-1),
                    coef,
                )
            )
        parts = _split(jobs, max(1, int(self.threads)))
        futures = [_pool().submit(self._work, part, i, dry) for i, part in enumerate(parts[1:], 1)]
        bad = self._work(parts[0], 0, dry)
        for fut in futures:
            bad |= fut.result()
        if not dry:
            for w, flat in copies:
                w[...] = flat.reshape(w.shape)
        return bad

    def _work(self, part, worker: int, dry: bool) -> set[str]:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # per thread
            return self._work_part(part, worker, dry)

    def _work_part(self, part, worker: int, dry: bool) -> set[str]:
        bad: set[str] = set()
        for name, w, g, m, v, coef, lo, hi in part:
            s = self._scratch_for(worker, w.dtype)
            for c0 in range(lo, hi, CHUNK):
                c1 = min(hi, c0 + CHUNK)
                n = c1 - c0
                zero = s["zero"][:n]
                mc = zero if m is None else m[c0:c1]
                vc = zero if v is None else v[c0:c1]
                wc = w[c0:c1]
                if dry:
                    om, ov, ow = s["m"][:n], s["v"][:n], s["w"][:n]
                else:
                    om, ov, ow = mc, vc, wc
                _fused(wc, g[c0:c1], mc, vc, ow, om, ov, s["a"][:n], coef)
                if dry and name not in bad and not (_all_finite(ow) and _all_finite(om) and _all_finite(ov)):
                    bad.add(name)
        return bad

    def _scratch_for(self, worker: int, dtype) -> dict[str, np.ndarray]:
        key = (worker, np.dtype(dtype).str)
        s = self._scratch.get(key)
        if s is None:
            s = {k: np.zeros(CHUNK, dtype) for k in ("a", "m", "v", "w", "zero")}
            self._scratch[key] = s
        return s

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """Tensors (`m.<name>`, `v.<name>`) and scalars, for checkpoints."""
        return state_dict_of(self, self.m, self.v)

    def load_state_dict(self, tensors: dict[str, np.ndarray], scalars: dict) -> None:
        load_scalars(self, scalars)
        self.m = {k[2:]: np.array(a, dtype=np.float32) for k, a in tensors.items() if k.startswith("m.")}
        self.v = {k[2:]: np.array(a, dtype=np.float32) for k, a in tensors.items() if k.startswith("v.")}
        self._m_bounds.clear()


def state_dict_of(
    opt, m: dict[str, np.ndarray], v: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict]:
    """The checkpoint form of an AdamW's state, one format for `AdamW` and `EngineAdamW`: the moments
    as tensors `m.<name>`, `v.<name>`, and `opt`'s step count and hyperparameters as scalars."""
    tensors = {f"m.{k}": a for k, a in m.items()} | {f"v.{k}": a for k, a in v.items()}
    scalars = {
        "t": opt.t,
        "lr": opt.lr,
        "betas": list(opt.betas),
        "eps": opt.eps,
        "weight_decay": opt.weight_decay,
    }
    return tensors, scalars


def load_scalars(opt, scalars: dict) -> None:
    """Set `opt`'s step count and hyperparameters from the scalars of `state_dict_of`."""
    opt.t = int(scalars["t"])
    opt.lr, opt.eps, opt.weight_decay = scalars["lr"], scalars["eps"], scalars["weight_decay"]
    opt.betas = tuple(scalars["betas"])


def _fused(w, g, m, v, w_out, m_out, v_out, a, coef) -> None:
    """One block of the update, 13 elementwise passes over cache-resident blocks:
    m' = b1·m + s(1-b1)·g; v' = b2·v + (s√(1-b2)·g)²; w' = keep·w - k·m' / (√v' + ε√c2), where
    k = lr·√c2/c1 folds both bias corrections (m̂/(√v̂ + ε) = (√c2/c1)·m/(√v + ε√c2))."""
    b1, cm, b2, cv, eps2, k, keep = coef
    np.multiply(g, cm, out=a)
    np.multiply(m, b1, out=m_out)
    np.add(m_out, a, out=m_out)
    np.multiply(g, cv, out=a)
    np.multiply(a, a, out=a)
    np.multiply(v, b2, out=v_out)
    np.add(v_out, a, out=v_out)
    np.sqrt(v_out, out=a)
    np.add(a, eps2, out=a)
    np.divide(m_out, a, out=a)
    np.multiply(a, k, out=a)
    if keep is None:
        np.subtract(w, a, out=w_out)
    else:
        np.multiply(w, keep, out=w_out)
        np.subtract(w_out, a, out=w_out)


def _split(jobs: list, n: int) -> list[list]:
    """`jobs` cut into `n` parts of about equal element counts: (*job, lo, hi) ranges."""
    total = sum(j[1].size for j in jobs)
    per = max(1, -(-total // n))
    parts: list[list] = [[] for _ in range(n)]
    pos = 0
    for job in jobs:
        size = job[1].size
        lo = 0
        while lo < size:
            i = min(n - 1, pos // per)
            hi = min(size, lo + (i + 1) * per - pos) if i < n - 1 else size
            parts[i].append((*job, lo, hi))
            pos += hi - lo
            lo = hi
    return parts


def _all_finite(a: np.ndarray) -> bool:
    return bool(np.isfinite(a).all())


def _max_abs(a: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    return float(max(a.max(), -a.min()))


def _global_norm(grads: dict[str, np.ndarray], names) -> float:
    return math.sqrt(sum(float(np.vdot(grads[n], grads[n])) for n in names))


def cosine_lr(step: int, max_lr: float, total_steps: int, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to `min_ratio * max_lr` at `total_steps`."""
    if warmup > 0 and step < warmup:
        return max_lr * (step + 1) / warmup
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    min_lr = min_ratio * max_lr
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def global_norm(grads: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def clip_factor(norm: float, max_norm: float) -> float:
    """The factor that brings gradients of L2 norm `norm` to at most `max_norm` (1.0: no clipping;
    `max_norm` 0 turns clipping off), as torch.nn.utils.clip_grad_norm_ computes it."""
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        return max_norm / (norm + 1e-6)
    return 1.0


def clip_by_global_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients in place so their joint L2 norm is at most `max_norm`; returns the norm
    before clipping (non-finite when a gradient overflowed). The training loop instead passes
    `clip_factor` to `AdamW.step` as part of `grad_scale` (no pass of its own)."""
    norm = global_norm(grads)
    scale = clip_factor(norm, max_norm)
    if scale != 1.0:
        for g in grads.values():
            g *= scale
    return norm


@dataclass
class LossScaler:
    """Dynamic loss scaling: dlogits are multiplied by `scale` so small fp16 gradients survive on the
    engine (ane-private-api.md §6, commit 926f977: unscaled grads flush to zero). A step whose
    gradients are not finite is skipped and the scale halves; after `growth_interval` good steps
    it doubles. No weight is ever updated from a non-finite gradient.
    """

    scale: float = 256.0
    growth_interval: int = 200
    min_scale: float = 1.0
    max_scale: float = 2.0**24
    good_steps: int = 0
    skipped: int = 0

    def update(self, finite: bool) -> bool:
        """Record a step's outcome; returns whether the optimizer may apply it."""
        if not finite:
            self.scale = max(self.min_scale, self.scale / 2)
            self.good_steps = 0
            self.skipped += 1
            return False
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale = min(self.max_scale, self.scale * 2)
            self.good_steps = 0
        return True

    def state_dict(self) -> dict:
        return {
            "scale": self.scale,
            "good_steps": self.good_steps,
            "skipped": self.skipped,
            "growth_interval": self.growth_interval,
        }

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.skipped = int(state["skipped"])
        self.growth_interval = int(state["growth_interval"])
