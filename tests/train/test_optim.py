"""AdamW, clipping and the LR schedule against PyTorch; loss scaling's skip-and-back-off rule; the
fused AdamW's chunking, threads, folded gradient scale, finiteness proof and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anekit.train import optim
from anekit.train.optim import AdamW, LossScaler, clip_by_global_norm, clip_factor, cosine_lr, global_norm


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


def _problem(seed: int, shapes=(("w", (37, 61)), ("emb", (53, 29)), ("norm", (61,)))):
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * 0.5).astype(np.float32) for k, s in shapes}


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_adamw_matches_torch_fp32_over_chunks_and_threads(monkeypatch, threads):
    # blocks of 500 elements: every parameter spans several blocks, and the threads' split cuts
    # through a parameter
    monkeypatch.setattr(optim, "CHUNK", 500)
    params = _problem(3)
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    decay = [tparams["w"], tparams["emb"]]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": [tparams["norm"]], "weight_decay": 0.0}],
        lr=3e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    ours = AdamW(lr=3e-3, threads=threads)
    rng = np.random.default_rng(4)
    for step in range(8):
        grads = {
            k: (rng.standard_normal(v.shape) * 10.0 ** rng.integers(-4, 1)).astype(np.float32)
            for k, v in params.items()
        }
        scale = [1.0, 0.5, 1 / 3][step % 3]  # the loop's 1/accum x clipping factor
        lr = 3e-3 * (step + 1) / 8
        for g in opt.param_groups:
            g["lr"] = lr
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k] * np.float32(scale))
        opt.step()
        assert ours.step(params, grads, lr=lr, grad_scale=scale) == []
    assert ours.t == 8
    for k in params:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=2e-6, atol=2e-7, err_msg=k)
        state = opt.state[tparams[k]]
        for got, want in ((ours.m[k], state["exp_avg"].numpy()), (ours.v[k], state["exp_avg_sq"].numpy())):
            # cancellation in m: tolerances relative to the largest entry
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max(), err_msg=k)


def _run_steps(opt, params, n=4, seed=5, norm=True):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        assert opt.step(params, grads, grad_scale=0.25, grad_norm=global_norm(grads) if norm else None) == []
    return params


def test_threads_blocks_and_the_checked_path_give_identical_bits(monkeypatch):
    base = _problem(6)
    want = _run_steps(AdamW(threads=1), {k: v.copy() for k, v in base.items()})
    monkeypatch.setattr(optim, "CHUNK", 333)
    got = _run_steps(AdamW(threads=2), {k: v.copy() for k, v in base.items()}, norm=False)
    monkeypatch.setattr(optim, "HALF_ULP_MAX", 0.0)  # nothing is proven finite: check, then apply
    checked_opt = AdamW(threads=2)
    checked = _run_steps(checked_opt, {k: v.copy() for k, v in base.items()})
    for k in base:
        np.testing.assert_array_equal(got[k], want[k])
        np.testing.assert_array_equal(checked[k], want[k])
    assert checked_opt.t == 4


def test_proof_admits_training_sized_updates_and_declines_huge_ones():
    params = _problem(7)
    opt = AdamW()
    grads = {k: np.ones_like(v) for k, v in params.items()}
    assert opt._proven_finite(params, grads, 3e-4, 1, 1.0, None) is not None
    huge = {k: np.full_like(v, 1e17) for k, v in params.items()}  # (1-b2)·g² > 2^103: not provable
    assert opt._proven_finite(params, huge, 3e-4, 1, 1.0, None) is None
    nan = dict(grads, norm=np.full_like(params["norm"], np.nan))
    assert opt._proven_finite(params, nan, 3e-4, 1, 1.0, None) is None
    # ... and a huge gradient the proof declines still updates when the result is finite
    assert opt.step(params, huge) == []
    assert all(np.isfinite(v).all() for v in params.values())


def test_refused_update_changes_nothing_even_on_the_first_step():
    params = _problem(8)
    before = {k: v.copy() for k, v in params.items()}
    opt = AdamW()
    grads = {k: np.ones_like(v) for k, v in params.items()}
    grads["emb"][3, 4] = np.nan
    assert opt.step(params, grads) == ["emb"]
    assert opt.t == 0 and opt.m == {} and opt.v == {}
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
    # a scale that overflows only after folding: the scaled g² is what must stay finite
    assert opt.step(params, {k: np.ones_like(v) for k, v in params.items()}, grad_scale=1e30) == [
        "w",
        "emb",
        "norm",
    ]
    assert opt.t == 0 and opt.m == {}


def test_loaded_nonfinite_state_is_never_trusted():
    params = _problem(9)
    opt = AdamW()
    _run_steps(opt, params, n=1)
    tensors, scalars = opt.state_dict()
    tensors = {k: a.copy() for k, a in tensors.items()}
    tensors["v.norm"][0] = -1.0  # sqrt of a negative second moment: NaN
    fresh = AdamW()
    fresh.load_state_dict(tensors, scalars)
    before = {k: v.copy() for k, v in params.items()}
    assert fresh.step(params, {k: np.ones_like(v) for k, v in params.items()}) == ["norm"]
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])


def test_round_trip_through_state_dict_after_fused_steps_is_bit_exact():
    a = _problem(10)
    b = {k: v.copy() for k, v in a.items()}
    opt_a, opt_b = AdamW(threads=2), AdamW(threads=1)
    _run_steps(opt_a, a, n=3, seed=11)
    _run_steps(opt_b, b, n=3, seed=11)
    fresh = AdamW(lr=1.0)
    fresh.load_state_dict(*opt_b.state_dict())
    _run_steps(opt_a, a, n=3, seed=12)
    _run_steps(fresh, b, n=3, seed=12)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_clip_factor_is_torchs():
    rng = np.random.default_rng(13)
    g = [(rng.standard_normal(s) * 4).astype(np.float32) for s in ((6, 5), (9,))]
    ts = [torch.zeros(x.shape, requires_grad=True) for x in g]
    for t, x in zip(ts, g):
        t.grad = torch.tensor(x)
    norm = float(torch.nn.utils.clip_grad_norm_(ts, 1.0))
    factor = clip_factor(norm, 1.0)
    for t, x in zip(ts, g):
        np.testing.assert_allclose(x * np.float32(factor), t.grad.numpy(), rtol=1e-6)
    assert clip_factor(0.5, 1.0) == 1.0 and clip_factor(5.0, 0.0) == 1.0 and clip_factor(math.inf, 1.0) == 1.0
