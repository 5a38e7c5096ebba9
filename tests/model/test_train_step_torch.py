"""One training step (loss and every parameter gradient) of `ModelRunner` on the reference backend,
against PyTorch autograd in float64 on identical weights and tokens.

The PyTorch model below is written independently of anekit: token-major, complex-number RoPE on
interleaved pairs, `repeat_interleave` for grouped-query attention (q head h reads kv head
h // ratio), a -inf causal mask, SwiGLU, tied or untied classifier, mean cross-entropy.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anekit.backends.base import Kernel
from anekit.model import ModelConfig, preset
from anekit.model.reference import init_params
from anekit.train.schedule import GRAD_KERNELS, STEP_KERNELS, KernelUse, host_flops, schedule
from anekit.train.step import ModelRunner

GQA4 = ModelConfig(  # 8 q heads on 2 kv heads (ratio 4), head_dim 8 (padded to 32 in the kernels), untied
    "gqa4", dim=64, hidden_dim=96, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=64, seq_len=32,
    tie_embeddings=False,
)  # fmt: skip
MHA_ODD = ModelConfig(  # multi-head, sequence length 20 (padded to 32 in the kernels), tied
    "mha", dim=64, hidden_dim=128, n_layers=2, n_heads=2, n_kv_heads=2, vocab_size=48, seq_len=20
)


def torch_loss(
    params: dict[str, torch.Tensor], cfg: ModelConfig, tokens: torch.Tensor, targets: torch.Tensor
):
    B, S = tokens.shape
    hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    dt = params["embed"].dtype  # float64 for the checks; float32 also works (benchmarks)

    def rmsnorm(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * g

    freqs = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angles = torch.outer(torch.arange(S, dtype=torch.float64), freqs)
    rot = torch.polar(torch.ones_like(angles), angles).to(
        torch.complex128 if dt == torch.float64 else torch.complex64
    )

    def rope(t):  # [B, S, heads, hd]: pairs (2p, 2p+1) as one complex number
        c = torch.view_as_complex(t.reshape(B, S, t.shape[2], hd // 2, 2).contiguous())
        return torch.view_as_real(c * rot[None, :, None, :]).reshape(t.shape)

    mask = torch.triu(torch.full((S, S), float("-inf"), dtype=dt), diagonal=1)
    x = params["embed"][tokens]
    for i in range(cfg.n_layers):
        p = {k.split(".")[-1]: v for k, v in params.items() if k.startswith(f"layers.{i}.")}
        h = rmsnorm(x, p["attn_norm"])
        q = rope((h @ p["wq"].T).view(B, S, nh, hd)).transpose(1, 2)
        k = rope((h @ p["wk"].T).view(B, S, nkv, hd)).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
        v = (h @ p["wv"].T).view(B, S, nkv, hd).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, dim=-1) @ v
        x = x + att.transpose(1, 2).reshape(B, S, nh * hd) @ p["wo"].T
        h = rmsnorm(x, p["ffn_norm"])
        x = x + (F.silu(h @ p["w1"].T) * (h @ p["w3"].T)) @ p["w2"].T
    logits = (
        rmsnorm(x, params["final_norm"]) @ (params["embed"] if cfg.tie_embeddings else params["lm_head"]).T
    )
    return F.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1))


@contextlib.contextmanager
def one_torch_thread():
    """Intra-op threads oversubscribe a busy 2-core machine (seconds instead of milliseconds)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def torch_grads(params: dict[str, np.ndarray], cfg, tokens, targets):
    tp = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in params.items()}
    with one_torch_thread():
        loss = torch_loss(tp, cfg, torch.from_numpy(tokens), torch.from_numpy(targets))
        loss.backward()
    return loss.item(), {k: t.grad.numpy() for k, t in tp.items()}


def batch(cfg: ModelConfig, b: int, seed: int):
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, cfg.vocab_size, (b, cfg.seq_len))
    tgt = rng.integers(0, cfg.vocab_size, (b, cfg.seq_len))
    return tok, tgt


def params_for(cfg: ModelConfig, seed: int = 0):
    # the "normal" init with larger norms than 1 so RMSNorm gains get non-trivial gradients
    p = init_params(cfg, seed, scheme="dynamic", dtype=np.float64)
    rng = np.random.default_rng(seed + 100)
    for name in p:
        if name.endswith("norm"):
            p[name] = 1.0 + 0.1 * rng.standard_normal(p[name].shape)
    return p


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


