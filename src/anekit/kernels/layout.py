"""`Layout`: how several logical 2-D blocks share one `[1, C, 1, W]` engine tensor.

The engine takes one input surface per request and returns one output (ane-private-api.md §1.12,
§3.4 "Outputs"; mil-text.md §5 #6), so a kernel's operands are packed into a single tensor and
sliced apart inside the graph. A block is a rectangle of that tensor: a channel range (rows) and a
spatial range (columns). Both packings of §1.7 are rectangles:

- spatial packing, each channel row `[S activations | weight row]`: blocks share the channel range
  and sit side by side on the spatial axis (the dynamic-weight inputs of §5.4);
- channel packing, `concat` on axis 1: blocks share the spatial range and stack on channels (every
  kernel output, and the channel-packed inputs of §5.4's sdpaBwd kernels).

Mixing the two is allowed (e.g. K and V stacked on channels inside one column range). Element
(c, w) of the tensor lives at flat index `c·W + w` (channel-major, §1.7), so a block of a NumPy
buffer is a strided view: `unpack` returns views, and `write` updates one block in place, which is
how the training step stages weights once per optimiser update and rewrites only the activation
columns every step (§5.4 "Stage" / "write acts").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..engine_limits import ROW_ALIGN
from ..errors import AnekitError

__all__ = ["Segment", "Layout", "LayoutError", "ROW_ALIGN", "round_up"]

# ROW_ALIGN (anekit.engine_limits, 32 fp16 elements = 64 bytes): layouts pad their width to it by default.


class LayoutError(AnekitError, ValueError):
    """A layout was built inconsistently, or an array does not fit the block it was given for."""


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class Segment:
    """One logical block: rows `channels[0]:channels[1]`, columns `columns[0]:columns[1]`."""

    name: str
    channels: tuple[int, int]
    columns: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the logical 2-D array this block holds."""
        return (self.channels[1] - self.channels[0], self.columns[1] - self.columns[0])

    @property
    def index(self) -> tuple[int, slice, int, slice]:
        """Index of the block in a `[1, C, 1, W]` array."""
        return (0, slice(*self.channels), 0, slice(*self.columns))

    def overlaps(self, other: Segment) -> bool:
        c0, c1 = self.channels
        w0, w1 = self.columns
        return (
            c0 < other.channels[1]
            and other.channels[0] < c1
            and w0 < other.columns[1]
            and other.columns[0] < w1
        )


