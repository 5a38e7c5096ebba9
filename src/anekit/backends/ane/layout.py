"""Where each tensor element lives in its IOSurface, and moving arrays in and out (pure NumPy).

Facts (ane-private-api.md):
- §1.5: every surface is a flat byte buffer: width = N bytes, height 1, 1 byte per element,
  bytes per row = N, alloc size = N, pixel format 0.
- §1.7: tensors are `[1, C, 1, S]`, channel-major, element (c, s) at `c·S + s`. maderix assumes
  this dense layout and only uses widths that are multiples of 32 fp16 elements (64 bytes); other
  widths give silent zeros or status 0x1d (issue #47, prefill-bench). PyObjC ports instead read
  `modelAttributes["NetworkStatusList"][0]["LiveInputList"/"LiveOutputList"][i]` after load and
  write channel c at `c·PlaneStride`. Rule adopted: honour `PlaneStride` when the engine reports
  it, else require the dense layout and refuse shapes that break the 64-byte rule.
- §1.8: fp16 I/O (2 bytes per element) by default; fp32 I/O (4 bytes) allowed.
- §10.3: the entries of those lists name themselves: `Symbol` is the MIL name, `Name` is the MIL
  name with a suffix (`"<var>@output"` for outputs), so a tensor is matched by its `Symbol` or its
  `Name` with the `@...` suffix stripped, never by position when names are there; the model's own
  order of its inputs and outputs is the order of the lists (request index i is entry i), which
  need not be the MIL declaration order. Each entry gives the tensor in the engine's NCHW
  (`Batches`, `Channels`, `Height`, `Width`), also for MIL ranks below 4, so a lower-rank tensor is
  laid out from those four numbers (its element count checked against the MIL shape), not by
  prepending 1s to the MIL shape.

Nothing here touches Objective-C: a surface is any writable buffer (a memoryview over the locked
IOSurface base address on a Mac, a bytearray in tests).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...engine_limits import ROW_ALIGN_BYTES
from ...errors import AnekitError
from ..base import TensorSpec

# ROW_ALIGN_BYTES (anekit.engine_limits, §1.7): the innermost dimension must span a multiple of 64
# bytes (32 fp16 elements) when the engine does not report strides. For fp32 I/O the same 64 bytes
# are 16 elements (my reading).
#: §1.8: element types a surface can carry.
IO_DTYPES: dict[str, np.dtype] = {"fp16": np.dtype("<f2"), "fp32": np.dtype("<f4")}


class LayoutError(AnekitError, ValueError):
    """A tensor cannot be placed in an IOSurface as the engine expects; the message says why."""


@dataclass(frozen=True)
class Strides:
    """Byte strides the engine reports for one live input or output after load (§1.7).

    plane: `PlaneStride`, bytes between channels. batch: `BatchStride`, bytes between batch
    items (the ports size the whole surface by it). row: `RowStride`, only if reported.
    channels, type: the `Channels` and `Type` fields, used to check our reading of the tensor.
    """

    plane: int
    batch: int | None = None
    row: int | None = None
    channels: int | None = None
    type: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Port:
    """One entry of the engine's `LiveInputList` / `LiveOutputList` (§1.7, §10.3).

    names: what the entry calls its tensor: its `Symbol`, and its `Name` with any `@...` suffix
    stripped (empty when it gives neither). nchw: `(Batches, Channels, Height, Width)` when all
    four are reported. strides: the byte strides, when a positive `PlaneStride` is reported.
    """

    names: tuple[str, ...] = ()
    nchw: tuple[int, int, int, int] | None = None
    strides: Strides | None = None
    type: str | None = None

    @property
    def label(self) -> str:
        return self.names[0] if self.names else "(unnamed)"


@dataclass(frozen=True)
class SurfaceLayout:
    """How one tensor sits in one surface.

    dims: the shape as the engine's `[N, C, H, W]` (leading 1s added to lower ranks) when
    strided, else the logical shape. byte_strides: the stride of each of `dims` in bytes.
    nbytes: the surface size to allocate.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    dims: tuple[int, ...]
    byte_strides: tuple[int, ...]
    nbytes: int
    strided: bool

    def view(self, buffer: Any) -> np.ndarray:
        """A NumPy view of this tensor inside `buffer` (no copy)."""
        mv = memoryview(buffer).cast("B")
        if len(mv) < self.nbytes:
            raise LayoutError(
                f"{self.name}: the surface holds {len(mv)} bytes, the layout needs {self.nbytes}"
            )
        return np.ndarray(self.dims, dtype=self.dtype, buffer=mv, offset=0, strides=self.byte_strides)


