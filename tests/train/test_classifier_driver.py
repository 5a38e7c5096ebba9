"""`anekit.train.classifier.EngineClassifier` (classifier + cross-entropy in kernels over vocabulary
chunks) against oracles written here: float64 NumPy (log-sum-exp, softmax - onehot) and PyTorch
autograd (`torch.nn.functional.cross_entropy`). Exact reference numerics: rtol 1e-4; engine
numerics: loss within 1e-2 relative, per-tensor cosine > 0.99."""

from __future__ import annotations

import numpy as np
import pytest

from anekit.backends.reference import compile as ref_compile
from anekit.train.classifier import EngineClassifier, classifier_host_flops, classifier_kernel_uses

torch = pytest.importorskip("torch")

IGNORE = -1


def compiler(numerics):
    return lambda program: ref_compile(program, numerics=numerics)


def oracle(x, w, targets, grad_scale=1.0, normalizer=None):
    """float64: (loss_sum, dx, dW) of grad_scale·Σ_n CE_n / normalizer."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    t = np.asarray(targets)
    valid = t != IGNORE
    logits = w @ x  # [V, N]
    m = logits.max(axis=0)
    lse = m + np.log(np.exp(logits - m).sum(axis=0))
    cols = np.nonzero(valid)[0]
    loss = float(np.sum(lse[cols] - logits[t[cols], cols]))
    g = np.exp(logits - lse)  # softmax
    g[t[cols], cols] -= 1.0  # - onehot
    g *= np.where(valid, grad_scale / (normalizer or max(int(valid.sum()), 1)), 0.0)
    return loss, w.T @ g, g @ x.T


def torch_grads(x, w, targets, grad_scale=1.0, normalizer=None):
    """The same through PyTorch autograd (float64)."""
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    wt = torch.tensor(np.asarray(w, np.float64), requires_grad=True)
    tt = torch.tensor(np.asarray(targets), dtype=torch.long)
    count = int((tt != IGNORE).sum())
    loss = torch.nn.functional.cross_entropy((wt @ xt).T, tt, ignore_index=IGNORE, reduction="sum")
    (loss * grad_scale / (normalizer or max(count, 1))).backward()
    return float(loss.detach()), xt.grad.numpy(), wt.grad.numpy()


def problem(d, v, n, seed, ignore=(), scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((d, n))
    w = rng.standard_normal((v, d)) * (scale / np.sqrt(d))
    t = rng.integers(0, v, n)
    t[list(ignore)] = IGNORE
    return x, w, t


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def check(got, want, numerics):
    loss, dx, dw = got
    wl, wdx, wdw = want
    if numerics == "exact":
        assert loss == pytest.approx(wl, rel=1e-4)
        np.testing.assert_allclose(dx, wdx, rtol=1e-4, atol=1e-10)
        np.testing.assert_allclose(dw, wdw, rtol=1e-4, atol=1e-10)
    else:
        assert abs(loss - wl) <= 1e-2 * abs(wl)
        assert cosine(dx, wdx) > 0.99 and cosine(dw, wdw) > 0.99


# D, V, N, vocab_chunk: one chunk; V a multiple of the chunk; V not a multiple of the chunk nor of
# 32 (a masked last chunk); N not a multiple of 32 (padded tokens)
SHAPES = [(64, 96, 32, None), (64, 256, 64, 64), (96, 300, 40, 128), (32, 1000, 24, 224)]


@pytest.mark.parametrize("numerics", ["exact", "ane"])
@pytest.mark.parametrize("d,v,n,vc", SHAPES, ids=["one-chunk", "even", "ragged", "ragged-n"])
def test_matches_oracle_and_torch(numerics, d, v, n, vc):
    x, w, t = problem(d, v, n, seed=d + v + n, ignore=(1, n - 1), scale=3.0)
    with EngineClassifier(compiler(numerics), d, v, n, vocab_chunk=vc) as cls:
        cls.set_weight(w)
        got = cls(x, t, grad_scale=8.0, normalizer=50)
        assert cls.dtype == (np.float64 if numerics == "exact" else np.float32)
        assert got[1].shape == (d, n) and got[1].flags.c_contiguous and got[2].shape == (v, d)
        assert got[1].dtype == got[2].dtype == cls.dtype
    check(got, oracle(x, w, t, 8.0, 50), numerics)
    check(got, torch_grads(x, w, t, 8.0, 50), numerics)


@pytest.mark.parametrize("numerics", ["exact", "ane"])
def test_ignored_targets(numerics):
    d, v, n = 64, 200, 32
    x, w, t = problem(d, v, n, seed=5, ignore=range(0, 32, 3))
    with EngineClassifier(compiler(numerics), d, v, n, vocab_chunk=96) as cls:
        cls.set_weight(w)
        got = cls(x, t)
        check(got, torch_grads(x, w, t), numerics)
        assert np.all(got[1][:, t == IGNORE] == 0)  # no gradient reaches an ignored position
        loss, dx, dw = cls(x, np.full(n, IGNORE))
        assert loss == 0.0 and not dx.any() and not dw.any()


@pytest.mark.parametrize("numerics", ["exact", "ane"])
def test_tied_embedding_gradient_adds_into_out(numerics):
    """The classifier's dW added (`out=`) into the tied embedding's gradient, which already holds
    the embedding lookup's scatter-add: against PyTorch with one shared weight."""
    d, v, n = 64, 160, 32
    rng = np.random.default_rng(7)
    emb = rng.standard_normal((v, d)) * 0.5
    tokens = rng.integers(0, v, n)
    t = rng.integers(0, v, n)
    w = torch.tensor(emb, requires_grad=True)
    h = w[torch.tensor(tokens)].T  # [D, N], the embedding lookup
    xf = torch.tanh(h)  # something between lookup and classifier
    loss = torch.nn.functional.cross_entropy((w @ xf).T, torch.tensor(t), reduction="sum")
    (loss * 4.0 / n).backward()
    x = np.tanh(emb[tokens].T)
    with EngineClassifier(compiler(numerics), d, v, n, vocab_chunk=64) as cls:
        cls.set_weight(emb)
        grad = np.zeros((v, d), dtype=cls.dtype)
        ls, dx, dw = cls(x, t, grad_scale=4.0, out=grad)
        assert dw is grad
        dh = dx * (1 - x**2)
        np.add.at(grad, tokens, dh.T)  # the embedding's own part, as cpu_ops.embedding_backward
    want = w.grad.numpy()
    if numerics == "exact":
        assert ls == pytest.approx(float(loss.detach()), rel=1e-4)
        np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-10)
    else:
        assert abs(ls - float(loss.detach())) <= 1e-2 * float(loss.detach()) and cosine(grad, want) > 0.99


