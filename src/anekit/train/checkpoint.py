"""Training checkpoints: one directory, written atomically, the previous one kept beside it.

Layout::

    ckpt/
      model.safetensors      fp32 weights, named by ModelConfig.param_shapes() (embed, layers.0.wq, ...)
      optimizer.safetensors  AdamW moments: "m.<param>", "v.<param>" (absent when saved without them)
      tokenizer.json|.bin    the tokenizer the run was trained with (when saved with one)
      state.json             config, step, optimizer scalars (t, lr, betas, ...), loss-scaler state,
                             sampler RNG state and position, data fingerprint, LR schedule, tokenizer
                             identity, the sha256 and size of every other file, anekit version
    ckpt.prev/               the checkpoint before this one, same layout

Why atomic: the maderix trainers write their one-file checkpoint in place, so a crash mid-write
destroys the only copy (ane-private-api.md §5.5, §6). Here a save goes:

1. write every file into a temporary directory ``.NAME.tmp-*`` beside the target, fsync each file,
   state.json last (its presence marks a complete checkpoint), fsync the directory;
2. delete ``NAME.prev`` (the checkpoint before last: ``NAME`` is still complete);
3. rename ``NAME`` -> ``NAME.prev``, then the temporary directory -> ``NAME``; fsync the parent.

At every instant one complete checkpoint exists: ``NAME`` (before step 3 and after it) or, if the
process dies between the two renames of step 3, ``NAME.prev``, which `load_checkpoint` then reads
(with a warning). After a save both ``NAME`` (newest) and ``NAME.prev`` (the one before) are
loadable, so a checkpoint damaged after the fact still leaves one to go back to. Leftover
``.NAME.tmp-*`` directories of crashed saves are removed by the next save. An error while writing
(disk full, no permission) is a `CheckpointWriteError`; ``NAME`` and ``NAME.prev`` are untouched.

Only finite weights are written, and loading refuses non-finite ones: a NaN that reached a checkpoint
would be resumed silently, every later step skipped. ``state.json`` is checked against
`anekit.train.checkpoint_schema` on load and records the sha256 of each file, verified on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import AnekitError
from ..model.config import ModelConfig
from ..safe_dir import check_regular_file, read_inside, resolve_inside
from .checkpoint_schema import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    TOKENIZER_FILES,
    CheckpointError,
    validate_state,
)

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "STATE_FILE",
    "OptimizerState",
    "TrainState",
    "is_checkpoint",
    "load_checkpoint",
    "load_checkpoint_tokenizer",
    "previous_path",
    "read_state",
    "save_checkpoint",
]

FORMAT = "anekit-checkpoint"
FORMAT_VERSION = 2  #: 2: per-file sha256, tokenizer copy, LR schedule, data fingerprint
STATE_FILE = "state.json"
#: a state.json larger than this is not one (anekit's own are a few kB)
MAX_STATE_BYTES = 16 << 20
PREV_SUFFIX = ".prev"


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (disk full, no permission, ...); the previous one is intact."""


class OptimizerState(NamedTuple):
    """AdamW state as `anekit.train.optim.AdamW.state_dict()` returns it (and `load_state_dict` takes):
    tensors keyed ``m.<param>``/``v.<param>``, and JSON scalars (``t``, ``lr``, ``betas``, ...)."""

    tensors: dict[str, np.ndarray]
    scalars: dict


@dataclass
class TrainState:
    """Everything besides tensors that a run needs to continue exactly where it stopped."""

    step: int = 0
    loss_scaler: dict | None = None  #: LossScaler.state_dict()
    sampler: dict | None = None  #: Batches.state_dict(): RNG state and batches drawn
    data: dict | None = None  #: TokenDataset.identity (with the data's sha256)
    tokenizer: str | None = None  #: Tokenizer.identity
    schedule: dict | None = None  #: the LR schedule: lr, warmup, min_lr_ratio, total_steps
    extra: dict = field(default_factory=dict)  #: anything else JSON-serialisable (e.g. best loss)

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        return cls(
            step=d["step"],
            loss_scaler=d["loss_scaler"],
            sampler=d["sampler"],
            data=d["data"],
            tokenizer=d["tokenizer"],
            schedule=d["schedule"],
            extra=dict(d["extra"]),
        )


