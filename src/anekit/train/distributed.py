"""Data-parallel training across processes and machines, on `torch.distributed` with `gloo`.

Every process (rank) runs the same step on its own slice of each global batch
(`anekit.train.data.Batches` with `rank`/`world`); the weight gradients, which live in NumPy on the
host, are summed across ranks and every rank applies the same AdamW update, so the ranks stay
bit-identical. The averaging runs on an existing engine: PyTorch's `gloo` backend, which runs on
CPUs and is supported on macOS (https://pytorch.org/docs/stable/distributed.html#backends);
`torchrun` (`torch.distributed.run`) does rendezvous, process launch and restarts.

- `world_from_env`: rank and world size from the variables torchrun sets for each worker
  (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT:
  https://pytorch.org/docs/stable/elastic/run.html#environment-variables).
- `Group`: the process group; every collective goes through `Group._collective`, which turns a
  failed or timed-out collective into `RankFailed` naming the ranks that stopped answering (each rank
  that sees the failure leaves a mark in the rendezvous store; a rank that left no mark within
  `MARK_GRACE_S` is the one that died or hangs).
- `GradBuckets` / `GradReducer`: the gradients are views into a few flat NumPy buffers ("buckets",
  `DEFAULT_BUCKET_MB` each, PyTorch DDP's default `bucket_cap_mb`); each bucket is one `all_reduce`
  on a `torch.from_numpy` view (no copy), started as soon as the backward pass has finished every
  gradient in it (the step's weight-gradient worker reports them layer by layer), so the reduction of
  the last layers overlaps the backward pass of the first. In fp16 the bucket is converted once,
  keeping the loss scale in the values so small gradients do not flush to zero (fp16's smallest
  subnormal is 2^-24 ~ 6e-8), and divided out after the sum.
- `param_checksum`: CRC-32 of every parameter's bytes; `Group.check_identical` compares the ranks'
  checksums every `--check-every` steps and before each checkpoint.

torch is an optional extra (`pip install 'anekit[distributed]'`); `require_torch` says so.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import AnekitError
from .options import ALLREDUCE_PRECISIONS

#: PyTorch DDP's default bucket size (`bucket_cap_mb=25`), a compromise between per-call latency and
#: overlap with the backward pass.
DEFAULT_BUCKET_MB = 25.0
#: Seconds a collective may wait for a peer before the run stops (gloo's own default is 30 minutes,
#: far too long to notice a hung Mac). Rank 0 saving a checkpoint or measuring the validation loss
#: while the others wait must fit in it.
DEFAULT_TIMEOUT_S = 180.0
#: Seconds a rank that saw a collective fail waits for the others to leave their mark before it
#: names the ranks that did not (those died or hang).
MARK_GRACE_S = 3.0
INSTALL_HINT = "pip install 'anekit[distributed]' (PyTorch >= 2.2, for torch.distributed and torchrun)"


class DistributedError(AnekitError, RuntimeError):
    """Data-parallel training could not start or continue; the message says which rank and what to do."""


class DistributedUnavailable(DistributedError, ImportError):
    """torch (the optional `distributed` extra) is not installed."""


class RankFailed(DistributedError):
    """A rank died, hung past the timeout, or stopped with an error; the message names it."""


class RanksDiverged(DistributedError):
    """The ranks' parameters are no longer bit-identical (checked by checksum)."""


def require_torch():
    """`torch.distributed`, or `DistributedUnavailable` saying what to install."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError as e:
        raise DistributedUnavailable(
            f"data-parallel training needs PyTorch, which is not installed ({e}); {INSTALL_HINT}"
        ) from None
    if not dist.is_available() or not dist.is_gloo_available():
        raise DistributedUnavailable(
            f"this PyTorch build ({torch.__version__}) has no torch.distributed gloo backend; {INSTALL_HINT}"
        )
    return dist


# ---------------------------------------------------------------------------------------------
# Who am I


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    world_size: int
    local_rank: int
    restart_count: int = 0  #: TORCHELASTIC_RESTART_COUNT: > 0 when torchrun restarted the workers


def _env_int(environ: Mapping[str, str], name: str, lo: int, hi: int | None = None) -> int:
    raw = environ.get(name)
    try:
        value = int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DistributedError(
            f"environment variable {name}={raw!r} is not an integer; it is set by torchrun for each worker "
            "(start training with torchrun or `anekit train --nproc N`, or unset WORLD_SIZE)"
        ) from None
    if value < lo or (hi is not None and value > hi):
        upper = f" and < {hi + 1}" if hi is not None else ""
        raise DistributedError(f"environment variable {name}={value} must be >= {lo}{upper}")
    return value


def world_from_env(environ: Mapping[str, str] | None = None) -> WorldInfo | None:
    """This process's place in a torchrun job, or None when it runs alone (WORLD_SIZE unset)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    world = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0, world - 1)
    local = _env_int(env, "LOCAL_RANK", 0, world - 1) if "LOCAL_RANK" in env else 0
    restarts = _env_int(env, "TORCHELASTIC_RESTART_COUNT", 0) if "TORCHELASTIC_RESTART_COUNT" in env else 0
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise DistributedError(
                f"WORLD_SIZE={world} is set but {name} is not: both are set by torchrun; start the ranks "
                "with torchrun (docs/distributed.md) or `anekit train --nproc N`"
            )
    return WorldInfo(rank, world, local, restarts)