def test_set_weight_again_restages_every_chunk():
    d, v, n = 32, 130, 32
    x, w, t = problem(d, v, n, seed=9)
    with EngineClassifier(compiler("exact"), d, v, n, vocab_chunk=64) as cls:
        cls.set_weight(w)
        cls(x, t)
        w2 = w[::-1].copy() * 1.5
        cls.set_weight(w2)  # the write_slice path
        w2[:] = 0  # the driver keeps its own copy
        check(cls(x, t, grad_scale=2.0), oracle(x, w[::-1] * 1.5, t, 2.0), "exact")


def test_loss_only_and_counters():
    d, v, n = 32, 100, 32
    x, w, t = problem(d, v, n, seed=11)
    with EngineClassifier(compiler("exact"), d, v, n, vocab_chunk=64) as cls:
        cls.set_weight(w)
        loss, dx, dw = cls(x, t, need_grad=False)
        assert dx is None and dw is None
        assert loss == pytest.approx(oracle(x, w, t)[0], rel=1e-9)
        assert cls.kernel_calls == 2  # two chunks, forward only
        cls(x, t)
        assert cls.kernel_calls == 6 and cls.engine_s > 0


def test_errors():
    d, v, n = 32, 64, 32
    x, w, t = problem(d, v, n, seed=13)
    with EngineClassifier(compiler("ane"), d, v, n) as cls:
        with pytest.raises(RuntimeError, match="set_weight"):
            cls(x, t)
        with pytest.raises(ValueError, match="classifier weight"):
            cls.set_weight(w[:-1])
        cls.set_weight(w)
        for bad in (np.where(np.arange(n) == 3, v, t), np.where(np.arange(n) == 3, -2, t)):
            with pytest.raises(ValueError, match="target ids"):
                cls(x, bad)
        with pytest.raises(ValueError, match="x must be"):
            cls(x[:, :-1], t)
        with pytest.raises(ValueError, match="out must be"):
            cls(x, t, out=np.zeros((v, d), np.float64))


