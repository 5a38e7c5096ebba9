"""One training step: every matmul on kernels; RMSNorm, residual adds and embedding on the CPU.

Per layer, six kernels (`anekit.kernels`), compiled once per shape and shared by all layers
(ane-private-api.md §5.4: "compile once"), each bound once per layer (`Kernel.new_binding`, §1.6
"per-layer requests on one compiled model": the layer's weights staged in its binding's input):

    forward:  CPU RMSNorm -> attention_forward -> CPU residual + RMSNorm -> ffn_forward -> CPU residual
    backward: ffn_backward -> [ffn_wgrad] -> CPU RMSNorm backward -> attention_backward
              -> [attention_wgrad] -> CPU RMSNorm backward

plus the classifier and its cross-entropy over vocabulary chunks (`anekit.train.classifier`). The
weight-gradient kernels [..] (dW = dy·xᵀ, `anekit.kernels.wgrad`) run on a worker thread (one worker,
like maderix's serial cblas queue, §5.4), so they overlap the main thread's next backward kernels;
the worker writes their activations into the layer's binding, runs it, and adds the fp16 results
into the fp32 gradients (accumulation across micro-batches stays fp32 on the host, §10.4), dividing
the loss scale out as it goes. During the forward pass the same worker writes the activations the
backward kernels take (q_rope, k_rope, v, h1, h3, and the dW kernels' xnorm, attn, gate) into their
layer bindings, so the main thread writes only gradients in the backward pass. The step waits for
the worker only before returning the gradients.

On the CPU: embedding gather and scatter-add, RMSNorm forward/backward (and dγ), residual adds, the
final RMSNorm, the classifier's target gather and one-hot part, loss-scale unscaling.
`anekit.train.schedule` lists every kernel a step runs and how often, and what is left on the host,
without compiling (the cost model, `anekit.train.cost`, counts them).

I/O without copies (§1.6, §5.4 "Stage" / "write acts"): `set_params` converts each weight to the
buffer dtype once and writes it into every binding that stages it (the whole input the first time,
then only the weight segments); a call writes only its activation segments (`Binding.write_slice`,
straight into the locked IOSurface on the ane backend) and reads the outputs with
`Binding.run_float32`. Outputs are used after later runs of the same kernel (a layer's forward
outputs until its backward), so a backend must return fresh arrays (the ane backend copies them out
of its shared output surfaces).

Batching: `seqs_per_call` sequences (default: the whole batch) go through one kernel call, side
by side on the spatial axis (`anekit.kernels.attention`: attention stays per sequence). On the
engine a wider call amortises the ~0.1 ms dispatch cost (§6 "utilisation is low"); on the
reference backend it turns many small NumPy ops into a few large ones. `seqs_per_call=1` gives
maderix's one-sequence-per-call schedule. A sequence length that is not a multiple of 32 is padded
at the end (§1.7 row alignment): causal attention keeps real tokens blind to the padding, and the
padded positions carry no loss.

Loss scaling (§6: fp16 gradients ~8e-5 x weights flush to zero): `loss_scale` multiplies dlogits
before backpropagation and is divided out of the returned gradients. Non-finite gradients are
reported (`StepResult.finite`, `.nonfinite`), never hidden; a dynamic loss scaler reacts to them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..kernels.common import DEFAULT_CONST_PRECISION, KernelSpec
from ..kernels.wgrad import GRADS
from ..model.config import ModelConfig
from . import cpu_ops
from .blas import blas_threads, set_blas_threads
from .classifier import EngineClassifier, transposed
from .schedule import GRAD_KERNELS, STEP_KERNELS, TABLE_FREE, call_shape, schedule

__all__ = ["ModelRunner", "StepResult", "StepTiming"]


@dataclass
class StepTiming:
    """Seconds spent in one step. `engine_s`: inside the main thread's kernel calls (layers and
    classifier); `cpu_s`: the rest of the main thread (CPU ops, packing, waiting excluded); `dw_s`:
    the weight-gradient worker's busy time (overlapped), `dw_engine_s` the part of it inside the
    weight-gradient kernels; `dw_wait_s`: how long the main thread waited for it; `total_s`: wall
    time; `kernel_calls`: every kernel call, both threads."""

    engine_s: float = 0.0
    cpu_s: float = 0.0
    dw_s: float = 0.0
    dw_wait_s: float = 0.0
    total_s: float = 0.0
    kernel_calls: int = 0
    dw_engine_s: float = 0.0
    dw_calls: int = 0


@dataclass
class StepResult:
    """Loss (mean over target tokens), gradients by parameter name (shapes of
    `config.param_shapes()`, loss scale divided out), finiteness, timing, and their sum of squares."""

    loss: float
    grads: dict[str, np.ndarray]
    finite: bool
    nonfinite: list[str] = field(default_factory=list)
    timing: StepTiming = field(default_factory=StepTiming)
    #: Σg² over every returned gradient (as returned: loss scale divided out), summed in float64
    #: from per-block sums taken as the gradients were written (`_scaled_into`); what the training
    #: loop's clipping norm needs without a pass of its own. None when the step added into
    #: caller-given `grads` (they are not final there).
    grad_sq: float | None = None


class _Saved:
    """What one layer's forward keeps for its backward (one call's worth of tokens): the inputs
    of the two RMSNorms and their rrms, and the worker's jobs that write the forward activations
    the backward kernels take into the layer's bindings (`ModelRunner._prefetch`)."""

    __slots__ = ("x", "rrms1", "x2", "rrms2", "attn_ready", "ffn_ready")