@pytest.fixture(scope="module")
def cases():
    out = {}
    for cfg, b, spc in ((preset("tiny"), 2, None), (GQA4, 4, 2), (MHA_ODD, 2, None)):
        p = params_for(cfg)
        tok, tgt = batch(cfg, b, seed=7)
        out[cfg.name] = (cfg, b, spc, p, tok, tgt, torch_grads(p, cfg, tok, tgt))
    return out


@pytest.mark.parametrize("name", ["tiny", "gqa4", "mha"])
def test_step_matches_torch_exact(cases, name):
    cfg, b, spc, p, tok, tgt, (want_loss, want) = cases[name]
    with ModelRunner(cfg, b, backend="reference", numerics="exact", seqs_per_call=spc) as runner:
        runner.set_params(p)
        res = runner.step(tok, tgt)
    assert res.finite and not res.nonfinite
    assert res.loss == pytest.approx(want_loss, rel=1e-6)
    assert set(res.grads) == set(cfg.param_shapes())
    for k, g in res.grads.items():
        assert g.shape == cfg.param_shapes()[k]
        scale = np.abs(want[k]).max()
        assert scale > 0, k
        np.testing.assert_allclose(g, want[k], rtol=1e-4, atol=1e-6 * scale, err_msg=k)


@pytest.mark.parametrize("name", ["tiny", "gqa4", "mha"])
def test_step_ane_numerics_close_to_torch(cases, name):
    """Engine numerics (fp16 kernels, weight gradients and classifier included): loss within 1e-2,
    every gradient's cosine with autograd's above 0.99."""
    cfg, b, spc, p, tok, tgt, (want_loss, want) = cases[name]
    with ModelRunner(cfg, b, backend="reference", numerics="ane", seqs_per_call=spc) as runner:
        runner.set_params(p)
        res = runner.step(tok, tgt, loss_scale=1024.0)
    assert res.finite
    assert res.loss == pytest.approx(want_loss, rel=1e-2)
    for k, g in res.grads.items():
        assert g.dtype == np.float32
        assert cosine(g, want[k]) > 0.99, (k, cosine(g, want[k]))
        assert np.linalg.norm(g) == pytest.approx(np.linalg.norm(want[k]), rel=0.05), k


def test_loss_scale_is_divided_out(cases):
    cfg, b, spc, p, tok, tgt, _ = cases["gqa4"]
    with ModelRunner(cfg, b, backend="reference", numerics="exact", seqs_per_call=spc) as runner:
        runner.set_params(p)
        plain = runner.step(tok, tgt)
        scaled = runner.step(tok, tgt, loss_scale=4096.0)
    assert scaled.loss == plain.loss
    for k in plain.grads:
        np.testing.assert_allclose(scaled.grads[k], plain.grads[k], rtol=1e-12, atol=1e-300, err_msg=k)


def test_nonfinite_gradients_are_reported(cases):
    cfg, b, spc, p, tok, tgt, _ = cases["gqa4"]
    with ModelRunner(cfg, b, backend="reference", numerics="ane", seqs_per_call=spc) as runner:
        runner.set_params(p)
        res = runner.step(tok, tgt, loss_scale=1e9)  # fp16 overflow on the engine side
    assert not res.finite
    assert res.nonfinite and set(res.nonfinite) <= set(cfg.param_shapes())


def test_batch_split_across_calls_gives_the_same_step(cases):
    cfg, b, _, p, tok, tgt, _ = cases["gqa4"]
    results = []
    for spc in (1, b):
        with ModelRunner(cfg, b, backend="reference", numerics="exact", seqs_per_call=spc) as runner:
            runner.set_params(p)
            results.append(runner.step(tok, tgt))
    one, all_ = results
    assert one.loss == pytest.approx(all_.loss, rel=1e-12)
    for k in one.grads:
        np.testing.assert_allclose(one.grads[k], all_.grads[k], rtol=1e-9, atol=1e-15, err_msg=k)
    assert one.timing.kernel_calls == b * all_.timing.kernel_calls


