"""Training-step benchmark: one `tiny` step (loss + every gradient) through `ModelRunner` on the
reference backend, against the same step written plainly in PyTorch (float32, autograd). Ratios
are measured in one process, interleaved, best of N; never asserted.

    python benchmarks/train_step.py [--batch 8] [--repeats 7] [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np


def torch_step_fn(cfg, params, tokens, targets):
    """A plain PyTorch float32 step of the same model (RMSNorm, interleaved RoPE, GQA, SwiGLU)."""
    import torch
    import torch.nn.functional as F

    tp = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in params.items()}
    tok, tgt = torch.from_numpy(tokens), torch.from_numpy(targets)
    B, S = tokens.shape
    hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    freqs = cfg.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.outer(torch.arange(S, dtype=torch.float64), freqs)
    cos, sin = torch.cos(ang).float()[:, None, :], torch.sin(ang).float()[:, None, :]
    mask = torch.triu(torch.full((S, S), float("-inf")), diagonal=1)

    def norm(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * g

    def rope(t):
        a, b = t[..., 0::2], t[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

    def step():
        x = tp["embed"][tok]
        for i in range(cfg.n_layers):
            p = {k.split(".")[-1]: v for k, v in tp.items() if k.startswith(f"layers.{i}.")}
            h = norm(x, p["attn_norm"])
            q = rope((h @ p["wq"].T).view(B, S, nh, hd)).transpose(1, 2)
            k = rope((h @ p["wk"].T).view(B, S, nkv, hd)).transpose(1, 2).repeat_interleave(nh // nkv, 1)
            v = (h @ p["wv"].T).view(B, S, nkv, hd).transpose(1, 2).repeat_interleave(nh // nkv, 1)
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, -1) @ v
            x = x + a.transpose(1, 2).reshape(B, S, -1) @ p["wo"].T
            h = norm(x, p["ffn_norm"])
            x = x + (F.silu(h @ p["w1"].T) * (h @ p["w3"].T)) @ p["w2"].T
        head = tp["embed"] if cfg.tie_embeddings else tp["lm_head"]
        loss = F.cross_entropy((norm(x, tp["final_norm"]) @ head.T).view(-1, cfg.vocab_size), tgt.view(-1))
        return torch.autograd.grad(loss, list(tp.values()))

    step.params = tp  # the leaf tensors, in the order of the gradients `step` returns
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--torch-threads", type=int, default=1, help="0 keeps PyTorch's default")
    ap.add_argument(
        "--variants",
        default="all",
        help="'all', or 'ane' for PyTorch and the reference 'ane' runner only (big presets)",
    )
    args = ap.parse_args()

    import torch

    from anekit.model import preset
    from anekit.model.reference import init_params
    from anekit.train.step import ModelRunner

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    cfg = preset(args.preset)
    params = init_params(cfg, 0)
    rng = np.random.default_rng(1)
    shape = (args.batch, cfg.seq_len)
    tok, tgt = rng.integers(0, cfg.vocab_size, shape), rng.integers(0, cfg.vocab_size, shape)

    runners = {"reference ane": ModelRunner(cfg, args.batch, numerics="ane")}
    if args.variants == "all":
        runners["reference ane, 1 seq/call"] = ModelRunner(cfg, args.batch, numerics="ane", seqs_per_call=1)
        runners["reference exact"] = ModelRunner(cfg, args.batch, numerics="exact")
    fns = {"pytorch fp32": torch_step_fn(cfg, params, tok, tgt)}
    for name, r in runners.items():
        r.set_params(params)
        fns[name] = lambda r=r: r.step(tok, tgt, loss_scale=256.0)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm up
    for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = min(times["pytorch fp32"])
    print(f"{cfg.name} step, batch {args.batch} x {cfg.seq_len} tokens, best of {args.repeats}:")
    for name, ts in times.items():
        print(f"  {name:<28} {min(ts) * 1e3:8.1f} ms   {min(ts) / base:5.2f}x pytorch")
    t = runners["reference ane"].step(tok, tgt, loss_scale=256.0).timing
    print(
        f"  reference ane split: engine {t.engine_s * 1e3:.1f} ms, cpu {t.cpu_s * 1e3:.1f} ms, "
        f"dW worker {t.dw_s * 1e3:.1f} ms (waited {t.dw_wait_s * 1e3:.1f} ms), {t.kernel_calls} kernel calls"
    )
    # host-side time: everything but the kernel runs (what a step costs the CPU beside the engine)
    print(f"  host-side time per step (total - kernels): {(t.total_s - t.engine_s) * 1e3:.1f} ms")
    for r in runners.values():
        r.close()


if __name__ == "__main__":
    main()
