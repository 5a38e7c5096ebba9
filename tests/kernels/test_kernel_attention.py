"""Attention kernels against a float64 NumPy oracle written here (token-major, per head, explicit
softmax backward, RoPE tables rounded as the kernels bake them), on the reference backend: exact
numerics to ~1e-9, ANE numerics within fp16 tolerance. Plus lint, determinism and layout checks."""

from __future__ import annotations

import numpy as np
import pytest

from anekit.backends.reference import compile as ref_compile
from anekit.kernels import attention_backward, attention_forward
from anekit.mil import lint
from anekit.model import PRESETS, ModelConfig, preset

GQA4 = ModelConfig(
    "gqa4", dim=64, hidden_dim=96, n_layers=1, n_heads=8, n_kv_heads=2, vocab_size=64, seq_len=32
)
MHA = ModelConfig(
    "mha", dim=64, hidden_dim=96, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=64, seq_len=32
)
WIDEQ = ModelConfig(  # q width 128 > dim 64, as in Qwen3 (the backward input gets 128 rows)
    "wideq",
    dim=64,
    hidden_dim=96,
    n_layers=1,
    n_heads=4,
    n_kv_heads=2,
    head_dim=32,
    vocab_size=64,
    seq_len=32,
)
CASES = [(preset("tiny"), 1), (preset("tiny"), 2), (GQA4, 2), (MHA, 3), (WIDEQ, 2)]
IDS = ["tiny-1seq", "tiny-2seq", "gqa4-2seq", "mha-3seq", "wideq-2seq"]


# -- oracle ------------------------------------------------------------------------------------


#: How the oracle rounds the RoPE tables: as the kernels bake them (their `const_precision`).
PRECISION = {"precision": "fp16"}


def baked(t):
    """float64 -> fp32 (-> fp16 for fp16 constants) -> float64, as the kernels store the tables."""
    t = t.astype(np.float32)
    return (t.astype(np.float16) if PRECISION["precision"] == "fp16" else t).astype(np.float64)


def tables(cfg, scale):
    """cos/sin [S, hd/2] as the kernels bake them: float64 angles, times `scale`, rounded."""
    hd = cfg.head_dim
    freqs = cfg.rope_theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(cfg.seq_len, dtype=np.float64)[:, None] * freqs[None, :]
    c, s = np.cos(ang), np.sin(ang)
    return baked(c * scale), baked(s * scale)


def rotate(t, c, s, inverse=False):
    """t [S, heads, hd]; pairs (2p, 2p+1) rotated by the angle whose cos/sin are c, s [S, hd/2]."""
    a, b = t[..., 0::2], t[..., 1::2]
    c, s = c[:, None, :], s[:, None, :]
    if inverse:
        s = -s
    out = np.empty_like(t)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def oracle_forward(cfg, xn, w):
    """One sequence: xn [D, S] channel-major -> dict of channel-major results and internals."""
    nh, nkv, hd, S = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, xn.shape[1]
    r = nh // nkv
    x = xn.T
    q = (x @ w["wq"].T).reshape(S, nh, hd)
    k = (x @ w["wk"].T).reshape(S, nkv, hd)
    v = (x @ w["wv"].T).reshape(S, nkv, hd)
    cq, sq = tables(cfg, 1.0 / np.sqrt(hd))
    ck, sk = tables(cfg, 1.0)
    qr, kr = rotate(q, cq, sq), rotate(k, ck, sk)
    attn = np.zeros((S, nh, hd))
    probs = np.zeros((nh, S, S))
    for h in range(nh):
        g = h // r
        sc = qr[:, h] @ kr[:, g].T
        sc[np.triu_indices(S, 1)] = -np.inf
        p = np.exp(sc - sc.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        probs[h] = p
        attn[:, h] = p @ v[:, g]
    attn = attn.reshape(S, nh * hd)
    o = attn @ w["wo"].T
    return {
        "o": o.T, "attn": attn.T, "q_rope": qr.reshape(S, -1).T, "k_rope": kr.reshape(S, -1).T,
        "v": v.reshape(S, -1).T, "_probs": probs,
    }  # fmt: skip


def oracle_backward(cfg, xn, dy, w):
    nh, nkv, hd, S = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, xn.shape[1]
    r = nh // nkv
    f = oracle_forward(cfg, xn, w)
    qr, kr = f["q_rope"].T.reshape(S, nh, hd), f["k_rope"].T.reshape(S, nkv, hd)
    v, probs = f["v"].T.reshape(S, nkv, hd), f["_probs"]
    da = (dy.T @ w["wo"]).reshape(S, nh, hd)
    dqr, dkr, dv = np.zeros_like(qr), np.zeros_like(kr), np.zeros_like(v)
    for h in range(nh):
        g, p = h // r, probs[h]
        dv[:, g] += p.T @ da[:, h]
        dp = da[:, h] @ v[:, g].T
        ds = p * (dp - (p * dp).sum(axis=1, keepdims=True))
        dqr[:, h] = ds @ kr[:, g]
        dkr[:, g] += ds.T @ qr[:, h]
    cq, sq = tables(cfg, 1.0 / np.sqrt(hd))
    ck, sk = tables(cfg, 1.0)
    dq = rotate(dqr, cq, sq, inverse=True).reshape(S, -1)
    dk = rotate(dkr, ck, sk, inverse=True).reshape(S, -1)
    dv = dv.reshape(S, -1)
    dx = dq @ w["wq"] + dk @ w["wk"] + dv @ w["wv"]
    return {"dx": dx.T, "dq": dq.T, "dk": dk.T, "dv": dv.T}


def per_sequence(fn, cfg, n_seq, *arrays):
    """Run a one-sequence oracle on each sequence of channel-major [C, n_seq·S] arrays and join."""
    S = cfg.seq_len
    parts = [fn(cfg, *[a[:, i * S : (i + 1) * S] for a in arrays[:-1]], arrays[-1]) for i in range(n_seq)]
    return {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0] if not k.startswith("_")}