def test_timing_and_staging(cases):
    cfg, b, spc, p, tok, tgt, _ = cases["mha"]
    with ModelRunner(cfg, b, backend="reference", numerics="ane") as runner:
        runner.set_params(p)
        res = runner.step(tok, tgt)
        t = res.timing
        # every layer kernel once per layer (the two weight-gradient ones on the worker), the classifier's
        assert t.dw_calls == len(GRAD_KERNELS) * cfg.n_layers
        assert t.kernel_calls == len(STEP_KERNELS) * cfg.n_layers + runner.classifier_kernels.kernel_calls
        assert t.engine_s > 0 and t.cpu_s > 0 and t.dw_s >= t.dw_engine_s > 0 and t.total_s >= t.engine_s
        # weights are staged once, as fp16, in the spatial tail of each layer's binding input
        lay = runner.specs["attention_forward"].input_layout
        buf = runner.buffers[1]["attention_forward"]
        np.testing.assert_array_equal(
            lay.view(buf, "wq_t"), p["layers.1.wq"].T.astype(np.float32).astype(np.float16)
        )
        # a parameter update restages (only the weight segments): a changed weight changes the
        # loss, and the binding holds the new value
        p2 = dict(p)
        p2["layers.0.w2"] = p["layers.0.w2"] * 2.0
        runner.set_params(p2)
        np.testing.assert_array_equal(
            runner.specs["ffn_forward"].input_layout.view(runner.buffers[0]["ffn_forward"], "w2"),
            p2["layers.0.w2"].astype(np.float32).astype(np.float16),
        )
        assert runner.loss(tok, tgt) != pytest.approx(res.loss, rel=1e-6)
        with pytest.raises(ValueError, match="shape"):
            runner.set_params({**p, "embed": p["embed"][:5]})
        with pytest.raises(ValueError, match="tokens and targets"):
            runner.step(tok[:, :5], tgt[:, :5])


def test_custom_compile_function(cases):
    """`compile=` takes any program -> Kernel function; exact numerics are detected from the kernels."""
    from anekit.backends.reference import compile as ref_compile

    cfg, b, spc, p, tok, tgt, (want_loss, _) = cases["mha"]
    compiled = []

    def compile_exact(program):
        compiled.append(program)
        return ref_compile(program, numerics="exact")

    with ModelRunner(cfg, b, compile=compile_exact) as runner:
        assert runner.buffer_dtype == np.float64 and runner.dtype == np.float64
        runner.set_params(p)
        assert runner.step(tok, tgt).loss == pytest.approx(want_loss, rel=1e-9)
    # once per kernel shape, shared by every layer; the classifier's once per chunk shape
    assert len(compiled) == len(STEP_KERNELS) + len(runner.classifier_kernels.kernels)


def test_restaging_after_an_update_matches_a_fresh_runner(cases):
    """The second `set_params` writes only weight segments into the bindings: the step equals that
    of a runner staged once with the same weights."""
    cfg, b, spc, p, tok, tgt, _ = cases["gqa4"]
    p2 = {k: v * 1.5 if k.startswith("layers.") else v for k, v in p.items()}
    with (
        ModelRunner(cfg, b, backend="reference", numerics="ane", seqs_per_call=spc) as updated,
        ModelRunner(cfg, b, backend="reference", numerics="ane", seqs_per_call=spc) as fresh,
    ):
        updated.set_params(p)
        updated.step(tok, tgt)
        updated.set_params(p2)
        fresh.set_params(p2)
        a, c = updated.step(tok, tgt, loss_scale=64.0), fresh.step(tok, tgt, loss_scale=64.0)
    assert a.loss == c.loss
    for k in a.grads:
        np.testing.assert_array_equal(a.grads[k], c.grads[k], err_msg=k)


@pytest.mark.parametrize("name,spc", [("gqa4", 2), ("mha", None), ("tiny", 1)])
def test_schedule_counts_what_a_step_runs(cases, name, spc):
    """`schedule` (no compiling) lists each program a step runs, with the step's call count."""
    cfg, b, _, p, tok, tgt, _ = cases[name]
    uses = schedule(cfg, b, seqs_per_call=spc)
    assert all(isinstance(u, KernelUse) for u in uses)
    runs: dict[str, int] = {}
    from anekit.backends.reference import compile as ref_compile

    def counting(program):
        return _Counting(ref_compile(program, numerics="ane"), dumps_text(program), runs)

    with ModelRunner(cfg, b, compile=counting, seqs_per_call=spc) as runner:
        runner.set_params(p)
        res = runner.step(tok, tgt)
    want: dict[str, int] = {}
    for u in uses:
        text = dumps_text(u.spec.program)
        want[text] = want.get(text, 0) + u.calls_per_step
    assert runs == want
    assert res.timing.kernel_calls == sum(u.calls_per_step for u in uses)
    assert {u.name for u in uses} >= set(STEP_KERNELS)


