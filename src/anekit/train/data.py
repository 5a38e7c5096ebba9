"""Token datasets and the batch samplers that feed training and evaluation.

Sources:

- the bundled story corpus (`anekit.train.corpus`), tokenized with the bundled or a given tokenizer;
- llama2.c token files: flat little-endian ``uint16`` ids, memory-mapped (ane-private-api.md §5.1,
  e.g. ``tinystories_data00.bin``);
- plain text files, tokenized with a given tokenizer. Documents are separated by a blank line and
  each is encoded with BOS in front and no EOS, as llama2.c's pretokenized TinyStories are.

Tokenized text is cached (``$ANEKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/anekit``, else
``~/.cache/anekit``) under a hash of the tokenizer identity and the text, so the cost is paid once
per (tokenizer, text) pair; the bundled corpus (1.7 MB) takes about half a second to tokenize.

`Batches` draws random windows of S+1 tokens (inputs are the first S, targets the last S) with a
seeded NumPy generator whose state round-trips through `state_dict` so a resumed run draws exactly
the batches it would have drawn. `sequential_batches` walks the data in order for evaluation.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AnekitError
from ..safe_dir import check_regular_file
from .tokenizers import Tokenizer, encode_documents, load_tokenizer

DOC_SEPARATOR = "\n\n"
_CACHE_FORMAT = "anekit-tokens-v1"  # bump when the way text becomes tokens changes


class DataError(AnekitError, ValueError):
    """Training data that cannot be used as given; the message says what and what to do."""


@dataclass
class TokenDataset:
    """A flat 1-D array of token ids (uint16 or uint32, possibly memory-mapped) and where it came from."""

    tokens: np.ndarray
    source: str  #: for messages: a path or "bundled stories"
    identity: dict = field(default_factory=dict)  #: stored in checkpoints to recognise the data on resume

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def check_vocab(self, vocab_size: int) -> None:
        """Raise `DataError` if any id is >= `vocab_size` (the model could not embed it)."""
        if len(self) == 0:
            return
        max_id = int(self.tokens.max())
        if max_id >= vocab_size:
            where = int(np.argmax(self.tokens >= vocab_size))
            raise DataError(
                f"{self.source}: token id {max_id} is out of range for a model with vocab_size {vocab_size} "
                f"(largest id in the data is {max_id}; first out-of-range id at token {where}). The data was "
                f"tokenized with a larger vocabulary than the model's: use a model config with "
                f"vocab_size >= {max_id + 1} or data tokenized with the model's tokenizer."
            )

    def check_length(self, seq_len: int) -> None:
        """Raise `DataError` unless one window of ``seq_len + 1`` tokens fits (§5.1 short-file guard)."""
        if len(self) < seq_len + 1:
            raise DataError(
                f"{self.source}: has {len(self)} tokens, but one training window needs seq_len + 1 = "
                f"{seq_len + 1}; give more data or a shorter sequence length."
            )

    def split(self, val_fraction: float) -> tuple[TokenDataset, TokenDataset]:
        """(train, validation): the last `val_fraction` of the tokens is held out."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        cut = len(self) - max(1, int(round(len(self) * val_fraction)))
        return (
            TokenDataset(
                self.tokens[:cut], self.source + " [train split]", self.identity | {"split": "train"}
            ),
            TokenDataset(self.tokens[cut:], self.source + " [val split]", self.identity | {"split": "val"}),
        )


# ---------------------------------------------------------------------------------------------
# Loading


