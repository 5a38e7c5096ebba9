"""The CPU side of an update: AdamW, cosine learning rate with warm-up, global-norm clipping and
dynamic loss scaling (ane-private-api.md §5.4: AdamW β 0.9/0.95, weight decay 0.1 on matrices,
clip 1.0, cosine to 0.1·lr after 100 warm-up steps; §6: fp16 gradients underflow without scaling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class AdamW:
    """Decoupled-weight-decay Adam over a dict of float32 parameters, updated in place.

    Weight decay applies to matrices only (ndim >= 2: projections and the embedding), never to
    norm gains.
    """

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    t: int = 0
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)

    def step(
        self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float | None = None
    ) -> list[str]:
        """Apply one update in place, unless it would leave a parameter or moment non-finite.

        Returns [] when the update was applied; otherwise the names of the parameters whose new
        value (or moments) would hold a NaN or an infinity, and nothing has changed (not even `t`).
        Two passes (check everything, then apply) keep the extra memory to one parameter's worth;
        the update is elementwise, so the second pass recomputes exactly what the first checked.
        """
        lr = self.lr if lr is None else lr
        t = self.t + 1
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected, then refused
            bad = [name for name, w in params.items() if not _finite(*self._updated(name, w, grads, lr, t))]
            if bad:
                return bad
            self.t = t
            for name, w in params.items():
                w_new, m_new, v_new = self._updated(name, w, grads, lr, t)
                w[...] = w_new
                self.m[name], self.v[name] = m_new, v_new
        return []

    def _updated(self, name: str, w: np.ndarray, grads, lr: float, t: int):
        """(new weight, new m, new v) for parameter `name` at step `t`, without touching the state."""
        b1, b2 = self.betas
        g = grads[name]
        m = self.m.get(name)
        v = self.v.get(name)
        m_new = (1 - b1) * g if m is None else m * b1 + (1 - b1) * g
        v_new = (1 - b2) * np.square(g) if v is None else v * b2 + (1 - b2) * np.square(g)
        m_new = np.asarray(m_new, dtype=w.dtype)
        v_new = np.asarray(v_new, dtype=w.dtype)
        c1, c2 = 1 - b1**t, 1 - b2**t
        w_new = w * (1 - lr * self.weight_decay) if self.weight_decay and w.ndim >= 2 else w.copy()
        w_new -= lr * (m_new / c1) / (np.sqrt(v_new / c2) + self.eps)
        return w_new, m_new, v_new

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """Tensors (`m.<name>`, `v.<name>`) and scalars, for checkpoints."""
        tensors = {f"m.{k}": a for k, a in self.m.items()} | {f"v.{k}": a for k, a in self.v.items()}
        scalars = {
            "t": self.t,
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }
        return tensors, scalars

    def load_state_dict(self, tensors: dict[str, np.ndarray], scalars: dict) -> None:
        self.t = int(scalars["t"])
        self.lr, self.eps, self.weight_decay = scalars["lr"], scalars["eps"], scalars["weight_decay"]
        self.betas = tuple(scalars["betas"])
        self.m = {k[2:]: np.array(a, dtype=np.float32) for k, a in tensors.items() if k.startswith("m.")}
        self.v = {k[2:]: np.array(a, dtype=np.float32) for k, a in tensors.items() if k.startswith("v.")}


def _finite(*arrays: np.ndarray) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


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


def clip_by_global_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients in place so their joint L2 norm is at most `max_norm`; returns the norm
    before clipping (non-finite when a gradient overflowed)."""
    norm = global_norm(grads)
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
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
