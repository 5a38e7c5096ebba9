"""Prefill and decode time of the reference backend on `anekit bench llm`'s model (random tiny Llama).

python benchmarks/reference_decoder_speed.py [--profile decode|prefill] [--rounds N]

Prints the median prefill (64 tokens) and per-token decode milliseconds; with --profile, the top of a
cProfile of that phase. CPU-emulation figures of the NumPy interpreter, never engine ones.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import numpy as np

from anekit.llm.decoder import Decoder
from anekit.model.config import ModelConfig
from anekit.model.reference import init_params


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", choices=("decode", "prefill"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args()
    cfg = ModelConfig(
        "bench", dim=256, hidden_dim=704, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=2048, seq_len=128
    )
    dec = Decoder(cfg, init_params(cfg, 0), backend="reference", max_len=128)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, cfg.vocab_size, args.prompt).tolist()
    prefill, decode = [], []
    for _ in range(args.rounds):
        dec.reset()
        t0 = time.perf_counter()
        dec.prefill(prompt)
        prefill.append(time.perf_counter() - t0)
        for t in range(args.tokens):
            t0 = time.perf_counter()
            dec.decode(int(prompt[t]))
            decode.append(time.perf_counter() - t0)
    print(
        f"prefill {args.prompt} tokens: median {statistics.median(prefill) * 1e3:.2f} ms "
        f"(min {min(prefill) * 1e3:.2f}); decode: median {statistics.median(decode) * 1e3:.3f} ms/token "
        f"(min {min(decode) * 1e3:.3f})"
    )
    if args.profile:
        pr = cProfile.Profile()
        dec.reset()
        if args.profile == "prefill":
            pr.enable()
            for _ in range(5):
                dec.reset()
                dec.prefill(prompt)
            pr.disable()
        else:
            dec.prefill(prompt)
            pr.enable()
            for t in range(40):
                dec.decode(int(prompt[t % len(prompt)]))
            pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