# ---------------------------------------------------------------------------------------------
# The process group


class Group:
    """The gloo process group of a data-parallel run (one per process)."""

    def __init__(self, info: WorldInfo, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.dist = require_torch()
        self.info = info
        self.rank, self.world_size = info.rank, info.world_size
        self.timeout_s = timeout_s
        self.step = 0  #: the step being trained, for messages
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            from torch.distributed import PrefixStore
            from torch.distributed.rendezvous import rendezvous

            # torchrun's store (MASTER_ADDR:MASTER_PORT) outlives a restart of the workers, and with it
            # the previous attempt's gloo addresses: a restarted rank read a dead peer's address and
            # could not connect. Each attempt gets its own key prefix.
            store, _, _ = next(rendezvous("env://", info.rank, info.world_size, timeout=timeout))
            store = PrefixStore(f"anekit/attempt-{info.restart_count}/", store)
            self.dist.init_process_group(
                "gloo", store=store, rank=info.rank, world_size=info.world_size, timeout=timeout
            )
        except Exception as e:  # torch raises RuntimeError / DistNetworkError / TimeoutError variants
            raise DistributedError(
                f"rank {info.rank} of {info.world_size} could not join the group at "
                f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} ({e}); check that every "
                "machine runs the same torchrun command with the same --rdzv-endpoint, that the port is "
                "open in the firewall and GLOO_SOCKET_IFNAME names the interface between them "
                "(docs/distributed.md)"
            ) from None
        self._store = _default_store(self.dist)
        self._cpu = None
        here = {"host": socket.gethostname(), "pid": os.getpid()}
        self.peers: list[dict] = self.all_gather_object(here, "start-up")

    # -- naming ranks ----------------------------------------------------------------------------
    def describe(self, rank: int) -> str:
        p = self.peers[rank] if rank < len(getattr(self, "peers", [])) else {}
        return f"rank {rank} (host {p.get('host', '?')}, pid {p.get('pid', '?')})"

    def _silent_ranks(self, what: str) -> list[int]:
        """Leave this rank's mark for the failure of `what`, wait up to `MARK_GRACE_S` for the
        others' marks; the ranks that left none died or hang (None known: [])."""
        if self._store is None:
            return []
        key = f"anekit/failed/{what}/"
        try:
            self._store.set(key + str(self.rank), "1")
            deadline = time.monotonic() + MARK_GRACE_S
            missing = list(range(self.world_size))
            while time.monotonic() < deadline:
                missing = [r for r in range(self.world_size) if not self._store.check([key + str(r)])]
                if not missing:
                    return []
                time.sleep(0.1)
            return missing
        except Exception:  # the store itself is gone: it lives in rank 0 unless torchrun hosts it
            return [] if self.rank == 0 else [0]

    def _collective(self, what: str, fn: Callable):
        try:
            return fn()
        except Exception as e:
            raise self.failure(what, e) from None

    def failure(self, what: str, error: BaseException) -> RankFailed:
        """The `RankFailed` for a collective `what` that raised `error` on this rank."""
        silent = self._silent_ranks(f"{what}-{self.step}")
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        when = f"the {what} of step {self.step}" if self.step else f"the {what}"
        if silent:
            who = ", ".join(self.describe(r) for r in silent)
            head = (
                f"{who} stopped answering during {when} (it died, stopped with its own error, or hung "
                f"for longer than --dist-timeout {self.timeout_s:g} s)"
            )
        else:
            head = f"{when} failed on {self.describe(self.rank)}"
        return RankFailed(f"{head}; gloo said: {detail}")

    # -- collectives -----------------------------------------------------------------------------
    def all_reduce_(self, array: np.ndarray, what: str = "all-reduce", async_op: bool = False):
        """Sum `array` across ranks in place (a `torch.from_numpy` view: no copy)."""
        import torch

        t = torch.from_numpy(array)
        return self._collective(what, lambda: self.dist.all_reduce(t, async_op=async_op))

    def wait(self, work, what: str = "gradient all-reduce") -> None:
        self._collective(what, lambda: work.wait())

    def broadcast_object(self, obj=None, what: str = "start-up"):
        """Rank 0's `obj` on every rank (pickled: only between the ranks of one job)."""
        box = [obj if self.rank == 0 else None]
        self._collective(what, lambda: self.dist.broadcast_object_list(box, src=0))
        return box[0]

    def all_gather_object(self, obj, what: str) -> list:
        out = [None] * self.world_size
        self._collective(what, lambda: self.dist.all_gather_object(out, obj))
        return out

    def broadcast_arrays(self, arrays: Mapping[str, np.ndarray], what: str = "start-up") -> None:
        """Overwrite every rank's `arrays` (same names, shapes, dtypes) with rank 0's, in place."""
        import torch

        for name in sorted(arrays):
            a = arrays[name]
            if not a.flags.c_contiguous or not a.flags.writeable:
                raise ValueError(f"{name}: broadcast needs a writeable C-contiguous array")
            t = torch.from_numpy(a)
            self._collective(what, lambda t=t: self.dist.broadcast(t, src=0))

    def check_identical(self, params: Mapping[str, np.ndarray], step: int) -> None:
        """`RanksDiverged` unless every rank's parameters have rank 0's checksum."""
        sums = self.all_gather_object(param_checksum(params), "parameter check")
        bad = [r for r, s in enumerate(sums) if s != sums[0]]
        if bad:
            raise RanksDiverged(
                f"after step {step} the parameters of {', '.join(self.describe(r) for r in bad)} differ from "
                f"rank 0's (CRC-32 {sums[0]:08x} on rank 0, "
                + ", ".join(f"{sums[r]:08x} on rank {r}" for r in bad)
                + "); every rank must run the same anekit, NumPy and BLAS build on the same kind of machine. "
                "Resume from the last checkpoint (rank 0's weights are sent to every rank at start)"
            )

    def close(self) -> None:
        try:
            if self.dist.is_initialized():
                self.dist.destroy_process_group()
        except Exception:  # a group broken by a dead peer cannot always be torn down cleanly
            pass