# ---------------------------------------------------------------------------------------------
# Validation


def _check_params(config: ModelConfig, params: dict[str, np.ndarray], where: str) -> None:
    expected = config.param_shapes()
    missing = [k for k in expected if k not in params]
    unexpected = [k for k in params if k not in expected]
    if missing:
        raise CheckpointError(
            f"{where}: missing tensor(s) {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''} "
            f"for config {config.name!r} ({len(expected)} parameters expected)"
        )
    if unexpected:
        raise CheckpointError(
            f"{where}: unexpected tensor(s) {', '.join(unexpected[:8])} for config {config.name!r}"
            + (" (tie_embeddings is true: no lm_head)" if "lm_head" in unexpected else "")
        )
    for name, shape in expected.items():
        got = tuple(np.shape(params[name]))
        if got != shape:
            raise CheckpointError(f"{where}: tensor {name} has shape {list(got)}, config needs {list(shape)}")


def _check_optimizer(tensors: dict[str, np.ndarray], params: dict[str, np.ndarray], where: str) -> None:
    for key, arr in tensors.items():
        prefix, _, name = key.partition(".")
        if prefix not in ("m", "v") or name not in params:
            raise CheckpointError(
                f"{where}: optimizer tensor {key!r} is not 'm.<param>' or 'v.<param>' for a model parameter"
            )
        if tuple(np.shape(arr)) != tuple(np.shape(params[name])):
            raise CheckpointError(
                f"{where}: optimizer tensor {key} has shape {list(np.shape(arr))}, "
                f"parameter {name} has {list(np.shape(params[name]))}"
            )
    m = {k[2:] for k in tensors if k.startswith("m.")}
    v = {k[2:] for k in tensors if k.startswith("v.")}
    if m != v:
        odd = sorted(m ^ v)
        raise CheckpointError(f"{where}: optimizer has m without v (or v without m) for {', '.join(odd[:8])}")


def nonfinite_tensors(tensors: dict[str, np.ndarray]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity."""
    return [k for k, a in tensors.items() if not np.isfinite(a).all()]


def _check_finite(tensors: dict[str, np.ndarray], where: str, what: str) -> None:
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(
            f"{where}: {what} tensor(s) {', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''} hold NaN or "
            "infinite values; a checkpoint holds only finite weights"
        )


def config_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    """Fields (other than the cosmetic `name`) where two configs differ, as 'field: a vs b'."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} vs {db[k]!r}" for k in da if k != "name" and da[k] != db[k]]


# ---------------------------------------------------------------------------------------------
# Writing


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint before `path`'s is kept (``NAME.prev``)."""
    path = Path(path)
    return path.with_name(path.name + PREV_SUFFIX)


def _legacy_backup_path(path: Path) -> Path:
    """Where format-1 saves parked the old checkpoint between their two renames."""
    return path.with_name(f".{path.name}.prev")


def _fsync_path(path: Path) -> None:
    """Flush a file or directory to stable storage (F_FULLFSYNC on macOS, where fsync alone is not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            import fcntl

            if hasattr(fcntl, "F_FULLFSYNC"):
                fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
                return
        except (ImportError, OSError):
            pass
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_entry(path: Path) -> dict:
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray], kind: str) -> None:
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    from safetensors import SafetensorError

    try:
        save_file(arrays, str(path), metadata={"format": "np", "anekit": kind})
    except SafetensorError as e:  # safetensors wraps I/O failures (e.g. ENOSPC) in its own error type
        raise OSError(f"cannot write {path.name}: {e}") from e
    _fsync_path(path)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
    _fsync_path(path)


def _remove(path: Path) -> None:
    """Delete a file, symlink (not its target) or directory tree."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _remove_stale_temps(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _swap_in(tmp: Path, path: Path, keep_previous: bool) -> None:
    prev = previous_path(path)
    if path.exists():
        _remove(prev)  # the checkpoint before last; `path` is still complete
        os.replace(path, prev)
        _fsync_path(path.parent)
    os.replace(tmp, path)
    _fsync_path(path.parent)
    _remove(_legacy_backup_path(path))
    if not keep_previous:
        _remove(prev)