def _is_exact(kernel) -> bool:
    return getattr(getattr(kernel, "numerics", None), "name", None) == "exact"


def _backend_compile(backend: str, options: dict) -> Callable:
    """program -> Kernel on `backend` with `options` (`anekit.compile`)."""
    from ..api import compile as anekit_compile

    def compile(program):
        return anekit_compile(program, backend=backend, **options)

    return compile


def _layer_kernels(config: ModelConfig, batch_size: int, seq_len, seqs_per_call, compile: Callable,
                   const_precision, vocab_chunk):  # fmt: skip
    """(the step's `schedule`, specs and compiled kernels of its layer kernels, in `STEP_KERNELS`
    order). The table-free kernels are compiled first: RoPE tables are fp16 constants unless asked
    otherwise, since M1/M2 engines cannot run the fp32 const + cast form (ane-private-api.md §1.8);
    only the float64 "exact" reference oracle (seen on the kernels that bake no tables) keeps fp32
    tables. The classifier's kernels are `EngineClassifier`'s (the same programs as the schedule's)."""

    def plan(precision):
        uses = schedule(
            config, batch_size, seq_len=seq_len, seqs_per_call=seqs_per_call,
            const_precision=precision, vocab_chunk=vocab_chunk,
        )  # fmt: skip
        return {u.name: u for u in uses}

    uses = plan(DEFAULT_CONST_PRECISION)
    kernels = {name: compile(uses[name].spec.program) for name in TABLE_FREE}
    if const_precision is None:
        const_precision = "fp32" if all(_is_exact(k) for k in kernels.values()) else "fp16"
    if const_precision != DEFAULT_CONST_PRECISION:
        again = plan(const_precision)
        uses = {name: uses[name] if name in kernels else u for name, u in again.items()}
    for name in STEP_KERNELS:
        if name not in kernels:
            kernels[name] = compile(uses[name].spec.program)
    specs = {name: uses[name].spec for name in STEP_KERNELS}
    return tuple(uses.values()), specs, {name: kernels[name] for name in STEP_KERNELS}


def _check_grad_arrays(grads: Mapping[str, np.ndarray], shapes: dict, dtype) -> None:
    for name, shape in shapes.items():
        g = grads.get(name)
        if g is None or g.shape != shape or g.dtype != dtype:
            got = "missing" if g is None else f"{g.dtype} {g.shape}"
            raise ValueError(f"grads[{name!r}] must be a {dtype} array of shape {shape}, got {got}")


#: Bytes of one block of `_scaled_into` (float32, cache-resident while its square sum is taken).
_BLOCK_BYTES = 1 << 18
#: Elements per block.
_BLOCK = _BLOCK_BYTES // 4


