"""Where a language model comes from: a Hugging Face model directory or an anekit run / checkpoint.

`open_model(path)` checks everything a run needs before any weight is read and returns a
`ModelSource`: the config (`anekit.model.config.ModelConfig`), the weights as a mapping in anekit's
names and order, and the tokenizer's files. For a Hugging Face directory the weights are the lazy,
memory-mapped `anekit.model.io.HFWeights` (a tensor is read when accessed); for an anekit checkpoint
they are the checkpoint's fp32 arrays, loaded and checksum-verified by `anekit.train.checkpoint`.

A Hugging Face directory holds ``config.json``, ``model.safetensors`` or ``model.safetensors.index.json``
with its shards, and usually ``tokenizer.json``, ``tokenizer_config.json`` (special tokens, chat
template) and ``generation_config.json`` (eos ids, sampling defaults); nothing is downloaded. Every
file is read only if it lies inside the directory (a Hugging Face hub cache snapshot may link into its
own ``blobs``: `anekit.model.io.model_file`).

An anekit run directory (``runs/tiny``) or its checkpoint directory (``runs/tiny/checkpoint``) holds
the tokenizer the model was trained with (``tokenizer.json`` or a llama2.c ``tokenizer.bin``); its
BOS/EOS ids come in `generation_config` (``bos_token_id``, ``eos_token_id``), as a Hugging Face
generation_config.json holds them; `tokenizer_config` is empty.

A GGUF file (``model.gguf``; `anekit.model.gguf`, needs the `gguf` package) gives kind "gguf": its
weights memory-mapped (quantized tensors dequantized on access), tokenizer.json / tokenizer_config.json /
generation_config.json taken from beside the file when present; otherwise `tokenizer_config` holds the
GGUF's chat template and BOS/EOS tokens and `generation_config` its BOS/EOS ids, and `tokenizer_file`
is None (anekit does not convert a GGUF vocabulary into a tokenizer).

Every refusal is a `ModelSourceError` (an `anekit.llm.errors.LLMError`) naming the file and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AnekitError
from ..model.config import ModelConfig
from .errors import LLMError

__all__ = ["ModelSource", "ModelSourceError", "open_model"]

KINDS = ("hf", "anekit", "gguf")


class ModelSourceError(LLMError):
    """A model directory or checkpoint that cannot be opened; says which file and what to do."""


@dataclass(frozen=True)
class ModelSource:
    kind: str  #: "hf" (a Hugging Face directory), "anekit" (an anekit checkpoint) or "gguf" (a GGUF file)
    name: str  #: the HF hub repo ("Qwen/Qwen3-0.6B") or directory name; the model name of a run
    directory: Path  #: the directory read (for "anekit": the checkpoint directory itself)
    config: ModelConfig
    weights: Mapping[str, np.ndarray]  #: anekit names, `config.param_shapes()` order
    tokenizer_file: Path | None  #: real path of tokenizer.json (anekit: or tokenizer.bin); None if absent
    tokenizer_config: dict  #: tokenizer_config.json, {} if absent
    generation_config: dict  #: generation_config.json, {} if absent


def open_model(path: str | Path) -> ModelSource:
    """The model at `path`: a Hugging Face model directory, an anekit run directory or an anekit
    checkpoint directory (module docstring)."""
    p = Path(path)
    hint = (
        "give a Hugging Face model directory (config.json and safetensors weights) or an anekit run or "
        "checkpoint directory"
    )
    if not p.exists():
        raise ModelSourceError(f"{p}: no such model directory or checkpoint; {hint}")
    if not p.is_dir() and p.suffix.lower() != ".gguf":
        raise ModelSourceError(
            f"{p}: is a file, not a model directory or a .gguf file; {hint} (perhaps {p.parent})"
        )
    ckpt = _checkpoint(p) if p.is_dir() else None
    try:
        if not p.is_dir():
            return _open_gguf(p)
        if ckpt is not None:
            return _open_checkpoint(ckpt)
        if (p / "config.json").exists() or (p / "config.json").is_symlink():
            return _open_hf(p)
    except ModelSourceError:
        raise
    except AnekitError as e:  # ModelFileError, CheckpointError, ConfigError: already name the file
        raise ModelSourceError(str(e)) from e
    raise ModelSourceError(
        f"{p}: holds neither config.json (Hugging Face) nor an anekit checkpoint; {hint} (or a .gguf file)"
    )


def _checkpoint(p: Path) -> Path | None:
    """The anekit checkpoint directory `p` is or holds (a run directory holds ``checkpoint/``)."""
    from ..train.checkpoint import STATE_FILE
    from ..train.loop import CHECKPOINT_DIR

    for d in (p, p / CHECKPOINT_DIR):
        if (d / STATE_FILE).is_file():
            return d
    return None


def _hub_name(d: Path) -> str | None:
    """ "ORG/NAME" for a Hugging Face hub cache snapshot ``models--ORG--NAME/snapshots/REV``."""
    from ..model.io import _hub_blobs

    blobs = _hub_blobs(d)
    return blobs.parent.name.removeprefix("models--").replace("--", "/") if blobs is not None else None


def _optional_json(d: Path, name: str, what: str) -> dict:
    from ..model.io import read_model_json

    if not ((d / name).exists() or (d / name).is_symlink()):
        return {}
    data = read_model_json(d, name, what)
    if not isinstance(data, dict):
        raise ModelSourceError(
            f"{d / name}: holds a JSON {type(data).__name__}, not an object; a {what} is a JSON object: "
            "download it again or remove it"
        )
    return data


def _open_hf(d: Path) -> ModelSource:
    from ..model.io import model_file, open_hf

    config, weights = open_hf(d)
    tokenizer_config = _optional_json(d, "tokenizer_config.json", "tokenizer config")
    generation_config = _optional_json(d, "generation_config.json", "generation config")
    has_tokenizer = (d / "tokenizer.json").exists() or (d / "tokenizer.json").is_symlink()
    tokenizer_file = model_file(d, "tokenizer.json", d, "tokenizer") if has_tokenizer else None
    real = d.resolve()
    return ModelSource(
        kind="hf",
        name=_hub_name(real) or real.name,
        directory=d,
        config=config,
        weights=weights,
        tokenizer_file=tokenizer_file,
        tokenizer_config=tokenizer_config,
        generation_config=generation_config,
    )


def _open_checkpoint(d: Path) -> ModelSource:
    from ..train.checkpoint import load_checkpoint, load_checkpoint_tokenizer, read_state

    config, params, _, _ = load_checkpoint(d, load_optimizer=False)
    info = read_state(d)
    record = info.state.get("tokenizer_file")
    generation: dict = {}
    tokenizer_file = None
    if record is not None:
        load_checkpoint_tokenizer(d)  # verifies the stored tokenizer against state.json
        tokenizer_file = info.dir / record["name"]
        generation = {"bos_token_id": record["bos_id"], "eos_token_id": record["eos_id"]}
    return ModelSource(
        kind="anekit",
        name=config.name,
        directory=info.dir,
        config=config,
        weights=params,
        tokenizer_file=tokenizer_file,
        tokenizer_config={},
        generation_config=generation,
    )


def _open_gguf(p: Path) -> ModelSource:
    from ..model.gguf import open_gguf
    from ..model.io import model_file

    config, weights, meta = open_gguf(p)
    d = p.parent
    tokenizer_config = _optional_json(d, "tokenizer_config.json", "tokenizer config")
    generation_config = _optional_json(d, "generation_config.json", "generation config")
    has_tokenizer = (d / "tokenizer.json").exists() or (d / "tokenizer.json").is_symlink()
    tokenizer_file = model_file(d, "tokenizer.json", d, "tokenizer") if has_tokenizer else None
    tokens = meta.get("tokenizer.ggml.tokens") or []
    ids = {k: meta.get(f"tokenizer.ggml.{k}") for k in ("bos_token_id", "eos_token_id")}
    if not generation_config:
        generation_config = {k: v for k, v in ids.items() if isinstance(v, int)}
    if not tokenizer_config:
        template = meta.get("tokenizer.chat_template")
        tokenizer_config = {"chat_template": template} if isinstance(template, str) else {}
        for key, value in ids.items():
            if isinstance(value, int) and 0 <= value < len(tokens):
                tokenizer_config[key.removesuffix("_id")] = tokens[value]
    return ModelSource(
        kind="gguf",
        name=config.name,
        directory=d,
        config=config,
        weights=weights,
        tokenizer_file=tokenizer_file,
        tokenizer_config=tokenizer_config,
        generation_config=generation_config,
    )
