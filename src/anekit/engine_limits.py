"""The Neural Engine's constants, each stated once with its source; every module imports them here.

Each constant names the fact it rests on: a section of `docs/ane-facts.md` (the `#anchor`, which
also lists the public sources and the lint rules that check it), a public URL, and in a comment the
section of the design references (`../shared/reference/ane-private-api.md`, `mil-text.md`). A lint
rule module binds a constant to its own private name (`_ROW_BYTES = ROW_ALIGN_BYTES`) so a test can
still patch one rule's threshold without touching the others.

Size limits, and why there are two (both rest on docs/ane-facts.md#weight-file-2gb):

- `WEIGHT_FILE_BYTES` (2 GiB): what the engine's toolchain accepts. A weight file above about 2 GB
  fails to load (mil-text.md §2.7); the MIL parser refuses a declared tensor above it
  (`anekit.mil.parser.MAX_TENSOR_BYTES`), and lint reports a program whose weights reach it.
- `HOST_TENSOR_BYTES` (4 GiB, twice that): what anekit holds in host memory. The reference backend
  refuses to allocate a tensor above it while a program runs (an op's output may exceed what a
  text declares, e.g. a `tile`), and `anekit.arrays_io` refuses an .npy/.npz above it; no tensor
  of a real model comes near it, while a damaged header or a mutated shape asking for terabytes is
  refused with a message instead of attempted.
"""

from __future__ import annotations

__all__ = [
    "FP16_BYTES",
    "ROW_ALIGN_BYTES",
    "ROW_ALIGN",
    "FP16_MAX",
    "MASK_VALUE",
    "MAX_AXIS",
    "MAX_SPATIAL",
    "MAX_RANK",
    "WIDTH_0X1D_BAND",
    "MAX_KERNEL_WIDTH",
    "MAX_ARG_AXIS",
    "CONV_CIN_REJECTED",
    "CONV_CIN_LARGE",
    "M3_CONV_CHANNELS",
    "SRAM_BYTES",
    "SRAM_MB",
    "OPERAND_BYTES",
    "WEIGHT_FILE_BYTES",
    "HOST_TENSOR_BYTES",
    "ENGINE_PROGRAM_CAP",
    "DEFAULT_LOADED_PROGRAM_BUDGET",
]

_MIB = 2**20

# --- surfaces ----------------------------------------------------------------------------------
#: Bytes of one fp16 element, the engine's I/O and compute type (docs/ane-facts.md#fp16-io).
FP16_BYTES = 2
#: The engine's rows (surface strides) are multiples of 64 bytes; other innermost widths give silent
#: zeros or status 0x1d. docs/ane-facts.md#rows-64-bytes; https://github.com/maderix/ANE/issues/47
# ../shared/reference: ane-private-api.md §1.7, §6; mil-text.md §5 #4.
ROW_ALIGN_BYTES = 64
#: The same rule in fp16 elements: 32. Kernel layouts pad widths and contracted dims to it.
ROW_ALIGN = ROW_ALIGN_BYTES // FP16_BYTES

# --- numerics ----------------------------------------------------------------------------------
#: The largest finite fp16 value: beyond it the engine's fp16 compute gives inf.
#: docs/ane-facts.md#fp16-range; https://github.com/hollance/neural-engine/blob/master/docs/16-bit.md
FP16_MAX = 65504.0
#: Additive mask value: the most negative finite fp16, never -inf.
#: docs/ane-facts.md#finite-masks; https://github.com/maderix/ANE/tree/main/training
# ../shared/reference: mil-text.md §5 #17.
MASK_VALUE = -FP16_MAX