def weights(cfg, rng):
    D, Q, KV = cfg.dim, cfg.q_dim, cfg.kv_dim
    return {
        "wq": rng.standard_normal((Q, D)) / np.sqrt(D), "wk": rng.standard_normal((KV, D)) / np.sqrt(D),
        "wv": rng.standard_normal((KV, D)) / np.sqrt(D), "wo": rng.standard_normal((D, Q)) / np.sqrt(Q),
    }  # fmt: skip


def staged(w):
    return {"wq_t": w["wq"].T, "wk_t": w["wk"].T, "wv_t": w["wv"].T, "wo": w["wo"]}


def run(spec, arrays, numerics):
    dtype = np.float64 if numerics == "exact" else np.float16
    x = spec.input_layout.pack(arrays, dtype=dtype)
    out = ref_compile(spec.program, numerics=numerics)(x=x)["out"]
    return spec.output_layout.unpack(out)


def rel_err(got, want):
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg,n_seq", CASES, ids=IDS)
def test_forward_exact(cfg, n_seq):
    rng = np.random.default_rng(0)
    w = weights(cfg, rng)
    xn = rng.standard_normal((cfg.dim, n_seq * cfg.seq_len))
    spec = attention_forward(cfg, n_seq=n_seq)
    got = run(spec, {"xnorm": xn, **staged(w)}, "exact")
    want = per_sequence(oracle_forward, cfg, n_seq, xn, w)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("cfg,n_seq", CASES, ids=IDS)
def test_backward_exact(cfg, n_seq):
    rng = np.random.default_rng(1)
    w = weights(cfg, rng)
    xn = rng.standard_normal((cfg.dim, n_seq * cfg.seq_len))
    dy = rng.standard_normal((cfg.dim, n_seq * cfg.seq_len))
    fwd = per_sequence(oracle_forward, cfg, n_seq, xn, w)
    spec = attention_backward(cfg, n_seq=n_seq)
    acts = {"dy": dy, "q_rope": fwd["q_rope"], "k_rope": fwd["k_rope"], "v": fwd["v"]}
    got = run(spec, {**acts, **staged(w)}, "exact")
    want = per_sequence(oracle_backward, cfg, n_seq, xn, dy, w)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("cfg,n_seq", [CASES[1], CASES[2]], ids=[IDS[1], IDS[2]])
def test_ane_numerics_within_fp16_tolerance(cfg, n_seq):
    rng = np.random.default_rng(2)
    w = weights(cfg, rng)
    xn = rng.standard_normal((cfg.dim, n_seq * cfg.seq_len))
    dy = rng.standard_normal((cfg.dim, n_seq * cfg.seq_len))
    fwd_want = per_sequence(oracle_forward, cfg, n_seq, xn, w)
    fwd = run(attention_forward(cfg, n_seq=n_seq), {"xnorm": xn, **staged(w)}, "ane")
    for k, want in fwd_want.items():
        assert fwd[k].dtype == np.float16
        assert rel_err(fwd[k], want) < 5e-3, k
    acts = {"dy": dy, "q_rope": fwd["q_rope"], "k_rope": fwd["k_rope"], "v": fwd["v"]}  # fp16 round trip
    bwd = run(attention_backward(cfg, n_seq=n_seq), {**acts, **staged(w)}, "ane")
    for k, want in per_sequence(oracle_backward, cfg, n_seq, xn, dy, w).items():
        assert rel_err(bwd[k], want) < 1e-2, k