def _default_store(dist):
    """The rendezvous key-value store (torchrun's agent hosts it, so it outlives a dead worker)."""
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:
        return None


def param_checksum(params: Mapping[str, np.ndarray]) -> int:
    """CRC-32 of every parameter's bytes in name order: equal on two ranks iff (barring a 2^-32 chance)
    their parameters are bit-identical. zlib's CRC-32 runs at memory speed, ~0.1 s for 110 M fp32."""
    crc = 0
    for name in sorted(params):
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(memoryview(np.ascontiguousarray(params[name])).cast("B"), crc)
    return crc


# ---------------------------------------------------------------------------------------------
# Gradient buckets


def backward_order(names: Iterable[str], n_layers: int) -> list[str]:
    """Parameter names in the order the backward pass finishes them: the last layer first, then the
    rest (final norm, classifier, embedding: final only when the step ends)."""
    names = list(names)
    layers = [[n for n in names if n.startswith(f"layers.{i}.")] for i in reversed(range(n_layers))]
    ordered = [n for layer in layers for n in layer]
    return ordered + [n for n in names if n not in set(ordered)]


class GradBuckets:
    """The gradients as views into flat buffers of at most `bucket_bytes` each (a parameter larger than
    that gets a bucket of its own), filled in `order`."""

    def __init__(self, shapes: Mapping[str, tuple], order: list[str], dtype, bucket_bytes: int):
        self.dtype = np.dtype(dtype)
        groups: list[list[str]] = [[]]
        size = 0
        for name in order:
            n = int(np.prod(shapes[name])) * self.dtype.itemsize
            if groups[-1] and size + n > bucket_bytes:
                groups.append([])
                size = 0
            groups[-1].append(name)
            size += n
        self.names = groups
        self.flat: list[np.ndarray] = []
        self.views: dict[str, np.ndarray] = {}
        self.bucket_of: dict[str, int] = {}
        for b, group in enumerate(groups):
            total = sum(int(np.prod(shapes[n])) for n in group)
            flat = np.zeros(total, dtype=self.dtype)
            pos = 0
            for n in group:
                k = int(np.prod(shapes[n]))
                self.views[n] = flat[pos : pos + k].reshape(shapes[n])
                self.bucket_of[n] = b
                pos += k
            self.flat.append(flat)

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.flat)

    def zero(self) -> None:
        for f in self.flat:
            f.fill(0)


