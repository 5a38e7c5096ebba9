"""`anekit.train.cpu_ops` and the test oracles of `cpu_ops_reference` against PyTorch autograd (float64)."""

from __future__ import annotations

import cpu_ops_reference as ref
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anekit.train import cpu_ops

RNG = np.random.default_rng(0)


def t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def test_embedding_gather_and_scatter_add():
    V, D = 11, 6
    embed = RNG.standard_normal((V, D))
    tok = np.array([3, 1, 3, 0, 10, 3])
    x = cpu_ops.embedding_forward(embed, tok, np.float64)
    assert x.shape == (D, tok.size) and x.flags.c_contiguous
    np.testing.assert_array_equal(x, embed[tok].T)
    dx = RNG.standard_normal((D, tok.size))
    te = t(embed, True)
    (te[torch.from_numpy(tok)] * t(dx.T)).sum().backward()
    np.testing.assert_allclose(cpu_ops.embedding_backward(dx, tok, V), te.grad.numpy(), rtol=1e-12)
    acc = np.ones((V, D))
    out = cpu_ops.embedding_backward(dx, tok, V, out=acc)
    assert out is acc
    np.testing.assert_allclose(acc, 1 + te.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_rmsnorm_forward_backward(dtype, rtol):
    D, N, eps = 16, 10, 1e-5
    x, g, dy = RNG.standard_normal((D, N)), 1 + 0.1 * RNG.standard_normal(D), RNG.standard_normal((D, N))
    y, rrms = cpu_ops.rmsnorm_forward(x, g, eps, dtype)
    assert y.dtype == dtype
    tx, tg = t(x, True), t(g, True)
    ty = tx * torch.rsqrt(tx.pow(2).mean(0, keepdim=True) + eps) * tg[:, None]
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol)
    (ty * t(dy)).sum().backward()
    dx, dg = cpu_ops.rmsnorm_backward(dy, x, g, rrms, dtype)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol * 10, atol=rtol)
    np.testing.assert_allclose(dg, tg.grad.numpy(), rtol=rtol * 10)


@pytest.mark.parametrize("chunk", [7, 20, 8192])
def test_cross_entropy_chunked_matches_autograd(chunk):
    V, D, N = 20, 8, 12
    x, w = RNG.standard_normal((D, N)), RNG.standard_normal((V, D))
    tgt = RNG.integers(0, V, N)
    tgt[[2, 5]] = cpu_ops.IGNORE
    loss_sum, dx, dw = cpu_ops.cross_entropy(x, w, tgt, grad_scale=8.0, chunk=chunk, dtype=np.float64)
    tx, tw = t(x, True), t(w, True)
    logits = (tw @ tx).T
    loss = F.cross_entropy(logits, torch.from_numpy(tgt), ignore_index=cpu_ops.IGNORE)
    (8.0 * loss).backward()
    assert loss_sum / 10 == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-10, atol=1e-14)
    # a global normalizer (the step splits a batch into calls) and the forward-only path
    _, dx2, _ = cpu_ops.cross_entropy(x, w, tgt, normalizer=40, chunk=chunk, dtype=np.float64)
    np.testing.assert_allclose(dx2, tx.grad.numpy() / 8.0 * 10 / 40, rtol=1e-10, atol=1e-14)
    only, none1, none2 = cpu_ops.cross_entropy(x, w, tgt, chunk=chunk, need_grad=False, dtype=np.float64)
    assert only == pytest.approx(loss_sum, rel=1e-12) and none1 is None and none2 is None


def test_cross_entropy_is_stable_and_validates_targets():
    x = np.array([[1000.0, -1000.0]])
    w = np.array([[1.0], [2.0], [-1.0]])
    loss_sum, dx, _ = cpu_ops.cross_entropy(x, w, [1, 2], chunk=2, dtype=np.float64)
    assert np.isfinite(loss_sum) and np.all(np.isfinite(dx))
    assert loss_sum == pytest.approx(0.0 + 0.0 + np.log1p(np.exp(-1000.0)) + 0.0, abs=1e-9)
    with pytest.raises(ValueError, match="target ids"):
        cpu_ops.cross_entropy(x, w, [1, 3])