def _describe(spec: TensorSpec) -> str:
    return f"{spec.name!r} {list(spec.shape)} {spec.dtype}"


def _static_shape(spec: TensorSpec) -> tuple[int, ...]:
    if any(d is None for d in spec.shape):
        raise LayoutError(
            f"{_describe(spec)} has a flexible dimension; the engine needs every dimension fixed at "
            "compile time (surfaces are sized once, ane-private-api.md §1.5)"
        )
    shape = tuple(int(d) for d in spec.shape)
    if any(d <= 0 for d in shape):
        raise LayoutError(f"{_describe(spec)} has an empty dimension")
    return shape


def io_dtype(spec: TensorSpec) -> np.dtype:
    """The element type of `spec` in a surface; only fp16 and fp32 I/O exist (§1.8)."""
    try:
        return IO_DTYPES[spec.dtype]
    except KeyError:
        raise LayoutError(
            f"{_describe(spec)}: the engine's inputs and outputs are fp16 (or fp32) surfaces "
            "(ane-private-api.md §1.8); cast inside the program instead"
        ) from None


def engine_dims(spec: TensorSpec, nchw: Sequence[int] | None) -> tuple[int, ...]:
    """The dimensions the surface holds `spec` in: the engine's reported NCHW when there is one
    (§10.3; for ranks below 4 that is how the engine lays the tensor out), else the MIL shape.

    Raises `LayoutError` when the reported NCHW does not hold exactly the MIL shape's elements,
    or differs from a rank-4 MIL shape (then nothing says where the data goes)."""
    shape = _static_shape(spec)
    if nchw is None:
        return shape
    dims = tuple(int(d) for d in nchw)
    if len(dims) != 4 or any(d <= 0 for d in dims):
        raise LayoutError(f"{_describe(spec)}: the engine reports NCHW {list(dims)}, not four positive sizes")
    count, reported = int(np.prod(shape)), int(np.prod(dims))
    if count != reported:
        raise LayoutError(
            f"{_describe(spec)}: the engine reports it as NCHW {list(dims)} ({reported} elements), the "
            f"program declares {count} elements; refusing to guess the layout (ane-private-api.md §10.3)"
        )
    if len(shape) == 4 and dims != shape:
        raise LayoutError(
            f"{_describe(spec)}: the engine reports NCHW {list(dims)} for this rank-4 tensor; refusing "
            "to guess which axes moved (ane-private-api.md §10.3)"
        )
    return dims


def surface_layout(
    spec: TensorSpec, strides: Strides | None = None, nchw: Sequence[int] | None = None
) -> SurfaceLayout:
    """The layout of `spec` in its surface: strided when the engine reported `strides`, else dense;
    over the engine's reported `nchw` when given (`engine_dims`), else over the MIL shape.

    Raises `LayoutError` for a dense layout whose innermost dimension breaks the 64-byte rule,
    for strides that cannot hold the tensor (they would make us write past a plane), and for an
    NCHW that does not match the MIL shape.
    """
    shape = _static_shape(spec)
    dims = engine_dims(spec, nchw)
    dt = io_dtype(spec)
    if strides is None:
        return _dense_layout(spec, shape, dims, dt)
    return _strided_layout(spec, shape, dims, dt, strides)