class GradReducer:
    """Sums the buckets across ranks, each as soon as it is complete (`ready`), then `finish` turns
    the sums into the mean gradient.

    The buckets hold `scale` x (the sum over `accum` micro-batches of this rank's gradients of the mean
    loss); `finish` leaves (1 / (scale x accum x world)) x the sum over ranks: the gradient of the mean
    loss over the global batch. `precision` "fp16" sends each bucket as fp16 scaled by `scale / (accum x
    world)` (so the summed values are `scale` x the mean gradient: the dynamic loss scale keeps them
    inside fp16's range; an overflow makes the gradients non-finite and the step is skipped like a
    kernel overflow)."""

    def __init__(self, group: Group, buckets: GradBuckets, precision: str = "full"):
        if precision not in ALLREDUCE_PRECISIONS:
            raise ValueError(f"precision must be one of {ALLREDUCE_PRECISIONS}, got {precision!r}")
        self.group, self.buckets, self.precision = group, buckets, precision
        self.wire = [np.zeros(f.shape, np.float16) for f in buckets.flat] if precision == "fp16" else None
        if self.wire is not None:
            # torch's fp32 <-> fp16 conversions are vectorised; NumPy's were 5-8x slower here
            # (109.5 M values, x86: 125 ms vs 950 ms; benchmarks/distributed.py)
            import torch

            self._flat_t = [torch.from_numpy(f) for f in buckets.flat]
            self._wire_t = [torch.from_numpy(w) for w in self.wire]
        self._pending: list[set[str]] = []
        self._work: list = []
        self.scale = 1.0
        self.accum = 1

    def start(self, scale: float, accum: int) -> None:
        """Begin an optimizer step's reduction (call before the last micro-batch's backward)."""
        self.scale, self.accum = float(scale), int(accum)
        self._pending = [set(names) for names in self.buckets.names]
        self._work = [None] * len(self.buckets.flat)

    def ready(self, names: Iterable[str]) -> None:
        """`names`' gradients are final: start the all-reduce of every bucket this completes."""
        for name in names:
            b = self.buckets.bucket_of[name]
            pending = self._pending[b]
            pending.discard(name)
            if not pending and self._work[b] is None:
                self._launch(b)

    def _launch(self, b: int) -> None:
        flat = self.buckets.flat[b]
        if self.wire is not None:
            # the bucket is rewritten by `finish` anyway: scale it in place, then convert
            self._flat_t[b].mul_(1.0 / (self.accum * self.group.world_size))
            self._wire_t[b].copy_(self._flat_t[b])
            target = self.wire[b]
        else:
            target = flat
        self._work[b] = self.group.all_reduce_(target, "gradient all-reduce", async_op=True)

    def finish(self) -> float:
        """Wait for every bucket (starting any not yet started); scale the sums into the mean gradient.
        Returns the seconds spent waiting."""
        t0 = time.perf_counter()
        for b in range(len(self.buckets.flat)):
            if self._work[b] is None:
                self._launch(b)
        for b, work in enumerate(self._work):
            self.group.wait(work)
            flat = self.buckets.flat[b]
            if self.wire is not None:
                self._flat_t[b].copy_(self._wire_t[b])
                self._flat_t[b].mul_(1.0 / self.scale)
            else:
                with np.errstate(over="ignore", invalid="ignore"):
                    flat *= 1.0 / (self.scale * self.accum * self.group.world_size)
        return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Bandwidth arithmetic (docs/distributed.md)


def ring_allreduce_bytes(payload_bytes: float, world: int) -> float:
    """Bytes each rank sends (and receives) in a ring all-reduce of `payload_bytes`: 2 (W - 1) / W
    times the payload (reduce-scatter then all-gather; Patarasuk & Yuan 2009, the bound gloo's ring
    algorithm meets)."""
    if world <= 1:
        return 0.0
    return 2.0 * (world - 1) / world * payload_bytes


