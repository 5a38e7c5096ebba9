"""Import of GGUF model files (llama.cpp's format) through the `gguf` package, memory-mapped.

Architectures: ``llama`` (Llama 1/2/3, and Mistral, which llama.cpp converts as llama), ``qwen2``
(q/k/v biases) and ``qwen3`` (q/k RMSNorm). Tensor types: F32, F16, BF16, and every block-quantized
type the `gguf` package dequantizes (Q8_0, Q4_0, Q4_K, Q6_K, ...); a quantized tensor is dequantized to
float32 when it is accessed (anekit then bakes it as fp16 or requantizes it, `weights="int8"|"int4"`).

Two facts about how llama.cpp writes these files (its convert_hf_to_gguf.py, read for facts):
- For ``llama`` it permutes each head's q and k rows from Hugging Face's rotate-half order to the
  interleaved-pair order of Meta's original checkpoints (``LlamaModel.permute``), which is anekit's
  order, so those rows are used as they are. ``qwen2`` / ``qwen3`` use rotate-half ("NEOX") RoPE and are
  written unpermuted: anekit permutes wq, wk, bq, bk, q_norm and k_norm per head on access, as for a
  Hugging Face checkpoint (`anekit.model.io`).
- GGUF lists dimensions fastest-first, so a [out, in] matrix has ``shape`` [in, out]; the `gguf`
  reader already presents ``data`` as [out, in].
Llama 3's RoPE scaling is stored as a ``rope_freqs`` tensor of per-frequency factors rather than as
parameters; anekit refuses it (import the Hugging Face checkpoint instead), as it refuses any
``rope.scaling.type`` other than none, partial rotary dims and unknown tensors.

The tokenizer is not converted: `anekit.llm.source.open_model` takes tokenizer.json and
tokenizer_config.json from beside the .gguf file when they are there, and the GGUF's chat template and
BOS/EOS ids otherwise.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .io import ModelFileError, _permute, _rope_heads, check_regular_file

__all__ = ["GGUFWeights", "open_gguf", "gguf_metadata"]

ARCHS = ("llama", "qwen2", "qwen3")

_LAYER = {
    "attn_norm": "attn_norm.weight",
    "wq": "attn_q.weight",
    "wk": "attn_k.weight",
    "wv": "attn_v.weight",
    "bq": "attn_q.bias",
    "bk": "attn_k.bias",
    "bv": "attn_v.bias",
    "q_norm": "attn_q_norm.weight",
    "k_norm": "attn_k_norm.weight",
    "wo": "attn_output.weight",
    "ffn_norm": "ffn_norm.weight",
    "w1": "ffn_gate.weight",
    "w3": "ffn_up.weight",
    "w2": "ffn_down.weight",
}
_GLOBAL = {"embed": "token_embd.weight", "final_norm": "output_norm.weight", "lm_head": "output.weight"}


def gguf_name(name: str) -> str:
    """The GGUF tensor name of an anekit parameter name."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    _, i, field = name.split(".")
    return f"blk.{i}.{_LAYER[field]}"


def _reader(path: Path):
    try:
        import gguf
    except ImportError:
        raise ModelFileError(
            f"{path}: reading GGUF files needs the `gguf` package: pip install gguf"
        ) from None
    check_regular_file(path, ModelFileError, "GGUF file", "give an existing .gguf file")
    try:
        return gguf.GGUFReader(str(path), "r")
    except Exception as e:  # the reader raises ValueError, struct errors, IndexError on a damaged file
        raise ModelFileError(
            f"{path}: not a readable GGUF file ({type(e).__name__}: {str(e)[:200]}); truncated or damaged? "
            "download it again"
        ) from None