class Layout:
    """Named rectangular blocks of one `[1, C, 1, W]` tensor (see the module docstring)."""

    def __init__(self, segments: Iterable[Segment], channels: int | None = None, width: int | None = None):
        segs = tuple(segments)
        if not segs:
            raise LayoutError("a layout needs at least one segment")
        names = [s.name for s in segs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise LayoutError(f"duplicate segment name(s): {', '.join(dup)}")
        need_c = max(s.channels[1] for s in segs)
        need_w = max(s.columns[1] for s in segs)
        self.channels = need_c if channels is None else channels
        self.width = need_w if width is None else width
        self._check_placement(segs)
        self.segments = segs
        self._by_name = {s.name: s for s in segs}

    def _check_placement(self, segs: tuple[Segment, ...]) -> None:
        """Every segment non-empty and inside the tensor; no two overlapping."""
        for s in segs:
            (c0, c1), (w0, w1) = s.channels, s.columns
            if not (0 <= c0 < c1 <= self.channels and 0 <= w0 < w1 <= self.width):
                raise LayoutError(
                    f"segment {s.name!r} (channels {c0}:{c1}, columns {w0}:{w1}) is empty or lies outside "
                    f"the [1, {self.channels}, 1, {self.width}] tensor"
                )
        for i, a in enumerate(segs):
            for b in segs[i + 1 :]:
                if a.overlaps(b):
                    raise LayoutError(f"segments {a.name!r} and {b.name!r} overlap")

    # -- construction helpers ------------------------------------------------------------------
    @classmethod
    def spatial(
        cls, blocks: Iterable[tuple[str, int, int]], channels: int | None = None, align: int = ROW_ALIGN
    ) -> Layout:
        """Blocks `(name, rows, width)` side by side on the spatial axis, each starting at channel 0
        (`[x | W1ᵀ | W2ᵀ ...]` per row, ane-private-api.md §3.4). The total width is padded to a
        multiple of `align` (zero columns nobody reads)."""
        segs, w = [], 0
        for name, rows, width in blocks:
            segs.append(Segment(name, (0, rows), (w, w + width)))
            w += width
        return cls(segs, channels=channels, width=round_up(w, align))

    @classmethod
    def stacked(cls, blocks: Iterable[tuple[str, int]], width: int) -> Layout:
        """Blocks `(name, rows)` stacked on channels over the full width (a `concat` on axis 1)."""
        segs, c = [], 0
        for name, rows in blocks:
            segs.append(Segment(name, (c, c + rows), (0, width)))
            c += rows
        return cls(segs, width=width)

    # -- description ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The tensor shape, `(1, C, 1, W)`."""
        return (1, self.channels, 1, self.width)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.segments)

    def __getitem__(self, name: str) -> Segment:
        try:
            return self._by_name[name]
        except KeyError:
            raise LayoutError(
                f"no segment {name!r} in this layout (it has {', '.join(self.names)})"
            ) from None

    def index(self, name: str) -> tuple[int, slice, int, slice]:
        """Index of segment `name` in a `[1, C, 1, W]` array (what `Binding.write_slice` takes)."""
        return self[name].index

    def tiles(self, name: str) -> tuple[Segment, ...]:
        """The segments holding block `name`: `(self[name],)`, or, for a block split over token
        tiles (`anekit.kernels.wgrad`), its tiles `name@0`, `name@1`, ... in token order, whose
        widths add up to the block's."""
        if name in self._by_name:
            return (self._by_name[name],)
        found, j = [], 0
        while f"{name}@{j}" in self._by_name:
            found.append(self._by_name[f"{name}@{j}"])
            j += 1
        if not found:
            self[name]  # raises, listing the segments
        return tuple(found)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and self.shape == other.shape and self.segments == other.segments

    def __hash__(self) -> int:
        return hash((self.shape, self.segments))

    def __repr__(self) -> str:
        return f"Layout({list(self.shape)}: {', '.join(self.names)})"

    def describe(self) -> str:
        """A table of the segments: name, channels, columns, shape."""
        lines = [f"[1, {self.channels}, 1, {self.width}]"]
        for s in self.segments:
            lines.append(
                f"  {s.name:<10} channels {s.channels[0]:>5}:{s.channels[1]:<5} "
                f"columns {s.columns[0]:>5}:{s.columns[1]:<5} ({s.shape[0]} x {s.shape[1]})"
            )
        return "\n".join(lines)

    # -- data ----------------------------------------------------------------------------------
    def empty(self, dtype=np.float16) -> np.ndarray:
        """A zeroed buffer of this layout's shape (padding stays zero)."""
        return np.zeros(self.shape, dtype=dtype)

    def _check_buffer(self, buffer: np.ndarray) -> np.ndarray:
        arr = np.asarray(buffer)
        if arr.shape == (self.channels, self.width):
            arr = arr.reshape(self.shape)
        if arr.shape != self.shape:
            raise LayoutError(f"tensor has shape {tuple(arr.shape)}, this layout is {list(self.shape)}")
        return arr

    def write(self, buffer: np.ndarray, name: str, array) -> None:
        """Write `array` (rows x columns of segment `name`) into `buffer` in place, converting
        to the buffer's dtype (fp32 -> fp16 rounds to nearest even, as NEON's vcvt does)."""
        seg = self[name]
        if not isinstance(buffer, np.ndarray) or buffer.shape != self.shape:
            got = getattr(buffer, "shape", type(buffer).__name__)
            raise LayoutError(
                f"write into {name!r}: buffer must be an ndarray of shape {list(self.shape)}, got {got}"
            )
        a = np.asarray(array)
        if a.shape != seg.shape:
            raise LayoutError(
                f"segment {name!r} holds a {seg.shape[0]} x {seg.shape[1]} block "
                f"(channels {seg.channels[0]}:{seg.channels[1]}, columns {seg.columns[0]}:{seg.columns[1]}), "
                f"got an array of shape {tuple(a.shape)}"
            )
        buffer[seg.index] = a

    def pack(
        self, arrays: Mapping[str, object], out: np.ndarray | None = None, dtype=np.float16
    ) -> np.ndarray:
        """Pack named 2-D arrays into one `[1, C, 1, W]` tensor.

        Without `out`, a new zeroed tensor of `dtype` is made and every segment must be given.
        With `out`, the given segments are written into it in place (the others keep their
        contents, so staged weights survive), and `out` is returned.
        """
        unknown = [n for n in arrays if n not in self._by_name]
        if unknown:
            raise LayoutError(
                f"unknown segment(s) {', '.join(map(repr, unknown))}; the layout has {', '.join(self.names)}"
            )
        if out is None:
            missing = [n for n in self.names if n not in arrays]
            if missing:
                raise LayoutError(f"pack needs every segment; missing {', '.join(map(repr, missing))}")
            out = self.empty(dtype)
        for name, array in arrays.items():
            self.write(out, name, array)
        return out

    def unpack(self, tensor) -> dict[str, np.ndarray]:
        """Every block of `tensor` (`[1, C, 1, W]` or `[C, W]`) by name, as views (no copies)."""
        arr = self._check_buffer(tensor)
        return {s.name: arr[s.index] for s in self.segments}

    def view(self, tensor, name: str) -> np.ndarray:
        """One block of `tensor` as a view."""
        return self._check_buffer(tensor)[self[name].index]