def _dense_layout(
    spec: TensorSpec, shape: tuple[int, ...], dims: tuple[int, ...], dt: np.dtype
) -> SurfaceLayout:
    """Rows packed back to back: only valid when the innermost dimension fills whole 64-byte rows."""
    item = dt.itemsize
    if not shape:
        raise LayoutError(f"{_describe(spec)}: a scalar cannot be a surface; use shape [1, 1, 1, 32]")
    inner = dims[-1] * item
    if inner % ROW_ALIGN_BYTES:
        raise LayoutError(
            f"{_describe(spec)}: its innermost dimension is {shape[-1]} elements ({inner} bytes). "
            f"Without a PlaneStride from the engine the surface must be dense, which needs the "
            f"innermost dimension to be a multiple of {ROW_ALIGN_BYTES // item} {spec.dtype} elements "
            f"({ROW_ALIGN_BYTES} bytes); other widths give silent zeros or status 0x1d "
            "(ane-private-api.md §1.7, §6). Pad that dimension (e.g. the sequence) to a multiple "
            f"of {ROW_ALIGN_BYTES // item}."
        )
    dense = [item]
    for d in reversed(dims[1:]):
        dense.insert(0, dense[0] * d)
    return SurfaceLayout(spec.name, shape, dt, dims, tuple(dense), int(np.prod(shape)) * item, strided=False)


def _check_reported(spec: TensorSpec, strides: Strides, channels: int) -> None:
    """The engine's own description of the surface (Channels, Type) must match the program's."""
    if strides.channels is not None and strides.channels != channels:
        raise LayoutError(
            f"{_describe(spec)}: the engine reports Channels={strides.channels}, the layout has {channels} "
            "channels; refusing to guess where the data goes"
        )
    if strides.type is not None and strides.type.lower() not in _TYPE_NAMES[spec.dtype]:
        raise LayoutError(f"{_describe(spec)}: the engine reports Type={strides.type!r}, not {spec.dtype}")


def _row_stride(spec: TensorSpec, strides: Strides, h: int, row_bytes: int) -> int:
    if strides.row is not None:
        return strides.row
    if h == 1 or row_bytes % ROW_ALIGN_BYTES == 0:
        return row_bytes  # one row, or rows already 64-byte aligned: dense rows within the plane
    raise LayoutError(
        f"{_describe(spec)}: the engine reported a PlaneStride but no RowStride, and rows of "
        f"{row_bytes} bytes are not {ROW_ALIGN_BYTES}-byte aligned, so where row 1 starts is unknown"
    )


def _strided_layout(
    spec: TensorSpec, shape: tuple[int, ...], dims: tuple[int, ...], dt: np.dtype, strides: Strides
) -> SurfaceLayout:
    """[N, C, H, W] at the engine's reported strides, checked to hold the tensor without overlap."""
    item = dt.itemsize
    if len(dims) > 4:
        raise LayoutError(
            f"{_describe(spec)}: the engine reported strides for a rank-{len(shape)} tensor; only ranks "
            "up to 4 ([N, C, H, W]) have a known strided layout (ane-private-api.md §1.7)"
        )
    # Without a reported NCHW, a lower rank gets leading 1s (the only reading left, §1.7).
    n, c, h, w = (1,) * (4 - len(dims)) + dims
    _check_reported(spec, strides, c)
    row_bytes = w * item
    rs = _row_stride(spec, strides, h, row_bytes)
    ps = strides.plane
    plane_extent = (h - 1) * rs + row_bytes
    if rs < row_bytes or ps < plane_extent:
        raise LayoutError(
            f"{_describe(spec)}: PlaneStride {ps} / RowStride {rs} bytes cannot hold a {h}x{w} plane "
            f"of {spec.dtype} ({plane_extent} bytes)"
        )
    bs = strides.batch if strides.batch is not None else c * ps
    batch_extent = (c - 1) * ps + plane_extent
    if bs < batch_extent:
        raise LayoutError(f"{_describe(spec)}: BatchStride {bs} bytes cannot hold {c} planes of {ps} bytes")
    nbytes = max(n * bs, (n - 1) * bs + c * ps)
    return SurfaceLayout(spec.name, shape, dt, (n, c, h, w), (bs, ps, rs, item), nbytes, strided=True)


_TYPE_NAMES = {"fp16": {"float16", "fp16", "half"}, "fp32": {"float32", "fp32", "float"}}


def surface_properties(nbytes: int) -> dict[str, int]:
    """The IOSurfaceCreate property dictionary for a flat buffer of `nbytes` (§1.5, exact)."""
    if nbytes <= 0:
        raise LayoutError("a surface needs at least one byte")
    return {
        "IOSurfaceWidth": nbytes,
        "IOSurfaceHeight": 1,
        "IOSurfaceBytesPerElement": 1,
        "IOSurfaceBytesPerRow": nbytes,
        "IOSurfaceAllocSize": nbytes,
        "IOSurfacePixelFormat": 0,
    }