# --- shapes ------------------------------------------------------------------------------------
#: No tensor axis longer than this. docs/ane-facts.md#axis-cap; https://github.com/maderix/ANE/pull/26
# ../shared/reference: ane-private-api.md §1.7; mil-text.md §5 #12.
MAX_AXIS = 65536
#: Height and width at most this (measured on M1; Core ML refuses more). docs/ane-facts.md#spatial-cap;
#: https://github.com/microsoft/onnxruntime/issues/19543
# ../shared/reference: mil-text.md §5 #12.
MAX_SPATIAL = 16384
#: At most this many dimensions. docs/ane-facts.md#rank-cap; https://aneforge.readthedocs.io/en/latest/api/graph/
# ../shared/reference: mil-text.md §5 #12.
MAX_RANK = 5
#: Spatial sizes (inclusive range) that failed with status 0x1d on M4.
#: docs/ane-facts.md#width-0x1d-band; https://github.com/maderix/ane-prefill-bench
# ../shared/reference: mil-text.md §5 #13.
WIDTH_0X1D_BAND = (14593, 14622)
#: Convolution kernels at most this wide. docs/ane-facts.md#conv-kernel-width;
#: https://ane-guide.readthedocs.io/en/latest/part-5-practice/17-model-design-rules.html
# ../shared/reference: mil-text.md §5 #12.
MAX_KERNEL_WIDTH = 13
#: `reduce_argmax` / `reduce_argmin` over at most this many values. docs/ane-facts.md#arg-axis-cap;
#: https://ane-guide.readthedocs.io/en/latest/part-5-practice/17-model-design-rules.html
# ../shared/reference: mil-text.md §5 #12.
MAX_ARG_AXIS = 2048

# --- channels ----------------------------------------------------------------------------------
#: A convolution with this many input channels is rejected by the compiler.
#: docs/ane-facts.md#conv-input-channels; https://github.com/maderix/ANE/blob/main/training/ane_classifier.h
# ../shared/reference: ane-private-api.md §1.7.
CONV_CIN_REJECTED = 32000
#: Above this many input channels a convolution is near the rejected size (the exact limit is
#: unknown; lint warns). Same source as CONV_CIN_REJECTED; the number is anekit's threshold.
CONV_CIN_LARGE = 16384
#: On M3 Pro / M3 Ultra only 512-channel convolutions compiled in the published benchmark sweep.
#: docs/ane-facts.md#m3-512-channels; https://github.com/maderix/ANE/issues/42
# ../shared/reference: mil-text.md §5 #11.
M3_CONV_CHANNELS = 512

# --- memory and size ---------------------------------------------------------------------------
#: On-chip SRAM: about 32 MB (M4, M4 Max); throughput falls ~30 % past it. docs/ane-facts.md#sram-32mb;
#: https://maderix.substack.com/p/inside-the-m4-apple-neural-engine-615
# ../shared/reference: ane-private-api.md §4.3 ("4096 ch (32 MB) collapses"); landscape.md §8.
SRAM_BYTES = 32 * _MIB
#: SRAM_BYTES in MB (the cost model's unit), assumed for chips without a published value.
SRAM_MB = SRAM_BYTES / _MIB
#: An op operand larger than this streams from DRAM. docs/ane-facts.md#sram-32mb;
#: https://ane-guide.readthedocs.io/en/latest/part-5-practice/17-model-design-rules.html
# ../shared/reference: mil-text.md §5 #14.
OPERAND_BYTES = 2 * _MIB
#: Weight files (and so any one tensor a MIL text declares) above about 2 GB fail to load.
#: docs/ane-facts.md#weight-file-2gb; https://github.com/apple/coremltools/issues/1807
# ../shared/reference: mil-text.md §2.7.
WEIGHT_FILE_BYTES = 2**31
#: Largest tensor anekit holds in host memory (reference backend, .npy/.npz files): twice
#: WEIGHT_FILE_BYTES; see the module docstring for why it differs.
HOST_TENSOR_BYTES = 2 * WEIGHT_FILE_BYTES

# --- loaded programs ---------------------------------------------------------------------------
#: The driver holds at most this many loaded programs per client (process); unloading frees a slot.
#: https://github.com/MidasMulli/ane-compiler (README); docs/ane-backend.md
# ../shared/reference: ane-private-api.md §10.1.
ENGINE_PROGRAM_CAP = 128
#: Programs anekit keeps loaded per process at most: the cap less headroom for programs loaded by
#: other code in the same process (Core ML, another library), which anekit cannot count; §10.1
#: names ~120 as the point past which worker processes are needed.
# ../shared/reference: ane-private-api.md §10.1.
DEFAULT_LOADED_PROGRAM_BUDGET = 120
