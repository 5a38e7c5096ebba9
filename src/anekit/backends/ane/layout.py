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

Nothing here touches Objective-C: a surface is any writable buffer (a memoryview over the locked
IOSurface base address on a Mac, a bytearray in tests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import AnekitError
from ..base import TensorSpec

#: §1.7: the innermost dimension must span a multiple of 64 bytes (32 fp16 elements) when the
#: engine does not report strides. For fp32 I/O the same 64 bytes are 16 elements (my reading).
ROW_ALIGN_BYTES = 64
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


def surface_layout(spec: TensorSpec, strides: Strides | None = None) -> SurfaceLayout:
    """The layout of `spec` in its surface: strided when the engine reported `strides`, else dense.

    Raises `LayoutError` for a dense layout whose innermost dimension breaks the 64-byte rule,
    and for strides that cannot hold the tensor (they would make us write past a plane).
    """
    shape = _static_shape(spec)
    dt = io_dtype(spec)
    item = dt.itemsize
    if strides is None:
        if not shape:
            raise LayoutError(f"{_describe(spec)}: a scalar cannot be a surface; use shape [1, 1, 1, 32]")
        inner = shape[-1] * item
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
        for d in reversed(shape[1:]):
            dense.insert(0, dense[0] * d)
        return SurfaceLayout(
            spec.name, shape, dt, shape, tuple(dense), int(np.prod(shape)) * item, strided=False
        )

    if len(shape) > 4:
        raise LayoutError(
            f"{_describe(spec)}: the engine reported strides for a rank-{len(shape)} tensor; only ranks "
            "up to 4 ([N, C, H, W]) have a known strided layout (ane-private-api.md §1.7)"
        )
    n, c, h, w = (1,) * (4 - len(shape)) + shape
    if strides.channels is not None and strides.channels != c:
        raise LayoutError(
            f"{_describe(spec)}: the engine reports Channels={strides.channels}, the program has {c} "
            "channels; refusing to guess where the data goes"
        )
    if strides.type is not None and strides.type.lower() not in _TYPE_NAMES[spec.dtype]:
        raise LayoutError(f"{_describe(spec)}: the engine reports Type={strides.type!r}, not {spec.dtype}")
    row_bytes = w * item
    if strides.row is not None:
        rs = strides.row
    elif h == 1 or row_bytes % ROW_ALIGN_BYTES == 0:
        rs = row_bytes  # one row, or rows already 64-byte aligned: dense rows within the plane
    else:
        raise LayoutError(
            f"{_describe(spec)}: the engine reported a PlaneStride but no RowStride, and rows of "
            f"{row_bytes} bytes are not {ROW_ALIGN_BYTES}-byte aligned, so where row 1 starts is unknown"
        )
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
    if not isinstance(entry, Mapping) and not hasattr(entry, "get"):
        return None
    plane = _int(entry.get("PlaneStride"))
    if plane is None or plane <= 0:
        return None
    name = entry.get("Name") if entry.get("Name") is not None else entry.get("Symbol")
    kind = entry.get("Type")
    return Strides(
        plane=plane,
        batch=_int(entry.get("BatchStride")) or None,
        row=_int(entry.get("RowStride")) or None,
        channels=_int(entry.get("Channels")),
        type=None if kind is None else str(kind),
        name=None if name is None else str(name),
    )


def parse_model_attributes(attributes: Any) -> tuple[list[Strides | None], list[Strides | None]]:
    """The `(inputs, outputs)` strides in `modelAttributes` (§1.7), empty lists when absent.

    Reads `NetworkStatusList[0]["LiveInputList"]` and `["LiveOutputList"]`; an entry without a
    positive `PlaneStride` gives None. Accepts plain dicts or the Foundation containers (anything
    with `get` and indexing).
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
    out: list[list[Strides | None]] = []
    for key in ("LiveInputList", "LiveOutputList"):
        try:
            entries = first.get(key)
        except AttributeError:
            entries = None
        out.append([_entry_strides(e) for e in entries] if entries is not None else [])
    return out[0], out[1]


def match_strides(names: Sequence[str], reported: Sequence[Strides | None]) -> list[Strides | None]:
    """Assign reported strides to tensors: by name when every entry carries a known name, else by
    position when the counts agree; otherwise nothing is trusted (None for every tensor)."""
    if not reported:
        return [None] * len(names)
    named = {s.name: s for s in reported if s is not None and s.name}
    if len(named) == len(reported) and set(named) == set(names):
        return [named[n] for n in names]
    if len(reported) == len(names):
        return list(reported)
    return [None] * len(names)


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