def _tokenizer_record(tokenizer, where: str) -> tuple[Path, dict]:
    """(source file, state record) for a tokenizer that came from a file."""
    src = getattr(tokenizer, "path", None)
    if src is None or not Path(src).is_file():
        raise CheckpointError(f"{where}: the tokenizer has no file to store (path {src!r})")
    src = Path(src)
    kind, _, digest = tokenizer.identity.partition(":sha256=")
    name = "tokenizer.bin" if kind == "llama2c" else "tokenizer.json"
    record = {
        "name": name,
        "kind": kind,
        "vocab_size": int(tokenizer.vocab_size),
        "bos_id": int(tokenizer.bos_id),
        "eos_id": int(tokenizer.eos_id),
    }
    return src, record | {"_sha256": digest}


def _prepared_state(config, params, optimizer, train_state, tokenizer, where: str):
    """Validate everything a save needs, before any byte is written; returns (optimizer state or
    None, tokenizer source or None, tokenizer record or None, the state.json dict to fill in)."""
    from .. import __version__

    _check_params(config, params, where)
    _check_finite(params, where, "model")
    opt = OptimizerState(*optimizer) if optimizer is not None else None
    if opt is not None:
        _check_optimizer(opt.tensors, params, where)
        _check_finite(opt.tensors, where, "optimizer")
    ts = train_state or TrainState()
    tok_src, tok_record = (None, None)
    if tokenizer is not None:
        tok_src, tok_record = _tokenizer_record(tokenizer, where)
        ts = TrainState(**(asdict(ts) | {"tokenizer": tokenizer.identity}))
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "anekit_version": __version__,
        "config": config.to_dict(),
        "files": {},
        "optimizer": opt.scalars if opt is not None else None,
        **asdict(ts),
        "tokenizer_file": None,
    }
    try:
        json.dumps(state, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: training state is not JSON-serialisable: {e}") from e
    return opt, tok_src, tok_record, state


def _check_replaceable(path: Path, where: str) -> None:
    """Refuse to replace anything at `path` but a directory that is empty or a checkpoint."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise CheckpointError(f"{where}: exists and is not a directory; refusing to replace it")
    if path.exists() and not (path / STATE_FILE).is_file() and any(path.iterdir()):
        raise CheckpointError(
            f"{where}: exists and is not an anekit checkpoint (no {STATE_FILE}); refusing to replace it"
        )


def _write_payload(tmp: Path, params, opt, tok_src, tok_record, state: dict, where: str) -> None:
    """Write the model, optimizer and tokenizer files into `tmp` (in that order) and fill in
    ``state["files"]`` / ``state["tokenizer_file"]``; state.json itself is the caller's, last."""
    _write_safetensors(tmp / MODEL_FILE, params, "model")
    files = [MODEL_FILE]
    if opt is not None:
        _write_safetensors(tmp / OPTIMIZER_FILE, opt.tensors, "optimizer")
        files.append(OPTIMIZER_FILE)
    if tok_src is not None:
        digest = tok_record.pop("_sha256")
        shutil.copyfile(tok_src, tmp / tok_record["name"])
        _fsync_path(tmp / tok_record["name"])
        files.append(tok_record["name"])
        state["tokenizer_file"] = tok_record
    state["files"] = {name: _file_entry(tmp / name) for name in files}
    if tok_src is not None and digest and state["files"][tok_record["name"]]["sha256"] != digest:
        raise CheckpointError(
            f"{where}: the tokenizer file {tok_src} changed since the run loaded it; the checkpoint "
            "would not hold the tokenizer the weights were trained with"
        )


def save_checkpoint(
    path: str | Path,
    config: ModelConfig,
    params: dict[str, np.ndarray],
    optimizer: OptimizerState | tuple[dict[str, np.ndarray], dict] | None = None,
    train_state: TrainState | None = None,
    *,
    tokenizer=None,
    keep_previous: bool = True,
) -> Path:
    """Write a checkpoint directory at `path` atomically (see module docstring); returns the path.

    `optimizer` is what `AdamW.state_dict()` returns. Weights and moments are stored as fp32.
    `tokenizer` (one loaded from a file, `anekit.train.tokenizers.load_tokenizer`) is copied in.
    `keep_previous=False` deletes the checkpoint this one replaces (a run started afresh over an old
    one). Everything, finiteness included, is validated before the first byte is written; an I/O
    failure is a `CheckpointWriteError` and leaves the previous checkpoint as it was.
    """
    path = Path(path)
    where = str(path)
    opt, tok_src, tok_record, state = _prepared_state(
        config, params, optimizer, train_state, tokenizer, where
    )
    _check_replaceable(path, where)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        _write_payload(tmp, params, opt, tok_src, tok_record, state, where)
        _write_json(tmp / STATE_FILE, state)  # last: its presence marks a complete checkpoint
        _fsync_path(tmp)
        _swap_in(tmp, path, keep_previous)
    except OSError as e:
        _cleanup(tmp)
        kept = _describe_intact(path)
        raise CheckpointWriteError(f"{where}: cannot write the checkpoint: {e}. {kept}") from e
    except BaseException:
        _cleanup(tmp)
        raise
    return path


def _cleanup(tmp: Path | None) -> None:
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


def _describe_intact(path: Path) -> str:
    for p in (path, previous_path(path)):
        if (p / STATE_FILE).is_file():
            return f"The previous checkpoint {p} is intact."
    return "No earlier checkpoint exists."


# ---------------------------------------------------------------------------------------------
# Reading


def resolve_checkpoint(path: str | Path) -> Path:
    """The directory to read for checkpoint `path`: itself, or the previous checkpoint when a save
    died between its two renames (``NAME`` missing, ``NAME.prev`` complete)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    if not path.exists():
        for backup in (previous_path(path), _legacy_backup_path(path)):
            if (backup / STATE_FILE).is_file():
                warnings.warn(
                    f"{path}: missing; a save was interrupted, loading the previous checkpoint from {backup}",
                    stacklevel=3,
                )
                return backup
        raise CheckpointError(f"{path}: no such checkpoint")
    if not path.is_dir():
        raise CheckpointError(f"{path}: is a file, not a checkpoint directory")
    raise CheckpointError(f"{path}: not an anekit checkpoint directory (no {STATE_FILE})")


class CheckpointInfo(NamedTuple):
    """A checkpoint's validated state.json, read without its tensors."""

    dir: Path  #: the directory actually read (NAME, or NAME.prev after an interrupted save)
    config: ModelConfig
    train_state: TrainState
    state: dict  #: the whole state.json, validated


def _hint_previous(src: Path) -> str:
    prev = previous_path(src)
    if src != prev and (prev / STATE_FILE).is_file():
        return f" The checkpoint before it is at {prev}."
    return ""


def read_state(path: str | Path) -> CheckpointInfo:
    """The validated state of checkpoint `path` (no tensors read); `CheckpointError` naming what is wrong."""
    src = resolve_checkpoint(path)
    state_path = src / STATE_FILE
    # inside the checkpoint directory after links, a regular file, size-capped (anekit.safe_dir)
    raw = read_inside(src, STATE_FILE, CheckpointError, "checkpoint state", max_bytes=MAX_STATE_BYTES)
    try:
        state = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError, JSONDecodeError: ValueErrors
        raise CheckpointError(f"{state_path}: cannot read: {e}.{_hint_previous(src)}") from e
    if isinstance(state, dict):
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{state_path}: not an anekit checkpoint (format {state.get('format')!r})")
        version = state.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{state_path}: checkpoint format version {version!r} is not supported (this anekit reads "
                f"version {FORMAT_VERSION}; version 1 checkpoints carry no checksums or tokenizer: train "
                "again, or load the weights with an older anekit and save them anew)"
            )
    validate_state(state, str(state_path))
    try:
        config = ModelConfig.from_dict(state["config"])
    except (TypeError, ValueError, AnekitError) as e:
        raise CheckpointError(f"{state_path}: bad model config: {e}") from e
    return CheckpointInfo(src, config, TrainState.from_dict(state), state)


def _verify_file(src: Path, name: str, entry: dict) -> Path:
    path = src / name
    if path.exists() or path.is_symlink():
        # a link leaving the checkpoint is refused, and a fifo or directory is never opened (it would
        # block the checksum's read or fail it with an OSError of its own)
        real = resolve_inside(src, name, CheckpointError, "checkpoint file")
        check_regular_file(real, CheckpointError, "checkpoint file", f"{STATE_FILE} lists it as a file")
    try:
        actual = _file_entry(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (listed in {STATE_FILE}).{_hint_previous(src)}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from e
    if actual != entry:
        raise CheckpointError(
            f"{path}: checksum mismatch: {actual['bytes']} bytes with sha256 {actual['sha256'][:16]}..., "
            f"{STATE_FILE} records {entry['bytes']} bytes with sha256 {entry['sha256'][:16]}...; the file "
            f"was damaged or replaced after the save.{_hint_previous(src)}"
        )
    return path


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except Exception as e:  # safetensors raises its own error type on a damaged file
        raise CheckpointError(f"{path}: cannot read safetensors file: {e}") from e
    return {k: v.astype(np.float32, copy=False) for k, v in tensors.items()}


def load_checkpoint(
    path: str | Path, config: ModelConfig | None = None, load_optimizer: bool = True
) -> tuple[ModelConfig, dict[str, np.ndarray], OptimizerState | None, TrainState]:
    """(config, params, optimizer state or None, train state) from a checkpoint directory.

    If `config` is given, the checkpoint's config must match it (except the name). Raises
    `CheckpointError` naming the file, field or tensor on anything missing, misshapen, damaged
    (checksum), non-finite or unreadable.
    """
    info = read_state(path)
    src, ckpt_config, state = info.dir, info.config, info.state
    if config is not None:
        diff = config_differences(ckpt_config, config)
        if diff:
            raise CheckpointError(
                f"{src}: checkpoint config does not match the requested model (checkpoint vs requested): "
                + "; ".join(diff)
            )
    model_path = _verify_file(src, MODEL_FILE, state["files"][MODEL_FILE])
    params = _read_safetensors(model_path)
    _check_params(ckpt_config, params, str(model_path))
    _check_finite(params, str(model_path), "model")
    params = {k: params[k] for k in ckpt_config.param_shapes()}  # the config's order, not the file's

    opt = None
    if load_optimizer and OPTIMIZER_FILE in state["files"]:
        opt_path = _verify_file(src, OPTIMIZER_FILE, state["files"][OPTIMIZER_FILE])
        tensors = _read_safetensors(opt_path)
        _check_optimizer(tensors, params, str(opt_path))
        _check_finite(tensors, str(opt_path), "optimizer")
        opt = OptimizerState(tensors, dict(state["optimizer"]))
    return ckpt_config, params, opt, info.train_state


def load_checkpoint_tokenizer(path: str | Path):
    """The tokenizer stored in checkpoint `path` (identity checked against state.json), or None when
    the checkpoint was saved without one."""
    info = read_state(path)
    record = info.state["tokenizer_file"]
    if record is None:
        return None
    file = _verify_file(info.dir, record["name"], info.state["files"][record["name"]])
    try:
        tok = _open_tokenizer(file, record)
    except (ValueError, AnekitError) as e:
        raise CheckpointError(f"{file}: cannot load the stored tokenizer: {e}") from e
    expected = info.state["tokenizer"]
    if tok.identity != expected or tok.vocab_size != record["vocab_size"]:
        raise CheckpointError(
            f"{file}: the stored tokenizer is {tok.identity} with {tok.vocab_size} ids, {STATE_FILE} records "
            f"{expected} with {record['vocab_size']}"
        )
    return tok


def _open_tokenizer(file: Path, record: dict):
    from .tokenizers import HFTokenizer, Llama2cTokenizer

    if record["name"] == TOKENIZER_FILES[1]:
        return Llama2cTokenizer(file, bos_id=record["bos_id"], eos_id=record["eos_id"])
    from tokenizers import Tokenizer as _Raw

    try:
        raw = _Raw.from_file(str(file))
    except Exception as e:  # tokenizers raises its own Exception subclass on a bad file
        raise ValueError(f"not a Hugging Face tokenizer.json: {e}") from e
    bos, eos = raw.id_to_token(record["bos_id"]), raw.id_to_token(record["eos_id"])
    if bos is None or eos is None:
        raise ValueError(f"BOS id {record['bos_id']} or EOS id {record['eos_id']} is not in its vocabulary")
    return HFTokenizer(file, bos_token=bos, eos_token=eos, kind=record["kind"])


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` is (or, after an interrupted save, was) an anekit checkpoint directory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            resolve_checkpoint(path)
        except CheckpointError:
            return False
    return True