def pack(layout: SurfaceLayout, array: Any, buffer: Any) -> None:
    """Write `array` (any float/int array of the tensor's shape) into `buffer` at `layout`.

    Values are rounded to the surface type (fp16: round to nearest even, overflow to inf, as the
    CPU conversion in maderix does, §1.8). Padding bytes between rows/planes are left untouched.
    """
    arr = np.asarray(array)
    if arr.shape != layout.shape:
        raise LayoutError(f"{layout.name}: got shape {arr.shape}, the surface holds {layout.shape}")
    view = layout.view(buffer)
    with np.errstate(over="ignore", invalid="ignore"):
        view[...] = arr.reshape(view.shape)


def unpack(layout: SurfaceLayout, buffer: Any) -> np.ndarray:
    """A copy of the tensor at `layout` in `buffer`, in its logical shape and surface dtype."""
    return np.array(layout.view(buffer), copy=True).reshape(layout.shape)


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _entry_strides(entry: Any) -> Strides | None:
    plane = _int(entry.get("PlaneStride"))
    if plane is None or plane <= 0:
        return None
    kind = entry.get("Type")
    names = _entry_names(entry)
    return Strides(
        plane=plane,
        batch=_int(entry.get("BatchStride")) or None,
        row=_int(entry.get("RowStride")) or None,
        channels=_int(entry.get("Channels")),
        type=None if kind is None else str(kind),
        name=names[0] if names else None,
    )


def _entry_names(entry: Any) -> tuple[str, ...]:
    """§10.3: `Symbol`, and `Name` with its `@...` suffix stripped ("y@output" -> "y")."""
    names = []
    for key in ("Symbol", "Name"):
        value = entry.get(key)
        if value is None:
            continue
        name = str(value).split("@", 1)[0]
        if name and name not in names:
            names.append(name)
    return tuple(names)


def _entry_port(entry: Any) -> Port:
    if not isinstance(entry, Mapping) and not hasattr(entry, "get"):
        return Port()
    dims = tuple(_int(entry.get(k)) for k in ("Batches", "Channels", "Height", "Width"))
    kind = entry.get("Type")
    return Port(
        names=_entry_names(entry),
        nchw=dims if all(d is not None for d in dims) else None,  # type: ignore[arg-type]
        strides=_entry_strides(entry),
        type=None if kind is None else str(kind),
    )


def parse_ports(attributes: Any) -> tuple[list[Port], list[Port]]:
    """The `(inputs, outputs)` entries of `modelAttributes` (§1.7, §10.3), in the model's own
    order, empty lists when absent.

    Reads `NetworkStatusList[0]["LiveInputList"]` and `["LiveOutputList"]`. Accepts plain dicts or
    the Foundation containers (anything with `get` and indexing).
    """
    if attributes is None:
        return [], []
    try:
        status = attributes.get("NetworkStatusList")
        first = status[0] if status is not None and len(status) else None
    except (TypeError, KeyError, IndexError, AttributeError):
        return [], []
    if first is None:
        return [], []
    out: list[list[Port]] = []
    for key in ("LiveInputList", "LiveOutputList"):
        try:
            entries = first.get(key)
        except AttributeError:
            entries = None
        out.append([_entry_port(e) for e in entries] if entries is not None else [])
    return out[0], out[1]


def parse_model_attributes(attributes: Any) -> tuple[list[Strides | None], list[Strides | None]]:
    """The `(inputs, outputs)` strides of `parse_ports` (None for an entry without PlaneStride)."""
    ins, outs = parse_ports(attributes)
    return [p.strides for p in ins], [p.strides for p in outs]