def test_kernel_uses_and_host_flops():
    uses = classifier_kernel_uses(768, 32000, 256)
    assert [(name, calls) for name, _, calls in uses] == [
        ("classifier_forward", 8),
        ("classifier_backward", 8),
    ]
    assert sum(spec.flops * calls for _, spec, calls in uses) == 4 * 2 * 32000 * 768 * 256
    ragged = classifier_kernel_uses(64, 300, 40, vocab_chunk=128)
    assert [(name, calls) for name, _, calls in ragged] == [
        ("classifier_forward", 2),
        ("classifier_backward", 2),
        ("classifier_forward_last", 1),
        ("classifier_backward_last", 1),
    ]
    assert ragged[2][1].input_layout["w_t"].shape == (64, 64)  # 44 rows, padded to 64
    assert [name for name, _, _ in classifier_kernel_uses(64, 300, 40, 128, need_grad=False)] == [
        "classifier_forward",
        "classifier_forward_last",
    ]
    host = classifier_host_flops(768, 32000, 256)
    kernel = sum(spec.flops * calls for _, spec, calls in uses)
    assert sum(host.values()) < 0.02 * kernel  # the host keeps O(N·D + V·D) of O(V·D·N)
    assert "classifier_dw_add" not in classifier_host_flops(768, 32000, 256, accumulate=False)


@pytest.mark.parametrize("numerics", ["exact", "ane"])
@pytest.mark.parametrize("grad_scale", [1.0, 256.0, 2.0**14, 2.0**24], ids=["1", "256", "2^14", "2^24"])
def test_any_loss_scale_keeps_fp16_range_and_precision(numerics, grad_scale):
    """From no loss scale (coef = 1/N: small products that must not flush to zero) to a scale far
    past fp16's range: the kernels never see it (the host picks their fp16 scales and divides them
    out in fp32; at 2^14 here coef itself is close enough to the chosen scale to be used as is), so
    the results are finite and every dW row keeps its precision, the rare tokens' small rows
    included."""
    d, v, n = 64, 4096, 64
    x, w, t = problem(d, v, n, seed=17, scale=2.0)
    with EngineClassifier(compiler(numerics), d, v, n, vocab_chunk=1024) as cls:
        cls.set_weight(w)
        got = cls(x, t, grad_scale=grad_scale)
    assert np.all(np.isfinite(got[1])) and np.all(np.isfinite(got[2]))
    want = torch_grads(x, w, t, grad_scale)
    check(got, want, numerics)
    row_err = np.linalg.norm(got[2] - want[2], axis=1) / np.linalg.norm(want[2], axis=1)
    assert np.median(row_err) < 3e-3 and row_err.max() < 2e-2


def test_confident_predictions_cancel():
    """softmax ≈ onehot: the host's one-hot part uses the weights as the kernels hold them, so the
    small remainder is not swamped by fp16 rounding of W."""
    d, v, n = 64, 256, 32
    x, w, _ = problem(d, v, n, seed=19)
    t = np.argmax(w @ x, axis=0)
    w = w * 16.0  # sharpen: the loss per token ~0.14, the target's probability near 1
    with EngineClassifier(compiler("ane"), d, v, n, vocab_chunk=128) as cls:
        cls.set_weight(w)
        got = cls(x, t, grad_scale=64.0)
    want = torch_grads(x, w, t, 64.0)
    assert abs(got[0] - want[0]) <= 1e-2 * abs(want[0])
    assert cosine(got[1], want[1]) > 0.99 and cosine(got[2], want[2]) > 0.99