class _Counting(Kernel):
    """A kernel counting its runs by program text (its bindings are the generic `Binding`, which
    runs through `Kernel.run`)."""

    def __init__(self, inner, text: str, runs: dict):
        self.inner, self.text, self.runs = inner, text, runs
        self.inputs, self.outputs, self.numerics = inner.inputs, inner.outputs, inner.numerics

    def run(self, inputs):
        self.runs[self.text] = self.runs.get(self.text, 0) + 1
        return self.inner.run(inputs)

    def close(self):
        self.inner.close()


def dumps_text(program) -> str:
    from anekit.mil import dumps

    return dumps(program).text


def test_schedule_and_host_flops_cover_the_step_matmuls():
    """Every matmul of the step is in a kernel: the schedule's matmul FLOPs equal forward +
    input-gradient + weight-gradient matmuls of the layers and the classifier, counted here from
    the shapes (attention score matmuls contract over the head dim padded to 32; the attention
    backward kernel recomputes the scores); the host keeps no matmul beyond the classifier's
    target gather and one-hot part."""
    cfg, b = preset("stories110m"), 1
    S, D, H, Q, KV, V, L = (
        cfg.seq_len,
        cfg.dim,
        cfg.hidden_dim,
        cfg.q_dim,
        cfg.kv_dim,
        cfg.vocab_size,
        cfg.n_layers,
    )
    T = b * S
    linear = 2 * T * (D * Q + 2 * D * KV + Q * D + 3 * D * H)  # one pass of the layer's projections
    hd_pad = -(-cfg.head_dim // 32) * 32
    attn_fwd = 2 * cfg.n_heads * S * S * (hd_pad + cfg.head_dim)  # QKᵀ, P·V
    # backward: QKᵀ recomputed, dV, dP, dQ, dK
    attn_bwd = 2 * cfg.n_heads * S * S * (hd_pad + cfg.head_dim + hd_pad + 2 * cfg.head_dim)
    uses = schedule(cfg, b)
    layers = sum(u.spec.flops * u.calls_per_step for u in uses if u.name in STEP_KERNELS)
    assert layers == L * (3 * linear + attn_fwd + attn_bwd)
    # the classifier's: logits, dW, dx (+ the logits again where its backward recomputes them)
    cls = sum(u.spec.flops * u.calls_per_step for u in uses if u.name not in STEP_KERNELS)
    assert 3 * 2 * T * D * V <= cls <= 4 * 2 * T * D * V
    got = layers + cls
    host = host_flops(cfg, b)
    assert all(isinstance(v, int) and v >= 0 for v in host.values())
    assert {"rmsnorm_forward", "rmsnorm_backward", "residual_adds", "embedding_scatter_add"} <= set(host)
    assert sum(host.values()) < 0.02 * got


def test_token_tiled_weight_gradients_in_a_step(cases, monkeypatch):
    """With the width limit lowered to 64, the weight-gradient kernels split each call's 128
    tokens into two tiles (the runner writes each activation block over them): still autograd's
    gradients."""
    from anekit.kernels import wgrad

    monkeypatch.setattr(wgrad, "_MAX_WIDTH", 64)
    cfg, b, spc, p, tok, tgt, (want_loss, want) = cases["tiny"]
    with ModelRunner(cfg, b, backend="reference", numerics="exact", seqs_per_call=spc) as runner:
        assert len(runner.specs["ffn_wgrad"].input_layout.tiles("xnorm")) == 2
        runner.set_params(p)
        res = runner.step(tok, tgt)
    assert res.loss == pytest.approx(want_loss, rel=1e-6)
    for k, g in res.grads.items():
        np.testing.assert_allclose(g, want[k], rtol=1e-4, atol=1e-6 * np.abs(want[k]).max(), err_msg=k)


@pytest.mark.requires_ane
@pytest.mark.parametrize("name", ["tiny", "gqa4", "mha"])
def test_step_on_the_engine_close_to_torch(cases, name):
    """The whole step on the Neural Engine (layer, weight-gradient and classifier kernels): the
    engine-numerics thresholds of the reference backend's check (loss within 1e-2, cosine > 0.99)."""
    cfg, b, spc, p, tok, tgt, (want_loss, want) = cases[name]
    with ModelRunner(cfg, b, backend="ane", seqs_per_call=spc) as runner:
        runner.set_params(p)
        res = runner.step(tok, tgt, loss_scale=1024.0)
    assert res.finite
    assert res.loss == pytest.approx(want_loss, rel=1e-2)
    for k, g in res.grads.items():
        assert cosine(g, want[k]) > 0.99, (k, cosine(g, want[k]))


@pytest.mark.parametrize("numerics,rtol", [("exact", 1e-12), ("ane", 1e-6)])
def test_step_returns_the_sum_of_squares_of_its_gradients(cases, numerics, rtol):
    """`StepResult.grad_sq` (taken as the gradients are written, for the loop's clipping norm) is
    Σg² of the returned gradients, against float64 NumPy; also with two kernel calls per step
    (gqa4: two contributions to each matrix) and a loss scale. None when the step adds into given
    arrays; non-finite when the gradients are."""
    cfg, b, spc, p, tok, tgt, _ = cases["gqa4"]
    with ModelRunner(cfg, b, backend="reference", numerics=numerics, seqs_per_call=spc) as runner:
        runner.set_params(p)
        res = runner.step(tok, tgt, loss_scale=64.0)
        want = sum(float(np.sum(np.asarray(g, dtype=np.float64) ** 2)) for g in res.grads.values())
        assert res.finite and res.grad_sq == pytest.approx(want, rel=rtol)
        given = {k: np.zeros_like(g) for k, g in res.grads.items()}
        assert runner.step(tok, tgt, loss_scale=64.0, grads=given).grad_sq is None
        if numerics == "ane":
            bad = runner.step(tok, tgt, loss_scale=1e9)  # fp16 overflow on the engine side
            assert not bad.finite and not math.isfinite(bad.grad_sq)


def test_blocked_unscaling_matches_the_whole_array_expressions():
    """`_scaled_into` (row blocks; 64-row tiles for a transposed source) gives the bits of
    `value * inv` / `g + value * inv`, and Σg² of the result (float64 oracle)."""
    from anekit.train import step as step_mod

    rng = np.random.default_rng(3)
    for shape in ((300, 700), (1000,), (130, 64)):
        for transposed in (False, True) if len(shape) == 2 else (False,):
            src = rng.standard_normal(shape[::-1] if transposed else shape).astype(np.float32)
            value = src.T if transposed else src
            base = rng.standard_normal(shape).astype(np.float32)
            for inv in (1.0, 1.0 / 3.0):
                g = np.empty(shape, np.float32)
                sq = step_mod._scaled_into(g, value, inv, True, True)
                np.testing.assert_array_equal(g, value * np.float32(inv) if inv != 1.0 else value)
                assert sq == pytest.approx(float(np.sum(g.astype(np.float64) ** 2)), rel=1e-6)
                g = base.copy()
                assert step_mod._scaled_into(g, value, inv, False, False) == 0.0
                np.testing.assert_array_equal(g, base + value * inv if inv != 1.0 else base + value)
            g = base.copy()
            step_mod._scaled_into(g, None, 0.25, True, True)
            np.testing.assert_array_equal(g, base * np.float32(0.25))
            wide = np.empty(shape, np.float64)  # a float64 host dtype over float32 kernel outputs
            step_mod._scaled_into(wide, value, 0.5, True, False)
            np.testing.assert_array_equal(wide, value.astype(np.float64) * 0.5)


def test_a_step_can_reuse_the_arrays_of_an_earlier_one(cases):
    """`step(reuse=)` writes the gradients into given arrays (overwriting what they hold): the same
    bits as a step into new arrays, with two calls per step and a loss scale; errors for bad use."""
    cfg, b, spc, p, tok, tgt, _ = cases["gqa4"]
    with ModelRunner(cfg, b, backend="reference", numerics="ane", seqs_per_call=spc) as runner:
        runner.set_params(p)
        want = runner.step(tok, tgt, loss_scale=64.0)
        old = runner.step(tok[::-1], tgt[::-1], loss_scale=8.0).grads
        for g in old.values():
            g[...] = np.nan  # whatever they held must not leak into the new gradients
        got = runner.step(tok, tgt, loss_scale=64.0, reuse=old)
        assert got.loss == want.loss and got.finite and got.grad_sq == want.grad_sq
        for k in want.grads:
            assert got.grads[k] is old[k]
            np.testing.assert_array_equal(got.grads[k], want.grads[k], err_msg=k)
        with pytest.raises(ValueError, match="not both"):
            runner.step(tok, tgt, grads=old, reuse=old)
        with pytest.raises(ValueError, match="two names"):
            runner.step(tok, tgt, reuse={**old, "layers.0.ffn_norm": old["layers.0.attn_norm"]})