def match_ports(
    names: Sequence[str], ports: Sequence[Port], role: str = "input"
) -> tuple[list[Port | None], list[int]]:
    """Which reported entry is which tensor, and the model's own order.

    Returns `(port of each tensor in `names` order, order)` where `order[i]` is the index in
    `names` of the tensor the model lists i-th: request index i carries that tensor (§10.3).

    - No entries: nothing reported; tensors keep their declared order.
    - Every entry named: matched by `Symbol` or by `Name` without its `@...` suffix (§10.3); a
      tensor the engine does not list, or an entry naming no tensor, is a `LayoutError`.
    - No entry named: by position, only when the counts agree (a warning when there are several,
      the pairing being unverified); otherwise a `LayoutError`.
    """
    names = list(names)
    if not ports:
        return [None] * len(names), list(range(len(names)))
    named = [p for p in ports if p.names]
    if len(named) == len(ports):
        return _match_named(names, ports, role)
    if named:
        raise LayoutError(
            f"the engine names some of its {role}s and not others ({', '.join(p.label for p in ports)}); "
            "refusing to guess which is which (ane-private-api.md §10.3)"
        )
    return _match_by_position(names, ports, role)


def _match_named(names: list[str], ports: Sequence[Port], role: str) -> tuple[list[Port | None], list[int]]:
    """`match_ports` when every entry is named: each entry names exactly one declared tensor, once."""
    index = {n: i for i, n in enumerate(names)}
    order: list[int] = []
    for p in ports:
        hits = [index[n] for n in p.names if n in index]
        if not hits:
            raise LayoutError(
                f"the engine lists {role} {'/'.join(p.names)!r}, which the program does not declare "
                f"(its {role}s: {', '.join(names)}); refusing to guess (ane-private-api.md §10.3)"
            )
        if hits[0] in order:
            raise LayoutError(f"the engine lists {role} {names[hits[0]]!r} twice (ane-private-api.md §10.3)")
        order.append(hits[0])
    missing = [names[i] for i in range(len(names)) if i not in order]
    if missing:
        raise LayoutError(
            f"the engine does not list the program's {role}(s) {', '.join(missing)}; refusing to "
            "guess where they go (ane-private-api.md §10.3)"
        )
    by_tensor: list[Port | None] = [None] * len(names)
    for p, i in zip(ports, order):
        by_tensor[i] = p
    return by_tensor, order


def _match_by_position(
    names: list[str], ports: Sequence[Port], role: str
) -> tuple[list[Port | None], list[int]]:
    """`match_ports` when no entry is named: by position, only when the counts agree."""
    if len(ports) != len(names):
        raise LayoutError(
            f"the engine lists {len(ports)} unnamed {role}s, the program declares {len(names)}; refusing "
            "to guess which is which (ane-private-api.md §10.3)"
        )
    if len(names) > 1:
        warnings.warn(
            f"the engine's {role} entries carry no Name or Symbol; they are paired with the program's "
            f"{role}s by position, which is unverified (ane-private-api.md §10.3)",
            stacklevel=4,  # the caller of match_ports' caller, as before the split
        )
    return list(ports), list(range(len(names)))


def match_strides(names: Sequence[str], reported: Sequence[Strides | None]) -> list[Strides | None]:
    """Strides per tensor, from bare `Strides` (tests and old callers): `match_ports` over ports
    holding them (a Strides' `name` is its entry's name)."""
    ports = [Port(names=(s.name,) if s is not None and s.name else (), strides=s) for s in reported]
    matched, _ = match_ports(names, ports)
    return [None if p is None else p.strides for p in matched]


def slot_order_warnings(input_sizes: Sequence[int], output_sizes: Sequence[int]) -> list[str]:
    """Advice for multi-surface requests (§1.12): issue #47 reports silent zeros unless input
    surfaces are strictly ascending in size and outputs strictly descending. Returns the warnings
    that apply (empty for one input and one output, the layout every pipeline uses)."""
    notes = []
    if len(input_sizes) > 1 and any(b <= a for a, b in zip(input_sizes, input_sizes[1:])):
        notes.append(
            f"input surface sizes {list(input_sizes)} are not strictly ascending; multi-input requests "
            "are reported to give silent zeros or status 0x1d otherwise (ane-private-api.md §1.12). "
            "Packing all inputs into one surface is the safe layout."
        )
    if len(output_sizes) > 1 and any(b >= a for a, b in zip(output_sizes, output_sizes[1:])):
        notes.append(
            f"output surface sizes {list(output_sizes)} are not strictly descending "
            "(ane-private-api.md §1.12, issue #47)"
        )
    return notes