def gguf_metadata(reader) -> dict:
    """Every key-value field of the file (arrays as lists), tensor info excluded."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            out[key] = field.contents()
        except Exception:  # a field the package cannot decode: leave it out, it is not one we read
            continue
    return out


def _f32(value) -> float:
    """A float llama.cpp stored as float32, at the shortest decimal that rounds to it (1e-05, not
    9.99999974e-06): the value the converter was given."""
    return float(str(np.float32(value)))


def _config(meta: dict, path: Path) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in ARCHS:
        raise ModelFileError(
            f"{path}: GGUF architecture {arch!r} is not supported; anekit imports {', '.join(ARCHS)} "
            "(Llama, Mistral, Qwen2/2.5, Qwen3)"
        )

    def get(key, default=...):
        full = f"{arch}.{key}"
        if full in meta:
            return meta[full]
        if default is ...:
            raise ModelFileError(f"{path}: GGUF metadata lacks {full} (required for a {arch} model)")
        return default

    scaling = get("rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise ModelFileError(
            f"{path}: RoPE scaling {scaling!r} is not supported in GGUF files; anekit imports plain RoPE "
            "from GGUF (and Llama 3 scaling from a Hugging Face checkpoint)"
        )
    dim, n_heads = get("embedding_length"), get("attention.head_count")
    head_dim = get("attention.key_length", None)
    if head_dim is None and isinstance(dim, int) and isinstance(n_heads, int) and n_heads:
        head_dim = dim // n_heads
    rotary = get("rope.dimension_count", head_dim)
    if rotary != head_dim:
        raise ModelFileError(
            f"{path}: RoPE on {rotary} of {head_dim} head dims (partial rotary) is not supported"
        )
    vocab = get("vocab_size", None)
    if vocab is None:
        vocab = len(meta.get("tokenizer.ggml.tokens") or ()) or None
    try:
        return ModelConfig(
            name=str(meta.get("general.name") or path.stem),
            dim=dim,
            hidden_dim=get("feed_forward_length"),
            n_layers=get("block_count"),
            n_heads=n_heads,
            n_kv_heads=get("attention.head_count_kv", n_heads),
            vocab_size=vocab if vocab is not None else 0,
            seq_len=get("context_length", 2048),
            head_dim=head_dim,
            rope_theta=_f32(get("rope.freq_base", 10000.0)),
            norm_eps=_f32(get("attention.layer_norm_rms_epsilon")),
            tie_embeddings=True,  # decided from the tensors (no output.weight: tied)
            qkv_bias=arch == "qwen2",
            qk_norm=arch == "qwen3",
            sliding_window=get("attention.sliding_window", None) or None,
        )
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: GGUF metadata does not describe a valid model: {e}") from None


class GGUFWeights(Mapping[str, np.ndarray]):
    """The parameters of a GGUF file by anekit name, read from the memory-mapped file on access, not
    kept. F32/F16 tensors needing no reorder are read-only views of the mapping; permuted, BF16 and
    quantized tensors come back as new arrays (float32 for BF16 and quantized ones)."""

    def __init__(self, config: ModelConfig, tensors: dict, permute: bool, mapped=None):
        self.config = config
        self._mapped = mapped  # the reader's np.memmap of the whole file
        self._tensors = tensors  # anekit name -> gguf ReaderTensor
        self._permute = permute

    def __getitem__(self, name: str) -> np.ndarray:
        import gguf

        try:
            t = self._tensors[name]
        except (KeyError, TypeError):
            raise KeyError(name) from None
        kind = gguf.GGMLQuantizationType
        if t.tensor_type in (kind.F32, kind.F16, kind.F64):
            w = t.data
        else:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        shape = self.config.param_shapes()[name]
        w = w.reshape(shape)
        heads = _rope_heads(self.config, name.rsplit(".", 1)[-1]) if self._permute else None
        if heads is not None:
            w = _permute(w, heads, self.config.head_dim, to_half=False)
        return w

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def stored_dtype(self, name: str) -> str:
        """The GGML type name: "F32", "F16", "BF16", "Q8_0", "Q4_K", ..."""
        return self._tensors[name].tensor_type.name

    @property
    def nbytes(self) -> int:
        return sum(int(t.n_bytes) for t in self._tensors.values())

    def materialize(self, dtype=np.float32) -> dict[str, np.ndarray]:
        """Every parameter as a new, writable array of `dtype`, releasing mapped pages as it goes."""
        out = {}
        for name in self:
            a = self[name]
            out[name] = a if a.flags.writeable and a.dtype == dtype else np.array(a, dtype=dtype)
            self.release(name)
        return out

    def release(self, name: str) -> None:
        """Drop parameter `name`'s mapped pages from resident memory, as `HFWeights.release` does (the
        data stays valid). A no-op where the reader's mapping is not reachable."""
        t = self._tensors[name]
        mapping = getattr(self._mapped, "_mmap", None)  # np.memmap keeps its mmap.mmap here
        advise = getattr(mapping, "madvise", None)
        if advise is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start, end = int(t.data_offset), int(t.data_offset) + int(t.n_bytes)
        first, last = -(-start // page) * page, end // page * page
        if last > first:
            advise(mmap.MADV_DONTNEED, first, last - first)


def open_gguf(path: str | Path) -> tuple[ModelConfig, GGUFWeights, dict]:
    """(config, lazily read weights, metadata) of a GGUF model file (module docstring). Every tensor's
    name, type and shape is checked here; no tensor data is read."""
    import gguf

    p = Path(path)
    reader = _reader(p)
    meta = gguf_metadata(reader)
    config = _config(meta, p)
    tensors = {t.name: t for t in reader.tensors}
    if "rope_freqs.weight" in tensors:
        raise ModelFileError(
            f"{p}: holds rope_freqs.weight (Llama 3 RoPE scaling as llama.cpp stores it), which anekit does "
            "not import from GGUF; import the model's Hugging Face checkpoint instead"
        )
    if "output.weight" in tensors:
        from dataclasses import replace

        config = replace(config, tie_embeddings=False)
    kind = gguf.GGMLQuantizationType
    # plain floats, and every type the package can dequantize (its registry of quantization traits)
    readable = {kind.F32, kind.F16, kind.F64} | set(getattr(gguf.quants, "_type_traits", {}))
    shapes = config.param_shapes()
    by_gguf = {gguf_name(n): n for n in shapes}
    found = {}
    for key, t in tensors.items():
        name = by_gguf.get(key)
        if name is None:
            raise ModelFileError(
                f"{p}: unexpected tensor {key} for a {meta['general.architecture']} model; anekit does not "
                "import it"
            )
        if t.tensor_type not in readable:
            raise ModelFileError(f"{p}: tensor {key} has type {t.tensor_type.name}, which anekit cannot read")
        got = tuple(int(d) for d in reversed(t.shape.tolist()))
        if got != shapes[name]:
            raise ModelFileError(
                f"{p}: tensor {key} has shape {list(got)}, the metadata needs {list(shapes[name])}"
            )
        found[name] = t
    missing = [gguf_name(n) for n in shapes if n not in found]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelFileError(f"{p}: missing tensor {', '.join(missing[:3])}{more} (an incomplete file?)")
    permute = meta["general.architecture"] != "llama"
    weights = GGUFWeights(config, {n: found[n] for n in shapes}, permute, getattr(reader, "data", None))
    return config, weights, meta