def test_classifier_forward_backward():
    V, D, N = 9, 5, 7
    x, w, dl = RNG.standard_normal((D, N)), RNG.standard_normal((V, D)), RNG.standard_normal((V, N))
    tx, tw = t(x, True), t(w, True)
    logits = tw @ tx
    np.testing.assert_allclose(ref.classifier_forward(x, w, np.float64), logits.detach().numpy(), rtol=1e-12)
    (logits * t(dl)).sum().backward()
    dx, dw = ref.classifier_backward(dl, x, w, np.float64)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-12)


def torch_rope(x, hd, S, theta):
    """x [heads·hd, n_seq·S] channel-major; complex rotation of pairs (2p, 2p+1)."""
    C, N = x.shape
    freqs = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    pos = torch.arange(N, dtype=torch.float64) % S
    rot = torch.polar(torch.ones(N, hd // 2, dtype=torch.float64), pos[:, None] * freqs[None])
    z = torch.view_as_complex(x.T.reshape(N, C // hd, hd // 2, 2).contiguous()) * rot[:, None, :]
    return torch.view_as_real(z).reshape(N, C).T


def test_rope_forward_and_backward():
    hd, S, heads, theta = 8, 6, 3, 500.0
    x, g = RNG.standard_normal((heads * hd, 2 * S)), RNG.standard_normal((heads * hd, 2 * S))
    tx = t(x, True)
    ty = torch_rope(tx, hd, S, theta)
    np.testing.assert_allclose(
        ref.rope_forward(x, hd, S, theta, np.float64), ty.detach().numpy(), rtol=1e-12, atol=1e-13
    )
    (0.5 * ty * t(g)).sum().backward()
    got = ref.rope_backward(g, hd, S, theta, scale=0.5, dtype=np.float64)
    np.testing.assert_allclose(got, tx.grad.numpy(), rtol=1e-12, atol=1e-13)
    # the backward rotation inverts the forward one
    back = ref.rope_backward(ref.rope_forward(x, hd, S, theta, np.float64), hd, S, theta, dtype=np.float64)
    np.testing.assert_allclose(back, x, rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="sequences of"):
        ref.rope_forward(x[:, :5], hd, S)


def test_gqa_reduce_is_the_transpose_of_repeat_interleave():
    nh, nkv, hd, N = 6, 2, 4, 5
    kv = t(RNG.standard_normal((nkv, hd, N)), True)
    full = kv.repeat_interleave(nh // nkv, dim=0)  # q head h reads kv head h // ratio
    g = RNG.standard_normal((nh * hd, N))
    (full.reshape(nh * hd, N) * t(g)).sum().backward()
    np.testing.assert_allclose(ref.gqa_reduce(g, nh, nkv), kv.grad.numpy().reshape(nkv * hd, N), rtol=1e-12)


def test_silu_grad_and_swiglu_backward():
    h1, h3, dg = RNG.standard_normal((7, 3)) * 3, RNG.standard_normal((7, 3)), RNG.standard_normal((7, 3))
    th1, th3 = t(h1, True), t(h3, True)
    (F.silu(th1) * th3 * t(dg)).sum().backward()
    dh1, dh3 = ref.swiglu_backward(dg, h1, h3, np.float64)
    np.testing.assert_allclose(dh1, th1.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(dh3, th3.grad.numpy(), rtol=1e-12)
    th = t(h1, True)
    F.silu(th).sum().backward()
    np.testing.assert_allclose(ref.silu_grad(h1, np.float64), th.grad.numpy(), rtol=1e-12)
    assert ref.silu_grad(h1).dtype == np.float32
