"""Llama 3 RoPE frequency scaling ("llama3") everywhere anekit makes RoPE angles: `kernels.rope`, the
CPU model, the CPU RoPE ops, the attention kernels and the training step.

Oracles, all independent of anekit's code path: the formula as Meta published it (Llama 3.1
reference code, `apply_scaling`), written here as a scalar float64 loop; PyTorch autograd for the
training step; transformers' own llama3 init and `LlamaForCausalLM` where transformers is installed.
"""

from __future__ import annotations

import json
import math

import cpu_ops_reference as ref
import numpy as np
import pytest

from anekit.backends.reference import compile as ref_compile
from anekit.kernels.attention import attention_forward
from anekit.kernels.rope import rope_angles, rope_inv_freq, rope_tables
from anekit.model import ModelConfig
from anekit.model.config import ConfigError, RopeScaling
from anekit.model.io import ModelFileError, save_llama2c
from anekit.model.reference import decode_step, forward, init_params, new_cache

# head_dim 16, theta 1e4: wavelengths 6.3, 19.9, 62.8, 199, 628, ... With L = 32, low 1, high 4 the
# bands are < 8 (kept), 8..32 (smoothed) and > 32 (divided by factor): pair 0 kept, 1 smoothed, 2-7
# divided, so every branch of the formula is exercised; 48 positions go past the original context.
SCALING = RopeScaling(
    factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=32
)
SCALED = ModelConfig(
    "llama3-mini", dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=61, seq_len=48,
    tie_embeddings=False, rope_scaling=SCALING,
)  # fmt: skip
LLAMA31 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)


def published_llama3(
    head_dim, theta, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings
):
    """Meta's definition, one frequency at a time in Python floats (float64)."""
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < original_max_position_embeddings / high_freq_factor:
            out.append(freq)
        elif wavelen > original_max_position_embeddings / low_freq_factor:
            out.append(freq / factor)
        else:
            smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (
                high_freq_factor - low_freq_factor
            )
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return np.array(out)


def oracle_freqs(cfg: ModelConfig) -> np.ndarray:
    s = cfg.rope_scaling
    return published_llama3(
        cfg.head_dim, cfg.rope_theta, s.factor, s.low_freq_factor, s.high_freq_factor,
        s.original_max_position_embeddings,
    )  # fmt: skip


def rotate(t, angles, inverse=False):
    """t [S, heads, hd]: pairs (2p, 2p+1) rotated by angles [S, hd/2] (as complex numbers)."""
    z = (t[..., 0::2] + 1j * t[..., 1::2]) * np.exp((-1j if inverse else 1j) * angles)[:, None, :]
    out = np.empty_like(t)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


# -- the formula -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head_dim,theta,params",
    [
        (16, 10000.0, SCALING.__dict__),
        (128, 500000.0, LLAMA31),  # Llama 3.1 8B
        (64, 500000.0, LLAMA31 | {"factor": 32.0}),  # Llama 3.2 1B
        (32, 10000.0, dict(factor=2.0, low_freq_factor=0.5, high_freq_factor=3.0, original_max_position_embeddings=100)),
    ],
)  # fmt: skip
def test_inv_freq_is_the_published_llama3_formula(head_dim, theta, params):
    params = {k: v for k, v in params.items() if k != "rope_type"}
    want = published_llama3(head_dim, theta, **params)
    got = rope_inv_freq(head_dim, theta, RopeScaling(**params))
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
    plain = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    np.testing.assert_allclose(rope_inv_freq(head_dim, theta), plain, rtol=1e-14)
    assert not np.allclose(got, plain)  # the case really scales something


def test_bands_of_the_small_config():
    got, plain = rope_inv_freq(16, 10000.0, SCALING), rope_inv_freq(16, 10000.0)
    assert got[0] == plain[0]  # wavelength 6.3 < 32 / 4: kept
    np.testing.assert_allclose(got[2:], plain[2:] / 4.0, rtol=1e-15)  # wavelength > 32: divided by factor
    assert plain[1] / 4.0 < got[1] < plain[1]  # wavelength 19.9: smoothed in between