# -- vocabulary compaction -------------------------------------------------------------------------


def torch_compact(x, w, targets, ids, grad_scale=1.0):
    """Cross-entropy over the rows `ids` only (targets remapped), gradients into the full weight
    through PyTorch's indexing."""
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    wt = torch.tensor(np.asarray(w, np.float64), requires_grad=True)
    where = {int(v): i for i, v in enumerate(ids)}
    tt = torch.tensor([IGNORE if t == IGNORE else where[int(t)] for t in targets], dtype=torch.long)
    count = int((tt != IGNORE).sum())
    logits = wt[torch.tensor(ids)] @ xt
    loss = torch.nn.functional.cross_entropy(logits.T, tt, ignore_index=IGNORE, reduction="sum")
    (loss * grad_scale / max(count, 1)).backward()
    return float(loss.detach()), xt.grad.numpy(), wt.grad.numpy()


@pytest.mark.parametrize("numerics", ["exact", "ane"])
def test_vocabulary_compaction(numerics):
    d, v, n = 64, 500, 40
    rng = np.random.default_rng(21)
    ids = np.sort(rng.choice(v, 150, replace=False))  # 150 kept rows: 2 chunks of 64 and a ragged 22
    x, w, _ = problem(d, v, n, seed=21, scale=3.0)
    t = rng.choice(ids, n)
    t[[0, 7]] = IGNORE
    given = np.concatenate([ids[::-1], ids[:10]])  # order and repeats do not matter
    with EngineClassifier(compiler(numerics), d, v, n, vocab_chunk=64, vocab_ids=given) as cls:
        assert np.array_equal(cls.vocab_ids, ids) and [r for _, r in cls.chunks] == [64, 64, 22]
        cls.set_weight(w)
        got = cls(x, t, grad_scale=16.0)
        want = torch_compact(x, w, t, ids, 16.0)
        check(got, want, numerics)
        outside = np.setdiff1d(np.arange(v), ids)
        assert not got[2][outside].any()
        grad = np.full((v, d), 0.5, dtype=cls.dtype)  # e.g. the embedding lookup's part already in
        _, _, dw = cls(x, t, grad_scale=16.0, out=grad)
        assert dw is grad and np.all(grad[outside] == 0.5)
        check((got[0], got[1], grad - 0.5), want, numerics)
        with pytest.raises(ValueError, match="not in the compacted vocabulary"):
            cls(x, np.where(np.arange(n) == 3, outside[0], t))


def test_vocabulary_compaction_refuses_bad_ids():
    for ids in ([], [-1, 3], [0, 64]):
        with pytest.raises(ValueError, match="vocab_ids"):
            EngineClassifier(compiler("exact"), 32, 64, 32, vocab_ids=ids)


@pytest.mark.requires_ane
@pytest.mark.parametrize(
    "d,v,n,vc", [(768, 32000, 256, None), (64, 300, 40, 128)], ids=["stories110m", "ragged"]
)
def test_engine_matches_reference(d, v, n, vc):
    """The whole driver on the Neural Engine against the same driver on the reference backend's
    engine numerics, and both against PyTorch (loss 1e-2, cosine 0.99)."""
    import anekit

    x, w, t = problem(d, v, n, seed=23, ignore=(2,))
    results = []
    for backend in ("ane", "reference"):
        with EngineClassifier(
            lambda p, b=backend: anekit.compile(p, backend=b), d, v, n, vocab_chunk=vc
        ) as cls:  # fmt: skip
            cls.set_weight(w)
            results.append(cls(x, t, grad_scale=256.0))
    (la, dxa, dwa), (lr, dxr, dwr) = results
    assert abs(la - lr) <= 1e-3 * abs(lr)
    assert cosine(dxa, dxr) > 0.999 and cosine(dwa, dwr) > 0.999
    check(results[0], torch_grads(x, w, t, 256.0), "ane")