def _scaled_into(g: np.ndarray, value: np.ndarray | None, inv: float, first: bool, squares: bool) -> float:
    """`g = value·inv` (first) or `g += value·inv`, in row blocks (value None: `g *= inv`);
    returns Σg² over the result when `squares` (each block's `vdot` while it is in cache, summed
    in float64), else 0.0. The elementwise arithmetic is that of the whole-array expressions: the
    bits do not depend on the blocking. g: C-contiguous, at least 1-D.

    A transposed kernel output (`GradOut.transposed`: columns contiguous) is first copied by the
    tiled transpose (`classifier.transposed`, into g itself when it is the first contribution):
    a ufunc reading it strided runs at ~2.9 ns per element here, the copy at ~0.9."""
    if value is not None and value.ndim == 2 and not value.flags.c_contiguous:
        if value.strides[0] == value.itemsize:  # value.T has contiguous rows
            if first:
                transposed(value.T, g)
                value = None
            else:
                value = transposed(value.T)
    rows = g.shape[0]
    width = g.size // max(rows, 1)
    step = max(1, _BLOCK // max(width, 1))
    total = 0.0
    for r in range(0, rows, step):
        gb = g[r : r + step]
        if value is None:
            if inv != 1.0:
                gb *= inv
        elif first:
            if inv != 1.0:
                np.multiply(value[r : r + step], inv, out=gb)
            else:
                np.copyto(gb, value[r : r + step])
        elif inv == 1.0:
            gb += value[r : r + step]
        else:
            gb += value[r : r + step] * inv
        if squares:
            total += float(np.vdot(gb, gb))
    return total


def _unscale(grads: dict[str, np.ndarray], loss_scale: float) -> tuple[list[str], dict[str, float]]:
    """Divide the loss scale out of `grads` in place: (the names of those not all finite, each
    one's sum of squares after)."""
    inv = 1.0 / loss_scale
    bad, sq = [], {}
    for name, g in grads.items():
        sq[name] = _scaled_into(g, None, inv, True, True)
        if not np.isfinite(sq[name]) and not np.isfinite(g).all():
            bad.append(name)
    return bad, sq


class _WorkerGrads:
    """Where the weight-gradient worker puts its results in one step.

    For a step that owns its gradients (no `grads=` given), the worker also divides the loss scale
    out, and as it writes the last contribution to a matrix (`contributions` per step: one per
    kernel call), takes its sum of squares (`sq`, block by block while in cache, `_scaled_into`),
    so the main thread never passes over the layer matrices (most of the parameters) again and
    the training loop needs no pass of its own for the clipping norm (`StepResult.grad_sq`). The
    first contribution to a matrix is written, not added (`np.empty` arrays, no zeroing pass), as
    `value · (1/loss_scale)`; later ones are added likewise scaled. Finiteness: a matrix is all
    finite iff its sum of squares is, unless the squares overflow, which only a precise check
    (`np.isfinite`) then tells apart; a non-finite contribution leaves the sum non-finite (inf and
    NaN survive additions)."""

    def __init__(self, grads: dict[str, np.ndarray], fresh: set[str], inv_scale: float, check: bool,
                 contributions: int = 1):  # fmt: skip
        self.grads, self.fresh, self.inv, self.check = grads, fresh, inv_scale, check
        self.left = dict.fromkeys(fresh, contributions) if check else {}
        self.nonfinite: set[str] = set()
        self.sq: dict[str, float] = {}

    def add(self, name: str, value: np.ndarray) -> None:
        g = self.grads[name]
        first = name in self.fresh
        self.fresh.discard(name)
        last = False
        if self.check:
            self.left[name] -= 1
            last = self.left[name] == 0
        sq = _scaled_into(g, value, self.inv, first, last)
        if last:
            self.sq[name] = sq
            if not np.isfinite(sq) and not np.isfinite(g).all():
                self.nonfinite.add(name)


def _write(binding, spec: KernelSpec, segment: str, array: np.ndarray) -> None:
    """Write activation block `segment` into `binding`'s input in place (split over the block's
    token tiles, `Layout.tiles`), converted to the input's dtype by the binding."""
    tiles = spec.input_layout.tiles(segment)
    if len(tiles) == 1:
        binding.write_slice(spec.input_name, tiles[0].index, array)
        return
    off = 0
    for seg in tiles:
        w = seg.shape[1]
        binding.write_slice(spec.input_name, seg.index, array[:, off : off + w])
        off += w


#: Layer-matrix elements per layer from which `set_params` splits the staging over two threads.
#: Below it the per-call Python work of the bindings' writes (which holds the GIL) dominates and
#: two threads were slower than one (tiny, 0.44 M per layer: 9.9 ms on two threads, 8.3 on one;
#: Stories110M, 7.1 M per layer: ~420 ms on two, ~600 on one; this 2-core x86).
_SPLIT_STAGING = 1 << 20


class ModelRunner:
    """Computes loss and every parameter gradient of a batch with kernels plus CPU work.

    config: the model. batch_size: sequences per step. seq_len: tokens per sequence (default
    `config.seq_len`). backend / options: what `anekit.compile` gets (e.g. `backend="reference",
    numerics="exact"`); or pass `compile`, a function program -> Kernel. seqs_per_call: sequences
    per kernel call (must divide batch_size; default all). dtype: CPU float type (default float64
    under exact reference numerics, else float32). const_precision: how the kernels bake their
    RoPE tables (`anekit.kernels.common.CONST_PRECISIONS`; default fp16, fp32 under exact
    reference numerics). vocab_chunk: classifier rows per kernel call (default
    `anekit.kernels.classifier.default_vocab_chunk`).
    blas_threads: BLAS threads per calling thread during a step (`anekit.train.blas`; the step
    already runs two threads, kernels and dW; None leaves BLAS alone).

    Call `set_params` after every parameter update (it stages the weights), then `step`.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        *,
        seq_len: int | None = None,
        backend: str = "reference",
        compile: Callable | None = None,
        seqs_per_call: int | None = None,
        dtype=None,
        const_precision: str | None = None,
        vocab_chunk: int | None = None,
        blas_threads: int | None = 1,
        **options,
    ):
        self.config = config
        self.batch_size = batch_size
        self.seq_len = config.seq_len if seq_len is None else seq_len
        self.n_seq, self.padded_len, _ = call_shape(config, batch_size, seq_len, seqs_per_call)
        self.vocab_chunk = vocab_chunk
        self.blas_threads = blas_threads
        if compile is None:
            compile = _backend_compile(backend, options)
        #: every kernel a step runs, with its calls per step (`schedule`)
        self.schedule, self.specs, self.kernels = _layer_kernels(
            config, batch_size, seq_len, seqs_per_call, compile, const_precision, vocab_chunk
        )
        # Exact reference numerics keep every fp16-typed value in float64, inputs included: the
        # buffers are float64 there (fp16 buffers would round the inputs), else what the engine
        # takes, fp16; the CPU side follows (float64 / float32) unless `dtype` says otherwise.
        exact = all(_is_exact(k) for k in self.kernels.values())
        self._exact = exact
        self.buffer_dtype = np.dtype(np.float64 if exact else np.float16)
        self.dtype = np.dtype(dtype if dtype is not None else (np.float64 if exact else np.float32))
        self.classifier_kernels = EngineClassifier(
            compile, config.dim, config.vocab_size, self.n_seq * self.padded_len,
            vocab_chunk=vocab_chunk, dtype=self.dtype,
        )  # fmt: skip
        #: per layer, one binding per kernel (§1.6): weight kernels get their whole input at the
        #: first `set_params`; the weight-gradient kernels (no weights) a zeroed one now
        self.bindings = [
            {name: kernel.new_binding() for name, kernel in self.kernels.items()}
            for _ in range(config.n_layers)
        ]
        for layer in self.bindings:
            for name in GRAD_KERNELS:
                spec = self.specs[name]
                layer[name].write(**{spec.input_name: spec.input_layout.empty(self.buffer_dtype)})
        self._staged = False
        self.params: dict[str, np.ndarray] | None = None
        self._layers: list[dict[str, np.ndarray]] = []  #: per layer, its parameters by short name
        init = None if blas_threads is None else (lambda: set_blas_threads(blas_threads))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anekit-dw", initializer=init)
        self._scratch = threading.local()  #: per staging thread: transposed copies, by parameter
        self._timing = StepTiming()
        self._sink = _WorkerGrads({}, set(), 1.0, check=False)
        #: the layer parameters the kernels stage (by full name): kept only in the bindings
        self._staged_params = frozenset(
            f"layers.{i}.{st.param}"
            for i in range(config.n_layers)
            for spec in self.specs.values()
            for st in spec.staging
        )
        #: the gradients the weight-gradient kernels produce (the layer matrices)
        self._from_kernels = frozenset(
            f"layers.{i}.{g.param}" for i in range(config.n_layers) for gs in GRADS.values() for g in gs
        )

    # -- parameters ----------------------------------------------------------------------------
    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Stage every layer's weights into its kernel bindings (ane-private-api.md §5.4 "Stage":
        forward kernels get Mᵀ for y = M·x, backward kernels the layout `anekit.kernels`
        documents) and the classifier into its own, and keep a copy in the CPU dtype of what the
        host computes with (`params`: embedding, norm gains, classifier). The layer matrices live
        only in the bindings: every product with them, dW included, runs in kernels.

        Each matrix is written in the CPU dtype (the fp32 master copy) into every binding that
        stages it, and the binding rounds it to its fp16 input (`_stage_layer`). For large layers,
        half of them and the classifier are staged on the worker thread, the rest here
        (conversions and copies release the GIL). `params` keeps its arrays from one call to the
        next (the new values are copied into them), so an array taken from it earlier shows the new
        values."""
        self._stage_matrices(self._take_params(params))

    def _take_params(self, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check `params` against the config, copy the host-held ones into `self.params` (into the
        previous arrays when they fit) and index them per layer; returns the layer matrices, which
        are only staged."""
        shapes = self.config.param_shapes()
        missing = sorted(set(shapes) - set(params))
        extra = sorted(set(params) - set(shapes))
        if missing or extra:
            raise ValueError(f"parameters do not match the config: missing {missing}, unexpected {extra}")
        own, matrices = {}, {}
        for name, shape in shapes.items():
            a = np.asarray(params[name])
            if a.shape != shape:
                raise ValueError(f"parameter {name!r} has shape {a.shape}, the config says {shape}")
            if name in self._staged_params:
                matrices[name] = a
                continue
            prev = (self.params or {}).get(name)
            if prev is not None and prev.shape == shape and prev.dtype == self.dtype and prev is not a:
                np.copyto(prev, a)  # into the previous copy: no fresh pages (the embedding: 98 MB)
                own[name] = prev
            else:
                own[name] = a.astype(self.dtype, copy=True)
        self.params = own
        self._layers = [{} for _ in range(self.config.n_layers)]
        for name, a in own.items():
            if name.startswith("layers."):
                i, short = name[len("layers.") :].split(".", 1)
                self._layers[int(i)][short] = a
        return matrices

    def _stage_matrices(self, matrices: Mapping[str, np.ndarray]) -> None:
        """Stage the layer matrices and the classifier into their bindings: small layers on this
        thread alone, else half the layers here and the rest with the classifier on the worker."""
        shapes = self.config.param_shapes()
        n = self.config.n_layers
        per_layer = max(1, sum(int(np.prod(shapes[k])) for k in matrices) // n)
        classifier_layers = self.classifier.size // per_layer  # the classifier, in layers' worth
        here = min(n, (n + classifier_layers + 1) // 2)
        if per_layer < _SPLIT_STAGING:  # small layers: the calls' overhead holds the GIL, one thread
            for i in range(n):
                self._stage_layer(i, matrices)
            self.classifier_kernels.set_weight(self.classifier)
            self._staged = True
            return

        def on_worker():
            self.classifier_kernels.set_weight(self.classifier)
            for i in range(here, n):
                self._stage_layer(i, matrices)

        job = self._pool.submit(on_worker)
        try:
            for i in range(here):
                self._stage_layer(i, matrices)
        finally:
            job.result()
        self._staged = True

    def _stage_layer(self, i: int, matrices: Mapping[str, np.ndarray]) -> None:
        """Write layer i's weights (`matrices`, by full name) into its bindings, as each kernel
        declares (`staging`): the whole input the first time, then only the weight segments
        (`Binding.write_slice`).

        The values written are the CPU dtype's (the fp32 master copy), not fp16: the binding
        rounds them to its input's fp16 once, as it would a pre-converted copy (round to nearest
        even either way, so the staged bits are the same), and the reference backend rounds a
        C-contiguous float32 block straight into its float32 storage, while fp16 values cost it a
        widening pass on top of NumPy's scalar fp32 -> fp16 cast (~3 ns per element on x86). A
        transposed block (`Staged.transposed`) is written from a C-contiguous copy made by a
        tiled transpose (`classifier.transposed`), once per matrix, into this thread's scratch
        (one array per parameter name, reused by every layer)."""
        converted: dict[str, np.ndarray] = {}
        flipped: dict[str, np.ndarray] = {}
        scratch = self._scratch.__dict__.setdefault("arrays", {})
        for name, spec in self.specs.items():
            if not spec.staging:
                continue
            binding, lay = self.bindings[i][name], spec.input_layout
            buf = None if self._staged else lay.empty(self.buffer_dtype)
            for st in spec.staging:
                a = converted.get(st.param)
                if a is None:
                    a = np.ascontiguousarray(matrices[f"layers.{i}.{st.param}"], dtype=self.dtype)
                    converted[st.param] = a
                if st.transposed:
                    value = flipped.get(st.param)
                    if value is None:
                        value = transposed(a, scratch.get(st.param))
                        scratch[st.param] = flipped[st.param] = value
                else:
                    value = a
                if buf is None:
                    binding.write_slice(spec.input_name, lay.index(st.segment), value)
                else:
                    lay.write(buf, st.segment, value)
            if buf is not None:
                binding.write(**{spec.input_name: buf})

    def _layer(self, i: int) -> dict[str, np.ndarray]:
        """Layer i's parameters by their names inside the layer (views built by `set_params`)."""
        return self._layers[i]

    @property
    def classifier(self) -> np.ndarray:
        return self.params["embed"] if self.config.tie_embeddings else self.params["lm_head"]

    @property
    def buffers(self) -> list[dict[str, np.ndarray]]:
        """Per layer, each kernel's input as its binding holds it on the host, where the backend
        keeps one there (the generic and reference bindings; the ane backend's inputs live in
        IOSurfaces and are not listed). For inspection and memory accounting only."""
        out = []
        for layer in self.bindings:
            held = {}
            for name, binding in layer.items():
                staged = getattr(binding, "_staged", {}).get(self.specs[name].input_name)
                if staged is not None:
                    held[name] = staged
            out.append(held)
        return out

    @property
    def input_bytes(self) -> int:
        """Bytes of every layer binding's input (each kernel's input layout in the buffer dtype,
        per layer), whatever the backend and whether or not the bindings are still open."""
        per_layer = sum(
            int(np.prod(spec.input_layout.shape)) * self.buffer_dtype.itemsize for spec in self.specs.values()
        )
        return per_layer * self.config.n_layers

    # -- running kernels -----------------------------------------------------------------------
    def _call(self, binding) -> dict[str, np.ndarray]:
        """Evaluate a binding: float64 outputs under exact numerics, else float32 (exact widening)."""
        return binding.run() if self._exact else binding.run_float32()

    def _run(self, layer: int, name: str, **acts: np.ndarray) -> dict[str, np.ndarray]:
        """Write activation blocks into the layer's binding, run the kernel, unpack the output."""
        spec, binding = self.specs[name], self.bindings[layer][name]
        for seg, array in acts.items():
            _write(binding, spec, seg, array)
        t0 = time.perf_counter()
        out = self._call(binding)[spec.output_name]
        self._timing.engine_s += time.perf_counter() - t0
        self._timing.kernel_calls += 1
        return spec.output_layout.unpack(out)

    def _submit_wgrad(self, layer: int, name: str, grads, futures: list[Future], **acts) -> None:
        """Queue on the worker: write `acts` into layer `layer`'s binding of weight-gradient kernel
        `name`, run it, add its results into the step's gradients (`_WorkerGrads`: fp16 values
        into the host dtype, §10.4). The worker runs jobs in order, so a binding is never written
        while it runs."""
        spec, binding, timing = self.specs[name], self.bindings[layer][name], self._timing
        pre, dim, sink = f"layers.{layer}.", self.config.dim, self._sink

        def work():
            t0 = time.perf_counter()
            for seg, array in acts.items():
                _write(binding, spec, seg, array)
            t1 = time.perf_counter()
            out = spec.output_layout.unpack(self._call(binding)[spec.output_name])
            t2 = time.perf_counter()
            for g in GRADS[name]:
                sink.add(pre + g.param, g.value(out, dim))
            timing.dw_engine_s += t2 - t1  # only the worker writes the dw_* fields
            timing.dw_calls += 1
            timing.dw_s += time.perf_counter() - t0

        futures.append(self._pool.submit(work))

    def _prefetch(self, layer: int, writes: dict[str, dict[str, np.ndarray]]) -> Future:
        """Queue on the worker: write forward activations into layer `layer`'s bindings of the
        kernels that take them in the backward pass (`writes`: kernel name -> segment -> array),
        so that the main thread writes only the gradients there. Jobs run in order: a binding of a
        weight-gradient kernel is written after its previous call's run; a backward kernel's, after
        the main thread ran it (it waits for this job before running it again)."""
        timing = self._timing

        def work():
            t0 = time.perf_counter()
            for name, acts in writes.items():
                spec, binding = self.specs[name], self.bindings[layer][name]
                for seg, array in acts.items():
                    _write(binding, spec, seg, array)
            timing.dw_s += time.perf_counter() - t0

        return self._pool.submit(work)

    # -- the step ------------------------------------------------------------------------------
    def _check_batch(self, tokens, targets) -> tuple[np.ndarray, np.ndarray]:
        tok = np.asarray(tokens)
        tgt = np.asarray(targets)
        want = (self.batch_size, self.seq_len)
        if tok.shape != want or tgt.shape != want:
            raise ValueError(
                f"tokens and targets must be {list(want)}, got {list(tok.shape)} and {list(tgt.shape)}"
            )
        if self.params is None:
            raise RuntimeError("call set_params before running a step")
        return tok, tgt

    def _padded(self, a: np.ndarray, fill: int) -> np.ndarray:
        """`[n_seq, S]` -> flat `[n_seq · S_padded]`, padding each sequence at its end."""
        if self.padded_len == self.seq_len:
            return a.reshape(-1)
        out = np.full((a.shape[0], self.padded_len), fill, dtype=a.dtype)
        out[:, : self.seq_len] = a
        return out.reshape(-1)

    def _forward_layer(self, i: int, x: np.ndarray, train: bool) -> tuple[np.ndarray, _Saved | None]:
        """Layer i's forward; with `train`, also what its backward needs (`_Saved`): the
        activations its backward kernels take go to their bindings on the worker, overlapping
        the next kernels (nothing here is written after it is queued)."""
        cfg, p, dt = self.config, self._layer(i), self.dtype
        xn1, rrms1 = cpu_ops.rmsnorm_forward(x, p["attn_norm"], cfg.norm_eps, dt)
        attn = self._run(i, "attention_forward", xnorm=xn1)
        x2 = x + attn["o"]
        s = None
        if train:
            s = _Saved()
            s.x, s.rrms1, s.x2 = x, rrms1, x2
            s.attn_ready = self._prefetch(
                i,
                {
                    "attention_backward": {
                        "q_rope": attn["q_rope"],
                        "k_rope": attn["k_rope"],
                        "v": attn["v"],
                    },
                    "attention_wgrad": {"xnorm": xn1, "attn": attn["attn"]},
                },
            )
        xn2, rrms2 = cpu_ops.rmsnorm_forward(x2, p["ffn_norm"], cfg.norm_eps, dt)
        ffn = self._run(i, "ffn_forward", xnorm=xn2)
        if train:
            s.rrms2 = rrms2
            s.ffn_ready = self._prefetch(
                i,
                {
                    "ffn_backward": {"h1": ffn["h1"], "h3": ffn["h3"]},
                    "ffn_wgrad": {"xnorm": xn2, "gate": ffn["gate"]},
                },
            )
        return x2 + ffn["y"], s

    def _backward_layer(self, i: int, dy: np.ndarray, s: _Saved, grads, futures) -> np.ndarray:
        """dy: gradient of the layer output; returns the gradient of its input. Nothing passed to
        the worker is written afterwards (each array here is new)."""
        p, dt, pre = self._layer(i), self.dtype, f"layers.{i}."
        s.ffn_ready.result()  # h1, h3 are in the binding
        f = self._run(i, "ffn_backward", dy=dy)
        self._submit_wgrad(i, "ffn_wgrad", grads, futures, dy=dy, dh1=f["dh1"], dh3=f["dh3"])
        dx2, dg = cpu_ops.rmsnorm_backward(f["dx"], s.x2, p["ffn_norm"], s.rrms2, dt)
        grads[pre + "ffn_norm"] += dg
        dx2 += dy
        s.attn_ready.result()  # q_rope, k_rope, v are in the binding
        a = self._run(i, "attention_backward", dy=dx2)
        self._submit_wgrad(i, "attention_wgrad", grads, futures, dy=dx2, dq=a["dq"], dk=a["dk"], dv=a["dv"])
        dx, dg = cpu_ops.rmsnorm_backward(a["dx"], s.x, p["attn_norm"], s.rrms1, dt)
        grads[pre + "attn_norm"] += dg
        dx += dx2
        return dx

    def step(
        self,
        tokens,
        targets,
        loss_scale: float = 1.0,
        *,
        grads: dict[str, np.ndarray] | None = None,
        on_ready: Callable[[list[str]], None] | None = None,
        reuse: Mapping[str, np.ndarray] | None = None,
    ) -> StepResult:
        """Loss and gradients of the mean next-token cross-entropy of `tokens` `[B, S]` against
        `targets` `[B, S]` (ids, or `cpu_ops.IGNORE`). fp16 overflow is not an error here: it
        shows up as `StepResult.finite == False`.

        grads: arrays (shapes of `config.param_shapes()`) to add this batch's gradients into, still
        multiplied by `loss_scale` and not checked for finiteness (the caller unscales and checks
        them, e.g. after summing micro-batches and ranks: `anekit.train.distributed`). on_ready: called
        with parameter names as their gradients become final in this call (on the weight-gradient
        worker, in backward order: the last layer first), so a reduction can start early.
        reuse: the gradient arrays of an earlier result the caller is done with (not with `grads`):
        this step's gradients are written into them, overwriting them, instead of into new arrays
        (the returned `grads` are these arrays). It saves the page faults of ~4 bytes per parameter
        of fresh memory each step (~0.7 ns per element measured on x86, ~60 ms for Stories110M)."""
        tok, tgt = self._check_batch(tokens, targets)
        if reuse is not None and grads is not None:
            raise ValueError("pass grads (added into) or reuse (overwritten), not both")
        with blas_threads(self.blas_threads), np.errstate(over="ignore", invalid="ignore"):
            return self._step(tok, tgt, loss_scale, grads, on_ready, reuse)

    def _chunks(self, tok: np.ndarray, tgt: np.ndarray):
        """(tokens, targets) of each kernel call: `n_seq` sequences, flat and padded."""
        for c0 in range(0, self.batch_size, self.n_seq):
            yield (
                self._padded(tok[c0 : c0 + self.n_seq], 0),
                self._padded(tgt[c0 : c0 + self.n_seq], cpu_ops.IGNORE),
            )

    def _forward(self, ctok: np.ndarray, saved: list | None):
        """Embedding, every layer, final RMSNorm of one call's tokens: `(x, xf, rrms_f)` (the last
        layer's output, its normed form and its rrms). Appends each layer's activations to
        `saved` (for a backward pass) unless it is None. The one forward path of `step` and `loss`."""
        cfg, dt = self.config, self.dtype
        x = cpu_ops.embedding_forward(self.params["embed"], ctok, dt)
        for i in range(cfg.n_layers):
            x, s = self._forward_layer(i, x, saved is not None)
            if saved is not None:
                saved.append(s)
        xf, rrms_f = cpu_ops.rmsnorm_forward(x, self.params["final_norm"], cfg.norm_eps, dt)
        return x, xf, rrms_f

    def _step(self, tok, tgt, loss_scale: float, given=None, on_ready=None, reuse=None) -> StepResult:
        t_start = time.perf_counter()
        self._timing = timing = StepTiming()
        cls = self.classifier_kernels
        cls.engine_s, cls.kernel_calls = 0.0, 0
        shapes = self.config.param_shapes()
        from_kernels = self._from_kernels
        grads = self._grad_arrays(given, shapes, from_kernels, reuse)
        if given is None:  # the worker unscales and checks what it writes (`_WorkerGrads`)
            calls = self.batch_size // self.n_seq  # contributions to each matrix
            self._sink = _WorkerGrads(
                grads, set(from_kernels), 1.0 / loss_scale, check=True, contributions=calls
            )
        else:
            self._sink = _WorkerGrads(grads, set(), 1.0, check=False)
        futures: list[Future] = []
        n_count = int(np.sum(tgt != cpu_ops.IGNORE))
        loss_sum = 0.0
        last_chunk = (self.batch_size - 1) // self.n_seq * self.n_seq
        for c0, (ctok, ctgt) in zip(range(0, self.batch_size, self.n_seq), self._chunks(tok, tgt)):
            ready = on_ready if c0 == last_chunk else None  # reported once, in the last call's backward
            loss_sum += self._call_step(ctok, ctgt, loss_scale, max(n_count, 1), grads, futures, ready)
        t_wait = time.perf_counter()
        for fut in futures:
            fut.result()
        timing.dw_wait_s = time.perf_counter() - t_wait
        loss = loss_sum / max(n_count, 1)
        if given is not None:
            if on_ready is not None:
                on_ready([n for n in shapes if not n.startswith("layers.")])
            self._finish_timing(t_start)
            return StepResult(loss, grads, bool(np.isfinite(loss)), [], timing)
        rest = {name: g for name, g in grads.items() if name not in from_kernels}
        bad, sq = _unscale(rest, loss_scale)
        bad = set(bad) | self._sink.nonfinite
        sq.update(self._sink.sq)
        nonfinite = [name for name in shapes if name in bad]
        grad_sq = math.fsum(sq[name] for name in shapes) if len(sq) == len(shapes) else None
        self._finish_timing(t_start)
        finite = not nonfinite and bool(np.isfinite(loss))
        return StepResult(loss, grads, finite, nonfinite, timing, grad_sq)

    def _grad_arrays(self, given, shapes: dict, written: set[str], reuse=None) -> dict[str, np.ndarray]:
        """The arrays a step adds its gradients into: `given` (checked), else new arrays (or those
        of `reuse`, checked): zeros, or left as they are for those the worker writes before adding
        (`written`, `_WorkerGrads`)."""
        if given is not None:
            _check_grad_arrays(given, shapes, self.dtype)
            return given
        if reuse is not None:
            _check_grad_arrays(reuse, shapes, self.dtype)
            out = {}
            for name in shapes:
                g = reuse[name]
                if not g.flags.c_contiguous or not g.flags.writeable:
                    raise ValueError(f"reuse[{name!r}] must be a writable C-contiguous array")
                if name not in written:
                    g.fill(0)
                out[name] = g
            if len({id(g) for g in out.values()}) != len(out):
                raise ValueError("reuse holds the same array under two names")
            return out
        return {
            name: (np.empty if name in written else np.zeros)(shape, dtype=self.dtype)
            for name, shape in shapes.items()
        }

    def _call_step(self, ctok, ctgt, loss_scale: float, normalizer: int, grads, futures, on_ready) -> float:
        """Forward and backward of one kernel call's tokens: adds their gradients into `grads`
        (weight gradients queued on the worker, `futures`), returns their summed loss / normalizer.
        on_ready: as in `step`, or None when this is not the step's last call."""
        cfg = self.config
        saved: list[_Saved | None] = []
        x, xf, rrms_f = self._forward(ctok, saved)
        head = "embed" if cfg.tie_embeddings else "lm_head"
        ls, dxf, _ = self.classifier_kernels(
            xf, ctgt, grad_scale=loss_scale, normalizer=normalizer, out=grads[head]
        )
        dx, dg = cpu_ops.rmsnorm_backward(dxf, x, self.params["final_norm"], rrms_f, self.dtype)
        grads["final_norm"] += dg
        dx = self._backward_layers(dx, saved, grads, futures, on_ready)
        cpu_ops.embedding_backward(dx, ctok, cfg.vocab_size, out=grads["embed"])
        return ls

    def _backward_layers(self, dx: np.ndarray, saved: list, grads, futures, on_ready) -> np.ndarray:
        """Every layer's backward, the last first (freeing each one's activations); returns the
        gradient of the first layer's input."""
        all_names = list(self.config.param_shapes()) if on_ready is not None else []
        for i in reversed(range(self.config.n_layers)):
            dx = self._backward_layer(i, dx, saved[i], grads, futures)
            saved[i] = None
            if on_ready is not None:
                # the worker runs jobs in order: this runs once layer i's dW jobs are done, and the
                # main thread added its norm gains before submitting it
                names = [n for n in all_names if n.startswith(f"layers.{i}.")]
                futures.append(self._pool.submit(on_ready, names))
        return dx

    def _finish_timing(self, t_start: float) -> None:
        timing, cls = self._timing, self.classifier_kernels
        timing.engine_s += cls.engine_s
        timing.kernel_calls += cls.kernel_calls + timing.dw_calls
        timing.total_s = time.perf_counter() - t_start
        timing.cpu_s = timing.total_s - timing.engine_s - timing.dw_wait_s

    def loss(self, tokens, targets) -> float:
        """Mean cross-entropy only (forward kernels, no gradients)."""
        tok, tgt = self._check_batch(tokens, targets)
        with blas_threads(self.blas_threads), np.errstate(over="ignore", invalid="ignore"):
            return self._loss(tok, tgt)

    def _loss(self, tok: np.ndarray, tgt: np.ndarray) -> float:
        total, count = 0.0, int(np.sum(tgt != cpu_ops.IGNORE))
        for ctok, ctgt in self._chunks(tok, tgt):
            _, xf, _ = self._forward(ctok, None)
            ls, _, _ = self.classifier_kernels(xf, ctgt, need_grad=False)
            total += ls
        return total / max(count, 1)

    def close(self) -> None:
        """Stop the worker and release the bindings and kernels."""
        self._pool.shutdown(wait=True)
        self.classifier_kernels.close()
        for layer in self.bindings:
            for binding in layer.values():
                binding.close()
        for k in self.kernels.values():
            k.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