@dataclass(frozen=True)
class ScalingEstimate:
    """Predicted cost of the gradient all-reduce of one optimizer step (see `estimate_scaling`)."""

    params: int
    world: int
    link_gbps: float
    precision: str
    step_ms: float  #: one process's compute time per optimizer step
    payload_bytes: int  #: gradient bytes each rank contributes
    wire_bytes: float  #: bytes each rank sends per step (ring)
    comm_ms: float  #: wire_bytes / link speed, + per-hop latency
    overlap: float  #: share of comm_ms hidden behind the backward pass (0: none assumed)

    @property
    def exposed_ms(self) -> float:
        return self.comm_ms * (1.0 - self.overlap)

    @property
    def efficiency(self) -> float:
        """Speed-up over one process / world: step / (step + exposed communication)."""
        return self.step_ms / (self.step_ms + self.exposed_ms) if self.world > 1 else 1.0

    @property
    def tokens_speedup(self) -> float:
        return self.world * self.efficiency

    def accum_factor_for(self, efficiency: float = 0.8) -> int:
        """How many times longer the step must be (e.g. `--accum` x this) to reach `efficiency`."""
        if self.world <= 1 or self.exposed_ms <= 0:
            return 1
        need = efficiency / (1 - efficiency) * self.exposed_ms  # step >= that many ms
        return max(1, math.ceil(need / self.step_ms))

    def to_json(self) -> dict:
        return {
            "params": self.params,
            "world": self.world,
            "link_gbps": self.link_gbps,
            "allreduce": self.precision,
            "step_ms": self.step_ms,
            "payload_bytes": self.payload_bytes,
            "wire_bytes_per_rank": self.wire_bytes,
            "comm_ms": self.comm_ms,
            "overlap": self.overlap,
            "exposed_comm_ms": self.exposed_ms,
            "efficiency": self.efficiency,
            "speedup": self.tokens_speedup,
            "step_factor_for_80_percent": self.accum_factor_for(0.8),
        }


#: Per-message latency of one ring hop over a local link, in ms (TCP over Thunderbolt or 10 GbE is
#: ~0.05-0.1 ms round trip; gloo's ring sends 2 (W - 1) messages per bucket).
HOP_LATENCY_MS = 0.1


def estimate_scaling(
    params: int,
    world: int,
    link_gbps: float,
    step_ms: float,
    precision: str = "full",
    bytes_per_grad: int = 4,
    bucket_mb: float = DEFAULT_BUCKET_MB,
    overlap: float = 0.0,
) -> ScalingEstimate:
    """The all-reduce time of `params` gradients across `world` ranks over a `link_gbps` link:
    ring bytes / link speed + 2 (W - 1) hops x buckets x `HOP_LATENCY_MS` (buckets of `bucket_mb` of
    `bytes_per_grad`-byte gradients: fp32 on the engine's CPU side); and the scaling efficiency beside a
    step of `step_ms` of compute."""
    if precision not in ALLREDUCE_PRECISIONS:
        raise ValueError(f"precision must be one of {ALLREDUCE_PRECISIONS}, got {precision!r}")
    buckets = max(1, math.ceil(params * bytes_per_grad / (bucket_mb * (1 << 20))))
    width = 2 if precision == "fp16" else bytes_per_grad
    payload = params * width
    wire = ring_allreduce_bytes(payload, world)
    comm = wire * 8 / (link_gbps * 1e9) * 1e3
    if world > 1:
        comm += 2 * (world - 1) * buckets * HOP_LATENCY_MS
    return ScalingEstimate(params, world, link_gbps, precision, step_ms, payload, wire, comm, overlap)


#: Measured times of one optimizer step of one process on the engine, for `anekit scaling`'s default
#: (per sequence of the model's seq_len; scaled by batch x accum): preset -> (ms, what and where).
PUBLISHED_STEP_MS: dict[str, tuple[float, str]] = {
    "stories110m": (
        91.8,
        "M4, 1 x 256 tokens per step, train_large_ane (ane-private-api.md §4.8, PR #19)",
    ),
    "qwen3-0.6b": (412.0, "M4, 1 x 256 tokens per step, dynamic pipeline (ane-private-api.md §4.8)"),
}