def test_tables_and_angles_carry_the_scaling():
    want = np.arange(48)[:, None] * oracle_freqs(SCALED)[None, :]
    np.testing.assert_allclose(rope_angles(16, np.arange(48), 10000.0, SCALING), want, rtol=1e-14)
    cos, sin = rope_tables(16, 48, 10000.0, SCALING)
    np.testing.assert_allclose(cos, np.cos(want), atol=1e-14)
    np.testing.assert_allclose(sin, np.sin(want), atol=1e-14)


def test_other_scaling_types_are_refused_by_name():
    for kind in ("linear", "dynamic", "yarn", "longrope", "su"):
        with pytest.raises(ConfigError, match=f"'{kind}' is not supported"):
            RopeScaling(rope_type=kind, **LLAMA31)

    class Yarn:
        rope_type = "yarn"

    with pytest.raises(ValueError, match="'yarn' is not supported"):
        rope_inv_freq(16, 10000.0, Yarn())


@pytest.mark.parametrize(
    "change,field",
    [
        ({"factor": 0.5}, "rope_scaling.factor"),
        ({"factor": float("inf")}, "rope_scaling.factor"),
        ({"low_freq_factor": 0.0}, "rope_scaling.low_freq_factor"),
        ({"high_freq_factor": 1.0}, "rope_scaling.high_freq_factor"),  # must exceed low_freq_factor
        ({"high_freq_factor": float("nan")}, "rope_scaling.high_freq_factor"),
        ({"original_max_position_embeddings": 0}, "rope_scaling.original_max_position_embeddings"),
        ({"original_max_position_embeddings": 8192.5}, "rope_scaling.original_max_position_embeddings"),
        ({"factor": "8"}, "rope_scaling.factor"),
    ],
)
def test_scaling_fields_are_checked(change, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        RopeScaling(**(LLAMA31 | change))


# -- the CPU model and ops ---------------------------------------------------------------------


def test_cpu_rope_ops_use_the_scaled_angles():
    hd, S, heads = SCALED.head_dim, SCALED.seq_len, 3
    rng = np.random.default_rng(0)
    t = rng.standard_normal((heads * hd, 2 * S))  # two sequences side by side, channel-major
    ang = np.arange(S)[:, None] * oracle_freqs(SCALED)[None, :]
    want = np.concatenate(
        [rotate(t[:, i * S : (i + 1) * S].T.reshape(S, heads, hd), ang).reshape(S, -1).T for i in range(2)],
        axis=1,
    )
    got = ref.rope_forward(t, hd, S, SCALED.rope_theta, np.float64, scaling=SCALING)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
    back = ref.rope_backward(got, hd, S, SCALED.rope_theta, scale=1.0, dtype=np.float64, scaling=SCALING)
    np.testing.assert_allclose(back, t, rtol=1e-12, atol=1e-13)
    plain = ref.rope_forward(t, hd, S, SCALED.rope_theta, np.float64)
    assert np.abs(plain - got).max() > 0.1


def test_decode_step_matches_forward_with_scaling():
    params = init_params(SCALED, 0, scheme="normal")
    tokens = np.random.default_rng(1).integers(0, SCALED.vocab_size, 40)
    full = forward(params, SCALED, tokens)
    cache = new_cache(SCALED)
    steps = [decode_step(params, SCALED, int(t), cache)[0] for t in tokens]
    np.testing.assert_allclose(np.stack(steps), full, rtol=1e-10, atol=1e-12)


def test_llama2c_export_refuses_scaling(tmp_path):
    cfg = ModelConfig(
        "s", dim=64, hidden_dim=96, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=32, seq_len=16,
        rope_scaling=SCALING,
    )  # fmt: skip
    with pytest.raises(ModelFileError, match="cannot record RoPE scaling"):
        save_llama2c(tmp_path / "m.bin", cfg, init_params(cfg))
    assert not (tmp_path / "m.bin").exists()


def test_config_round_trips_through_json_as_checkpoints_store_it():
    stored = json.loads(json.dumps(SCALED.to_dict()))
    assert stored["rope_scaling"] == {
        "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }  # fmt: skip
    assert ModelConfig.from_dict(stored) == SCALED
    plain = ModelConfig.from_dict(stored | {"rope_scaling": None})
    assert plain.rope_scaling is None and plain != SCALED


def test_checkpoint_keeps_the_scaling(tmp_path):
    from anekit.train.checkpoint import config_differences, load_checkpoint, save_checkpoint

    params = init_params(SCALED, 0)
    path = save_checkpoint(tmp_path / "ck", SCALED, params)
    cfg, loaded, _, _ = load_checkpoint(path)
    assert cfg == SCALED and cfg.rope_scaling == SCALING
    plain = ModelConfig(**(SCALED.to_dict() | {"rope_scaling": None}))
    assert any(d.startswith("rope_scaling") for d in config_differences(cfg, plain))


# -- the engine kernels and the training step --------------------------------------------------


def test_attention_kernel_bakes_scaled_tables():
    cfg = SCALED
    rng = np.random.default_rng(2)
    D, S, hd = cfg.dim, cfg.seq_len, cfg.head_dim
    w = {
        k: rng.standard_normal(s) / np.sqrt(s[1])
        for k, s in cfg.param_shapes().items()
        if k.startswith("layers.0.w")
    }
    xn = rng.standard_normal((D, S))
    spec = attention_forward(cfg, n_seq=1, const_precision="fp32")  # fp32 tables: the exact oracle's
    x = spec.input_layout.pack(
        {"xnorm": xn, "wq_t": w["layers.0.wq"].T, "wk_t": w["layers.0.wk"].T, "wv_t": w["layers.0.wv"].T,
         "wo": w["layers.0.wo"]},
        dtype=np.float64,
    )  # fmt: skip
    got = spec.output_layout.unpack(ref_compile(spec.program, numerics="exact")(x=x)["out"])
    ang = np.arange(S)[:, None] * oracle_freqs(cfg)[None, :]
    q = (xn.T @ w["layers.0.wq"].T).reshape(S, cfg.n_heads, hd)
    k = (xn.T @ w["layers.0.wk"].T).reshape(S, cfg.n_kv_heads, hd)
    want_q = rotate(q, ang).reshape(S, -1).T / np.sqrt(hd)  # the kernel folds 1/sqrt(hd) into q
    want_k = rotate(k, ang).reshape(S, -1).T
    # tables baked as fp32 constants (the default is fp16, for M1/M2): agreement to fp32 rounding
    np.testing.assert_allclose(got["q_rope"], want_q, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["k_rope"], want_k, rtol=1e-6, atol=1e-6)


def _torch_loss_and_grads(params, cfg, tokens, targets):
    """Llama forward + mean cross-entropy in float64 PyTorch, RoPE angles from the published formula."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    tp = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True) for k, v in params.items()}
    B, S = tokens.shape
    nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    ang = torch.tensor(np.arange(S)[:, None] * oracle_freqs(cfg)[None, :])
    rot = torch.polar(torch.ones_like(ang), ang)

    def rope(t):
        c = torch.view_as_complex(t.reshape(B, S, t.shape[2], hd // 2, 2).contiguous())
        return torch.view_as_real(c * rot[None, :, None, :]).reshape(t.shape)

    def norm(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * g

    mask = torch.triu(torch.full((S, S), float("-inf"), dtype=torch.float64), diagonal=1)
    x = tp["embed"][torch.from_numpy(tokens)]
    for i in range(cfg.n_layers):
        p = {k.split(".")[-1]: v for k, v in tp.items() if k.startswith(f"layers.{i}.")}
        h = norm(x, p["attn_norm"])
        q = rope((h @ p["wq"].T).view(B, S, nh, hd)).transpose(1, 2)
        k = rope((h @ p["wk"].T).view(B, S, nkv, hd)).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
        v = (h @ p["wv"].T).view(B, S, nkv, hd).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, dim=-1) @ v
        x = x + att.transpose(1, 2).reshape(B, S, nh * hd) @ p["wo"].T
        h = norm(x, p["ffn_norm"])
        x = x + (F.silu(h @ p["w1"].T) * (h @ p["w3"].T)) @ p["w2"].T
    logits = norm(x, tp["final_norm"]) @ tp["lm_head"].T
    loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), torch.from_numpy(targets).reshape(-1))
    loss.backward()
    return loss.item(), {k: t.grad.numpy() for k, t in tp.items()}


def test_training_step_with_scaling_matches_torch():
    from anekit.train.step import ModelRunner

    cfg = SCALED
    params = init_params(cfg, 3, scheme="normal", dtype=np.float64)
    rng = np.random.default_rng(4)
    tokens, targets = (rng.integers(0, cfg.vocab_size, (2, cfg.seq_len)) for _ in range(2))
    want_loss, want = _torch_loss_and_grads(params, cfg, tokens, targets)
    with ModelRunner(cfg, 2, backend="reference", numerics="exact") as runner:
        runner.set_params(params)
        res = runner.step(tokens, targets)
    assert res.loss == pytest.approx(want_loss, rel=1e-6)
    for name in ("layers.0.wq", "layers.0.wk", "layers.1.wq", "layers.1.wk", "embed"):
        scale = np.abs(want[name]).max()
        np.testing.assert_allclose(res.grads[name], want[name], rtol=1e-4, atol=1e-6 * scale, err_msg=name)


# -- transformers as the oracle (skipped where it is not installed) ----------------------------


def _transformers():
    pytest.importorskip("transformers")
    import torch
    import transformers

    return torch, transformers


def _hf_llama_config(transformers, head_dim, theta, scaling: dict, **kw):
    return transformers.LlamaConfig(
        hidden_size=head_dim * 2, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=40, max_position_embeddings=kw.pop("max_pos", 64),
        rope_parameters={"rope_type": "llama3", "rope_theta": theta, **scaling}, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("head_dim,theta,params", [(16, 10000.0, SCALING.__dict__), (128, 500000.0, LLAMA31)])
def test_inv_freq_matches_transformers_llama3_init(head_dim, theta, params):
    torch, transformers = _transformers()
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {k: v for k, v in params.items() if k != "rope_type"}
    hf_cfg = _hf_llama_config(transformers, head_dim, theta, params)
    inv, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    assert attention_factor == 1.0  # llama3 scaling leaves attention alone
    # transformers computes in float32
    np.testing.assert_allclose(
        rope_inv_freq(head_dim, theta, RopeScaling(**params)), inv.double().numpy(), rtol=3e-6
    )


def test_forward_with_scaling_matches_transformers_both_ways(tmp_path):
    torch, transformers = _transformers()
    from anekit.model.io import load_hf, save_hf

    tokens = np.random.default_rng(5).integers(0, SCALED.vocab_size, SCALED.seq_len)
    params = init_params(SCALED, 6, scheme="normal")
    for i in range(SCALED.n_layers):  # sharper attention, so that the positions matter in the logits
        params[f"layers.{i}.wq"] *= 20
        params[f"layers.{i}.wk"] *= 20
    save_hf(tmp_path / "out", SCALED, params)  # anekit -> transformers
    model = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path / "out", dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert model.config.rope_parameters["rope_type"] == "llama3"
    with torch.no_grad():
        hf_logits = model(torch.from_numpy(tokens[None])).logits[0].double().numpy()
    ours = forward(params, SCALED, tokens)
    np.testing.assert_allclose(ours, hf_logits, atol=2e-4, rtol=1e-4)
    unscaled = forward(params, ModelConfig(**(SCALED.to_dict() | {"rope_scaling": None})), tokens)
    assert np.abs(unscaled - hf_logits).max() > 1e-2  # without the scaling the logits differ

    # transformers -> anekit: a model transformers made and saved, in the format it writes today
    torch.manual_seed(0)
    hf_cfg = _hf_llama_config(transformers, 16, 10000.0, dict(LLAMA31, original_max_position_embeddings=32))
    hf_model = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf_model.save_pretrained(tmp_path / "in")
    written = json.loads((tmp_path / "in" / "config.json").read_text())
    assert written["rope_parameters"]["rope_type"] == "llama3"
    cfg, loaded = load_hf(tmp_path / "in")
    assert cfg.rope_scaling == RopeScaling(**(LLAMA31 | {"original_max_position_embeddings": 32}))
    toks = np.arange(60) % hf_cfg.vocab_size
    with torch.no_grad():
        want = hf_model(torch.from_numpy(toks[None])).logits[0].double().numpy()
    np.testing.assert_allclose(forward(loaded, cfg, toks), want, atol=2e-4, rtol=1e-4)