def cache_dir() -> Path:
    """Where tokenized text is cached (see module docstring)."""
    env = os.environ.get("ANEKIT_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "anekit"


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def tokenize_text(text: str, tokenizer: Tokenizer) -> np.ndarray:
    """Blank-line-separated documents -> one flat array, each document preceded by BOS."""
    docs = [d.strip() for d in text.split(DOC_SEPARATOR)]
    docs = [d for d in docs if d]
    encoded = encode_documents(tokenizer, docs, bos=True, eos=False)
    out = np.empty(sum(len(e) for e in encoded), dtype=_token_dtype(tokenizer.vocab_size))
    pos = 0
    for e in encoded:
        out[pos : pos + len(e)] = e
        pos += len(e)
    return out


def _cached_tokenize(text: str, tokenizer: Tokenizer, use_cache: bool) -> tuple[np.ndarray, str]:
    text_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if not use_cache:
        return tokenize_text(text, tokenizer), text_hash
    key = hashlib.sha256(f"{_CACHE_FORMAT}\0{tokenizer.identity}\0{text_hash}".encode()).hexdigest()[:32]
    path = cache_dir() / f"tokens-{key}.npy"
    if path.is_file():
        try:
            return np.load(path, mmap_mode="r"), text_hash
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt below
    tokens = tokenize_text(text, tokenizer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tokens-", suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            np.save(f, tokens)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old state or the whole file
    except OSError:
        pass  # an unwritable cache only costs time
    return tokens, text_hash


def load_text_file(
    path: str | Path, tokenizer: Tokenizer | None = None, use_cache: bool = True
) -> TokenDataset:
    """A UTF-8 text file tokenized with `tokenizer` (bundled if None)."""
    p = Path(path)
    tok = tokenizer or load_tokenizer(None)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{p}: no such data file") from None
    except UnicodeDecodeError as e:
        raise DataError(
            f"{p}: is not UTF-8 text ({e.reason} at byte {e.start}); token files must end in .bin "
            "(flat little-endian uint16, llama2.c format)"
        ) from None
    except OSError as e:
        raise DataError(f"{p}: cannot read data file: {e}") from None
    tokens, text_hash = _cached_tokenize(text, tok, use_cache)
    if len(tokens) == 0:
        raise DataError(f"{p}: contains no text to train on")
    ident = {"kind": "text", "path": os.path.abspath(p), "sha256": text_hash, "tokenizer": tok.identity}
    return TokenDataset(tokens, str(p), ident | {"n_tokens": int(len(tokens))})


def load_bundled(tokenizer: Tokenizer | None = None, use_cache: bool = True) -> TokenDataset:
    """The bundled story corpus (`anekit.train.corpus`), tokenized with `tokenizer` (bundled if None)."""
    from .corpus import data_path

    ds = load_text_file(data_path("stories.txt"), tokenizer, use_cache)
    ds.source = "bundled stories"
    ds.identity = ds.identity | {"kind": "bundled", "path": "anekit/data/stories.txt"}
    return ds


def load_token_file(path: str | Path) -> TokenDataset:
    """A llama2.c token file: flat little-endian uint16 ids, memory-mapped (§5.1)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{p}: no such token file") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read token file: {e}") from None
    if size == 0:
        raise DataError(f"{p}: token file is empty")
    if size % 2:
        raise DataError(
            f"{p}: {size} bytes is an odd length, not a whole number of uint16 tokens; a llama2.c token file "
            "is a flat array of little-endian uint16 ids (ane-private-api.md §5.1). Truncated download?"
        )
    try:
        tokens = np.memmap(p, dtype="<u2", mode="r")
    except OSError as e:
        raise DataError(f"{p}: cannot memory-map token file: {e}") from None
    ident = {
        "kind": "uint16",
        "path": os.path.abspath(p),
        "bytes": size,
        "n_tokens": size // 2,
        "sha256": _sha256(p),
    }
    return TokenDataset(tokens, str(p), ident)


def _sha256(path: Path) -> str:
    """The file's sha256 (the data fingerprint a resumed run is checked against; ~1 s per GB)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot read token file: {e}") from None
    return h.hexdigest()


def check_data_path(path: str | Path, what: str = "--data") -> Path:
    """`path` if it names a regular file (or a symlink to one); else `DataError` saying what it is.

    A directory, a FIFO or a device such as /dev/zero would block, loop forever or read garbage."""
    return check_regular_file(
        path, DataError, what, "give a regular file (.bin llama2.c tokens or UTF-8 text)"
    )


def load_dataset(
    path: str | Path | None = None,
    tokenizer: Tokenizer | None = None,
    use_cache: bool = True,
    vocab_size: int | None = None,
) -> TokenDataset:
    """None => bundled stories; ``*.bin`` => llama2.c uint16 token file; anything else => UTF-8 text.

    Given the model's `vocab_size`, every id is checked against it (`TokenDataset.check_vocab`).
    """
    if path is None:
        ds = load_bundled(tokenizer, use_cache)
    else:
        p = Path(path)
        if p.exists():
            check_data_path(p, "data file")
        ds = load_token_file(p) if p.suffix == ".bin" else load_text_file(p, tokenizer, use_cache)
    if vocab_size is not None:
        ds.check_vocab(vocab_size)
    return ds


# ---------------------------------------------------------------------------------------------
# The held-out slice and the data fingerprint

#: The share of the tokens, at the end of the data, that training never samples: the validation slice
#: the training loop reports a loss on and `anekit eval` scores by default.
VAL_FRACTION = 0.05


def train_val_split(ds: TokenDataset, seq_len: int) -> tuple[TokenDataset, TokenDataset | None]:
    """(training part, validation part or None): the last `VAL_FRACTION` of the tokens is held out.

    The one place training and evaluation agree on which tokens are held out. When that tail is too
    short for one window of ``seq_len + 1`` tokens, or the rest would be, there is no validation
    slice and all of the data is for training (None)."""
    train, val = ds.split(VAL_FRACTION) if len(ds) >= 2 else (ds, None)
    if val is None or len(val) < seq_len + 1 or len(train) < seq_len + 1:
        return ds, None
    return train, val


def data_differences(recorded: dict | None, current: dict) -> list[str]:
    """How the data a checkpoint recorded differs from `current` (both `TokenDataset.identity`):
    the content (sha256), its kind, token count and tokenizer; a moved file with the same content
    is the same data."""
    if not recorded:
        return []
    out = []
    for key in ("kind", "sha256", "n_tokens", "tokenizer"):
        if recorded.get(key) != current.get(key):
            out.append(f"{key}: {recorded.get(key)!r} then, {current.get(key)!r} now")
    return out


# ---------------------------------------------------------------------------------------------
# Sampling


def _as_tokens(data: TokenDataset | np.ndarray) -> tuple[np.ndarray, str]:
    if isinstance(data, TokenDataset):
        return data.tokens, data.source
    arr = np.asarray(data)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {arr.shape}")
    return arr, "token array"


class Batches:
    """Random training windows: each batch is ``(inputs, targets)``, both int64 ``[B, S]``, with
    ``targets[b, t] == inputs[b, t + 1]`` inside a window of S+1 consecutive tokens.

    Window starts are uniform over every position where a whole window fits (llama2.c draws them the
    same way with drand48, §5.1), from ``numpy.random.Generator(PCG64(seed))``. `state_dict` captures
    the generator state and the number of batches drawn; `load_state_dict` resumes the same stream.

    Data parallelism (`rank` of `world` processes): every rank draws the starts of the whole global
    batch of ``batch_size x world`` windows from the same stream and keeps its own contiguous slice of
    ``batch_size`` of them, so the ranks' shards are disjoint and the global batches are those one
    process drawing ``batch_size x world`` windows would draw. The saved state describes the global
    stream (its ``batch_size`` is the global one), so a run resumes exactly under any split of the same
    global batch (2 ranks x 4 = 1 rank x 8), and refuses another global batch.
    """

    def __init__(
        self,
        data: TokenDataset | np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        *,
        rank: int = 0,
        world: int = 1,
    ):
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world) and world >= 1, got rank {rank}, world {world}")
        self.tokens, self.source = _as_tokens(data)
        TokenDataset(self.tokens, self.source).check_length(seq_len)
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world = rank, world
        self.global_batch = batch_size * world
        self.batches_drawn = 0
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._offsets = np.arange(seq_len + 1)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        n, S = len(self.tokens), self.seq_len
        starts = self._rng.integers(0, n - S, size=self.global_batch)  # start <= n - S - 1: window fits
        starts = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        windows = np.asarray(self.tokens[starts[:, None] + self._offsets], dtype=np.int64)
        self.batches_drawn += 1
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict:
        """JSON-serialisable state (the PCG64 state holds Python ints, which JSON keeps exactly)."""
        return {
            "kind": "random_windows",
            "seed": self.seed,
            "batch_size": self.global_batch,  #: windows per draw across all ranks
            "seq_len": self.seq_len,
            "n_tokens": int(len(self.tokens)),
            "batches_drawn": self.batches_drawn,
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; refuses a state drawn from different data or window shapes."""
        saved = state.get("batch_size")
        if saved != self.global_batch:
            raise DataError(
                f"cannot resume the batch sampler ({self.source}): the run drew {saved} sequences per "
                f"micro-batch in all, now {self.world} process(es) x --batch {self.batch_size} = "
                f"{self.global_batch}; " + _global_batch_hint(saved, self.world)
            )
        for key, mine in (
            ("seq_len", self.seq_len),
            ("n_tokens", len(self.tokens)),
        ):
            if state.get(key) != mine:
                raise DataError(
                    f"cannot resume the batch sampler: saved {key} is {state.get(key)}, now it is {mine} "
                    f"({self.source}); resume with the same data, batch size and sequence length"
                )
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state["rng"]
        self._rng = rng
        self.seed = state.get("seed", self.seed)
        self.batches_drawn = int(state.get("batches_drawn", 0))


def _global_batch_hint(saved, world: int) -> str:
    """What to pass to resume a sampler whose global batch was `saved` with `world` processes."""
    if isinstance(saved, int) and saved > 0 and saved % world == 0:
        return f"resume with --batch {saved // world} to keep the global batch"
    if isinstance(saved, int) and saved > 0:
        splits = [f"{w} x --batch {saved // w}" for w in range(1, saved + 1) if saved % w == 0][:6]
        return f"{saved} does not split over {world} processes; use one of: " + ", ".join(splits)
    return "resume with the same data, batch size and sequence length"


def sequential_batches(
    data: TokenDataset | np.ndarray, batch_size: int, seq_len: int, max_batches: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Evaluation batches in file order: non-overlapping windows starting at 0, S, 2S, ... (each
    S+1 long, so every token is predicted once), grouped by `batch_size`; the last batch may be
    smaller. Deterministic; stops after `max_batches` if given."""
    tokens, source = _as_tokens(data)
    TokenDataset(tokens, source).check_length(seq_len)
    n_windows = (len(tokens) - 1) // seq_len
    offsets = np.arange(seq_len + 1)
    done = 0
    for first in range(0, n_windows, batch_size):
        if max_batches is not None and done >= max_batches:
            return
        starts = np.arange(first, min(first + batch_size, n_windows)) * seq_len
        windows = np.asarray(tokens[starts[:, None] + offsets], dtype=np.int64)
        done += 1
        yield windows[:, :-1], windows[:, 1:]