def test_fp16_constants_are_the_default_and_fp32_tables_remain_for_the_exact_oracle(monkeypatch):
    cfg, n_seq = GQA4, 1
    default = attention_forward(cfg, n_seq=n_seq)
    assert "cast" not in {op.op_type for op in default.program.functions["main"].operations}
    spec = attention_forward(cfg, n_seq=n_seq, const_precision="fp32")
    assert "cast" in {op.op_type for op in spec.program.functions["main"].operations}
    rng = np.random.default_rng(3)
    w = weights(cfg, rng)
    xn = rng.standard_normal((cfg.dim, cfg.seq_len))
    got = run(spec, {"xnorm": xn, **staged(w)}, "exact")
    monkeypatch.setitem(PRECISION, "precision", "fp32")
    want = oracle_forward(cfg, xn, w)
    for k in want:
        if not k.startswith("_"):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_causality_and_gqa_mapping():
    """Changing the last token changes nothing before it; and q head h really reads kv head
    h // ratio: zeroing Wv rows of kv head 0 zeroes the output of q heads 0..ratio-1 only."""
    cfg = GQA4
    rng = np.random.default_rng(4)
    w = weights(cfg, rng)
    xn = rng.standard_normal((cfg.dim, cfg.seq_len))
    spec = attention_forward(cfg)
    a = run(spec, {"xnorm": xn, **staged(w)}, "exact")
    xn2 = xn.copy()
    xn2[:, -1] += 1.0
    b = run(spec, {"xnorm": xn2, **staged(w)}, "exact")
    np.testing.assert_allclose(a["o"][:, :-1], b["o"][:, :-1], rtol=0, atol=1e-12)
    assert np.abs(a["o"][:, -1] - b["o"][:, -1]).max() > 1e-3
    w0 = dict(w, wv=w["wv"].copy())
    w0["wv"][: cfg.head_dim] = 0.0
    c = run(spec, {"xnorm": xn, **staged(w0)}, "exact")
    attn = c["attn"].reshape(cfg.n_heads, cfg.head_dim, -1)
    r = cfg.gqa_ratio
    assert np.all(attn[:r] == 0.0)
    assert np.all(np.abs(attn[r:]).max(axis=(1, 2)) > 0)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("kernel", [attention_forward, attention_backward])
def test_lint_clean_for_presets(name, kernel):
    cfg = PRESETS[name]
    spec = kernel(cfg, n_seq=1)
    findings = [f for f in lint(spec.program, chip="m4") if f.severity != "info"]
    assert findings == []
    fn = spec.program.functions["main"]
    assert list(fn.inputs) == ["x"] and len(fn.outputs) == 1
    assert tuple(fn.inputs["x"].shape) == spec.input_layout.shape
    assert tuple(fn.outputs[0].shape) == spec.output_layout.shape
    assert spec.input_layout.width % 32 == 0 and spec.output_layout.width % 32 == 0


@pytest.mark.parametrize("kernel", [attention_forward, attention_backward])
def test_lint_clean_batched_and_padded_head_dim(kernel):
    # several sequences per call (the head-split transposes), and head_dim 8 padded to 32 for the
    # matmuls that contract over it; q/kv widths (128, 32) are multiples of 32 themselves
    padded = ModelConfig(
        "pad", dim=128, hidden_dim=128, n_layers=1, n_heads=16, n_kv_heads=4, vocab_size=64, seq_len=32
    )
    for cfg, n_seq in ((preset("tiny"), 8), (padded, 3)):
        assert [f for f in lint(kernel(cfg, n_seq=n_seq).program, chip="m4") if f.severity != "info"] == []


@pytest.mark.parametrize("kernel", [attention_forward, attention_backward])
def test_program_text_is_deterministic(kernel):
    cfg = preset("tiny")
    a, b = kernel(cfg, n_seq=2), kernel(cfg, n_seq=2)
    assert a.text() == b.text()
    assert a.input_layout == b.input_layout and a.output_layout == b.output_layout
    assert kernel(cfg, n_seq=1).text() != a.text()


def test_layouts_and_flops():
    cfg = preset("tiny")
    D, Q, KV, S = cfg.dim, cfg.q_dim, cfg.kv_dim, cfg.seq_len
    f = attention_forward(cfg)
    assert f.input_layout.shape == (1, D, 1, S + 2 * Q + 2 * KV)
    assert f.input_layout.names == ("xnorm", "wq_t", "wk_t", "wv_t", "wo")
    assert f.output_layout.names == ("o", "attn", "q_rope", "k_rope", "v")
    assert f.output_layout.shape == (1, D + 2 * Q + 2 * KV, 1, S)
    proj = 2 * S * D * (2 * Q + 2 * KV)  # q, k, v, o  /  da, dx_q, dx_k, dx_v
    one = 2 * cfg.n_heads * S * S * cfg.head_dim  # one [S, hd] x [hd, S] product per head
    assert f.flops == proj + 2 * one  # scores, probs·V
    b = attention_backward(cfg)
    assert b.output_layout.names == ("dx", "dq", "dk", "dv")
    assert b.input_layout["k_rope"].columns == b.input_layout["v"].columns  # K and V stacked on channels
    assert b.flops == proj + 5 * one  # scores (recomputed), dV, dP, dQ, dK


@pytest.mark.parametrize("kernel", [attention_forward, attention_backward])
def test_printed_text_parses_back_to_the_same_kernel(kernel):
    """The engine gets the program as MIL text plus weight files: that text must mean the same."""
    from anekit.mil import dumps, loads

    cfg = GQA4
    spec = kernel(cfg, n_seq=2)
    model = dumps(spec.program)
    again = loads(model.text, model.weights)
    x = np.random.default_rng(7).standard_normal(spec.input_layout.shape)
    a = ref_compile(spec.program, numerics="exact")(x=x)["out"]
    b = ref_compile(again, numerics="exact")(x=x)["out"]
    np.testing.assert_array_equal(a, b)
