"""AdamW, clipping and the LR schedule against PyTorch; loss scaling's skip-and-back-off rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anekit.train.optim import AdamW, LossScaler, clip_by_global_norm, cosine_lr


def test_adamw_matches_torch_with_decay_on_matrices_only():
    rng = np.random.default_rng(0)
    params = {
        "w": rng.standard_normal((5, 3)).astype(np.float32),
        "norm": rng.standard_normal(5).astype(np.float32),
    }
    tparams = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.AdamW(
        [{"params": [tparams["w"]], "weight_decay": 0.1}, {"params": [tparams["norm"]], "weight_decay": 0.0}],
        lr=1e-2,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    ours = AdamW(lr=1e-2)
    for step in range(5):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        lr = 1e-2 * (step + 1) / 5
        for g in opt.param_groups:
            g["lr"] = lr
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k], dtype=torch.float64)
        opt.step()
        ours.step(params, grads, lr=lr)
    for k in params:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-5, atol=1e-6)


def test_adamw_state_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    a = {"w": rng.standard_normal((4, 4)).astype(np.float32)}
    b = {"w": a["w"].copy()}
    opt_a, opt_b = AdamW(), AdamW()
    g = [{"w": rng.standard_normal((4, 4)).astype(np.float32)} for _ in range(4)]
    for i in range(2):
        opt_a.step(a, g[i])
        opt_b.step(b, g[i])
    tensors, scalars = opt_b.state_dict()
    fresh = AdamW(lr=123.0)
    fresh.load_state_dict(tensors, scalars)
    for i in range(2, 4):
        opt_a.step(a, g[i])
        fresh.step(b, g[i])
    np.testing.assert_array_equal(a["w"], b["w"])


def test_clip_matches_torch():
    rng = np.random.default_rng(2)
    grads = {k: (rng.standard_normal(s) * 3).astype(np.float32) for k, s in (("a", (4, 4)), ("b", (7,)))}
    tgrads = [torch.tensor(g.copy()) for g in grads.values()]
    tensors = [torch.zeros_like(t, requires_grad=True) for t in tgrads]
    for t, g in zip(tensors, tgrads):
        t.grad = g
    want = torch.nn.utils.clip_grad_norm_(tensors, 1.0)
    got = clip_by_global_norm(grads, 1.0)
    assert got == pytest.approx(float(want), rel=1e-6)
    for g, t in zip(grads.values(), tensors):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-5)
    assert math.sqrt(sum(float((g**2).sum()) for g in grads.values())) == pytest.approx(1.0, rel=1e-4)


def test_clip_leaves_small_and_reports_nonfinite():
    small = {"a": np.full(3, 0.1, np.float32)}
    assert clip_by_global_norm(small, 1.0) == pytest.approx(math.sqrt(0.03))
    np.testing.assert_array_equal(small["a"], np.float32(0.1))
    bad = {"a": np.array([np.inf, 1], np.float32)}
    assert not math.isfinite(clip_by_global_norm(bad, 1.0))


def test_cosine_schedule_shape():
    lrs = [cosine_lr(s, 1.0, total_steps=110, warmup=10) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55)
    assert lrs[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_loss_scaler_skips_backs_off_and_grows():
    s = LossScaler(scale=256.0, growth_interval=3)
    assert s.update(True) and s.scale == 256
    assert not s.update(False) and s.scale == 128 and s.skipped == 1
    for _ in range(3):
        assert s.update(True)
    assert s.scale == 256
    state = s.state_dict()
    t = LossScaler()
    t.load_state_dict(state)
    assert t.state_dict() == state
    floor = LossScaler(scale=1.0)
    assert not floor.update(False) and floor.scale == 1.0
