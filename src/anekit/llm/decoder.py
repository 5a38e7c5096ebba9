"""`Decoder`: a pretrained decoder-only model run as engine programs with a KV cache held in bound inputs.

How a model becomes programs (`anekit.kernels.decoder` builds them, `anekit.llm.plan` sizes them):

- the layers are cut into groups of `plan.layers_per_program`; each group has a **decode program**
  and, when `plan.prefill_chunk` rounds to another width, a **prefill program** of that width;
- one **classifier program** (final RMSNorm + the vocabulary in `plan.vocab_chunk`-row chunks) at the
  decode width, shared by prefill (its last token) and decode.

Decode width: on the engine `DECODE_WIDTH` = 32 tokens, one of them real: rows are 64 bytes, so 32
fp16 columns is the narrowest surface the engine reads reliably (docs/ane-facts.md#rows-64-bytes);
decode is weight-bandwidth-bound (ane-private-api.md §10.4), so the 31 idle columns cost compute the
engine has to spare. Off the engine (the reference backend, NumPy) no such rule exists and every idle
column is paid in full, so the same generator builds the decode program 1 token wide there
(`decode_width`); per column the arithmetic is the same.

So a model needs `groups x (1 or 2) + 1` loaded programs (`Decoder.n_programs`), checked against the
loaded-program budget (ane-private-api.md §10.1) before anything is compiled.

The KV cache lives in each group program's **binding**: every program is compiled once and bound
once (`kernel.new_binding()`); its packed input (the cache of each of its layers, the masks, the RoPE
rows, the activations) is written whole once, at construction; after every call the host writes only
the new K/V rows into the bound input in place (`Binding.write_slice`; on the engine, straight into
the input IOSurface), plus the small per-call rows (activations, RoPE, masks). Nothing copies a cache
per token on the engine path. (The reference backend, being NumPy, reads its staged input whole on
every run; that is the interpreter's cost, not the engine's.) Positions become RoPE rows and masks on
the host (`kernels.decoder.rope_rows`, `_masks`).

The residual stream between programs follows `plan.residual`: ``"fp32-host"`` keeps it in float32 on
the host and adds each group's change to it (ane-private-api.md §10.4: an fp16 stream between
dispatches failed past ~16 layers at dim 4096); ``"fp16"`` passes the stream through as fp16.

Weights are read from the (lazy, memory-mapped) mapping one layer at a time while a program is built.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

import numpy as np

from ..engine_limits import DEFAULT_LOADED_PROGRAM_BUDGET, MASK_VALUE, ROW_ALIGN
from ..kernels.decoder import (
    ClassifierProgram,
    DecoderKernelError,
    DecoderProgram,
    classifier_program,
    group_program,
    rope_rows,
)
from ..kernels.layout import round_up
from ..kernels.quant import QUANT_MODES, QuantError
from .errors import ContextFull, LLMError

__all__ = ["Decoder", "DECODE_WIDTH", "program_count", "default_decode_width"]

#: Tokens per decode call on the engine: one real token in 32 columns (see the module docstring).
DECODE_WIDTH = ROW_ALIGN
#: The cache length when neither `max_len` nor a shorter `config.seq_len` is given. Every decode step
#: reads the whole cache (static shapes, docs/ane-facts.md#static-graphs): at 4096 positions that is
#: 2 x layers x kv_dim x 4096 fp16 values per token (448 MiB for Qwen3-0.6B, beside its 1.2 GB of fp16
#: weights), so a longer context is something to ask for, not a default.
DEFAULT_MAX_LEN = 4096
_LAYER_PARAMS = ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3")


def _plan_for(config, quant: str, max_len: int, plan):
    """`plan`, or the one the cost model picks (`anekit.llm.plan.choose_plan`)."""
    if plan is not None:
        return plan
    from .plan import choose_plan

    return choose_plan(config, quant=quant, max_len=max_len)


def default_decode_width(backend: str) -> int:
    """`DECODE_WIDTH` (32) on the engine, 1 elsewhere (see the module docstring)."""
    return DECODE_WIDTH if backend == "ane" else 1


def _widths(plan, cache_len: int, decode_width: int = DECODE_WIDTH) -> tuple[int, int]:
    prefill = round_up(max(1, min(plan.prefill_chunk, cache_len)), ROW_ALIGN)
    return decode_width, prefill


def program_count(config, plan, max_len: int | None = None, decode_width: int = DECODE_WIDTH) -> int:
    """Loaded programs a `Decoder` needs: per layer group a decode program, and a prefill program
    unless the prefill chunk rounds to the decode width; plus one classifier program."""
    cache_len = round_up(max_len or min(config.seq_len, DEFAULT_MAX_LEN), ROW_ALIGN)
    dec, pre = _widths(plan, cache_len, decode_width)
    groups = -(-config.n_layers // plan.layers_per_program)
    return groups * (1 if pre == dec else 2) + 1


class _Group:
    """One layer group: its programs (by width), kernels and bindings."""

    def __init__(self, layers: tuple[int, ...]):
        self.layers = layers
        self.programs: dict[int, DecoderProgram] = {}
        self.kernels: dict[int, object] = {}
        self.bindings: dict[int, object] = {}


class Decoder:
    """Runs `config`'s decoder on `backend` with a KV cache of `max_len` positions (see the module
    docstring). `weights`: anekit parameter names -> arrays (`ModelConfig.param_shapes`), e.g. a
    memory-mapped mapping; `quant`: "fp16", "int8" or "int4" baked weights; `decode_width`: tokens
    per decode program (default `default_decode_width(backend)`)."""

    def __init__(
        self,
        config,
        weights: Mapping[str, np.ndarray],
        *,
        backend: str = "auto",
        quant: str = "fp16",
        max_len: int | None = None,
        plan=None,
        decode_width: int | None = None,
    ):
        from ..backends import resolve

        if quant not in QUANT_MODES:
            raise LLMError(f"weights {quant!r} are not supported; choose one of {', '.join(QUANT_MODES)}")
        max_len = min(config.seq_len, DEFAULT_MAX_LEN) if max_len is None else max_len
        if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
            raise LLMError(f"max_len must be a positive integer, got {max_len!r}")
        self.config = config
        self.max_len = int(max_len)
        self.vocab_size = config.vocab_size
        self.quant = quant
        self.plan = _plan_for(config, quant, self.max_len, plan)
        self.backend = resolve(backend)
        if decode_width is None:
            decode_width = default_decode_width(self.backend)
        if isinstance(decode_width, bool) or not isinstance(decode_width, int) or decode_width < 1:
            raise LLMError(f"decode_width must be a positive integer, got {decode_width!r}")
        self._cache_len = round_up(self.max_len, ROW_ALIGN)  # M: cache columns (64-byte rows)
        self.decode_width, self.prefill_width = _widths(self.plan, self._cache_len, decode_width)
        self._widths = sorted({self.decode_width, self.prefill_width})
        self.n_programs = program_count(config, self.plan, self.max_len, decode_width)
        if self.n_programs > DEFAULT_LOADED_PROGRAM_BUDGET:
            raise LLMError(
                f"this model needs {self.n_programs} loaded programs with layers_per_program "
                f"{self.plan.layers_per_program}, more than the {DEFAULT_LOADED_PROGRAM_BUDGET} anekit keeps "
                "loaded per process (the engine's cap is 128, ane-private-api.md §10.1); use a plan with "
                "more layers per program"
            )
        self._weights = weights
        if "embed" not in weights:
            raise LLMError(f"{config.name}: the weights have no 'embed'; they do not match the model config")
        self._embed = weights["embed"]
        self.length = 0
        self._groups: list[_Group] = []
        self._classifier: ClassifierProgram | None = None
        self._classifier_kernel = None
        self._closed = False
        try:
            self._build()
            self.reset()
        except (DecoderKernelError, QuantError) as e:
            self.close()
            raise LLMError(f"{config.name}: {e}") from e
        except BaseException:
            self.close()
            raise

    # -- building ------------------------------------------------------------------------------
    def _layer_params(self, i: int) -> dict[str, np.ndarray]:
        cfg, w = self.config, self._weights
        names = list(_LAYER_PARAMS)
        if getattr(cfg, "qkv_bias", False):
            names += ["bq", "bk", "bv"]
        if getattr(cfg, "qk_norm", False):
            names += ["q_norm", "k_norm"]
        try:
            return {n: w[f"layers.{i}.{n}"] for n in names}
        except KeyError as e:
            raise LLMError(f"the weights have no {e.args[0]!r}; they do not match the model config") from None

    def _layers(self, layers: tuple[int, ...]) -> Iterator[dict[str, np.ndarray]]:
        for i in layers:
            yield self._layer_params(i)

    def _compile(self, program):
        from ..api import compile as compile_program

        return compile_program(program, self.backend)

    def _build(self) -> None:
        cfg, lpp = self.config, self.plan.layers_per_program
        for start in range(0, cfg.n_layers, lpp):
            group = _Group(tuple(range(start, min(start + lpp, cfg.n_layers))))
            self._groups.append(group)
            for width in self._widths:
                prog = group_program(
                    cfg,
                    self._layers(group.layers),
                    width=width,
                    max_len=self._cache_len,
                    n_layers=len(group.layers),
                    first_layer=start,
                    quant=self.quant,
                    residual=self.plan.residual,
                )
                kernel = self._compile(prog.program)
                # keep the layouts, not the Program: its constants are the weights again
                group.programs[width], group.kernels[width] = replace(prog, program=None), kernel
                binding = kernel.new_binding()
                group.bindings[width] = binding
                # the whole input, caches included, is written once, here; later only slices
                binding.write(x=np.zeros(prog.input_layout.shape, np.float16))
        head = self._weights["embed"] if cfg.tie_embeddings else self._weights["lm_head"]
        self._classifier = classifier_program(
            cfg,
            self._weights["final_norm"],
            head,
            width=self.decode_width,
            vocab_chunk=min(self.plan.vocab_chunk, round_up(cfg.vocab_size, ROW_ALIGN)),
            quant=self.quant,
        )
        self._classifier_kernel = self._compile(self._classifier.program)
        self._classifier = replace(self._classifier, program=None)

    # -- cache and masks -----------------------------------------------------------------------
    def _bindings(self) -> Iterator[tuple[DecoderProgram, object]]:
        for g in self._groups:
            for width in self._widths:
                yield g.programs[width], g.bindings[width]

    @staticmethod
    def _index(prog: DecoderProgram, segment: str, rows: slice | None = None, cols: slice | None = None):
        """Index of (part of) `segment` in the program's `[1, C, 1, W]` input."""
        seg = prog.input_layout[segment]
        (c0, c1), (w0, w1) = seg.channels, seg.columns
        r = slice(c0, c1) if rows is None else slice(c0 + rows.start, c0 + rows.stop)
        c = slice(w0, w1) if cols is None else slice(w0 + cols.start, w0 + cols.stop)
        return (0, r, 0, c)

    def _cache_mask_rows(self, width: int, positions: np.ndarray) -> np.ndarray:
        """`[width, M]` additive mask of the cached keys (positions < self.length) for queries at
        `positions` (causal, and the sliding window if the model has one)."""
        keys = np.arange(self._cache_len)
        visible = keys[None, :] < self.length
        window = getattr(self.config, "sliding_window", None)
        if window is not None:
            visible = visible & (positions[:, None] - keys[None, :] < window)
        return np.where(visible, 0.0, MASK_VALUE).astype(np.float16)

    def _new_mask(self, width: int, n: int) -> np.ndarray:
        """`[width, width]` mask among the chunk's own tokens: key j visible to query i if j <= i,
        j < n (a real token) and within the window; the diagonal always (so padding rows stay finite)."""
        i, j = np.arange(width)[:, None], np.arange(width)[None, :]
        visible = (j <= i) & (j < n)
        window = getattr(self.config, "sliding_window", None)
        if window is not None:
            visible &= i - j < window
        visible |= i == j
        return np.where(visible, 0.0, MASK_VALUE).astype(np.float16)

    def _window_limited(self) -> bool:
        window = getattr(self.config, "sliding_window", None)
        return window is not None and window < self.max_len

    def _write_cache_mask(self, cols: slice | None = None, value: float | None = None) -> None:
        """Rewrite the cached-key mask of every binding: all of it (from `self.length`), or only
        columns `cols`, set to `value` (0: now visible, MASK_VALUE: hidden again)."""
        for prog, binding in self._bindings():
            if cols is None:
                rows = self._cache_mask_rows(prog.width, self.length + np.arange(prog.width))
            else:
                rows = np.full((prog.width, cols.stop - cols.start), value, np.float16)
            binding.write_slice("x", self._index(prog, "mask_cache", cols=cols), rows)

    def reset(self) -> None:
        """Empty the cache (no reallocation: the positions are masked out again)."""
        self._check_open()
        self.length = 0
        self._write_cache_mask()

    def truncate(self, n: int) -> None:
        """Keep the first `n` cached tokens (prefix reuse); later ones are masked out again."""
        self._check_open()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= self.length:
            raise LLMError(
                f"truncate: n must be an integer from 0 to the cached {self.length} tokens, got {n!r}"
            )
        old, self.length = self.length, int(n)
        if old != self.length:
            if self._window_limited():
                self._write_cache_mask()
            else:
                self._write_cache_mask(slice(self.length, old), MASK_VALUE)

    # -- running -------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise LLMError("this decoder is closed")

    def _tokens(self, tokens) -> np.ndarray:
        ids = np.asarray(tokens)
        if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
            raise LLMError(f"tokens must be a non-empty sequence of integer ids, got {tokens!r:.80}")
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise LLMError(f"token id {int(bad[0])} is outside the vocabulary (0 .. {self.vocab_size - 1})")
        return ids.astype(np.int64)

    def _chunk(self, ids: np.ndarray, width: int) -> np.ndarray:
        """Run `ids` (at most `width`) at positions length.. through every group; append their K/V to
        every binding's cache; return the final residual `[D, len(ids)]` (float32)."""
        cfg, n, start = self.config, len(ids), self.length
        d, kvd = cfg.dim, cfg.kv_dim
        resid = np.zeros((d, width), np.float32)
        resid[:, :n] = np.asarray(self._embed[ids], dtype=np.float32).T
        positions = start + np.arange(width)
        cos, sin = rope_rows(cfg, positions)
        mask_new = self._new_mask(width, n)
        mask_cache = self._cache_mask_rows(width, positions) if self._window_limited() else None
        for g in self._groups:
            prog, binding = g.programs[width], g.bindings[width]
            binding.write_slice("x", self._index(prog, "x"), resid)
            binding.write_slice("x", self._index(prog, "cos"), cos)
            binding.write_slice("x", self._index(prog, "sin"), sin)
            binding.write_slice("x", self._index(prog, "mask_new"), mask_new)
            if mask_cache is not None:
                binding.write_slice("x", self._index(prog, "mask_cache"), mask_cache)
            out = np.asarray(binding.run()["out"])[0, :, 0, :]
            if self.plan.residual == "fp32-host":
                resid += out[:d].astype(np.float32)
            else:
                resid = out[:d].astype(np.float32)
            cols = slice(start, start + n)
            for j in range(len(g.layers)):
                k = out[d + 2 * j * kvd : d + (2 * j + 1) * kvd, :n]
                v = out[d + (2 * j + 1) * kvd : d + (2 * j + 2) * kvd, :n]
                for w2 in self._widths:  # every program of the group holds its own copy of the cache
                    p2, b2 = g.programs[w2], g.bindings[w2]
                    b2.write_slice("x", self._index(p2, f"k{j}", cols=cols), k)
                    b2.write_slice("x", self._index(p2, f"v{j}", cols=cols), v)
        self.length = start + n
        if not self._window_limited():  # the new positions become visible to later queries
            self._write_cache_mask(slice(start, start + n), 0.0)
        return resid[:, :n]

    def _classify(self, hidden: np.ndarray) -> np.ndarray:
        """Final residual `[D, S]` -> float32 logits `[S, V]`, `DECODE_WIDTH` columns per call."""
        t = self._classifier.width
        rows = []
        for c0 in range(0, hidden.shape[1], t):
            part = hidden[:, c0 : c0 + t]
            x = np.zeros((1, self.config.dim, 1, t), np.float32)
            x[0, :, 0, : part.shape[1]] = part
            out = self._classifier_kernel(x=x.astype(np.float16))["out"]
            rows.append(self._classifier.logits(out)[: part.shape[1]])
        return np.concatenate(rows).astype(np.float32)

    def _width_for(self, rest: int) -> int:
        """The program width for the next chunk of `rest` tokens: the widest program while the rest
        fills it, then the narrowest that holds the rest (a 150-token prompt on the engine runs as 128
        + 22 in the 32-wide decode program, not in a second 128-wide call; one token always decodes
        in the decode program). Every program of a group holds the same cache, so they mix freely."""
        widest = self._widths[-1]
        if rest >= widest:
            return widest
        return min(w for w in self._widths if w >= rest)

    def _append(self, ids: np.ndarray, *, keep_all: bool) -> np.ndarray:
        if self.length + len(ids) > self.max_len:
            raise ContextFull(
                f"{len(ids)} more tokens after {self.length} exceed the context of {self.max_len} tokens; "
                "start a new conversation, or load the model with a larger max_len",
                tokens=self.length + len(ids),
                limit=self.max_len,
            )
        finals, c0 = [], 0
        while c0 < len(ids):
            width = self._width_for(len(ids) - c0)
            h = self._chunk(ids[c0 : c0 + width], width)
            finals.append(h if keep_all else h[:, -1:])
            c0 += width
        hidden = np.concatenate(finals, axis=1) if keep_all else finals[-1]
        return self._classify(hidden)

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Append `tokens` (in prefill chunks) and return the float32 logits `[V]` after the last."""
        self._check_open()
        return self._append(self._tokens(tokens), keep_all=False)[-1]

    def decode(self, token: int) -> np.ndarray:
        """Append one token and return the float32 logits `[V]` for the next."""
        self._check_open()
        return self._append(self._tokens([token]), keep_all=False)[-1]

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """float32 logits `[S, V]` for a fresh sequence `tokens` (resets the cache first)."""
        self._check_open()
        ids = self._tokens(tokens)
        self.reset()
        return self._append(ids, keep_all=True)

    def close(self) -> None:
        """Release the bindings and kernels (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        for g in self._groups:
            for b in g.bindings.values():
                b.close()
            for k in g.kernels.values():
                k.close()
        if self._classifier_kernel is not None:
            self._classifier_kernel.close()
        self._groups = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
