"""Training checkpoints: one directory, written atomically.

Layout::

    ckpt/
      model.safetensors      fp32 weights, named by ModelConfig.param_shapes() (embed, layers.0.wq, ...)
      optimizer.safetensors  AdamW moments: "m.<param>", "v.<param>" (absent when saved without them)
      state.json             config, step, optimizer scalars (t, lr, betas, ...), loss-scaler state,
                             sampler RNG state and position, data and tokenizer identity, anekit version

Why atomic: the maderix trainers write their one-file checkpoint in place, so a crash mid-write
destroys the only copy (ane-private-api.md §5.5, §6). Here the new checkpoint is written completely
into a temporary directory beside the target, every file and the directory are fsynced, and only
then does it replace the target by rename. Until that moment the previous checkpoint is untouched.
A directory cannot be renamed over a non-empty one, so the swap is two renames (old -> ``.NAME.prev``,
new -> ``NAME``); should the process die between them, `load_checkpoint` finds the previous checkpoint
in ``.NAME.prev``. Leftover ``.NAME.tmp-*`` directories of crashed saves are removed by the next save.
"""

from __future__ import annotations

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

FORMAT = "anekit-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


class CheckpointError(AnekitError, ValueError):
    """A checkpoint that cannot be written or used as given; the message says what and where."""


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
    data: dict | None = None  #: TokenDataset.identity
    tokenizer: str | None = None  #: Tokenizer.identity
    extra: dict = field(default_factory=dict)  #: anything else JSON-serialisable (e.g. best loss)

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        return cls(
            step=int(d.get("step", 0)),
            loss_scaler=d.get("loss_scaler"),
            sampler=d.get("sampler"),
            data=d.get("data"),
            tokenizer=d.get("tokenizer"),
            extra=dict(d.get("extra") or {}),
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


def config_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    """Fields (other than the cosmetic `name`) where two configs differ, as 'field: a vs b'."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} vs {db[k]!r}" for k in da if k != "name" and da[k] != db[k]]


# ---------------------------------------------------------------------------------------------
# Writing


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


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray], kind: str) -> None:
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    save_file(arrays, str(path), metadata={"format": "np", "anekit": kind})
    _fsync_path(path)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
    _fsync_path(path)


def _backup_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.prev")


def _remove_stale_temps(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _swap_in(tmp: Path, path: Path) -> None:
    backup = _backup_path(path)
    if path.exists():
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(path, backup)
        _fsync_path(path.parent)
    os.replace(tmp, path)
    _fsync_path(path.parent)
    shutil.rmtree(backup, ignore_errors=True)


def save_checkpoint(
    path: str | Path,
    config: ModelConfig,
    params: dict[str, np.ndarray],
    optimizer: OptimizerState | tuple[dict[str, np.ndarray], dict] | None = None,
    train_state: TrainState | None = None,
) -> Path:
    """Write a checkpoint directory at `path` atomically (see module docstring); returns the path.

    `optimizer` is what `AdamW.state_dict()` returns. Weights and moments are stored as fp32.
    Everything is validated before the first byte is written.
    """
    from .. import __version__

    path = Path(path)
    where = str(path)
    _check_params(config, params, where)
    opt = OptimizerState(*optimizer) if optimizer is not None else None
    if opt is not None:
        _check_optimizer(opt.tensors, params, where)
    ts = train_state or TrainState()
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "anekit_version": __version__,
        "config": config.to_dict(),
        "files": [MODEL_FILE] + ([OPTIMIZER_FILE] if opt is not None else []),
        "optimizer": opt.scalars if opt is not None else None,
        **asdict(ts),
    }
    try:
        json.dumps(state)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: training state is not JSON-serialisable: {e}") from e

    if path.exists() and not (path / STATE_FILE).is_file():
        if not path.is_dir() or any(path.iterdir()):
            raise CheckpointError(
                f"{where}: exists and is not an anekit checkpoint (no {STATE_FILE}); refusing to replace it"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _write_safetensors(tmp / MODEL_FILE, params, "model")
        if opt is not None:
            _write_safetensors(tmp / OPTIMIZER_FILE, opt.tensors, "optimizer")
        _write_json(tmp / STATE_FILE, state)  # last: its presence marks a complete checkpoint
        _fsync_path(tmp)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------
# Reading


def resolve_checkpoint(path: str | Path) -> Path:
    """The directory to read for checkpoint `path`: itself, or the previous checkpoint kept in
    ``.NAME.prev`` when a save died between its two renames."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    backup = _backup_path(path)
    if not path.exists() and (backup / STATE_FILE).is_file():
        warnings.warn(
            f"{path}: missing; a save was interrupted, loading the previous checkpoint from {backup}",
            stacklevel=3,
        )
        return backup
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    raise CheckpointError(f"{path}: not an anekit checkpoint directory (no {STATE_FILE})")


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
    `CheckpointError` naming the file and tensor on anything missing, misshapen or unreadable.
    """
    src = resolve_checkpoint(path)
    state_path = src / STATE_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{state_path}: cannot read: {e}") from e
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{state_path}: not an anekit checkpoint (format {state.get('format')!r})")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{state_path}: checkpoint format version {state.get('format_version')} is not supported "
            f"(this anekit reads version {FORMAT_VERSION})"
        )
    try:
        ckpt_config = ModelConfig.from_dict(state["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{state_path}: bad model config: {e}") from e
    if config is not None:
        diff = config_differences(ckpt_config, config)
        if diff:
            raise CheckpointError(
                f"{src}: checkpoint config does not match the requested model (checkpoint vs requested): "
                + "; ".join(diff)
            )
    params = _read_safetensors(src / MODEL_FILE)
    _check_params(ckpt_config, params, str(src / MODEL_FILE))
    params = {k: params[k] for k in ckpt_config.param_shapes()}  # the config's order, not the file's

    opt = None
    if load_optimizer and OPTIMIZER_FILE in state.get("files", []):
        tensors = _read_safetensors(src / OPTIMIZER_FILE)
        _check_optimizer(tensors, params, str(src / OPTIMIZER_FILE))
        opt = OptimizerState(tensors, dict(state.get("optimizer") or {}))
    return ckpt_config, params, opt, TrainState.from_dict(state)


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` is (or, after an interrupted save, was) an anekit checkpoint directory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            resolve_checkpoint(path)
        except CheckpointError:
            return False
    return True
